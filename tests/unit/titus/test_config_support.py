"""Helpers for the config tests (no tests here): certificates, keys, config files."""

from __future__ import annotations

import datetime
import functools
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from titus.config.model import Config, VHost
from titus.worker.connection import build_table

DATA = Path(__file__).resolve().parents[2] / "data"
REPO = Path(__file__).resolve().parents[3]


@functools.cache
def private_key(kind: str = "rsa", bits: int = 2048):  # type: ignore[no-untyped-def]
    """One key per kind for the whole run: generating RSA keys is slow."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec-k256":
        return ec.generate_private_key(ec.SECP256K1())
    if kind == "ec-p521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def make_cert(
    directory: Path, stem: str = "example.com", kind: str = "rsa", bits: int = 2048
) -> tuple[Path, Path]:
    """A self-signed certificate and its key as PEM files ``stem.crt`` and ``stem.key``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = private_key(kind, bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(stem)]), critical=False)
    )
    algorithm = None if kind == "ed25519" else hashes.SHA256()
    cert = builder.sign(key, algorithm)
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def basic_conf(directory: Path, extra: str = "", *, name: str = "titus.conf") -> Path:
    """A minimal working titus.conf (port 443, one implicit vhost) plus ``extra`` lines."""
    make_cert(directory / "certs")
    text = (
        "port 443\n"
        "cert certs/example.com.crt\n"
        "key certs/example.com.key\n"
        "backend 127.0.0.1\n"
        "backend-port 8080\n"
    )
    return write(directory / name, text + extra)


def chosen(config: Config, address: str, port: int, server_name: str | None) -> VHost | None:
    """The vhost the worker's chooser (C, wk_choose.c) picks for a connection, or None."""
    contexts = [ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) for _ in config.vhosts]
    table = build_table(config.vhosts, contexts, 1.0, 1.0)
    addr = ipaddress.ip_address(address)
    index = table.choose((addr.version, addr.packed, port), server_name)
    return None if index < 0 else config.vhosts[index]
