"""cgroup detection (v2 where it has the controller, else v1) and the files a jail's cgroup
gets, on a directory laid out like each kind of hierarchy (the real v1 hierarchy of this
machine is exercised by tests/integration/test_sandbox_limits.py)."""

from __future__ import annotations

import os
from pathlib import Path

from sandbox.cgroups import JailCgroup, Limits, detect

HYBRID = """\
30 25 0:26 / /sys/fs/cgroup/unified rw,relatime shared:7 - cgroup2 cgroup2 rw
31 25 0:27 / /sys/fs/cgroup/memory rw,relatime shared:8 - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/pids rw,relatime shared:9 - cgroup cgroup rw,pids
33 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct
"""
HYBRID_SELF = "4:memory:/svc\n3:pids:/\n2:cpu,cpuacct:/\n0::/\n"


def test_v1_where_v2_has_no_controllers(tmp_path: Path) -> None:
    found = detect(HYBRID, HYBRID_SELF)
    assert {c: (h.version, str(h.base)) for c, h in found.items()} == {
        "memory": (1, "/sys/fs/cgroup/memory/svc"),
        "pids": (1, "/sys/fs/cgroup/pids"),
        "cpu": (1, "/sys/fs/cgroup/cpu,cpuacct"),
    }


def test_v2_preferred_where_it_has_the_controller(tmp_path: Path) -> None:
    v2 = tmp_path / "unified"
    (v2 / "system.slice").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory pids\n")
    (v2 / "system.slice" / "cgroup.controllers").write_text("cpu memory pids\n")
    (v2 / "system.slice" / "cgroup.subtree_control").write_text("")
    mountinfo = f"30 25 0:26 / {v2} rw - cgroup2 cgroup2 rw\n"
    found = detect(mountinfo, "0::/system.slice\n")
    assert {h.version for h in found.values()} == {2}
    # The jail's cgroup: one directory, the controllers enabled in its parent, the limits.
    jail = JailCgroup("sandbox-200001", Limits(memory=64 << 20, pids=16, cpus=0.5), found)
    d = v2 / "system.slice" / "sandbox-200001"
    assert jail.dirs == [d]
    assert (v2 / "system.slice" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (d / "memory.max").read_text() == str(64 << 20)
    assert (d / "pids.max").read_text() == "16"
    assert (d / "cpu.max").read_text() == "50000 100000"
    # The executor puts the jail in through these (tests/integration/test_sandbox_limits.py).
    fds = jail.open_dirs()
    try:
        assert [os.readlink(f"/proc/self/fd/{fd}") for fd in fds] == [str(d)]
    finally:
        for fd in fds:
            os.close(fd)
    for f in d.iterdir():  # the kernel's files go with the directory; here we remove them
        f.unlink()
    jail.remove()
    assert not d.exists()
