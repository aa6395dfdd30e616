"""`make run`: a demo certificate, a small backend, and titus in front of it on 127.0.0.1.

Everything lives in ./demo (made on first run, reused after).  The backend is a
separate process (Python's http.server) so the supervisor stays single-threaded.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEMO_DIR = Path("demo")
TITUS_PORT = 8443
BACKEND_PORT = 8080


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_demo_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A demo CA and a localhost certificate it signed (ECDSA P-256); (ca, cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    if ca_path.exists() and cert_path.exists() and key_path.exists():
        return ca_path, cert_path, key_path
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("titus demo CA"))
          .issuer_name(_name("titus demo CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return ca_path, cert_path, key_path


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port(preferred: int) -> int:
    if _free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ca, cert, key = make_demo_certificates(DEMO_DIR)
    titus_port, backend_port = _port(TITUS_PORT), _port(BACKEND_PORT)
    www = DEMO_DIR / "www"
    www.mkdir(exist_ok=True)
    (www / "index.html").write_text(
        "Hello from the backend. Your TLS connection was terminated by titus in a fresh,\n"
        "jailed process that never saw the private key.\n")
    config = DEMO_DIR / "titus.conf"
    config.write_text(
        "# Written by `make run` (titus.demo).\n"
        f"listen 127.0.0.1:{titus_port}\n"
        f"cert {cert.resolve()}\n"
        f"key {key.resolve()}\n"
        "backend 127.0.0.1\n"
        f"backend-port {backend_port}\n"
        "min-spare-children 4\n"
        "max-children 64\n"
        "max-handshake-time 10\n")
    backend = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(backend_port), "--bind", "127.0.0.1",
         "--directory", str(www)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        print(f"titus demo: backend on 127.0.0.1:{backend_port}, titus on 127.0.0.1:{titus_port}")
        print(f"titus demo: try   curl --cacert {ca} https://localhost:{titus_port}/")
        print("titus demo: Ctrl-C stops it", flush=True)
        from titus.cli import main as titus_main

        return titus_main(["--config", str(config)])
    finally:
        backend.terminate()
        backend.wait()


if __name__ == "__main__":
    sys.exit(main())
