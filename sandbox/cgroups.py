"""Per-jail cgroups: memory, pids and cpu limits, through cgroup v2 or v1.

Detected at start-up per controller, as nsjail does: a controller enabled in
the unified (v2) hierarchy is used there, else its own v1 hierarchy (this
machine: v1 memory, pids, cpu; v2 mounted with no controllers).

Each jail gets its own cgroup, named after its host uid (unique host-wide,
sandbox.uids), below the cgroup of the process that starts it:

- created by the parent before the jail runs anything of its own;
- the parent puts the jail's PID 1 in it while the child waits for its id maps
  (the executor writes the pid to each directory's cgroup.procs: spawn.c,
  attach_cgroups), so everything the jail ever forks is inside (and counted by
  pids.max: a fork bomb stops there);
- removed after the jail's PID 1 was reaped (its PID namespace is gone, so the
  cgroup is empty).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
_RMDIR_TRIES = 50  # x 10 ms: the kernel frees an exited cgroup asynchronously


@dataclass(frozen=True)
class Limits:
    """What a jail's cgroup enforces; None: no limit of that kind."""

    memory: int | None = None  # bytes, no swap beyond it
    pids: int | None = None  # processes and threads, all of the jail's
    cpus: float | None = None  # CPUs' worth of time per period, e.g. 0.5

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.memory, self.pids, self.cpus))

    def needs(self) -> list[str]:
        return [c for c, v in zip(CONTROLLERS, (self.memory, self.pids, self.cpus),
                                  strict=True) if v is not None]


@dataclass(frozen=True)
class Hierarchy:
    """Where one controller lives: a v2 unified mount or its v1 mount, and our place in it."""

    controller: str
    version: int
    mount: Path
    own: str  # the starting process's cgroup in it ("/" or "/a/b")

    @property
    def base(self) -> Path:
        return self.mount / self.own.lstrip("/")


def _mounts(mountinfo: str) -> tuple[Path | None, dict[str, Path]]:
    """(the v2 mount, {controller: v1 mount}) from /proc/self/mountinfo text."""
    v2, v1 = None, {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line:
            continue
        after = line.split(" - ", 1)[1].split()
        point = Path(fields[4])
        if after[0] == "cgroup2" and v2 is None:
            v2 = point
        elif after[0] == "cgroup":
            for option in after[2].split(","):
                if option in CONTROLLERS:
                    v1.setdefault(option, point)
    return v2, v1


def _own(proc_cgroup: str) -> dict[str, str]:
    """{controller or "" for v2: path} from /proc/self/cgroup text."""
    out = {}
    for line in proc_cgroup.splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(",") if names else [""]:
            out[name] = path
    return out


def detect(mountinfo: str | None = None, proc_cgroup: str | None = None
           ) -> dict[str, Hierarchy]:
    """Each usable controller's hierarchy, v2 preferred where it has the controller."""
    mountinfo = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    proc_cgroup = proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()
    v2, v1 = _mounts(mountinfo)
    own = _own(proc_cgroup)
    found: dict[str, Hierarchy] = {}
    if v2 is not None and "" in own:
        try:
            enabled = (v2 / "cgroup.controllers").read_text().split()
        except OSError:
            enabled = []
        for c in CONTROLLERS:
            if c in enabled:
                found[c] = Hierarchy(c, 2, v2, own[""])
    for c, mount in v1.items():
        if c not in found and c in own:
            found[c] = Hierarchy(c, 1, mount, own[c])
    return found


class JailCgroup:
    """The cgroup(s) of one jail: created with its limits, joined by its PID 1, removed."""

    def __init__(self, name: str, limits: Limits,
                 hierarchies: dict[str, Hierarchy] | None = None) -> None:
        found = detect() if hierarchies is None else hierarchies
        missing = [c for c in limits.needs() if c not in found]
        if missing:
            raise OSError(errno.ENOTSUP, f"no cgroup controller {', '.join(missing)} "
                          "(neither in cgroup v2 nor mounted as v1)")
        # controller -> (its hierarchy, the jail's directory there); v2 shares one.
        self.paths: dict[str, tuple[Hierarchy, Path]] = {}
        self.dirs: list[Path] = []
        try:
            for c in limits.needs():
                h = found[c]
                path = h.base / name
                if path not in self.dirs:
                    self._make(h, path)
                    self.dirs.append(path)
                self.paths[c] = (h, path)
            self._limit(limits)
        except BaseException:
            self.remove()
            raise

    @staticmethod
    def _make(h: Hierarchy, path: Path) -> None:
        if path.exists():  # left by a crashed starter of an earlier jail with this uid
            with contextlib.suppress(OSError):
                path.rmdir()
        if h.version == 2:
            # The jail's controllers must be enabled in its parent's subtree.
            have = (h.base / "cgroup.controllers").read_text().split()
            _write(h.base / "cgroup.subtree_control",
                   " ".join(f"+{c}" for c in CONTROLLERS if c in have))
        path.mkdir(mode=0o755)

    def _set(self, controller: str, v2: str, v1: str, value: str) -> None:
        h, path = self.paths[controller]
        _write(path / (v2 if h.version == 2 else v1), value)

    def _limit(self, limits: Limits) -> None:
        if limits.memory is not None:
            self._set("memory", "memory.max", "memory.limit_in_bytes", str(limits.memory))
            h, path = self.paths["memory"]
            swap = path / ("memory.swap.max" if h.version == 2 else "memory.memsw.limit_in_bytes")
            if swap.exists():  # no swapping past the limit where swap is accounted
                _write(swap, "0" if h.version == 2 else str(limits.memory))
        if limits.pids is not None:
            self._set("pids", "pids.max", "pids.max", str(limits.pids))
        if limits.cpus is not None:
            quota = max(1000, int(limits.cpus * CPU_PERIOD_US))
            h, path = self.paths["cpu"]
            if h.version == 2:
                _write(path / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            else:
                _write(path / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(path / "cpu.cfs_quota_us", str(quota))

    def open_dirs(self) -> list[int]:
        """An fd per cgroup directory, for the executor to put the jail's PID 1 in
        (the caller closes them)."""
        fds: list[int] = []
        try:
            for path in self.dirs:
                fds.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def remove(self) -> None:
        """Remove the (empty) cgroups; retried briefly while the kernel lets go of them."""
        for path in self.dirs:
            for _ in range(_RMDIR_TRIES):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise
                    time.sleep(0.01)
        self.dirs = []


def for_jail(name: str, memory: int | None, pids: int | None, cpus: float | None
             ) -> JailCgroup | None:
    """The cgroup of a jail named `name` (unique host-wide: its uid) when it has any
    limit, else None.  Raises OSError."""
    limits = Limits(memory, pids, cpus)
    return JailCgroup(name, limits) if limits else None


def _write(path: Path, text: str) -> None:
    """Write a control file.  (O_CREAT: cgroupfs refuses to create one that the kernel
    did not make, so a typo still fails; a plain directory stands in for it in tests.)"""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
