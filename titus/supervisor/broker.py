"""The backend broker: the supervisor connects the backend for a worker.

Workers have no network at all; the broker makes the connection (with a
timeout, trying each resolved address in turn, optionally from the client's
own address in transparent mode) and the connected socket is passed to the
worker.  Anything the backend must be told about the client (PROXY
protocol) is written here, so a worker cannot forge it.
"""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Callable, Sequence

from titus.supervisor.loop import Loop, Timer
from titus.supervisor.transparent import bind_as_client

SockAddr = tuple  # (host, port) or (host, port, flowinfo, scope_id)


class BackendConnect:
    """One non-blocking connection attempt over a list of addresses.

    `done(sock, None)` on success, `done(None, reason)` after every address
    failed or the time ran out.  The header (e.g. PROXY protocol) is sent
    before `done` is called.  With `source` (the client's address, transparent
    mode) every attempt binds it first, so the backend sees the client.
    """

    def __init__(self, loop: Loop, addresses: Sequence[tuple[int, SockAddr]], timeout: float,
                 done: Callable[[socket.socket | None, str | None], None],
                 header: bytes = b"", source: SockAddr | None = None,
                 start: bool = True) -> None:
        self.loop = loop
        self.addresses = list(addresses)
        self.timeout = timeout
        # Let go of once finished or cancelled: the callback holds the worker that holds
        # this broker, a cycle only the cyclic collector would free (loop.Timer's reason).
        self.done: Callable[[socket.socket | None, str | None], None] | None = done
        self.header = header
        self.source = source
        self.sock: socket.socket | None = None
        self.local: tuple | None = None  # the connected socket's addresses, once connected
        self.peer: tuple | None = None
        self.timer: Timer | None = None
        self.errors: list[str] = []
        self.finished = False
        if start:
            self.start()

    def start(self) -> None:
        """Connect (`done` may be called before this returns: a backend on this host)."""
        self._next()

    def _next(self) -> None:
        while self.addresses:
            family, addr = self.addresses.pop(0)
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as e:
                self.errors.append(f"{addr[0]}: {e.strerror}")
                continue
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.source is not None:
                    bind_as_client(sock, self.source)
                err = sock.connect_ex(addr)
            except OSError as e:
                sock.close()
                self.errors.append(f"{addr[0]}: {e.strerror}")
                continue
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                self.errors.append(f"{addr[0]}:{addr[1]}: {errno.errorcode.get(err, err)}")
                continue
            self.sock = sock
            self.target = addr
            if err == 0 or _writable_now(sock):
                # Typical of a backend on this host: connected already (a refusal shows
                # as writable too, with SO_ERROR set): no loop round, no timer.
                self._writable()
                return
            self.timer = self.loop.call_later(self.timeout, self._timed_out)
            self.loop.add_writer(sock.fileno(), self._writable)
            return
        self._finish(None, "; ".join(self.errors) or "no backend address")

    def _drop_current(self, reason: str) -> None:
        assert self.sock is not None
        self.loop.forget(self.sock.fileno())
        self.sock.close()
        self.sock = None
        if self.timer:
            self.timer.cancel()
            self.timer = None
        self.errors.append(reason)

    def _timed_out(self) -> None:
        if self.sock is not None and not self.finished:
            self._drop_current(f"{self.target[0]}:{self.target[1]}: timed out")
            self._next()

    def _writable(self) -> None:
        assert self.sock is not None
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._drop_current(f"{self.target[0]}:{self.target[1]}: {errno.errorcode.get(err)}")
            self._next()
            return
        try:
            self.local, self.peer = self.sock.getsockname(), self.sock.getpeername()
            myself = self.local == self.peer
        except OSError:
            myself = True
        if myself:
            # Nothing listened on the backend's port and the kernel picked that very port
            # for us: TCP "simultaneous open" connected the socket to itself, and the
            # worker would get its client's bytes echoed back.  That is a refusal.
            self._drop_current(f"{self.target[0]}:{self.target[1]}: ECONNREFUSED (connected "
                               "to itself: nothing listens there)")
            self._next()
            return
        sock = self.sock
        if self.timer:  # else it never was registered
            self.loop.forget(sock.fileno())
            self.timer.cancel()
        if self.header:
            try:
                sock.setblocking(True)
                sock.settimeout(self.timeout)
                sock.sendall(self.header)
            except OSError as e:
                sock.close()
                self._finish(None, f"sending the PROXY header: {e}")
                return
        self.sock = None
        self._finish(sock, None)

    def cancel(self) -> None:
        if self.sock is not None:
            self._drop_current("cancelled")
        self.finished = True
        self.done = None

    def _finish(self, sock: socket.socket | None, reason: str | None) -> None:
        done, self.done = self.done, None
        if self.finished or done is None:
            if sock:
                sock.close()
            return
        self.finished = True
        done(sock, reason)


def _writable_now(sock: socket.socket) -> bool:
    """Whether a connect in progress has already finished (one poll, no waiting)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    return bool(poller.poll(0))
