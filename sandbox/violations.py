"""Naming the syscall that got a jail killed by seccomp.

The kernel logs each seccomp kill as an audit record (type=1326) with the
global pid and the syscall number; we read them from /dev/kmsg.  Where
/dev/kmsg cannot be read (some containers), the violation is still reported,
just without the name.
"""

from __future__ import annotations

import errno
import os
import re
import time

_RECORD = re.compile(rb"type=1326 .*? pid=(\d+) .*? arch=([0-9a-f]+) syscall=(\d+)")
_ARCHES = {"c000003e": "x86_64", "c00000b7": "aarch64"}


class ViolationLog:
    def __init__(self) -> None:
        self._seen: dict[int, tuple[str, int]] = {}
        try:
            self._fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            self._fd = -1

    @property
    def available(self) -> bool:
        return self._fd >= 0

    def _drain(self) -> None:
        while self._fd >= 0:
            try:
                record = os.read(self._fd, 8192)
            except OSError as e:
                if e.errno == errno.EPIPE:  # overwritten records: keep reading
                    continue
                return
            if not record:
                return
            m = _RECORD.search(record)
            if m:
                arch = _ARCHES.get(m.group(2).decode(), m.group(2).decode())
                self._seen[int(m.group(1))] = (arch, int(m.group(3)))
            if len(self._seen) > 4096:
                self._seen.pop(next(iter(self._seen)))

    def lookup(self, pid: int, wait: float = 0.2) -> tuple[str, int] | None:
        """(arch, syscall number) that killed `pid`, waiting briefly for the record."""
        deadline = time.monotonic() + wait
        while True:
            self._drain()
            if pid in self._seen:
                return self._seen.pop(pid)
            if self._fd < 0 or time.monotonic() >= deadline:
                return None
            time.sleep(0.005)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
