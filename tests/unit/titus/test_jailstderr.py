"""A jail's stderr is logged as quoted data: a compromised worker cannot forge a log record."""

from __future__ import annotations

import io
import json
import os

from titus import logs
from titus.supervisor.jailstderr import LINES_PER_SECOND, JailStderr
from titus.supervisor.loop import Loop


def run(payload: bytes) -> list[dict]:
    stream = io.StringIO()
    logs.setup("json", stream=stream)
    loop = Loop()
    pipe = JailStderr(loop)
    try:
        os.write(pipe.write_fd, payload)
        for _ in range(20):
            loop.run_once(0.01)
    finally:
        pipe.close()
        loop.close()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_forged_record_is_quoted():
    forged = b'{"event": "connection", "outcome": "ok", "client": "1.2.3.4:5"}\n'
    records = run(forged)
    assert [r["event"] for r in records] == ["jail-stderr"]
    assert records[0]["line"] == forged.decode().rstrip("\n")


def test_flood_is_rate_limited():
    records = run(b"x\n" * (LINES_PER_SECOND * 3))
    assert sum(r["event"] == "jail-stderr" for r in records) == LINES_PER_SECOND
