"""Timers for the parts of one titus connection, measured outside titus with titus's own code.

Run by run.py as `taskset -c 0 python bench/titus_costs.py --config titus.conf` (as
root, on the proxy CPU, while nothing else runs there); prints one JSON object.

* jail: worker jails from a real zygote (titus/worker/zygote.py: the same profile,
  seccomp program, recipe and 3 passed fds as the supervisor uses), each told
  to leave at once.  Parent side: wall from the request to the reply, and the
  CPU of this process plus the zygote's (clone, id maps, the handshake with
  the child).  Child side: the CPU of the jailed child, read from
  RUSAGE_CHILDREN after it is reaped (namespaces, shared empty root,
  capability drop, seccomp, then exit and the PID-namespace teardown).  Reap:
  waitpid + Launcher.reaped after the child is known to have exited.
* log: one "connection" record through titus.logs (JSON) to /dev/null.
* key holder: a real key-holder jail (titus.supervisor.keyholder.KeyHolder) with the
  benchmark key; TLS 1.3 handshakes in memory between a Python client and a
  server SSLContext built by titus.worker.contexts (remote key: one fresh channel
  per handshake, budget 1, as a worker gets).  Reported: the round trip of
  the signature request as the worker's C remote key measures it, the server
  side's wall and CPU per handshake, the key holder's CPU per signature, and
  the same handshake with the key loaded locally for comparison.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import select
import socket
import ssl
import statistics
import sys
import time
from dataclasses import replace
from typing import Any

from common import proc_faults  # bench/ is this script's directory

from sandbox.forkserver import ForkServer
from sandbox.launcher import JailProcess
from titus import logs
from titus.config.load import load_config
from titus.keyholder.main import key_slots
from titus.supervisor import Supervisor
from titus.supervisor.keyholder import KeyHolder
from titus.wire.zygote import WORKER
from titus.worker import _worker
from titus.worker.contexts import build_contexts

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _rusage_cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _faults(who: int) -> int:
    return resource.getrusage(who).ru_minflt


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50": _pct(values, 50), "p90": _pct(values, 90), "mean": statistics.fmean(values)
            if values else float("nan"), "n": len(values)}


def _zygote_spawn(sup: Supervisor, zygote: ForkServer, fds: list[int]) -> JailProcess:
    """One worker jail from the zygote, as the supervisor asks for it (but waiting)."""
    uid_range = sup.worker_spec.uid_range
    uid = sup.launcher.uids(uid_range).allocate()
    zygote.request(WORKER, uid, fds)
    while True:
        select.select([zygote.fileno()], [], [], 10)
        replies = zygote.replies()
        if replies is None:
            raise RuntimeError("the zygote died")
        if replies:
            reply = replies[0]
            break
    if reply.pid is None or reply.error is not None:
        raise RuntimeError(f"spawn failed: {reply.error}")
    jail = sup.launcher.adopt(reply.pid, uid, "titus-worker", uid_range)
    jail.listener = reply.listener  # its seccomp listener (if it notifies), closed when reaped
    return jail


def jail_cost(sup: Supervisor, zygote: ForkServer, count: int) -> dict[str, Any]:
    """Worker jails cloned by a real zygote (the titus-worker spec and recipe, the
    same 3 fds), told to leave at once (their control channel closes).  Parent
    side: this process's and the zygote's CPU for the request (the zygote clones,
    writes the id maps, waits for the jail to be ready).  Child side: the jail's
    CPU from RUSAGE_CHILDREN (it is our child: CLONE_PARENT)."""
    spawn_wall, spawn_cpu, child_cpu, reap_wall, run_wall = [], [], [], [], []
    parent_faults, child_faults = [], []
    zygote_cpu0 = _proc_cpu(zygote.pid)  # in clock ticks: only its total means anything
    for _ in range(count):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            cpu0, kids0 = _rusage_cpu(resource.RUSAGE_SELF), _rusage_cpu(
                resource.RUSAGE_CHILDREN)
            zf0 = proc_faults(zygote.pid)[0]
            kf0 = _faults(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            jail = _zygote_spawn(sup, zygote, [b.fileno(), d.fileno(), 2])
            t1 = time.perf_counter()
            cpu1 = _rusage_cpu(resource.RUSAGE_SELF)
            zf1 = proc_faults(zygote.pid)[0]
        finally:
            b.close()
            d.close()
        a.close()  # the worker reads EOF: retired before any connection, it exits
        pidfd = os.pidfd_open(jail.pid)
        try:
            if not select.select([pidfd], [], [], 10)[0]:
                jail.kill()
        finally:
            os.close(pidfd)
        t2 = time.perf_counter()
        jail.poll()
        t3 = time.perf_counter()
        if jail.returncode is None:
            jail.wait(10)
        kids1, kf1 = _rusage_cpu(resource.RUSAGE_CHILDREN), _faults(resource.RUSAGE_CHILDREN)
        parent_faults.append(zf1 - zf0)
        child_faults.append(kf1 - kf0)
        c.close()
        spawn_wall.append((t1 - t0) * 1e3)
        spawn_cpu.append((cpu1 - cpu0) * 1e3)
        child_cpu.append((kids1 - kids0) * 1e3)
        run_wall.append((t2 - t1) * 1e3)
        reap_wall.append((t3 - t2) * 1e3)
        if jail.returncode != 0:
            raise RuntimeError(f"jail exited with {jail.returncode}")
    zygote_ms = (_proc_cpu(zygote.pid) - zygote_cpu0) * 1e3 / count
    spawn_cpu = [ms + zygote_ms for ms in spawn_cpu]
    return {"spawn_wall_ms": _summary(spawn_wall), "spawn_parent_cpu_ms": _summary(spawn_cpu),
            "child_cpu_ms": _summary(child_cpu), "exit_wall_ms": _summary(run_wall),
            "reap_wall_ms": _summary(reap_wall), "parent_rss_kib": _rss_kib(zygote.pid),
            "parent_minor_faults": _summary(parent_faults),
            "child_minor_faults": _summary(child_faults)}


def cow_cost(pages: int = 4096, reps: int = 20) -> dict[str, Any]:
    """CPU of one copy-on-write page fault in a forked child of this (supervisor-sized)
    process: children that write one byte into each of `pages` pages that the parent
    has dirtied, minus children that write nothing."""
    size = pages * 4096
    buf = bytearray(size)
    for i in range(0, size, 4096):
        buf[i] = 1  # resident and private in the parent: the child's write must copy
    out: dict[str, list[float]] = {"touch": [], "none": [], "faults": []}
    for rep in range(reps * 2):
        touch = rep % 2 == 0
        cpu0, f0 = _rusage_cpu(resource.RUSAGE_CHILDREN), _faults(resource.RUSAGE_CHILDREN)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            if touch:
                for i in range(0, size, 4096):
                    buf[i] = 2
            os._exit(0)
        os.waitpid(pid, 0)
        cpu1, f1 = _rusage_cpu(resource.RUSAGE_CHILDREN), _faults(resource.RUSAGE_CHILDREN)
        out["touch" if touch else "none"].append((cpu1 - cpu0) * 1e3)
        if touch:
            out["faults"].append(f1 - f0)
    extra = statistics.median(out["touch"]) - statistics.median(out["none"])
    return {"pages": pages, "child_cpu_ms_touching": statistics.median(out["touch"]),
            "child_cpu_ms_idle": statistics.median(out["none"]),
            "faults_touching": statistics.median(out["faults"]),
            "us_per_cow_fault": extra * 1e3 / pages}


def _rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def log_cost(count: int) -> dict[str, Any]:
    sink = io.StringIO()
    logs.setup("json", stream=sink)
    fields = dict(conn_id=1, client="127.0.0.1:40000", local="127.0.0.1:9443", sni=None,
                  vhost="default", tls_version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384",
                  alpn=None, bytes_in=23, bytes_out=347, handshake_ms=1.5, duration_ms=3.2,
                  outcome="ok", detail=None, notes=None, worker_pid=1234, worker_uid=640001,
                  worker_exit=0, violation=None, syscall=None)
    times = []
    for i in range(count):
        fields["conn_id"] = i
        t0 = time.perf_counter()
        logs.event("connection", logging.INFO, **fields)
        times.append((time.perf_counter() - t0) * 1e3)
        if i % 256 == 0:
            sink.seek(0)
            sink.truncate()
    return {"log_record_ms": _summary(times)}


def _handshake(client: ssl.SSLObject, c_in: ssl.MemoryBIO, c_out: ssl.MemoryBIO,
               server: ssl.SSLObject, s_in: ssl.MemoryBIO, s_out: ssl.MemoryBIO
               ) -> tuple[float, float]:
    """Drive both ends in memory; return the server side's (wall, CPU) seconds."""
    wall = cpu = 0.0
    client_done = server_done = False
    for _ in range(50):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        if c_out.pending:
            s_in.write(c_out.read())
        if not server_done:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
            finally:
                wall += time.perf_counter() - t0
                cpu += time.thread_time() - c0
        if s_out.pending:
            c_in.write(s_out.read())
        if client_done and server_done and not s_out.pending and not c_out.pending:
            return wall, cpu
    raise RuntimeError("handshake did not finish")


def _client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # like s_time: the CertificateVerify is still checked
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def handshakes(server_ctx: ssl.SSLContext, count: int, before_each=None, after_each=None
               ) -> dict[str, list[float]]:
    client_ctx = _client_context()
    walls, cpus = [], []
    for _ in range(count):
        if before_each:
            before_each()
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
        server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
        wall, cpu = _handshake(client, c_in, c_out, server, s_in, s_out)
        if server.version() != "TLSv1.3":
            raise RuntimeError(f"negotiated {server.version()}")
        walls.append(wall * 1e3)
        cpus.append(cpu * 1e3)
        if after_each:
            after_each()
    return {"wall": walls, "cpu": cpus}


def keyholder_cost(sup: Supervisor, count: int) -> dict[str, Any]:
    config = sup.config
    slots, key_of_vhost = key_slots(config)
    holder = KeyHolder(sup.launcher, sup.keyholder_spec, slots)
    holder.start()
    try:
        contexts = build_contexts(config.vhosts, key_of_vhost)
        channel: list[socket.socket] = []
        rtts: list[float] = []

        def open_channel() -> None:
            sock = holder.channel(1)
            channel.append(sock)
            _worker.set_keyholder(sock.fileno(), config.keyholder_timeout)

        def close_channel() -> None:
            rtts.append(_worker.stats()[2] * 1e3)
            _worker.set_keyholder(-1, config.keyholder_timeout)
            channel.pop().close()

        assert holder.jail is not None
        kh_pid = holder.jail.pid
        handshakes(contexts[0], 20, open_channel, close_channel)  # warm-up
        rtts.clear()
        kh0 = _proc_cpu(kh_pid)
        remote = handshakes(contexts[0], count, open_channel, close_channel)
        kh1 = _proc_cpu(kh_pid)
        signatures_ok, signatures_failed, _ = _worker.stats()
    finally:
        holder.stop()
    local_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    local_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    local_ctx.options |= ssl.OP_NO_TICKET
    local_ctx.num_tickets = 0
    vhost = config.vhosts[0]
    local_ctx.load_cert_chain(vhost.cert, vhost.key)
    handshakes(local_ctx, 20)
    local = handshakes(local_ctx, count)
    return {
        "signature_rtt_ms": _summary(rtts),
        "remote_server_wall_ms": _summary(remote["wall"]),
        "remote_server_cpu_ms": _summary(remote["cpu"]),
        "local_server_wall_ms": _summary(local["wall"]),
        "local_server_cpu_ms": _summary(local["cpu"]),
        "keyholder_cpu_ms_per_signature": (kh1 - kh0) * 1e3 / count,
        "signatures_ok": signatures_ok, "signatures_failed": signatures_failed,
    }


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--jails", type=int, default=200)
    parser.add_argument("--handshakes", type=int, default=200)
    parser.add_argument("--logs", type=int, default=2000)
    parser.add_argument("--uid-first", type=int, default=650_000,
                        help="host uids for these jails (not the running titus's range)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("titus_costs: must run as root", file=sys.stderr)
        return 1
    config = load_config(args.config)
    config = replace(config, uid_first=args.uid_first, uid_count=1024)
    sup = Supervisor(config)
    sup.generations.start_zygote(sup.gen)
    zygote = sup.gen.zygote
    assert zygote is not None
    try:
        result: dict[str, Any] = {"affinity": sorted(os.sched_getaffinity(0))}
        result["jail"] = jail_cost(sup, zygote, args.jails)
        result["keyholder"] = keyholder_cost(sup, args.handshakes)
        result["log"] = log_cost(args.logs)
        result["cow"] = cow_cost()
    finally:
        zygote.close()
        sup.launcher.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
