"""IPv6 on both sides: a [::1] listener and an IPv6 backend.

(The dual-stack [::] default is not exercised here: tests listen on loopback only.)
"""

from __future__ import annotations

import os
import socket
import ssl

import pytest

from tests.pki import CA
from tests.titus_harness import HTTPBackend, Titus

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")


def get(ca: CA, family: int, addr: tuple) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    with socket.socket(family) as raw:
        raw.settimeout(10)
        raw.connect(addr)
        with ctx.wrap_socket(raw, server_hostname="v6.test") as tls:
            tls.sendall(b"GET /six HTTP/1.1\r\nHost: v6\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return data


def test_ipv6_listener_and_backend(tmp_path):
    ca = CA(tmp_path / "pki")
    leaf = ca.issue("v6.test")
    with HTTPBackend("six", host="::1") as backend:
        config = (f"listen [::1]:0\ncert {leaf.cert}\nkey {leaf.key}\nbackend ::1\n"
                  f"backend-port {backend.port}\nmin-spare-children 1\n")
        with Titus(tmp_path, config) as titus:
            host, port = titus.addresses[0]
            assert host == "::1"
            assert get(ca, socket.AF_INET6, ("::1", port)).endswith(b"backend six path /six\n")
            record = titus.wait_connections(1)[0]
            assert record["client"].startswith("[::1]:") and record["outcome"] == "ok"

