"""TLS with a remote key, end to end, against real clients, in the C worker.

Each connection is served by the C connection path (titus.worker._worker) in
a child forked from the test, on an ssl.SSLContext that holds only certificates
and remote keys (installed by C); the test plays the supervisor (tests/
cworker.py).  The key holder is a forked child running keyholder.serve with
keys it reads from fds the test opens for it, like the supervisor does; the
test process never reads a key.  Keys and certificates are made by a separate
Python process, so the memory scan can prove that no private key byte is ever
in a worker (nor in the process that built its contexts).  Between worker and
key holder a Tap records which operations were asked, or answers by itself.

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
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from cryptography import x509

from tests.cworker import Served, Tap, Worker, worker_filter
from tests.remotekeys import (
    EC_NAMES,
    KEY_IDS,
    PKI,
    REPO,
    RSA_NAMES,
    KeyHolder,
    make_pki,
    peer_name,
    pyopenssl_client,
    python_client,
    s_client,
)
from titus.wire import keyproto
from titus.wire.keyproto import Response, Status
from titus.worker import _worker, remotekey


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


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


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    """Every worker runs under the worker profile's seccomp filter (tests/cworker.py)."""
    w = Worker(seccomp=worker_filter())
    yield w
    w.close()


def tapped(worker: Worker, ctx: ssl.SSLContext, channel: socket.socket, **kw) -> Served:
    """Serve one connection with the key-holder channel seen through a Tap."""
    return worker.serve_one(ctx, None, tap=Tap(channel), **kw)


def failed(served: Served) -> bool:
    return served.finished is not None and served.finished.outcome == "handshake-failed"


# --- handshakes -------------------------------------------------------------------------------

CASES = [(n, v) for n in KEY_IDS for v in ("1.2", "1.3")]


@pytest.mark.parametrize(("name", "version"), CASES)
def test_python_client(worker, holder, contexts, pki, name: str, version: str) -> None:
    served = tapped(worker, contexts[name], holder.channel(name))
    got_version, cipher, peer = python_client(worker.port, pki, name, version)
    served.join()
    assert served.ok and served.exit_status == 0
    assert got_version == f"TLSv{version}" == served.handshake.version
    assert cipher == served.handshake.cipher
    assert peer_name(peer) == f"CN={name}"
    assert served.handshake.sni == f"{name}.titus.test"
    if version == "1.2":
        assert cipher.startswith("ECDHE-RSA-" if name in RSA_NAMES else "ECDHE-ECDSA-")
    # RSA in TLS 1.3, and in TLS 1.2 from a client that offers PSS, is PSS: a raw block.
    assert served.ops == ({"SIGN_RSA_RAW": 1} if name in RSA_NAMES else {"SIGN_ECDSA": 1})
    assert (served.finished.signatures, served.finished.signature_failures) == (1, 0)
    assert (served.finished.bytes_in, served.finished.bytes_out) == (5, 5)


@pytest.mark.parametrize(("name", "version"), CASES)
def test_pyopenssl_client(worker, holder, contexts, pki, name: str, version: str) -> None:
    served = tapped(worker, contexts[name], holder.channel(name))
    got_version, cipher, peer = pyopenssl_client(worker.port, pki, name, version)
    served.join()
    assert served.ok
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
    served = tapped(worker, contexts[name], holder.channel(name))
    proc = s_client(worker.port, pki, name, *args)
    served.join()
    assert served.ok, (served.finished, proc.stdout + proc.stderr)
    assert "Verify return code: 0 (ok)" in proc.stdout
    assert f"Peer signature type: {sigtype}\n" in proc.stdout
    assert f"Cipher is {served.handshake.cipher}\n" in proc.stdout
    assert served.ops == {op: 1}


@needs_openssl
def test_sha1_signatures_are_never_requested(worker, holder, contexts, pki) -> None:
    """What the signer refuses (SHA-1 DigestInfo), our OpenSSL never asks for: no fallback."""
    served = tapped(worker, contexts["rsa2048"], holder.channel("rsa2048"))
    proc = s_client(worker.port, pki, "rsa2048", "-tls1_2", "-sigalgs", "RSA+SHA1")
    served.join()
    assert proc.returncode != 0
    assert failed(served) and served.handshake is None
    assert served.ops == {}


def test_one_context_serves_rsa_and_ecdsa(worker, holder, pki) -> None:
    ctx = server_context(pki, "rsa2048", "p384")
    for cipher, expect, op in [
        ("ECDHE-ECDSA-AES128-GCM-SHA256", "p384", "SIGN_ECDSA"),
        ("ECDHE-RSA-AES128-GCM-SHA256", "rsa2048", "SIGN_RSA_RAW"),
    ]:
        served = tapped(worker, ctx, holder.channel("rsa2048", "p384"))
        _, got, peer = python_client(worker.port, pki, expect, "1.2", ciphers=cipher)
        served.join()
        assert got == cipher and peer_name(peer) == f"CN={expect}"
        assert served.ops == {op: 1}


def test_rsa_key_exchange_is_off(worker, holder, contexts, pki) -> None:
    ctx = contexts["rsa2048"]
    assert all(c["kea"] == "kx-ecdhe" for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2")
    served = tapped(worker, ctx, holder.channel("rsa2048"))
    with pytest.raises(ssl.SSLError):
        python_client(worker.port, pki, "rsa2048", "1.2", ciphers="AES128-GCM-SHA256")
    served.join()
    assert failed(served)
    assert "no shared cipher" in served.finished.detail


def test_rsa_key_exchange_re_enabled_still_never_decrypts(worker, holder, pki) -> None:
    """Even if someone turns kRSA back on, the foreign key has no decryption to offer."""
    ctx = server_context(pki, "rsa2048")
    ctx.set_ciphers("AES128-GCM-SHA256")
    served = tapped(worker, ctx, holder.channel("rsa2048"))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        python_client(worker.port, pki, "rsa2048", "1.2", ciphers="AES128-GCM-SHA256")
    served.join()
    assert not served.ok and served.handshake is None
    assert served.ops == {}


# --- the key holder's rules, seen from the worker ---------------------------------------------


def test_budget_is_one_handshake_per_channel(worker, holder, contexts, pki) -> None:
    channel = holder.channel("p256")
    served = worker.serve_one(contexts["p256"], channel)
    python_client(worker.port, pki, "p256", "1.3")
    assert served.join().ok
    served = worker.serve_one(contexts["p256"], channel)
    with pytest.raises(ssl.SSLError, match="alert"):
        python_client(worker.port, pki, "p256", "1.3")
    assert failed(served.join())
    assert (served.finished.signatures, served.finished.signature_failures) == (0, 1)
    assert "key holder" in served.finished.detail
    holder.wait_log(f"channel {holder._next}: refused REFUSED_BUDGET")


def test_key_not_granted_to_the_channel(worker, holder, contexts, pki) -> None:
    served = worker.serve_one(contexts["rsa2048"], holder.channel("p256"))
    with pytest.raises(ssl.SSLError, match="alert"):
        python_client(worker.port, pki, "rsa2048", "1.3")
    assert failed(served.join())
    holder.wait_log(f"channel {holder._next}: refused REFUSED_KEY")


def fail_handshake_timed(worker, ctx, channel, pki, name, timeout, during=None):
    """Run a handshake expected to fail; return (client error, seconds after `during` ran)."""
    served = worker.serve_one(ctx, channel, keyholder_timeout=timeout)
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
        time.sleep(0.3)  # the worker is now waiting on the key holder
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
    assert served.join().ok
    os.kill(fresh_holder.pid, signal.SIGSTOP)  # it will get our request and never answer

    def kill() -> None:
        os.kill(fresh_holder.pid, signal.SIGKILL)

    error, after_kill, served = fail_handshake_timed(
        worker, ctx, channel, pki, "rsa2048", 2.0, kill
    )
    assert isinstance(error, ssl.SSLError) and "alert" in str(error), error
    assert failed(served) and served.finished.signature_failures == 1
    assert after_kill < 0.5, f"handshake failed {after_kill:.3f} s after the kill"
    assert served.seconds is not None and served.seconds < 1.5


def test_dead_key_holder_fails_the_handshake_at_once(worker, fresh_holder, pki) -> None:
    ctx = server_context(pki, "p256")
    channel = fresh_holder.channel("p256")
    os.kill(fresh_holder.pid, signal.SIGKILL)
    os.waitpid(fresh_holder.pid, 0)
    error, seconds, served = fail_handshake_timed(worker, ctx, channel, pki, "p256", 2.0)
    assert isinstance(error, ssl.SSLError) and "alert" in str(error), error
    assert seconds < 0.5
    assert failed(served) and served.finished.signature_failures == 1


def test_stuck_key_holder_times_out_instead_of_hanging(worker, fresh_holder, pki) -> None:
    ctx = server_context(pki, "p256")
    channel = fresh_holder.channel("p256", budget=2)
    served = worker.serve_one(ctx, channel)
    python_client(worker.port, pki, "p256", "1.3")
    assert served.join().ok
    os.kill(fresh_holder.pid, signal.SIGSTOP)
    error, _, served = fail_handshake_timed(worker, ctx, channel, pki, "p256", 0.5)
    assert isinstance(error, ssl.SSLError) and "alert" in str(error), error
    assert failed(served) and served.finished.signature_failures == 1
    assert 0.4 < served.seconds < 1.5, served.seconds


def test_no_key_holder_behind_the_channel_fails_the_handshake(worker, contexts, pki) -> None:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.close()
    served = worker.serve_one(contexts["p256"], mine)
    mine.close()
    with pytest.raises(ssl.SSLError, match="alert"):
        python_client(worker.port, pki, "p256", "1.3")
    assert failed(served.join()) and served.finished.signature_failures == 1


# --- answers are checked, never trusted ---------------------------------------------------------


def fixed(answer: bytes):
    """A stand-in key holder that answers every request OK with `answer`."""
    return lambda r: keyproto.encode_response(Response(Status.OK, r.request_id, answer))


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("rsa2048", bytes(255)),  # RSA_size is 256
        ("rsa2048", bytes(257)),
        ("p256", bytes(73)),  # ECDSA_size is 72
        ("p256", b""),
    ],
)
def test_answers_of_the_wrong_size_fail_the_handshake(worker, contexts, pki, name, answer) -> None:
    tap = Tap(None, fixed(answer))
    served = worker.serve_one(contexts[name], None, tap=tap)
    with pytest.raises(ssl.SSLError, match="alert"):
        python_client(worker.port, pki, name, "1.3")
    assert failed(served.join())
    assert tap.ops == [("SIGN_ECDSA" if name in EC_NAMES else "SIGN_RSA_RAW", KEY_IDS[name])]
    assert served.finished.signature_failures == 1


def test_a_right_sized_wrong_signature_is_caught_by_the_client(worker, contexts, pki) -> None:
    served = worker.serve_one(contexts["rsa2048"], None, tap=Tap(None, fixed(b"\x01" * 256)))
    with pytest.raises(ssl.SSLError):
        python_client(worker.port, pki, "rsa2048", "1.3")
    assert not served.join().ok


@pytest.mark.parametrize(
    "make",
    [
        lambda r: keyproto.encode_response(Response(Status.OK, r.request_id + 1, bytes(72))),
        lambda r: keyproto.encode_response(Response(Status.REFUSED_SHAPE, r.request_id)),
        lambda r: keyproto.encode_response(Response(Status.OK, r.request_id, bytes(72))) + b"x",
        lambda r: b"\x01\x00junk",
        lambda r: b"\x02" + keyproto.encode_response(Response(Status.OK, r.request_id,
                                                              bytes(72)))[1:],
    ],
    ids=["another-request-id", "refused", "trailing-byte", "junk", "bad-version"],
)
def test_every_answer_is_checked_and_then_the_channel_is_given_up(worker, contexts, pki,
                                                                   make) -> None:
    tap = Tap(None, make)
    served = worker.serve_one(contexts["p256"], None, tap=tap)
    with pytest.raises(ssl.SSLError, match="alert"):
        python_client(worker.port, pki, "p256", "1.3")
    assert failed(served.join())
    assert len(tap.ops) == 1  # one request; a late answer can never be taken for another


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
        (ed25519.Ed25519PrivateKey.generate(), None, "Ed25519 keys are not supported"),
        (ec.generate_private_key(ec.SECP521R1()), hashes.SHA256(), "use P-256 or P-384"),
        (rsa.generate_private_key(65537, 1024), hashes.SHA256(), "must have 2048 to 4096 bits"),
    ]
    for key, algorithm, message in cases:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with pytest.raises(remotekey.RemoteKeyError, match=message):
            remotekey.install(ctx, _self_signed(key, algorithm), 1)
    with pytest.raises(remotekey.RemoteKeyError, match="not a PEM certificate"):
        remotekey.install(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), b"nope", 1)


def test_install_checks_what_it_hands_to_openssl(pki: PKI) -> None:
    chain = remotekey.read_chain(pki.chain("p256"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    other = remotekey.read_chain(pki.chain("p384"))
    with pytest.raises(RuntimeError, match="refused the remote key"):  # not its certificate
        _worker.install_key(ctx, chain.ders, "ec", other.public, 0, "secp384r1", 1)
    with pytest.raises(RuntimeError, match="cannot parse"):
        _worker.install_key(ctx, (chain.ders[0] + b"x",), "ec", chain.public, 0, "secp256r1", 1)
    with pytest.raises(ValueError):
        _worker.install_key(ctx, chain.ders, "dsa", chain.public, 0, None, 1)
    with pytest.raises(ValueError):
        _worker.install_key(ctx, chain.ders, "ec", chain.public, 0, "secp256r1", 70000)


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
    assert remotekey.ssl_ctx_pointer(a) != remotekey.ssl_ctx_pointer(b)
    assert a.options == ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).options  # restored
    with pytest.raises(TypeError):
        remotekey.ssl_ctx_pointer(object())  # type: ignore[arg-type]
    assert remotekey.check_runtime() == ssl.OPENSSL_VERSION


def test_a_different_openssl_is_refused() -> None:
    """Asked about a module that does not resolve our libssl (cryptography's bundles its
    own OpenSSL, statically), the check refuses."""
    from cryptography.hazmat.bindings import _rust

    with pytest.raises(RuntimeError, match="not run the same libssl"):
        _worker.check_runtime(_rust.__file__)
    import _ssl

    assert _worker.check_runtime(_ssl.__file__) == ssl.OPENSSL_VERSION


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
    """A live worker, after its handshake (every key's, in turn) and while it relays; and
    this process, which built every context."""
    for name in KEY_IDS:
        found: list[set[str]] = []
        served = worker.serve_one(contexts[name], holder.channel(name),
                                  before_backend=lambda s, f=found: f.append(scan(s.pid, pki)))
        python_client(worker.port, pki, name, "1.3")
        assert served.join().ok
        assert found == [set()], name
    assert scan(os.getpid(), pki) == set()
    in_holder = scan(holder.pid, pki)
    for name in KEY_IDS:  # the same scan finds them where they are
        assert f"{name}:d_le" in in_holder or f"{name}:d_be" in in_holder, sorted(in_holder)
        assert f"{name}:pem_line" in in_holder, sorted(in_holder)
