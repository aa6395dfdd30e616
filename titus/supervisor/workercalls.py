"""A worker's forbidden system call, from its seccomp listener: named with its
arguments the moment it is made, and the worker killed.

Why: the kernel's audit log names a seccomp kill only within its rate limit (10
records per 5 s): under a burst of violations, names were dropped.  A worker
whose filter notifies (sandbox/notify.py, SECCOMP_RET_USER_NOTIF) instead
stops in the kernel at its first forbidden call until someone answers; the
zygote hands us the listener with the worker (sandbox/forkserver.py), before
we give the worker a client, so nothing an attacker sends can come first.

Each live worker's listener is one more fd in the supervisor's event loop: no
thread, nothing per idle worker but an epoll entry.  On a call we read it
(sandbox/listener.py), decode it as `sandbox run` does (sandbox/callwatch.py,
sandbox/decode.py), record it as the jail's violation and SIGKILL the worker;
the call never runs (it is never answered), and the normal reaping path logs
the connection with it.  The listener is closed once the worker is gone.
Where the kernel cannot notify, the worker's filter kills instead and the
connection record names the call from the audit log (connections.py).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from sandbox.callwatch import observe
from sandbox.launcher import Violation
from sandbox.listener import Listener

if TYPE_CHECKING:
    from titus.supervisor.lifecycle import Worker
    from titus.supervisor.loop import Loop


class WorkerCalls:
    """The listeners of the live workers, watched in the supervisor's loop."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop

    def watch(self, worker: Worker, fd: int) -> None:
        """From now on a forbidden call of `worker` ends it (`fd`: its listener, ours)."""
        worker.listener = Listener(fd)
        self.loop.add_reader(fd, lambda: self.on_call(worker))

    def on_call(self, worker: Worker) -> None:
        listener = worker.listener
        if listener is None:
            return
        try:
            call = listener.receive(timeout=0)
        except (EOFError, OSError):  # the worker is gone: nothing can call any more
            self.forget(worker)
            return
        if call is None:  # its caller died before we read it
            return
        jail = worker.jail
        if jail.violation is None and jail.returncode is None:
            seen = observe(listener, call)
            jail.violation = Violation(call.name, call.nr, call.arch, call=seen.text)
        jail.kill()  # unanswered, the call never runs; the reaper logs the connection

    def forget(self, worker: Worker) -> None:
        """Stop watching and close the listener (the worker ended, or will)."""
        listener, worker.listener = worker.listener, None
        if listener is not None and listener.fd >= 0:
            self.loop.forget(listener.fd)
            listener.close()


def close_unused(fd: int | None) -> None:
    """A listener that came with a worker we do not keep."""
    if fd is not None:
        os.close(fd)
