"""One client connection, as the supervisor sees it: accept, hand the socket to an idle
worker, check its handshake report, connect its backend (the broker), and once the
worker has exited, log one record.

The supervisor never parses TLS: what it knows of the handshake is what the
worker reports, checked where it can be (the vhost must be reachable from the
local address it accepted on).  The backend and the PROXY header come from the
supervisor's own accept(), never from the worker.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandbox.launcher import JailProcess, Violation
from sandbox.seccomp import syscall_name
from titus import logs
from titus.config.model import VHost
from titus.supervisor import clientid
from titus.supervisor.broker import BackendConnect
from titus.supervisor.capwatch import CapWatch
from titus.supervisor.lifecycle import KillReason, Phase, Worker
from titus.supervisor.metrics import NO_VHOST
from titus.supervisor.workercalls import WorkerCalls
from titus.wire import control, proxyproto
from titus.wire.outcome import ALARMING, Outcome

if TYPE_CHECKING:
    from titus.supervisor import Supervisor
    from titus.supervisor.generation import Generation

ACCEPT_BATCH = 32
VIOLATION_NAME_WAIT = 2.0  # how long a policy-violation record waits for the kernel's name


@dataclass
class Conn:
    conn_id: int
    peer: tuple[str, int]
    local: tuple[str, int]
    accepted: float


def sockaddr_pair(addr: tuple) -> tuple[str, int]:
    return (str(addr[0]), int(addr[1]))


def _addr(addr: tuple) -> str:
    """127.0.0.1:443 or [::1]:443, as every record writes an address."""
    return logs.endpoint(addr)


class Connections:
    """Every step of a connection, from accept on a listener (listeners.py) to its record."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.loop = sup.loop
        self.metrics = sup.metrics
        self.next_conn_id = 1
        self.cap = CapWatch(self)
        self.calls = WorkerCalls(self.loop)

    # -- accept, hand-off, handshake, backend ----------------------------------------

    def accept(self, listener: socket.socket) -> None:
        pool = self.sup.pool
        for _ in range(ACCEPT_BATCH):
            if not pool.idle:
                pool.refill()
                # Out of fds with no worker on its way, the client is refused below;
                # otherwise it waits in the kernel's backlog for a worker.
                if not pool.idle and (pool.fd_short is None or self.sup.gen.pending):
                    self.sup.listeners.pause()
                    if pool.at_cap:
                        self.cap.hit()
                    return
            try:
                client, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if not pool.out_of_fds(e, "accept", spawning=False):
                        logs.event("accept-failed", logging.ERROR, error=e.strerror)
                    self.sup.listeners.pause()
                    self.loop.call_later(0.1, self.sup.listeners.resume)
                    return
                continue
            if not pool.idle and pool.fd_short is not None:
                client.close()  # out of fds: refused at once, not left hanging in the backlog
                pool.fd_short += 1
                continue
            self.assign(pool.idle.popleft(), client, peer)
        pool.schedule_refill(0)

    def assign(self, worker: Worker, client: socket.socket, peer: tuple) -> None:
        pool = self.sup.pool
        conn = Conn(self.next_conn_id, sockaddr_pair(peer), sockaddr_pair(client.getsockname()),
                    time.monotonic())
        self.next_conn_id += 1
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socket.send_fds(worker.ctl, [control.encode(control.Connection(conn.local))],
                            [client.fileno()])
        except OSError as e:
            worker.notes.append(f"hand-off failed: {e}")
            worker.kill(KillReason.HAND_OFF_FAILED)
        finally:
            client.close()
        worker.enter(Phase.HANDSHAKE)
        worker.conn = conn
        worker.timer = self.loop.call_later_in_order(worker.gen.config.max_handshake_time,
                                                     lambda: self.handshake_timeout(worker))
        pool.schedule_refill(0)

    def handshake_timeout(self, worker: Worker) -> None:
        if worker.phase is Phase.HANDSHAKE:
            worker.kill(KillReason.TIMEOUT)

    def on_worker_message(self, worker: Worker) -> None:
        try:
            packet = worker.ctl.recv(control.MAX_PACKET + 1, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            packet = b""
        if not packet:
            self.loop.forget(worker.ctl.fileno())
            return
        try:
            msg = control.decode_from_worker(packet)
        except control.ControlError as e:
            logs.event("forged-control-message", logging.WARNING, pid=worker.jail.pid,
                       error=str(e))
            self.metrics.forged.inc()
            worker.kill(KillReason.FORGED_MESSAGE)
            return
        # A message is accepted only where the phase it leads to may follow this one.
        if isinstance(msg, control.HandshakeDone) and worker.may_enter(Phase.BACKEND):
            self.on_handshake(worker, msg)
        elif isinstance(msg, control.Finished) and worker.may_enter(Phase.DONE):
            worker.finished = msg
            worker.enter(Phase.DONE)
        else:
            logs.event("unexpected-control-message", logging.WARNING, pid=worker.jail.pid,
                       state=worker.phase, message=type(msg).__name__)
            worker.kill(KillReason.UNEXPECTED_MESSAGE)

    def on_handshake(self, worker: Worker, msg: control.HandshakeDone) -> None:
        assert worker.conn is not None
        if worker.timer:
            worker.timer.cancel()
        config = worker.gen.config
        vhosts = config.vhosts
        local_ip, local_port = worker.conn.local
        # The worker chose the vhost from SNI, which only it saw; the supervisor
        # checks what it can: the vhost must be reachable from this local address.
        if not (0 <= msg.vhost < len(vhosts) and vhosts[msg.vhost].matches_local(local_ip,
                                                                                 local_port)):
            logs.event("forbidden-backend-request", logging.WARNING, pid=worker.jail.pid,
                       vhost=msg.vhost)
            self.metrics.forged.inc()
            worker.kill(KillReason.FORBIDDEN_BACKEND)
            return
        self.sup.pool.note_success()
        worker.handshake, worker.vhost = msg, msg.vhost
        worker.enter(Phase.BACKEND)
        vhost = vhosts[msg.vhost]
        worker.refused = clientid.refusal(vhost.tls, msg)
        if worker.refused is not None:  # the worker closes the TLS session, no backend
            with contextlib.suppress(OSError):
                worker.ctl.send(control.encode(control.BackendFailed("client not allowed")))
            return
        addresses = self.backend_addresses(worker.gen, msg.vhost, vhost, worker.conn)
        source = None
        if config.transparent in ("yes", "backend-only"):
            source = worker.conn.peer
        worker.broker = BackendConnect(
            self.loop, addresses, config.backend_connect_timeout,
            lambda sock, reason: self.on_backend(worker, sock, reason),
            header=(header := self.proxy_header(vhost, worker.conn, msg)), source=source,
            start=False)
        worker.header_bytes = len(header)
        worker.broker.start()

    def backend_addresses(self, gen: Generation, index: int, vhost: VHost, conn: Conn
                          ) -> list[tuple[int, tuple]]:
        if vhost.backend_host is None or gen.config.transparent == "yes":
            port = vhost.backend_port or conn.local[1]
            host = conn.local[0]
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            if host.startswith("::ffff:"):
                host, family = host[7:], socket.AF_INET
            addr: tuple = (host, port, 0, 0) if family == socket.AF_INET6 else (host, port)
            return [(family, addr)]
        return list(gen.backends.get(index, []))

    def proxy_header(self, vhost: VHost, conn: Conn, hs: control.HandshakeDone) -> bytes:
        """The PROXY header for the backend: addresses from our own accept(), never the worker's."""
        if vhost.proxy_protocol == "v1":
            return proxyproto.v1(conn.peer, conn.local)
        if vhost.proxy_protocol == "v2":
            facts = proxyproto.TLSFacts(sni=hs.sni, version=hs.version, cipher=hs.cipher,
                                        alpn=hs.alpn, client_cn=hs.client_cn)
            return proxyproto.v2(conn.peer, conn.local, facts)
        return b""

    def on_backend(self, worker: Worker, sock: socket.socket | None, reason: str | None) -> None:
        broker, worker.broker = worker.broker, None
        if worker.jail.returncode is not None or not worker.may_enter(Phase.RELAY):
            if sock:
                sock.close()
            return
        try:
            if sock is None:
                worker.notes.append(f"backend: {reason}")
                worker.ctl.send(control.encode(control.BackendFailed(reason or "failed")))
            else:
                with contextlib.suppress(OSError):
                    local, peer = ((broker.local, broker.peer) if broker and broker.peer
                                   else (sock.getsockname(), sock.getpeername()))
                    worker.backend_pair = (sockaddr_pair(local), sockaddr_pair(peer))
                    worker.backend = f"{_addr(local)}->{_addr(peer)}"
                socket.send_fds(worker.ctl, [control.encode(control.BackendReady())],
                                [sock.fileno()])
                worker.enter(Phase.RELAY)
        except OSError:
            pass  # the worker is gone; the reaper logs it
        finally:
            if sock:
                sock.close()

    # -- the worker's end, and the log record ----------------------------------------

    def worker_ended(self, worker: Worker) -> None:
        sup, pool = self.sup, self.sup.pool
        # Read what the worker said before it died (its last message may be queued
        # behind the exit), until its Finished: nothing after that counts (and a worker
        # that reported already costs no read here).
        while worker.finished is None and worker.ctl.fileno() >= 0:
            try:
                packet = worker.ctl.recv(control.MAX_PACKET + 1, socket.MSG_DONTWAIT)
            except OSError:
                break
            if not packet:
                break
            with contextlib.suppress(control.ControlError):
                msg = control.decode_from_worker(packet)
                if isinstance(msg, control.Finished):
                    worker.finished = msg
        self.loop.forget(worker.ctl.fileno())
        worker.ctl.close()
        self.calls.forget(worker)
        if worker.timer:
            worker.timer.cancel()
        if worker.broker:
            worker.broker.cancel()
        if worker in pool.idle:
            pool.idle.remove(worker)
        if worker.conn is None:
            if not sup.stopping and worker.killed_for is None:
                pool.note_failure(f"idle worker exited ({worker.jail.returncode})")
        elif self.needs_syscall_name(worker.jail):
            self.name_violation_later(worker, time.monotonic() + VIOLATION_NAME_WAIT)
        else:
            self.log_connection(worker)
        if sup.generations.old:
            sup.generations.retire()
        if sup.stopping and sup.drained:
            self.loop.stop()
        pool.schedule_refill(0)

    def needs_syscall_name(self, jail: JailProcess) -> bool:
        return (jail.violation is not None and jail.violation.syscall is None
                and self.sup.launcher.violations.available)

    def name_violation_later(self, worker: Worker, deadline: float) -> None:
        """The kernel's audit record may trail the death by a moment: wait for it in
        the loop (never blocking it), then log the connection either way."""
        jail = worker.jail
        found = self.sup.launcher.violations.lookup(jail.pid, wait=0)
        if found is not None:
            arch, number = found
            with contextlib.suppress(ValueError):
                jail.violation = Violation(syscall_name(number, arch), number, arch)
        if found is None and time.monotonic() < deadline:
            self.loop.call_later(0.02, lambda: self.name_violation_later(worker, deadline))
            return
        self.log_connection(worker)

    def log_connection(self, worker: Worker) -> None:
        conn, hs, fin, jail = worker.conn, worker.handshake, worker.finished, worker.jail
        assert conn is not None
        outcome = worker.outcome()
        level = logging.WARNING if outcome in ALARMING else logging.INFO
        vhost = self.vhost_name(worker)
        bytes_in, bytes_out = worker.relayed()
        self.count_connection(worker, outcome, vhost, bytes_in, bytes_out)
        logs.event(
            "connection", level,
            conn_id=conn.conn_id, client=_addr(conn.peer), local=_addr(conn.local),
            sni=hs.sni if hs else fin.sni if fin else None, vhost=vhost,
            tls_version=hs.version if hs else None, cipher=hs.cipher if hs else None,
            alpn=hs.alpn if hs else None, client_cn=hs.client_cn if hs else None,
            client_subject=hs.client_subject if hs else None,
            backend=worker.backend,
            bytes_in=bytes_in, bytes_out=bytes_out,
            handshake_ms=hs.handshake_ms if hs else None,
            duration_ms=round((time.monotonic() - conn.accepted) * 1000, 3),
            outcome=outcome,
            detail=worker.refused or (fin.detail if fin else None) or worker.killed_for,
            notes="; ".join(worker.notes) or None,
            worker_pid=jail.pid, worker_uid=jail.uid, worker_exit=jail.exit_status,
            violation=str(jail.violation) if jail.violation else None,
            syscall=jail.violation.syscall if jail.violation else None)

    def vhost_name(self, worker: Worker) -> str | None:
        """The vhost of the connection: the one it was served by, else the one the worker
        had chosen when its handshake failed (if that vhost can serve this local address)."""
        vhosts, conn = worker.gen.config.vhosts, worker.conn
        index = worker.vhost
        if index is None and worker.finished is not None and conn is not None:
            index = worker.finished.vhost
            if index is not None and not (0 <= index < len(vhosts) and
                                          vhosts[index].matches_local(*conn.local)):
                index = None
        return vhosts[index].name if index is not None else None

    def count_connection(self, worker: Worker, outcome: Outcome, vhost: str | None,
                         bytes_in: int, bytes_out: int) -> None:
        m, conn, hs, fin = self.metrics, worker.conn, worker.handshake, worker.finished
        assert conn is not None
        m.connection(outcome, vhost or NO_VHOST).inc()
        m.duration.observe(time.monotonic() - conn.accepted)
        if hs is not None:
            m.handshake.observe(hs.handshake_ms / 1000)
        m.bytes_in.inc(bytes_in)
        m.bytes_out.inc(bytes_out)
        if fin is not None:
            m.keyholder_ok.inc(fin.signatures)
            if fin.signature_failures:
                m.keyholder_failed.inc(fin.signature_failures)
        if worker.jail.violation is not None:
            m.violations.labels(worker.jail.violation.syscall or "unknown").inc()
