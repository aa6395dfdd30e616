"""Backend names re-resolved in the background (dns-refresh): family by family, never
blocking the event loop, a change and a failure each logged once."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from titus import logs
from titus.supervisor.dnsrefresh import BackendRefresh
from titus.supervisor.loop import Loop
from titus.supervisor.resolve import refreshed

V6 = ("2001:db8::1", 80, 0, 0)
V4 = ("192.0.2.1", 80)
V4B = ("192.0.2.2", 80)


@dataclass
class Answer:
    """What resolve._Lookup leaves behind."""

    family: int
    addresses: list[Any] = field(default_factory=list)
    finished: bool = True
    error: BaseException | None = None

    def describe(self) -> str:
        name = "IPv6" if self.family == socket.AF_INET6 else "IPv4"
        return f"{name}: {'timed out' if not self.finished else self.error or 'no address'}"


def six(*addresses: Any, **kw: Any) -> Answer:
    return Answer(socket.AF_INET6, list(addresses), **kw)


def four(*addresses: Any, **kw: Any) -> Answer:
    return Answer(socket.AF_INET, list(addresses), **kw)


NONAME = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
AGAIN = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


@pytest.mark.parametrize(("answers", "expected", "what"), [
    ([six(V6), four(V4B)], [V6, V4B], "changed"),
    ([six(V6), four(V4)], [V6, V4], "unchanged"),
    ([six(finished=False), four(V4B)], [V6, V4B], "changed"),  # AAAA stalled: v6 kept
    ([six(error=AGAIN), four(V4B)], [V6, V4B], "changed"),  # a temporary failure: kept
    ([six(error=NONAME), four(V4B)], [V4B], "changed"),  # no AAAA any more: v6 dropped
    ([six(error=NONAME), four(error=NONAME)], [V6, V4], "IPv6: "),  # never empty
    ([six(finished=False), four(finished=False)], [V6, V4], "IPv6: timed out"),
])
def test_refreshed_family_by_family(answers: list[Answer], expected: list[Any],
                                    what: str) -> None:
    addresses, result = refreshed([V6, V4], answers)  # type: ignore[arg-type]
    assert addresses == expected
    assert result.startswith(what)


def gen(interval: float = 0.05) -> SimpleNamespace:
    vhost = SimpleNamespace(name="web", backend_host="backend.test", backend_port=80)
    literal = SimpleNamespace(name="lit", backend_host="192.0.2.9", backend_port=80)
    config = SimpleNamespace(vhosts=[vhost, literal], transparent="no", dns_refresh=interval,
                             dns_timeout=1.0)
    return SimpleNamespace(config=config, backends={0: [(socket.AF_INET, V4)],
                                                    1: [(socket.AF_INET, ("192.0.2.9", 80))]})


def run_until(loop: Loop, done: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        loop.run_once(0.05)
    assert done()


@pytest.fixture
def records() -> Any:
    stream = io.StringIO()
    stream.isatty = lambda: False  # type: ignore[method-assign]
    logs.setup("json", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logs.setup("json", stream=io.StringIO())


def test_a_change_reaches_new_connections_and_is_logged(records: Any) -> None:
    loop, current = Loop(), gen()
    asked: list[str] = []
    answers = iter([[six(error=NONAME), four(V4B)], [six(error=NONAME), four(V4B)]])

    def lookups(host: str, port: int, timeout: float) -> list[Answer]:
        asked.append(host)
        return next(answers, [six(error=NONAME), four(V4B)])

    counted: list[str] = []
    refresh = BackendRefresh(loop, lambda: current, counted.append, lookups)
    refresh.start()
    run_until(loop, lambda: len(counted) >= 2)
    refresh.close()
    loop.close()
    assert current.backends[0] == [(socket.AF_INET, V4B)]
    assert set(asked) == {"backend.test"}  # never the IP literal
    assert counted[:2] == ["changed", "unchanged"]
    changed = [r for r in records() if r["event"] == "backend-addresses-changed"]
    assert len(changed) == 1
    assert (changed[0]["before"], changed[0]["after"]) == (["192.0.2.1:80"], ["192.0.2.2:80"])


def test_a_failure_is_logged_once_and_the_addresses_stay(records: Any) -> None:
    loop, current = Loop(), gen()
    counted: list[str] = []
    refresh = BackendRefresh(loop, lambda: current, counted.append,
                             lambda *a: [six(error=AGAIN), four(error=AGAIN)])
    refresh.start()
    run_until(loop, lambda: counted.count("failed") >= 3)
    refresh.close()
    loop.close()
    assert current.backends[0] == [(socket.AF_INET, V4)]
    failed = [r for r in records() if r["event"] == "backend-refresh-failed"]
    assert len(failed) == 1 and failed[0]["kept"] == ["192.0.2.1:80"]


def test_a_hanging_resolver_never_blocks_the_loop() -> None:
    """The loop keeps running its timers while a lookup hangs; no second lookup of the
    same name starts meanwhile."""
    loop, current = Loop(), gen(interval=0.02)
    release = threading.Event()
    started: list[float] = []

    def lookups(host: str, port: int, timeout: float) -> list[Answer]:
        started.append(time.monotonic())
        release.wait(10)
        return [six(error=NONAME), four(V4B)]

    ticks: list[float] = []

    def tick() -> None:
        ticks.append(time.monotonic())
        loop.call_later(0.01, tick)

    refresh = BackendRefresh(loop, lambda: current, lambda r: None, lookups)
    refresh.start()
    loop.call_soon(tick)
    run_until(loop, lambda: len(ticks) >= 30)
    assert len(started) == 1
    release.set()
    run_until(loop, lambda: current.backends[0] == [(socket.AF_INET, V4B)])
    refresh.close()
    loop.close()
