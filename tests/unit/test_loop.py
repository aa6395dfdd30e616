"""titus/supervisor/loop.py: events of a closed fd never reach the socket that took its number."""

from __future__ import annotations

import selectors
import socket

from titus.supervisor.loop import Loop


def test_an_event_of_a_closed_fd_does_not_reach_its_successor() -> None:
    """One select() round reports two fds; the first callback closes the second and a
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
    keys = {k.fd: k for k in loop._selector.get_map().values()}
    rounds = [[(keys[a.fileno()], selectors.EVENT_READ),
               (keys[old.fileno()], selectors.EVENT_WRITE | selectors.EVENT_READ)]]
    real_select = loop._selector.select
    loop._selector.select = lambda timeout=None: rounds.pop(0) if rounds else real_select(0)
    try:
        loop.run_once(0)
        assert calls == ["first"], calls
        loop.run_once(0)  # the new socket's own readiness comes in the next round
        assert calls == ["first", "new writer"], calls
    finally:
        for s in (a, b, peer, *replacement):
            s.close()
        loop.close()
