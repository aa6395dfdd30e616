"""The C worker's own cost per connection, without its jail: CPU and page faults.

A process built like the zygote (contexts from titus/worker/contexts.py, the
worker table, the warm-up) forks one child per connection, which runs the C
connection path (titus.worker._worker) on fds 0 (control) and 1 (a channel of a
real key holder jail), exactly as a jailed worker does after its last layer.
This process plays the supervisor; a Python client does a TLS 1.3 handshake
and one small request/response through an echo backend.  Reported: the child's
CPU (user + system, from wait4) and minor faults, per connection: what the C
path costs on top of the jail (bench/jail_spawn.py measures the jail).

    python bench/worker_path.py --config titus.conf [--count 200]   (as root)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import statistics
import sys
import threading
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from titus.config.load import load_config
from titus.keyholder.main import key_slots
from titus.supervisor import Supervisor
from titus.supervisor.keyholder import KeyHolder
from titus.wire import control
from titus.worker import _worker
from titus.worker.connection import build_table
from titus.worker.contexts import build_contexts
from titus.worker.zygote import warm_up


def client(port: int) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw) as tls:
        tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
        while tls.recv(100):  # to the close_notify the worker sends after the backend's EOF
            pass
        tls.unwrap()


def bare() -> tuple[float, int]:
    """A child that exits at once: the fork and exit of this process, to subtract."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        os._exit(0)
    _, _status, usage = os.wait4(pid, 0)
    return (usage.ru_utime + usage.ru_stime) * 1e3, usage.ru_minflt


def one(listener: socket.socket, table: _worker.Table, channel: socket.socket
        ) -> tuple[float, int, str]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    entry = table.entry
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the C worker, then _exit
        try:
            os.dup2(theirs.fileno(), 0)
            os.dup2(channel.fileno(), 1)
            _worker.run(entry)
        finally:
            os._exit(99)
    theirs.close()
    thread = threading.Thread(target=client, args=(listener.getsockname()[1],))
    thread.start()
    conn, _ = listener.accept()
    socket.send_fds(ours, [control.encode(control.Connection(conn.getsockname()[:2]))],
                    [conn.fileno()])
    conn.close()
    outcome = "?"
    backend = None
    while packet := ours.recv(control.MAX_PACKET):
        msg = control.decode_from_worker(packet)
        if isinstance(msg, control.HandshakeDone):
            backend, worker_end = socket.socketpair()
            socket.send_fds(ours, [control.encode(control.BackendReady())], [worker_end.fileno()])
            worker_end.close()
            backend.sendall(backend.recv(100))  # echo the request
            backend.shutdown(socket.SHUT_WR)
        else:
            outcome = msg.outcome
    _, _status, usage = os.wait4(pid, 0)
    thread.join()
    ours.close()
    if backend is not None:
        backend.close()
    return (usage.ru_utime + usage.ru_stime) * 1e3, usage.ru_minflt, str(outcome)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--uid-first", type=int, default=660_000)
    args = parser.parse_args()
    config = replace(load_config(args.config), uid_first=args.uid_first, uid_count=64)
    sup = Supervisor(config)
    slots, key_of_vhost = key_slots(config)
    holder = KeyHolder(sup.launcher, sup.keyholder_spec, slots)
    holder.start()
    try:
        contexts = build_contexts(config.vhosts, key_of_vhost)
        table = build_table(config.vhosts, contexts, config.max_handshake_time,
                            config.keyholder_timeout)
        warm_up(contexts, table)
        listener = socket.create_server(("127.0.0.1", 0))
        cpu, faults, outcomes, bare_cpu, bare_faults = [], [], [], [], []
        for i in range(args.count + 10):
            c, f, o = one(listener, table, holder.channel(1))
            if i >= 10:  # the first ones warm the key holder
                cpu.append(c)
                faults.append(f)
                outcomes.append(o)
                c, f = bare()
                bare_cpu.append(c)
                bare_faults.append(f)
        print(json.dumps({
            "child_cpu_ms": {"p50": statistics.median(cpu), "mean": statistics.fmean(cpu)},
            "child_minor_faults": {"p50": statistics.median(faults)},
            "bare_fork_exit_cpu_ms": {"p50": statistics.median(bare_cpu),
                                      "mean": statistics.fmean(bare_cpu)},
            "bare_fork_exit_minor_faults": {"p50": statistics.median(bare_faults)},
            "rss_kib_of_this_process": int(Path("/proc/self/status").read_text()
                                           .split("VmRSS:")[1].split()[0]),
            "outcomes": {o: outcomes.count(o) for o in set(outcomes)},
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        }, indent=1))
    finally:
        holder.stop()
        sup.launcher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
