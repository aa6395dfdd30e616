"""TLS with a remote key, end to end, against real clients.

The test process plays the worker: a real TLS server on 127.0.0.1 whose
ssl.SSLContext holds only certificates and remote keys.  The key holder is a
forked child running keyholder.serve with keys it reads from fds the test
opens for it, like the supervisor does; the test process never reads a key.
Keys and certificates are made by a separate Python process, so the memory
scan can prove that no private key byte is ever in the worker.

Clients: Python's ssl (the system OpenSSL 3.0), pyOpenSSL (its own bundled
OpenSSL, a different build and version), and `openssl s_client`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from OpenSSL import SSL

from titus.keyholder import serve as keyholder
from titus.keyholder.signer import KeyStore, Signer
from titus.supervisor.keyholder import new_channel
from titus.wire import keyproto
from titus.wire.keyproto import Grant, Op, Response, Status
from titus.worker import remotekey

KEY_IDS = {"rsa2048": 1, "rsa4096": 2, "p256": 3, "p384": 4}
RSA_NAMES = ("rsa2048", "rsa4096")
EC_NAMES = ("p256", "p384")
REPO = Path(__file__).resolve().parents[2]

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


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    out = tmp_path_factory.mktemp("pki")
    subprocess.run([sys.executable, "-c", KEYGEN, str(out)], check=True, timeout=300)
    return PKI(out)


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

                keyholder.serve(theirs, Signer(store), log=log)
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


@pytest.fixture(scope="module")
def holder(pki: PKI) -> Iterator[KeyHolder]:
    h = KeyHolder(pki)
    yield h
    assert h.stop() == 0, "the key holder did not exit cleanly on control EOF"


@pytest.fixture
def fresh_holder(pki: PKI) -> Iterator[KeyHolder]:
    """A key holder this test may stop or kill."""
    h = KeyHolder(pki)
    yield h
    with contextlib.suppress(ProcessLookupError):
        os.kill(h.pid, signal.SIGCONT)
    h.stop()


def server_context(pki: PKI, *names: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for n in names:
        remotekey.install(ctx, pki.chain(n), KEY_IDS[n])
    return ctx


@pytest.fixture(scope="module")
def contexts(pki: PKI) -> dict[str, ssl.SSLContext]:
    return {n: server_context(pki, n) for n in KEY_IDS}


@dataclass
class Served:
    """What the worker side saw of one connection."""

    thread: threading.Thread | None = None
    cipher: str | None = None
    version: str | None = None
    error: BaseException | None = None
    handshake_seconds: float | None = None
    ops: dict[str, int] = field(default_factory=dict)

    def join(self) -> Served:
        assert self.thread is not None
        self.thread.join(15)
        assert not self.thread.is_alive(), "the TLS server hung"
        return self


class Worker:
    """The TLS server, one connection at a time, each with the channel it is given."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(15)
        self.port = self.listener.getsockname()[1]

    def serve_one(
        self, ctx: ssl.SSLContext, channel: socket.socket | None, timeout: float = 2.0
    ) -> Served:
        served = Served()

        def run() -> None:
            conn, _ = self.listener.accept()
            if channel is not None:
                remotekey.set_channel(channel, timeout)
            before = remotekey.stats().ok
            start = time.monotonic()
            try:
                tls = ctx.wrap_socket(conn, server_side=True)
            except BaseException as e:
                served.error = e
                served.handshake_seconds = time.monotonic() - start
                conn.close()
                return
            served.handshake_seconds = time.monotonic() - start
            after = remotekey.stats().ok
            served.ops = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k)}
            served.cipher, served.version = tls.cipher()[0], tls.version()
            with contextlib.suppress(OSError):
                tls.settimeout(5)
                data = tls.recv(5)
                if data:
                    tls.sendall(data)
            tls.close()

        served.thread = threading.Thread(target=run, daemon=True)
        served.thread.start()
        return served


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    w = Worker()
    yield w
    w.listener.close()


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


# --- handshakes -------------------------------------------------------------------------------

CASES = [(n, v) for n in KEY_IDS for v in ("1.2", "1.3")]


@pytest.mark.parametrize(("name", "version"), CASES)
def test_python_client(worker, holder, contexts, pki, name: str, version: str) -> None:
    served = worker.serve_one(contexts[name], holder.channel(name))
    got_version, cipher, peer = python_client(worker.port, pki, name, version)
    served.join()
    assert served.error is None
    assert got_version == f"TLSv{version}" == served.version
    assert peer_name(peer) == f"CN={name}"
    if version == "1.2":
        assert cipher.startswith("ECDHE-RSA-" if name in RSA_NAMES else "ECDHE-ECDSA-")
    # RSA in TLS 1.3, and in TLS 1.2 from a client that offers PSS, is PSS: a raw block.
    assert served.ops == ({"SIGN_RSA_RAW": 1} if name in RSA_NAMES else {"SIGN_ECDSA": 1})


@pytest.mark.parametrize(("name", "version"), CASES)
def test_pyopenssl_client(worker, holder, contexts, pki, name: str, version: str) -> None:
    served = worker.serve_one(contexts[name], holder.channel(name))
    got_version, cipher, peer = pyopenssl_client(worker.port, pki, name, version)
    served.join()
    assert served.error is None
    assert got_version == f"TLSv{version}"
    assert peer_name(peer) == f"CN={name}"
    if version == "1.2":
        assert cipher.startswith("ECDHE-RSA-" if name in RSA_NAMES else "ECDHE-ECDSA-")
    assert sum(served.ops.values()) == 1


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")


@needs_openssl
@pytest.mark.parametrize(
    ("name", "args", "op", "sigtype"),
    [
        ("rsa2048", ["-tls1_2", "-sigalgs", "RSA+SHA256"], "SIGN_RSA_PKCS1", "RSA"),
        ("rsa4096", ["-tls1_2", "-sigalgs", "RSA+SHA512"], "SIGN_RSA_PKCS1", "RSA"),
        ("rsa2048", ["-tls1_2", "-sigalgs", "rsa_pss_rsae_sha384"], "SIGN_RSA_RAW", "RSA-PSS"),
        ("rsa4096", ["-tls1_3"], "SIGN_RSA_RAW", "RSA-PSS"),
        ("p256", ["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"], "SIGN_ECDSA", "ECDSA"),
        ("p384", ["-tls1_3", "-sigalgs", "ecdsa_secp384r1_sha384"], "SIGN_ECDSA", "ECDSA"),
    ],
)
def test_openssl_s_client(worker, holder, contexts, pki, name, args, op, sigtype) -> None:
    served = worker.serve_one(contexts[name], holder.channel(name))
    proc = s_client(worker.port, pki, name, *args)
    served.join()
    assert served.error is None, proc.stdout + proc.stderr
    assert "Verify return code: 0 (ok)" in proc.stdout
    assert f"Peer signature type: {sigtype}\n" in proc.stdout
    assert f"Cipher is {served.cipher}\n" in proc.stdout
    assert served.ops == {op: 1}


@needs_openssl
def test_sha1_signatures_are_never_requested(worker, holder, contexts, pki) -> None:
    """What the signer refuses (SHA-1 DigestInfo), our OpenSSL never asks for: no fallback."""
    served = worker.serve_one(contexts["rsa2048"], holder.channel("rsa2048"))
    proc = s_client(worker.port, pki, "rsa2048", "-tls1_2", "-sigalgs", "RSA+SHA1")
    served.join()
    assert proc.returncode != 0
    assert isinstance(served.error, ssl.SSLError)
    assert served.ops == {}


def test_one_context_serves_rsa_and_ecdsa(worker, holder, pki) -> None:
    ctx = server_context(pki, "rsa2048", "p384")
    for cipher, expect, op in [
        ("ECDHE-ECDSA-AES128-GCM-SHA256", "p384", "SIGN_ECDSA"),
        ("ECDHE-RSA-AES128-GCM-SHA256", "rsa2048", "SIGN_RSA_RAW"),
    ]:
        served = worker.serve_one(ctx, holder.channel("rsa2048", "p384"))
        _, got, peer = python_client(worker.port, pki, expect, "1.2", ciphers=cipher)
        served.join()
        assert got == cipher and peer_name(peer) == f"CN={expect}"
        assert served.ops == {op: 1}


def test_rsa_key_exchange_is_off(worker, holder, contexts, pki) -> None:
    ctx = contexts["rsa2048"]
    assert all(c["kea"] == "kx-ecdhe" for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2")
    served = worker.serve_one(ctx, holder.channel("rsa2048"))
    with pytest.raises(ssl.SSLError):
        python_client(worker.port, pki, "rsa2048", "1.2", ciphers="AES128-GCM-SHA256")
    served.join()
    assert isinstance(served.error, ssl.SSLError)
    assert "no shared cipher" in str(served.error)


def test_rsa_key_exchange_re_enabled_still_never_decrypts(worker, holder, pki) -> None:
    """Even if someone turns kRSA back on, the foreign key has no decryption to offer."""
    ctx = server_context(pki, "rsa2048")
    ctx.set_ciphers("AES128-GCM-SHA256")
    served = worker.serve_one(ctx, holder.channel("rsa2048"))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        python_client(worker.port, pki, "rsa2048", "1.2", ciphers="AES128-GCM-SHA256")
    served.join()
    assert served.error is not None
    assert served.ops == {}


# --- the key holder's rules, seen from the worker ---------------------------------------------


def test_budget_is_one_handshake_per_channel(worker, holder, contexts, pki) -> None:
    channel = holder.channel("p256")
    served = worker.serve_one(contexts["p256"], channel)
    python_client(worker.port, pki, "p256", "1.3")
    assert served.join().error is None
    served = worker.serve_one(contexts["p256"], channel)
    with pytest.raises(ssl.SSLError, match="alert"):
        python_client(worker.port, pki, "p256", "1.3")
    assert isinstance(served.join().error, ssl.SSLError)
    assert "REFUSED_BUDGET" in (remotekey.stats().last_error or "")
    holder.wait_log(f"channel {holder._next}: refused REFUSED_BUDGET")


def test_key_not_granted_to_the_channel(worker, holder, contexts, pki) -> None:
    served = worker.serve_one(contexts["rsa2048"], holder.channel("p256"))
    with pytest.raises(ssl.SSLError, match="alert"):
        python_client(worker.port, pki, "rsa2048", "1.3")
    assert isinstance(served.join().error, ssl.SSLError)
    holder.wait_log(f"channel {holder._next}: refused REFUSED_KEY")


def fail_handshake_timed(worker, ctx, channel, pki, name, timeout, during=None):
    """Run a handshake expected to fail; return (client error, seconds after `during` ran)."""
    served = worker.serve_one(ctx, channel, timeout=timeout)
    result: dict[str, object] = {}

    def client() -> None:
        try:
            python_client(worker.port, pki, name, "1.3")
        except BaseException as e:
            result["error"] = e
        result["end"] = time.monotonic()

    t = threading.Thread(target=client, daemon=True)
    t.start()
    mark = time.monotonic()
    if during is not None:
        time.sleep(0.3)  # the server is now waiting on the key holder
        during()
        mark = time.monotonic()
    t.join(15)
    assert not t.is_alive(), "client hung"
    served.join()
    return result.get("error"), float(result["end"]) - mark, served


def test_key_holder_killed_mid_handshake_fails_at_once(worker, fresh_holder, pki) -> None:
    ctx = server_context(pki, "rsa2048")
    channel = fresh_holder.channel("rsa2048", budget=2)
    served = worker.serve_one(ctx, channel)
    python_client(worker.port, pki, "rsa2048", "1.3")  # the holder is up and has our grant
    assert served.join().error is None
    os.kill(fresh_holder.pid, signal.SIGSTOP)  # it will get our request and never answer

    def kill() -> None:
        os.kill(fresh_holder.pid, signal.SIGKILL)

    error, after_kill, served = fail_handshake_timed(
        worker, ctx, channel, pki, "rsa2048", 2.0, kill
    )
    assert isinstance(error, ssl.SSLError) and "alert" in str(error), error
    assert isinstance(served.error, ssl.SSLError)
    assert after_kill < 0.5, f"handshake failed {after_kill:.3f} s after the kill"
    assert served.handshake_seconds is not None and served.handshake_seconds < 1.5


def test_dead_key_holder_fails_the_handshake_at_once(worker, fresh_holder, pki) -> None:
    ctx = server_context(pki, "p256")
    channel = fresh_holder.channel("p256")
    os.kill(fresh_holder.pid, signal.SIGKILL)
    os.waitpid(fresh_holder.pid, 0)
    error, seconds, _ = fail_handshake_timed(worker, ctx, channel, pki, "p256", 2.0)
    assert isinstance(error, ssl.SSLError) and "alert" in str(error), error
    assert seconds < 0.5
    last = remotekey.stats().last_error or ""
    assert "BrokenPipeError" in last or "closed the channel" in last, last


def test_stuck_key_holder_times_out_instead_of_hanging(worker, fresh_holder, pki) -> None:
    ctx = server_context(pki, "p256")
    channel = fresh_holder.channel("p256", budget=2)
    served = worker.serve_one(ctx, channel)
    python_client(worker.port, pki, "p256", "1.3")
    assert served.join().error is None
    os.kill(fresh_holder.pid, signal.SIGSTOP)
    error, _, served = fail_handshake_timed(worker, ctx, channel, pki, "p256", 0.5)
    assert isinstance(error, ssl.SSLError) and "alert" in str(error), error
    assert 0.4 < served.handshake_seconds < 1.5, served.handshake_seconds
    assert "TimeoutError" in (remotekey.stats().last_error or "")


# --- the transport: answers are checked, never trusted ------------------------------------------


class FixedAnswer:
    """A transport standing in for a key holder that answers with whatever it is given."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.calls: list[tuple[str, int, int]] = []

    def call(self, op, key_id: int, payload: bytes) -> bytes:
        self.calls.append((op.name, key_id, len(payload)))
        return self.answer


@pytest.mark.parametrize(
    ("name", "answer", "complaint"),
    [
        ("rsa2048", bytes(255), "RSA_size is 256"),
        ("rsa2048", bytes(257), "RSA_size is 256"),
        ("p256", bytes(73), "ECDSA_size is 72"),
        ("p256", b"", "ECDSA_size is 72"),
    ],
)
def test_answers_of_the_wrong_size_fail_the_handshake(
    worker, contexts, pki, name, answer, complaint
) -> None:
    fake = FixedAnswer(answer)
    served = worker.serve_one(contexts[name], None)
    remotekey.set_transport(fake)
    try:
        with pytest.raises(ssl.SSLError, match="alert"):
            python_client(worker.port, pki, name, "1.3")
        served.join()
    finally:
        remotekey.set_transport(None)
    assert isinstance(served.error, ssl.SSLError)
    assert len(fake.calls) == 1 and fake.calls[0][1] == KEY_IDS[name]
    assert complaint in (remotekey.stats().last_error or "")


def test_a_right_sized_wrong_signature_is_caught_by_the_client(worker, contexts, pki) -> None:
    served = worker.serve_one(contexts["rsa2048"], None)
    remotekey.set_transport(FixedAnswer(b"\x01" * 256))
    try:
        with pytest.raises(ssl.SSLError):
            python_client(worker.port, pki, "rsa2048", "1.3")
        served.join()
    finally:
        remotekey.set_transport(None)


def answering(sock: socket.socket, make) -> threading.Thread:
    """A stand-in key holder that answers one request with make(request)."""

    def run() -> None:
        req = keyproto.decode_request_packet(sock.recv(keyproto.MAX_REQUEST))
        sock.send(make(req))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (
            lambda r: keyproto.encode_response(Response(Status.OK, r.request_id + 1, b"s")),
            "answer to",
        ),
        (lambda r: keyproto.encode_response(Response(Status.REFUSED_SHAPE, r.request_id)), "SHAPE"),
        (lambda r: b"\x01\x00junk", "exactly one frame"),
        (lambda r: b"", "closed the channel"),
    ],
)
def test_channel_transport_checks_every_answer_and_then_gives_up(make, error: str) -> None:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    transport = remotekey.ChannelTransport(mine, timeout=2)
    t = answering(theirs, make)
    with pytest.raises((remotekey.RemoteKeyError, keyproto.ProtocolError, ConnectionError)) as e:
        transport.call(Op.SIGN_ECDSA, 3, bytes(32))
    assert error in str(e.value)
    t.join(5)
    with pytest.raises(remotekey.RemoteKeyError, match="unusable"):
        transport.call(Op.SIGN_ECDSA, 3, bytes(32))  # a late answer can't be mistaken for this
    mine.close()
    theirs.close()


def test_channel_transport_round_trip_and_timeout() -> None:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    transport = remotekey.ChannelTransport(mine, timeout=0.3)
    answering(theirs, lambda r: keyproto.encode_response(Response(Status.OK, r.request_id, b"sig")))
    assert transport.call(Op.SIGN_ECDSA, 3, bytes(32)) == b"sig"
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        transport.call(Op.SIGN_ECDSA, 3, bytes(32))  # nobody answers this time
    assert 0.25 < time.monotonic() - start < 1.0
    with pytest.raises(ValueError, match="SEQPACKET"):
        remotekey.ChannelTransport(socket.socketpair()[0])
    mine.close()
    theirs.close()


# --- fork: contexts built before fork, channels set after ---------------------------------------


def _in_child(body) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = body()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def test_context_built_before_fork_serves_in_the_child(holder, contexts, pki) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    parent_channel = holder.channel("p384")
    remotekey.set_channel(parent_channel)  # the child must not inherit this one
    child_channel = holder.channel("p384")

    def child() -> int:
        conn, _ = listener.accept()
        remotekey.set_channel(child_channel)
        tls = contexts["p384"].wrap_socket(conn, server_side=True)
        tls.sendall(tls.recv(5))
        tls.close()
        return 0

    pid = _in_child(child)
    child_channel.close()
    _, _, peer = python_client(listener.getsockname()[1], pki, "p384", "1.3")
    _, status = os.waitpid(pid, 0)
    listener.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert peer_name(peer) == "CN=p384"
    # The parent's channel was untouched by the child: its budget is still there.
    served_by_parent = Worker()
    served = served_by_parent.serve_one(contexts["p384"], parent_channel)
    python_client(served_by_parent.port, pki, "p384", "1.3")
    assert served.join().error is None
    served_by_parent.listener.close()


def test_fork_forgets_the_parents_channel(holder, contexts, pki) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    remotekey.set_channel(holder.channel("p256"))

    def child() -> int:
        conn, _ = listener.accept()
        try:
            contexts["p256"].wrap_socket(conn, server_side=True)
        except ssl.SSLError:
            ok = "no key-holder channel" in (remotekey.stats().last_error or "")
            return 0 if ok else 2
        return 4

    pid = _in_child(child)
    with pytest.raises(ssl.SSLError, match="alert"):
        python_client(listener.getsockname()[1], pki, "p256", "1.3")
    _, status = os.waitpid(pid, 0)
    listener.close()
    assert os.waitstatus_to_exitcode(status) == 0


# --- install-time validation ------------------------------------------------------------------


def _self_signed(key, algorithm) -> bytes:
    import datetime

    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(n)
        .issuer_name(n)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_install_refuses_keys_the_key_holder_cannot_serve() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    cases = [
        (ed25519.Ed25519PrivateKey.generate(), None, "neither RSA nor ECDSA"),
        (ec.generate_private_key(ec.SECP521R1()), hashes.SHA256(), "not P-256 or P-384"),
        (rsa.generate_private_key(65537, 1024), hashes.SHA256(), "outside 2048-4096"),
    ]
    for key, algorithm, message in cases:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with pytest.raises(remotekey.RemoteKeyError, match=message):
            remotekey.install(ctx, _self_signed(key, algorithm), 1)
    with pytest.raises(remotekey.RemoteKeyError, match="not a PEM certificate"):
        remotekey.install(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), b"nope", 1)


def test_install_reads_files_and_sends_the_chain(pki: PKI) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    key = remotekey.install(ctx, str(pki.chain("rsa4096")), KEY_IDS["rsa4096"])
    assert (key.kind, key.bits, key.signature_size, key.chain_length) == ("rsa", 4096, 512, 2)
    key = remotekey.install(ctx, pki.chain("p384"), KEY_IDS["p384"])
    assert (key.kind, key.curve, key.signature_size) == ("ec", "secp384r1", 104)
    # The client trusts only the root: verification works only if the intermediate is sent.


def test_ssl_ctx_pointer_is_checked_not_assumed() -> None:
    a = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    b = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ptr_a = remotekey.ssl_ctx_pointer(a)
    assert ptr_a != remotekey.ssl_ctx_pointer(b)
    with pytest.raises(remotekey.RemoteKeyError, match="not this context's SSL_CTX"):
        remotekey._check_ctx_pointer(b, ptr_a)
    with pytest.raises(TypeError):
        remotekey.ssl_ctx_pointer(object())  # type: ignore[arg-type]
    assert remotekey.check_runtime() == ssl.OPENSSL_VERSION


def test_a_different_openssl_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssl, "OPENSSL_VERSION", "OpenSSL 9.9.9 (not the one ctypes sees)")
    with pytest.raises(remotekey.RemoteKeyError, match="not the same OpenSSL"):
        remotekey._load_openssl()


# --- invariant 1: no private key byte in the worker -------------------------------------------


def scan(pid: int, pki: PKI) -> set[str]:
    """Scan from a separate process, so the needles never enter this one."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.memscan", str(pid), str(pki.needles)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=True,
    )
    return set(json.loads(proc.stdout))


def test_no_private_key_bytes_in_the_worker(worker, holder, contexts, pki) -> None:
    for name in KEY_IDS:  # the worker has done handshakes with every key
        served = worker.serve_one(contexts[name], holder.channel(name))
        python_client(worker.port, pki, name, "1.3")
        assert served.join().error is None
    in_worker = scan(os.getpid(), pki)
    in_holder = scan(holder.pid, pki)
    assert in_worker == set()
    for name in KEY_IDS:  # the same scan finds them where they are
        assert f"{name}:d_le" in in_holder or f"{name}:d_be" in in_holder, sorted(in_holder)
        assert f"{name}:pem_line" in in_holder, sorted(in_holder)
