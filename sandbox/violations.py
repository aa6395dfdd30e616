"""Reading seccomp's audit records: which syscall got a jail killed, which ones it used.

The kernel logs each seccomp kill (and each SECCOMP_RET_LOG hit, the action
`sandbox learn` uses) as an audit record, type=1326, carrying the global pid,
the host uid, the arch and the syscall number; we read them from /dev/kmsg.
Where /dev/kmsg cannot be read (some containers), a violation is still
reported, just without the name.

Without an audit daemon the kernel prints these records through
printk_ratelimit() (kernel.printk_ratelimit seconds, kernel.printk_ratelimit_burst
records per window: 5 s and 10 by default), so under a burst some records are
dropped; the kernel then logs "kauditd_printk_skb: N callbacks suppressed",
which `dropped` counts.  With auditd running, records go to auditd instead
and none reach /dev/kmsg.
"""

from __future__ import annotations

import collections
import errno
import os
import re
import time
from collections.abc import Collection
from dataclasses import dataclass

_RECORD = re.compile(rb"type=1326 ")
_FIELD = re.compile(rb" (uid|pid|sig|arch|syscall|code)=(0x[0-9a-fA-F]+|[0-9a-fA-F]+)")
_SUPPRESSED = re.compile(rb"kauditd_printk_skb: (\d+) callbacks suppressed")
_LOST = re.compile(rb"audit: audit_lost=(\d+)")
_ARCHES = {"c000003e": "x86_64", "c00000b7": "aarch64"}

# SECCOMP_RET_* action values (the top 16 bits of code=), linux/seccomp.h.
ACTIONS = {
    0x80000000: "kill-process",
    0x00000000: "kill-thread",
    0x00030000: "trap",
    0x00050000: "errno",
    0x7FC00000: "user-notif",
    0x7FF00000: "trace",
    0x7FFC0000: "log",
    0x7FFF0000: "allow",
}
_KILLS = ("kill-process", "kill-thread")
# Bounded memory for a long-lived launcher: old records are forgotten first.
_MAX_RECORDS = 65536


@dataclass(frozen=True)
class SeccompRecord:
    """One type=1326 audit record."""

    pid: int  # in the initial PID namespace
    uid: int | None  # the host uid (a jail's allocated uid)
    arch: str  # "x86_64", "aarch64" or the raw audit arch in hex
    syscall: int
    action: str  # one of ACTIONS' values, or "unknown"

    @classmethod
    def parse(cls, line: bytes) -> SeccompRecord | None:
        if not _RECORD.search(line):
            return None
        fields = {k.decode(): v.decode() for k, v in _FIELD.findall(line)}
        if "pid" not in fields or "syscall" not in fields:
            return None
        arch = fields.get("arch", "")
        code = int(fields["code"], 16) if "code" in fields else None
        if code is not None:
            action = ACTIONS.get(code & 0xFFFF0000, "unknown")
        else:  # no code= field: the signal tells a kill from a log
            action = "kill-process" if fields.get("sig", "0") != "0" else "unknown"
        return cls(
            pid=int(fields["pid"]),
            uid=int(fields["uid"]) if "uid" in fields else None,
            arch=_ARCHES.get(arch, arch),
            syscall=int(fields["syscall"]),
            action=action,
        )


class ViolationLog:
    """A reader of /dev/kmsg positioned at its creation: it sees only newer records."""

    def __init__(self, fd: int | None = None) -> None:
        """`fd`: a /dev/kmsg fd opened non-blocking and positioned earlier (-1: none),
        which the log then owns; by default /dev/kmsg is opened now, at its end."""
        self._kills: dict[int, tuple[str, int]] = {}
        self._records: collections.deque[SeccompRecord] = collections.deque(
            maxlen=_MAX_RECORDS
        )
        # Records the kernel said it dropped (rate limit) or that we read too late.
        self.dropped = 0
        if fd is not None:
            self._fd = fd
            return
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
                line = os.read(self._fd, 8192)
            except OSError as e:
                if e.errno == errno.EPIPE:  # records overwritten before we read them
                    self.dropped += 1
                    continue
                return
            if not line:
                return
            record = SeccompRecord.parse(line)
            if record is None:
                m = _SUPPRESSED.search(line) or _LOST.search(line)
                if m:
                    self.dropped += int(m.group(1))
                continue
            self._records.append(record)
            if record.action in _KILLS:
                self._kills[record.pid] = (record.arch, record.syscall)
                if len(self._kills) > 4096:
                    self._kills.pop(next(iter(self._kills)))

    def lookup(self, pid: int, wait: float = 0.2) -> tuple[str, int] | None:
        """(arch, syscall number) that killed `pid`, waiting briefly for the record."""
        deadline = time.monotonic() + wait
        while True:
            self._drain()
            if pid in self._kills:
                return self._kills.pop(pid)
            if self._fd < 0 or time.monotonic() >= deadline:
                return None
            time.sleep(0.005)

    def poll(self) -> None:
        """Read what the kernel has logged so far (call it often during a long run:
        the kernel's ring buffer overwrites records nobody has read)."""
        self._drain()

    def records(
        self,
        uids: Collection[int] | None = None,
        pids: Collection[int] | None = None,
        actions: Collection[str] | None = None,
    ) -> list[SeccompRecord]:
        """Every record read so far that matches all the given filters, oldest first.

        Filter by uid to follow a jail's forked children too: the uid is the
        jail's own, the pids of its children are not known in advance.
        """
        self._drain()
        return [
            r
            for r in self._records
            if (uids is None or r.uid in uids)
            and (pids is None or r.pid in pids)
            and (actions is None or r.action in actions)
        ]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
