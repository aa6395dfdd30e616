"""Every fd not passed in is closed; the passed ones are renumbered from 0.

RLIMIT_NOFILE=0 makes poll() fail with EINVAL, so the kept fds sit at 0..k-1
and the limit is k.  An extra fd (the spawn's sync socket) may be kept above
them until the very end: fds above RLIMIT_NOFILE stay valid.
"""

from __future__ import annotations

import os


def renumber(fds: list[int], extra: int | None = None) -> tuple[list[int], int | None]:
    """Move `fds` to 0..len-1 and `extra` right after them; close everything else."""
    count = len(fds)
    # First park everything above any target slot so no dup2 overwrites a source.
    high = max([*fds, extra if extra is not None else -1, count + 1]) + 1
    parked = [os.dup2(fd, high + i, inheritable=True) for i, fd in enumerate(fds)]
    extra_parked = None
    if extra is not None:
        extra_parked = os.dup2(extra, high + count, inheritable=False)
    for i, fd in enumerate(parked):
        os.dup2(fd, i, inheritable=True)
    new_extra = None
    if extra_parked is not None:
        new_extra = os.dup2(extra_parked, count, inheritable=False)
        os.closerange(count + 1, 2**31 - 1)
    else:
        os.closerange(count, 2**31 - 1)
    return list(range(count)), new_extra
