"""Client certificates beyond "signed by this CA": a per-vhost allow-list of identities (CN,
DNS and URI SANs), decided by the supervisor, and a CRL re-read on SIGHUP.  Real clients
(Python's ssl) with real certificates; a refused identity is logged with its subject."""

from __future__ import annotations

import os
import signal
import socket
import ssl
from pathlib import Path

import pytest

from tests.pki import CA
from tests.titus_harness import HTTPBackend, Titus

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")


def get(ca: CA, port: int, client) -> bytes:
    """The backend's answer, or b"" when titus closes the connection (TLS 1.3: the client
    learns of a refusal after its handshake)."""
    ctx = ssl.create_default_context(cafile=str(ca.path))
    ctx.load_cert_chain(client.cert, client.key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="mtls.test") as tls:
        data = b""
        try:  # a refusal may already have closed the connection when the request goes out
            tls.sendall(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while chunk := tls.recv(65536):
                data += chunk
        except (ssl.SSLError, ConnectionError):
            pass
        return data


@pytest.fixture
def pki(tmp_path: Path):
    ca = CA(tmp_path / "pki")
    return ca, {
        "server": ca.issue("mtls.test"),
        "alice": ca.issue("alice", filename="alice", uris=("spiffe://test/alice",)),
        "bob": ca.issue("bob", extra_names=("bob.internal",), filename="bob"),
        "carol": ca.issue("carol", filename="carol"),
    }


def conf(ca: CA, server, port: int, extra: str) -> str:
    return (f"listen 127.0.0.1:0\nmin-spare-children 1\nbackend 127.0.0.1\n"
            f"backend-port {port}\ncert {server.cert}\nkey {server.key}\n"
            f"client-auth required\nclient-ca {ca.path}\n{extra}")


def test_allow_list_by_cn_dns_and_uri(tmp_path: Path, pki) -> None:
    ca, who = pki
    allow = ("client-allow-uri spiffe://test/alice\nclient-allow-dns BOB.internal\n"
             "client-allow-cn dave\n")
    with HTTPBackend("A") as backend, \
            Titus(tmp_path, conf(ca, who["server"], backend.port, allow)) as titus:
        assert get(ca, titus.port, who["alice"]).endswith(b"backend A path /who\n")  # URI
        assert get(ca, titus.port, who["bob"]).endswith(b"backend A path /who\n")  # DNS
        assert get(ca, titus.port, who["carol"]) == b""  # signed by the CA, not listed
        records = titus.wait_connections(3)
    by_cn = {r["client_cn"]: r for r in records}
    assert by_cn["alice"]["outcome"] == by_cn["bob"]["outcome"] == "ok"
    refused = by_cn["carol"]
    assert refused["outcome"] == "client-not-allowed" and refused["level"] == "WARNING"
    assert refused["client_subject"] == "CN=carol"
    assert refused["detail"] == ("client CN=carol is not on the vhost's allow-list "
                                 "(SANs: DNS:carol)")
    assert refused["backend"] is None and refused["bytes_in"] == 0


def test_allow_list_per_vhost(tmp_path: Path, pki) -> None:
    """Each vhost has its own list; a vhost without one admits any certificate the CA
    signed."""
    ca, who = pki
    extra = ("vhost open\n\tlocal-port 1\nvhost strict\n\tclient-allow-cn alice\n")
    with HTTPBackend("A") as backend:
        titus = Titus(tmp_path, conf(ca, who["server"], backend.port, extra))
        with titus:
            assert get(ca, titus.port, who["alice"]).endswith(b"/who\n")
            assert get(ca, titus.port, who["bob"]) == b""
            records = titus.wait_connections(2)
    assert sorted((r["client_cn"], r["vhost"], r["outcome"]) for r in records) == [
        ("alice", "strict", "ok"), ("bob", "strict", "client-not-allowed")]


def test_crl_refuses_revoked_and_is_reloaded_on_sighup(tmp_path: Path, pki) -> None:
    ca, who = pki
    crl = ca.crl([who["bob"]])
    with HTTPBackend("A") as backend:
        titus = Titus(tmp_path, conf(ca, who["server"], backend.port, f"client-crl {crl}\n"))
        with titus:
            assert get(ca, titus.port, who["alice"]).endswith(b"/who\n")
            assert get(ca, titus.port, who["bob"]) == b""
            ca.crl([who["bob"], who["alice"]], path=crl)  # alice revoked too
            assert get(ca, titus.port, who["alice"]).endswith(b"/who\n")  # until the reload
            assert titus.proc is not None
            titus.proc.send_signal(signal.SIGHUP)
            titus.wait_event(lambda r: r.get("event") == "reloaded")
            assert get(ca, titus.port, who["alice"]) == b""
            assert get(ca, titus.port, who["carol"]).endswith(b"/who\n")
            records = titus.wait_connections(5)
    assert [r["outcome"] for r in records] == ["ok", "handshake-failed", "ok",
                                               "handshake-failed", "ok"], records
    assert [r["client_cn"] for r in records if r["outcome"] == "ok"] == ["alice", "alice",
                                                                         "carol"]
    revoked = [r for r in records if r["outcome"] == "handshake-failed"]
    # the failed handshakes' records keep the SNI and the vhost chosen for it
    assert {(r["sni"], r["vhost"]) for r in revoked} == {("mtls.test", "default")}
    assert all("revoked" in (r["detail"] or "") for r in revoked), [r["detail"] for r in revoked]
