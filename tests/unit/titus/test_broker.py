"""titus/supervisor/broker.py: the backend connection the supervisor makes for a worker."""

from __future__ import annotations

import gc
import os
import socket
import time
import weakref

import pytest

from titus.supervisor.broker import BackendConnect
from titus.supervisor.loop import Loop

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="IP_TRANSPARENT needs root")


def run(loop: Loop, result: list, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not result and time.monotonic() < deadline:
        loop.run_once(0.05)
    assert result, "no answer from the broker"


def test_a_socket_connected_to_itself_is_a_refusal_not_a_backend():
    # Bound to the very address it connects to, with nothing listening there: TCP's
    # simultaneous open connects it to itself (what an ephemeral port can do by chance).
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    loop = Loop()
    result: list = []
    try:
        BackendConnect(loop, [(socket.AF_INET, ("127.0.0.1", port))], 2.0,
                       lambda sock, reason: result.append((sock, reason)),
                       source=("127.0.0.1", port))
        run(loop, result)
    finally:
        loop.close()
    sock, reason = result[0]
    assert sock is None, "the broker handed over a socket connected to itself"
    assert "connected to itself" in reason and "ECONNREFUSED" in reason


def test_a_listening_backend_is_handed_over():
    server = socket.create_server(("127.0.0.1", 0))
    loop = Loop()
    result: list = []
    try:
        BackendConnect(loop, [(socket.AF_INET, server.getsockname())], 2.0,
                       lambda sock, reason: result.append((sock, reason)), header=b"hello")
        run(loop, result)
        sock, reason = result[0]
        assert reason is None and sock is not None
        peer, _ = server.accept()
        assert peer.recv(5) == b"hello"
        peer.close()
        sock.close()
    finally:
        loop.close()
        server.close()


class _Worker:
    """The supervisor's shape: a worker holds its broker, whose callback holds it."""

    broker: BackendConnect | None = None


@pytest.mark.parametrize("end", ["cancelled", "finished"])
def test_a_broker_lets_go_of_its_callback_once_cancelled_or_finished(end: str) -> None:
    """Otherwise a worker that ended while its backend was being connected (or that
    keeps its broker) is cyclic garbage, freed only by a full collection."""
    server = socket.create_server(("127.0.0.1", 0))
    loop = Loop()
    result: list = []

    def a_worker() -> weakref.ref[_Worker]:
        worker = _Worker()
        worker.broker = BackendConnect(
            loop, [(socket.AF_INET, server.getsockname())], 2.0,
            lambda sock, reason: result.append((sock, reason, worker)), start=False)
        if end == "cancelled":
            worker.broker.cancel()
        else:
            worker.broker.start()
            run(loop, result)
            sock, _, _ = result.pop()
            sock.close()
        return weakref.ref(worker)

    gc.disable()
    try:
        assert a_worker()() is None
    finally:
        gc.enable()
        loop.close()
        server.close()
