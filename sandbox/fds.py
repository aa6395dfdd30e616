"""Every fd not passed in is closed; the passed ones are renumbered from 0.

RLIMIT_NOFILE=0 makes poll() fail with EINVAL, so the kept fds sit at 0..k-1
and the limit is k.  An extra fd (the spawn's sync socket) may be kept above
them until the very end: fds above RLIMIT_NOFILE stay valid.  The executor
(sandbox/_jail/steps.c, do_fds) does the moving; it closes everything else
first, so a caller at its RLIMIT_NOFILE still has room to move.
"""

from __future__ import annotations

from sandbox import _jail
from sandbox.plan import Step, apply_here

LAYER = "fds"


def steps() -> list[Step]:
    return [Step(_jail.OP_FDS, LAYER, "the passed fds become 0..k-1, every other fd is closed",
                 subs={0: "closing the other fds: {err}", 1: "parking a kept fd: {err}",
                       2: "moving a kept fd: {err}", 3: "closing the parked fds: {err}"})]


def renumber(fds: list[int], extra: int | None = None) -> tuple[list[int], int | None]:
    """Move `fds` to 0..len-1 and `extra` right after them (close-on-exec) in this
    process; close everything else."""
    moved = apply_here(steps(), keep=tuple(fds), sync=-1 if extra is None else extra)
    return list(range(len(fds))), None if extra is None else moved
