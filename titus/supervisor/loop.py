"""A small single-threaded event loop: readers, writers, timers and signals.

The supervisor forks jails from this loop thousands of times a second, so it
stays explicit and tiny (selectors + a timer heap), with no threads and no
state a forked child could trip over.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any

Callback = Callable[[], Any]


class Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._soon: list[Callback] = []
        self._signal_handlers: dict[int, Callback] = {}
        self._previous_handlers: dict[int, Any] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, (self._on_signal, None))
        self.running = False

    # -- registration ----------------------------------------------------------------

    def _update(self, fd: int, reader: Callback | bool | None, writer: Callback | bool | None
                ) -> None:
        try:
            key = self._selector.get_key(fd)
            old_r, old_w = key.data
        except KeyError:
            key, old_r, old_w = None, None, None
        r = old_r if reader is False else reader
        w = old_w if writer is False else writer
        events = (selectors.EVENT_READ if r else 0) | (selectors.EVENT_WRITE if w else 0)
        if key is None:
            if events:
                self._selector.register(fd, events, (r, w))
        elif events:
            self._selector.modify(fd, events, (r, w))
        else:
            self._selector.unregister(fd)

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._update(fd, callback, False)

    def remove_reader(self, fd: int) -> None:
        self._update(fd, None, False)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._update(fd, False, callback)

    def remove_writer(self, fd: int) -> None:
        self._update(fd, False, None)

    def forget(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    def call_later(self, delay: float, callback: Callback) -> Timer:
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
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
        elif self._timers:
            timeout = min(timeout, max(0.0, self._timers[0][0] - time.monotonic()))
        for key, mask in self._selector.select(timeout):
            # An earlier callback of this round may have closed this fd and a new
            # socket may have its number now: the event was the old one's, so it goes
            # to nobody (the selector is level-triggered: a real one comes back).
            if self._current(key) is not key:
                continue
            reader, writer = key.data
            if mask & selectors.EVENT_READ and reader:
                reader()
            if mask & selectors.EVENT_WRITE and writer and self._current(key) is key:
                writer()  # unless the reader changed or dropped the registration
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()
        soon, self._soon = self._soon, []
        for callback in soon:
            callback()

    def _current(self, key: selectors.SelectorKey) -> selectors.SelectorKey | None:
        try:
            return self._selector.get_key(key.fd)
        except KeyError:
            return None

    def close(self) -> None:
        if self._signal_handlers:
            signal.set_wakeup_fd(-1)
            for sig, previous in self._previous_handlers.items():
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            self._signal_handlers.clear()
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
