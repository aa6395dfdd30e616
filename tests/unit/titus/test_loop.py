"""titus/supervisor/loop.py: events of a closed fd never reach the socket that took its number."""

from __future__ import annotations

import gc
import select
import socket
import time
import weakref
from collections.abc import Callable

import pytest

from titus.supervisor.loop import Loop


def test_an_event_of_a_closed_fd_does_not_reach_its_successor() -> None:
    """One epoll round reports two fds; the first callback closes the second and a
    new socket takes its number.  The stale event must not call the new socket's
    callbacks (e.g. a backend connect still in progress taken for a finished one)."""
    loop = Loop()
    a, b = socket.socketpair()
    old, peer = socket.socketpair()
    calls: list[str] = []
    replacement: list[socket.socket] = []

    def first() -> None:
        calls.append("first")
        a.recv(1)
        loop.forget(a.fileno())
        number = old.fileno()
        loop.forget(number)
        old.close()
        new, other = socket.socketpair()
        assert new.fileno() == number  # the lowest free number: the one just closed
        replacement.extend([new, other])
        loop.add_writer(new.fileno(), lambda: calls.append("new writer"))
        loop.add_reader(new.fileno(), lambda: calls.append("new reader"))

    loop.add_reader(a.fileno(), first)
    loop.add_writer(old.fileno(), lambda: calls.append("old writer"))
    b.send(b"x")
    rounds = [[(a.fileno(), select.EPOLLIN), (old.fileno(), select.EPOLLOUT | select.EPOLLIN)]]

    class Scripted:
        """The loop's epoll, with the first round's events decided by the test."""

        def __init__(self, real: select.epoll) -> None:
            self.real = real

        def poll(self, timeout: float = -1) -> list[tuple[int, int]]:
            return rounds.pop(0) if rounds else self.real.poll(0)

        def __getattr__(self, name: str) -> object:
            return getattr(self.real, name)

    loop._epoll = Scripted(loop._epoll)  # type: ignore[assignment]
    try:
        loop.run_once(0)
        assert calls == ["first"], calls
        loop.run_once(0)  # the new socket's own readiness comes in the next round
        assert calls == ["first", "new writer"], calls
    finally:
        for s in (a, b, peer, *replacement):
            s.close()
        loop.close()


class _Holder:
    """A worker's shape: it holds its deadline, whose callback holds it."""

    timer: object = None


def _freed_without_the_cycle_collector(make_cycle: Callable[[Loop], _Holder]) -> bool:
    loop = Loop()
    gc.disable()
    try:
        ref = weakref.ref(make_cycle(loop))
        loop.run_once(0)
        return ref() is None
    finally:
        gc.enable()
        loop.close()


@pytest.mark.parametrize("how", ["call_later", "call_later_in_order"])
@pytest.mark.parametrize("end", ["cancelled", "fired"])
def test_a_timer_lets_go_of_its_callback_once_cancelled_or_run(end: str, how: str) -> None:
    """Otherwise each connection's worker, held by its handshake deadline's callback,
    is cyclic garbage: freed only by a full collection, and the supervisor's memory
    grows in between (+6 MB over the 10,000-connection soak)."""
    ran: list[bool] = []

    def make_cycle(loop: Loop) -> _Holder:
        holder = _Holder()
        holder.timer = getattr(loop, how)(0 if end == "fired" else 60,
                                          lambda: ran.append(holder is not None))
        if end == "cancelled":
            holder.timer.cancel()
        return holder

    assert _freed_without_the_cycle_collector(make_cycle)
    assert ran == ([True] if end == "fired" else [])


def test_timers_in_order_fall_due_with_the_heaps() -> None:
    """call_later_in_order's queues (one per delay) and the heap fire in time order;
    the loop sleeps no longer than the first of either; a cancelled timer never fires;
    a queue left empty goes."""
    loop = Loop()
    fired: list[str] = []
    try:
        loop.call_later(0.10, lambda: fired.append("heap 0.10"))
        loop.call_later_in_order(0.05, lambda: fired.append("queue 0.05 a"))
        cancelled = loop.call_later_in_order(0.05, lambda: fired.append("cancelled"))
        loop.call_later_in_order(0.05, lambda: fired.append("queue 0.05 b"))
        loop.call_later_in_order(0.15, lambda: fired.append("queue 0.15"))
        cancelled.cancel()
        start = time.monotonic()
        loop.run_once(5)  # wakes for the queue's first, not after 5 s
        assert 0.04 < time.monotonic() - start < 1
        assert fired == ["queue 0.05 a", "queue 0.05 b"]
        while len(fired) < 4 and time.monotonic() - start < 5:
            loop.run_once(5)
        assert fired == ["queue 0.05 a", "queue 0.05 b", "heap 0.10", "queue 0.15"]
        assert loop._in_order == {}
    finally:
        loop.close()


@pytest.mark.parametrize("how", ["call_later", "call_later_in_order"])
def test_cancelled_timers_do_not_wake_the_loop(how: str) -> None:
    """After a burst, every connection's handshake deadline and spawn timeout has been
    cancelled but would still fall due 10-15 s later: the loop must sleep through them
    to the first live timer, not wake once for each on the workers' core."""
    loop = Loop()
    wakes = 0
    fired: list[str] = []

    class Counting:
        """The loop's epoll, counting the times the loop goes to sleep in it."""

        def __init__(self, real: select.epoll) -> None:
            self.real = real

        def poll(self, timeout: float = -1) -> list[tuple[int, int]]:
            nonlocal wakes
            wakes += 1
            return self.real.poll(timeout)

        def __getattr__(self, name: str) -> object:
            return getattr(self.real, name)

    loop._epoll = Counting(loop._epoll)  # type: ignore[assignment]
    try:
        add = getattr(loop, how)
        stale = [add(0.01 + i * 0.002, lambda: fired.append("cancelled")) for i in range(20)]
        for timer in stale:
            timer.cancel()
        add(0.1, lambda: fired.append("live"))
        start = time.monotonic()
        while not fired and time.monotonic() - start < 5:
            loop.run_once(5)
        assert fired == ["live"]
        assert wakes == 1, f"{wakes} sleeps for one live timer behind 20 cancelled ones"
    finally:
        loop.close()
