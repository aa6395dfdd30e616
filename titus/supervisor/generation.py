"""Configuration generations: what one configuration makes (key holder, certificate
chains, backends, OCSP staples, the zygote that clones its workers), and the reload
(SIGHUP) that makes a new one current.

A worker keeps its generation for its whole life: connections in flight finish
with the old configuration, certificates and key holder; new ones get the new.
An old generation is retired once nothing uses it.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sandbox.forkserver import ForkServer, ForkServerError
from titus import logs
from titus.config.model import Config, Listener
from titus.keyholder.main import key_slots
from titus.supervisor import ocsp, priority
from titus.supervisor.keyholder import KeyHolder, KeyHolderError, sized_spec
from titus.supervisor.lifecycle import KillReason
from titus.supervisor.listeners import open_listener
from titus.supervisor.metrics import MetricsEndpoint
from titus.supervisor.pool import BACKOFF_MIN, SPAWN_REPLY_TIMEOUT, PendingSpawn
from titus.supervisor.resolve import resolve_vhosts
from titus.supervisor.startup import StartupError
from titus.supervisor.workercalls import close_unused
from titus.wire.zygote import WORKER, ZygoteSetup
from titus.worker.remotekey import CertChain, RemoteKeyError, read_chain

if TYPE_CHECKING:
    from titus.supervisor import Supervisor


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


def fixed_at_start(running: Config, new: Config) -> None:
    """What a reload cannot change, refused with the reason (ValueError) rather than
    silently kept: the jail uid range (workers in flight hold uids of it)."""
    if (new.uid_first, new.uid_count) != (running.uid_first, running.uid_count):
        raise ValueError("uid-first and uid-count cannot change on reload (connections in "
                         "flight hold uids of the running range); restart titus to apply them")


class Generations:
    """The current generation, and the old ones that workers still use."""

    def __init__(self, sup: Supervisor, config: Config) -> None:
        self.sup = sup
        self.loop = sup.loop
        self.current = self.build(config)
        self.old: list[Generation] = []

    def all(self) -> tuple[Generation, ...]:
        return (self.current, *self.old)

    def build(self, config: Config) -> Generation:
        sup = self.sup
        slots, key_of_vhost = key_slots(config)
        keyholder = KeyHolder(sup.launcher, sized_spec(sup.keyholder_base, config.max_children),
                              slots)
        keyholder.stderr_fd = sup.stderr_fd
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

    def resolve_backends(self, gen: Generation) -> None:
        """Resolve every backend name now: never on the connection path."""
        try:
            gen.backends.update(resolve_vhosts(gen.config))
        except OSError as e:
            raise StartupError(str(e)) from None

    # -- the zygote ------------------------------------------------------------------

    def start_zygote(self, gen: Generation) -> None:
        """Exec the generation's zygote; it builds the TLS contexts (errors are one line)."""
        sup, config = self.sup, gen.config
        zygote = ForkServer(sup.zygote_setup, ZygoteSetup(
            sup.worker_spec, tuple(config.vhosts), gen.key_ids, gen.chains,
            config.max_handshake_time, config.keyholder_timeout, gen.staple_values),
            stderr=sup.stderr_fd)
        try:
            with priority.children_at_base():
                zygote.start()
        except ForkServerError as e:
            raise StartupError(str(e)) from None
        gen.zygote = zygote
        self.loop.add_reader(zygote.fileno(), lambda: self.on_zygote(gen))

    def on_zygote(self, gen: Generation) -> None:
        assert gen.zygote is not None
        replies = gen.zygote.replies()
        if replies is None:
            self.zygote_failed(gen, "the zygote exited")
            return
        for reply in replies:
            pending = gen.pending.pop(reply.request_id, None)
            if pending is not None:
                if pending.timer is not None:
                    pending.timer.cancel()  # or it wakes the loop 15 s later for nothing
                self.sup.pool.spawned(gen, pending, reply.pid, reply.error, reply.listener)
            else:
                close_unused(reply.listener)
        if not gen.pending and gen is not self.current:
            self.retire()

    def check_reply(self, gen: Generation, request: int) -> None:
        if request in gen.pending and gen.zygote is not None:
            self.zygote_failed(gen, f"the zygote did not answer in {SPAWN_REPLY_TIMEOUT:g} s")

    def zygote_failed(self, gen: Generation, why: str) -> None:
        """Replace a dead or stuck zygote; workers it made are ours and live on."""
        logs.event("zygote-failed", logging.ERROR, reason=why, pending=len(gen.pending))
        self.close_zygote(gen)
        if gen is self.current and not self.sup.stopping:
            self.sup.pool.note_failure(why)
            self.restart_zygote()

    def restart_zygote(self) -> None:
        if self.current.zygote is not None or self.sup.stopping:
            return
        try:
            self.start_zygote(self.current)
        except StartupError as e:
            logs.event("zygote-restart-failed", logging.ERROR, error=str(e))
            self.loop.call_later(max(BACKOFF_MIN, self.sup.pool.backoff_until - time.monotonic()),
                                 self.restart_zygote)
            return
        self.sup.pool.schedule_refill(0)

    def close_zygote(self, gen: Generation) -> None:
        """Stop a zygote; a worker it cloned but never reported is found and killed."""
        if gen.zygote is not None:
            self.loop.forget(gen.zygote.fileno())
            gen.zygote.close()
            gen.zygote = None
        if gen.pending:
            for pending in gen.pending.values():
                pending.ctl.close()
                if pending.timer is not None:
                    pending.timer.cancel()
            uids = {p.uid for p in gen.pending.values()}
            gen.pending.clear()
            orphans = self.sup.pool.adopt_orphans()
            for uid in uids - {jail.uid for jail in orphans}:
                self.sup.launcher.uids(self.sup.worker_spec.uid_range).release(uid)

    # -- OCSP staples ----------------------------------------------------------------

    def refresh_staples(self) -> None:
        """Every second: re-check the OCSP response files; a change reaches the zygote,
        and idle workers (which hold the old response) are replaced."""
        gen = self.current
        before = gen.staple_values
        for staple in gen.staples:
            if staple is not None:
                staple.refresh()
        if gen.staple_values != before and gen.zygote is not None:
            gen.zygote.update(WORKER, gen.staple_values)
            self.sup.pool.retire_idle(KillReason.OCSP_CHANGED)
        if not self.sup.stopping:
            self.loop.call_later(ocsp.REFRESH_INTERVAL, self.refresh_staples)

    # -- reload ----------------------------------------------------------------------

    def reload(self) -> None:
        """Build the new generation beside the current one, and switch to it only when
        all of it started: a bad new configuration changes nothing."""
        from titus.config.load import ConfigError, load_config

        sup = self.sup
        opened: dict[Listener, socket.socket] = {}
        gen: Generation | None = None
        endpoint: MetricsEndpoint | None = None
        try:
            config = load_config(sup.config_path, sup.overrides)
            fixed_at_start(self.current.config, config)
            gen = self.build(config)
            self.resolve_backends(gen)
            sup.listeners.open_new(config, opened)
            if config.metrics_listen != self.current.config.metrics_listen and \
                    config.metrics_listen is not None:
                endpoint = MetricsEndpoint(self.loop, open_listener(config.metrics_listen),
                                           sup.metrics)
            gen.keyholder.start()
            self.start_zygote(gen)
        except (ConfigError, StartupError, KeyHolderError, RuntimeError, OSError,
                ValueError) as e:
            for sock in opened.values():
                sock.close()
            if endpoint is not None:
                endpoint.close()
            if gen is not None:
                gen.keyholder.stop()
            logs.event("reload-refused", logging.ERROR, error=str(e))
            sup.metrics.reloaded(ok=False)
            return
        sup.listeners.switch(config, opened)
        if config.metrics_listen != self.current.config.metrics_listen:
            if sup.metrics_endpoint is not None:
                sup.metrics_endpoint.close()
            sup.metrics_endpoint = endpoint
        self.old.append(self.current)
        self.current = gen
        sup.pool.kill_idle(KillReason.RELOAD)  # they hold the old contexts and key holder
        self.retire()
        logs.event("reloaded", vhosts=len(config.vhosts),
                   listeners=[logs.endpoint(s.getsockname()) for s in sup.listeners.sockets])
        sup.metrics.reloaded(ok=True)
        sup.pool.schedule_refill(0)

    def retire(self) -> None:
        """An old generation's zygote stops once it has answered every request, its key
        holder once none of its workers is left."""
        in_use = {id(w.gen) for w in self.sup.pool.workers.values()
                  if w.killed_for is not KillReason.RELOAD}
        for gen in list(self.old):
            if not gen.pending:
                self.close_zygote(gen)
            if id(gen) not in in_use and not gen.pending:
                gen.keyholder.stop()
                self.old.remove(gen)
