"""Turning results.json into RESULTS.md: one table per key type, the titus breakdown,
and a "what this means" written from the numbers (every sentence is computed)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROXIES = ("titus", "titus04", "pyfork", "stunnel", "hitch")
LOAD_SATURATED = 0.90
NOISY = 0.20


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None}
    v = sorted(values)

    def pct(p: float) -> float:
        return v[min(len(v) - 1, round(p / 100 * (len(v) - 1)))]

    return {"n": len(v), "p50": pct(50), "p90": pct(90), "p99": pct(99)}


def headline(test: str, res: dict[str, Any]) -> str:
    err = f"  ERRORS: {res['errors'][:2]}" if res.get("errors") else ""
    busy = (f"[ours: proxy core {res.get('proxy_core_ours', 0):.0%}, load core "
            f"{res.get('load_core_ours', 0):.0%}; others: {res.get('proxy_core_others', 0):.0%}"
            f", {res.get('load_core_others', 0):.0%}]")
    if test.startswith("conn"):
        text = (f"{res.get('conns_per_s', 0):8.1f} conn/s (new {res.get('new', 0)}, "
                f"reused {res.get('reused', 0)})")
    elif test.startswith("download") or test.startswith("upload"):
        text = f"{res.get('mb_per_s', 0):8.1f} MB/s"
    elif test.startswith("latency"):
        text = (f"p50 {res.get('p50_ms', float('nan')):.2f} ms p99 "
                f"{res.get('p99_ms', float('nan')):.2f} ms {res.get('req_per_s', 0):.0f} req/s")
    else:
        text = ""
    titus = res.get("titus")
    if titus and set(titus.get("outcomes", {})) - {"ok", "client-reset", "no-clienthello"}:
        text += f" titus outcomes {titus['outcomes']}"
    return f"{text} {busy}{err}"


# -- table rows -------------------------------------------------------------------------

Getter = Callable[[dict[str, Any]], float | None]


def _get(key: str, scale: float = 1.0) -> Getter:
    def get(res: dict[str, Any]) -> float | None:
        v = res.get(key)
        return None if v is None else float(v) * scale
    return get


def _cpu_per_conn(res: dict[str, Any]) -> float | None:
    n = res.get("connections")
    return res["proxy_cpu_s"] * 1e3 / n if n and "proxy_cpu_s" in res else None


def _cpu_per_mb(res: dict[str, Any]) -> float | None:
    b = res.get("bytes")
    return res["proxy_cpu_s"] * 1e3 / (b / 1e6) if b and "proxy_cpu_s" in res else None


def _per_core(res: dict[str, Any]) -> float | None:
    ms = _cpu_per_conn(res)
    return 1000 / ms if ms else None


def _cpu_per_request(res: dict[str, Any]) -> float | None:
    n = res.get("requests")
    return res["proxy_cpu_s"] * 1e6 / n if n and "proxy_cpu_s" in res else None


# (label, test, getter, format, better): better is "higher", "lower" or "" (context).
ROWS: list[tuple[str, str, Getter, str, str]] = [
    ("new TLS 1.3 connections/s, 16 clients", "conn_c16", _get("conns_per_s"), "{:.0f}",
     "higher"),
    ("new TLS 1.3 connections/s, 64 clients", "conn_c64", _get("conns_per_s"), "{:.0f}",
     "higher"),
    ("proxy CPU per connection, ms (16 clients)", "conn_c16", _cpu_per_conn, "{:.2f}", "lower"),
    ("proxy CPU per connection, ms (64 clients)", "conn_c64", _cpu_per_conn, "{:.2f}", "lower"),
    ("= connections/s one full core would give (1000 / CPU ms, 16 clients)", "conn_c16",
     _per_core, "{:.0f}", "higher"),
    ("proxy's CPU use, % of its core, 16 clients", "conn_c16", _get("proxy_core_ours", 100),
     "{:.0f}%", ""),
    ("load side's CPU use (s_time + nginx), % of its core, 16 clients", "conn_c16",
     _get("load_core_ours", 100), "{:.0f}%", ""),
    ("load side's CPU use, % of its core, 64 clients", "conn_c64",
     _get("load_core_ours", 100), "{:.0f}%", ""),
    ("download 100 MB, 1 connection, MB/s", "download_1", _get("mb_per_s"), "{:.0f}", "higher"),
    ("download 100 MB x 8 connections, total MB/s", "download_8", _get("mb_per_s"), "{:.0f}",
     "higher"),
    ("upload 100 MB, 1 connection, MB/s", "upload_1", _get("mb_per_s"), "{:.0f}", "higher"),
    ("proxy CPU per MB, ms: 1 download", "download_1", _cpu_per_mb, "{:.2f}", "lower"),
    ("proxy CPU per MB, ms: 8 downloads", "download_8", _cpu_per_mb, "{:.2f}", "lower"),
    ("proxy CPU per MB, ms: 1 upload", "upload_1", _cpu_per_mb, "{:.2f}", "lower"),
    ("load side's CPU use (curl + nginx), 1 download", "download_1",
     _get("load_core_ours", 100), "{:.0f}%", ""),
    ("latency p50, 16 keep-alive conns, 10 ms think time, ms", "latency_paced",
     _get("p50_ms"), "{:.2f}", "lower"),
    ("latency p99, same, ms", "latency_paced", _get("p99_ms"), "{:.2f}", "lower"),
    ("requests/s at that load", "latency_paced", _get("req_per_s"), "{:.0f}", ""),
    ("max requests/s, 16 keep-alive conns (closed loop)", "latency_max", _get("req_per_s"),
     "{:.0f}", "higher"),
    ("proxy CPU per request at max rate, us", "latency_max", _cpu_per_request, "{:.0f}",
     "lower"),
    ("latency p50 at max rate, ms", "latency_max", _get("p50_ms"), "{:.2f}", "lower"),
    ("latency p99 at max rate, ms", "latency_max", _get("p99_ms"), "{:.2f}", "lower"),
    ("load side's CPU use (wrk + nginx) at max rate", "latency_max",
     _get("load_core_ours", 100), "{:.0f}%", ""),
]

MEMORY_ROWS: list[tuple[str, Getter, str, str]] = [
    ("PSS idle, MiB (all processes)", _get("pss_idle_kib", 1 / 1024), "{:.1f}", "lower"),
    ("PSS with the idle connections open, MiB", _get("pss_busy_kib", 1 / 1024), "{:.1f}", ""),
    ("PSS per idle TLS connection, KiB", _get("per_conn_kib"), "{:.0f}", "lower"),
]


def _values(rounds: list[dict[str, Any]], test: str, proxy: str, get: Getter) -> list[float]:
    out = []
    for rnd in rounds:
        res = rnd.get(test, {}).get(proxy)
        if res is None or res.get("errors"):
            continue
        v = get(res)
        if v is not None:
            out.append(v)
    return out


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return "n/a"
    med = fmt.format(statistics.median(values))
    if len(values) > 1:
        return f"{med} ({fmt.format(min(values))}-{fmt.format(max(values))})"
    return med


def _ratio(a: list[float], b: list[float]) -> str:
    if not a or not b or statistics.median(b) == 0:
        return "n/a"
    return f"{statistics.median(a) / statistics.median(b):.2f}x"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _flags(rounds: list[dict[str, Any]], test: str, name: str) -> str:
    res = [r.get(test, {}).get(name, {}) for r in rounds]
    out = ""
    if any(x.get("load_core_ours", 0) > LOAD_SATURATED for x in res):
        out += " †"
    if any(max(x.get("proxy_core_others", 0), x.get("load_core_others", 0)) > NOISY
           for x in res):
        out += " ‡"
    if _stolen(res):
        out += " §"
    return out


def _stolen(res: list[dict[str, Any]]) -> bool:
    """Whether the hypervisor kept over NOISY of the proxy's or the load's core from this
    virtual machine (steal time) in one of these results: a disturbed number."""
    return any(max(x.get("proxy_core_steal", 0), x.get("load_core_steal", 0)) > NOISY
               for x in res)


def noise(key: dict[str, Any]) -> str:
    vals: dict[str, list[float]] = {"proxy": [], "load": []}
    steal: dict[str, list[float]] = {"proxy": [], "load": []}
    for rnd in key.get("rounds", []):
        for per in rnd.values():
            for res in per.values():
                for role in vals:
                    if f"{role}_core_others" in res:
                        vals[role].append(res[f"{role}_core_others"])
                    if f"{role}_core_steal" in res:
                        steal[role].append(res[f"{role}_core_steal"])
    if not vals["proxy"]:
        return ""
    text = ("Other people's processes on the two cores during the tests (task CPU time not "
            "ours, % of the core): proxy core median "
            f"{statistics.median(vals['proxy']):.0%}, max {max(vals['proxy']):.0%}; load core "
            f"median {statistics.median(vals['load']):.0%}, max {max(vals['load']):.0%}.")
    if steal["proxy"]:
        text += (" Time the hypervisor kept the cores from this machine (steal): proxy core "
                 f"median {statistics.median(steal['proxy']):.0%}, max "
                 f"{max(steal['proxy']):.0%}; load core median "
                 f"{statistics.median(steal['load']):.0%}, max {max(steal['load']):.0%}.")
    return text


def main_table(key: dict[str, Any], names: list[str]) -> list[str]:
    rounds = key.get("rounds", [])
    peers = [n for n in names if n != "titus"]
    head = ["measure", "better", *names] + [f"titus/{p}" for p in peers if "titus" in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, test, get, fmt, better in ROWS:
        vals = {n: _values(rounds, test, n, get) for n in names}
        cells = [_cell(vals[n], fmt) + _flags(rounds, test, n) if better else
                 _cell(vals[n], fmt) for n in names]
        ratios = [_ratio(vals["titus"], vals[p]) if better else "" for p in peers
                  if "titus" in names]
        lines.append("| " + " | ".join([label, better, *cells, *ratios]) + " |")
    mem = key.get("idle_memory", {})
    for label, get, fmt, better in MEMORY_ROWS:
        vals = {n: [v] if n in mem and not mem[n].get("errors") and
                (v := get(mem[n])) is not None else [] for n in names}
        cells = [_cell(vals[n], fmt) for n in names]
        ratios = [_ratio(vals["titus"], vals[p]) if better else "" for p in peers
                  if "titus" in names]
        lines.append("| " + " | ".join([label, better, *cells, *ratios]) + " |")
    return lines


def probe_table(key: dict[str, Any]) -> list[str]:
    probe = key.get("probe", {})
    if not probe:
        return []
    cols = ["Protocol version", "Ciphersuite", "Signature type", "Server Temp Key"]
    lines = ["| proxy | protocol | cipher suite | signature | key exchange | "
             "issues tickets | accepts resumption |", "|---|---|---|---|---|---|---|"]
    for name, p in probe.items():
        cells = [p.get(c, "?") for c in cols]
        if "resumption_probe_error" in p:
            cells += [p["resumption_probe_error"], ""]
        else:
            cells += ["yes" if p.get("tickets_issued") else "no",
                      "yes" if p.get("resumption_accepted") else "no"]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return lines


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def breakdown(key: dict[str, Any]) -> list[str]:
    b = key.get("titus_breakdown")
    if not b:
        return []
    lines: list[str] = []
    vivo = b.get("in_vivo")
    costs = b.get("costs")
    rows: list[tuple[str, str, str]] = []
    if vivo:
        hs, dur = vivo["log"]["handshake_ms"], vivo["log"]["duration_ms"]
        total = vivo["supervisor_ms"] + vivo["workers_ms"] + vivo["keyholder_ms"] + \
            vivo.get("zygote_ms", 0.0)
        lines.append(
            f"In vivo: one `s_time` client, connections one after another for "
            f"{vivo['wall_s']:.0f} s: {vivo['connections_logged']} connections, "
            f"{vivo['conns_per_s']:.0f}/s; CPU from /proc/PID/stat (10 ms ticks) of the "
            f"supervisor (utime+stime), of the workers (the supervisor's cutime+cstime: "
            f"every worker is its child and is reaped by it) and of the key holder.")
        lines.append("")
        rows += [
            ("**titus CPU per connection, total**", "sum of the parts below",
             _f(total)),
            ("supervisor", "accept, asking the zygote for a worker, hand-off, backend "
             "connect, reap, log", _f(vivo["supervisor_ms"])),
            ("zygote", "cloning the worker, id maps, waiting for its jail to be ready",
             _f(vivo.get("zygote_ms", 0.0))),
            ("workers", "jail set-up inside the child, TLS handshake, pumping, exit",
             _f(vivo["workers_ms"])),
            ("key holder", "one signature per connection + its IPC",
             _f(vivo["keyholder_ms"])),
            ("minor page faults per connection: supervisor / workers", "from /proc/PID/stat "
             "(minflt, cminflt): copy-on-write and first-touch faults after each fork",
             f"{vivo.get('supervisor_minor_faults', 0):.0f} / "
             f"{vivo.get('workers_minor_faults', 0):.0f} (count, not ms)"),
            ("handshake_ms p50 / p90 (titus log)", "wall time in the worker from receiving "
             "the socket to handshake done (includes the client's round trips)",
             f"{_f(hs['p50'])} / {_f(hs['p90'])}"),
            ("duration_ms p50 / p90 (titus log)", "wall time from accept to reap",
             f"{_f(dur['p50'])} / {_f(dur['p90'])}"),
        ]
    if costs:
        j, k, lg = costs["jail"], costs["keyholder"], costs["log"]
        rows += [
            ("jail creation, parent side: wall", "a worker jail asked of the zygote, "
             "until it is ready (bench/titus_costs.py)",
             _f(j["spawn_wall_ms"]["p50"])),
            ("jail creation, parent side: CPU", "CPU of the asking process and the "
             "zygote for that spawn",
             _f(j["spawn_parent_cpu_ms"]["p50"])),
            ("jail creation + exit, child side: CPU", "namespaces, empty root, caps, "
             "seccomp, then exit and PID-namespace teardown (RUSAGE_CHILDREN)",
             _f(j["child_cpu_ms"]["p50"])),
            ("minor faults of that spawn: zygote / child", "minflt of the zygote, "
             "ru_minflt of the child",
             f"{j.get('parent_minor_faults', {}).get('p50', 0):.0f} / "
             f"{j.get('child_minor_faults', {}).get('p50', 0):.0f} (count)"),
            ("reaping", "waitpid + Launcher.reaped once the jail has exited",
             _f(j["reap_wall_ms"]["p50"], "{:.3f}")),
            ("log record", "one JSON `connection` record via titus.logs",
             _f(lg["log_record_ms"]["p50"], "{:.3f}")),
            ("TLS 1.3 handshake, server side, remote key: wall", "in-process, memory BIOs, "
             "titus's SSLContext, fresh key-holder channel per handshake",
             _f(k["remote_server_wall_ms"]["p50"])),
            ("same: CPU in the worker's process", "thread CPU time (excludes the key holder)",
             _f(k["remote_server_cpu_ms"]["p50"])),
            ("key-holder round trip", "one signature request, as remotekey measures it",
             _f(k["signature_rtt_ms"]["p50"])),
            ("key-holder CPU per signature", "its /proc stat over all handshakes",
             _f(k["keyholder_cpu_ms_per_signature"])),
            ("TLS 1.3 handshake, server side, local key: wall", "the same handshake with the "
             "key in-process (what stunnel/hitch do), for comparison",
             _f(k["local_server_wall_ms"]["p50"])),
        ]
        if vivo:
            pump = vivo["workers_ms"] - j["child_cpu_ms"]["p50"] - k["remote_server_cpu_ms"][
                "p50"]
            sup_rest = vivo["supervisor_ms"] - j["reap_wall_ms"]["p50"] - \
                lg["log_record_ms"]["p50"]
            rows += [
                ("worker remainder (derived)", "workers - jail child side - handshake CPU: "
                 "pumping one request/response, backend hand-off, exit, page faults",
                 _f(pump)),
                ("supervisor remainder (derived)", "supervisor - reap - log: accept, asking "
                 "the zygote, hand-off, backend connect, event loop", _f(sup_rest)),
            ]
        cow = costs.get("cow")
        if vivo and cow:
            us = cow["us_per_cow_fault"]
            rows += [
                ("CPU of one copy-on-write fault (us)", f"a forked child of the same-sized "
                 f"process writing {cow['pages']} pages, minus one writing none",
                 _f(us, "{:.1f}")),
                ("= estimated fault cost per connection: supervisor / workers", "minor faults "
                 "per connection x the cost of one (an estimate: not every minor fault is a "
                 "copy)", f"{vivo['supervisor_minor_faults'] * us / 1e3:.2f} / "
                         f"{vivo['workers_minor_faults'] * us / 1e3:.2f}"),
            ]
    elif b.get("costs_error"):
        lines.append(f"titus_costs.py failed: `{b['costs_error'][-300:]}`")
    if rows:
        lines += ["| part | what it is / how measured | ms |", "|---|---|---|"]
        lines += [f"| {a} | {m} | {v} |" for a, m, v in rows]
    return lines


def _ratios(key: dict[str, Any], names: list[str], test: str, get: Getter,
            subject: str = "titus") -> dict[str, float]:
    """`subject`'s median over each peer's median, for one measure."""
    rounds = key.get("rounds", [])
    t = _median(_values(rounds, test, subject, get))
    out = {}
    for peer in names:
        b = _median(_values(rounds, test, peer, get))
        if peer != subject and t is not None and b:
            out[peer] = t / b
    return out


def _span(values: list[float]) -> str:
    if not values:
        return "n/a"
    fmt = "{:.2f}" if max(values) < 10 else "{:.0f}"
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return f"{lo}x" if lo == hi else f"{lo}-{hi}x"


def _verdict(ratio_values: list[float], cost: bool) -> str:
    """'range, verdict' for a set of titus/peer ratios; `cost`: higher is worse for titus."""
    if not ratio_values:
        return "not measured"
    lo, hi = min(ratio_values), max(ratio_values)
    same = lo >= 0.8 and hi <= 1.25
    if same:
        word = "about the same"
    elif (lo > 1) if cost else (hi < 1):
        word = "worse for titus"
    elif (hi < 1) if cost else (lo > 1):
        word = "better for titus"
    elif (hi <= 1.25) if cost else (lo >= 0.8):
        word = "about the same or better for titus"
    elif (lo >= 0.8) if cost else (hi <= 1.25):
        word = "about the same or worse for titus"
    else:
        word = "mixed"
    return f"{_span(ratio_values)}, {word}"


def meaning(keys: dict[str, Any], names: list[str]) -> list[str]:
    """Paragraphs computed from the medians: the words follow the numbers."""
    out: list[str] = []
    floor = floor_paragraphs(keys, names)
    names = [n for n in names if n != "pyfork"]  # the verdicts below are against the C proxies
    if "titus" not in names or len(names) < 2:
        return out + floor
    collected: dict[str, list[float]] = {}

    def add(what: str, ratios: dict[str, float]) -> dict[str, float]:
        collected.setdefault(what, []).extend(ratios.values())
        return ratios

    for kind, key in keys.items():
        conn = add("conn", _ratios(key, names, "conn_c16", _get("conns_per_s")))
        cpu = add("cpu", _ratios(key, names, "conn_c16", _cpu_per_conn))
        add("cpu", _ratios(key, names, "conn_c64", _cpu_per_conn))
        add("mb", _ratios(key, names, "download_1", _cpu_per_mb))
        add("mb", _ratios(key, names, "download_8", _cpu_per_mb))
        add("mb", _ratios(key, names, "upload_1", _cpu_per_mb))
        add("tput", _ratios(key, names, "download_1", _get("mb_per_s")))
        add("tput", _ratios(key, names, "download_8", _get("mb_per_s")))
        add("tput", _ratios(key, names, "upload_1", _get("mb_per_s")))
        req = add("req", _ratios(key, names, "latency_max", _cpu_per_request))
        add("p50", _ratios(key, names, "latency_paced", _get("p50_ms")))
        p99 = add("p99", _ratios(key, names, "latency_paced", _get("p99_ms")))
        mem = key.get("idle_memory", {})
        per = {n: mem.get(n, {}).get("per_conn_kib") for n in names}
        if per.get("titus"):
            add("mem", {n: per["titus"] / v for n, v in per.items() if n != "titus" and v})
        title = {"rsa2048": "RSA-2048", "ecdsa-p256": "ECDSA P-256"}.get(kind, kind)
        def each(r: dict[str, float], fmt: str = "{:.1f}x") -> str:
            return ", ".join(f"{fmt.format(v)} ({p})" for p, v in r.items()) or "n/a"

        bits = [f"new connections per second {each(conn, '{:.2f}x')}",
                f"CPU per new connection {each(cpu)}",
                f"CPU per kept-alive request {each(req)}",
                f"p99 latency at moderate load {each(p99)}"]
        memtext = ", ".join(f"{n} {per[n]:.0f} KiB" for n in names if per[n] is not None)
        out.append(f"**{title}**, titus/peer: "
                   + "; ".join(bits) + f". Memory per idle connection: {memtext}.")
        b = key.get("titus_breakdown", {})
        vivo, costs = b.get("in_vivo"), b.get("costs")
        if vivo and costs:
            total = vivo["supervisor_ms"] + vivo["workers_ms"] + vivo["keyholder_ms"] + \
                vivo.get("zygote_ms", 0.0)
            jail = costs["jail"]["spawn_parent_cpu_ms"]["p50"] + costs["jail"][
                "child_cpu_ms"]["p50"]
            hs = costs["keyholder"]["remote_server_cpu_ms"]["p50"] + costs["keyholder"][
                "keyholder_cpu_ms_per_signature"]
            text = (f"Of titus's {total:.1f} ms of CPU per connection (one client at a time), "
                    f"building and tearing down the jail takes about {jail:.1f} ms "
                    f"({jail / total:.0%}) and the TLS handshake including the key holder's "
                    f"signature about {hs:.1f} ms ({hs / total:.0%})")
            rest = total - jail - hs
            cow = costs.get("cow")
            if cow:
                us = cow["us_per_cow_fault"]
                nf = vivo["supervisor_minor_faults"] + vivo["workers_minor_faults"]
                in_jail = costs["jail"]["parent_minor_faults"]["p50"] + costs["jail"][
                    "child_minor_faults"]["p50"]
                outside = max(0.0, nf - in_jail) * us / 1e3
                zygote_mib = costs["jail"].get("parent_rss_kib", 0) / 1024
                text += (f". About {nf:.0f} page faults per connection (copy-on-write after "
                         f"a clone of the ~{zygote_mib:.0f} MB zygote, and first touches, "
                         f"at ~{us:.1f} us each) cost an estimated "
                         f"{nf * us / 1e3:.1f} ms, {outside:.1f} ms of it outside the jail "
                         "figure")
                rest -= outside
            hs_log = vivo["log"]["handshake_ms"]["p50"]
            hs_mem = costs["keyholder"]["remote_server_wall_ms"]["p50"]
            out.append(
                text + f"; the remaining ~{max(rest, 0):.1f} ms (not broken down further) is "
                "the rest of the work: the supervisor's Python (accepting, handing the socket "
                "over, connecting the backend, reaping, logging) and the C worker's pump and "
                "exit. In titus's log a "
                f"handshake takes {hs_log:.1f} ms of wall time (p50) against {hs_mem:.2f} ms "
                "for the same handshake in a warm process: the worker runs it while it is "
                "fresh from the clone (taking its faults) and while the zygote clones the "
                "next spare on the same core (the likely reasons; the benchmark does not "
                "separate them).")
    c = collected
    summary = [
        "In short (titus/peer, both key types, medians of the rounds): CPU per new "
        f"connection {_verdict(c.get('cpu', []), True)}; so on one core titus makes "
        f"{_span(c.get('conn', []))} the new connections per second of the C proxies (the "
        "real gap is wider where the load side capped theirs, see †). CPU per MB of bulk data "
        f"{_verdict(c.get('mb', []), True)}, bulk throughput "
        f"{_verdict(c.get('tput', []), False)}: the same OpenSSL encrypts, in large "
        "chunks. CPU per small request on kept-alive connections "
        f"{_verdict(c.get('req', []), True)}; latency at moderate load "
        f"{_verdict(c.get('p50', []), True)} at the median and "
        f"{_verdict(c.get('p99', []), True)} at p99. Memory per idle connection "
        f"{_verdict(c.get('mem', []), True)}: every open connection is a whole process.",
        "What it buys: stunnel and hitch hold every connection, and the private key, in one "
        "address space, so one exploited bug in their TLS stack reaches all clients and the "
        "key; in titus it reaches one connection's process, which holds no key and cannot "
        "open a file or a socket. The costs above are per connection (a clone, a jail, a "
        "worker process, its memory), not per byte: titus suits fewer, longer connections, "
        "or a key worth more than the CPU; it is a poor fit for many short connections on "
        "little CPU or for very many idle ones.",
        "Caveat: this machine was shared with other work while the benchmark ran (the "
        "load average above and the noise line under each table); interleaving the proxies "
        "spreads that noise over all of them, and the CPU-per-unit rows are the least "
        "sensitive to it. A proxy with many runnable processes (titus) also gets a larger "
        "share of a contended core than a single-threaded one, which flatters titus's "
        "rates, not its CPU per unit.",
    ]
    return out + floor + summary


def floor_paragraphs(keys: dict[str, Any], names: list[str]) -> list[str]:
    """pyfork against the C proxies (the floor of the design) and titus against pyfork
    (what the isolation itself costs)."""
    if "pyfork" not in names:
        return []
    out = []
    c_peers = [n for n in names if n not in ("titus", "pyfork")]
    for kind, key in keys.items():
        title = {"rsa2048": "RSA-2048", "ecdsa-p256": "ECDSA P-256"}.get(kind, kind)
        conns = _ratios(key, c_peers, "conn_c16", _get("conns_per_s"), subject="pyfork")
        cpu = _ratios(key, c_peers, "conn_c16", _cpu_per_conn, subject="pyfork")
        rounds = key.get("rounds", [])
        pf_cpu = _median(_values(rounds, "conn_c16", "pyfork", _cpu_per_conn))
        iso_conn = _ratios(key, ["pyfork"], "conn_c16", _get("conns_per_s"))
        iso_cpu = _ratios(key, ["pyfork"], "conn_c16", _cpu_per_conn)
        iso_req = _ratios(key, ["pyfork"], "latency_max", _cpu_per_request)
        mem = key.get("idle_memory", {})
        per = {n: mem.get(n, {}).get("per_conn_kib") for n in names}
        if not pf_cpu:
            continue
        versus = "".join(f", {conns[p]:.2f}x the new connections per second of {p} "
                         f"({cpu[p]:.1f}x its CPU per connection)" for p in conns if p in cpu)
        parts = [f"**{title}, the floor.** pyfork, titus's process model with no isolation "
                 "(a fresh CPython process per connection, forked from a small warmed-up parent, "
                 "Python's ssl with the key in the process, a plain pump), costs "
                 f"{pf_cpu:.1f} ms of CPU per connection{versus} (why: FLOOR.md)"]
        if iso_conn:
            parts.append("titus against pyfork, i.e. what the jail, the key holder, the "
                         "supervisor's hand-offs and the zygote add: "
                         f"new connections per second {iso_conn['pyfork']:.2f}x, CPU per new "
                         f"connection {iso_cpu.get('pyfork', float('nan')):.2f}x, CPU per "
                         f"kept-alive request {iso_req.get('pyfork', float('nan')):.2f}x")
        if per.get("pyfork"):
            parts.append(f"memory per idle connection: pyfork {per['pyfork']:.0f} KiB, "
                         f"titus {per.get('titus') or float('nan'):.0f} KiB")
        out.append("; ".join(parts) + ".")
    return out


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    a = results["args"]
    names = [n for n in PROXIES if n in a["proxies"]]
    lines = [
        "# titus benchmark: what does the isolation cost?",
        "",
        f"Generated by `bench/run.py` ({'--quick, ' if a['quick'] else ''}{a['rounds']} "
        f"round(s), {a['duration']:g} s windows, {a['idle_conns']} idle connections) on "
        f"{m['date']}; took {results.get('elapsed_s', 0) / 60:.1f} min. "
        "How to run it and what each test does: [README.md](README.md). "
        "Every raw number: `results.json`.",
        "",
        "## Machine and versions",
        "",
        "| | |", "|---|---|",
        f"| CPU | {m['cpu']}, {m['nproc']} CPUs (proxy on CPU 0; nginx, load tools and the "
        "harness on CPU 1) |",
        f"| kernel | {m['kernel']} |",
        f"| memory | {m['memory_gib']} GiB |",
        f"| load average at start | {' '.join(m['loadavg'])} |",
        f"| python | {m['python']} |",
        f"| openssl | {m['openssl']} |",
        f"| titus | git {m['titus']} |",
        f"| stunnel | {' / '.join(m['stunnel'])} |",
        f"| hitch | {m['hitch']} |",
        *([f"| titus 0.4 | `{m['titus04']}` (AGWA/titus 0.4, built from its public source) |"]
          if m.get("titus04") else []),
        f"| nginx | {m['nginx']} |",
        f"| load tools | {m['wrk']}; {m['curl']}; `openssl s_time` |",
        "",
        "Cells are the median over rounds, (min-max) when there was more than one round. "
        "Ratios are titus's median over the peer's: for \"higher\" rows below 1.00x means "
        "titus is slower, for \"lower\" rows above 1.00x means titus costs more. "
        f"† marks a cell where the load tools and nginx used over {LOAD_SATURATED:.0%} of "
        "their core in some round: the client side may have been the limit there, not the "
        f"proxy. ‡ marks a cell where other processes (not ours) used over {NOISY:.0%} of "
        "the proxy's or the load's core in some round, § one where the hypervisor kept over "
        f"{NOISY:.0%} of either core from this virtual machine (steal time): that number "
        "is disturbed.",
        "",
    ]
    for kind, key in results["keys"].items():
        title = {"rsa2048": "RSA-2048", "ecdsa-p256": "ECDSA P-256"}.get(kind, kind)
        lines += [f"## {title} certificate", ""]
        lines += [*main_table(key, names), ""]
        if noise(key):
            lines += [noise(key), ""]
        pt = probe_table(key)
        if pt:
            lines += ["What a default client (`openssl s_client`, Python's ssl) negotiates "
                      "with each:", "", *pt, ""]
        tt = targets_table(key, names)
        if tt:
            lines += [f"### The C worker's targets (issue 13), {title}", "", *tt, ""]
        bd = breakdown(key)
        if bd:
            lines += [f"### titus: one connection, part by part ({title})", "", *bd, ""]
        problems = list(key.get("problems", []))
        for rnd_i, rnd in enumerate(key.get("rounds", [])):
            for test, per in rnd.items():
                for n, res in per.items():
                    for e in res.get("errors", []):
                        problems.append(f"round {rnd_i + 1} {test} {n}: {e}")
                    t = res.get("titus") or {}
                    odd = {o: c for o, c in t.get("outcomes", {}).items()
                           if o not in ("ok", "client-reset", "no-clienthello")}
                    if odd:
                        problems.append(f"round {rnd_i + 1} {test} titus: connection outcomes "
                                        f"{t['outcomes']}")
                    for u in t.get("unexpected", [])[:2]:
                        if u.get("event") != "connection" or u.get("outcome") in odd:
                            problems.append(f"round {rnd_i + 1} {test} titus log: "
                                            f"`{_short(u)}`")
        for n, res in key.get("idle_memory", {}).items():
            for e in res.get("errors", [])[:3]:
                problems.append(f"idle memory {n}: {e}")
        lines += [f"### Problems seen ({title})", ""]
        lines += [f"- {p}" for p in problems[:40]] or ["- none"]
        lines.append("")
    lines += ["## What this means", ""]
    for para in meaning(results["keys"], names):
        lines += [para, ""]
    lines += jail_section()
    return "\n".join(lines)


# Issue 13's Done-when, as ratios of this run: (what, titus's getter, test, peer, bound,
# "min" (ratio must be at least bound) or "max" (at most)).  PSS is absolute (KiB).
TARGETS: list[tuple[str, str, Getter, str, float, str]] = [
    ("new conn/s, 16 clients, vs stunnel", "conn_c16", _get("conns_per_s"), "stunnel", 0.5,
     "min"),
    ("new conn/s, 64 clients, vs stunnel", "conn_c64", _get("conns_per_s"), "stunnel", 0.5,
     "min"),
    ("new conn/s, 16 clients, vs titus 0.4", "conn_c16", _get("conns_per_s"), "titus04", 1.0,
     "min"),
    ("new conn/s, 64 clients, vs titus 0.4", "conn_c64", _get("conns_per_s"), "titus04", 1.0,
     "min"),
    ("kept-alive p99 latency vs hitch", "latency_paced", _get("p99_ms"), "hitch", 1.0, "max"),
    ("download, 1 connection, vs hitch", "download_1", _get("mb_per_s"), "hitch", 1.0, "min"),
    ("upload, 1 connection, vs hitch", "upload_1", _get("mb_per_s"), "hitch", 1.0, "min"),
]
PSS_TARGET_KIB = 465  # titus 0.4's PSS per idle connection, as issue 13 measured it


def targets_table(key: dict[str, Any], names: list[str]) -> list[str]:
    """Each target of issue 13 with this run's ratio and whether it holds."""
    rows = []
    for what, test, get, peer, bound, kind in TARGETS:
        if peer not in names:
            continue
        ratio = _ratios(key, [peer], test, get).get(peer)
        if ratio is None:
            continue
        held = ratio >= bound if kind == "min" else ratio <= bound
        sign = "≥" if kind == "min" else "≤"
        cells = [r.get(test, {}).get(n, {}) for r in key.get("rounds", [])
                 for n in ("titus", peer)]
        verdict = "met" if held else "missed"
        if _stolen(cells):
            verdict += " (disturbed: steal time §)"
        rows.append(f"| {what} | {sign} {bound:.2f}x | {ratio:.2f}x | {verdict} |")
    pss = key.get("idle_memory", {}).get("titus", {}).get("per_conn_kib")
    if pss is not None:
        rows.append(f"| PSS per idle connection | ≤ {PSS_TARGET_KIB} KiB | {pss:.0f} KiB | "
                    f"{'met' if pss <= PSS_TARGET_KIB else 'missed'} |")
    if not rows:
        return []
    return ["| target | bound | this run | |", "|---|---|---|---|", *rows]


JAIL_SPAWN = Path(__file__).with_name("JAIL_SPAWN.md")
JAIL_HEADING = "## The jail: CPU per jail, and `sandbox run` next to bwrap"


def jail_section() -> list[str]:
    """bench/jail_spawn.py's numbers (its own run, bench/JAIL_SPAWN.md), kept in
    RESULTS.md when this report is rendered again."""
    if not JAIL_SPAWN.exists():
        return []
    body = JAIL_SPAWN.read_text().split("\n", 1)[1].strip("\n")
    return [JAIL_HEADING, "", body, ""]


def _short(rec: dict[str, Any]) -> str:
    keep = ("event", "level", "outcome", "detail", "notes", "reason", "error", "violation",
            "handshake_ms", "duration_ms")
    return ", ".join(f"{k}={rec[k]}" for k in keep if rec.get(k) is not None)[:300]
