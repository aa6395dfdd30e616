"""drain-timeout: after SIGTERM titus stops accepting, lets connections in flight run
for up to drain-timeout seconds, then cuts them and exits 0; a connection that ends
within the timeout is undisturbed, and titus leaves as soon as it has ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.faults.test_titus_faults import (
    PKI,
    SNI,
    _echo_exchange,
    conf,
    ctx_wrap,
    event_names,
    wait_until,
)
from tests.pki import CA
from tests.titus_harness import EchoBackend, Titus, session_processes
from tests.unit.titus.test_config_support import basic_conf
from titus.config.load import ConfigError, load_config

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")

DRAIN = 1.5  # seconds: short enough for a test, long enough to tell from "at once"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    ca = CA(tmp_path_factory.mktemp("drain-pki"))
    return PKI(ca, ca.issue(SNI, "p256"), ca.issue("other.test", "p256"))


def toml_config(pki: PKI, backend_port: int, drain: float) -> str:
    return f"""drain-timeout = {drain}
min-spare-children = 1
cert = "{pki.leaf.cert}"
key = "{pki.leaf.key}"
backend = "127.0.0.1"
backend-port = {backend_port}

[[listen]]
address = "127.0.0.1"
port = 0
"""


def wait_closed(tls: ssl.SSLSocket, timeout: float) -> float:
    """Block until the server side goes away; when that happened (time.monotonic())."""
    tls.settimeout(timeout)
    with contextlib.suppress(ssl.SSLError, OSError):
        while tls.recv(65536):
            pass
    return time.monotonic()


@needs_root
def test_a_held_connection_is_cut_after_drain_timeout(tmp_path: Path, pki: PKI) -> None:
    with EchoBackend() as backend:
        titus = Titus(tmp_path, toml_config(pki, backend.port, DRAIN), suffix=".toml").start()
        try:
            assert titus.proc is not None
            sid = titus.proc.pid
            with ctx_wrap(pki, socket.create_connection(("127.0.0.1", titus.port),
                                                        timeout=5)) as tls:
                data = os.urandom(4096)
                assert _echo_exchange(tls, data) == data
                sent = time.monotonic()
                titus.proc.send_signal(signal.SIGTERM)
                titus.wait_event(lambda r: r.get("event") == "stopping", 5)
                cut = wait_closed(tls, DRAIN + 10) - sent
            assert titus.proc.wait(10) == 0
            gone = time.monotonic() - sent
        finally:
            titus.stop()
        assert DRAIN - 0.1 <= cut <= DRAIN + 2.5, f"cut after {cut:.2f}s, not ~{DRAIN}s"
        assert gone <= DRAIN + 3, f"titus left {gone:.2f}s after SIGTERM"
        record = titus.wait_connections(1)[0]
        assert (record["outcome"], record["detail"]) == ("killed", "shutdown")
        # the worker could not report: its byte counts are the kernel's, from the backend
        # connection, read before the cut
        assert (record["bytes_in"], record["bytes_out"]) == (len(data), len(data)), record
        names = event_names(titus)
        assert names.index("stopping") < names.index("connection") < names.index("stopped")
        wait_until(lambda: not session_processes(sid), 2, "nothing of titus left")


@needs_root
def test_a_connection_ending_within_the_timeout_is_undisturbed(tmp_path: Path,
                                                               pki: PKI) -> None:
    drain = 20.0  # long: titus must leave when the connection ends, not when this expires
    with EchoBackend() as backend:
        titus = Titus(tmp_path, conf(pki, backend.port, f"drain-timeout {drain:g}\n")).start()
        try:
            assert titus.proc is not None
            with ctx_wrap(pki, socket.create_connection(("127.0.0.1", titus.port),
                                                        timeout=5)) as tls:
                first = os.urandom(32768)
                assert _echo_exchange(tls, first) == first
                titus.proc.send_signal(signal.SIGTERM)
                titus.wait_event(lambda r: r.get("event") == "stopping", 5)
                time.sleep(0.5)
                rest = os.urandom(128 * 1024)
                assert _echo_exchange(tls, rest) == rest
                tls.unwrap()
            ended = time.monotonic()
            assert titus.proc.wait(10) == 0
            assert time.monotonic() - ended < 3, "titus waited for the drain timeout"
        finally:
            titus.stop()
        record = titus.wait_connections(1)[0]
        assert record["outcome"] == "ok" and record["detail"] is None
        assert record["bytes_in"] == len(first) + len(rest)


def test_drain_timeout_option(tmp_path: Path) -> None:
    assert load_config(basic_conf(tmp_path)).drain_timeout == 30.0
    assert load_config(basic_conf(tmp_path, "drain-timeout 2.5\n")).drain_timeout == 2.5
    with pytest.raises(ConfigError, match=r"titus.conf:6: drain-timeout 0: must be more than 0"):
        load_config(basic_conf(tmp_path, "drain-timeout 0\n"))
    with pytest.raises(ConfigError, match="global option"):
        load_config(basic_conf(tmp_path, "vhost\n\tdrain-timeout 5\n"))
