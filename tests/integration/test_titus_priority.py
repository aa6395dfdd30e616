"""The supervisor runs ten nice levels below everything it starts (titus/supervisor/
priority.py): the zygote, its workers and the key holder keep titus's own priority, at
start, after a reload and after a key-holder restart."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import time

import pytest

from tests.pki import CA
from tests.titus_harness import EchoBackend, Titus, jailed_children, keyholder_pid
from titus.supervisor.priority import OFFSET

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")


def nice(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def started(titus: Titus, pids: set[int]) -> dict[int, int]:
    """Each live process titus started, other than `pids`, with its nice value."""
    out = {}
    for pid in {*jailed_children(titus), *titus.zygote_pids()} - pids:
        with contextlib.suppress(ProcessLookupError):  # a worker that has just exited
            out[pid] = nice(pid)
    return out


def at_least(titus: Titus, count: int, timeout: float = 10) -> dict[int, int]:
    """`started` once it holds `count` processes (the pool spawns its spares after start)."""
    deadline = time.monotonic() + timeout
    while len(found := started(titus, set())) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(found) >= count, found
    return found


def test_only_the_supervisor_runs_below_titus_priority(tmp_path):
    base = nice(0)  # titus inherits the test's
    ca = CA(tmp_path / "pki")
    leaf = ca.issue("prio.test")
    with EchoBackend() as backend, Titus(tmp_path, f"""listen 127.0.0.1:0
cert {leaf.cert}
key {leaf.key}
backend 127.0.0.1
backend-port {backend.port}
min-spare-children 2
""") as titus:
        first = at_least(titus, 4)  # the zygote, the key holder, two spare workers
        assert nice(titus.proc.pid) == min(19, base + OFFSET)
        assert set(first.values()) == {base}, first

        ctx = ssl.create_default_context(cafile=str(ca.path))
        with socket.create_connection(("127.0.0.1", titus.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="prio.test") as tls:
            tls.sendall(b"ping")
            assert tls.recv(4) == b"ping"

        os.kill(keyholder_pid(titus), signal.SIGKILL)
        restarted = titus.wait_event(lambda r: r.get("event") == "keyholder-restarted")["pid"]
        assert nice(restarted) == base

        titus.proc.send_signal(signal.SIGHUP)
        titus.wait_event(lambda r: r.get("event") == "reloaded")
        later = started(titus, {*first, restarted})
        assert any(pid in titus.zygote_pids() for pid in later), later  # the new zygote
        assert set(later.values()) == {base}, later
        assert nice(titus.proc.pid) == min(19, base + OFFSET)
