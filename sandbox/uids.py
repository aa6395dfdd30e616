"""Host uids for jails: one per live jail, reused only after its PID namespace is gone."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # not at run time: the launcher must not import dataclasses
    from sandbox.spec import UidRange


class UidExhausted(RuntimeError):
    pass


class UidAllocator:
    """Hands out host uids from a range, never two to live jails at once.

    Reuse is safe because a jail is a PID namespace: when its PID 1 has been
    reaped, the kernel has killed everything else in it, so no process with
    the uid lies in wait (the blog's "dynamic UIDs" done right).
    """

    def __init__(self, uid_range: UidRange) -> None:
        self.range = uid_range
        self._next = 0
        self._live: set[int] = set()

    def allocate(self) -> int:
        first, count = self.range.first, self.range.count
        if len(self._live) >= count:
            raise UidExhausted(f"all {count} jail uids from {first} are in use")
        while True:
            uid = first + self._next
            self._next = (self._next + 1) % count
            if uid not in self._live:
                self._live.add(uid)
                return uid

    def release(self, uid: int) -> None:
        self._live.discard(uid)

    @property
    def live(self) -> frozenset[int]:
        return frozenset(self._live)


def process_uid(pid: int) -> int | None:
    """The real uid of a live process (None if it is gone): a jail's host uid."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
