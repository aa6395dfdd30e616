"""The faults the other files leave out.

Already covered elsewhere, not repeated here: a key holder killed with
connections parked and handshakes racing (test_titus_faults.py), the backend
refusing, the backend resetting mid-stream, the client resetting mid-stream, a
client that never reads, with the worker's RSS measured (test_titus_data.py),
and the supervisor killed (test_titus_faults.py).

Here: the key holder killed in the middle of a hundred concurrent handshakes,
a backend that goes down (refusing, then back up; or black-holed, so only
the connect timeout ends the wait), and the zygote killed, or stopped so that
it never answers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import threading
import time
from collections import Counter

import pytest

from tests.faults.test_titus_faults import (  # the faults suite's helpers and PKI
    PKI,
    SNI,
    Attempt,
    _handshake,
    client_context,
    conf,
    event_names,
    http_backend,
    pki,  # noqa: F401 - a fixture
    wait_until,
)
from tests.pki import CA
from tests.titus_harness import (
    HTTPBackend,
    Titus,
    is_running,
    jailed_children,
    keyholder_pid,
    proc_stat,
    session_processes,
    worker_of,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")

# -- 1. the key holder killed during 100 concurrent handshakes ---------------------------

CONCURRENT = 100
KILL_AFTER = 10  # handshakes done: the kill lands early in the burst
HANG = 5.0  # no handshake may take longer (100 client threads share one GIL)
MIN_SPARE = 4
RECOVER = 3.0  # seconds from the kill to a new client served (a slow CI machine's bound)
PARK_TIME = 60  # max-handshake-time: parking 100 workers takes seconds on a busy machine


@pytest.fixture(scope="module")
def rsa4096(tmp_path_factory) -> PKI:
    """A slow key: the key holder signs one handshake after another, 100 of them take
    it a good fraction of a second, so a kill finds most still waiting for theirs."""
    ca = CA(tmp_path_factory.mktemp("rsa4096"))
    return PKI(ca, ca.issue(SNI, "rsa4096"), ca.issue("other.test", "p256"))


def test_keyholder_killed_during_100_concurrent_handshakes(tmp_path, rsa4096):
    with http_backend() as backend, Titus(tmp_path, conf(rsa4096, backend.port, f"""
min-spare-children {MIN_SPARE}
max-children 200
max-handshake-time {PARK_TIME}
""")) as titus:
        assert titus.proc is not None
        ctx, addr = client_context(rsa4096), ("127.0.0.1", titus.port)
        assert _handshake(ctx, addr).ok
        victim = keyholder_pid(titus)

        # A hundred connections, each accepted and held by a worker of its own that
        # holds a channel to the key holder; then their handshakes, all at once.
        parked = [socket.create_connection(addr, timeout=5) for _ in range(CONCURRENT)]
        results: list[Attempt | None] = [None] * CONCURRENT
        try:
            wait_until(lambda: len(jailed_children(titus)) >= 1 + CONCURRENT, PARK_TIME / 2,
                       "a worker for every parked connection")
            wait_until(lambda: all(worker_of(titus, s) for s in parked), 10,
                       "every parked connection held by a worker")
            go = threading.Barrier(CONCURRENT + 1)

            def handshake(i: int) -> None:
                go.wait(10)
                results[i] = _handshake(ctx, addr, raw=parked[i], timeout=HANG)

            threads = [threading.Thread(target=handshake, args=(i,), daemon=True)
                       for i in range(CONCURRENT)]
            for t in threads:
                t.start()
            go.wait(10)
            wait_until(lambda: sum(r is not None for r in results) >= KILL_AFTER, HANG,
                       f"{KILL_AFTER} handshakes done", step=0.001)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)

            # New clients are served again promptly, while the burst goes on.
            probes = []
            for _ in range(100):
                probes.append(_handshake(ctx, addr, timeout=2.0))
                if probes[-1].ok or time.monotonic() - killed_at > 5:
                    break
            for t in threads:
                t.join(HANG + 10)
            assert not any(t.is_alive() for t in threads), "a client hangs"
        finally:
            for s in parked:
                s.close()

        done = [r for r in results if r is not None]
        assert len(done) == CONCURRENT
        # Every client: a good connection or a clean failure (an alert or a close), fast.
        slow = [r for r in done if r.ended - r.started >= HANG]
        assert not slow, f"{len(slow)} handshakes took {HANG}s or more: {slow[:3]}"
        hung = [r for r in done if (r.error or "").startswith("TimeoutError")]
        assert not hung, hung[:3]
        ok = [r for r in done if r.ok]
        failed = [r for r in done if not r.ok]
        straddling = [r for r in done if r.started < killed_at < r.ended]
        assert ok and failed, f"the kill did not land in the burst: {len(ok)} ok"
        assert len(straddling) >= CONCURRENT // 2, \
            f"only {len(straddling)} handshakes in flight at the kill"
        assert all(r.error and not r.error.startswith("reply") for r in failed), failed[:3]
        recovered = next((p.ended - killed_at for p in probes if p.ok), None)
        assert recovered is not None and recovered < RECOVER, f"not serving again: {probes[-3:]}"
        print(f"\nkey holder killed after {KILL_AFTER} of {CONCURRENT} concurrent handshakes: "
              f"{len(ok)} good, {len(failed)} clean failures "
              f"({Counter((r.error or '').split(':')[0] for r in failed)}), "
              f"{len(straddling)} in flight at the kill; slowest "
              f"{max(r.ended - r.started for r in done):.2f}s; serving again after "
              f"{recovered:.2f}s")

        # titus logged the death and the restart, and one record per connection.
        names = event_names(titus)
        assert names.index("keyholder-died") < names.index("keyholder-restarted")
        new = keyholder_pid(titus)
        assert new != victim and is_running(new) and not is_running(victim)
        records = titus.wait_connections(1 + CONCURRENT + len(probes), timeout=20)
        assert len(records) == 1 + CONCURRENT + len(probes)
        outcomes = Counter(r["outcome"] for r in records)
        assert set(outcomes) <= {"ok", "handshake-failed"}, outcomes
        assert outcomes["ok"] == 1 + len(ok) + sum(p.ok for p in probes), outcomes
        assert all(r["worker_exit"] == 0 for r in records)
        # Nothing of the burst is left: the new key holder and the idle pool.
        wait_until(lambda: len(jailed_children(titus)) == 1 + MIN_SPARE, 10, "the pool idle")
        assert set(session_processes(titus.proc.pid)) == {
            titus.proc.pid, *titus.zygote_pids(), *jailed_children(titus)}


# -- 2. the backend goes down ---------------------------------------------------------


REQUEST = b"GET /down HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def exchange(ctx: ssl.SSLContext, addr: tuple[str, int], timeout: float = 10
             ) -> tuple[bytes | None, float, int]:
    """A request through titus: (the reply up to titus's close_notify, or None if the
    connection ended otherwise; seconds taken; the client's local port)."""
    started = time.monotonic()
    raw = socket.create_connection(addr, timeout=timeout)
    port = raw.getsockname()[1]
    with raw, ctx.wrap_socket(raw, server_hostname=SNI) as tls:
        tls.sendall(REQUEST)
        data = b""
        for _ in range(1000):
            try:
                chunk = tls.recv(65536)
            except (OSError, ssl.SSLError):
                return None, time.monotonic() - started, port
            if not chunk:
                return data, time.monotonic() - started, port
            data += chunk
    return None, time.monotonic() - started, port


def record_for(titus: Titus, port: int) -> dict:
    return titus.wait_event(lambda r: r.get("event") == "connection"
                            and r.get("client") == f"127.0.0.1:{port}")


def test_backend_down_then_back_up(tmp_path, pki):  # noqa: F811
    backend = HTTPBackend("A")
    port = backend.port
    with Titus(tmp_path, conf(pki, port, """
min-spare-children 2
backend-connect-timeout 3
""")) as titus:
        ctx, addr = client_context(pki), ("127.0.0.1", titus.port)
        with backend:
            reply, _, _ = exchange(ctx, addr)
            assert reply is not None and reply.endswith(b"backend A path /down\n")
        # Down: nothing listens on the port any more.  Each client gets its handshake
        # and then a clean close (close_notify, no data) at once, not after the timeout.
        for _ in range(3):
            reply, took, client_port = exchange(ctx, addr)
            assert reply == b"", f"expected a clean close, got {reply!r}"
            assert took < 2.0, f"{took:.2f}s: a refused backend must not wait for the timeout"
            record = record_for(titus, client_port)
            assert record["outcome"] == "backend-failed", record
            assert "ECONNREFUSED" in record["detail"], record
        # Back up on the same port: served again at once, no backoff left over.
        with HTTPBackend("B", port=port):
            for _ in range(3):
                reply, took, client_port = exchange(ctx, addr)
                assert reply is not None and reply.endswith(b"backend B path /down\n"), reply
                assert record_for(titus, client_port)["outcome"] == "ok"
        assert titus.proc is not None and titus.proc.poll() is None


def test_backend_black_hole_ends_at_the_connect_timeout(tmp_path, pki):  # noqa: F811
    # A listener whose accept queue is full and never drained: Linux drops further
    # SYNs (tcp_abort_on_overflow 0), so a connect neither succeeds nor fails: a
    # backend host that is down and silent, on loopback.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as hole, \
            socket.create_connection(hole.getsockname(), timeout=5), \
            Titus(tmp_path, conf(pki, hole.getsockname()[1], """
min-spare-children 2
backend-connect-timeout 1
""")) as titus:
        ctx, addr = client_context(pki), ("127.0.0.1", titus.port)
        results: list[tuple[bytes | None, float, int]] = []
        clients = [threading.Thread(target=lambda: results.append(exchange(ctx, addr)),
                                    daemon=True) for _ in range(3)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(15)
        assert len(results) == 3, "a client hangs"
        for reply, took, client_port in results:
            assert reply == b"", f"expected a clean close, got {reply!r}"
            assert 0.9 <= took < 3.0, f"closed after {took:.2f}s, the timeout is 1 s"
            record = record_for(titus, client_port)
            assert record["outcome"] == "backend-failed", record
            assert "timed out" in record["detail"], record
        print(f"\nblack-holed backend: clients closed after "
              f"{', '.join(f'{took:.2f}s' for _, took, _ in results)}")
        assert titus.proc is not None and titus.proc.poll() is None


# -- 3. the zygote dies, or stops answering ---------------------------------------------

ZYGOTE_SPARES = 2


def _served_after_zygote_replaced(titus: Titus, certs: PKI, victim: int, reason: str,
                                  timeout: float) -> None:
    """titus logs the zygote's failure, starts another, refills its pool from it and
    serves; the old zygote is gone and nothing else is left over."""
    failed = titus.wait_event(lambda r: r.get("event") == "zygote-failed", timeout=timeout)
    assert reason in failed["reason"], failed
    wait_until(lambda: titus.zygote_pids() and victim not in titus.zygote_pids(), 10,
               "a new zygote")
    assert not is_running(victim)
    ctx, addr = client_context(certs), ("127.0.0.1", titus.port)
    assert _handshake(ctx, addr).ok
    wait_until(lambda: len(jailed_children(titus)) == 1 + ZYGOTE_SPARES, 10, "the pool refilled")
    assert titus.proc is not None
    assert set(session_processes(titus.proc.pid)) == {
        titus.proc.pid, *titus.zygote_pids(), *jailed_children(titus)}


def test_zygote_killed_is_replaced(tmp_path, pki):  # noqa: F811
    with http_backend() as backend, Titus(tmp_path, conf(pki, backend.port, f"""
min-spare-children {ZYGOTE_SPARES}
""")) as titus:
        titus.wait_idle_workers()
        [victim] = titus.zygote_pids()
        os.kill(victim, signal.SIGKILL)
        _served_after_zygote_replaced(titus, pki, victim, "exited", timeout=10)


def test_zygote_that_stops_answering_is_replaced(tmp_path, pki):  # noqa: F811
    """A spawn request unanswered for SPAWN_REPLY_TIMEOUT (15 s) replaces the zygote:
    the deadline each request sets must still fire while the answered ones' are
    cancelled (so that they never wake the supervisor)."""
    with http_backend() as backend, Titus(tmp_path, conf(pki, backend.port, f"""
min-spare-children {ZYGOTE_SPARES}
""")) as titus:
        titus.wait_idle_workers()
        [victim] = titus.zygote_pids()
        os.kill(victim, signal.SIGSTOP)
        try:
            ctx, addr = client_context(pki), ("127.0.0.1", titus.port)
            assert _handshake(ctx, addr).ok  # a spare serves it; its refill goes unanswered
            _served_after_zygote_replaced(titus, pki, victim, "did not answer", timeout=25)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGCONT)


# -- 4. a worker stopped and continued ---------------------------------------------------


def _stop_and_continue(pid: int) -> None:
    """SIGSTOP, then SIGCONT once the process is stopped: as a debugger, a job-control
    stop or a cgroup freeze does.  A sleep with a timeout it was in (poll) resumes
    through restart_syscall."""
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: (proc_stat(pid) or ["?"])[0] == "T", 5, "the worker stopped")
    os.kill(pid, signal.SIGCONT)


def test_a_worker_stopped_and_continued_serves_on(tmp_path, pki):  # noqa: F811
    """Stopped while it waits for the ClientHello, and again while it waits for the
    request, the worker carries on: before restart_syscall was allowed in every
    filter, the resumed poll killed it (SIGSYS) and the client saw a reset."""
    with http_backend() as backend, Titus(tmp_path, conf(pki, backend.port)) as titus:
        ctx, addr = client_context(pki), ("127.0.0.1", titus.port)
        raw = socket.create_connection(addr, timeout=5)
        wait_until(lambda: worker_of(titus, raw) is not None, 5, "its worker")
        worker = worker_of(titus, raw)
        assert worker is not None
        time.sleep(0.1)  # in poll, with the handshake's deadline as its timeout
        _stop_and_continue(worker)
        time.sleep(0.1)
        assert is_running(worker)
        with raw, ctx.wrap_socket(raw, server_hostname=SNI) as tls:
            time.sleep(0.1)  # in the pump's poll, its idle timeout running
            _stop_and_continue(worker)
            time.sleep(0.1)
            assert is_running(worker)
            tls.sendall(REQUEST)
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
        assert data.endswith(b"backend A path /down\n"), data[-80:]
        assert [r for r in titus.records() if r.get("violation")] == []
