"""Backend names re-resolved in the background, every `dns-refresh` seconds.

A connection never waits for DNS: the broker connects to the addresses the
generation holds.  This refreshes them off the connection path: each name is
looked up in threads of its own (A and AAAA apart, as at start-up: see
resolve.py), and the answer reaches the event loop through a pipe, which
applies it (resolve.refreshed: a family that does not answer keeps its
addresses; a name with no address left keeps the old list).  A change is
logged with both lists; failures are logged when they start and when they end,
not every round.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

from titus import logs
from titus.supervisor.loop import Loop
from titus.supervisor.resolve import Sockaddr, is_name, lookup_families, refreshed

Lookups = Callable[[str, int, float], list[Any]]


def _shown(addresses: list[tuple[int, Sockaddr]]) -> list[str]:
    return [logs.endpoint(addr) for _family, addr in addresses]


class BackendRefresh:
    """Rounds of lookups for the generation `current()` returns; `counter(result)` counts
    each answer ("changed", "unchanged", "failed")."""

    def __init__(self, loop: Loop, current: Callable[[], Any],
                 counter: Callable[[str], None] = lambda result: None,
                 lookups: Lookups = lookup_families) -> None:
        self.loop, self.current, self.counter, self.lookups = loop, current, counter, lookups
        self.results: queue.SimpleQueue[tuple[Any, int, list[Any]]] = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.loop.add_reader(self.wake_r, self.apply)
        self.in_flight: set[tuple[int, int]] = set()  # (id of the generation, vhost index)
        self.failing: set[tuple[str, int]] = set()  # names whose last refresh failed
        self.timer = None
        self.closed = False

    def start(self) -> None:
        self.timer = self.loop.call_later(self.current().config.dns_refresh, self.round)

    def round(self) -> None:
        """Ask again for every backend name of the current generation not still asked."""
        if self.closed:
            return
        gen = self.current()
        config = gen.config
        for index, vhost in enumerate(config.vhosts):
            host = vhost.backend_host
            key = (id(gen), index)
            if host is None or config.transparent == "yes" or not is_name(host) \
                    or key in self.in_flight:
                continue
            self.in_flight.add(key)
            threading.Thread(target=self.ask, name=f"dns-refresh-{host}", daemon=True,
                             args=(gen, index, host, vhost.backend_port or 0,
                                   config.dns_timeout)).start()
        self.timer = self.loop.call_later(config.dns_refresh, self.round)

    def ask(self, gen: Any, index: int, host: str, port: int, timeout: float) -> None:
        """In a thread of its own: the lookups, then a byte to wake the loop."""
        try:
            found = self.lookups(host, port, timeout)
        except Exception:  # reported as "no answer": never raised in a thread
            found = []
        self.results.put((gen, index, found))
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"\0")

    def apply(self) -> None:
        """In the loop: take every answer that arrived."""
        with contextlib.suppress(OSError):
            os.read(self.wake_r, 4096)
        while True:
            try:
                gen, index, found = self.results.get_nowait()
            except queue.Empty:
                return
            self.in_flight.discard((id(gen), index))
            if gen is self.current() and not self.closed:
                self.update(gen, index, found)

    def update(self, gen: Any, index: int, found: list[Any]) -> None:
        vhost = gen.config.vhosts[index]
        before = gen.backends.get(index, [])
        addresses, what = refreshed([addr for _family, addr in before], found)
        name = (vhost.backend_host, vhost.backend_port or 0)
        if what in ("changed", "unchanged"):
            self.counter(what)
            if name in self.failing:
                self.failing.discard(name)
                logs.event("backend-refresh-recovered", vhost=vhost.name,
                           backend=vhost.backend_host)
            if what == "changed":
                after = [(_family_of(addr), addr) for addr in addresses]
                gen.backends[index] = after
                logs.event("backend-addresses-changed", vhost=vhost.name,
                           backend=vhost.backend_host, before=_shown(before),
                           after=_shown(after))
            return
        self.counter("failed")
        if name not in self.failing:
            self.failing.add(name)
            logs.event("backend-refresh-failed", logging.WARNING, vhost=vhost.name,
                       backend=vhost.backend_host, error=what, kept=_shown(before))

    def close(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        self.loop.forget(self.wake_r)
        os.close(self.wake_r)
        os.close(self.wake_w)


def _family_of(addr: Sockaddr) -> int:
    return socket.AF_INET6 if len(addr) == 4 else socket.AF_INET
