"""The C worker (titus.worker._worker) in a forked child, with this process as its supervisor.

`serve_one` forks at once (before any client thread runs OpenSSL, so the child
inherits no lock held by another thread); the child puts its control socket
on fd 0 and its key-holder channel on fd 1 and enters the C connection path,
which never returns.  A thread of the test plays the supervisor: it accepts
the client on a loopback listener, hands the socket over with a Connection
message, answers HandshakeDone with one end of a socketpair as the backend
(`backend` runs on the other end: echo by default), and collects Finished.

`Tap` stands between the worker and its key holder: it forwards requests and
answers and records the operations, or answers by itself (`answer`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sandbox.bpf import load_bpf, prepare_bpf
from titus.config.model import VHost
from titus.wire import control, keyproto
from titus.worker import _worker
from titus.worker.connection import build_table

WAIT = 15.0  # seconds: the bound of every wait here


def worker_filter() -> bytes:
    """The seccomp program of policies/titus-worker.toml, the real workers' filter."""
    from sandbox.profile import load_profile

    program = load_profile("titus-worker").spec.seccomp_bpf
    assert program is not None
    return program


def one_vhost_table(ctx: ssl.SSLContext, keyholder_timeout: float = 2.0,
                    handshake_timeout: float = 10.0) -> _worker.Table:
    """A table of one vhost that matches every connection."""
    vhost = VHost("test", cert=None, key=None, backend_host=None, backend_port=None)  # type: ignore[arg-type]
    return build_table([vhost], [ctx], handshake_timeout, keyholder_timeout)


def echo_backend(sock: socket.socket) -> None:
    """Echo everything; on EOF from the worker, half-close and finish."""
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


class Tap:
    """A key-holder channel seen through: `ops` records (op, key id) of every request."""

    def __init__(self, upstream: socket.socket | None,
                 answer: Callable[[keyproto.Request], bytes] | None = None) -> None:
        self.upstream = upstream  # the real key holder's channel, or None
        self.answer = answer
        self.ops: list[tuple[str, int]] = []
        self.worker_end, self._ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._stop_r, self._stop_w = os.pipe()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        fds = [self._ours.fileno(), self._stop_r]
        if self.upstream is not None:
            fds.append(self.upstream.fileno())
        try:
            while True:
                ready, _, _ = select.select(fds, [], [], WAIT)
                if not ready or self._stop_r in ready:
                    return
                if self._ours.fileno() in ready:
                    packet = self._ours.recv(keyproto.MAX_REQUEST + 1)
                    if not packet:
                        return
                    with contextlib.suppress(keyproto.ProtocolError):
                        req = keyproto.decode_request_packet(packet)
                        self.ops.append((req.op.name, req.key_id))
                        if self.answer is not None:
                            self._ours.send(self.answer(req))
                            continue
                    if self.upstream is not None:
                        self.upstream.send(packet)
                if self.upstream is not None and self.upstream.fileno() in ready:
                    packet = self.upstream.recv(keyproto.MAX_RESPONSE + 1)
                    if not packet:
                        return  # the key holder closed: so does the worker's channel
                    self._ours.send(packet)
        except OSError:
            return
        finally:
            self._ours.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        self.thread.join(WAIT)
        os.close(self._stop_r)
        os.close(self._stop_w)
        self.worker_end.close()


@dataclass
class Served:
    """What the supervisor's side saw of one connection."""

    pid: int = 0
    thread: threading.Thread | None = None
    handshake: control.HandshakeDone | None = None
    finished: control.Finished | None = None
    exit_status: int | None = None
    seconds: float | None = None  # connection handed over -> Finished
    errors: list[str] = field(default_factory=list)
    tap: Tap | None = None

    def join(self) -> Served:
        assert self.thread is not None
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the worker's supervisor side hung"
        assert not self.errors, self.errors
        return self

    @property
    def ok(self) -> bool:
        return self.finished is not None and self.finished.outcome == "ok"

    @property
    def ops(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op, _key in self.tap.ops if self.tap else ():
            out[op] = out.get(op, 0) + 1
        return out


def _set_no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS, 1): what a seccomp filter needs without CAP_SYS_ADMIN."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")


def fork_worker(table: _worker.Table, channel: socket.socket | None,
                seccomp: bytes | None = None) -> tuple[int, socket.socket]:
    """A child running the C worker on `table`: fd 0 control, fd 1 `channel` (or nothing).

    With `seccomp` (a BPF program, e.g. the worker profile's) the child loads it right
    before it enters the worker, as the jail does last: from then on only C runs."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    entry = table.entry
    if seccomp is not None:
        prepare_bpf(seccomp)  # built here: the child only calls prctl
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends in the C worker's _exit
        try:
            os.dup2(theirs.fileno(), 0)
            if channel is not None:
                os.dup2(channel.fileno(), 1)
            else:
                os.close(1)
            if seccomp is not None:
                _set_no_new_privs()
                load_bpf(seccomp)
            _worker.run(entry)
        finally:
            os._exit(99)
    theirs.close()
    return pid, ours


class Worker:
    """Serves one connection at a time on a loopback listener, each in a new C worker."""

    def __init__(self, host: str = "127.0.0.1", seccomp: bytes | None = None) -> None:
        self.seccomp = seccomp  # every worker runs under this filter (see fork_worker)
        self.listener = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host
                                             else socket.AF_INET)
        self.listener.settimeout(WAIT)
        self.port = self.listener.getsockname()[1]

    def close(self) -> None:
        self.listener.close()

    def serve_one(self, table: _worker.Table | ssl.SSLContext, channel: socket.socket | None,
                  keyholder_timeout: float = 2.0, tap: Tap | None = None,
                  backend: Callable[[socket.socket], None] | None = echo_backend,
                  before_backend: Callable[[Served], None] | None = None,
                  backend_failed: str | None = None) -> Served:
        if isinstance(table, ssl.SSLContext):
            table = one_vhost_table(table, keyholder_timeout)
        served = Served(tap=tap)
        served.pid, ctl = fork_worker(table, tap.worker_end if tap else channel, self.seccomp)
        served.thread = threading.Thread(
            target=self._supervise, args=(served, ctl, backend, before_backend, backend_failed),
            daemon=True)
        served.thread.start()
        return served

    def _supervise(self, served: Served, ctl: socket.socket,
                   backend: Callable[[socket.socket], None] | None,
                   before_backend: Callable[[Served], None] | None,
                   backend_failed: str | None) -> None:
        backend_thread = None
        try:
            try:
                conn, _ = self.listener.accept()
            except OSError as e:
                served.errors.append(f"accept: {e}")
                os.kill(served.pid, signal.SIGKILL)
                return
            local = conn.getsockname()[:2]
            socket.send_fds(ctl, [control.encode(control.Connection(local))], [conn.fileno()])
            conn.close()
            start = time.monotonic()
            ctl.settimeout(WAIT)
            while True:
                try:
                    packet = ctl.recv(control.MAX_PACKET + 1)
                except (TimeoutError, OSError) as e:
                    served.errors.append(f"control: {e}")
                    break
                if not packet:
                    break
                msg = control.decode_from_worker(packet)
                if isinstance(msg, control.HandshakeDone):
                    served.handshake = msg
                    if before_backend is not None:
                        before_backend(served)
                    if backend_failed is not None or backend is None:
                        ctl.send(control.encode(control.BackendFailed(backend_failed or "none")))
                        continue
                    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                    socket.send_fds(ctl, [control.encode(control.BackendReady())],
                                    [theirs.fileno()])
                    theirs.close()
                    backend_thread = threading.Thread(target=_run_backend,
                                                      args=(backend, ours), daemon=True)
                    backend_thread.start()
                else:
                    served.finished = msg
                    served.seconds = time.monotonic() - start
        finally:
            ctl.close()
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                pid, status = os.waitpid(served.pid, os.WNOHANG)
                if pid:
                    served.exit_status = os.waitstatus_to_exitcode(status)
                    break
                time.sleep(0.005)
            else:
                os.kill(served.pid, signal.SIGKILL)
                os.waitpid(served.pid, 0)
                served.errors.append("the worker did not exit")
            if backend_thread is not None:
                backend_thread.join(WAIT)
            if served.tap is not None:
                served.tap.close()


def _run_backend(backend: Callable[[socket.socket], None], sock: socket.socket) -> None:
    with sock:
        backend(sock)
