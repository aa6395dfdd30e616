"""Certificates for the benchmark: one CA and one server certificate per key type.

Every proxy gets the very same files, so the TLS work per handshake is the same:
an RSA-2048 leaf (signed by an RSA-2048 CA) or an ECDSA P-256 leaf (signed by a
P-256 CA), both valid for 127.0.0.1 and localhost.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

KEY_TYPES = ("rsa2048", "ecdsa-p256")


@dataclass(frozen=True)
class CertSet:
    kind: str
    ca: Path  # CA certificate (for clients that verify)
    cert: Path  # server certificate
    key: Path  # server private key (PKCS#8 PEM)
    combined: Path  # key + certificate in one PEM (hitch)


def _new_key(kind: str):
    if kind == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unknown key type {kind!r}")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make(kind: str, directory: Path) -> CertSet:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)

    ca_key = _new_key(kind)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"titus bench CA ({kind})"))
        .issuer_name(_name(f"titus bench CA ({kind})"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = _new_key(kind)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    paths = CertSet(kind, directory / f"{kind}-ca.pem", directory / f"{kind}-cert.pem",
                    directory / f"{kind}-key.pem", directory / f"{kind}-combined.pem")
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert_pem)
    paths.key.write_bytes(key_pem)
    paths.key.chmod(0o600)
    paths.combined.write_bytes(key_pem + cert_pem)
    paths.combined.chmod(0o600)
    return paths
