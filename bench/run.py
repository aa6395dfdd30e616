"""What does titus's isolation cost? titus against stunnel4 and hitch, same backend, same keys.

    make bench                                   # full run (~12 minutes)
    .venv/bin/python bench/run.py --quick        # ~3 minutes, 1 round, 2 s windows
    .venv/bin/python bench/run.py --help

Runs as root on a machine with at least 2 CPUs: every proxy (and all its
children) on CPU 0, nginx, the load tools and this script on CPU 1.  Writes
bench/RESULTS.md (tables) and bench/results.json (every raw number).  See
bench/README.md for what each test measures.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import backend
import certs
import common
import load
import proxies
import report

from sandbox.uids import process_uid

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TOOLS = ("openssl", "curl", "wrk", "nginx", "stunnel4", "hitch", "taskset")
# "no-clienthello": a TCP connection closed before any TLS (wrk opens one to check
# the address before its test); titus logs it as handshake-failed.
EXPECTED_OUTCOMES = {"ok", "client-reset", "no-clienthello"}
THINK_MS = 10


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


class Deadline:
    def __init__(self, minutes: float) -> None:
        self.end = time.monotonic() + minutes * 60

    def passed(self) -> bool:
        return time.monotonic() > self.end


# -- one measured test ----------------------------------------------------------------


def measure(proxy: proxies.Proxy, fn: Callable[[Callable[[], common.Sample]], dict[str, Any]]
            ) -> dict[str, Any]:
    """Run one test against one proxy with CPU counters around it (and titus's log)."""
    if not proxy.alive():
        return {"errors": [f"{proxy.name} is not running (exit {proxy.proc.returncode})"]}
    if proxy.name == "titus":
        proxy.new_log_records()  # skip what earlier tests left
    before = common.Sample.take(proxy.pid)
    try:
        res = fn(lambda: common.Sample.take(proxy.pid))
    except Exception as e:  # a failed test is a result, not the end of the run
        res = {"errors": [f"{type(e).__name__}: {e}"]}
    end = common.Sample.take(proxy.pid)
    after = None
    if proxy.name == "titus":
        # Its workers are reaped and its spares replaced after the clients are gone: that
        # is part of the test's CPU (and must not run during the next proxy's test), and
        # only then are all the test's connections in the log.
        settle_titus(proxy, 16, timeout=10)
        after = common.Sample.take(proxy.pid)
    res.update(common.usage(before, end, after))
    res["wall_s_measured"] = end.when - before.when
    if "window" in res:  # a rate measured over its own window: CPU over the same window
        res.update(res.pop("window"))
        res["wall_s_measured"] = res["window_s"]
    if proxy.name == "titus":
        res["titus"] = titus_log_summary(proxy.new_log_records())
    if not proxy.alive():
        res.setdefault("errors", []).append(
            f"{proxy.name} exited during the test with {proxy.proc.returncode}")
    return res


def titus_log_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    outcomes: collections.Counter[str] = collections.Counter()
    events: collections.Counter[str] = collections.Counter()
    unexpected: list[dict[str, Any]] = []
    hs, dur = [], []
    for r in records:
        if r.get("event") == "connection":
            outcome = str(r.get("outcome"))
            if outcome == "handshake-failed" and \
                    r.get("detail") == "client closed before its ClientHello":
                outcome = "no-clienthello"
            outcomes[outcome] += 1
            if r.get("handshake_ms") is not None:
                hs.append(float(r["handshake_ms"]))
            if r.get("duration_ms") is not None:
                dur.append(float(r["duration_ms"]))
            if outcome not in EXPECTED_OUTCOMES and len(unexpected) < 5:
                unexpected.append(r)
        else:
            events[str(r.get("event"))] += 1
            if r.get("level") in ("WARNING", "ERROR", "CRITICAL") and len(unexpected) < 10:
                unexpected.append(r)
    return {"connections": sum(outcomes.values()), "outcomes": dict(outcomes),
            "events": dict(events), "unexpected": unexpected,
            "handshake_ms": report.percentiles(hs), "duration_ms": report.percentiles(dur)}


# -- the tests ------------------------------------------------------------------------


Test = Callable[[load.Target, Callable[[], common.Sample]], dict[str, Any]]


def tests(tmp: Path, be: backend.Backend, upload_src: Path, seconds: float, repeats: int
          ) -> list[tuple[str, Test]]:
    return [
        ("conn_c16", lambda t, sample: load.conn_rate(t, 16, seconds, tmp, sample)),
        ("conn_c64", lambda t, sample: load.conn_rate(t, 64, seconds, tmp, sample)),
        ("download_1", lambda t, _: load.download(t, 1, backend.BIG_SIZE, repeats)),
        ("download_8", lambda t, _: load.download(t, 8, backend.BIG_SIZE)),
        ("upload_1", lambda t, _: load.upload(t, upload_src, be.upload_file, repeats)),
        ("latency_paced", lambda t, _: load.wrk(t, 16, seconds, tmp, think_ms=THINK_MS)),
        ("latency_max", lambda t, _: load.wrk(t, 16, seconds, tmp)),
    ]


def probe(proxy: proxies.Proxy, target: load.Target) -> dict[str, Any]:
    """What each proxy negotiates with a default client, and whether it resumes."""
    out = subprocess.run(
        ["taskset", "-c", str(common.LOAD_CPU), "openssl", "s_client", "-brief",
         "-connect", f"{load.HOST}:{target.port}", "-CAfile", str(target.ca)],
        input=b"", capture_output=True, timeout=20, check=False)
    text = (out.stdout + out.stderr).decode(errors="replace")
    res: dict[str, Any] = {}
    for key in ("Protocol version", "Ciphersuite", "Signature type", "Server Temp Key",
                "Verification"):
        for line in text.splitlines():
            if line.startswith(key + ":"):
                res[key] = line.split(":", 1)[1].strip()
    res.update(load.resumption_probe(target))
    if proxy.name == "titus":
        proxy.new_log_records()
    return res


def idle_memory(proxy: proxies.Proxy, target: load.Target, count: int) -> dict[str, Any]:
    """(PSS with `count` idle TLS connections open - PSS idle) / count."""
    if not proxy.alive():
        return {"errors": [f"{proxy.name} is not running"]}
    if proxy.name == "titus":
        settle_titus(proxy, 16)
    else:
        time.sleep(1)
    idle, n_idle = common.tree_pss_kib(proxy.pid)
    with load.HeldConnections(target, count) as held:
        opened = len(held.socks)
        if proxy.name == "titus":
            proxies.wait_titus_spares(proxy, opened + 16, timeout=20)
        time.sleep(1.5)
        busy, n_busy = common.tree_pss_kib(proxy.pid)
        errors = list(held.errors)
    res = {"connections": opened, "pss_idle_kib": idle, "pss_busy_kib": busy,
           "processes_idle": n_idle, "processes_busy": n_busy,
           "per_conn_kib": (busy - idle) / opened if opened else None, "errors": errors}
    if proxy.name == "titus":
        time.sleep(0.5)
        res["titus"] = titus_log_summary(proxy.new_log_records())
    return res


def settle_titus(proxy: proxies.Proxy, spares: int, timeout: float = 15) -> None:
    """Wait until titus is back to the key holder and `spares` idle workers, and its CPU
    time stops growing (the last spawns and log records are done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(proxies.titus_workers(proxy)) == spares + 1:
            break
        time.sleep(0.05)
    last = common.tree_cpu(proxy.pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = common.tree_cpu(proxy.pid)
        if now - last < 0.005:
            break
        last = now


def titus_breakdown(proxy: proxies.Proxy, target: load.Target, conf: Path, tmp: Path,
                    seconds: float, quick: bool, costs: bool = True) -> dict[str, Any]:
    """Titus only: CPU per connection by process (1 client, in vivo) + titus_costs.py."""
    res: dict[str, Any] = {}
    if proxy.alive():
        settle_titus(proxy, 16)
        kh = titus_keyholder(proxy)
        proxy.new_log_records()
        sup0, flt0 = common.proc_cpu(proxy.pid), common.proc_faults(proxy.pid)
        kh0 = common.proc_cpu(kh)[0] if kh else 0.0
        live0 = _live_workers_cpu(proxy, kh)
        zyg0 = _zygotes_cpu(proxy)
        t0 = time.monotonic()
        rate = load.conn_rate(target, 1, seconds, tmp)
        wall = time.monotonic() - t0
        settle_titus(proxy, 16)  # the last worker reaped and logged, its spare replaced
        sup1, flt1 = common.proc_cpu(proxy.pid), common.proc_faults(proxy.pid)
        kh1 = common.proc_cpu(kh)[0] if kh else 0.0
        live1 = _live_workers_cpu(proxy, kh)
        zyg1 = _zygotes_cpu(proxy)
        summary = titus_log_summary(proxy.new_log_records())
        n = summary["connections"] or 1
        res["in_vivo"] = {
            "clients": 1, "wall_s": wall, "conns_per_s": rate["conns_per_s"],
            "connections_logged": summary["connections"], "s_time": rate,
            "supervisor_ms": (sup1[0] - sup0[0]) * 1e3 / n,
            "workers_ms": ((sup1[1] - sup0[1]) + (live1 - live0)) * 1e3 / n,
            "keyholder_ms": (kh1 - kh0) * 1e3 / n,
            "zygote_ms": (zyg1 - zyg0) * 1e3 / n,
            "supervisor_minor_faults": (flt1[0] - flt0[0]) / n,
            "workers_minor_faults": (flt1[1] - flt0[1]) / n,
            "log": summary, "keyholder_pid": kh,
            "supervisor_rss_kib": _rss_kib(proxy.pid),
        }
    if not costs:
        return res
    n = 100 if quick else 300
    out = subprocess.run(
        ["taskset", "-c", str(common.PROXY_CPU), sys.executable, str(BENCH / "titus_costs.py"),
         "--config", str(conf), "--jails", str(n), "--handshakes", str(n),
         "--logs", str(n * 10)], capture_output=True, timeout=300, cwd=ROOT, check=False)
    if out.returncode == 0:
        res["costs"] = json.loads(out.stdout)
    else:
        res["costs_error"] = out.stderr.decode(errors="replace")[-2000:]
    return res


def titus_keyholder(proxy: proxies.Proxy) -> int | None:
    for pid in proxies.titus_workers(proxy):
        if process_uid(pid) == proxies.TITUS_UID_FIRST:
            return pid
    return None


def _rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _zygotes_cpu(proxy: proxies.Proxy) -> float:
    return sum(common.proc_cpu(p)[0] for p in proxies.titus_zygotes(proxy))


def _live_workers_cpu(proxy: proxies.Proxy, keyholder: int | None) -> float:
    return sum(common.proc_cpu(p)[0] + common.proc_cpu(p)[1]
               for p in proxies.titus_workers(proxy) if p != keyholder)


# -- the run --------------------------------------------------------------------------


def run_key(kind: str, args: argparse.Namespace, tmp: Path, be: backend.Backend,
            upload_src: Path, deadline: Deadline) -> dict[str, Any]:
    cs = certs.make(kind, tmp / "certs")
    out: dict[str, Any] = {"rounds": [], "probe": {}, "idle_memory": {}, "problems": []}
    running: dict[str, proxies.Proxy] = {}
    try:
        for name in args.proxies:
            log(f"{kind}: starting {name}")
            try:
                running[name] = proxies.STARTERS[name](tmp, cs, be.port)
            except (common.BenchError, OSError) as e:
                out["problems"].append(f"{name} did not start: {e}")
                log(f"  {name} did not start: {e}")
        targets = {n: load.Target(p.port, cs.ca) for n, p in running.items()}
        for name, proxy in running.items():
            out["probe"][name] = probe(proxy, targets[name])
            if not args.quick:
                load.warm_up(targets[name])  # not recorded
        names = list(running)
        for rnd in range(args.rounds):
            if deadline.passed():
                out["problems"].append(f"time limit reached: stopped before round {rnd + 1}")
                break
            results: dict[str, dict[str, Any]] = {}
            for i, (test, fn) in enumerate(tests(tmp, be, upload_src, args.duration,
                                                     args.repeats)):
                shift = (rnd + i) % len(names) if names else 0
                order = names[shift:] + names[:shift]
                results[test] = {}
                for name in order:
                    res = measure(running[name],
                                  lambda sample, fn=fn, name=name: fn(targets[name], sample))
                    results[test][name] = res
                    log(f"{kind} round {rnd + 1} {test:14} {name:8} {report.headline(test, res)}")
            out["rounds"].append(results)
        for name, proxy in running.items():
            log(f"{kind}: idle memory {name} ({args.idle_conns} connections)")
            out["idle_memory"][name] = idle_memory(proxy, targets[name], args.idle_conns)
        if "titus" in running:
            log(f"{kind}: titus per-connection breakdown")
            conf = tmp / f"titus-{kind}.conf"
            out["titus_breakdown"] = titus_breakdown(running["titus"], targets["titus"], conf,
                                                     tmp, args.duration, args.quick)
    finally:
        for name, proxy in running.items():
            alive = proxy.alive()
            common.stop(proxy.proc)
            if not alive:
                out["problems"].append(f"{name} had exited with {proxy.proc.returncode}")
            if name == "titus":
                out["titus_log_tail"] = proxy.log.read_text(errors="replace")[-3000:]
    return out


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = f.readline().split()[1]
    rev = common.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = common.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "titus",
                        "sandbox", "policies"])
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "cpu": cpu, "kernel": os.uname().release,
        "memory_gib": round(int(mem) / 1024 / 1024, 1),
        "python": sys.version.split()[0],
        "openssl": common.run(["openssl", "version"]),
        "titus": rev + (f" + uncommitted changes in {len(dirty.splitlines())} files of "
                        "titus/, sandbox/, policies/" if dirty else ""),
        "stunnel": [line for line in common.run(["stunnel4", "-version"]).splitlines()
                    if line.startswith(("stunnel ", "Compiled with", "Running  with",
                                        "Running with"))][:3],
        "hitch": common.run(["hitch", "--version"]),
        "titus04": str(proxies.TITUS04_BINARY) if proxies.TITUS04_BINARY else None,
        "nginx": common.run(["nginx", "-v"]),
        "wrk": common.run(["wrk", "--version"]).splitlines()[0],
        "curl": common.run(["curl", "--version"]).splitlines()[0],
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See bench/README.md.")
    p.add_argument("--quick", action="store_true",
                   help="1 round, 2 s windows, no warm-up (about 3 minutes)")
    p.add_argument("--rounds", type=int, help="rounds of every test (default 3, quick 1)")
    p.add_argument("--duration", type=float,
                   help="seconds per rate/latency window (default 5, quick 2)")
    p.add_argument("--keys", default=",".join(certs.KEY_TYPES),
                   help=f"key types, comma-separated (default {','.join(certs.KEY_TYPES)})")
    p.add_argument("--proxies",
                   help="proxies, comma-separated (default titus,pyfork,stunnel,hitch, and "
                        "titus04 with --titus04)")
    p.add_argument("--titus04", type=Path, metavar="PATH",
                   help="a titus 0.4 binary (built from AGWA/titus) to measure as a peer")
    p.add_argument("--repeats", type=int,
                   help="100 MB transfers per single-connection measurement (default 3, "
                        "quick 2)")
    p.add_argument("--idle-conns", type=int, default=200,
                   help="connections held open for the memory test (default 200)")
    p.add_argument("--max-minutes", type=float,
                   help="start no new round after this many minutes (default 15, quick 6), "
                        "so that a full run ends within 20 minutes")
    p.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    p.add_argument("--json", type=Path, default=BENCH / "results.json")
    p.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.max_minutes = args.max_minutes or (6.0 if args.quick else 15.0)
    args.keys = [k for k in args.keys.split(",") if k]
    default = [n for n in proxies.PROXY_NAMES if n != "titus04" or args.titus04]
    args.proxies = [k for k in (args.proxies or ",".join(default)).split(",") if k]
    if "titus04" in args.proxies:
        if args.titus04 is None or not os.access(args.titus04, os.X_OK):
            p.error("titus04 needs --titus04 PATH to an executable titus 0.4 binary")
        proxies.TITUS04_BINARY = args.titus04.resolve()
    for k in args.keys:
        if k not in certs.KEY_TYPES:
            p.error(f"unknown key type {k!r}")
    for n in args.proxies:
        if n not in proxies.PROXY_NAMES:
            p.error(f"unknown proxy {n!r}")
    if not 1 <= args.rounds <= 20 or not 1 <= args.duration <= 60 or \
            not 1 <= args.idle_conns <= 230 or not 1 <= args.repeats <= 10:
        p.error("--rounds 1..20, --duration 1..60, --idle-conns 1..230, --repeats 1..10")
    return args


def preflight() -> str | None:
    if os.geteuid() != 0:
        return "run as root (titus builds jails; nginx and hitch bind as root)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (make bench installs them)"
    cpus = os.sched_getaffinity(0)
    if not {common.PROXY_CPU, common.LOAD_CPU} <= cpus:
        return f"needs CPUs {common.PROXY_CPU} and {common.LOAD_CPU}; this process may use {cpus}"
    return None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    problem = preflight()
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    # Everything (backend, proxies, load) in a network namespace of the run's own: its
    # loopback only, whatever address a proxy binds (titus 0.4 binds the any-address).
    common.private_network()
    os.sched_setaffinity(0, {common.LOAD_CPU})
    # Sampling must happen on time even when 64 clients keep CPU 1 busy; what this script
    # starts runs at normal priority again (common.start).
    os.setpriority(os.PRIO_PROCESS, 0, common.HARNESS_NICE)
    deadline = Deadline(args.max_minutes)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="titus-bench-"))
    be = None
    results: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v)
                                        for k, v in vars(args).items()},
                               "machine": machine(), "keys": {}}
    log(f"working in {tmp}; results -> {args.out}")
    try:
        be = backend.start(tmp)
        upload_src = tmp / "upload-src"
        shutil.copyfile(be.root / "big", upload_src)
        for kind in args.keys:
            results["keys"][kind] = run_key(kind, args, tmp, be, upload_src, deadline)
    except KeyboardInterrupt:
        log("interrupted: stopping every process")
        results["interrupted"] = True
    finally:
        common.stop_all()
        backend.cleanup(be)
        results["elapsed_s"] = time.monotonic() - started
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if results.get("interrupted"):
        return 130
    with contextlib.suppress(OSError):
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    args.out.write_text(report.render(results))
    log(f"done in {results['elapsed_s'] / 60:.1f} min: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
