"""The Prometheus endpoint counts what really happened."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request

import pytest

from tests.pki import CA
from tests.titus_harness import ROOT, HTTPBackend, Titus, _parse_addr

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert m, f"{name} not in metrics"
    return float(m.group(1))


def test_status_without_titus_running(tmp_path):
    leaf = CA(tmp_path / "pki").issue("a.test")
    conf = tmp_path / "t.conf"
    conf.write_text(f"listen 127.0.0.1:0\ncert {leaf.cert}\nkey {leaf.key}\n"
                    "backend 127.0.0.1\nbackend-port 9\nmetrics-listen 127.0.0.1:1\n")
    out = subprocess.run([sys.executable, "-m", "titus.cli", "status", "--config", str(conf)],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 1 and "not answering" in out.stderr


def test_metrics_endpoint(tmp_path):
    ca = CA(tmp_path / "pki")
    leaf = ca.issue("a.test")
    with HTTPBackend() as backend:
        config = (f"listen 127.0.0.1:0\ncert {leaf.cert}\nkey {leaf.key}\nbackend 127.0.0.1\n"
                  f"backend-port {backend.port}\nmin-spare-children 2\n"
                  "metrics-listen 127.0.0.1:0\n")
        with Titus(tmp_path, config) as titus:
            started = titus.wait_event(lambda r: r.get("event") == "started")
            host, port = _parse_addr(started["metrics"])
            ctx = ssl.create_default_context(cafile=str(ca.path))
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", titus.port)) as raw, \
                        ctx.wrap_socket(raw, server_hostname="a.test") as tls:
                    tls.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    while tls.recv(65536):
                        pass
            titus.wait_connections(3)
            text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read()
            text = text.decode()
            status = subprocess.run(
                [sys.executable, "-m", "titus.cli", "status", "--config",
                 str(titus.config_path), "--metrics-listen", f"{host}:{port}"],
                capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert status.returncode == 0, status.stderr
    assert "titus is running" in status.stdout
    assert "connections: 3 (ok 3)" in status.stdout
    assert "workers: " in status.stdout and "at most 1000 (max-children)" in status.stdout
    assert "configuration: generation 1, 0 reloads, 0 refused" in status.stdout
    assert "3 signatures, 0 failed, 0 restarts" in status.stdout
    assert metric(text, 'titus_connections_total{outcome="ok",vhost="default"}') == 3
    assert metric(text, "titus_handshake_seconds_count") == 3
    assert metric(text, 'titus_keyholder_operations_total{result="ok"}') == 3
    assert metric(text, 'titus_relayed_bytes_total{direction="in"}') > 0
    assert metric(text, "titus_jail_spawn_seconds_count") >= 5  # 2 spare + 3 replacements
    assert metric(text, 'titus_workers{state="idle"}') >= 1


PROMTOOL = ROOT / "build" / "promtool" / "usr" / "bin" / "promtool"


def scrape(titus: Titus) -> str:
    started = titus.wait_event(lambda r: r.get("event") == "started")
    host, port = _parse_addr(started["metrics"])
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_reloads_generation_process_and_conventions(tmp_path):
    """Reload successes and failures, the last reload's time and the generation; the
    supervisor's process metrics; no empty label value; promtool's lint passes."""
    ca = CA(tmp_path / "pki")
    leaf = ca.issue("a.test")
    with HTTPBackend() as backend:
        config = (f"listen 127.0.0.1:0\ncert {leaf.cert}\nkey {leaf.key}\nbackend 127.0.0.1\n"
                  f"backend-port {backend.port}\nmin-spare-children 1\n"
                  "metrics-listen 127.0.0.1:0\nvhost www\n\tsni-name a.test\n")
        with Titus(tmp_path, config) as titus:
            first = scrape(titus)
            assert metric(first, "titus_config_generation") == 1
            ctx = ssl.create_default_context(cafile=str(ca.path))
            with socket.create_connection(("127.0.0.1", titus.port)) as raw, \
                    pytest.raises(ssl.SSLError):
                ctx.wrap_socket(raw, server_hostname="other.test")  # no vhost takes it
            titus.wait_connections(1)
            titus.proc.send_signal(signal.SIGHUP)
            titus.wait_event(lambda r: r.get("event") == "reloaded")
            good = scrape(titus)
            titus.config_path.write_text("nonsense\n")
            titus.proc.send_signal(signal.SIGHUP)
            titus.wait_event(lambda r: r.get("event") == "reload-refused")
            text = scrape(titus)
    assert metric(good, 'titus_config_reloads_total{result="success"}') == 1
    assert metric(good, "titus_config_last_reload_successful") == 1
    assert metric(good, "titus_config_generation") == 2
    assert metric(good, "titus_config_last_reload_success_timestamp_seconds") > \
        metric(first, "titus_config_last_reload_success_timestamp_seconds")
    assert metric(text, 'titus_config_reloads_total{result="failure"}') == 1
    assert metric(text, "titus_config_last_reload_successful") == 0
    assert metric(text, "titus_config_generation") == 2  # the refused one did not count
    assert metric(text, "process_resident_memory_bytes") > 1e6
    assert metric(text, "process_open_fds") > 3
    assert metric(text, 'titus_connections_total{outcome="no-vhost",vhost="(none)"}') == 1
    empty = [line for line in text.splitlines() if '=""' in line]
    assert not empty, empty
    if not PROMTOOL.exists():
        pytest.skip("promtool: `make test` takes it from Debian's prometheus package")
    lint = subprocess.run([str(PROMTOOL), "check", "metrics"], input=text, text=True,
                          capture_output=True, timeout=60)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
