"""sandbox.fds.renumber when the caller's fds reach its RLIMIT_NOFILE.

A supervisor out of descriptors forks a jail with its table full and its highest
fds just under the limit; the jail's fd layer must still move the passed ones to
0..k-1 (it once parked them above the highest open fd, which the limit forbids:
EBADF, a jail that never started).  Runs in a forked child: renumber closes every
other fd of the process.
"""

from __future__ import annotations

import os
import resource

from sandbox.fds import renumber

LIMIT = 64


def _child() -> int:
    """0 if renumber kept exactly the right files at the right numbers."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, hard))
    pipes = []
    while True:  # fill the table with pipes (each end its own inode) up to the limit
        try:
            pipes.append(os.pipe())
        except OSError:
            break
    while True:  # and the last slot, if an odd one was left
        try:
            os.open("/dev/null", os.O_RDONLY)
        except OSError:
            break
    # The passed fds and the sync socket are near the top, and no fd is free.
    passed, extra = [pipes[-3][0], pipes[-2][0]], pipes[-1][0]
    if max(*passed, extra) < LIMIT - 6:
        return 5
    want = [os.fstat(fd).st_ino for fd in (*passed, extra)]
    kept, moved = renumber(passed, extra)
    if kept != [0, 1] or moved != 2:
        return 2
    if [os.fstat(fd).st_ino for fd in (0, 1, 2)] != want:
        return 3
    if sorted(int(n) for n in os.listdir("/proc/self/fd")) != [0, 1, 2, 3]:  # 3: listdir's
        return 4
    return 0


def test_renumber_at_the_fd_limit() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through its exit code
        code = 1
        try:
            code = _child()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
