"""What jails write to stderr reaches the log as quoted data, never as log lines.

Workers and the key holder share one pipe as their fd 2.  The supervisor
reads it from its loop and logs each line as a `jail-stderr` event, so a
compromised worker cannot forge a connection record, and a flood is cut to
a rate (the rest is counted, not stored).
"""

from __future__ import annotations

import logging
import os
import time

from titus import logs
from titus.supervisor.loop import Loop

MAX_LINE = 1000
LINES_PER_SECOND = 50


class JailStderr:
    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.read_fd, False)
        self.partial = b""
        self.window = 0.0
        self.lines_in_window = 0
        self.dropped = 0
        loop.add_reader(self.read_fd, self.drain)

    def drain(self) -> None:
        try:
            data = os.read(self.read_fd, 65536)
        except BlockingIOError:
            return
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()[-MAX_LINE:]
        for line in lines:
            self.emit(line)

    def emit(self, line: bytes) -> None:
        now = time.monotonic()
        if now - self.window >= 1.0:
            if self.dropped:
                logs.event("jail-stderr-dropped", logging.WARNING, lines=self.dropped)
            self.window, self.lines_in_window, self.dropped = now, 0, 0
        if self.lines_in_window >= LINES_PER_SECOND:
            self.dropped += 1
            return
        self.lines_in_window += 1
        logs.event("jail-stderr", logging.WARNING,
                   line=line[:MAX_LINE].decode("utf-8", errors="replace"))

    def close(self) -> None:
        self.loop.forget(self.read_fd)
        os.close(self.read_fd)
        os.close(self.write_fd)
