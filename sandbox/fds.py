"""Every fd not passed in is closed; the passed ones are renumbered from 0.

RLIMIT_NOFILE=0 makes poll() fail with EINVAL, so the kept fds sit at 0..k-1
and the limit is k.  An extra fd (the spawn's sync socket) may be kept above
them until the very end: fds above RLIMIT_NOFILE stay valid.
"""

from __future__ import annotations

import fcntl
import os


def renumber(fds: list[int], extra: int | None = None) -> tuple[list[int], int | None]:
    """Move `fds` to 0..len-1 and `extra` right after them; close everything else."""
    count = len(fds)
    # Close everything else first: a caller at its RLIMIT_NOFILE (a supervisor out
    # of fds) leaves no room to move anything otherwise.
    low = 0
    for fd in sorted({*fds, *([] if extra is None else [extra])}):
        if low < fd:  # os.closerange(0, 0) would close every fd: close_range(0, ~0)
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 2**31 - 1)
    # Then park everything above any target slot so no dup2 overwrites a source:
    # in the lowest free fds above count (F_DUPFD), not above the highest open fd,
    # which the limit forbids (EBADF).
    parked = [fcntl.fcntl(fd, fcntl.F_DUPFD, count + 1) for fd in fds]
    extra_parked = None
    if extra is not None:
        extra_parked = fcntl.fcntl(extra, fcntl.F_DUPFD_CLOEXEC, count + 1)
    for i, fd in enumerate(parked):
        os.dup2(fd, i, inheritable=True)
    new_extra = None
    if extra_parked is not None:
        new_extra = os.dup2(extra_parked, count, inheritable=False)
        os.closerange(count + 1, 2**31 - 1)
    else:
        os.closerange(count, 2**31 - 1)
    return list(range(count)), new_extra
