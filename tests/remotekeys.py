"""Keys held by a real key holder, and real clients, for the tests of the C worker.

KEYGEN runs in its own interpreter: keys and certificates are made there, so
the test process (and every worker forked from it) never holds a private key
and the memory scan can prove it.  KeyHolder runs keyholder.serve in a forked
child fed like the supervisor feeds it: key fds and grants.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from OpenSSL import SSL

from titus.keyholder import serve as keyholder
from titus.keyholder.signer import KeyStore, Signer
from titus.supervisor.keyholder import new_channel
from titus.wire.keyproto import Grant

KEY_IDS = {"rsa2048": 1, "rsa4096": 2, "p256": 3, "p384": 4}
RSA_NAMES = ("rsa2048", "rsa4096")
EC_NAMES = ("p256", "p384")
REPO = Path(__file__).resolve().parents[1]

# Runs in its own interpreter: the only process besides the key holder that holds keys.
KEYGEN = r"""
import datetime, json, sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

out = Path(sys.argv[1])
now = datetime.datetime.now(datetime.UTC)
def name(cn): return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
def cert(subject, key, issuer, issuer_key, ca, sans=()):
    b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), False)
    return b.sign(issuer_key, hashes.SHA256())
def pem(c): return c.public_bytes(serialization.Encoding.PEM)

root_key = ec.generate_private_key(ec.SECP384R1())
root = cert("titus test root", root_key, "titus test root", root_key, True)
mid_key = ec.generate_private_key(ec.SECP256R1())
mid = cert("titus test intermediate", mid_key, "titus test root", root_key, True)
(out / "ca.pem").write_bytes(pem(root))
keys = {
    "rsa2048": rsa.generate_private_key(65537, 2048),
    "rsa4096": rsa.generate_private_key(65537, 4096),
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "p384": ec.generate_private_key(ec.SECP384R1()),
}
needles = {}
for n, key in keys.items():
    leaf = cert(n, key, "titus test intermediate", mid_key, False, [f"{n}.titus.test"])
    (out / f"{n}.chain.pem").write_bytes(pem(leaf) + pem(mid))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    (out / f"{n}.key.pem").write_bytes(key_pem)
    for fmt in ("PKCS8", "TraditionalOpenSSL"):
        der = key.private_bytes(serialization.Encoding.DER,
                                getattr(serialization.PrivateFormat, fmt),
                                serialization.NoEncryption())
        needles[f"{n}:der_{fmt}"] = der.hex()
    pn = key.private_numbers()
    ints = {"d": pn.d, "p": pn.p, "q": pn.q} if n.startswith("rsa") else {
        "d": pn.private_value}
    for label, value in ints.items():
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        needles[f"{n}:{label}_be"] = raw.hex()
        needles[f"{n}:{label}_le"] = raw[::-1].hex()
    body = key_pem.splitlines()[1:-1]
    needles[f"{n}:pem_line"] = body[len(body) // 2].hex()
(out / "needles.json").write_text(json.dumps(needles))
"""


@dataclass
class PKI:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def needles(self) -> Path:
        return self.dir / "needles.json"  # never opened by this process

    def chain(self, name: str) -> Path:
        return self.dir / f"{name}.chain.pem"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key.pem"  # never read by this process


def make_pki(directory: Path) -> PKI:
    """Keys and certificates made by KEYGEN in its own interpreter, in `directory`."""
    subprocess.run([sys.executable, "-c", KEYGEN, str(directory)], check=True, timeout=300)
    return PKI(directory)


class KeyHolder:
    """A key holder in a forked child, fed like the supervisor feeds it: key fds and grants."""

    def __init__(self, pki: PKI) -> None:
        names = list(KEY_IDS)
        key_fds = [os.open(pki.key(n), os.O_RDONLY | os.O_CLOEXEC) for n in names]
        chains = {n: pki.chain(n).read_bytes() for n in names}
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log_r, log_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the key holder: never return into pytest
            code = 1
            try:
                self.control.close()
                os.close(log_r)
                pems = keyholder.load_keys_from_fds(key_fds)
                store = KeyStore()
                for n, pem in zip(names, pems, strict=True):
                    store.add(KEY_IDS[n], pem, chains[n], key_name=n, cert_name=f"{n}.chain")

                def log(line: str) -> None:
                    os.write(log_w, (line + "\n").encode())

                signer = Signer(store)
                log("ready")  # keys loaded: a handshake's first request is answered at once
                keyholder.serve(theirs, signer, log=log)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        for fd in key_fds:
            os.close(fd)
        os.close(log_w)
        theirs.close()
        os.set_blocking(log_r, False)
        self._log_fd = log_r
        self._log = b""
        self._next = 0
        self.wait_log("ready", timeout=120)

    def channel(self, *names: str, budget: int = 1) -> socket.socket:
        self._next += 1
        grant = Grant(self._next, budget, tuple(KEY_IDS[n] for n in names))
        return new_channel(self.control, grant)

    def log(self) -> str:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._log_fd, 65536):
                self._log += chunk
        return self._log.decode()

    def wait_log(self, text: str, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert time.monotonic() < deadline, f"{text!r} not in key-holder log {self.log()!r}"
            time.sleep(0.01)

    def stop(self) -> int | None:
        """Close the control socket (the holder must exit by itself) and reap it."""
        self.control.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # already reaped by the test
                os.close(self._log_fd)
                return None
            if pid:
                os.close(self._log_fd)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self._log_fd)
        return None


# --- clients ----------------------------------------------------------------------------------

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def python_client(port: int, pki: PKI, name: str, version: str, ciphers: str | None = None):
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.minimum_version = ctx.maximum_version = VERSIONS[version]
    if ciphers:
        ctx.set_ciphers(ciphers)
    host = f"{name}.titus.test"
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(b"ping\n")
        assert tls.recv(5) == b"ping\n"
        peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        return tls.version(), tls.cipher()[0], peer


def pyopenssl_client(port: int, pki: PKI, name: str, version: str):
    proto = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}[version]
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(proto)
    ctx.set_max_proto_version(proto)
    ctx.set_verify(SSL.VERIFY_PEER)
    ctx.load_verify_locations(str(pki.ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.settimeout(None)  # pyOpenSSL wants a blocking socket; the kernel bounds the wait
        timeval = struct.pack("ll", 10, 0)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        conn = SSL.Connection(ctx, raw)
        conn.set_tlsext_host_name(f"{name}.titus.test".encode())
        conn.set_connect_state()
        conn.do_handshake()
        conn.sendall(b"ping\n")
        assert conn.recv(5) == b"ping\n"
        peer = conn.get_peer_certificate(as_cryptography=True)
        result = conn.get_protocol_version_name(), conn.get_cipher_name(), peer
        conn.shutdown()
        return result


def s_client(port: int, pki: PKI, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    host = f"{name}.titus.test"
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", host]
    cmd += ["-verify_hostname", host, "-CAfile", str(pki.ca), "-verify_return_error", *args]
    return subprocess.run(cmd, input="ping\n", capture_output=True, text=True, timeout=20)


def peer_name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


