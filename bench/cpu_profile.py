"""Where titus's CPU goes under load, process by process, from perf samples.

run.py and breakdown.py say how much CPU each titus process takes per connection
(from /proc); this says what it is spent on.  titus runs as the benchmark runs it
(bench/proxies.py) with `--clients` s_time loops for `--seconds`, while `perf record`
samples the proxy's CPU (cpu-clock, every process and the kernel).  Each sample is
charged to a process by its pid (the supervisor, the zygote and the key holder are
known before the window; every other `python` is a worker, PID 1 of its jail; the
rest are kernel threads such as the workqueues that finish what exiting workers
leave) and, within it, to where it was: user code by shared object, kernel code by
what entered the kernel (a system call by name, a page fault, an interrupt).

    sudo .venv/bin/python bench/cpu_profile.py [--kind rsa2048] [--clients 16]
                                               [--seconds 8] [--top 12] [--keep FILE]

Needs perf (Debian's linux-perf) and what `make bench` installs.  Prints markdown:
milliseconds per connection by process and by place, and the top entries of each.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import backend  # bench/ is this script's directory
import certs
import common
import load
import proxies
import run

FREQUENCY = 2000  # samples per second of the proxy's CPU
_FRAME = re.compile(r"^\s*[0-9a-f]+\s+(\S+?)(?:\+0x[0-9a-f]+)?\s+\((.*)\)\s*$")
# How a system call's handler is named, depending on how much the compiler inlined.
_SYSCALL = re.compile(r"^(?:__x64_sys_|__do_sys_|__se_sys_|__sys_|ksys_|do_)"
                      r"([a-z_0-9]+)$")
_HEAD = re.compile(r"^\s*(\S.*?)\s+(\d+)\s")


def record(kind: str, clients: int, seconds: float, data: Path, tmp: Path
           ) -> tuple[dict[int, str], int]:
    """Run titus under load with perf recording its CPU; (known pids, connections)."""
    be = backend.start(tmp)
    try:
        cs = certs.make(kind, tmp / "certs")
        proxy = proxies.start_titus(tmp, cs, be.port)
        target = load.Target(proxy.port, cs.ca)
        load.warm_up(target)
        run.settle_titus(proxy, clients)
        known = {proxy.pid: "supervisor"}
        known.update({pid: "zygote" for pid in proxies.titus_zygotes(proxy)})
        keyholder = run.titus_keyholder(proxy)
        if keyholder is not None:
            known[keyholder] = "key holder"
        proxy.new_log_records()  # from here on, the connections perf sees
        perf = subprocess.Popen(
            ["perf", "record", "-q", "-g", "-F", str(FREQUENCY), "-C", str(common.PROXY_CPU),
             "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        try:
            load.conn_rate(target, clients, seconds, tmp)
        finally:
            perf.send_signal(2)
            perf.wait(timeout=60)
        time.sleep(0.5)  # the last records
        return known, _logged_connections(proxy)
    finally:
        common.stop_all()
        backend.cleanup(be)


def _logged_connections(proxy: proxies.Proxy) -> int:
    """Connections titus logged while perf ran (the whole load run, not only its window)."""
    return sum(1 for r in proxy.new_log_records() if r.get("event") == "connection")


def samples(data: Path) -> list[tuple[int, str, list[tuple[str, str]]]]:
    """(pid, comm, [(symbol, object)] leaf first) of every sample."""
    text = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,pid,ip,sym,dso"],
                          capture_output=True, text=True, check=True).stdout
    out = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        head = _HEAD.match(lines[0])
        if head is None:
            continue
        frames = []
        for line in lines[1:]:
            m = _FRAME.match(line)
            if m:
                frames.append((m.group(1), os.path.basename(m.group(2))))
        out.append((int(head.group(2)), head.group(1), frames))
    return out


def process_of(pid: int, comm: str, known: dict[int, str]) -> str:
    if pid in known:
        return known[pid]
    if pid == 0:
        return "idle"
    return "workers" if comm.startswith("python") else "kernel threads, others"


def place_of(frames: list[tuple[str, str]]) -> str:
    """What the sample was doing: a system call, a page fault, an interrupt, or user code."""
    symbols = [s for s, _ in frames]
    if "asm_exc_page_fault" in symbols:
        return "kernel: page faults"
    for i, sym in enumerate(symbols):
        if sym in ("do_syscall_64", "x64_sys_call"):
            for inner in reversed(symbols[:i]):  # the outermost frame that names the call
                m = _SYSCALL.match(inner)
                if m:
                    return f"kernel: {m.group(1)}()"
            return "kernel: other system calls"
    if any("irq" in s for s in symbols):
        return "kernel: interrupts"
    if frames and frames[0][1].startswith("[kernel"):
        return "kernel: other"
    obj = frames[0][1] if frames else "?"
    if re.fullmatch(r"perf-\d+[.]map", obj):
        # perf's name for code in anonymous memory: what the zygote moved into 2 MB
        # pages (sandbox/hugetext.py; titus moves libcrypto's code only).
        return "user: libcrypto.so.3 (2 MB pages)"
    return f"user: {re.sub(r'[.]cpython-.*', '', obj)}"


def report(rows: list[tuple[int, str, list[tuple[str, str]]]], known: dict[int, str],
           connections: int, top: int) -> str:
    per_conn = 1000.0 / FREQUENCY / max(connections, 1)  # ms of CPU per sample, per connection
    by_process: collections.Counter[str] = collections.Counter()
    by_place: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for pid, comm, frames in rows:
        who = process_of(pid, comm, known)
        by_process[who] += 1
        by_place[who][place_of(frames)] += 1
    busy = sum(n for who, n in by_process.items() if who != "idle")
    lines = [f"{connections} connections; {len(rows)} samples at {FREQUENCY} Hz of the "
             f"proxy's CPU, {busy / max(len(rows), 1):.0%} busy; "
             f"titus's CPU per connection {busy * per_conn:.2f} ms.", "",
             "| process | ms per connection | share of busy | where (ms per connection) |",
             "|---|---|---|---|"]
    for who, n in by_process.most_common():
        if who == "idle":
            continue
        where = ", ".join(f"{place} {m * per_conn:.3f}"
                          for place, m in by_place[who].most_common(top))
        lines.append(f"| {who} | {n * per_conn:.3f} | {n / busy:.0%} | {where} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="rsa2048", choices=certs.KEY_TYPES)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--top", type=int, default=12, help="places listed per process")
    parser.add_argument("--keep", type=Path, help="keep perf's data file here")
    args = parser.parse_args()
    if shutil.which("perf") is None:
        print("cpu_profile: perf is not installed (Debian: apt install linux-perf)",
              file=sys.stderr)
        return 2
    common.private_network()
    os.sched_setaffinity(0, {common.LOAD_CPU})
    tmp = Path(tempfile.mkdtemp(prefix="titus-cpu-profile-"))
    try:
        data = args.keep or tmp / "perf.data"
        known, connections = record(args.kind, args.clients, args.seconds, data, tmp)
        print(report(samples(data), known, connections, args.top))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
