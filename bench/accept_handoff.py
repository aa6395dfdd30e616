"""Who should accept(): the supervisor (then hand the socket to a worker) or the worker?

Measures, in CPU time per connection, the two designs' costs on the side that
differs (issue 13 asked for this measurement; DESIGN §2 step 1):

* handoff (what titus does): the supervisor accepts, reads the local address,
  sets TCP_NODELAY, sends the socket with a Connection message, closes its copy;
* worker accept: the supervisor only reads the worker's Accepted report (peer and
  local address, binary, as the Connection message is) and builds the same record;
  each idle worker waits on the listener itself: with one listener a blocking
  accept() wakes one waiter; with poll() on several (a worker cannot block on
  two) every idle worker wakes for every connection, and all but one find
  nothing (EAGAIN): that herd is measured with N idle workers.

As root or not; loopback only; bounded (COUNT connections per design).

    python bench/accept_handoff.py [--count 2000] [--idle 16]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from titus.wire import control

ACCEPTED = struct.Struct("!B4sH4sH")  # type, peer ip, port, local ip, port (IPv4 here)


def _cpu() -> float:
    return time.thread_time()


def handoff(count: int) -> float:
    """Supervisor CPU per connection: accept + getsockname + NODELAY + send_fds + close."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    ctl, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    spent = 0.0
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port))
        t0 = _cpu()
        conn, _peer = listener.accept()
        local = conn.getsockname()[:2]
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socket.send_fds(ctl, [control.encode(control.Connection(local))], [conn.fileno()])
        conn.close()
        spent += _cpu() - t0
        _, fds, _, _ = socket.recv_fds(worker_end, 64, 1)  # the worker's side: not counted
        for fd in fds:
            os.close(fd)
        client.close()
    listener.close()
    return spent / count * 1e3


def report(count: int) -> float:
    """Supervisor CPU per connection when the worker accepted: read and decode its report."""
    ctl, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    packet = ACCEPTED.pack(0x83, socket.inet_aton("127.0.0.1"), 40000,
                           socket.inet_aton("127.0.0.1"), 443)
    spent = 0.0
    for _ in range(count):
        worker_end.send(packet)
        t0 = _cpu()
        data = ctl.recv(control.MAX_PACKET + 1, socket.MSG_DONTWAIT)
        if len(data) != ACCEPTED.size or data[0] != 0x83:
            raise RuntimeError("bad report")
        _, pip, pport, lip, lport = ACCEPTED.unpack(data)
        peer, local = (socket.inet_ntoa(pip), pport), (socket.inet_ntoa(lip), lport)
        spent += _cpu() - t0
        assert peer and local
    return spent / count * 1e3


def herd(count: int, idle: int, blocking: bool) -> float:
    """CPU of `idle` waiting workers per connection (all processes, user + system)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(blocking)
    port = listener.getsockname()[1]
    done_r, done_w = os.pipe()
    pids = []
    for _ in range(idle):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - a waiting worker
            os.close(done_r)
            poller = select.poll()
            poller.register(listener.fileno(), select.POLLIN)
            while True:
                if not blocking:
                    poller.poll()
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.close()
                os.write(done_w, b"x")
        pids.append(pid)
    os.close(done_w)
    start = sum(_proc_cpu(p) for p in pids)  # live children: /proc, not RUSAGE_CHILDREN
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)):
            os.read(done_r, 1)
    time.sleep(0.2)
    spent = sum(_proc_cpu(p) for p in pids) - start
    for pid in pids:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    listener.close()
    os.close(done_r)
    return spent / count * 1e3


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--idle", type=int, default=16)
    args = parser.parse_args()
    if not 1 <= args.count <= 100000 or not 1 <= args.idle <= 256:
        parser.error("--count 1..100000, --idle 1..256")
    out = {
        "supervisor_handoff_ms": handoff(args.count),
        "supervisor_report_ms": report(args.count),
        "workers_blocking_accept_ms": herd(args.count, args.idle, blocking=True),
        "workers_poll_accept_ms": herd(args.count, args.idle, blocking=False),
        "idle_workers": args.idle,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
