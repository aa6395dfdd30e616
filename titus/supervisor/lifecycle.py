"""A worker's life, as data: its phases, the one table of which phase may follow which,
and the reasons the supervisor ends a worker.

    idle -> handshake -> backend -> relay -> done
                |            |                  ^
                +------------+------------------+  (a connection may end early)

A phase changes only through `Worker.enter`, which checks `TRANSITIONS`; a control
message from a worker is accepted only when the phase it leads to may follow the
current one (`Worker.may_enter`), so a forged or out-of-order message is refused
by the same table.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from sandbox.launcher import JailProcess
from sandbox.listener import Listener
from titus.supervisor.broker import BackendConnect
from titus.supervisor.loop import Timer
from titus.wire import control
from titus.wire.outcome import Outcome

if TYPE_CHECKING:
    from titus.supervisor.connections import Conn
    from titus.supervisor.generation import Generation


class Phase(StrEnum):
    IDLE = "idle"  # jailed, waiting for a client
    HANDSHAKE = "handshake"  # has a client; the TLS handshake is under way
    BACKEND = "backend"  # reported its handshake; the broker connects its backend
    RELAY = "relay"  # has its backend; pumps bytes
    DONE = "done"  # reported how the connection ended


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.HANDSHAKE}),
    Phase.HANDSHAKE: frozenset({Phase.BACKEND, Phase.DONE}),
    Phase.BACKEND: frozenset({Phase.RELAY, Phase.DONE}),
    Phase.RELAY: frozenset({Phase.DONE}),
    Phase.DONE: frozenset(),
}


class KillReason(StrEnum):
    """Why the supervisor ended a worker: the log record's `detail`."""

    TIMEOUT = "timeout"  # no handshake within max-handshake-time
    HAND_OFF_FAILED = "hand-off failed"
    FORGED_MESSAGE = "forged control message"
    UNEXPECTED_MESSAGE = "unexpected control message"
    FORBIDDEN_BACKEND = "asked for a backend it has no right to"
    # Idle workers that hold something stale or are no longer wanted:
    RELOAD = "reload"
    SHUTDOWN = "shutdown"
    KEYHOLDER_RESTARTED = "key holder restarted"
    OCSP_CHANGED = "ocsp response changed"

    @property
    def outcome(self) -> Outcome:
        return Outcome.TIMEOUT if self is KillReason.TIMEOUT else Outcome.KILLED


@dataclass
class Worker:
    jail: JailProcess
    ctl: socket.socket
    gen: Generation
    phase: Phase = Phase.IDLE
    conn: Conn | None = None
    handshake: control.HandshakeDone | None = None
    finished: control.Finished | None = None
    timer: Timer | None = None
    broker: BackendConnect | None = None
    killed_for: KillReason | None = None
    vhost: int | None = None
    backend: str | None = None  # "local->peer" of the backend connection handed over
    backend_pair: tuple[tuple[str, int], tuple[str, int]] | None = None  # the same, as data
    header_bytes: int = 0  # the PROXY header the broker wrote to the backend
    cut_counts: tuple[int, int] | None = None  # the kernel's counts when the drain cut it
    refused: str | None = None  # why the vhost's client-allow-* refused the client
    notes: list[str] = field(default_factory=list)
    # Its seccomp listener, watched while it lives (workercalls.py); None where the
    # kernel cannot notify (the audit log names its violation) or once it is gone.
    listener: Listener | None = None

    def may_enter(self, phase: Phase) -> bool:
        return phase in TRANSITIONS[self.phase]

    def enter(self, phase: Phase) -> None:
        if not self.may_enter(phase):
            raise RuntimeError(f"worker {self.jail.pid}: {self.phase} -> {phase} is not allowed")
        self.phase = phase

    def kill(self, why: KillReason) -> None:
        """End the worker; the first reason is the one its record gives."""
        if self.killed_for is None:
            self.killed_for = why
        self.jail.kill()

    def relayed(self) -> tuple[int, int]:
        """(bytes_in, bytes_out): as the worker reported them, or, for a connection cut
        before it could (drain-timeout), as the kernel counted them on the backend
        connection (less the PROXY header, which is not the client's)."""
        if self.finished is not None:
            return self.finished.bytes_in, self.finished.bytes_out
        if self.cut_counts is not None:
            acked, received = self.cut_counts
            return max(0, acked - self.header_bytes), received
        return 0, 0

    def outcome(self) -> Outcome:
        """The verdict of the connection's log record, once the worker has exited."""
        if self.jail.violation is not None:
            return Outcome.POLICY_VIOLATION
        if self.killed_for is not None:
            return self.killed_for.outcome
        if self.refused is not None:
            return Outcome.CLIENT_NOT_ALLOWED
        if self.finished is not None:
            return self.finished.outcome
        return Outcome.WORKER_DIED
