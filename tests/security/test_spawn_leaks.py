"""A thousand jails later, the spawning process is as it was.

titus spawns a jail per connection for as long as it runs: one leaked fd,
mount, namespace, zombie or uid per spawn is an outage (or a shared uid, a
broken isolation) after a few days.  This spawns 1,000 worker jails and
compares everything a spawn touches before and after.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest

from sandbox.launcher import Launcher
from sandbox.profile import load_profile
from sandbox.spec import UidRange

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")

T = TypeVar("T")
SPAWNS = 1000
TIME_LIMIT = 60.0  # seconds for all of them; 4-12 s on this 2-core VM


def noop() -> None:
    """The jail's whole life: return (the launcher then calls os._exit(0))."""


def children() -> set[int]:
    """Our direct children, zombies included (the kernel lists them until reaped)."""
    pids: set[int] = set()
    for path in glob.glob("/proc/self/task/*/children"):
        pids.update(int(p) for p in Path(path).read_text().split())
    return pids


def fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


def net_namespaces() -> dict[str, set[int]]:
    """Each live network namespace -> the pids in it."""
    out: dict[str, set[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out.setdefault(os.readlink(f"/proc/{entry}/ns/net"), set()).add(int(entry))
            except OSError:
                continue  # gone, or a kernel thread
    return out


def run_netns() -> list[str]:
    return sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []


def own_namespaces() -> dict[str, str]:
    """Our own namespaces, including where our next child's PID namespace would be."""
    names = ("net", "mnt", "pid", "pid_for_children", "user", "ipc", "uts")
    return {n: os.readlink(f"/proc/self/ns/{n}") for n in names}


def mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def settled(read: Callable[[], T], expected: T, grace: float = 5.0) -> T:
    """`read()`, re-read for up to `grace` s until it equals `expected`.

    The mount table and /run/netns are shared with the rest of the machine: a
    test running elsewhere may have a namespace mounted for a few seconds.  A
    leak of ours stays, so it still fails; a passing stranger does not.
    """
    deadline = time.monotonic() + grace
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        value = read()
    return value


def uid_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def test_thousand_spawns_leave_nothing_behind() -> None:
    # The real worker jail, seccomp and all; only its uids come from a range no
    # other launcher on the machine uses (not even this test in another pytest
    # run at the same time), so the uid checks below see only ours.
    first = 3_000_000 + (os.getpid() % 8192) * 2048
    spec = replace(load_profile("titus-worker").spec, uid_range=UidRange(first, 2048))
    assert spec.seccomp_bpf is not None
    count = spec.uid_range.count
    launcher = Launcher()
    try:
        # Warm up: the shared empty netns and the kmsg reader are created once.
        assert launcher.spawn(spec, noop).wait(10) == 0
        before = {
            "children": children(), "fds": fds(), "run_netns": run_netns(),
            "mounts": mounts(), "own": own_namespaces(),
        }  # fmt: skip
        netns_before = net_namespaces()

        start = time.monotonic()
        failed = []
        for _ in range(SPAWNS):
            jail = launcher.spawn(spec, noop)
            code = jail.wait(10)
            if code != 0:
                failed.append((jail.pid, code))
        elapsed = time.monotonic() - start
        assert not failed, f"{len(failed)} jails failed, e.g. {failed[:5]}"
        assert elapsed < TIME_LIMIT, f"{SPAWNS} spawns took {elapsed:.1f} s"

        assert launcher.live == []
        assert launcher.uids(spec.uid_range).live == frozenset()
        assert children() == before["children"], "a jail was left running or unreaped"
        assert fds() == before["fds"]
        assert settled(mounts, before["mounts"]) == before["mounts"]
        assert settled(run_netns, before["run_netns"]) == before["run_netns"]
        assert own_namespaces() == before["own"]
        # No new network namespace is alive with a jail (or a child of ours) in it.
        # (Namespaces of unrelated processes on the machine may come and go.)
        new = {ns: pids for ns, pids in net_namespaces().items() if ns not in netns_before}
        ours = {
            ns: pids for ns, pids in new.items()
            if any(p in before["children"] or first <= (uid_of(p) or -1) < first + count
                   for p in pids)
        }  # fmt: skip
        assert not ours, f"network namespaces left by jails: {ours}"
        # Nothing anywhere runs as a uid this launcher handed out (they were
        # allocated from the start of the range, one per spawn).
        used = range(first, first + SPAWNS + 1)
        stragglers = [
            int(p) for p in os.listdir("/proc") if p.isdigit() and uid_of(int(p)) in used
        ]
        assert stragglers == [], f"processes still running as jail uids: {stragglers}"
        print(f"{SPAWNS} spawns + waits: {elapsed:.2f} s ({elapsed / SPAWNS * 1000:.2f} ms each)")
    finally:
        launcher.close()


def add(a: int, b: int) -> int:
    return a + b


def cgroup_dirs(first: int, count: int) -> list[str]:
    """Per-jail cgroup directories of uids in [first, first + count), any hierarchy."""
    from sandbox.cgroups import detect

    return [str(h.base / name) for h in detect().values() if h.base.is_dir()
            for name in os.listdir(h.base)
            if name.startswith("sandbox-") and name[8:].isdigit()
            and first <= int(name[8:]) < first + count]


def uid_locks(first: int, count: int) -> list[int]:
    from sandbox.uids import LOCK_DIR

    return [int(n) for n in os.listdir(LOCK_DIR) if n.isdigit()
            and first <= int(n) < first + count]


def test_daemon_features_leave_nothing_behind() -> None:
    """Issue 14's parts of a spawn: a cgroup per jail, the result socket, the seccomp
    listener handed to the parent, /dev and more tmpfs mounts, other ids inside.
    After 100 of each: no fd, child, mount, cgroup or uid lock is left."""
    from sandbox.notify import available, notifying

    first = 3_500_000 + (os.getpid() % 4096) * 256
    profile = load_profile("examples/shell")
    spec = replace(profile.spec, uid_range=UidRange(first, 256), pids_limit=16,
                   memory_limit=64 << 20, tmpfs=((Path("/run"), 1 << 20),), uid=33, gid=33)
    plain = replace(spec, seccomp_bpf=None, landlock=False)  # a Python child needs more
    notify = notifying(spec, profile.policy) if available() else None
    listeners: list[int] = []
    launcher = Launcher()
    try:
        assert launcher.spawn(plain, add, (1, 2), result=True).result(10) == 3  # warm up
        before = {"children": children(), "fds": fds(), "mounts": mounts()}
        for i in range(100):
            assert launcher.spawn(plain, add, (i, 1), result=True).result(10) == i + 1
            if notify is not None:
                jail = launcher.run(notify, ["/bin/true"], fds=(),
                                    on_listener=lambda pid, fd: listeners.append(fd))
                assert jail.wait(10) == 0
        assert notify is None or len(listeners) == 100
        assert launcher.live == []
        assert children() == before["children"], "a jail was left running or unreaped"
        assert fds() == before["fds"]  # result sockets, listeners, cgroup and uid lock fds
        assert settled(mounts, before["mounts"]) == before["mounts"]
        assert cgroup_dirs(first, 256) == []
        assert uid_locks(first, 256) == []
    finally:
        launcher.close()
