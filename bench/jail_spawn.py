"""What a jail costs, layer by layer, on this machine (DESIGN.md §4: goal <= 2.5 ms).

Each row runs the launcher's own child-side steps (the same sandbox.libc,
rootfs, namespaces and privileges calls, in `_build_jail`'s order) in a
freshly forked child, one more layer per row, N times:

* "in child": the time the child spent in that one layer (its clock, its
  view), sent back over a pipe; for the fork rows, from just before fork()
  in the parent to the child's first instruction.
* "fork -> reaped": the whole life of the row's child as the parent sees it,
  fork to waitpid, so namespace set-up *and* teardown are in it.  The last
  rows are the real thing: `Launcher.spawn` until it returns (the jail is
  ready to run untrusted code) and `Launcher.spawn` + `wait`, jailing a
  function that returns at once.

    sudo .venv/bin/python bench/jail_spawn.py [--n 500] [--markdown]

--markdown also writes bench/JAIL_SPAWN.md.  Numbers on a shared 2-core VM
are noisy: read them as proportions.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox import fds as fdlayer
from sandbox import libc, namespaces, privileges, rootfs
from sandbox.bpf import load_bpf
from sandbox.launcher import Launcher
from sandbox.profile import load_profile
from sandbox.spec import JailSpec

GOAL_MS = 2.5


@dataclass
class Row:
    """One line of the table: samples in nanoseconds."""

    name: str
    in_child: list[int] = field(default_factory=list)
    whole: list[int] = field(default_factory=list)


def _stats(samples: list[int]) -> tuple[float, float, float] | None:
    """(mean, median, p95) in ms; the median because a shared VM's bursts skew means."""
    if not samples:
        return None
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.fmean(samples) / 1e6, statistics.median(samples) / 1e6, p95 / 1e6


# ---------------------------------------------------------------------------
# The layers, as `sandbox.launcher._build_jail` applies them


@dataclass
class Ctx:
    spec: JailSpec
    netns_fd: int
    sync: int  # child end of the id-map handshake socket
    out: int  # pipe to report timings on


def step_netns(c: Ctx) -> None:
    libc.setns(c.netns_fd, libc.CLONE_NEWNET)


def step_mountns(c: Ctx) -> None:
    libc.unshare(libc.CLONE_NEWNS)


def step_root(c: Ctx) -> None:
    rootfs.build_root(c.spec)


def step_userns(c: Ctx) -> None:
    libc.unshare(libc.CLONE_NEWUSER | libc.CLONE_NEWIPC | libc.CLONE_NEWUTS)
    os.write(c.sync, b"U")
    if os.read(c.sync, 1) != b"M":
        raise OSError("no id maps")
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    libc.sethostname(c.spec.hostname)


def step_fds(c: Ctx) -> None:
    kept, sync = fdlayer.renumber([c.out], c.sync)
    c.out, c.sync = kept[0], sync if sync is not None else -1


def step_caps(c: Ctx) -> None:
    privileges.drop_capabilities()


def step_limits(c: Ctx) -> None:
    privileges.set_no_new_privs()
    privileges.apply_rlimits(c.spec.rlimit_values(1))
    privileges.set_dumpable(False)
    privileges.set_parent_death_signal(signal.SIGKILL)


def step_seccomp(c: Ctx) -> None:
    assert c.spec.seccomp_bpf is not None
    load_bpf(c.spec.seccomp_bpf)


LAYERS: list[tuple[str, Callable[[Ctx], None]]] = [
    ("+ setns into the shared empty netns", step_netns),
    ("+ unshare mount namespace", step_mountns),
    ("+ empty read-only root (tmpfs, pivot_root)", step_root),
    ("+ user/IPC/UTS ns, id maps, setresuid", step_userns),
    ("+ fds renumbered, others closed", step_fds),
    ("+ capabilities dropped", step_caps),
    ("+ no_new_privs, rlimits, dumpable, pdeathsig", step_limits),
    ("+ seccomp: load the titus-worker BPF", step_seccomp),
]


def one_child(spec: JailSpec, netns_fd: int, layers: int, pid_ns: bool,
              pidfork: namespaces.PidNamespaceFork) -> tuple[int, list[int]]:
    """Fork one child that applies the first `layers` layers; (fork->reaped ns, per-step ns)."""
    r, w = os.pipe()
    parent_sock, child_sock = socket.socketpair()
    t0 = time.perf_counter_ns()
    pid = pidfork.fork() if pid_ns else os.fork()
    if pid == 0:
        try:
            t_start = time.perf_counter_ns()
            parent_sock.close()
            os.close(r)
            ctx = Ctx(spec, netns_fd, child_sock.detach(), w)
            times = [t_start - t0]
            for _, step in LAYERS[:layers]:
                t = time.perf_counter_ns()
                step(ctx)
                times.append(time.perf_counter_ns() - t)
            os.write(ctx.out, struct.pack(f"{len(times)}q", *times))
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(w)
    child_sock.close()
    try:
        # The parent's half of the user-namespace layer.
        if layers >= 4 and parent_sock.recv(1) == b"U":
            namespaces.write_id_maps(pid, spec.uid_range.first, spec.uid_range.first)
            parent_sock.sendall(b"M")
        data = b""
        while chunk := os.read(r, 4096):
            data += chunk
        _, status = os.waitpid(pid, 0)
        elapsed = time.perf_counter_ns() - t0
    finally:
        os.close(r)
        parent_sock.close()
    if os.waitstatus_to_exitcode(status) != 0 or not data:
        raise RuntimeError(f"bench child with {layers} layers failed: status {status}")
    return elapsed, list(struct.unpack(f"{len(data) // 8}q", data))


PASSES = 5


def measure(n: int) -> list[Row]:
    """Every row N times: in PASSES passes over all rows, each row a block of N/PASSES
    in a row.  Blocks keep one row's asynchronous namespace teardown from slowing
    the next row down; passes spread a burst of load elsewhere over all rows."""
    spec = load_profile("titus-worker").spec
    shared = namespaces.SharedEmptyNetns()
    pidfork = namespaces.PidNamespaceFork()
    variants = [("fork (a warm Python)", 0, False), ("fork into a new PID namespace", 0, True)]
    variants += [(name, i + 1, True) for i, (name, _) in enumerate(LAYERS)]
    rows = [Row(name) for name, _, _ in variants]
    ready, full = Row("Launcher.spawn until ready"), Row("Launcher.spawn + wait (whole jail)")
    launcher = Launcher()
    try:
        launcher.spawn(spec, _noop).wait(10)  # its shared netns is made once, here
        for p in range(PASSES):
            block = n // PASSES + (1 if p < n % PASSES else 0)
            for row, (_, layers, pid_ns) in zip(rows, variants, strict=True):
                for _ in range(block):
                    whole, times = one_child(spec, shared.fd, layers, pid_ns, pidfork)
                    row.in_child.append(times[layers])  # times[0]: fork -> child running
                    row.whole.append(whole)
            for _ in range(block):
                t0 = time.perf_counter_ns()
                jail = launcher.spawn(spec, _noop)
                t1 = time.perf_counter_ns()
                if jail.wait(10) != 0:
                    raise RuntimeError(f"jail failed: {jail.returncode}")
                t2 = time.perf_counter_ns()
                ready.whole.append(t1 - t0)
                full.whole.append(t2 - t0)
    finally:
        launcher.close()
        shared.close()
        pidfork.close()
    return [*rows, ready, full]


def _noop() -> None:
    pass


# ---------------------------------------------------------------------------
# Output


def _cell(samples: list[int]) -> tuple[str, ...]:
    s = _stats(samples)
    return ("", "", "") if s is None else tuple(f"{v:.3f}" for v in s)


def table(rows: list[Row], n: int) -> str:
    head = ["layer", "in child mean", "median", "p95", "fork->reaped mean", "median", "p95"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join([row.name, *_cell(row.in_child), *_cell(row.whole)]) + " |")
    full = _stats(rows[-1].whole)
    ready = _stats(rows[-2].whole)
    assert full is not None and ready is not None
    verdict = "meets" if full[0] <= GOAL_MS else "misses"
    lines += [
        "",
        f"ms, N={n} each.  Whole jail (spawn + wait): mean {full[0]:.2f}, median {full[1]:.2f}, "
        f"p95 {full[2]:.2f} ms: the mean {verdict} the {GOAL_MS} ms goal "
        f"({1000 / full[0]:.0f} jails/s one at a time); ready to run code after "
        f"{ready[0]:.2f} ms (mean).",
    ]
    return "\n".join(lines)


def machine() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    return (f"{platform.node()}: Linux {platform.release()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, load average {' '.join(load)} at the start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="samples per row (default 500)")
    parser.add_argument("--markdown", action="store_true",
                        help="also write bench/JAIL_SPAWN.md")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("jail_spawn: needs root", file=sys.stderr)
        return 2
    where = machine()
    start = time.monotonic()
    rows = measure(max(1, args.n))
    text = table(rows, args.n)
    print(where)
    print(text)
    print(f"({time.monotonic() - start:.0f} s)")
    if args.markdown:
        out = Path(__file__).with_name("JAIL_SPAWN.md")
        out.write_text(
            "# Jail spawn cost\n\n"
            "Measured by `bench/jail_spawn.py --markdown` (see its docstring for what each "
            "column means).\n\n"
            f"{where}.\n\n{text}\n"
        )
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
