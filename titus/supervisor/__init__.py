"""The supervisor: listeners, the pool of pre-jailed workers, the backend broker.

It runs as root, never reads a private key and never parses TLS.  Each
client connection goes to an idle worker that was jailed in advance; the
worker reports its handshake and asks for its vhost's backend, which the
broker connects and passes back.  When the worker exits the supervisor logs
one record for the connection and tops the pool up again.

This module starts the supervisor, reaps its children and stops it; the rest
is in collaborating parts, one object each, which reach each other through it:
`generation.Generations` (configurations, their zygotes, reload),
`pool.Pool` (spawning, refill, back-off, retire), `listeners.Listeners` (the
listening sockets) and `connections.Connections` (accept through the log record).
docs/architecture.md walks one connection through them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import time
from collections.abc import Sequence
from dataclasses import replace

from sandbox.launcher import Launcher
from sandbox.notify import notifying
from sandbox.spec import JailSpec, UidRange
from titus import logs
from titus.config.model import Config
from titus.supervisor import cutcounts, ocsp, priority, sdnotify
from titus.supervisor.connections import Connections, sockaddr_pair
from titus.supervisor.dnsrefresh import BackendRefresh
from titus.supervisor.generation import Generation, Generations
from titus.supervisor.jailstderr import JailStderr
from titus.supervisor.keyholder import KeyHolder, KeyHolderError
from titus.supervisor.lifecycle import KillReason, Phase
from titus.supervisor.listeners import Listeners, open_listener
from titus.supervisor.loop import Loop
from titus.supervisor.metrics import Metrics, MetricsEndpoint
from titus.supervisor.pool import BACKOFF_MAX, BACKOFF_MIN, Pool
from titus.supervisor.startup import StartupError, jail_profile

__all__ = ["StartupError", "Supervisor"]

EARLY_EXIT_KEEP = 60.0  # how long the exit of a not-yet-reported worker is remembered


def raise_fd_limit(max_children: int) -> None:
    """Room for max-children workers: each holds a control socket and its seccomp
    listener here, and one more while its backend connects.  The soft limit goes up
    to what that needs (never past the hard limit; short of it, out-of-fds is
    handled as load: pool.out_of_fds)."""
    want = 3 * max_children + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    new = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


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
        worker = jail_profile("titus-worker")
        spec = replace(worker.spec, name="titus-worker", uid_range=uid_range)
        # Its filter notifies where the kernel can: a violation is then named with its
        # arguments, never rate-limited (workercalls.py); else it kills (audit log).
        self.worker_spec: JailSpec = notifying(spec, worker.policy, entry=True) or spec
        # Sized per generation from its max-children (keyholder.sized_spec).
        self.keyholder_base: JailSpec = replace(jail_profile("titus-keyholder").spec,
                                                name="titus-keyholder", uid_range=uid_range)
        self.stderr_fd = 2
        self.metrics = Metrics()
        self.generations = Generations(self, config)
        self.pool = Pool(self)
        self.listeners = Listeners(self)
        self.connections = Connections(self)
        self.stopping = False
        self.keyholder_restarts = 0
        self.early_exits: dict[int, tuple[int, float]] = {}  # pid -> (wait status, when)
        self.metrics.workers.labels("idle").set_function(lambda: len(self.pool.idle))
        self.metrics.workers.labels("busy").set_function(
            lambda: len(self.pool.workers) - len(self.pool.idle))
        self.metrics.max_children.set_function(lambda: self.config.max_children)
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.dns_refresh: BackendRefresh | None = None
        self.stderr = JailStderr(self.loop)
        self.gen.keyholder.stderr_fd = self.stderr_fd = self.stderr.write_fd

    @property
    def gen(self) -> Generation:
        return self.generations.current

    @property
    def config(self) -> Config:
        return self.gen.config

    @property
    def keyholder(self) -> KeyHolder:
        return self.gen.keyholder

    @property
    def keyholder_spec(self) -> JailSpec:
        """The current generation's key holder jail."""
        return self.gen.keyholder.spec

    # -- start-up ------------------------------------------------------------------

    def start(self) -> None:
        raise_fd_limit(self.config.max_children)
        self.generations.resolve_backends(self.gen)
        self.listeners.open(self.config)
        if self.config.metrics_listen is not None:
            self.metrics_endpoint = MetricsEndpoint(
                self.loop, open_listener(self.config.metrics_listen), self.metrics)
        try:
            self.keyholder.start()
        except KeyHolderError as e:
            raise StartupError(str(e)) from None
        self.generations.start_zygote(self.gen)
        for notice in self.config.notices:
            logs.event("config-notice", logging.WARNING, notice=str(notice))
        self.loop.add_signal_handler(signal.SIGCHLD, self.reap)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.shutdown)
        if self.config_path is not None:
            self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.listeners.watch()
        listeners = self.listeners.sockets
        sdnotify.notify("READY=1", f"MAINPID={os.getpid()}",
                        f"STATUS=serving {len(self.config.vhosts)} vhosts")
        logs.event("started", listeners=[logs.endpoint(s.getsockname()) for s in listeners],
                   metrics=(logs.endpoint(self.metrics_endpoint.sock.getsockname())
                            if self.metrics_endpoint else None),
                   vhosts=len(self.config.vhosts), min_spare=self.config.min_spare_children,
                   max_children=self.config.max_children)
        self.pool.refill()
        self.loop.call_later(ocsp.REFRESH_INTERVAL, self.generations.refresh_staples)
        self.dns_refresh = BackendRefresh(
            self.loop, lambda: self.gen, lambda result: self.metrics.dns_refreshes.labels(
                result).inc())
        self.dns_refresh.start()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sockaddr_pair(s.getsockname()) for s in self.listeners.sockets]

    def serve_forever(self) -> None:
        priority.lower_supervisor()
        while not (self.stopping and self.drained):
            self.loop.run_once()
        self.close()

    @property
    def drained(self) -> bool:
        return not self.pool.workers and not self.pool.spawning

    # -- reaping ---------------------------------------------------------------------

    def reap(self) -> None:
        now = time.monotonic()
        for pid in [p for p, (_, when) in self.early_exits.items() if now - when > EARLY_EXIT_KEEP]:
            del self.early_exits[pid]
        zygotes = {g.zygote.pid for g in self.generations.all() if g.zygote is not None}
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
            if pid in self.pool.workers:
                self.connections.worker_ended(self.pool.workers.pop(pid))
            elif self.keyholder.jail is not None and pid == self.keyholder.jail.pid:
                self.keyholder_ended()
            else:
                for gen in self.generations.old:
                    if gen.keyholder.jail is not None and pid == gen.keyholder.jail.pid:
                        gen.keyholder.stop()
        return jail is not None

    def keyholder_ended(self) -> None:
        jail = self.keyholder.jail
        logs.event("keyholder-died", logging.ERROR, exit=jail.exit_status if jail else None,
                   violation=str(jail.violation) if jail and jail.violation else None)
        self.keyholder.stop()
        self.metrics.keyholder_restarts.inc()
        # Idle workers hold channels to the dead key holder: replace them.
        self.pool.retire_idle(KillReason.KEYHOLDER_RESTARTED)
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
        self.pool.schedule_refill(0)

    # -- reload ----------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: new connections get the new configuration and certificates, those in
        flight finish with the old, and a bad new configuration changes nothing."""
        if self.stopping or self.config_path is None:
            return
        sdnotify.notify("RELOADING=1")
        try:
            self.generations.reload()
        finally:
            sdnotify.notify("READY=1")

    # -- shutdown --------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop accepting, let connections in flight finish (up to drain-timeout)."""
        if self.stopping:
            return
        self.stopping = True
        sdnotify.notify("STOPPING=1")
        logs.event("stopping", busy=len(self.pool.workers) - len(self.pool.idle))
        self.listeners.close()
        self.pool.kill_idle(KillReason.SHUTDOWN)
        self.loop.call_later(self.config.drain_timeout, self.force_stop)
        if self.drained:
            self.loop.stop()

    def force_stop(self) -> None:
        """drain-timeout is over: cut what is left, keeping the byte counts of connections
        that were relaying (the kernel's, read before the kill)."""
        workers = list(self.pool.workers.values())
        relaying = {w.backend_pair: w for w in workers
                    if w.phase is Phase.RELAY and w.backend_pair is not None}
        for pair, counts in cutcounts.backend_counts(relaying).items():
            relaying[pair].cut_counts = counts
        for worker in workers:
            worker.kill(KillReason.SHUTDOWN)

    def close(self) -> None:
        for gen in self.generations.all():
            self.generations.close_zygote(gen)
        workers = self.pool.workers
        for worker in list(workers.values()):
            worker.jail.kill()
        for worker in list(workers.values()):
            with contextlib.suppress(ChildProcessError):
                worker.jail.wait()
            worker.ctl.close()
        workers.clear()
        self.keyholder.stop()
        for gen in self.generations.old:
            gen.keyholder.stop()
        for sock in self.listeners.sockets:
            sock.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        if self.dns_refresh is not None:
            self.dns_refresh.close()
        self.stderr.drain()
        self.stderr.close()
        self.launcher.close()
        self.loop.close()
        logs.event("stopped")
