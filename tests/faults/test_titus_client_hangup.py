"""A client that sends its ClientHello and then closes (FIN) mid-handshake is a
failed handshake, not a crash: the worker must not die of its own error path."""

from __future__ import annotations

import os
import socket
import ssl

import pytest

from tests.pki import CA
from tests.titus_harness import HTTPBackend, Titus

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")


def client_hello() -> bytes:
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="a.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_fin_after_client_hello(tmp_path):
    leaf = CA(tmp_path / "pki").issue("a.test")
    with HTTPBackend() as backend:
        config = (f"listen 127.0.0.1:0\ncert {leaf.cert}\nkey {leaf.key}\n"
                  f"backend 127.0.0.1\nbackend-port {backend.port}\nmin-spare-children 1\n")
        with Titus(tmp_path, config) as titus:
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", titus.port), timeout=5) as s:
                    s.sendall(client_hello())
            records = titus.wait_connections(3)
    assert [r["outcome"] for r in records] == ["handshake-failed"] * 3, records
    assert all(r["violation"] is None and r["worker_exit"] == 0 for r in records)
