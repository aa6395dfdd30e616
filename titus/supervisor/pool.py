"""The pool of pre-jailed workers: asked of the zygote ahead of need, min-spare kept
ready, never more than max-children, and a back-off when spawning keeps failing.

A worker is asked of the current generation's zygote without waiting (the
answer comes to `Generations.on_zygote`, then `spawned`): the supervisor never
forks on the connection path, and the workers are still its children, which it
reaps.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandbox.errors import JailError
from sandbox.launcher import JailProcess
from sandbox.uids import UidExhausted, process_uid
from titus import logs
from titus.supervisor.lifecycle import KillReason, Worker
from titus.supervisor.workercalls import close_unused
from titus.wire.zygote import WORKER

if TYPE_CHECKING:
    from titus.supervisor import Supervisor
    from titus.supervisor.generation import Generation
    from titus.supervisor.loop import Timer

BACKOFF_MIN, BACKOFF_MAX = 0.1, 30.0
FAILURES_BEFORE_BACKOFF = 3
FD_RETRY = 0.2  # out of fds: spawn again this soon (load, not a broken jail: no growing backoff)
MAX_PENDING_SPAWNS = 8  # worker requests queued at the zygote at once
SPAWN_REPLY_TIMEOUT = 15.0  # a zygote that answers nothing for this long is replaced


@dataclass
class PendingSpawn:
    """A worker asked of the zygote: our end of its control channel, its uid."""

    ctl: socket.socket
    uid: int
    epoch: int  # Pool.epoch when asked
    asked: float
    timer: Timer | None = None  # the zygote's deadline to answer; cancelled by the answer


def _children() -> list[int]:
    """Our live child processes (the supervisor has one thread)."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return [int(pid) for pid in f.read().split()]
    except OSError:
        return []


class Pool:
    """Every live worker (by pid), the idle ones in arrival order, and the spawn back-off."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.loop = sup.loop
        self.launcher = sup.launcher
        self.metrics = sup.metrics
        self.workers: dict[int, Worker] = {}
        self.idle: deque[Worker] = deque()
        self.failures = 0
        self.backoff_until = 0.0
        self.backoff = BACKOFF_MIN
        self.fd_short: int | None = None  # out of fds: clients refused since it began
        self.refill_scheduled = False
        # Bumped when what idle workers hold goes stale (the key holder restarted, an
        # OCSP response changed): workers asked for before are retired on arrival.
        self.epoch = 0
        self.epoch_reason: KillReason | None = None

    @property
    def at_cap(self) -> bool:
        """Every one of max-children workers is serving a connection (none idle, none more
        may be spawned)."""
        return not self.idle and len(self.workers) >= self.sup.config.max_children

    def request_worker(self) -> bool:
        """Ask the zygote for one more worker (the answer comes to on_zygote)."""
        sup = self.sup
        gen = sup.gen
        if not sup.keyholder.alive or gen.zygote is None:
            return False
        uids = self.launcher.uids(sup.worker_spec.uid_range)
        try:
            uid = uids.allocate(sup.worker_spec.ids)  # a block if its profile maps several ids
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
            channel = sup.keyholder.channel(sup.config.keyholder_budget)
        except OSError as e:
            uids.release(uid)
            ours.close()
            theirs.close()
            if not self.out_of_fds(e, "key holder channel"):
                logs.event("keyholder-channel-failed", logging.ERROR, error=str(e))
            return False
        try:
            request = gen.zygote.request(
                WORKER, uid, [theirs.fileno(), channel.fileno(), sup.stderr.write_fd])
        except OSError as e:
            uids.release(uid)
            ours.close()
            self.note_failure(f"zygote request failed: {e}")
            return False
        finally:
            theirs.close()
            channel.close()
        gen.pending[request] = PendingSpawn(
            ours, uid, self.epoch, time.monotonic(),
            self.loop.call_later_in_order(SPAWN_REPLY_TIMEOUT,
                                          lambda: sup.generations.check_reply(gen, request)))
        return True

    def spawned(self, gen: Generation, pending: PendingSpawn, pid: int | None,
                error: JailError | None, listener: int | None = None) -> None:
        """The zygote's answer: the worker `pid` is jailed and waits for a client
        (`listener`: its seccomp listener, watched before it may get one), or not."""
        sup = self.sup
        uid_range = sup.worker_spec.uid_range
        jail = None if pid is None else self.launcher.adopt(pid, pending.uid, "titus-worker",
                                                           uid_range)
        if jail is None:
            self.launcher.uids(uid_range).release(pending.uid)
        if error is not None or jail is None:
            close_unused(listener)
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
            if listener is not None:
                sup.connections.calls.watch(worker, listener)
            self.loop.add_reader(pending.ctl.fileno(),
                                 lambda: sup.connections.on_worker_message(worker))
            stale = (KillReason.SHUTDOWN if sup.stopping else KillReason.RELOAD
                     if gen is not sup.gen else self.epoch_reason
                     if pending.epoch != self.epoch else None)
            if stale:
                worker.kill(stale)
            else:
                self.idle.append(worker)
                sup.listeners.resume()
        if pid is not None and pid in sup.early_exits:  # reaped before we knew it
            status, _when = sup.early_exits.pop(pid)
            sup.child_exited(pid, status)
        self.schedule_refill(0)

    def kill_idle(self, reason: KillReason) -> None:
        """End every idle worker (they hold something that must not serve a client)."""
        for worker in list(self.idle):
            worker.kill(reason)
        self.idle.clear()

    def retire_idle(self, reason: KillReason) -> None:
        """Idle workers (and those on their way) hold something stale: replace them."""
        self.epoch, self.epoch_reason = self.epoch + 1, reason
        self.kill_idle(reason)
        self.schedule_refill(0)

    def adopt_orphans(self) -> list[JailProcess]:
        """Children the launcher does not know (cloned for us by a zygote that could not
        say so): track and kill them, so their uids are freed only once they are reaped."""
        known = {jail.pid for jail in self.launcher.live}
        known.update(g.zygote.pid for g in self.sup.generations.all() if g.zygote is not None)
        uid_range, orphans = self.sup.worker_spec.uid_range, []
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
        return sum(len(g.pending) for g in self.sup.generations.all())

    def refill(self) -> None:
        """Keep min-spare workers idle or on their way, never more than max-children."""
        self.refill_scheduled = False
        sup = self.sup
        if sup.stopping:
            return
        if time.monotonic() < self.backoff_until:
            self.schedule_refill(self.backoff_until - time.monotonic())
            return
        wanted = max(1, sup.config.min_spare_children)
        while len(self.idle) + len(sup.gen.pending) < wanted and \
                len(self.workers) + self.spawning < sup.config.max_children and \
                len(sup.gen.pending) < MAX_PENDING_SPAWNS and self.request_worker():
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

    def note_success(self) -> None:
        self.failures = 0
        self.backoff = BACKOFF_MIN

    def out_of_fds(self, error: BaseException, what: str, spawning: bool = True) -> bool:
        """EMFILE/ENFILE is load, not a broken jail: one log line for the whole shortage,
        a failed spawn retried in FD_RETRY rather than after a growing backoff, and
        meanwhile new clients closed at once (accept() refuses them) instead of left
        hanging in the backlog."""
        if getattr(error, "errno", None) not in (errno.EMFILE, errno.ENFILE):
            return False
        if self.fd_short is None:
            self.fd_short = 0
            # Paused listeners would keep clients waiting: refuse them instead.
            self.sup.listeners.resume()
            logs.event("out-of-fds", logging.ERROR, reason=f"{what}: {error}",
                       limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                       workers=len(self.workers))
        if spawning:
            self.backoff_until = max(self.backoff_until, time.monotonic() + FD_RETRY)
        return True
