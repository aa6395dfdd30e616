"""Faults, with real processes and real TLS clients: a key holder, a worker or the
supervisor killed, clients that never finish their handshake, a worker that
makes a forbidden syscall, SIGTERM with a connection in flight, and
configurations titus must refuse before anything starts.

Every loop here is bounded in count and in time, and everything listens on
127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.native import encode_args
from tests.pki import CA, Leaf
from tests.titus_harness import (
    EchoBackend,
    ForkedTitus,
    HTTPBackend,
    Titus,
    client_hello,
    is_running,
    jailed_children,
    keyholder_pid,
    nofile_limit,
    open_fds,
    run_cli,
    session_processes,
    worker_of,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")

REQUEST = b"GET /fault HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
SNI = "a.test"


@dataclass
class PKI:
    ca: CA
    leaf: Leaf
    other: Leaf  # a second key pair, for key/cert mismatches


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    ca = CA(tmp_path_factory.mktemp("faults-pki"))
    return PKI(ca, ca.issue(SNI, "p256"), ca.issue("other.test", "p256"))


def client_context(pki: PKI) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca.path))


def conf(pki: PKI, backend_port: int, extra: str = "", listen: str = "127.0.0.1:0") -> str:
    return f"""listen {listen}
{extra}
key {pki.leaf.key}
cert {pki.leaf.cert}
backend 127.0.0.1
backend-port {backend_port}
"""


def get(ctx: ssl.SSLContext, addr: tuple[str, int], timeout: float = 5.0) -> bytes:
    """One HTTPS request through titus; the whole response."""
    with socket.create_connection(addr, timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=SNI) as tls:
        tls.sendall(REQUEST)
        data = b""
        for _ in range(1000):
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def wait_until(pred: Callable[[], object], timeout: float, what: str, step: float = 0.02
               ) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(step)


def closed_by_peer(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closes or resets `sock` (any data is read and dropped)."""
    start = time.monotonic()
    deadline = start + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except (ConnectionError, ssl.SSLError, OSError):
            return time.monotonic() - start
    return None


@contextlib.contextmanager
def http_backend(name: str = "A") -> Iterator[HTTPBackend]:
    """HTTPBackend with a listen backlog for bursts: socketserver's default of 5
    overflows when dozens of workers connect at once, and a dropped SYN costs the
    broker a 1 s retransmit that would be blamed on titus."""
    with HTTPBackend(name) as backend:
        backend.server.socket.listen(1024)
        yield backend


def event_names(titus: Titus) -> list[str]:
    return [r.get("event", "") for r in titus.records()]


# -- 1. the key holder killed under load ----------------------------------------------

PARKED = 64  # connections accepted (a worker each) whose ClientHello comes after the kill
RACERS = 8  # threads doing handshakes across the kill, RACER_PAUSE apart: traffic that
RACER_PAUSE = 0.05  # keeps going without saturating the pool (each needs a fresh jail)
HANG = 2.0  # "promptly": no handshake may take longer than this around the kill


@dataclass
class Attempt:
    started: float
    ended: float
    ok: bool
    error: str | None


def _handshake(ctx: ssl.SSLContext, addr: tuple[str, int], raw: socket.socket | None = None,
               timeout: float = 5.0) -> Attempt:
    started = time.monotonic()
    try:
        raw = raw or socket.create_connection(addr, timeout=timeout)
        raw.settimeout(timeout)
        with raw, ctx.wrap_socket(raw, server_hostname=SNI) as tls:
            tls.sendall(REQUEST)
            data = b""
            for _ in range(100):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
            ok = data.endswith(b"backend A path /fault\n")
            return Attempt(started, time.monotonic(), ok, None if ok else f"reply {data[-60:]!r}")
    except (OSError, ssl.SSLError) as e:
        return Attempt(started, time.monotonic(), False, f"{type(e).__name__}: {e}")


def test_keyholder_killed_under_load(tmp_path, pki):
    with http_backend() as backend, Titus(tmp_path, conf(pki, backend.port, """
min-spare-children 4
max-children 200
max-handshake-time 10
""")) as titus:
        ctx = client_context(pki)
        addr = ("127.0.0.1", titus.port)
        assert _handshake(ctx, addr).ok

        # The key holder: the oldest jailed child (see keyholder_pid).  Cross-check:
        # the supervisor gives it RLIMIT_NOFILE max-children + 64, unlike any worker.
        victim = keyholder_pid(titus)
        assert nofile_limit(victim) == 200 + 64
        assert all(nofile_limit(p) != 200 + 64 for p in jailed_children(titus) if p != victim)

        # Park PARKED connections: each accepted and handed to a worker that
        # holds a channel to the key holder, waiting for its ClientHello.
        parked = [socket.create_connection(addr, timeout=5) for _ in range(PARKED)]
        try:
            wait_until(lambda: len(jailed_children(titus)) >= 1 + PARKED, 20,
                       "a worker for every parked connection")
            wait_until(lambda: all(worker_of(titus, s) for s in parked), 10,
                       "every parked connection held by a worker")

            # Racers: handshakes that keep coming through the kill.
            stop = threading.Event()
            racer_results: list[Attempt] = []
            lock = threading.Lock()

            def racer() -> None:
                for _ in range(200):
                    if stop.wait(RACER_PAUSE):
                        return
                    attempt = _handshake(ctx, addr)
                    with lock:
                        racer_results.append(attempt)

            racers = [threading.Thread(target=racer, daemon=True) for _ in range(RACERS)]
            for t in racers:
                t.start()
            time.sleep(0.5)

            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)

            # The parked connections now send their ClientHello: their workers'
            # channels lead to a dead key holder, so each must fail, promptly.
            parked_results: list[Attempt | None] = [None] * PARKED

            def finish(i: int) -> None:
                parked_results[i] = _handshake(ctx, addr, raw=parked[i])

            finishers = [threading.Thread(target=finish, args=(i,), daemon=True)
                         for i in range(PARKED)]
            for t in finishers:
                t.start()

            # New connections must succeed within a second of the kill.
            probes = []
            for _ in range(100):
                probes.append(_handshake(ctx, addr, timeout=1.0))
                if probes[-1].ok or time.monotonic() - killed_at > 3:
                    break
            stop.set()
            for t in (*racers, *finishers):
                t.join(10)
            assert not any(t.is_alive() for t in (*racers, *finishers)), "a client hung"
        finally:
            for s in parked:
                s.close()

        new_ok = [r.ended - killed_at for r in (*probes, *racer_results)
                  if r.ok and r.started > killed_at]
        assert new_ok and min(new_ok) < 1.0, \
            f"no new connection succeeded within 1 s of the kill: {probes}"

        for r in parked_results:
            assert r is not None
            assert not r.ok, "a worker signed with a dead key holder?"
            assert r.ended - r.started < HANG, f"parked handshake took {r.ended - r.started:.2f}s"
            assert not (r.error or "").startswith("TimeoutError"), r.error  # alert or close
        slow = [r for r in racer_results if r.ended - r.started >= HANG]
        assert not slow, f"{len(slow)} racing handshakes took >= {HANG}s: {slow[:3]}"
        assert any(r.ok and r.started > killed_at for r in racer_results), \
            "no racing handshake succeeded after the restart"

        names = event_names(titus)
        assert "keyholder-died" in names and "keyholder-restarted" in names, names
        assert names.index("keyholder-died") < names.index("keyholder-restarted")
        new = keyholder_pid(titus)
        assert new != victim and is_running(new) and not is_running(victim)


# -- 2. one worker killed mid-connection ----------------------------------------------


def _echo_exchange(tls: ssl.SSLSocket, data: bytes, chunk: int = 16384) -> bytes:
    """Send `data` in chunks, reading each chunk's echo before the next; what came back."""
    back = b""
    for i in range(0, len(data), chunk):
        piece = data[i:i + chunk]
        tls.sendall(piece)
        got = b""
        for _ in range(1000):
            if len(got) >= len(piece):
                break
            more = tls.recv(len(piece) - len(got))
            if not more:
                return back + got
            got += more
        back += got
    return back


def test_worker_killed_mid_connection(tmp_path, pki):
    with EchoBackend() as backend, Titus(tmp_path, conf(pki, backend.port, """
min-spare-children 2
max-children 16
""")) as titus:
        ctx = client_context(pki)
        conns = []
        try:
            for _ in range(4):
                raw = socket.create_connection(("127.0.0.1", titus.port), timeout=5)
                conns.append(ctx.wrap_socket(raw, server_hostname=SNI))
            first = [os.urandom(65536) for _ in conns]
            for tls, data in zip(conns, first, strict=True):
                assert _echo_exchange(tls, data) == data  # every relay is up
            victim_pid = worker_of(titus, conns[1])
            pids = [worker_of(titus, c) for c in conns]
            assert victim_pid is not None and len(set(pids)) == 4, pids

            os.kill(victim_pid, signal.SIGKILL)
            assert closed_by_peer(conns[1], 3.0) is not None, "the killed one saw no close"

            # The others are untouched: they finish their transfers.
            results: dict[int, bool] = {}

            def finish(i: int) -> None:
                data = os.urandom(256 * 1024)
                results[i] = _echo_exchange(conns[i], data) == data
                conns[i].unwrap()  # close_notify: a clean end of the connection

            threads = [threading.Thread(target=finish, args=(i,)) for i in (0, 2, 3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            assert results == {0: True, 2: True, 3: True}
        finally:
            for c in conns:
                c.close()
        records = {r["worker_pid"]: r for r in titus.wait_connections(4)}
        assert records[victim_pid]["outcome"] == "worker-died"
        assert records[victim_pid]["worker_exit"] == 128 + signal.SIGKILL
        for pid in pids:
            if pid != victim_pid:
                assert records[pid]["outcome"] == "ok", records[pid]
                assert records[pid]["bytes_in"] == 65536 + 256 * 1024


# -- 3. handshakes that never finish --------------------------------------------------


def test_silent_client_cut_at_max_handshake_time(tmp_path, pki):
    with EchoBackend() as backend, Titus(tmp_path, conf(pki, backend.port, """
min-spare-children 1
max-handshake-time 1
""")) as titus, socket.create_connection(("127.0.0.1", titus.port), timeout=5) as sock:
        after = closed_by_peer(sock, 5.0)
        assert after is not None, "titus never closed a client that sent nothing"
        assert 0.8 <= after <= 2.0, f"closed after {after:.2f}s, max-handshake-time is 1s"
        record = titus.wait_connections(1)[0]
        assert record["outcome"] == "timeout", record
        assert record["tls_version"] is None and record["bytes_in"] == 0


def test_slowloris_client_hello_cut_at_max_handshake_time(tmp_path, pki):
    hello = client_hello(client_context(pki), SNI)
    assert len(hello) > 20  # at 0.3 s a byte it would take minutes to send
    with EchoBackend() as backend, Titus(tmp_path, conf(pki, backend.port, """
min-spare-children 1
max-handshake-time 1
""")) as titus, socket.create_connection(("127.0.0.1", titus.port), timeout=5) as sock:
        start = time.monotonic()
        after = None
        for byte in hello[:20]:  # bounded: 20 bytes, 6 s
            try:
                sock.send(bytes([byte]))
            except OSError:
                after = time.monotonic() - start
                break
            closed = closed_by_peer(sock, 0.3)
            if closed is not None:
                after = time.monotonic() - start
                break
        assert after is not None, "titus kept a slowloris ClientHello for 6 s"
        assert 0.8 <= after <= 2.0, f"closed after {after:.2f}s, max-handshake-time is 1s"
        record = titus.wait_connections(1)[0]
        assert record["outcome"] == "timeout", record


# -- 4. a worker that makes a forbidden syscall ---------------------------------------
#
# titus cannot be told to make its own worker misbehave (by design), so this
# simulates code execution inside a worker: the REAL Supervisor runs in a
# forked child of the test (not a subprocess exec), and its zygote wraps each
# worker's entry point in the rogue one of tests/native/rogue.c (C, in the real
# worker jail).  Connection 1 asks it for a payload that creates an AF_INET
# socket -- forbidden by policies/titus-worker.toml (deny "socket").  Where the
# kernel notifies, the worker's filter hands the call to the supervisor, which
# names it with its arguments and SIGKILLs the worker (titus/supervisor/
# workercalls.py); with SANDBOX_SECCOMP_NOTIFY=0 (an older kernel's way) the
# filter kills it (SIGSYS) and the audit log names it.  The supervisor's
# violation detection, logging and pool refill are the real ones.

SIGKILL_EXIT, SIGSYS_EXIT = 128 + signal.SIGKILL, 128 + signal.SIGSYS


def attack(addr: tuple[str, int], payload: str, args: list) -> tuple[socket.socket, bytes]:
    """A connection whose rogue worker is ready to run `payload`, and the line that
    starts it."""
    attacker = socket.create_connection(addr, timeout=10)
    attacker.sendall(f"ATTACK {payload}\n".encode())
    assert attacker.recv(6) == b"ready\n"
    return attacker, b"go " + encode_args(args).encode() + b"\n"


@pytest.mark.parametrize("notify", [True, False], ids=["notified", "audit-log"])
def test_forbidden_syscall_is_logged_and_worker_replaced(tmp_path, pki, monkeypatch, notify):
    if not notify:
        monkeypatch.setenv("SANDBOX_SECCOMP_NOTIFY", "0")
    backend = HTTPBackend("A")  # bound now, served after the fork: no thread is forked
    forked = ForkedTitus(tmp_path, conf(pki, backend.port, """
min-spare-children 2
max-children 8
"""), "tests.native:setup")
    code = None
    try:
        forked.start_forked()
        with backend:
            ctx = client_context(pki)
            addr = ("127.0.0.1", forked.addresses[0][1])
            attacker, go = attack(addr, "tcp_connect", ["127.0.0.1", backend.port])
            with attacker:
                attacker.sendall(go)
                assert attacker.recv(100) == b""  # its worker is killed
            record = forked.wait_forked(lambda r: r.get("event") == "connection"
                                        and r.get("conn_id") == 1)
            assert record["outcome"] == "policy-violation", record
            assert record["syscall"] == "socket", record
            if notify:  # the call with its arguments, as `sandbox run` words it
                assert record["violation"].startswith(
                    "seccomp violation: socket(AF_INET, SOCK_STREAM, 0) (#"), record
                assert record["worker_exit"] == SIGKILL_EXIT, record
            else:
                assert "socket" in record["violation"], record
                assert record["worker_exit"] == SIGSYS_EXIT, record

            # The pool replaced the dead worker: the next connections are served.
            for _ in range(3):
                assert get(ctx, addr).endswith(b"backend A path /fault\n")
            forked.wait_forked(lambda r: r.get("event") == "connection"
                               and r.get("conn_id") == 4)
            records = sorted(forked.connections(), key=lambda r: r["conn_id"])
            assert [r["outcome"] for r in records[1:]] == ["ok"] * 3, records
    finally:
        child = forked.pid
        code = forked.stop_forked()
        backend.server.server_close()
    assert code == 0, forked.log_tail()  # SIGTERM: a clean stop
    assert "stopped" in event_names(forked)
    wait_until(lambda: not session_processes(child), 2, "the forked supervisor's jails gone")


BURST = 30  # violations within a second: three times the audit log's 10 per 5 s
# Payloads and the call each makes, in words (the rogue worker's, tests/native/rogue.c).
BURST_CALLS = [
    ("tcp_connect", ["127.0.0.1", 9], "socket(AF_INET, SOCK_STREAM, 0)"),
    ("udp_send", ["127.0.0.1", 9], "socket(AF_INET, SOCK_DGRAM, 0)"),
    ("unshare_user", [], "unshare(CLONE_NEWUSER)"),
]


def test_a_burst_of_worker_violations_is_all_named_and_leaks_no_fd(tmp_path, pki):
    """30 workers make a forbidden call within a second: every record names its call
    with the arguments (the kernel's audit log, rate-limited, would drop most names),
    every worker is replaced, and the supervisor holds no more fds afterwards than
    before (each worker's listener closed once it is gone)."""
    backend = HTTPBackend("A")
    forked = ForkedTitus(tmp_path, conf(pki, backend.port, f"""
min-spare-children {BURST}
max-children {BURST + 8}
"""), "tests.native:setup")
    try:
        forked.start_forked()
        with backend:
            addr = ("127.0.0.1", forked.addresses[0][1])
            sup = forked.pid

            def idle_pool() -> dict[int, str] | None:
                """The supervisor's fds once exactly BURST idle workers (and the key
                holder) are its jails, each worker's listener among its fds."""
                fds = open_fds(sup)
                listeners = [t for t in fds.values() if "seccomp" in t]
                jails = [p for p in forked.worker_pids() if is_running(p)]
                if len(jails) == BURST + 1 and len(listeners) == BURST:
                    return fds
                return None

            before = wait_until(idle_pool, 60, f"{BURST} idle workers")
            attackers = [attack(addr, *BURST_CALLS[i % len(BURST_CALLS)][:2])
                         for i in range(BURST)]
            start = time.monotonic()
            for attacker, go in attackers:
                attacker.sendall(go)
            took = time.monotonic() - start
            for attacker, _ in attackers:
                with attacker:
                    assert attacker.recv(100) == b""  # each worker killed at its call
            assert took < 1.0, f"the burst took {took:.2f}s"
            forked.wait_forked(lambda _r: len(forked.connections()) >= BURST, 30)
            records = sorted(forked.connections(), key=lambda r: r["conn_id"])
            assert len(records) == BURST
            for i, record in enumerate(records):
                payload, _, words = BURST_CALLS[i % len(BURST_CALLS)]
                assert record["outcome"] == "policy-violation", record
                assert record["syscall"] == words.split("(")[0], (payload, record)
                assert record["violation"].startswith(f"seccomp violation: {words} (#"), record
                assert record["worker_exit"] == SIGKILL_EXIT, record

            after = wait_until(idle_pool, 60, "the pool refilled")
            grown = {fd: t for fd, t in after.items() if fd not in before}
            assert len(after) <= len(before), f"fds left after the burst: {grown}"

            ctx = client_context(pki)  # and real TLS clients are served again
            for _ in range(2):
                assert get(ctx, addr).endswith(b"backend A path /fault\n")
    finally:
        forked.stop_forked()
        backend.server.server_close()


# -- 5. the supervisor killed -----------------------------------------------------------


def test_supervisor_sigkill_leaves_no_jail_and_frees_the_port(tmp_path, pki):
    with EchoBackend() as backend:
        titus = Titus(tmp_path, conf(pki, backend.port, """
min-spare-children 3
max-children 8
""")).start()
        try:
            assert titus.proc is not None
            port, sid = titus.port, titus.proc.pid
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            with ctx_wrap(pki, raw) as tls:
                assert _echo_exchange(tls, b"x" * 1000) == b"x" * 1000  # one busy worker
                wait_until(lambda: len(jailed_children(titus)) >= 1 + 1 + 3, 10,
                           "key holder, busy worker and 3 spares")
                jails = jailed_children(titus)
                assert set(jails) <= set(session_processes(sid))

                os.kill(titus.proc.pid, signal.SIGKILL)
                titus.proc.wait(5)
                wait_until(lambda: not any(is_running(p) for p in jails)
                           and not session_processes(sid), 2.0,
                           f"every jail of the killed supervisor gone (left: "
                           f"{[p for p in jails if is_running(p)]})")
                assert closed_by_peer(tls, 2.0) is not None  # its worker died with it
        finally:
            titus.stop()
        with socket.socket() as again:  # nobody holds the listening socket any more
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", port))
            again.listen()


def ctx_wrap(pki: PKI, raw: socket.socket) -> ssl.SSLSocket:
    return client_context(pki).wrap_socket(raw, server_hostname=SNI)


# -- 6. SIGTERM drains ------------------------------------------------------------------


def test_sigterm_stops_accepting_and_drains(tmp_path, pki):
    with EchoBackend() as backend:
        titus = Titus(tmp_path, conf(pki, backend.port, """
min-spare-children 2
max-children 8
""")).start()
        try:
            assert titus.proc is not None
            addr, sid = ("127.0.0.1", titus.port), titus.proc.pid
            with ctx_wrap(pki, socket.create_connection(addr, timeout=5)) as tls:
                first = os.urandom(65536)
                assert _echo_exchange(tls, first) == first

                titus.proc.send_signal(signal.SIGTERM)
                titus.wait_event(lambda r: r.get("event") == "stopping", 5)
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(addr, timeout=2).close()
                time.sleep(0.3)
                assert titus.proc.poll() is None, "titus left before its connection ended"

                rest = os.urandom(256 * 1024)
                assert _echo_exchange(tls, rest) == rest  # the connection in flight completes
                tls.unwrap()
            assert titus.proc.wait(10) == 0
        finally:
            titus.stop()
        record = titus.wait_connections(1)[0]
        assert record["outcome"] == "ok" and record["bytes_in"] == 65536 + 256 * 1024
        names = event_names(titus)
        assert names.index("stopping") < names.index("connection") < names.index("stopped")
        wait_until(lambda: not session_processes(sid), 2, "nothing of titus left")


# -- 7. configuration errors --------------------------------------------------------------


def _line_of(text: str, start: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(start))


CONFIG_ERRORS = {
    # name: (config text, the line the message must name, extra args)
    "unknown-option": ("listen 127.0.0.1:0\nfrobnicate yes\n{base}", "frobnicate", ()),
    "bad-port": ("port 70000\n{base}", "port", ()),
    "missing-cert": ("listen 127.0.0.1:0\n{base_nocert}cert {tmp}/no-such.crt\n", "cert", ()),
    "key-cert-mismatch-check": ("listen 127.0.0.1:0\n{base_mismatch}", "key", ("--check",)),
    "key-cert-mismatch-start": ("listen 127.0.0.1:0\n{base_mismatch}", "key", ()),
    "port-in-use": ("listen 127.0.0.1:{busy}\n{base}", "listen", ()),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_error(tmp_path, pki, case):
    text, line_start, args = CONFIG_ERRORS[case]
    base_nocert = f"key {pki.leaf.key}\nbackend 127.0.0.1\nbackend-port 9\n"
    with socket.create_server(("127.0.0.1", 0)) as busy:
        config = tmp_path / "titus.conf"
        config.write_text(text.format(
            base=base_nocert + f"cert {pki.leaf.cert}\n", base_nocert=base_nocert,
            base_mismatch=f"key {pki.other.key}\ncert {pki.leaf.cert}\n"
                          "backend 127.0.0.1\nbackend-port 9\n",
            tmp=tmp_path, busy=busy.getsockname()[1]))
        code, out, err = run_cli(config, *args)
    line = _line_of(config.read_text(), line_start)
    assert code != 0, (out, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("titus: ")
    assert f"{config}:{line}:" in lines[0] or f"({config}:{line})" in lines[0], \
        f"the message does not name {config.name} line {line}: {lines[0]}"
