"""fork(2) with namespace and parent flags: a raw clone(2) run like os.fork.

os.fork has no flags.  A fork server needs two: CLONE_NEWPID, so the child is
PID 1 of a new PID namespace without a second fork, and CLONE_PARENT, so the
child's parent is the fork server's caller (which reaps it and whose death
kills it) rather than the fork server.

CPython's own fork duties are run around the syscall, as os.fork does them:
PyOS_BeforeFork (import lock, at-fork hooks), PyOS_AfterFork_Child (thread
state, locks, `random` reseeding, hooks) or PyOS_AfterFork_Parent.  glibc's
fork extras are not needed by a single-threaded caller: its at-fork handlers
only guard locks other threads could hold, and since glibc 2.34 raise() asks
the kernel for the thread id instead of trusting the cached one.  OpenSSL
reseeds its random generators when getpid() changes, which it always does here.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

CLONE_PARENT = 0x00008000

_SYS_CLONE = {"x86_64": 56, "aarch64": 220}[os.uname().machine]
# PyDLL: the call keeps the GIL, so the child never has to take it back.
_raw = ctypes.PyDLL(None, use_errno=True)
_raw.syscall.restype = ctypes.c_long
_api = ctypes.pythonapi
for _name in ("PyOS_BeforeFork", "PyOS_AfterFork_Parent", "PyOS_AfterFork_Child"):
    getattr(_api, _name).argtypes = []
    getattr(_api, _name).restype = None


def clone(flags: int) -> int:
    """Like os.fork() but with clone flags; returns 0 in the child, its pid in the parent."""
    # Not importing threading: its after-fork hook would run in every child.
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        raise RuntimeError("clone() needs a single-threaded caller")
    _api.PyOS_BeforeFork()
    # Both stack and tid pointers NULL: the child continues on a copy of our
    # stack, as after fork.  The argument order differs between architectures
    # only in the pointers, which are all NULL.
    pid = _raw.syscall(ctypes.c_long(_SYS_CLONE), ctypes.c_ulong(flags | signal.SIGCHLD),
                       None, None, None, None)
    if pid == 0:
        _api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    _api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone: {os.strerror(err)}")
    return pid
