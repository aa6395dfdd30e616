"""How a connection ended: the one list of outcomes, for the worker's Finished message,
the supervisor's own verdicts and the `outcome` of the connection's log record.

The values are what the log record and the metrics label say; they do not change.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    # What a worker reports (WORKER_OUTCOMES, in this order).
    OK = "ok"
    HANDSHAKE_FAILED = "handshake-failed"
    NO_VHOST = "no-vhost"
    BACKEND_FAILED = "backend-failed"
    CLIENT_RESET = "client-reset"
    BACKEND_RESET = "backend-reset"
    TIMEOUT = "timeout"
    ERROR = "error"
    # What only the supervisor decides (a worker that says so is forging).
    KILLED = "killed"
    CLIENT_NOT_ALLOWED = "client-not-allowed"  # the vhost's client-allow-* refused it
    POLICY_VIOLATION = "policy-violation"
    WORKER_DIED = "worker-died"


# The outcomes a worker may report; the supervisor may also decide TIMEOUT (it kills
# a worker that has not finished its handshake in time).
WORKER_OUTCOMES: tuple[Outcome, ...] = (
    Outcome.OK,
    Outcome.HANDSHAKE_FAILED,
    Outcome.NO_VHOST,
    Outcome.BACKEND_FAILED,
    Outcome.CLIENT_RESET,
    Outcome.BACKEND_RESET,
    Outcome.TIMEOUT,
    Outcome.ERROR,
)

# Logged as warnings: the jail stopped something, or the supervisor had to.
ALARMING = frozenset({Outcome.POLICY_VIOLATION, Outcome.KILLED, Outcome.CLIENT_NOT_ALLOWED})
