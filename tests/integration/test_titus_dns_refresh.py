"""dns-refresh: a backend name is re-resolved in the background, and new connections go to
its new address.  titus runs in a mount namespace of the test's own, where /etc/hosts is a
file the test rewrites (glibc reads it at every lookup); the namespace dies with titus."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
from pathlib import Path

import pytest

from tests.pki import CA
from tests.titus_harness import HTTPBackend, Titus

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root"),
              pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")]


def get(ca: CA, port: int) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="dns.test") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        return data


def test_a_changed_name_reaches_new_connections(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    leaf = ca.issue("dns.test")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.2 backend.test\n")
    own_hosts = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
                 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts))
    with HTTPBackend("A", host="127.0.0.2") as a, HTTPBackend("B", host="127.0.0.3",
                                                              port=a.port) as _b:
        config = (f"listen 127.0.0.1:0\ncert {leaf.cert}\nkey {leaf.key}\n"
                  f"backend backend.test\nbackend-port {a.port}\nmin-spare-children 1\n"
                  "dns-refresh 0.5\ndns-timeout 2\n")
        with Titus(tmp_path, config, prefix=own_hosts) as titus:
            assert get(ca, titus.port).endswith(b"backend A path /\n")
            hosts.write_text("127.0.0.1 localhost\n127.0.0.3 backend.test\n")  # same inode
            changed = titus.wait_event(lambda r: r.get("event") == "backend-addresses-changed",
                                       timeout=10)
            assert changed["before"] == [f"127.0.0.2:{a.port}"]
            assert changed["after"] == [f"127.0.0.3:{a.port}"]
            assert get(ca, titus.port).endswith(b"backend B path /\n")
            # a name that stops resolving keeps its last address, and says so once
            hosts.write_text("127.0.0.1 localhost\n")
            failed = titus.wait_event(lambda r: r.get("event") == "backend-refresh-failed",
                                      timeout=10)
            assert failed["kept"] == [f"127.0.0.3:{a.port}"]
            assert get(ca, titus.port).endswith(b"backend B path /\n")
    assert Path("/etc/hosts").read_text() != hosts.read_text()  # the host's was never touched
