"""The load generators, all C programs from Debian pinned to the load CPU.

* connection rate: N parallel `openssl s_time -new -www /small` processes;
  each one opens a connection, does a FULL TLS handshake (it never offers a
  session: -new), sends `GET /small HTTP/1.0`, reads to EOF, closes, repeats.
  It prints one character per connection ('r' if the session was resumed,
  '*' otherwise): we count both, so a resumed handshake would show.
* throughput: curl downloading /big (100 MB), one and 8 in parallel; curl
  uploading 100 MB with PUT (nginx DAV stores the whole body on tmpfs).
* latency: wrk, 16 kept-alive connections, with a latency distribution.
* idle connections: this process holds N TLS connections open (Python ssl;
  speed does not matter there).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common

HOST = "127.0.0.1"


@dataclass
class Target:
    port: int
    ca: Path

    def url(self, path: str) -> str:
        return f"https://{HOST}:{self.port}{path}"


def _wait_all(procs: list[subprocess.Popen], started: list[float], deadline: float
              ) -> tuple[list[float], int]:
    """Wait for every process (killing those past the deadline); (wall times, killed)."""
    walls = [0.0] * len(procs)
    done = [False] * len(procs)
    killed = 0
    while not all(done):
        now = time.monotonic()
        for i, p in enumerate(procs):
            if not done[i] and p.poll() is not None:
                walls[i] = now - started[i]
                done[i] = True
        if now > deadline:
            for i, p in enumerate(procs):
                if not done[i]:
                    common.stop(p, timeout=1)
                    walls[i] = now - started[i]
                    done[i] = True
                    killed += 1
            break
        time.sleep(0.005)
    for p in procs:
        common.stop(p, timeout=1)  # already exited: only forgets it
    return walls, killed


def _progress(out: Path) -> tuple[int, int]:
    """(full handshakes, resumed ones) so far in an s_time output (it flushes each one)."""
    try:
        text = out.read_text(errors="replace")
    except FileNotFoundError:
        return 0, 0
    progress = "".join(line for line in text.splitlines()
                       if line and set(line) <= {"*", "r", "1", "2", "3", "t", "s"})
    return progress.count("*"), progress.count("r")


def conn_rate(target: Target, clients: int, seconds: float, tmp: Path,
              sample: Callable[[], common.Sample] | None = None) -> dict[str, Any]:
    """New TLS 1.3 connections per second with `clients` parallel s_time loops.

    The rate is counted over a window of `seconds` in which every client is running
    (after all have started and 0.5 s more, before any has stopped): s_time prints one
    character per connection and flushes it, so the harness counts them at both ends
    of the window.  `sample` (CPU counters) is taken at the same two moments."""
    # Each client waits at a gate (a shell reading one line from a shared pipe), so
    # launching 64 processes does not compete with running ones; the gate then lets
    # one through every 10 ms.  (All at once was tried: 64 simultaneous handshakes
    # stalled every proxy for about 2 s, a thundering herd no real load has; starting
    # them one by one without a gate took ~5 s on the busy load core.)
    # s_time runs for whole seconds: enough for the start and the window.
    whole = math.ceil(seconds + 2.5 + 0.02 * clients)
    outs = [tmp / f"s_time-{i}.out" for i in range(clients)]
    procs = []
    gate_r, gate_w = os.pipe()
    try:
        for out in outs:
            out.unlink(missing_ok=True)
            with open(out, "wb") as f:
                procs.append(common.start(
                    ["sh", "-c", 'read _ && exec "$@"', "sh",
                     "openssl", "s_time", "-connect", f"{HOST}:{target.port}", "-new",
                     "-www", "/small", "-time", str(whole), "-tls1_3"],
                    common.LOAD_CPU, stdout=f.fileno(), log=out.with_suffix(".err"),
                    stdin=gate_r))
    finally:
        os.close(gate_r)
        t_start = time.monotonic()
        with contextlib.suppress(OSError):
            for _ in procs:
                os.write(gate_w, b"\n")
                time.sleep(0.01)
        os.close(gate_w)
    errors: list[str] = []
    # The window opens once every client has completed a connection (or 2 s after the
    # last was let through), plus 0.5 s.
    ready_by = time.monotonic() + 2.0
    while time.monotonic() < ready_by and not all(sum(_progress(o)) for o in outs):
        time.sleep(0.1)
    time.sleep(0.5)
    early = [p for p in procs if p.poll() is not None]
    c1 = sum(sum(_progress(o)) for o in outs)
    t1 = time.monotonic()
    s1 = sample() if sample else None
    t2 = t1 + seconds
    while time.monotonic() < t2:
        if any(p.poll() is not None for p in procs):
            early = [p for p in procs if p.poll() is not None]
            break
        time.sleep(0.05)
    c2 = sum(sum(_progress(o)) for o in outs)
    t2 = time.monotonic()
    s2 = sample() if sample else None
    if early and t2 - t1 < seconds / 2:
        errors.append(f"{len(early)} client(s) stopped {t2 - t1:.1f} s into the window")
    # Let the clients run out on their own: one stopped by a signal could leave a
    # handshake half done, which is not what this test measures (titus at 7ed3cde logs
    # a client that closes in mid-handshake as a seccomp policy violation).
    _walls, stopped = _wait_all(procs, [t_start] * clients, t_start + whole + 5)
    new = reused = failed = 0
    for p, out in zip(procs, outs, strict=True):
        err = out.with_suffix(".err").read_text(errors="replace").strip()
        n_new, n_reused = _progress(out)
        new += n_new
        reused += n_reused
        finished = re.search(r"^\d+ connections in", out.read_text(errors="replace"), re.M)
        if err or (p in early and (p.returncode != 0 or not finished)):
            failed += 1
            if err and len(errors) < 3:
                errors.append(err.splitlines()[-1][:200])
    res: dict[str, Any] = {
        "clients": clients, "conns_per_s": (c2 - c1) / (t2 - t1), "connections": c2 - c1,
        "window_s": t2 - t1, "window_cut_short": bool(early),
        "start_to_window_s": t1 - t_start, "s_time_seconds": whole,
        "new": new, "reused": reused, "failed_clients": failed, "killed_clients": stopped,
        "errors": errors}
    if s1 is not None and s2 is not None:
        res["window"] = common.usage(s1, s2)
    return res


def warm_up(target: Target) -> None:
    """A second of new connections from 4 clients, not recorded."""
    procs = [common.start(["openssl", "s_time", "-connect", f"{HOST}:{target.port}", "-new",
                           "-www", "/small", "-time", "1", "-tls1_3"], common.LOAD_CPU)
             for _ in range(4)]
    _wait_all(procs, [time.monotonic()] * len(procs), time.monotonic() + 15)


def _curl_args(target: Target, max_time: float) -> list[str]:
    return ["curl", "-sS", "--cacert", str(target.ca), "--max-time", str(int(max_time)),
            "-o", "/dev/null"]


def _curl(target: Target, parallel: int, extra: list[str], max_time: float
          ) -> tuple[list[str], float]:
    """`parallel` simultaneous curls; their -w outputs and the wall time of all."""
    procs = [common.start([*_curl_args(target, max_time), *extra], common.LOAD_CPU,
                          stdout=subprocess.PIPE) for _ in range(parallel)]
    t0 = time.monotonic()
    outputs = []
    deadline = t0 + max_time + 10
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            out = b""
        outputs.append(out.decode(errors="replace"))
    wall = time.monotonic() - t0
    for p in procs:
        common.stop(p, timeout=1)
    return outputs, wall


def download(target: Target, parallel: int, expect: int, repeats: int = 1,
             max_time: float = 120) -> dict[str, Any]:
    """`parallel` simultaneous curl downloads of /big, `repeats` times one after the
    other; MB/s = all bytes / all the wall time (curl start to exit)."""
    total = ok = 0
    wall = 0.0
    speeds: list[float] = []
    errors: list[str] = []
    for _ in range(repeats):
        outputs, w = _curl(target, parallel, ["-w", "%{http_code} %{size_download} "
                                              "%{speed_download}", target.url("/big")],
                           max_time)
        wall += w
        for out in outputs:
            parts = out.split()
            if len(parts) == 3 and parts[0] == "200" and int(parts[1]) == expect:
                ok += 1
                speeds.append(float(parts[2]) / 1e6)
            else:
                errors.append(f"curl: {out[:200]!r}")
            if len(parts) == 3:
                total += int(parts[1])
    return {"parallel": parallel, "repeats": repeats, "ok": ok, "bytes": total,
            "wall_s": wall, "mb_per_s": total / wall / 1e6 if wall > 0 and not errors else 0.0,
            "curl_mb_per_s": speeds, "errors": errors[:3]}


def upload(target: Target, source: Path, stored: Path, repeats: int = 1,
           max_time: float = 120) -> dict[str, Any]:
    """PUT `source` (100 MB) `repeats` times; nginx answers after storing the whole body,
    and the stored file's size is checked after each."""
    size = source.stat().st_size
    total = 0
    wall = 0.0
    speeds: list[float] = []
    errors: list[str] = []
    for _ in range(repeats):
        stored.unlink(missing_ok=True)
        outputs, w = _curl(target, 1, ["-H", "Expect:", "-T", str(source), "-w",
                                       "%{http_code} %{size_upload} %{speed_upload}",
                                       target.url("/upload/blob")], max_time)
        wall += w
        parts = outputs[0].split()
        try:
            got = stored.stat().st_size
        except FileNotFoundError:
            got = -1
        if len(parts) == 3 and parts[0] in ("201", "204") and int(parts[1]) == size \
                and got == size:
            total += size
            speeds.append(float(parts[2]) / 1e6)
        else:
            errors.append(f"curl: {outputs[0][:200]!r}, stored {got} bytes")
    return {"repeats": repeats, "bytes": total, "wall_s": wall,
            "mb_per_s": total / wall / 1e6 if wall > 0 and not errors else 0.0,
            "curl_mb_per_s": speeds, "errors": errors[:3]}


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


HOLD_MS = 500


def wrk(target: Target, connections: int, seconds: float, tmp: Path,
        think_ms: int | None = None) -> dict[str, Any]:
    """wrk on kept-alive connections; `think_ms`: each connection waits that long
    between a response and its next request (moderate load), None: closed loop.

    Every connection first waits HOLD_MS once (a wrk `delay()` script), so the
    connections are set up (and titus has forked the spare workers they used up)
    before the measured requests run; requests/s is over the time after the hold."""
    whole = max(2, math.ceil(seconds + HOLD_MS / 1000))
    script = tmp / f"wrk-{connections}-{think_ms}.lua"
    script.write_text(
        "local calls = 0\n"
        "function delay()\n"
        "  calls = calls + 1\n"
        f"  if calls <= {connections} then return {HOLD_MS} end\n"
        f"  return {int(think_ms or 0)}\n"
        "end\n")
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{whole}s", "--latency", "--timeout", "5s",
            "-s", str(script), target.url("/small")]
    p = common.start(argv, common.LOAD_CPU, stdout=subprocess.PIPE)
    try:
        out, _ = p.communicate(timeout=whole + 30)
    except subprocess.TimeoutExpired:
        out = b""
    common.stop(p, timeout=1)
    text = out.decode(errors="replace")
    res: dict[str, Any] = {"connections": connections, "think_ms": think_ms,
                           "hold_ms": HOLD_MS, "errors": []}
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        if m:
            res[f"p{pct}_ms"] = _ms(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", text)
    res["requests"] = int(m.group(1)) if m else 0
    runtime = _ms(m.group(2) + m.group(3)) / 1e3 if m else whole
    res["req_per_s"] = res["requests"] / max(runtime - HOLD_MS / 1000, 0.1)
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        res["socket_errors"] = sum(int(x) for x in m.groups())
        res["errors"].append(m.group(0))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        res["non_2xx"] = int(m.group(1))
        res["errors"].append(m.group(0))
    if "p50_ms" not in res:
        res["errors"].append(f"wrk output not understood: {text[-300:]!r}")
    return res


class HeldConnections:
    """N TLS connections, each having done one keep-alive request, held open."""

    def __init__(self, target: Target, count: int, timeout: float = 60.0) -> None:
        self.target = target
        self.count = count
        self.timeout = timeout
        self.socks: list[ssl.SSLSocket] = []
        self.errors: list[str] = []

    def _open(self, ctx: ssl.SSLContext, deadline: float) -> ssl.SSLSocket | str:
        if time.monotonic() > deadline:
            return "deadline reached while opening connections"
        request = b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n"
        try:
            raw = socket.create_connection((HOST, self.target.port), timeout=10)
        except OSError as e:
            return f"connect: {e}"
        try:
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(request)
            got = b""
            while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < 100:
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("closed before the response")
                got += chunk
            if not got.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(f"unexpected response {got[:40]!r}")
        except (OSError, ssl.SSLError) as e:
            raw.close()
            return f"{type(e).__name__}: {e}"
        return s

    def __enter__(self) -> HeldConnections:
        """Open them from 8 threads (titus needs a fresh jail for each one)."""
        ctx = ssl.create_default_context(cafile=str(self.target.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        deadline = time.monotonic() + self.timeout
        pool = ThreadPoolExecutor(8)
        try:
            for got in pool.map(lambda _: self._open(ctx, deadline), range(self.count)):
                if isinstance(got, str):
                    self.errors.append(got)
                else:
                    self.socks.append(got)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            self.__exit__()
            raise
        pool.shutdown(wait=True)
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()
        self.socks.clear()


def resumption_probe(target: Target) -> dict[str, Any]:
    """Does the server issue TLS 1.3 session tickets, and does it accept one back?"""
    ctx = ssl.create_default_context(cafile=str(target.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    request = b"GET /small HTTP/1.0\r\nHost: localhost\r\n\r\n"

    def fetch(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool]:
        with socket.create_connection((HOST, target.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(request)
            while s.recv(4096):
                pass
            return s.session, s.session_reused

    try:
        first, _ = fetch(None)
        tickets = bool(first is not None and first.has_ticket)
        reused = fetch(first)[1] if tickets else False
    except (OSError, ssl.SSLError) as e:
        return {"resumption_probe_error": f"{type(e).__name__}: {e}"}
    return {"tickets_issued": tickets, "resumption_accepted": reused}
