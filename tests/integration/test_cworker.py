"""The C worker's connection path with real clients: vhost choice, TLS settings per vhost,
the callbacks in C (ALPN, OCSP, client certificates), the pump, and every way a
connection ends.

Each connection runs in a C worker forked from the test (tests/cworker.py), on
contexts built by titus/worker/contexts.py (the one place that defines TLS
settings) with keys held by a real key holder (tests/remotekeys.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import select
import socket
import ssl
import time
from collections.abc import Iterator

import pytest
from OpenSSL import SSL

from tests.cworker import Served, Worker, worker_filter
from tests.pki import CA
from tests.remotekeys import KEY_IDS, PKI, KeyHolder, make_pki
from titus.config.model import TLSSettings, VHost
from titus.worker import remotekey
from titus.worker.connection import build_table
from titus.worker.contexts import build_context

BACKEND_PORT = 9  # never dialled: the test hands the backend over itself


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def holder(pki: PKI) -> Iterator[KeyHolder]:
    h = KeyHolder(pki)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    """Every worker runs under the worker profile's seccomp filter (tests/cworker.py)."""
    w = Worker(seccomp=worker_filter())
    yield w
    w.close()


def vhost(pki: PKI, key: str, *sni: str, local: str | None = None, **tls: object) -> VHost:
    return VHost(key, cert=pki.chain(key), key=pki.key(key), backend_host="127.0.0.1",
                 backend_port=BACKEND_PORT, tls=TLSSettings(**tls),  # type: ignore[arg-type]
                 local_address=None if local is None else ipaddress.ip_address(local),
                 sni_names=sni)


def table(pki: PKI, *vhosts: VHost, staples=(), handshake_timeout: float = 5.0):
    contexts = [build_context(v, KEY_IDS[v.name], remotekey.read_chain(v.cert))
                for v in vhosts]
    return build_table(vhosts, contexts, handshake_timeout, 2.0, staples)


def client_ctx(pki: PKI, version: str | None = None, ciphersuites: str | None = None,
               alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if version:
        v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
        ctx.minimum_version = ctx.maximum_version = v
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def connect(port: int, ctx: ssl.SSLContext, sni: str | None, host: str = "127.0.0.1",
            payload: bytes = b"ping\n") -> tuple[str, str, str | None]:
    if sni is None:
        ctx.check_hostname = False
    with socket.create_connection((host, port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as tls:
        tls.sendall(payload)
        assert tls.recv(len(payload)) == payload
        return tls.version() or "", tls.cipher()[0], tls.selected_alpn_protocol()


# --- the vhost: local address, then SNI, first match wins; each with its own settings ----------


def test_each_vhost_applies_its_own_versions_and_suites(worker, holder, pki) -> None:
    """Chosen by SNI on one port: the real SSL is made on the chosen vhost's context, so
    its versions and cipher suites apply (SSL_set_SSL_CTX would switch only the
    certificate)."""
    t = table(pki,
              vhost(pki, "p256", "p256.titus.test", min_version=ssl.TLSVersion.TLSv1_3,
                    ciphersuites="TLS_CHACHA20_POLY1305_SHA256"),
              vhost(pki, "rsa2048", "rsa2048.titus.test", max_version=ssl.TLSVersion.TLSv1_2,
                    ciphers="ECDHE-RSA-AES128-GCM-SHA256"))
    cases = [
        ("p256.titus.test", None, ("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256")),
        ("rsa2048.titus.test", None, ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")),
        ("p256.titus.test", "1.2", None),  # vhost p256 is TLS 1.3 only
        ("rsa2048.titus.test", "1.3", None),  # vhost rsa2048 is TLS 1.2 only
    ]
    for sni, version, expect in cases:
        served = worker.serve_one(t, holder.channel("p256", "rsa2048"))
        if expect is None:
            with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|protocol version"):
                connect(worker.port, client_ctx(pki, version), sni)
            served.join()
            assert served.finished.outcome == "handshake-failed", served.finished
        else:
            assert connect(worker.port, client_ctx(pki, version), sni)[:2] == expect
            served.join()
            assert served.ok and served.handshake.sni == sni
            assert served.handshake.vhost == (0 if sni.startswith("p256") else 1)


def test_an_unknown_name_gets_unrecognized_name_and_the_record_keeps_it(worker, holder,
                                                                       pki) -> None:
    t = table(pki, vhost(pki, "p256", "p256.titus.test"))
    served = worker.serve_one(t, holder.channel("p256"))
    ctx = client_ctx(pki)
    ctx.check_hostname = False
    with pytest.raises(ssl.SSLError, match=r"UNRECOGNIZED_NAME|unrecognized name"):
        connect(worker.port, ctx, "nobody.test")
    served.join()
    fin = served.finished
    assert (fin.outcome, fin.sni, fin.vhost, fin.signatures) == ("no-vhost", "nobody.test",
                                                                 None, 0)
    assert "nobody.test" in fin.detail and served.handshake is None


def test_server_names_exact_wildcard_and_none(worker, holder, pki) -> None:
    t = table(pki, vhost(pki, "p256", "*.titus.test"), vhost(pki, "p384", ""),
              vhost(pki, "rsa2048"))
    for sni, index in [("p256.titus.test", 0), ("P256.Titus.Test.", 0), (None, 1),
                       ("titus.test", 2), ("a.b.titus.test", 2)]:
        ctx = client_ctx(pki)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        served = worker.serve_one(t, holder.channel("p256", "p384", "rsa2048"))
        connect(worker.port, ctx, sni)
        served.join()
        assert served.handshake.vhost == index, sni
        expected_sni = None if sni is None else sni.lower().rstrip(".")
        assert served.handshake.sni == expected_sni


def test_local_address_comes_before_the_name(holder, pki) -> None:
    t = table(pki, vhost(pki, "p256", "p256.titus.test", local="127.0.0.2"),
              vhost(pki, "p384", local="127.0.0.1"))
    for host, index in [("127.0.0.2", 0), ("127.0.0.1", 1)]:
        w = Worker(host, seccomp=worker_filter())
        try:
            served = w.serve_one(t, holder.channel("p256", "p384"))
            ctx = client_ctx(pki)
            ctx.check_hostname = False
            connect(w.port, ctx, "p256.titus.test", host=host)
            served.join()
            assert served.handshake.vhost == index
        finally:
            w.close()


def test_the_table_chooses_as_the_configuration_model_does(pki) -> None:
    vhosts = [vhost(pki, "p256", "a.test", "*.b.test", local="127.0.0.2"),
              vhost(pki, "p384", "", local="::1"), vhost(pki, "rsa2048", "c.test"),
              vhost(pki, "rsa4096")]
    t = table(pki, *vhosts)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.2"):
        for sni in (None, "", "a.test", "A.TEST.", "x.b.test", "b.test", "y.x.b.test", "c.test",
                    "d.test", "."):
            addr = ipaddress.ip_address(host)
            expect = next((i for i, v in enumerate(vhosts)
                           if v.matches_local(host, 443) and v.matches_sni(sni)), -1)
            assert t.choose((addr.version, addr.packed, 443), sni) == expect, (host, sni)
        # Without a probe only where no name can change the choice: the first vhost for
        # the address takes every name.
        first = next((i for i, v in enumerate(vhosts) if v.matches_local(host, 443)), -1)
        direct = first if first >= 0 and not vhosts[first].sni_names else -1
        assert t.choose_by_address((addr.version, addr.packed, 443)) == direct, host


# --- the callbacks the contexts carry, in C -----------------------------------------------------


def test_alpn_is_chosen_in_c(worker, holder, pki) -> None:
    t = table(pki, vhost(pki, "p256", alpn=("h2", "http/1.1")))
    for offered, chosen in [(["http/1.1", "h2"], "h2"), (["http/1.1"], "http/1.1"),
                            (["spdy/3"], None), (None, None)]:
        served = worker.serve_one(t, holder.channel("p256"))
        ctx = client_ctx(pki, alpn=offered)
        ctx.check_hostname = False
        assert connect(worker.port, ctx, "p256.titus.test")[2] == chosen
        served.join()
        assert served.handshake.alpn == chosen


def test_a_verified_client_certificate_is_reported(worker, holder, pki, tmp_path) -> None:
    ca = CA(tmp_path / "clients")
    alice = ca.issue("alice", "p256")
    t = table(pki, vhost(pki, "p256", client_auth="optional", client_ca=ca.path))
    for cert, cn in [(alice, "alice"), (None, None)]:
        served = worker.serve_one(t, holder.channel("p256"))
        ctx = client_ctx(pki)
        ctx.check_hostname = False
        if cert is not None:
            ctx.load_cert_chain(cert.cert, cert.key)
        connect(worker.port, ctx, "p256.titus.test")
        served.join()
        assert served.ok and served.handshake.client_cn == cn


def test_an_unverified_client_certificate_fails_the_handshake(worker, holder, pki,
                                                              tmp_path) -> None:
    trusted, other = CA(tmp_path / "trusted"), CA(tmp_path / "other")
    mallory = other.issue("mallory", "p256")
    t = table(pki, vhost(pki, "p256", client_auth="required", client_ca=trusted.path))
    served = worker.serve_one(t, holder.channel("p256"))
    ctx = client_ctx(pki, "1.2")
    ctx.check_hostname = False
    ctx.load_cert_chain(mallory.cert, mallory.key)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        connect(worker.port, ctx, "p256.titus.test")
    served.join()
    assert served.finished.outcome == "handshake-failed" and served.handshake is None


def ocsp_client(port: int, pki: PKI, version: int) -> list[bytes]:
    """A pyOpenSSL handshake that asks for a staple; what it got (b"" for none)."""
    got: list[bytes] = []
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(version)
    ctx.set_max_proto_version(version)
    ctx.load_verify_locations(str(pki.ca))
    ctx.set_ocsp_client_callback(lambda _conn, data, _arg: got.append(data) or True)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.settimeout(None)
        conn = SSL.Connection(ctx, raw)
        conn.set_tlsext_host_name(b"p256.titus.test")
        conn.request_ocsp()
        conn.set_connect_state()
        conn.do_handshake()
        conn.sendall(b"x")
        conn.recv(1)
        conn.shutdown()
    return got


def test_ocsp_staples_come_from_the_table_and_expire(worker, holder, pki, tmp_path) -> None:
    ca = CA(tmp_path / "ocsp")  # a well-formed response: the client parses it
    der = ca.ocsp_response(ca.issue("p256.titus.test").cert)
    t = table(pki, vhost(pki, "p256"), staples=[(der, None)])
    for version in (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION):
        served = worker.serve_one(t, holder.channel("p256"))
        assert ocsp_client(worker.port, pki, version) == [der]
        assert served.join().ok
    t.update_staples([(der, time.time() - 1)])  # expired by the worker's own clock
    served = worker.serve_one(t, holder.channel("p256"))
    assert ocsp_client(worker.port, pki, SSL.TLS1_3_VERSION) == [b""]
    served.join()
    new = ca.ocsp_response(ca.issue("other.test").cert)
    t.update_staples([(new, time.time() + 60)])
    served = worker.serve_one(t, holder.channel("p256"))
    assert ocsp_client(worker.port, pki, SSL.TLS1_2_VERSION) == [new]
    served.join()


# --- the pump -------------------------------------------------------------------------------


def sink_then_reply(reply: bytes):
    """A backend: reads to EOF (digest), then sends `reply` and closes."""
    seen: dict[str, object] = {}

    def run(sock: socket.socket) -> None:
        h, n = hashlib.sha256(), 0
        while data := sock.recv(1 << 20):
            h.update(data)
            n += len(data)
        seen.update(sha=h.hexdigest(), bytes=n)
        sock.sendall(reply)
        sock.shutdown(socket.SHUT_WR)

    return run, seen


def test_bulk_both_ways_with_half_close_from_the_client(worker, holder, pki) -> None:
    """The client sends 8 MB and half-closes (close_notify); the backend sees EOF only
    after every byte, then answers 6 MB, which still reaches the client."""
    up = bytes(range(256)) * (8 * 4096)
    down = hashlib.sha256(b"down").digest() * (6 * 32768)
    backend, seen = sink_then_reply(down)
    t = table(pki, vhost(pki, "p256"))
    served = worker.serve_one(t, holder.channel("p256"), backend=backend)
    ctx = client_ctx(pki)
    ctx.check_hostname = False
    got = bytearray()
    with socket.create_connection(("127.0.0.1", worker.port), timeout=20) as raw:
        tls = ctx.wrap_socket(raw, server_hostname="p256.titus.test")
        tls.setblocking(False)  # one thread: an SSL object must not read and write at once
        sent, deadline = 0, time.monotonic() + 60
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([tls], [tls] if sent < len(up) else [], [], 5)
            if writable:
                with contextlib.suppress(ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    sent += tls.send(up[sent:sent + 65536])
                if sent == len(up):  # a FIN without close_notify: a half-close for titus
                    with socket.socket(fileno=os.dup(tls.fileno())) as same:
                        same.shutdown(socket.SHUT_WR)
            if readable or tls.pending():
                try:
                    data = tls.recv(1 << 20)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue
                except ssl.SSLZeroReturnError:
                    break
                if not data:
                    break
                got += data
    served.join()
    assert seen == {"sha": hashlib.sha256(up).hexdigest(), "bytes": len(up)}
    assert bytes(got) == down
    fin = served.finished
    assert (fin.outcome, fin.bytes_in, fin.bytes_out) == ("ok", len(up), len(down))


def test_the_backend_closes_first_and_the_client_may_still_send(worker, holder, pki) -> None:
    answer = b"first the answer\n"
    received: list[bytes] = []

    def backend(sock: socket.socket) -> None:
        sock.sendall(answer)
        sock.shutdown(socket.SHUT_WR)  # -> close_notify + FIN to the client
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        received.append(data)

    t = table(pki, vhost(pki, "p256"))
    served = worker.serve_one(t, holder.channel("p256"), backend=backend)
    ctx = client_ctx(pki)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as raw:
        tls = ctx.wrap_socket(raw, server_hostname="p256.titus.test")
        got = b""
        while True:
            try:
                data = tls.recv(65536)
            except ssl.SSLZeroReturnError:
                break
            if not data:
                break
            got += data
        tls.sendall(b"after the close_notify\n")
        tls.unwrap()  # our close_notify: the backend's EOF
    served.join()
    assert got == answer and received == [b"after the close_notify\n"]
    assert served.ok


def test_backend_failed_closes_the_session_cleanly(worker, holder, pki) -> None:
    t = table(pki, vhost(pki, "p256"))
    served = worker.serve_one(t, holder.channel("p256"), backend_failed="connect: ECONNREFUSED")
    ctx = client_ctx(pki)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="p256.titus.test") as tls:
        assert tls.recv(10) == b""  # close_notify
    served.join()
    assert (served.finished.outcome, served.finished.detail) == ("backend-failed",
                                                                 "connect: ECONNREFUSED")


# --- how a connection can end before TLS -------------------------------------------------------


def raw_client(port: int, send: bytes, close: bool = True, wait: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(send)
        if close:
            s.shutdown(socket.SHUT_WR)
        try:
            return s.recv(4096)
        except (TimeoutError, ConnectionResetError):
            return b""


def finished(served: Served) -> tuple[str, str | None]:
    served.join()
    return served.finished.outcome, served.finished.detail


# SSLv2's ClientHello format (version 3.3): 7 cipher specs, no session id, a challenge.
SSL2_HELLO = (b"\x80\x2e\x01\x03\x03\x00\x15\x00\x00\x00\x10" +
              bytes.fromhex("00002f 000035 00000a 00c030 00c02f 00009c 0000ff") + bytes(range(16)))


@pytest.mark.parametrize("probed", [False, True])
def test_a_hello_is_read_alike_with_or_without_the_probe(worker, holder, pki,
                                                         probed: bool) -> None:
    """One vhost for every name: the vhost's own ClientHello callback reads the hello
    (no probe SSL); a vhost chosen by name: the probe does.  Either refuses SSLv2's
    format and a server name that is no host name the same way, and reports the name.
    (The probe once took an SSLv2 hello for a name no vhost serves: "no-vhost".)"""
    t = (table(pki, vhost(pki, "p256", "ab.titus.test", "ab\x01d.titus.test"))
         if probed else table(pki, vhost(pki, "p256")))
    local = (4, bytes([127, 0, 0, 1]), 443)
    assert (t.choose_by_address(local) < 0) == probed
    served = worker.serve_one(t, holder.channel("p256"))
    assert raw_client(worker.port, SSL2_HELLO)[:1] in (b"", b"\x15")  # nothing, or an alert
    assert finished(served) == ("handshake-failed", "an SSLv2 ClientHello")
    served = worker.serve_one(t, holder.channel("p256"))
    hello = _client_hello("abcd.titus.test").replace(b"abcd.titus.test", b"ab\x01d.titus.test")
    answer = raw_client(worker.port, hello)
    assert finished(served) == ("handshake-failed", "the server name is not a host name")
    assert answer[:1] == b"\x15" and answer[-1:] == b"\x70"  # unrecognized_name
    served = worker.serve_one(t, holder.channel("p256"))
    ctx = client_ctx(pki)
    ctx.check_hostname = False
    connect(worker.port, ctx, "AB.titus.test.")
    served.join()
    assert served.ok and served.handshake.sni == "ab.titus.test", served.finished


def test_before_tls(worker, holder, pki) -> None:
    t = table(pki, vhost(pki, "p256"), handshake_timeout=0.5)
    served = worker.serve_one(t, holder.channel("p256"))
    raw_client(worker.port, b"")
    assert finished(served) == ("handshake-failed", "client closed before its ClientHello")
    served = worker.serve_one(t, holder.channel("p256"))
    answer = raw_client(worker.port, b"GET / HTTP/1.0\r\n\r\n")
    outcome, detail = finished(served)
    assert outcome == "handshake-failed" and "http" in detail.lower(), detail
    assert answer[:1] in (b"", b"\x15")  # nothing, or an alert
    served = worker.serve_one(t, holder.channel("p256"))
    start = time.monotonic()
    raw_client(worker.port, b"\x16\x03\x01", close=False)
    assert finished(served) == ("timeout", "no ClientHello in time")
    assert time.monotonic() - start < 2


def test_workers_never_share_randomness(worker, holder, pki) -> None:
    """Each worker reseeds OpenSSL's RNG: server randoms differ across forked workers."""
    t = table(pki, vhost(pki, "p256"))
    randoms = set()
    for _ in range(12):
        served = worker.serve_one(t, holder.channel("p256"))
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as raw:
            raw.settimeout(None)
            conn = SSL.Connection(ctx, raw)
            conn.set_connect_state()
            conn.do_handshake()
            randoms.add(conn.server_random())
            conn.sendall(b"x")
            conn.recv(1)
            conn.shutdown()
        served.join()
    assert len(randoms) == 12


def test_warm_up_and_probe_in_memory(pki) -> None:
    from titus.worker.connection import local_address
    from titus.worker.zygote import warm_up

    vhosts = [vhost(pki, "p256", "p256.titus.test")]
    contexts = [build_context(v, KEY_IDS[v.name]) for v in vhosts]
    t = build_table(vhosts, contexts, 5.0, 2.0)
    warm_up(contexts, t)
    hello = _client_hello("p256.titus.test")
    assert t.probe(hello, local_address("127.0.0.1", 443)) == (0, "p256.titus.test")
    assert t.probe(_client_hello("x.test"), local_address("127.0.0.1", 443)) == (-1, "x.test")
    assert t.probe(hello[:20], local_address("127.0.0.1", 443))[0] == -2


def _client_hello(sni: str) -> bytes:
    from tests.titus_harness import client_hello

    return client_hello(ssl.create_default_context(), sni)

