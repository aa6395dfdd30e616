"""What `sandbox run` and `sandbox learn` do with each forbidden call a jail makes.

`run` (ViolationWatch): the first forbidden call is recorded, named with its
decoded arguments and the process that made it (any process of the jail, not
only its PID 1), and the jail is killed; the call itself never runs.

`learn` (LearnWatch): every call is recorded and let through (or refused with
EPERM when the base profile denies it outright), so one run finds every call.

Lean until a call arrives (no dataclasses, no threading; the decoder is imported
by the first call): `sandbox run` from its plan cache sets a ViolationWatch up.
"""

from __future__ import annotations

import _thread
import errno

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from sandbox.listener import Call, Listener


class Seen:
    """A forbidden call, in words, and who made it."""

    __slots__ = ("args", "comm", "name", "pid", "text")

    def __init__(self, name: str, args: tuple[int, ...], text: str, pid: int, comm: str) -> None:
        self.name = name
        self.args = args
        self.text = text  # socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, NETLINK_ROUTE)
        self.pid = pid  # in the jail's PID namespace (1: the program itself)
        self.comm = comm  # the process's name

    def __repr__(self) -> str:
        return f"Seen({self.text!r}, pid={self.pid}, comm={self.comm!r})"

    @property
    def who(self) -> str:
        return f"process {self.pid} ({self.comm})"


def _proc(pid: int, name: str) -> str:
    try:
        with open(f"/proc/{pid}/{name}") as f:
            return f.read()
    except OSError:
        return ""


def observe(listener: Listener, call: Call) -> Seen:
    """Decode `call` while its thread waits (its memory and /proc entries are stable)."""
    from sandbox.decode import describe

    text = describe(call.name, call.args, lambda a, n: listener.read_memory(call, a, n))
    nspid = call.pid
    for line in _proc(call.pid, "status").splitlines():
        if line.startswith("NSpid:"):
            nspid = int(line.split()[-1])
    return Seen(call.name, call.args, text, nspid, _proc(call.pid, "comm").strip() or "?")


class ViolationWatch:
    """`run`: record the forbidden call and kill the jail (`kill` ends its PID 1)."""

    def __init__(self, kill: Callable[[], None]) -> None:
        self._kill = kill
        self.seen: list[Seen] = []
        self._lock = _thread.allocate_lock()

    def handle(self, listener: Listener, call: Call) -> None:
        try:
            seen = observe(listener, call)
        except BaseException:
            self._kill()  # the call is never answered: the jail must not wait for it forever
            raise
        with self._lock:
            self.seen.append(seen)
        self._kill()  # the call stays unanswered: it dies with the jail, never runs

    @property
    def first(self) -> Seen | None:
        with self._lock:
            return self.seen[0] if self.seen else None


class Learned:
    """One syscall learn saw: how often, the distinct argument tuples, where first."""

    def __init__(self, name: str, first: Seen) -> None:
        self.name = name
        self.first = first
        self.count = 0
        self.args: list[tuple[int, ...]] = []
        self.examples: list[Seen] = []  # the first call of each args

    def add(self, seen: Seen) -> None:
        self.count += 1
        if seen.args not in self.args and len(self.args) < 256:
            self.args.append(seen.args)
            self.examples.append(seen)


class LearnWatch:
    """`learn`: let every call run and remember it; refuse (EPERM) what `refuse` names."""

    def __init__(self, refuse: Collection[str] = ()) -> None:
        self.refuse = frozenset(refuse)
        self.calls: dict[str, Learned] = {}
        self.refused: dict[str, Learned] = {}
        self._lock = _thread.allocate_lock()

    def handle(self, listener: Listener, call: Call) -> None:
        seen = observe(listener, call)
        table = self.refused if call.name in self.refuse else self.calls
        with self._lock:
            table.setdefault(call.name, Learned(call.name, seen)).add(seen)
        if call.name in self.refuse:
            listener.fail(call, errno.EPERM)
        else:
            listener.allow(call)
