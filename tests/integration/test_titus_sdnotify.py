"""systemd readiness: READY=1 once serving, RELOADING=1/READY=1 around SIGHUP, STOPPING=1."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from tests.pki import CA
from tests.titus_harness import Titus

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")


def test_notify_socket(tmp_path, monkeypatch):
    leaf = CA(tmp_path / "pki").issue("a.test")
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    titus = Titus(tmp_path, f"listen 127.0.0.1:0\ncert {leaf.cert}\nkey {leaf.key}\n"
                            "backend 127.0.0.1\nbackend-port 9\nmin-spare-children 1\n")
    try:
        with titus:
            ready = sock.recv(4096).decode().split("\n")
            assert "READY=1" in ready
            assert f"MAINPID={titus.proc.pid}" in ready
            titus.proc.send_signal(signal.SIGHUP)
            assert sock.recv(4096) == b"RELOADING=1"
            assert sock.recv(4096) == b"READY=1"
        assert sock.recv(4096) == b"STOPPING=1"
    finally:
        sock.close()
