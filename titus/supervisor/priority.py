"""The supervisor runs ten nice levels below the processes it starts.

Under load each connection wakes the supervisor about seven times (accept, the
worker's two messages, the reap, the listener's EOF, the refill, the zygote's
reply).  At the workers' priority the scheduler runs it at once for each one,
on caches the workers have just emptied (its Python costs ~4x what it costs in
a loop, bench/FLOOR.md).  Ten levels down (a tenth of a worker's weight) it
runs less often and handles several events per wake-up: measured on one core,
its CPU per connection 0.45-0.48 -> 0.31-0.33 ms, the workers' too fell, and
connections/s rose 12-18% at 16 and 64 clients.

The work the supervisor does not do itself keeps titus's own priority: the
zygote (whose clones are the workers) and the key holder are started at it
(`children_at_base`).  Under a CPU-bound flood the supervisor then takes new
clients more slowly while the connections in flight go on, which is the order
wanted: work under way finishes before more is taken on.  Putting the children
back needs CAP_SYS_NICE; without it the supervisor stays at titus's priority.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from sandbox import capabilities

OFFSET = 10
_NICEST = 19

_base: int | None = None  # titus's own nice value, once the supervisor has left it


def lower_supervisor() -> None:
    """Move the calling (supervisor) process OFFSET nice levels down, if its children
    can be put back."""
    global _base
    if _base is not None or not capabilities.held(capabilities.CAP_SYS_NICE):
        return
    base = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, min(_NICEST, base + OFFSET))
    _base = base


@contextlib.contextmanager
def children_at_base() -> Iterator[None]:
    """Processes started inside the block inherit titus's own priority."""
    if _base is None:
        yield
        return
    lowered = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, _base)
    except OSError:  # CAP_SYS_NICE gone since: the child runs lowered, nothing breaks
        yield
        return
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, lowered)
