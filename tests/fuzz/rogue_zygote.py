"""A titus zygote whose workers send scripted control messages, as compromised ones could.

Used by tests/fuzz/test_control_fuzz.py as the supervisor's `zygote_setup`.  The
zygote is a separately exec'd process, so the script comes as a file: PLAN_FILE
next to the first vhost's certificate, a JSON list (one entry per connection,
by conn_id) of lists of hex-encoded packets.  Connection k's worker sends
plan[k - 1] on its control socket, then waits (never reporting) until it is
killed or HANDSHAKE_TIME + 2 seconds have passed; later connections are served
honestly.  The workers are real ones, cloned from a real zygote into real jails.
"""

from __future__ import annotations

import json
import os
import select
import time
from pathlib import Path

import titus.worker.connection
from titus.wire import control
from titus.worker import zygote

PLAN_FILE = "rogue-plan.json"
_honest = titus.worker.connection.serve


def _play(packets: list[bytes], ctl, wait: float) -> None:  # type: ignore[no-untyped-def]
    for packet in packets:
        try:
            ctl.send(packet)
        except OSError:
            break
    poller = select.poll()  # poll(2): select(2) is not in the worker's allowlist
    poller.register(ctl.fileno(), select.POLLIN)
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        if poller.poll(left * 1000):
            try:
                if not ctl.recv(control.MAX_PACKET):
                    break
            except OSError:
                break
    os._exit(0)  # never report: the outcome is what the supervisor made of the script


def setup(arg: zygote.ZygoteSetup):  # type: ignore[no-untyped-def]
    plan_path = Path(arg.vhosts[0].cert).parent / PLAN_FILE
    plan = [[bytes.fromhex(p) for p in script] for script in json.loads(plan_path.read_text())]
    wait = arg.handshake_timeout + 2  # outlive the supervisor's handshake timer

    def rogue_serve(table, ctl, client, conn, counters):  # type: ignore[no-untyped-def]
        if conn.conn_id > len(plan):
            return _honest(table, ctl, client, conn, counters)
        _play(plan[conn.conn_id - 1], ctl, wait)
        return None

    titus.worker.connection.serve = rogue_serve
    return zygote.setup(arg)
