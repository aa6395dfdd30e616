"""The supervisor: listeners, the pool of pre-jailed workers, the backend broker.

It runs as root, never reads a private key and never parses TLS.  Each
client connection goes to an idle worker that was jailed in advance; the
worker reports its handshake and asks for its vhost's backend, which the
broker connects and passes back.  When the worker exits the supervisor logs
one record for the connection and tops the pool up again.

Workers are cloned by the generation's zygote (titus/worker/zygote.py), asked
without waiting: the supervisor never forks on the connection path, and the
workers are still its children, which it reaps.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import signal
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from sandbox.errors import JailError
from sandbox.forkserver import ForkServer, ForkServerError
from sandbox.launcher import JailProcess, Launcher, Violation
from sandbox.profile import Profile, load_profile
from sandbox.seccomp import syscall_name
from sandbox.spec import JailSpec, NetworkMode, UidRange
from sandbox.uids import UidExhausted, process_uid
from titus import logs
from titus.config.model import Config, Listener, VHost
from titus.supervisor import activation, clientid, ocsp, sdnotify
from titus.supervisor.broker import BackendConnect
from titus.supervisor.jailstderr import JailStderr
from titus.supervisor.keyholder import KeyHolder, KeyHolderError, KeySlot
from titus.supervisor.loop import Loop, Timer
from titus.supervisor.metrics import Metrics, MetricsEndpoint
from titus.supervisor.resolve import resolve_vhosts
from titus.supervisor.transparent import set_transparent
from titus.wire import control, proxyproto
from titus.worker.remotekey import CertChain, RemoteKeyError, read_chain
from titus.worker.zygote import WORKER, ZygoteSetup

ACCEPT_BATCH = 32
BACKOFF_MIN, BACKOFF_MAX = 0.1, 30.0
FAILURES_BEFORE_BACKOFF = 3
FD_RETRY = 0.2  # out of fds: spawn again this soon (load, not a broken jail: no growing backoff)
VIOLATION_NAME_WAIT = 2.0  # how long a policy-violation record waits for the kernel's name
MAX_PENDING_SPAWNS = 8  # worker requests queued at the zygote at once
SPAWN_REPLY_TIMEOUT = 15.0  # a zygote that answers nothing for this long is replaced
EARLY_EXIT_KEEP = 60.0  # how long the exit of a not-yet-reported worker is remembered


class StartupError(RuntimeError):
    """titus cannot start; the message is one line for the operator."""


@dataclass
class Conn:
    conn_id: int
    peer: tuple[str, int]
    local: tuple[str, int]
    accepted: float


@dataclass
class Generation:
    """Everything derived from one configuration: what a worker spawned under it uses
    for its whole life, even after a reload (SIGHUP) has made a newer one current."""

    config: Config
    keyholder: KeyHolder
    key_ids: tuple[int, ...]
    chains: tuple[CertChain, ...]  # by key id
    backends: dict[int, list[tuple[int, tuple]]] = field(default_factory=dict)
    staples: list[ocsp.Staple | None] = field(default_factory=list)  # per vhost
    zygote: ForkServer | None = None
    pending: dict[int, PendingSpawn] = field(default_factory=dict)  # by zygote request id

    @property
    def staple_values(self) -> tuple[tuple[bytes | None, float | None] | None, ...]:
        return tuple(s.value if s is not None else None for s in self.staples)


@dataclass
class PendingSpawn:
    """A worker asked of the zygote: our end of its control channel, its uid."""

    ctl: socket.socket
    uid: int
    epoch: int  # Supervisor.epoch when asked
    asked: float


@dataclass
class Worker:
    jail: JailProcess
    ctl: socket.socket
    gen: Generation
    state: str = "idle"  # idle -> handshake -> backend -> relay -> done
    conn: Conn | None = None
    handshake: control.HandshakeDone | None = None
    finished: control.Finished | None = None
    timer: Timer | None = None
    broker: BackendConnect | None = None
    killed_for: str | None = None
    vhost: int | None = None
    backend: str | None = None  # "local->peer" of the backend connection handed over
    refused: str | None = None  # why the vhost's client-allow-* refused the client
    notes: list[str] = field(default_factory=list)


def open_listener(listener: Listener, transparent: bool = False) -> socket.socket:
    """A listening socket; `transparent` (transparent yes) lets TPROXY hand it others' addresses."""
    sock = socket.socket(listener.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if transparent:
            set_transparent(sock)
        if listener.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                            0 if listener.dual_stack else 1)
        sock.bind(listener.sockaddr)
        sock.listen(1024)
    except OSError as e:
        sock.close()
        where = f" ({listener.source})" if listener.source else ""
        raise StartupError(f"cannot listen on {listener}{where}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def _sockaddr_pair(addr: tuple) -> tuple[str, int]:
    return (str(addr[0]), int(addr[1]))


def _addr(addr: tuple) -> str:
    """127.0.0.1:443 or [::1]:443, as every record writes an address."""
    return logs.endpoint(addr)


def _children() -> list[int]:
    """Our live child processes (the supervisor has one thread)."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return [int(pid) for pid in f.read().split()]
    except OSError:
        return []


def _jail_profile(name: str) -> Profile:
    """A titus jail profile, which must keep every layer titus's promises rest on: an
    operator's edit may change the syscall list, not drop the filter or the empty root."""
    profile = load_profile(name)
    spec = profile.spec
    missing = [what for what, ok in (
        ("a [seccomp] table", spec.seccomp_bpf is not None),
        ("empty_root = true", spec.empty_root),
        ("no_new_privs = true", spec.no_new_privs),
        ("capabilities dropped", spec.drop_capabilities),
        ("dumpable = false", not spec.dumpable),
        ("a network that is not the host's", spec.network != NetworkMode.HOST),
    ) if not ok]
    if missing:
        raise StartupError(f"{profile.path}: titus will not run its {name} jails without "
                           f"{', '.join(missing)}")
    return profile


def key_slots(config: Config) -> tuple[list[KeySlot], list[int]]:
    """One key-holder slot per distinct (key, cert) pair; the slot of each vhost."""
    slots: dict[tuple[str, str], KeySlot] = {}
    of_vhost = []
    for vhost in config.vhosts:
        pair = (str(vhost.key), str(vhost.cert))
        if pair not in slots:
            slots[pair] = KeySlot(len(slots), vhost.key, vhost.cert, vhost.cert.read_bytes(),
                                  str(vhost.key_source))
        of_vhost.append(slots[pair].key_id)
    return list(slots.values()), of_vhost


class Supervisor:
    # What the zygote runs to build its workers (module:function, see sandbox.forkserver).
    zygote_setup = "titus.worker.zygote:setup"

    def __init__(self, config: Config, config_path: str | None = None,
                 overrides: Sequence[tuple[str, str]] = ()) -> None:
        self.config_path = config_path
        self.overrides = list(overrides)
        self.loop = Loop()
        self.launcher = Launcher()
        uid_range = UidRange(config.uid_first, config.uid_count)
        self.worker_spec: JailSpec = replace(_jail_profile("titus-worker").spec,
                                             name="titus-worker", uid_range=uid_range)
        keyholder = _jail_profile("titus-keyholder").spec
        rlimits = tuple((k, v) for k, v in keyholder.rlimits if k != "nofile")
        self.keyholder_spec: JailSpec = replace(
            keyholder, name="titus-keyholder", uid_range=uid_range,
            rlimits=(*rlimits, ("nofile", config.max_children + 64)))
        self.stderr_fd = 2
        self.gen = self.build_generation(config)
        self.old_gens: list[Generation] = []
        self.listeners: list[socket.socket] = []
        self.listener_of: dict[Listener, socket.socket] = {}
        self.workers: dict[int, Worker] = {}
        self.idle: deque[Worker] = deque()
        self.paused = False
        self.stopping = False
        self.failures = 0
        self.backoff_until = 0.0
        self.backoff = BACKOFF_MIN
        self.fd_short: int | None = None  # out of fds: clients refused since it began
        self.next_conn_id = 1
        self.refill_scheduled = False
        self.keyholder_restarts = 0
        # Bumped when what idle workers hold goes stale (the key holder restarted, an
        # OCSP response changed): workers asked for before are retired on arrival.
        self.epoch, self.epoch_reason = 0, ""
        self.early_exits: dict[int, tuple[int, float]] = {}  # pid -> (wait status, when)
        self.metrics = Metrics()
        self.metrics.workers.labels("idle").set_function(lambda: len(self.idle))
        self.metrics.workers.labels("busy").set_function(
            lambda: len(self.workers) - len(self.idle))
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.stderr = JailStderr(self.loop)
        self.gen.keyholder.stderr_fd = self.stderr_fd = self.stderr.write_fd

    def build_generation(self, config: Config) -> Generation:
        slots, key_of_vhost = key_slots(config)
        keyholder = KeyHolder(self.launcher, self.keyholder_spec, slots)
        keyholder.stderr_fd = self.stderr_fd
        try:  # from the bytes the key holder checks its key against
            chains = tuple(read_chain(slot.cert_pem, str(slot.cert_path)) for slot in slots)
            staples = [ocsp.Staple.for_vhost(v, interval=0)  # refresh_staples paces them
                       if v.ocsp_response is not None else None for v in config.vhosts]
        except (RemoteKeyError, ocsp.OCSPError) as e:
            raise StartupError(str(e)) from None
        for staple in staples:
            if staple is not None:
                staple.refresh()
        return Generation(config, keyholder, tuple(key_of_vhost), chains, staples=staples)

    def start_zygote(self, gen: Generation) -> None:
        """Exec the generation's zygote; it builds the TLS contexts (errors are one line)."""
        config = gen.config
        zygote = ForkServer(self.zygote_setup, ZygoteSetup(
            self.worker_spec, tuple(config.vhosts), gen.key_ids, gen.chains,
            config.max_handshake_time, config.keyholder_timeout, gen.staple_values),
            stderr=self.stderr_fd)
        try:
            zygote.start()
        except ForkServerError as e:
            raise StartupError(str(e)) from None
        gen.zygote = zygote
        self.loop.add_reader(zygote.fileno(), lambda: self.on_zygote(gen))

    @property
    def config(self) -> Config:
        return self.gen.config

    @property
    def keyholder(self) -> KeyHolder:
        return self.gen.keyholder

    # -- start-up ------------------------------------------------------------------

    def start(self) -> None:
        self.resolve_backends()
        transparent = self.config.transparent == "yes"
        try:  # systemd socket activation: the sockets titus.socket bound, passed in
            passed = activation.match(self.config.listeners, activation.passed_sockets())
        except activation.ActivationError as e:
            raise StartupError(str(e)) from None
        for sock in passed.values() if transparent else ():
            set_transparent(sock)
        self.listener_of = {lst: passed.get(lst) or open_listener(lst, transparent)
                            for lst in self.config.listeners}
        self.listeners = list(self.listener_of.values())
        if self.config.metrics_listen is not None:
            self.metrics_endpoint = MetricsEndpoint(
                self.loop, open_listener(self.config.metrics_listen), self.metrics)
        try:
            self.keyholder.start()
        except KeyHolderError as e:
            raise StartupError(str(e)) from None
        self.start_zygote(self.gen)
        for notice in self.config.notices:
            logs.event("config-notice", logging.WARNING, notice=str(notice))
        self.loop.add_signal_handler(signal.SIGCHLD, self.reap)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.shutdown)
        if self.config_path is not None:
            self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        for sock in self.listeners:
            self.loop.add_reader(sock.fileno(), lambda s=sock: self.accept(s))
        sdnotify.notify("READY=1", f"MAINPID={os.getpid()}",
                        f"STATUS=serving {len(self.config.vhosts)} vhosts")
        logs.event("started", listeners=[_addr(sock.getsockname()) for sock in self.listeners],
                   metrics=(_addr(self.metrics_endpoint.sock.getsockname())
                            if self.metrics_endpoint else None),
                   vhosts=len(self.config.vhosts), min_spare=self.config.min_spare_children,
                   max_children=self.config.max_children)
        self.refill()
        self.loop.call_later(ocsp.REFRESH_INTERVAL, self.refresh_staples)

    def resolve_backends(self, gen: Generation | None = None) -> None:
        """Resolve every backend name now: never on the connection path."""
        gen = gen or self.gen
        try:
            gen.backends.update(resolve_vhosts(gen.config))
        except OSError as e:
            raise StartupError(str(e)) from None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [_sockaddr_pair(s.getsockname()) for s in self.listeners]

    def serve_forever(self) -> None:
        while not (self.stopping and self.drained):
            self.loop.run_once()
        self.close()

    @property
    def drained(self) -> bool:
        return not self.workers and not self.spawning

    # -- the pool ------------------------------------------------------------------

    def request_worker(self) -> bool:
        """Ask the zygote for one more worker (the answer comes to on_zygote)."""
        gen = self.gen
        if not self.keyholder.alive or gen.zygote is None:
            return False
        uids = self.launcher.uids(self.worker_spec.uid_range)
        try:
            uid = uids.allocate()
        except UidExhausted as e:
            self.note_failure(str(e))
            return False
        except OSError as e:  # the host-wide uid lock (sandbox.uids) needs an fd
            if not self.out_of_fds(e, "uid lock"):
                self.note_failure(f"uid lock: {e}")
            return False
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as e:
            uids.release(uid)
            if not self.out_of_fds(e, "control socket"):
                self.note_failure(f"control socket: {e}")
            return False
        try:
            channel = self.keyholder.channel(self.config.keyholder_budget)
        except OSError as e:
            uids.release(uid)
            ours.close()
            theirs.close()
            if not self.out_of_fds(e, "key holder channel"):
                logs.event("keyholder-channel-failed", logging.ERROR, error=str(e))
            return False
        try:
            request = gen.zygote.request(
                WORKER, uid, [theirs.fileno(), channel.fileno(), self.stderr.write_fd])
        except OSError as e:
            uids.release(uid)
            ours.close()
            self.note_failure(f"zygote request failed: {e}")
            return False
        finally:
            theirs.close()
            channel.close()
        gen.pending[request] = PendingSpawn(ours, uid, self.epoch, time.monotonic())
        self.loop.call_later(SPAWN_REPLY_TIMEOUT, lambda: self.check_reply(gen, request))
        return True

    def on_zygote(self, gen: Generation) -> None:
        assert gen.zygote is not None
        replies = gen.zygote.replies()
        if replies is None:
            self.zygote_failed(gen, "the zygote exited")
            return
        for reply in replies:
            pending = gen.pending.pop(reply.request_id, None)
            if pending is not None:
                self.spawned(gen, pending, reply.pid, reply.error)
        if not gen.pending and gen is not self.gen:
            self.retire_generations()

    def spawned(self, gen: Generation, pending: PendingSpawn, pid: int | None,
                error: JailError | None) -> None:
        uid_range = self.worker_spec.uid_range
        jail = None if pid is None else self.launcher.adopt(pid, pending.uid, "titus-worker",
                                                           uid_range)
        if jail is None:
            self.launcher.uids(uid_range).release(pending.uid)
        if error is not None or jail is None:
            pending.ctl.close()
            self.metrics.spawn_failures.inc()
            if error is None or not self.out_of_fds(error, "spawn failed"):
                self.note_failure(f"spawn failed: {error}")
        else:
            self.metrics.spawn.observe(time.monotonic() - pending.asked)
            if self.fd_short is not None:
                logs.event("fds-recovered", refused=self.fd_short)
                self.fd_short = None
            pending.ctl.setblocking(False)
            worker = Worker(jail, pending.ctl, gen)
            self.workers[jail.pid] = worker
            self.loop.add_reader(pending.ctl.fileno(), lambda: self.on_worker_message(worker))
            stale = ("shutdown" if self.stopping else "reload" if gen is not self.gen
                     else self.epoch_reason if pending.epoch != self.epoch else None)
            if stale:
                self.kill(worker, stale)
            else:
                self.idle.append(worker)
                self.resume()
        if pid is not None and pid in self.early_exits:  # reaped before we knew it
            status, _when = self.early_exits.pop(pid)
            self.child_exited(pid, status)
        self.schedule_refill(0)

    def retire_idle(self, reason: str) -> None:
        """Idle workers (and those on their way) hold something stale: replace them."""
        self.epoch, self.epoch_reason = self.epoch + 1, reason
        for worker in list(self.idle):
            self.kill(worker, reason)
        self.idle.clear()
        self.schedule_refill(0)

    def refresh_staples(self) -> None:
        """Every second: re-check the OCSP response files; a change reaches the zygote,
        and idle workers (which hold the old response) are replaced."""
        gen = self.gen
        before = gen.staple_values
        for staple in gen.staples:
            if staple is not None:
                staple.refresh()
        if gen.staple_values != before and gen.zygote is not None:
            gen.zygote.update(WORKER, gen.staple_values)
            self.retire_idle("ocsp response changed")
        if not self.stopping:
            self.loop.call_later(ocsp.REFRESH_INTERVAL, self.refresh_staples)

    def check_reply(self, gen: Generation, request: int) -> None:
        if request in gen.pending and gen.zygote is not None:
            self.zygote_failed(gen, f"the zygote did not answer in {SPAWN_REPLY_TIMEOUT:g} s")

    def zygote_failed(self, gen: Generation, why: str) -> None:
        """Replace a dead or stuck zygote; workers it made are ours and live on."""
        logs.event("zygote-failed", logging.ERROR, reason=why, pending=len(gen.pending))
        self.close_zygote(gen)
        if gen is self.gen and not self.stopping:
            self.note_failure(why)
            self.restart_zygote()

    def restart_zygote(self) -> None:
        if self.gen.zygote is not None or self.stopping:
            return
        try:
            self.start_zygote(self.gen)
        except StartupError as e:
            logs.event("zygote-restart-failed", logging.ERROR, error=str(e))
            self.loop.call_later(max(BACKOFF_MIN, self.backoff_until - time.monotonic()),
                                 self.restart_zygote)
            return
        self.schedule_refill(0)

    def close_zygote(self, gen: Generation) -> None:
        """Stop a zygote; a worker it cloned but never reported is found and killed."""
        if gen.zygote is not None:
            self.loop.forget(gen.zygote.fileno())
            gen.zygote.close()
            gen.zygote = None
        if gen.pending:
            for pending in gen.pending.values():
                pending.ctl.close()
            uids = {p.uid for p in gen.pending.values()}
            gen.pending.clear()
            orphans = self.adopt_orphans()
            for uid in uids - {jail.uid for jail in orphans}:
                self.launcher.uids(self.worker_spec.uid_range).release(uid)

    def adopt_orphans(self) -> list[JailProcess]:
        """Children the launcher does not know (cloned for us by a zygote that could not
        say so): track and kill them, so their uids are freed only once they are reaped."""
        known = {jail.pid for jail in self.launcher.live}
        known.update(g.zygote.pid for g in (self.gen, *self.old_gens) if g.zygote is not None)
        uid_range, orphans = self.worker_spec.uid_range, []
        for pid in _children():
            uid = process_uid(pid)
            if pid in known or uid is None or not \
                    uid_range.first <= uid < uid_range.first + uid_range.count:
                continue
            jail = self.launcher.adopt(pid, uid, "titus-worker", uid_range)
            jail.kill()
            orphans.append(jail)
        return orphans

    @property
    def spawning(self) -> int:
        return sum(len(g.pending) for g in (self.gen, *self.old_gens))

    def refill(self) -> None:
        """Keep min-spare workers idle or on their way, never more than max-children."""
        self.refill_scheduled = False
        if self.stopping:
            return
        if time.monotonic() < self.backoff_until:
            self.schedule_refill(self.backoff_until - time.monotonic())
            return
        wanted = max(1, self.config.min_spare_children)
        while len(self.idle) + len(self.gen.pending) < wanted and \
                len(self.workers) + self.spawning < self.config.max_children and \
                len(self.gen.pending) < MAX_PENDING_SPAWNS and self.request_worker():
            pass

    def schedule_refill(self, delay: float) -> None:
        if not self.refill_scheduled:
            self.refill_scheduled = True
            if delay > 0:
                self.loop.call_later(delay, self.refill)
            else:
                self.loop.call_soon(self.refill)

    def note_failure(self, what: str) -> None:
        self.failures += 1
        if self.failures >= FAILURES_BEFORE_BACKOFF:
            self.backoff_until = time.monotonic() + self.backoff
            logs.event("spawn-backoff", logging.ERROR, reason=what, seconds=self.backoff,
                       failures=self.failures)
            self.backoff = min(BACKOFF_MAX, self.backoff * 2)
        else:
            logs.event("spawn-failed", logging.WARNING, reason=what)

    def out_of_fds(self, error: BaseException, what: str, spawning: bool = True) -> bool:
        """EMFILE/ENFILE is load, not a broken jail: one log line for the whole shortage,
        a failed spawn retried in FD_RETRY rather than after a growing backoff, and
        meanwhile new clients closed at once (accept() refuses them) instead of left
        hanging in the backlog."""
        if getattr(error, "errno", None) not in (errno.EMFILE, errno.ENFILE):
            return False
        if self.fd_short is None:
            self.fd_short = 0
            self.resume()  # paused listeners would keep clients waiting: refuse them instead
            logs.event("out-of-fds", logging.ERROR, reason=f"{what}: {error}",
                       limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                       workers=len(self.workers))
        if spawning:
            self.backoff_until = max(self.backoff_until, time.monotonic() + FD_RETRY)
        return True

    def note_success(self) -> None:
        self.failures = 0
        self.backoff = BACKOFF_MIN

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            for sock in self.listeners:
                self.loop.remove_reader(sock.fileno())

    def resume(self) -> None:
        if self.paused and not self.stopping:
            self.paused = False
            for sock in self.listeners:
                self.loop.add_reader(sock.fileno(), lambda s=sock: self.accept(s))

    # -- connections ----------------------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            if not self.idle:
                self.refill()
                # Out of fds with no worker on its way, the client is refused below;
                # otherwise it waits in the kernel's backlog for a worker.
                if not self.idle and (self.fd_short is None or self.gen.pending):
                    self.pause()
                    return
            try:
                client, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if not self.out_of_fds(e, "accept", spawning=False):
                        logs.event("accept-failed", logging.ERROR, error=e.strerror)
                    self.pause()
                    self.loop.call_later(0.1, self.resume)
                    return
                continue
            if not self.idle and self.fd_short is not None:
                client.close()  # out of fds: refused at once, not left hanging in the backlog
                self.fd_short += 1
                continue
            self.assign(self.idle.popleft(), client, peer)
        self.schedule_refill(0)

    def assign(self, worker: Worker, client: socket.socket, peer: tuple) -> None:
        conn = Conn(self.next_conn_id, _sockaddr_pair(peer), _sockaddr_pair(client.getsockname()),
                    time.monotonic())
        self.next_conn_id += 1
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socket.send_fds(worker.ctl, [control.encode(control.Connection(
                conn.conn_id, conn.peer, conn.local))], [client.fileno()])
        except OSError as e:
            worker.notes.append(f"hand-off failed: {e}")
            self.kill(worker, "hand-off failed")
        finally:
            client.close()
        worker.state, worker.conn = "handshake", conn
        worker.timer = self.loop.call_later(worker.gen.config.max_handshake_time,
                                            lambda: self.handshake_timeout(worker))
        self.schedule_refill(0)

    def handshake_timeout(self, worker: Worker) -> None:
        if worker.state == "handshake":
            self.kill(worker, "timeout")

    def kill(self, worker: Worker, why: str) -> None:
        if worker.killed_for is None:
            worker.killed_for = why
        worker.jail.kill()

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
            self.kill(worker, "forged control message")
            return
        if isinstance(msg, control.HandshakeDone) and worker.state == "handshake":
            self.on_handshake(worker, msg)
        elif isinstance(msg, control.Finished) and worker.state in ("handshake", "backend",
                                                                    "relay"):
            worker.finished = msg
            worker.state = "done"
        else:
            logs.event("unexpected-control-message", logging.WARNING, pid=worker.jail.pid,
                       state=worker.state, message=type(msg).__name__)
            self.kill(worker, "unexpected control message")

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
            self.kill(worker, "asked for a backend it has no right to")
            return
        self.note_success()
        worker.handshake, worker.vhost, worker.state = msg, msg.vhost, "backend"
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
            header=self.proxy_header(vhost, worker.conn, msg), source=source)

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
        worker.broker = None
        if worker.jail.returncode is not None or worker.state != "backend":
            if sock:
                sock.close()
            return
        try:
            if sock is None:
                worker.notes.append(f"backend: {reason}")
                worker.ctl.send(control.encode(control.BackendFailed(reason or "failed")))
            else:
                with contextlib.suppress(OSError):
                    worker.backend = (f"{_addr(sock.getsockname())}->"
                                      f"{_addr(sock.getpeername())}")
                socket.send_fds(worker.ctl, [control.encode(control.BackendReady())],
                                [sock.fileno()])
                worker.state = "relay"
        except OSError:
            pass  # the worker is gone; the reaper logs it
        finally:
            if sock:
                sock.close()

    # -- reaping ---------------------------------------------------------------------

    def reap(self) -> None:
        now = time.monotonic()
        for pid in [p for p, (_, when) in self.early_exits.items() if now - when > EARLY_EXIT_KEEP]:
            del self.early_exits[pid]
        zygotes = {g.zygote.pid for g in (self.gen, *self.old_gens) if g.zygote is not None}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if not self.child_exited(pid, status) and pid not in zygotes:
                # A worker whose zygote's answer is still on its way.
                self.early_exits[pid] = (status, now)

    def child_exited(self, pid: int, status: int) -> bool:
        jail = self.launcher.reaped(pid, status)
        if jail is not None:
            if pid in self.workers:
                self.worker_ended(self.workers.pop(pid))
            elif self.keyholder.jail is not None and pid == self.keyholder.jail.pid:
                self.keyholder_ended()
            else:
                for gen in self.old_gens:
                    if gen.keyholder.jail is not None and pid == gen.keyholder.jail.pid:
                        gen.keyholder.stop()
        return jail is not None

    def worker_ended(self, worker: Worker) -> None:
        # Read what the worker said before it died (its last message may be
        # queued behind the exit).
        while worker.ctl.fileno() >= 0:
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
        if worker.timer:
            worker.timer.cancel()
        if worker.broker:
            worker.broker.cancel()
        if worker in self.idle:
            self.idle.remove(worker)
        if worker.conn is None:
            if not self.stopping and worker.killed_for is None:
                self.note_failure(f"idle worker exited ({worker.jail.returncode})")
        elif self.needs_syscall_name(worker.jail):
            self.name_violation_later(worker, time.monotonic() + VIOLATION_NAME_WAIT)
        else:
            self.log_connection(worker)
        if self.old_gens:
            self.retire_generations()
        if self.stopping and self.drained:
            self.loop.stop()
        self.schedule_refill(0)

    def needs_syscall_name(self, jail: JailProcess) -> bool:
        return (jail.violation is not None and jail.violation.syscall is None
                and self.launcher.violations.available)

    def name_violation_later(self, worker: Worker, deadline: float) -> None:
        """The kernel's audit record may trail the death by a moment: wait for it in
        the loop (never blocking it), then log the connection either way."""
        jail = worker.jail
        found = self.launcher.violations.lookup(jail.pid, wait=0)
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
        if jail.violation is not None:
            outcome = "policy-violation"
        elif worker.killed_for == "timeout":
            outcome = "timeout"
        elif worker.killed_for:
            outcome = "killed"
        elif worker.refused is not None:
            outcome = "client-not-allowed"
        elif fin is not None:
            outcome = fin.outcome
        else:
            outcome = "worker-died"
        level = (logging.WARNING if outcome in ("policy-violation", "killed", "client-not-allowed")
                 else logging.INFO)
        vhost = self.vhost_name(worker)
        self.count_connection(worker, outcome, vhost)
        logs.event(
            "connection", level,
            conn_id=conn.conn_id, client=_addr(conn.peer), local=_addr(conn.local),
            sni=hs.sni if hs else fin.sni if fin else None, vhost=vhost,
            tls_version=hs.version if hs else None, cipher=hs.cipher if hs else None,
            alpn=hs.alpn if hs else None, client_cn=hs.client_cn if hs else None,
            client_subject=hs.client_subject if hs else None,
            backend=worker.backend,
            bytes_in=fin.bytes_in if fin else 0, bytes_out=fin.bytes_out if fin else 0,
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

    def count_connection(self, worker: Worker, outcome: str, vhost: str | None) -> None:
        m, conn, hs, fin = self.metrics, worker.conn, worker.handshake, worker.finished
        assert conn is not None
        m.connections.labels(outcome, vhost or "").inc()
        m.duration.observe(time.monotonic() - conn.accepted)
        if hs is not None:
            m.handshake.observe(hs.handshake_ms / 1000)
        if fin is not None:
            m.bytes.labels("in").inc(fin.bytes_in)
            m.bytes.labels("out").inc(fin.bytes_out)
            m.keyholder_ops.labels("ok").inc(fin.signatures)
            m.keyholder_ops.labels("failed").inc(fin.signature_failures)
        if worker.jail.violation is not None:
            m.violations.labels(worker.jail.violation.syscall or "unknown").inc()

    def keyholder_ended(self) -> None:
        jail = self.keyholder.jail
        logs.event("keyholder-died", logging.ERROR, exit=jail.exit_status if jail else None,
                   violation=str(jail.violation) if jail and jail.violation else None)
        self.keyholder.stop()
        self.metrics.keyholder_restarts.inc()
        # Idle workers hold channels to the dead key holder: replace them.
        self.retire_idle("key holder restarted")
        if not self.stopping:
            self.restart_keyholder()

    def restart_keyholder(self) -> None:
        try:
            self.keyholder.start()
        except KeyHolderError as e:
            self.keyholder_restarts += 1
            delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** self.keyholder_restarts)
            logs.event("keyholder-restart-failed", logging.ERROR, error=str(e), retry_in=delay)
            self.loop.call_later(delay, self.restart_keyholder)
            return
        self.keyholder_restarts = 0
        logs.event("keyholder-restarted", pid=self.keyholder.jail.pid if self.keyholder.jail
                   else None)
        self.schedule_refill(0)

    # -- reload ----------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: new connections get the new configuration and certificates, those in
        flight finish with the old, and a bad new configuration changes nothing."""
        if self.stopping or self.config_path is None:
            return
        sdnotify.notify("RELOADING=1")
        try:
            self._reload()
        finally:
            sdnotify.notify("READY=1")

    def _reload(self) -> None:
        from titus.config.load import ConfigError, load_config

        opened: dict[Listener, socket.socket] = {}
        gen: Generation | None = None
        try:
            config = load_config(self.config_path, self.overrides)
            gen = self.build_generation(config)
            self.resolve_backends(gen)
            for lst in config.listeners:
                if lst not in self.listener_of:
                    opened[lst] = open_listener(lst, config.transparent == "yes")
                else:
                    set_transparent(self.listener_of[lst], config.transparent == "yes")
            gen.keyholder.start()
            self.start_zygote(gen)
        except (ConfigError, StartupError, KeyHolderError, RuntimeError, OSError,
                ValueError) as e:
            for sock in opened.values():
                sock.close()
            if gen is not None:
                gen.keyholder.stop()
            logs.event("reload-refused", logging.ERROR, error=str(e))
            return
        for lst, sock in list(self.listener_of.items()):
            if lst not in config.listeners:
                self.loop.forget(sock.fileno())
                sock.close()
                del self.listener_of[lst]
        self.listener_of.update(opened)
        self.listeners = [self.listener_of[lst] for lst in config.listeners]
        if not self.paused:
            for sock in opened.values():
                self.loop.add_reader(sock.fileno(), lambda s=sock: self.accept(s))
        self.old_gens.append(self.gen)
        self.gen = gen
        for worker in list(self.idle):  # they hold the old contexts and key holder
            self.kill(worker, "reload")
        self.idle.clear()
        self.retire_generations()
        logs.event("reloaded", vhosts=len(config.vhosts),
                   listeners=[_addr(s.getsockname()) for s in self.listeners])
        self.schedule_refill(0)

    def retire_generations(self) -> None:
        """An old generation's zygote stops once it has answered every request, its key
        holder once none of its workers is left."""
        in_use = {id(w.gen) for w in self.workers.values() if w.killed_for != "reload"}
        for gen in list(self.old_gens):
            if not gen.pending:
                self.close_zygote(gen)
            if id(gen) not in in_use and not gen.pending:
                gen.keyholder.stop()
                self.old_gens.remove(gen)

    # -- shutdown --------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop accepting, let connections in flight finish (up to drain-timeout)."""
        if self.stopping:
            return
        self.stopping = True
        sdnotify.notify("STOPPING=1")
        logs.event("stopping", busy=len(self.workers) - len(self.idle))
        for sock in self.listeners:
            self.loop.forget(sock.fileno())
            sock.close()
        self.listeners = []
        for worker in list(self.idle):
            self.kill(worker, "shutdown")
        self.idle.clear()
        self.loop.call_later(self.config.drain_timeout, self.force_stop)
        if self.drained:
            self.loop.stop()

    def force_stop(self) -> None:
        for worker in self.workers.values():
            self.kill(worker, "shutdown")

    def close(self) -> None:
        for gen in (self.gen, *self.old_gens):
            self.close_zygote(gen)
        for worker in list(self.workers.values()):
            worker.jail.kill()
        for worker in list(self.workers.values()):
            with contextlib.suppress(ChildProcessError):
                worker.jail.wait()
            worker.ctl.close()
        self.workers.clear()
        self.keyholder.stop()
        for gen in self.old_gens:
            gen.keyholder.stop()
        for sock in self.listeners:
            sock.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        self.stderr.drain()
        self.stderr.close()
        self.launcher.close()
        self.loop.close()
        logs.event("stopped")
