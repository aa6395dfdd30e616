"""Processes, CPU pinning and /proc readings shared by the benchmark modules.

Every process the benchmark starts goes through `start()`, which records it;
`stop_all()` (called on exit, on Ctrl-C and on errors) ends each one by its
process group: SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PROXY_CPU = 0  # the proxy and all its children
LOAD_CPU = 1  # load tools, nginx, and this script
CLK_TCK = os.sysconf("SC_CLK_TCK")

_started: list[subprocess.Popen] = []
_cpu_of: dict[int, int] = {}  # pid -> the CPU it was pinned to
HARNESS_NICE = -10  # this script only: it must sample on time next to 64 busy clients


class BenchError(RuntimeError):
    """Something the benchmark needs did not work; the message says what."""


def start(argv: Sequence[str], cpu: int, *, log: Path | None = None,
          stdout: int | None = None, cwd: Path | None = None,
          env: dict[str, str] | None = None, stdin: int | None = None) -> subprocess.Popen:
    """Start `argv` pinned to `cpu` (taskset, so the affinity is set before exec and
    inherited by every child), in its own process group, recorded for stop_all."""
    out = open(log, "ab") if log is not None else None  # noqa: SIM115 - closed below
    # What this script starts runs at normal priority even though the script itself
    # runs at HARNESS_NICE: `nice` undoes the difference, then exec()s taskset.
    nice = -os.getpriority(os.PRIO_PROCESS, 0)
    prefix = ["nice", "-n", str(nice)] if nice else []
    try:
        proc = subprocess.Popen(
            [*prefix, "taskset", "-c", str(cpu), *argv],
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=stdout if stdout is not None else (out or subprocess.DEVNULL),
            stderr=out or subprocess.DEVNULL,
            cwd=cwd, env=env, start_new_session=True)
    finally:
        if out is not None:
            out.close()
    _started.append(proc)
    _cpu_of[proc.pid] = cpu
    return proc


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM to the process group, wait up to `timeout`, then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    # Also whatever is left in the group (children of a proxy that ignored TERM).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    if proc in _started:
        _started.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(_started)):
        stop(proc, timeout=10.0)


def private_network() -> None:
    """Move this process (and all it starts) into a new network namespace with only `lo`,
    up: it vanishes with the last process in it, so nothing is left to remove."""
    import ctypes

    from pyroute2 import IPRoute

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        err = ctypes.get_errno()
        raise BenchError(f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            name = next((a for a in proc.args if a in ("nginx", "stunnel4", "hitch")),
                        " ".join(proc.args))
            raise BenchError(f"{name} exited with {proc.returncode} before listening "
                             f"on port {port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def run(argv: Sequence[str], timeout: float = 60.0) -> str:
    """Run a short command, return stdout+stderr (for version strings)."""
    try:
        out = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({argv[0]}: {e})"
    return (out.stdout + out.stderr).decode(errors="replace").strip()


# -- /proc readings -----------------------------------------------------------------


def cpu_times() -> dict[int, tuple[int, int, int, int]]:
    """Per CPU, in ticks: (user+nice+system, irq+softirq, steal, total) from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                t = [int(v) for v in vals[:8]]
                out[int(name[3:])] = (t[0] + t[1] + t[2], t[5] + t[6], t[7], sum(t))
    return out


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2:].split()


def proc_cpu(pid: int) -> tuple[float, float]:
    """(own utime+stime, reaped children's cutime+cstime) in seconds; zeros if gone."""
    f = _stat_fields(pid)
    if f is None:
        return 0.0, 0.0
    # fields after comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return (int(f[11]) + int(f[12])) / CLK_TCK, (int(f[13]) + int(f[14])) / CLK_TCK


def proc_faults(pid: int) -> tuple[int, int]:
    """(own minor page faults, reaped children's minor page faults)."""
    f = _stat_fields(pid)
    return (int(f[7]), int(f[8])) if f is not None else (0, 0)


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f is not None:
            kids.setdefault(int(f[1]), []).append(int(entry))
    return kids


def tree(pid: int) -> list[int]:
    """pid and all its live descendants."""
    kids = children_map()
    out, todo = [], [pid]
    while todo and len(out) < 100_000:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process tree: every live process's own time plus what it has
    reaped (a child's time moves into its parent's cutime when it is reaped)."""
    total = 0.0
    for p in tree(pid):
        own, reaped = proc_cpu(p)
        total += own + reaped
    return total


def pss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def tree_pss_kib(pid: int) -> tuple[int, int]:
    """(sum of PSS over the tree in KiB, number of processes counted)."""
    total, count = 0, 0
    for p in tree(pid):
        v = pss_kib(p)
        if v is not None:
            total += v
            count += 1
    return total, count


def load_cpu() -> float:
    """CPU seconds of everything on the load side: this process, the load tools it has
    reaped (RUSAGE_CHILDREN), and the process trees of those it has not reaped yet
    (running clients, nginx).  A tool's time moves from the second to the first when
    it is reaped, so the sum is continuous."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    live = [p.pid for p in _started if p.returncode is None and
            _cpu_of.get(p.pid) == LOAD_CPU]
    if live:
        cmap = children_map()
        for pid in live:
            todo = [pid]
            while todo:
                q = todo.pop()
                own_cpu, reaped = proc_cpu(q)
                total += own_cpu + reaped
                todo.extend(cmap.get(q, []))
    return total


@dataclass
class Sample:
    """CPU counters at one moment: per-CPU ticks, the proxy tree's and the load side's CPU."""

    when: float
    cpus: dict[int, tuple[int, int, int, int]]
    proxy_cpu: float
    load_cpu: float

    @classmethod
    def take(cls, proxy_pid: int) -> Sample:
        return cls(time.monotonic(), cpu_times(), tree_cpu(proxy_pid), load_cpu())


def usage(before: Sample, end: Sample, after: Sample | None = None) -> dict[str, float]:
    """CPU our processes used from `before` to `after` (default `end`: a proxy's clean-up
    after the test is part of its cost), shares of each core over the test itself
    (`before` to `end`), and what other processes used there (noise)."""
    after = after or end
    wall = max(end.when - before.when, 1e-9)
    out = {"proxy_cpu_s": after.proxy_cpu - before.proxy_cpu,
           "load_cpu_s": end.load_cpu - before.load_cpu}
    out["proxy_core_ours"] = (end.proxy_cpu - before.proxy_cpu) / wall
    out["load_core_ours"] = out["load_cpu_s"] / wall
    for cpu, role in ((PROXY_CPU, "proxy"), (LOAD_CPU, "load")):
        d = [a - b for a, b in zip(end.cpus[cpu], before.cpus[cpu], strict=True)]
        total = d[3] or 1
        out[f"{role}_core_busy"] = (d[0] + d[1]) / total
        out[f"{role}_core_steal"] = d[2] / total
        # Task time on the core that is not ours: other people's processes.
        out[f"{role}_core_others"] = max(0.0, d[0] / total - out[f"{role}_core_ours"])
    return out
