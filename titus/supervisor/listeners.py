"""The listening sockets: opened at start-up (or taken from systemd's socket activation),
changed by a reload, paused while no worker is idle (a client then waits in the kernel's
backlog), closed at shutdown.  A readable one is accepted from by `Connections.accept`.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from titus.config.model import Config, Listener
from titus.supervisor import activation, backlog
from titus.supervisor.startup import StartupError
from titus.supervisor.transparent import set_transparent

if TYPE_CHECKING:
    from titus.supervisor import Supervisor


def bound_socket(listener: Listener, transparent: bool = False,
                 reuse_port: bool = False) -> socket.socket:
    """`listener`'s socket, bound the way titus binds it (raises OSError): for start-up
    and reloads, and for --check's probe (preflight.probe, with `reuse_port`)."""
    sock = socket.socket(listener.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if transparent:
            set_transparent(sock)
        if listener.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                            0 if listener.dual_stack else 1)
        sock.bind(listener.sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def open_listener(listener: Listener, transparent: bool = False) -> socket.socket:
    """A listening socket; `transparent` (transparent yes) lets TPROXY hand it others' addresses."""
    sock: socket.socket | None = None
    try:
        sock = bound_socket(listener, transparent)
        sock.listen(1024)
    except OSError as e:
        if sock is not None:
            sock.close()
        where = f" ({listener.source})" if listener.source else ""
        raise StartupError(f"cannot listen on {listener}{where}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


class Listeners:
    """The sockets, by the configuration's Listener, and whether accepting is paused."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.loop = sup.loop
        self.sockets: list[socket.socket] = []
        self.of: dict[Listener, socket.socket] = {}
        self.paused = False
        sup.metrics.waiting.set_function(self.waiting)

    def open(self, config: Config) -> None:
        """At start-up: every listen line's socket, bound here or passed by systemd."""
        transparent = config.transparent == "yes"
        try:  # systemd socket activation: the sockets titus.socket bound, passed in
            passed = activation.match(config.listeners, activation.passed_sockets())
        except activation.ActivationError as e:
            raise StartupError(str(e)) from None
        for sock in passed.values() if transparent else ():
            set_transparent(sock)
        self.of = {lst: passed.get(lst) or open_listener(lst, transparent)
                   for lst in config.listeners}
        self.sockets = list(self.of.values())

    def watch(self) -> None:
        """Accept from every socket when it is readable."""
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), lambda s=sock: self.sup.connections.accept(s))

    def open_new(self, config: Config, opened: dict[Listener, socket.socket]) -> None:
        """For a reload: open the listeners `config` adds into `opened` (the caller closes
        them if the reload fails), and set transparency on those it keeps."""
        for lst in config.listeners:
            if lst not in self.of:
                opened[lst] = open_listener(lst, config.transparent == "yes")
            else:
                set_transparent(self.of[lst], config.transparent == "yes")

    def switch(self, config: Config, opened: dict[Listener, socket.socket]) -> None:
        """For a reload that succeeded: close the listeners `config` dropped, serve the new."""
        for lst, sock in list(self.of.items()):
            if lst not in config.listeners:
                self.loop.forget(sock.fileno())
                sock.close()
                del self.of[lst]
        self.of.update(opened)
        self.sockets = [self.of[lst] for lst in config.listeners]
        if not self.paused:
            for sock in opened.values():
                self.loop.add_reader(sock.fileno(), lambda s=sock: self.sup.connections.accept(s))

    def close(self) -> None:
        """At shutdown: stop accepting for good."""
        for sock in self.sockets:
            self.loop.forget(sock.fileno())
            sock.close()
        self.sockets = []

    def waiting(self) -> int:
        """Connections the kernel accepted that titus has not taken yet, on every listener."""
        queues = (backlog.accept_queue(sock) for sock in self.sockets)
        return sum(q[0] for q in queues if q is not None)

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            for sock in self.sockets:
                self.loop.remove_reader(sock.fileno())

    def resume(self) -> None:
        if self.paused and not self.sup.stopping:
            self.paused = False
            self.watch()
