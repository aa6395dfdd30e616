"""What a running titus leaves on the machine, seen from outside, for before/after
comparisons: processes, the supervisor's fds and memory, mounts, network
namespaces, cgroups and temporary files.

The machine is shared with other test runs, so nothing here counts a stranger's
resource as titus's: processes and namespaces are attributed through titus's
session and its jail uid range, mounts and cgroups through the names and pids
titus's jails would leave.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.titus_harness import open_fds, session_processes

T = TypeVar("T")
TEMP_DIRS = ("/tmp", "/dev/shm", "/run")
JAIL_MOUNT_SOURCES = ("jail", "jailtmp")  # sandbox/rootfs.py's tmpfs names
CGROUP_ROOT = Path("/sys/fs/cgroup")


def uid_of(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return None


def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def processes_in_uid_range(first: int, count: int) -> set[int]:
    return {p for p in pids() if first <= (uid_of(p) or -1) < first + count}


def fd_kinds(pid: int) -> Counter[str]:
    """The supervisor's fds by what they point at, inode numbers dropped ("socket:[]");
    the host-wide uid locks are ranges of one fd on /run/sandbox/uids/held."""
    return Counter(re.sub(r"\[\d+\]$", "[]", target) for target in open_fds(pid).values())


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB: VmRSS from status, Pss from smaps_rollup."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def mounts() -> set[tuple[str, str, str]]:
    """(mount point, fs type, source) of every mount in our (the host's) mount namespace."""
    out = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, source = [*right.split(), "", ""][:2]
        out.add((left.split()[4], fstype, source))
    return out


def jail_mounts(found: set[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """Mounts only a jail makes: its tmpfs root, /proc of a PID namespace, nsfs bind mounts."""
    return {m for m in found
            if (m[1] == "tmpfs" and m[2] in JAIL_MOUNT_SOURCES) or m[1] == "nsfs"}


def run_netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        return [f"error: {out.stderr.strip()}"]
    return sorted(line for line in out.stdout.splitlines() if line)


def net_namespaces() -> dict[str, set[int]]:
    """Every network namespace that some process is in -> those pids."""
    out: dict[str, set[int]] = {}
    for pid in pids():
        with contextlib.suppress(OSError):
            out.setdefault(os.readlink(f"/proc/{pid}/ns/net"), set()).add(pid)
    return out


def cgroup_of(pid: int) -> str | None:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cgroup").read_text()
    return None


def cgroup_dirs() -> set[str]:
    """Every cgroup directory (v1 controllers and the unified tree), bounded in depth."""
    out = set()
    for root, dirs, _ in os.walk(CGROUP_ROOT):
        depth = len(Path(root).relative_to(CGROUP_ROOT).parts)
        if depth >= 6:
            dirs.clear()
        out.add(root)
    return out


def titus_cgroups(dirs: set[str], session: set[int]) -> set[str]:
    """Of `dirs`, those named after a titus jail or holding one of titus's processes
    (other software on the machine, e.g. podman, makes and removes cgroups of its own)."""
    out = set()
    for d in dirs:
        procs: set[int] = set()
        with contextlib.suppress(OSError, ValueError):
            procs = {int(p) for p in Path(d, "cgroup.procs").read_text().split()}
        if "titus" in Path(d).name or procs & session:
            out.add(d)
    return out


def temp_entries() -> dict[str, set[str]]:
    return {d: set(os.listdir(d)) for d in TEMP_DIRS if os.path.isdir(d)}


def settled(read: Callable[[], T], ok: Callable[[T], bool], grace: float = 10.0) -> T:
    """`read()`, re-read for up to `grace` s until `ok` holds: a stranger's resource
    that comes and goes does not fail the check, a leak that stays does."""
    deadline = time.monotonic() + grace
    value = read()
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    return value


@dataclass
class Footprint:
    """One look at the machine while titus (supervisor `pid`, its session's leader) is idle."""

    session: set[int]
    jail_uid_pids: set[int]
    supervisor_fds: Counter[str]
    zygote_fds: Counter[str]
    rss_kib: int
    pss_kib: int
    helper_rss_kib: dict[str, int]  # the zygote's and the key holder's, by name
    mounts: set[tuple[str, str, str]]
    run_netns: list[str]
    session_netns: set[str]
    all_netns: dict[str, set[int]]
    cgroups: set[str]
    session_cgroups: set[str]
    temp: dict[str, set[str]]

    @classmethod
    def take(cls, pid: int, zygotes: list[int], uid_first: int, uid_count: int,
             helpers: dict[str, int]) -> Footprint:
        session = set(session_processes(pid))
        all_netns = net_namespaces()
        rss, pss = memory_kib(pid)
        return cls(
            session=session, jail_uid_pids=processes_in_uid_range(uid_first, uid_count),
            supervisor_fds=fd_kinds(pid), zygote_fds=sum(map(fd_kinds, zygotes), Counter()),
            rss_kib=rss, pss_kib=pss,
            helper_rss_kib={name: memory_kib(p)[0] for name, p in helpers.items()},
            mounts=mounts(),
            run_netns=run_netns(),
            session_netns={ns for ns, members in all_netns.items() if members & session},
            all_netns=all_netns, cgroups=cgroup_dirs(),
            session_cgroups={c for p in session if (c := cgroup_of(p)) is not None},
            temp=temp_entries())

    def summary(self) -> str:
        return (f"{len(self.session)} processes in titus's session, "
                f"{sum(self.supervisor_fds.values())} supervisor fds, "
                f"{sum(self.zygote_fds.values())} zygote fds, "
                f"RSS {self.rss_kib / 1024:.1f} MiB, PSS {self.pss_kib / 1024:.1f} MiB, "
                f"{len(self.mounts)} mounts, {len(self.all_netns)} network namespaces "
                f"({len(self.session_netns)} titus's), {len(self.run_netns)} in ip netns, "
                f"{len(self.cgroups)} cgroups, "
                f"{sum(len(v) for v in self.temp.values())} entries in {', '.join(self.temp)}")
