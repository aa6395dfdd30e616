"""fork(2) with namespace and parent flags, run like os.fork: the executor's clone.

os.fork has no flags.  A fork server needs two: CLONE_NEWPID, so the child is
PID 1 of a new PID namespace without a second fork, and CLONE_PARENT, so the
child's parent is the fork server's caller (which reaps it and whose death
kills it) rather than the fork server.

This is the jail executor (sandbox._jail) with an empty plan: a raw clone with
CPython's fork duties around it, as os.fork does them: PyOS_BeforeFork (import
lock, at-fork hooks), PyOS_AfterFork_Child (thread state, locks, `random`
reseeding, hooks) or PyOS_AfterFork_Parent.  glibc's fork extras are not run,
which is safe only for a single-threaded caller: its at-fork handlers guard
locks (malloc's) other threads could hold.
"""

from __future__ import annotations

from sandbox import _jail
from sandbox.launcher import _refuse_threads
from sandbox.plan import MODE_CALL, Plan

CLONE_PARENT = 0x00008000


def clone(flags: int) -> int:
    """Like os.fork() but with clone flags; returns 0 in the child, its pid in the parent."""
    _refuse_threads()
    plan = Plan([], flags & ~CLONE_PARENT)
    result = _jail.spawn(plan.native, MODE_CALL, how=_jail.HOW_CLONE,
                         parent=bool(flags & CLONE_PARENT))
    if result is None:
        return 0
    pid, error, _, _, _ = result
    if error is not None:
        raise plan.error(error)
    return pid
