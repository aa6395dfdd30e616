"""ALPN: h2 is offered only where the backend speaks it (curl in front of a real nginx)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.nginx import Nginx
from tests.pki import CA
from tests.titus_harness import Titus, run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")


def conf(leaf, port: int, extra: str) -> str:
    return (f"listen 127.0.0.1:0\ncert {leaf.cert}\nkey {leaf.key}\nbackend 127.0.0.1\n"
            f"backend-port {port}\nmin-spare-children 1\n{extra}")


def curl_h2(ca: CA, port: int) -> tuple[str, str]:
    """curl as a browser would ask: h2 if the server offers it. (HTTP version, body)"""
    out = subprocess.run(
        ["curl", "-sS", "--http2", "--max-time", "10", "--cacert", str(ca.path),
         "--resolve", f"alpn.test:{port}:127.0.0.1", "-w", "\n%{http_version}",
         f"https://alpn.test:{port}/"], capture_output=True, text=True, timeout=20)
    body, _, version = out.stdout.rpartition("\n")
    return version, body + out.stderr


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path / "pki")


def test_http1_backend_offered_http1_only_serves_curl(tmp_path: Path, ca: CA) -> None:
    leaf = ca.issue("alpn.test")
    with Nginx(tmp_path / "nginx") as nginx, \
            Titus(tmp_path, conf(leaf, nginx.port, "alpn http/1.1\n")) as titus:
        version, body = curl_h2(ca, titus.port)
        assert (version, body) == ("1.1", "hello from nginx\n")


def test_h2_to_an_http1_backend_is_refused_naming_the_line(tmp_path: Path, ca: CA) -> None:
    """What curl saw before: h2 chosen, nginx answering HTTP/1.1 bytes it cannot parse."""
    leaf = ca.issue("alpn.test")
    config = tmp_path / "titus.conf"
    config.write_text(conf(leaf, 9, "alpn h2,http/1.1\n"))
    code, _out, err = run_cli(config, "--check")
    assert code == 2
    assert err.startswith(f"titus: {config}:7: alpn offers h2, but the backend is not "
                          "declared to speak HTTP/2"), err


def test_h2_where_the_backend_speaks_it(tmp_path: Path, ca: CA) -> None:
    leaf = ca.issue("alpn.test")
    with Nginx(tmp_path / "nginx", http2=True) as nginx, \
            Titus(tmp_path, conf(leaf, nginx.port, "alpn h2,http/1.1\nbackend-h2 yes\n")) \
            as titus:
        version, body = curl_h2(ca, titus.port)
        assert (version, body) == ("2", "hello from nginx\n")
        assert '"GET / HTTP/2.0" 200' in nginx.access_log()
        record = titus.wait_connections(1)[0]
        assert record["alpn"] == "h2" and record["outcome"] == "ok"
