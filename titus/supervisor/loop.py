"""A small single-threaded event loop: readers, writers, timers and signals.

The supervisor forks jails from this loop thousands of times a second, so it
stays explicit and tiny (epoll + a timer heap), with no threads and no
state a forked child could trip over.  It talks to epoll directly: the
selectors module's bookkeeping cost more than the rest of an event.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import select
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Any

Callback = Callable[[], Any]


class Timer:
    """A callback due at `when`.  Once cancelled or run it lets go of the callback: a
    callback often holds what holds its timer (a worker and its handshake deadline),
    and that cycle would otherwise wait for the cyclic garbage collector, every
    connection's objects with it (measured: the supervisor's RSS +6 MB over 10,000
    connections, freed only by a rare full collection)."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback: Callback | None = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.callback = None


_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR  # as selectors counts them
_WRITABLE = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR


class _Registration:
    """One fd's callbacks; a new object per registration, so an event for an fd that
    was closed and reused within one round is told apart from the new socket's."""

    __slots__ = ("reader", "writer")

    def __init__(self, reader: Callback | None, writer: Callback | None) -> None:
        self.reader = reader
        self.writer = writer


class Loop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._regs: dict[int, _Registration] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._in_order: dict[float, deque[Timer]] = {}  # call_later_in_order, by delay
        self._seq = itertools.count()
        self._soon: list[Callback] = []
        self._signal_handlers: dict[int, Callback] = {}
        self._previous_handlers: dict[int, Any] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.add_reader(self._wake_r, self._on_signal)
        self.running = False

    # -- registration ----------------------------------------------------------------

    def _update(self, fd: int, reader: Callback | bool | None, writer: Callback | bool | None
                ) -> None:
        reg = self._regs.get(fd)
        old_r, old_w = (reg.reader, reg.writer) if reg is not None else (None, None)
        r = old_r if reader is False else reader
        w = old_w if writer is False else writer
        events = (_IN if r else 0) | (_OUT if w else 0)
        if reg is None:
            if events:
                self._epoll.register(fd, events)
                self._regs[fd] = _Registration(r, w)  # type: ignore[arg-type]
        elif events:
            if bool(old_r) != bool(r) or bool(old_w) != bool(w):
                self._epoll.modify(fd, events)
            reg.reader, reg.writer = r, w  # type: ignore[assignment]
        else:
            del self._regs[fd]
            with contextlib.suppress(OSError):  # already closed: the kernel forgot it
                self._epoll.unregister(fd)

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._update(fd, callback, False)

    def remove_reader(self, fd: int) -> None:
        self._update(fd, None, False)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._update(fd, False, callback)

    def remove_writer(self, fd: int) -> None:
        self._update(fd, False, None)

    def forget(self, fd: int) -> None:
        if self._regs.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def call_later(self, delay: float, callback: Callback) -> Timer:
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def call_later_in_order(self, delay: float, callback: Callback) -> Timer:
        """call_later for the many timers of one fixed delay (a deadline per connection):
        they fall due in the order they were made, so a queue per delay holds them, each
        added and taken in O(1), where the heap of thousands (cancelled ones wait there
        until due) cost a dozen cold comparisons a push and twice that a pop."""
        timer = Timer(time.monotonic() + delay, callback)
        queue = self._in_order.get(delay)
        if queue is None:
            queue = self._in_order[delay] = deque()
        queue.append(timer)
        return timer

    def call_soon(self, callback: Callback) -> None:
        self._soon.append(callback)

    def add_signal_handler(self, sig: int, callback: Callback) -> None:
        self._signal_handlers[sig] = callback
        previous = signal.signal(sig, lambda *_: None)
        self._previous_handlers.setdefault(sig, previous)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.siginterrupt(sig, False)

    def _on_signal(self) -> None:
        try:
            data = os.read(self._wake_r, 512)
        except BlockingIOError:
            return
        for sig in dict.fromkeys(data):
            handler = self._signal_handlers.get(sig)
            if handler:
                handler()

    # -- running ---------------------------------------------------------------------

    def stop(self) -> None:
        self.running = False

    def run(self) -> None:
        self.running = True
        while self.running:
            self.run_once()

    def run_once(self, max_wait: float = 1.0) -> None:
        timeout = max_wait
        if self._soon:
            timeout = 0
        else:
            head = self._next_live_timer()
            if head is not None:
                timeout = min(timeout, max(0.0, head - time.monotonic()))
        try:
            ready = self._epoll.poll(timeout)
        except InterruptedError:
            ready = []
        regs = self._regs
        # Each event with the registration it was for: an earlier callback of this round
        # may close that fd and a new socket may get its number; the event was the old
        # one's, so it goes to nobody (epoll is level-triggered: a real one comes back).
        for fd, mask, reg in [(fd, mask, regs.get(fd)) for fd, mask in ready]:
            if reg is None or regs.get(fd) is not reg:
                continue
            if mask & _READABLE and reg.reader:
                reg.reader()
            if mask & _WRITABLE and reg.writer and regs.get(fd) is reg:
                reg.writer()  # unless the reader changed or dropped the registration
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            self._run(heapq.heappop(self._timers)[2])
        for delay, queue in list(self._in_order.items()):
            while queue and queue[0].when <= now:
                self._run(queue.popleft())
            if not queue:
                del self._in_order[delay]  # a delay a reload left behind goes with it
        soon, self._soon = self._soon, []
        for callback in soon:
            callback()

    def _next_live_timer(self) -> float | None:
        """When the first timer still wanted falls due.  The cancelled ones ahead of it
        are dropped here, so that they never wake the loop: after a burst, each
        connection's handshake deadline and spawn timeout (cancelled long before) would
        otherwise wake it once each, 10 to 15 s later, hundreds of times a second, on
        the core the workers need (measured: 534 empty wake-ups in 1.5 s)."""
        heads = []
        for delay, queue in list(self._in_order.items()):
            while queue and queue[0].cancelled:
                queue.popleft()
            if queue:
                heads.append(queue[0].when)
            else:
                del self._in_order[delay]  # a delay a reload left behind goes with it
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        if timers:
            heads.append(timers[0][0])
        return min(heads) if heads else None

    @staticmethod
    def _run(timer: Timer) -> None:
        callback = timer.callback
        if not timer.cancelled and callback is not None:
            timer.cancel()  # run once: nothing keeps what the callback holds
            callback()

    def close(self) -> None:
        if self._signal_handlers:
            signal.set_wakeup_fd(-1)
            for sig, previous in self._previous_handlers.items():
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            self._signal_handlers.clear()
        self._regs.clear()
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
