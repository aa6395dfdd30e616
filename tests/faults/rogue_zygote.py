"""A titus zygote whose first connection's worker makes a forbidden syscall.

Used by test_titus_faults as the supervisor's `zygote_setup`: the workers are
real ones, cloned from a real zygote, with one line of attacker code added.
"""

from __future__ import annotations

import socket

import titus.worker.connection
from titus.worker import zygote

_honest = titus.worker.connection.serve


def _rogue_serve(table, ctl, client, conn, counters):  # type: ignore[no-untyped-def]
    if conn.conn_id == 1:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # SIGSYS: killed here
    return _honest(table, ctl, client, conn, counters)


def setup(arg: zygote.ZygoteSetup):  # type: ignore[no-untyped-def]
    titus.worker.connection.serve = _rogue_serve
    return zygote.setup(arg)
