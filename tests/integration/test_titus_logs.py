"""The JSON log as tools read it: every record of a varied run matches docs/logging.schema.json,
times are RFC 3339 in UTC, addresses are `127.0.0.1:443` and `[::1]:443`."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
from pathlib import Path

import pytest

from tests.pki import CA
from tests.titus_harness import HTTPBackend, Titus, invalid_records

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")


def config(leaf, port: int) -> str:
    return (f"listen 127.0.0.1:0\nlisten [::1]:0\nmetrics-listen 127.0.0.1:0\n"
            f"cert {leaf.cert}\nkey {leaf.key}\nbackend 127.0.0.1\nbackend-port {port}\n"
            "min-spare-children 1\nnetwork-user nobody\n"  # a config-notice
            "vhost\n\tsni-name logs.test\n")


def hello(ca: CA, family: int, addr: tuple, sni: str) -> None:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    with socket.socket(family) as raw:
        raw.settimeout(10)
        raw.connect(addr)
        try:
            with ctx.wrap_socket(raw, server_hostname=sni) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                while tls.recv(65536):
                    pass
        except (ssl.SSLError, OSError):
            pass  # the no-vhost client


def test_every_record_of_a_varied_run_matches_the_schema(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    leaf = ca.issue("logs.test")
    before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    with HTTPBackend("A") as backend:
        titus = Titus(tmp_path, config(leaf, backend.port))
        with titus:
            (v4, port4), (v6, port6) = titus.addresses
            hello(ca, socket.AF_INET, (v4, port4), "logs.test")
            hello(ca, socket.AF_INET6, (v6, port6, 0, 0), "logs.test")
            hello(ca, socket.AF_INET, (v4, port4), "other.test")  # no vhost
            with socket.create_connection((v4, port4), timeout=10) as raw:
                raw.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS
                raw.recv(100)
            records = titus.wait_connections(4)
            assert titus.proc is not None
            titus.proc.send_signal(signal.SIGHUP)
            titus.wait_event(lambda r: r.get("event") == "reloaded")
            titus.config_path.write_text("nonsense\n")
            titus.proc.send_signal(signal.SIGHUP)
            titus.wait_event(lambda r: r.get("event") == "reload-refused")
        records = titus.records()
    events = {r["event"] for r in records}
    assert {"started", "config-notice", "connection", "reloaded", "reload-refused", "stopping",
            "stopped"} <= events, events
    assert invalid_records(records) == []
    started = next(r for r in records if r["event"] == "started")
    assert started["listeners"] == [f"127.0.0.1:{port4}", f"[::1]:{port6}"]
    assert started["metrics"].startswith("127.0.0.1:")
    conns = [r for r in records if r["event"] == "connection"]
    assert {r["local"] for r in conns} == {f"127.0.0.1:{port4}", f"[::1]:{port6}"}
    assert any(r["client"].startswith("[::1]:") for r in conns)
    assert sorted(r["outcome"] for r in conns) == ["handshake-failed", "no-vhost", "ok", "ok"]
    # a failed handshake's record keeps what was known: the SNI (and no vhost matched it)
    no_vhost = next(r for r in conns if r["outcome"] == "no-vhost")
    assert (no_vhost["sni"], no_vhost["vhost"]) == ("other.test", None)
    after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    for record in records:
        when = datetime.datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
        assert before <= when <= after, record["time"]
