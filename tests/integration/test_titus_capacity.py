"""max-children in operators' hands: raised by a reload (the key holder's limits follow: 250
connections held at once after growing from 20 to 300), and the cap made visible when it is
hit (a rate-limited log record, a counter, the accept queue's length as a gauge)."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.pki import CA
from tests.titus_harness import EchoBackend, Titus, _parse_addr, keyholder_pid, nofile_limit

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")

SNI = "cap.test"
HELD = 250


def config(ca: CA, leaf, backend_port: int, pool: str) -> str:
    return (f"listen 127.0.0.1:0\nmetrics-listen 127.0.0.1:0\ncert {leaf.cert}\n"
            f"key {leaf.key}\nbackend 127.0.0.1\nbackend-port {backend_port}\n{pool}")


def held_connection(ctx: ssl.SSLContext, port: int, index: int) -> ssl.SSLSocket:
    """A TLS connection through titus that has echoed a line: a worker busy relaying."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    tls = ctx.wrap_socket(raw, server_hostname=SNI)
    line = f"held {index}\n".encode()
    tls.sendall(line)
    got = b""
    while len(got) < len(line):
        chunk = tls.recv(64)
        assert chunk, f"connection {index} closed after {got!r}"
        got += chunk
    assert got == line
    return tls


def metrics(titus: Titus) -> str:
    started = titus.wait_event(lambda r: r.get("event") == "started")
    host, port = _parse_addr(started["metrics"])
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def titus_age(record: dict) -> float:
    """Seconds since a record was written."""
    when = datetime.datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
    return (datetime.datetime.now(datetime.UTC) - when).total_seconds()


def value(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])


def test_reload_grows_max_children_from_20_to_300(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    leaf = ca.issue(SNI)
    ctx = ssl.create_default_context(cafile=str(ca.path))
    with EchoBackend() as backend:
        titus = Titus(tmp_path, config(ca, leaf, backend.port,
                                       "max-children 20\nmin-spare-children 4\n"))
        held: list[ssl.SSLSocket] = []
        with titus:
            assert nofile_limit(keyholder_pid(titus)) == 20 + 64
            titus.config_path.write_text(config(ca, leaf, backend.port,
                                                "max-children 300\nmin-spare-children 8\n"))
            assert titus.proc is not None
            titus.proc.send_signal(signal.SIGHUP)
            titus.wait_event(lambda r: r.get("event") == "reloaded")
            started = time.monotonic()
            try:
                with ThreadPoolExecutor(16) as pool:
                    held = list(pool.map(lambda i: held_connection(ctx, titus.port, i),
                                         range(HELD), timeout=240))
                took = time.monotonic() - started
                # all 250 at once: each still relays
                for index in (0, HELD // 2, HELD - 1):
                    held[index].sendall(b"still here\n")
                    assert held[index].recv(64) == b"still here\n"
                assert value(metrics(titus), "titus_max_children") == 300
                busy = value(metrics(titus), 'titus_workers{state="busy"}')
                assert busy >= HELD, busy
                # the new generation's key holder was sized for the new max-children
                assert nofile_limit(keyholder_pid(titus)) == 300 + 64
            finally:
                for tls in held:
                    tls.close()
            records = titus.wait_connections(HELD, timeout=60)
        assert not [r for r in titus.records() if "grant" in str(r.get("line", ""))], \
            "the key holder refused channels"
        outcomes = {r["outcome"] for r in records}
        assert outcomes == {"ok"}, outcomes
        print(f"{HELD} connections held at once after the reload, opened in {took:.1f} s")


def test_the_connection_cap_is_logged_counted_and_its_queue_seen(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    leaf = ca.issue(SNI)
    ctx = ssl.create_default_context(cafile=str(ca.path))
    with EchoBackend() as backend:
        titus = Titus(tmp_path, config(ca, leaf, backend.port,
                                       "max-children 2\nmin-spare-children 1\n"
                                       "max-handshake-time 30\n"))
        with titus:
            held = [held_connection(ctx, titus.port, i) for i in range(2)]
            waiting = [socket.create_connection(("127.0.0.1", titus.port), timeout=10)
                       for _ in range(3)]  # TCP done by the kernel; no worker for them
            try:
                record = titus.wait_event(lambda r: r.get("event") == "connection-cap", 10)
                assert record["level"] == "WARNING"
                assert (record["max_children"], record["busy"]) == (2, 2)
                deadline = time.monotonic() + 10
                while value(metrics(titus), "titus_connections_waiting") < 3:
                    assert time.monotonic() < deadline, "the accept queue was not seen"
                    time.sleep(0.1)
                text = metrics(titus)
                assert value(text, "titus_connection_cap_hits_total") >= 1
                assert value(text, "titus_max_children") == 2
            finally:
                for tls in held:
                    tls.close()
            # the waiting clients are served once workers are free
            for raw in waiting:
                with ctx.wrap_socket(raw, server_hostname=SNI) as tls:
                    tls.sendall(b"x")
                    assert tls.recv(1) == b"x"
            titus.wait_connections(5, timeout=20)
            deadline = time.monotonic() + 10
            while value(metrics(titus), "titus_connections_waiting") != 0:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        caps = [r for r in titus.records() if r.get("event") == "connection-cap"]
        if titus_age(caps[0]) < 9:  # rate-limited: one record in 10 s, whatever the hits
            assert len(caps) == 1, caps
