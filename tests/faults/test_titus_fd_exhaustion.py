"""titus out of file descriptors: many held-open connections against a small
RLIMIT_NOFILE, so that asking for a worker (its socketpairs) and then accept()
itself fail with EMFILE.

titus must say so once and clearly ("out-of-fds", with the limit), not spin,
not crash, keep the connections it already serves, close the excess clients at
once instead of leaving them to hang, and serve normally again as soon as
descriptors are free ("fds-recovered").  The limit is lowered on the running
supervisor with prlimit(2) (what `prlimit --pid` does): its exact fd count is
known only once it has started.
"""

from __future__ import annotations

import os
import resource
import socket
import ssl
import threading
import time

import pytest

from sandbox import notify
from tests.faults.test_titus_faults import (  # the faults suite's helpers and PKI
    SNI,
    _echo_exchange,
    _handshake,
    client_context,
    conf,
    pki,  # noqa: F401 - a fixture
    wait_until,
)
from tests.titus_harness import (
    EchoBackend,
    HTTPBackend,
    Titus,
    jailed_children,
    open_fds,
    proc_stat,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")

# A worker holds its control socket in the supervisor and, where the kernel notifies,
# its seccomp listener (titus/supervisor/workercalls.py).
FDS_PER_WORKER = 2 if notify.available() else 1
HEADROOM = 4 + 20 * FDS_PER_WORKER  # fds above the idle supervisor's: ~20 busy workers
ATTEMPTS = 48  # clients that try to hold a connection: about twice what fits
HANG = 3.0  # an excess client must hear from titus within this (refused, not left waiting)
CPU_LIMIT = 0.3  # of one core, while out of fds and still knocked at: a spin would be ~1.0
RECOVER = 5.0  # seconds from the last held connection closed to serving again


def cpu_seconds(pid: int) -> float:
    fields = proc_stat(pid)
    assert fields is not None, f"process {pid} is gone"
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Clients:
    """TLS connections through titus, each proven by an echo and kept open; every
    attempt is remembered (held or not, how long until titus answered, and why)."""

    def __init__(self, ctx: ssl.SSLContext, addr: tuple[str, int]) -> None:
        self.ctx, self.addr = ctx, addr
        self.held: list[ssl.SSLSocket] = []
        self.failed: list[tuple[float, str]] = []
        self.succeeded = 0

    def attempt(self, keep: bool = True) -> bool:
        started = time.monotonic()
        raw = socket.create_connection(self.addr, timeout=5)
        try:
            tls = self.ctx.wrap_socket(raw, server_hostname=SNI)
            tls.settimeout(5)
            echoed = _echo_exchange(tls, b"held") == b"held"
        except (OSError, ssl.SSLError) as e:
            raw.close()
            self.failed.append((time.monotonic() - started, f"{type(e).__name__}: {e}"))
            return False
        if not echoed:
            tls.close()
            self.failed.append((time.monotonic() - started, "no echo"))
            return False
        self.succeeded += 1
        if keep:
            self.held.append(tls)
        else:
            tls.close()
        return True

    def slow(self) -> list[tuple[float, str]]:
        """Failures titus took HANG seconds or more to make known: clients left waiting."""
        return [f for f in self.failed if f[0] >= HANG]

    def close(self) -> None:
        for tls in self.held:
            tls.close()
        self.held.clear()


def out_of_fds_events(titus: Titus, kind: str) -> list[dict]:
    return [r for r in titus.records() if r.get("event") == kind]


def settle_pool(titus: Titus, spares: int) -> int:
    """Wait for key holder + `spares` idle workers and nothing else; the supervisor's fd count."""
    assert titus.proc is not None
    wait_until(lambda: len(jailed_children(titus)) == 1 + spares, 10,
               f"the key holder and {spares} idle workers only")
    time.sleep(0.3)  # the last reaps and hand-offs
    return len(open_fds(titus.proc.pid))


def test_held_connections_exhaust_fds_then_titus_recovers(tmp_path, pki):  # noqa: F811
    with EchoBackend() as backend, Titus(tmp_path, conf(pki, backend.port, """
min-spare-children 2
max-children 100
max-handshake-time 10
""")) as titus:
        assert titus.proc is not None
        pid = titus.proc.pid
        clients = Clients(client_context(pki), ("127.0.0.1", titus.port))
        assert clients.attempt(keep=False)
        baseline = settle_pool(titus, 2)
        limit = baseline + HEADROOM
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
        try:
            for _ in range(ATTEMPTS):
                clients.attempt()
                if len(clients.slow()) >= 3:
                    break
            assert titus.proc.poll() is None, f"titus died: {titus.log_tail()}"
            assert not clients.slow(), \
                f"excess clients left waiting instead of refused: {clients.slow()[:3]}"
            held = len(clients.held)
            assert held >= HEADROOM // (2 * FDS_PER_WORKER), (held, clients.failed[:3])
            assert clients.failed, f"all {ATTEMPTS} connections held with {limit} fds?"

            shortages = out_of_fds_events(titus, "out-of-fds")
            assert shortages, f"no out-of-fds event: {titus.log_tail()}"
            short = shortages[0]
            assert short["level"] == "ERROR" and short["limit"] == limit, short
            assert "Too many open files" in short["reason"], short

            # Still out of fds and still knocked at: no busy loop.
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            for _ in range(10):
                clients.attempt()
                time.sleep(0.2)
            cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            assert cpu < CPU_LIMIT, f"the supervisor used {cpu:.0%} of a core while out of fds"
            assert len(out_of_fds_events(titus, "out-of-fds")) <= 5, "one line per shortage"

            assert not clients.slow(), clients.slow()[:3]
            # What titus holds still works.
            for tls in clients.held:
                assert _echo_exchange(tls, b"still here") == b"still here"
        finally:
            held = len(clients.held)
            clients.close()
        closed_at = time.monotonic()
        wait_until(lambda: clients.attempt(keep=False), RECOVER,
                   "serving again after the held connections closed", step=0.1)
        recovered_after = time.monotonic() - closed_at
        for _ in range(10):
            assert clients.attempt(keep=False)

        records = titus.wait_connections(clients.succeeded)
        assert titus.proc.poll() is None
        print(f"\nlimit {limit} fds (idle supervisor: {baseline}): {held} held, "
              f"{len(clients.failed)} refused, each within "
              f"{max(t for t, _ in clients.failed):.2f}s; supervisor CPU while out of fds "
              f"{cpu:.0%}; serving again {recovered_after:.2f}s after the close")
        # Every client titus turned away is counted once: closed by the supervisor
        # (fds-recovered's "refused") or by its worker (a connection record).
        recovered = out_of_fds_events(titus, "fds-recovered")
        assert recovered, "no fds-recovered event"
        failed_records = [r for r in records if r["outcome"] != "ok"]
        assert sum(r["refused"] for r in recovered) + len(failed_records) == \
            len(clients.failed), (recovered, failed_records[:3], clients.failed[:3])
        assert len(records) == clients.succeeded + len(failed_records)
        assert all(r["worker_exit"] == 0 for r in records)
        # The failed spawns leaked nothing: back to the idle supervisor's descriptors.
        assert settle_pool(titus, 2) == baseline


def test_accept_emfile_waits_without_spinning_and_serves_after(tmp_path, pki):  # noqa: F811
    with HTTPBackend() as backend, Titus(tmp_path, conf(pki, backend.port, """
min-spare-children 2
max-children 16
""")) as titus:
        assert titus.proc is not None
        pid, addr, ctx = titus.proc.pid, ("127.0.0.1", titus.port), client_context(pki)
        settle_pool(titus, 2)
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        # The limit caps fd numbers: at the lowest free one, the next fd of any kind fails.
        used = set(open_fds(pid))
        lowest_free = min(set(range(len(used) + 1)) - used)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, hard))

        results: list[bool] = []
        clients = [threading.Thread(target=lambda: results.append(_handshake(ctx, addr, timeout=15)
                                                                   .ok), daemon=True)
                   for _ in range(3)]
        for t in clients:
            t.start()
        wait_until(lambda: out_of_fds_events(titus, "out-of-fds"), 5, "an out-of-fds event")
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(1.5)
        cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        assert cpu < CPU_LIMIT, f"the supervisor used {cpu:.0%} of a core while accept() fails"
        [short] = out_of_fds_events(titus, "out-of-fds")
        assert short["reason"].startswith("accept: ") and short["limit"] == lowest_free, short

        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        for t in clients:
            t.join(15)
        assert results == [True] * 3, "the clients waiting in the backlog were not served"
        titus.wait_connections(3)
        assert out_of_fds_events(titus, "fds-recovered")
        assert titus.proc.poll() is None
        print(f"\naccept() failing with EMFILE for 1.5 s: supervisor CPU {cpu:.0%}")
