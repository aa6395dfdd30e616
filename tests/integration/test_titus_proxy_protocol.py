"""PROXY protocol to a backend that parses it, and ALPN negotiated per vhost.

The backend reads the header titus's broker wrote, then answers with what it
learned; the client compares that with what it knows about its own connection.
"""

from __future__ import annotations

import json
import os
import socket
import ssl

import pytest

from tests.pki import CA
from tests.titus_harness import TCPBackend, Titus
from titus.wire import proxyproto as pp

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")


class ProxyAwareBackend(TCPBackend):
    """Parses the PROXY header, then answers one line of JSON about it and closes."""

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            parsed = None
            while parsed is None:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
                parsed = pp.parse(data)
            answer = {"src": parsed.src, "dst": parsed.dst,
                      "sni": parsed.tlvs.get(pp.PP2_TYPE_AUTHORITY, b"").decode(),
                      "alpn": parsed.tlvs.get(pp.PP2_TYPE_ALPN, b"").decode(),
                      "version": parsed.ssl_tlvs.get(pp.PP2_SUBTYPE_SSL_VERSION, b"").decode(),
                      "cipher": parsed.ssl_tlvs.get(pp.PP2_SUBTYPE_SSL_CIPHER, b"").decode(),
                      "cn": parsed.ssl_tlvs.get(pp.PP2_SUBTYPE_SSL_CN, b"").decode()}
            conn.sendall(json.dumps(answer).encode() + b"\n")


def ask(ca: CA, port: int, sni: str, alpn: list[str] | None = None,
        client=None) -> tuple[dict, ssl.SSLSocket]:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    if client is not None:
        ctx.load_cert_chain(client.cert, client.key)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = ctx.wrap_socket(raw, server_hostname=sni)
    data = b""
    while not data.endswith(b"\n"):
        chunk = tls.recv(4096)
        assert chunk, data
        data += chunk
    return json.loads(data), tls


def test_proxy_v1_and_v2_with_alpn(tmp_path):
    ca = CA(tmp_path / "pki")
    one, two = ca.issue("one.test"), ca.issue("two.test")
    with ProxyAwareBackend() as backend:
        config = f"""listen 127.0.0.1:0
min-spare-children 1
backend 127.0.0.1
backend-port {backend.port}
vhost
	sni-name one.test
	cert {one.cert}
	key {one.key}
	proxy-protocol v1
vhost
	sni-name two.test
	cert {two.cert}
	key {two.key}
	proxy-protocol v2
	alpn h2,http/1.1
	backend-h2 yes
"""
        with Titus(tmp_path, config) as titus:
            answer, tls = ask(ca, titus.port, "one.test")
            assert tuple(answer["src"]) == tls.getsockname()[:2]
            assert tuple(answer["dst"]) == ("127.0.0.1", titus.port)
            assert answer["sni"] == ""  # v1 carries addresses only
            tls.close()

            answer, tls = ask(ca, titus.port, "two.test", ["h2", "http/1.1"])
            assert tls.selected_alpn_protocol() == "h2"
            assert tuple(answer["src"]) == tls.getsockname()[:2]
            assert answer["sni"] == "two.test" and answer["alpn"] == "h2"
            assert answer["version"] == tls.version() and answer["cipher"] == tls.cipher()[0]
            tls.close()

            answer, tls = ask(ca, titus.port, "two.test", ["http/1.1"])
            assert tls.selected_alpn_protocol() == "http/1.1" and answer["alpn"] == "http/1.1"
            tls.close()


def test_client_certificates(tmp_path):
    ca = CA(tmp_path / "pki")
    other_ca = CA(tmp_path / "other", name="someone else")
    server = ca.issue("mtls.test")
    alice = ca.issue("alice", filename="alice")
    mallory = other_ca.issue("mallory", filename="mallory")
    with ProxyAwareBackend() as backend:
        config = f"""listen 127.0.0.1:0
min-spare-children 1
backend 127.0.0.1
backend-port {backend.port}
cert {server.cert}
key {server.key}
proxy-protocol v2
client-auth required
client-ca {ca.path}
"""
        with Titus(tmp_path, config) as titus:
            answer, tls = ask(ca, titus.port, "mtls.test", client=alice)
            assert answer["cn"] == "alice"
            tls.close()
            for who in (None, mallory):  # no certificate; one from another CA
                with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
                    ask(ca, titus.port, "mtls.test", client=who)
            records = titus.wait_connections(3)
    refused = [r for r in records if r["outcome"] == "handshake-failed"]
    served = [r for r in records if r["outcome"] != "handshake-failed"]
    assert len(refused) == 2 and all(r["client_cn"] is None for r in refused), records
    assert [r["client_cn"] for r in served] == ["alice"]
