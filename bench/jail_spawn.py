"""What a jail costs on this machine, layer by layer, and what `sandbox run` costs
next to bubblewrap (issue 12's targets: <= 0.3 ms CPU in the child from the clone to
the entry point, <= 0.3 ms in the parent; `sandbox run` <= 20 ms, aim <= 2x bwrap).

1. The titus worker's jail (policies/titus-worker.toml, plus `write` for the timings
   record) around a native entry that returns at once: the shape of titus's C worker.
   The executor records the child's thread CPU clock when it starts and after every step
   (Launcher.timings), so each layer's CPU is the sum of its steps, and "clone -> entry
   point" is the child's clock at the entry: everything it ran since the clone, kernel
   work and copy-on-write faults included.  The parent's cost is the spawning thread's
   CPU clock around the spawn (clone, id maps, waiting for ready: blocked time is not
   CPU).  Made by a raw clone, as the zygote (a fork server) does, and by glibc's fork,
   as a multithreaded caller does; then a Python function for comparison.
2. The alternative the executor did not take: CLONE_NEWUSER at clone time.
3. The same jails from a fork server (sandbox/forkserver.py, as titus's zygote makes
   its workers): the server's CPU per spawn (its scheduler clock, so in ns), the
   caller's, the wall from request to reply, and what the server's own writes
   after each clone cost the jail it made: its private dirty memory while it
   holds (copy-on-write copies of the pages the server wrote next).
4. `sandbox run --profile bench/profiles/true.toml -- /bin/true` (from its plan
   cache, as every run after the first) against `bwrap --unshare-all` with the same
   read-only binds, interleaved, and the interpreter's own start as the floor.

    sudo .venv/bin/python bench/jail_spawn.py [--n 400] [--runs 41] [--markdown]
                                              [--only jails|userns|forkserver|run]

--markdown writes bench/JAIL_SPAWN.md and its section of bench/RESULTS.md.  The
machine is shared: CPU clocks, medians and the load are reported; read wall times
as proportions.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox import _jail, libc  # noqa: E402
from sandbox.launcher import Launcher  # noqa: E402
from sandbox.plan import MODE_CALL, MODE_ENTRY, Plan  # noqa: E402
from sandbox.profile import load_profile  # noqa: E402
from sandbox.spec import IpcMode, NetworkMode, UidRange  # noqa: E402

TARGET_MS = 0.3
RUN_TARGET_MS = 20.0
PROFILE = ROOT / "bench" / "profiles" / "true.toml"
BINDS = ["/usr", "/lib", "/lib64", "/bin"]


def ms(ns: float) -> float:
    return ns / 1e6


def stats(values: list[float]) -> tuple[float, float, float]:
    """(mean, median, p95) of values in ms."""
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.fmean(values), statistics.median(values), p95


def row(name: str, values: list[float], extra: str = "") -> str:
    mean, median, p95 = stats(values)
    return f"| {name} | {mean:.3f} | {median:.3f} | {p95:.3f} |{extra}"


class Busy:
    """How busy the machine's CPUs were while a part ran: in all, and by others than us
    (this process and everything it reaped)."""

    def __init__(self) -> None:
        self.start, self.ours = self._read(), self._ours()

    @staticmethod
    def _read() -> tuple[int, int, int]:
        """(ticks busy, of them steal: the hypervisor's, ticks in all), all CPUs."""
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, fields[7], sum(fields)

    @staticmethod
    def _ours() -> float:
        return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                     resource.getrusage(resource.RUSAGE_CHILDREN)))

    def words(self) -> str:
        busy, steal, total = self._read()
        ticks = os.sysconf("SC_CLK_TCK")
        all_cpu = (busy - self.start[0]) / ticks
        stolen = (steal - self.start[1]) / ticks
        capacity = (total - self.start[2]) / ticks
        others = max(0.0, all_cpu - stolen - (self._ours() - self.ours))
        return (f"the machine's CPUs were {100 * all_cpu / capacity:.0f}% busy meanwhile, "
                f"{100 * others / capacity:.0f}% by other processes, "
                f"{100 * stolen / capacity:.0f}% taken by the hypervisor (steal time: "
                f"over a few percent, every number here is inflated)")


def spawn_raw(launcher: Launcher, spec, plan: Plan, how: int, entry: object
              ) -> tuple[int, tuple[int, ...]]:
    """One jail by the executor directly (no Launcher bookkeeping); (parent CPU ns, times)."""
    slots = launcher._slots(spec, plan)
    uid = spec.uid_range.first
    uid_map, gid_map = plan.id_maps(uid, uid)
    t0 = time.thread_time_ns()
    result = _jail.spawn(plan.native, plan.mode, how=how, slots=slots, keep=[],
                         uid_map=uid_map, gid_map=gid_map, entry=entry, timings=True)
    if result is None:  # a Python function's jail (MODE_CALL): back in Python, done
        os._exit(0)
    spent = time.thread_time_ns() - t0
    pid, error, _, times, _ = result
    _, status = os.waitpid(pid, 0)
    if error is not None or os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"bench jail failed: {error} {status}")
    return spent, times


def _fork_cost() -> int:
    """Parent CPU ns of os.fork() alone (the child exits at once)."""
    t0 = time.thread_time_ns()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    spent = time.thread_time_ns() - t0
    os.waitpid(pid, 0)
    return spent


def per_layer(plan: Plan, samples: list[tuple[int, ...]]) -> dict[str, list[float]]:
    """CPU ms per layer per sample (steps summed), plus the clone's share."""
    out: dict[str, list[float]] = {"clone -> first step": [ms(t[0]) for t in samples]}
    for name in plan.layers:
        out[name] = []
    for t in samples:
        sums = dict.fromkeys(plan.layers, 0)
        for i, s in enumerate(plan.steps):
            sums[s.layer] += t[i + 1] - t[i]
        for name, v in sums.items():
            out[name].append(ms(v))
    out["whole child: clone -> entry point"] = [ms(t[-1]) for t in samples]
    return out


def timed_worker_spec():
    """The worker's jail whose filter also allows `write`: with timings the executor
    writes the per-step times to its parent after the last step (seccomp), and the
    worker's own policy has only sendto.  One more allowed syscall: the same cost."""
    from sandbox.rules import Rule, SeccompPolicy
    from sandbox.seccomp import compile_policy

    worker = load_profile("titus-worker")
    policy = worker.policy
    assert isinstance(policy, SeccompPolicy)
    timed = replace(policy, rules=(*policy.rules, Rule("write", "allow")))
    return replace(worker.spec, seccomp_bpf=compile_policy(timed))


def measure_jails(n: int) -> list[str]:
    spec = timed_worker_spec()
    spec = replace(spec, uid_range=UidRange(3_900_000 + (os.getpid() % 4096) * 16, 16))
    launcher = Launcher()
    entry = _jail.entry("exit")
    lines = []
    try:
        plan = launcher.plan(spec, MODE_ENTRY)
        call_plan = launcher.plan(spec, MODE_CALL)
        for _ in range(20):  # the shared netns and root are built once, here
            spawn_raw(launcher, spec, plan, _jail.HOW_CLONE, entry)
        busy = Busy()
        clone_parent, clone_child, fork_parent, fork_child, call_parent, call_child = (
            [], [], [], [], [], [])
        whole, launcher_parent, fork_only = [], [], []
        for _ in range(n):
            p, t = spawn_raw(launcher, spec, plan, _jail.HOW_CLONE, entry)
            clone_parent.append(ms(p))
            clone_child.append(t)
            p, t = spawn_raw(launcher, spec, plan, _jail.HOW_FORK, entry)
            fork_parent.append(ms(p))
            fork_child.append(t)
            p, t = spawn_raw(launcher, spec, call_plan, _jail.HOW_FORK, None)
            call_parent.append(ms(p))
            call_child.append(t)
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            jail = launcher.spawn(spec, entry)
            launcher_parent.append(ms(time.thread_time_ns() - c0))
            jail.wait(10)
            whole.append(ms(time.perf_counter_ns() - t0))
            fork_only.append(ms(_fork_cost()))
        load = busy.words()
        layers = per_layer(plan, clone_child)
        total = stats(layers["whole child: clone -> entry point"])
        parent = stats(clone_parent)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        lines += [
            f"The titus worker's jail (titus-worker.toml, {len(plan.steps)} steps) around a "
            f"native entry that returns at once, N={n} each, the parent a {rss:.0f} MB "
            f"Python; {load}.",
            "",
            "| child CPU by layer (raw clone, as the zygote), ms | mean | median | p95 |",
            "|---|---|---|---|",
        ]
        lines += [row(name, values) for name, values in layers.items()]
        lines += [
            "",
            "| per jail, ms | mean | median | p95 |",
            "|---|---|---|---|",
            row("child CPU, clone -> entry point: raw clone (the zygote's way)",
                [ms(t[-1]) for t in clone_child]),
            row("child CPU, clone -> entry point: glibc fork (a threaded caller)",
                [ms(t[-1]) for t in fork_child]),
            row("child CPU, clone -> back in Python (spawn of a function)",
                [ms(t[-1]) for t in call_child]),
            row("parent CPU, raw clone + id maps + ready (_jail.spawn)", clone_parent),
            row("parent CPU, glibc fork + id maps + ready", fork_parent),
            row("parent CPU, the same for a Python function (CPython's fork duties)",
                call_parent),
            row("parent CPU, Launcher.spawn (what a fork server calls; glibc fork)",
                launcher_parent),
            row("for scale: parent CPU of a bare os.fork() of the same process", fork_only),
            row("wall, Launcher.spawn + wait of the whole jail", whole),
            "",
            f"Target: child <= {TARGET_MS} ms: {'met' if total[1] <= TARGET_MS else 'missed'} "
            f"(median {total[1]:.3f}, mean {total[0]:.3f}).  The parent's target is the "
            f"zygote's (below, from a fork server); this process is no zygote: its whole "
            f"{rss:.0f} MB of Python is cloned (median {parent[1]:.3f} ms).",
        ]
    finally:
        launcher.close()
    return lines


def measure_userns_at_clone(n: int) -> list[str]:
    """The same jail minus what a jail born in its own user namespace cannot do (join the
    host-owned shared netns, IPC namespace and root): the user namespace by unshare() after
    the clone, as the executor does, against CLONE_NEWUSER|NEWIPC|NEWUTS in the clone."""
    spec = replace(timed_worker_spec(), network=NetworkMode.HOST, ipc=IpcMode.NEW,
                   empty_root=False, uid_range=UidRange(3_950_000 + (os.getpid() % 4096), 1))
    launcher = Launcher()
    entry = _jail.entry("exit")
    try:
        ours = launcher.plan(spec, MODE_ENTRY)
        flags = libc.CLONE_NEWUSER | libc.CLONE_NEWIPC | libc.CLONE_NEWUTS
        alt = Plan([s for s in ours.steps if s.layer != "user-namespace"],
                   ours.clone_flags | flags, ours.slots, ours.mode)
        samples: dict[str, tuple[list[float], list[float]]] = {"unshare": ([], []),
                                                                 "clone": ([], [])}
        for _ in range(n):
            for name, plan in (("unshare", ours), ("clone", alt)):
                p, t = spawn_raw(launcher, spec, plan, _jail.HOW_CLONE, entry)
                samples[name][0].append(ms(t[-1]))
                samples[name][1].append(ms(p))
    finally:
        launcher.close()
    return [
        "| user namespace (no shared netns or root), ms | child mean | child median | "
        "parent mean | parent median |",
        "|---|---|---|---|---|",
        *(f"| {label} | {stats(c)[0]:.3f} | {stats(c)[1]:.3f} | {stats(p)[0]:.3f} | "
          f"{stats(p)[1]:.3f} |" for label, (c, p) in (
              ("unshare(USER, IPC, UTS) after the clone (the executor)", samples["unshare"]),
              ("CLONE_NEWUSER, NEWIPC, NEWUTS in the clone", samples["clone"]))),
    ]


def fork_server_recipes(spec) -> dict:
    """The fork server's setup (bench/jail_spawn.py:fork_server_recipes): native entries
    in the titus worker's jail, one that leaves at once and one that holds fd 0 (read(2):
    not in the worker's seccomp policy, so that one has none)."""
    from sandbox.forkserver import Recipe

    return {"exit": Recipe(spec, _jail.entry("exit")),
            "hold": Recipe(replace(spec, seccomp_bpf=None), _jail.entry("hold"))}


def _sched_ns(pid: int) -> int:
    """CPU time of process `pid` in ns (its main thread's scheduler clock: it has one)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def _rollup(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        out[key] = int(value.split()[0])
    return out


def measure_fork_server(n: int, held: int = 100) -> list[str]:
    """Jails from a fork server: the server's and the caller's CPU per spawn, the wall,
    and the private memory of jails that hold (what the server dirtied after each)."""
    import select
    import socket

    from sandbox.forkserver import ForkServer

    spec = load_profile("titus-worker").spec
    spec = replace(spec, uid_range=UidRange(2_000_000 + (os.getpid() % 4096) * 256, 256))
    server = ForkServer("bench.jail_spawn:fork_server_recipes", spec)
    server.start()
    launcher = Launcher()
    uids = launcher.uids(spec.uid_range)

    def spawn(name: str, fds: list[int]) -> int:
        uid = uids.allocate()
        server.request(name, uid, fds)
        while True:
            select.select([server], [], [], 10)
            replies = server.replies()
            if replies is None:
                raise RuntimeError("the fork server died")
            if replies:
                (reply,) = replies
                if reply.error is not None:
                    raise RuntimeError(f"bench jail failed: {reply.error}")
                launcher.adopt(reply.pid, uid, name, spec.uid_range)
                return reply.pid

    try:
        for _ in range(20):  # the shared netns and root, the server's first faults
            launcher.reaped(pid := spawn("exit", []), os.waitpid(pid, 0)[1])
        busy = Busy()
        server_ms, caller_ms, wall_ms = [], [], []
        for _ in range(n):
            s0, c0, t0 = _sched_ns(server.pid), time.thread_time_ns(), time.perf_counter_ns()
            pid = spawn("exit", [])
            wall_ms.append(ms(time.perf_counter_ns() - t0))
            caller_ms.append(ms(time.thread_time_ns() - c0))
            server_ms.append(ms(_sched_ns(server.pid) - s0))
            launcher.reaped(pid, os.waitpid(pid, 0)[1])
        load = busy.words()
        holders = []
        try:
            for _ in range(held):
                ours, theirs = socket.socketpair()
                holders.append((ours, spawn("hold", [theirs.fileno()])))
                theirs.close()
            rollups = [_rollup(pid) for _, pid in holders]
        finally:
            for ours, pid in holders:
                ours.close()
                launcher.reaped(pid, os.waitpid(pid, 0)[1])
        server_rss = _rollup(server.pid)["Rss"]
    finally:
        server.close()
        launcher.close()
    dirty = [float(r["Private_Dirty"]) for r in rollups]
    pss = [float(r["Pss"]) for r in rollups]
    return [
        f"The same jail (a native entry) from a fork server (sandbox/forkserver.py, as "
        f"titus's zygote; RSS {server_rss} kB), N={n}; {load}.",
        "",
        "| per jail from a fork server | mean | median | p95 |",
        "|---|---|---|---|",
        row("server CPU per spawn, ms", server_ms),
        row("caller CPU per spawn (request, reply), ms", caller_ms),
        row("wall, request -> reply, ms", wall_ms),
        row(f"private dirty kB of a jail that holds ({held} held)", dirty),
        row(f"PSS kB of a jail that holds ({held} held)", pss),
        "",
        f"Target: the zygote's side (its clone, id maps, ready: the server's CPU per spawn) "
        f"<= {TARGET_MS} ms: {'met' if statistics.median(server_ms) <= TARGET_MS else 'missed'} "
        f"(median {statistics.median(server_ms):.3f}, mean {statistics.mean(server_ms):.3f}).",
    ]


def run_once(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall ms, CPU ms of the process and everything it reaped)."""
    t0 = time.perf_counter()
    pid = os.posix_spawn(cmd[0], cmd, env)
    _, status, usage = os.wait4(pid, 0)
    wall = (time.perf_counter() - t0) * 1e3
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {status}")
    return wall, (usage.ru_utime + usage.ru_stime) * 1e3


def measure_run(runs: int) -> list[str]:
    python = str(ROOT / ".venv" / "bin" / "python")
    sandbox = str(ROOT / ".venv" / "bin" / "sandbox")
    bwrap = shutil.which("bwrap")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # A cache of its own (root's, 0700, as `sandbox run` demands): the first run compiles.
    env["SANDBOX_CACHE_DIR"] = tempfile.mkdtemp(prefix="jail-spawn-cache-")
    subprocess.run([python, "-m", "compileall", "-q", str(ROOT / "sandbox")], check=True,
                   stdout=subprocess.DEVNULL)
    commands = {
        "`sandbox run --profile bench/profiles/true.toml -- /bin/true`":
            [sandbox, "run", "--profile", str(PROFILE), "--", "/bin/true"],
        "`bwrap --unshare-all` + the same read-only binds, `/bin/true`":
            [bwrap or "/usr/bin/bwrap", "--unshare-all",
             *[a for b in BINDS for a in ("--ro-bind", b, b)], "/bin/true"],
        "`python -c pass` (the venv's interpreter: its start alone)": [python, "-c", "pass"],
        "`python -S -c pass` (no site)": [python, "-S", "-c", "pass"],
    }
    if bwrap is None:
        del commands[next(k for k in commands if "bwrap" in k)]
    try:
        return _measure_run(runs, commands, env)
    finally:
        shutil.rmtree(env["SANDBOX_CACHE_DIR"], ignore_errors=True)


def _measure_run(runs: int, commands: dict[str, list[str]], env: dict[str, str]) -> list[str]:
    bwrap = next((cmd[0] for name, cmd in commands.items() if "bwrap" in name), None)
    first = run_once(commands[next(iter(commands))], env)  # compiles and caches the plan
    for cmd in commands.values():
        run_once(cmd, env)
    results: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in commands}
    busy = Busy()
    for _ in range(runs):
        for name, cmd in commands.items():
            wall, cpu = run_once(cmd, env)
            results[name][0].append(wall)
            results[name][1].append(cpu)
    load = busy.words()
    lines = [
        f"{runs} runs of each, interleaved; {load}.  CPU: the process and everything it "
        "reaped.",
        "",
        "| command | wall median, ms | wall p95 | CPU median, ms |",
        "|---|---|---|---|",
    ]
    for name, (walls, cpus) in results.items():
        _, wmed, wp95 = stats(walls)
        lines.append(f"| {name} | {wmed:.1f} | {wp95:.1f} | {statistics.median(cpus):.1f} |")
    sandbox_med = statistics.median(results[next(iter(results))][0])
    lines += ["", f"`sandbox run` with its plan not yet cached (the first run): "
              f"{first[0]:.1f} ms wall, {first[1]:.1f} ms CPU."]
    if bwrap is not None:
        bwrap_med = statistics.median(next(v for k, v in results.items() if "bwrap" in k)[0])
        lines.append(
            f"`sandbox run`: median {sandbox_med:.1f} ms against the {RUN_TARGET_MS:.0f} ms "
            f"target ({'met' if sandbox_med <= RUN_TARGET_MS else 'missed'}); "
            f"{sandbox_med / bwrap_med:.1f}x bwrap (aim: 2x).")
    return lines


def machine() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    return (f"{platform.node()}: {cpu.group(1) if cpu else '?'}, {os.cpu_count()} CPUs, "
            f"Linux {platform.release()}, Python {platform.python_version()}, load average "
            f"{' '.join(load)} at the start")


def write_markdown(text: str) -> None:
    """bench/JAIL_SPAWN.md, and the same section in bench/RESULTS.md (report.py keeps
    it when `make bench` re-renders that file)."""
    import report

    report.JAIL_SPAWN.write_text(f"# Jail spawn cost\n\n{text}\n")
    results = Path(__file__).with_name("RESULTS.md")
    old = results.read_text() if results.exists() else ""
    section = "\n".join(report.jail_section())
    start = old.find(report.JAIL_HEADING)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + section
    else:
        end = old.find("\n## ", start + 1)
        new = old[:start] + section + ("" if end < 0 else old[end:])
    results.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400, help="jails per row (default 400)")
    parser.add_argument("--runs", type=int, default=41, help="runs per command (default 41)")
    parser.add_argument("--only", choices=("jails", "userns", "forkserver", "run"),
                        help="measure one part (no --markdown)")
    parser.add_argument("--markdown", action="store_true",
                        help="write bench/JAIL_SPAWN.md and the jail section of RESULTS.md")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("jail_spawn: needs root", file=sys.stderr)
        return 2
    started = time.monotonic()
    where = machine()
    measures = {"jails": lambda: measure_jails(max(1, args.n)),
                "userns": lambda: measure_userns_at_clone(max(1, args.n // 2)),
                "forkserver": lambda: measure_fork_server(max(1, args.n)),
                "run": lambda: measure_run(max(1, args.runs))}
    if args.only:
        args.markdown = False
        measures = {args.only: measures[args.only]}
    parts = [f"Measured by `bench/jail_spawn.py` in one run; {where}."]
    for measure in measures.values():
        parts += ["", *measure()]
    end_load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    parts += ["", f"Load average at the end: {end_load}; the whole run took "
              f"{time.monotonic() - started:.0f} s."]
    text = "\n".join(parts)
    print(text)
    if args.markdown:
        write_markdown(text)
        print("wrote bench/JAIL_SPAWN.md and bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
