"""Test certificates: a CA and leaf certificates with RSA or ECDSA keys, written as PEM."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

KINDS = ("rsa2048", "rsa4096", "p256", "p384")


def new_key(kind: str):
    if kind.startswith("rsa"):
        return rsa.generate_private_key(65537, int(kind[3:]))
    return ec.generate_private_key({"p256": ec.SECP256R1(), "p384": ec.SECP384R1()}[kind])


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Leaf:
    cert: Path
    key: Path
    private_key: object


class CA:
    def __init__(self, directory: Path, name: str = "titus test CA") -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .sign(self.key, hashes.SHA256()))
        self.path = directory / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, kind: str = "p256", extra_names: tuple[str, ...] = (),
              filename: str | None = None, uris: tuple[str, ...] = (),
              valid: tuple[datetime.timedelta, datetime.timedelta] | None = None) -> Leaf:
        """A leaf for `name` (CN and SAN); `valid` is (notBefore, notAfter) relative to now
        (default: an hour ago, in 30 days); `uris` are URI SANs (e.g. spiffe://...)."""
        key = new_key(kind)
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = []
        for n in (name, *extra_names):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        sans.extend(x509.UniformResourceIdentifier(uri) for uri in uris)
        before, after = valid or (datetime.timedelta(hours=-1), datetime.timedelta(days=30))
        cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now + before)
                .not_valid_after(now + after)
                .add_extension(x509.SubjectAlternativeName(sans), False)
                .sign(self.key, hashes.SHA256()))
        stem = filename or f"{name}-{kind}"
        cert_path, key_path = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return Leaf(cert_path, key_path, key)

    def ocsp_response(self, cert: Path, status: str = "good",
                      this_update: datetime.timedelta = datetime.timedelta(hours=-1),
                      next_update: datetime.timedelta | None = datetime.timedelta(days=1)
                      ) -> bytes:
        """A DER OCSP response about `cert` (a PEM file this CA issued), signed by the CA;
        the update times are relative to now."""
        from cryptography.x509 import ocsp

        leaf = x509.load_pem_x509_certificate(cert.read_bytes())
        now = datetime.datetime.now(datetime.UTC)
        revoked = now - datetime.timedelta(days=1) if status == "revoked" else None
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=leaf, issuer=self.cert, algorithm=hashes.SHA1(),
            cert_status=ocsp.OCSPCertStatus[status.upper()], this_update=now + this_update,
            next_update=None if next_update is None else now + next_update,
            revocation_time=revoked, revocation_reason=None,
        ).responder_id(ocsp.OCSPResponderEncoding.HASH, self.cert)
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def crl(self, revoked: list[Leaf], path: Path | None = None,
            next_update: datetime.timedelta = datetime.timedelta(days=1)) -> Path:
        """A PEM CRL of this CA revoking `revoked` (leaves it issued), written to `path`."""
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
                   .last_update(now - datetime.timedelta(hours=1))
                   .next_update(now + next_update))
        for leaf in revoked:
            serial = x509.load_pem_x509_certificate(leaf.cert.read_bytes()).serial_number
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
                .build())
        path = path or self.dir / "ca.crl.pem"
        path.write_bytes(builder.sign(self.key, hashes.SHA256())
                         .public_bytes(serialization.Encoding.PEM))
        return path
