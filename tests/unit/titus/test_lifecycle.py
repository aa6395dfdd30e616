"""titus/supervisor/lifecycle.py and titus/wire/outcome.py: a worker's phases follow the one
table, the record's verdict follows one rule, and the values in the log do not change."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import pytest

from titus.supervisor.lifecycle import TRANSITIONS, KillReason, Phase, Worker
from titus.wire import control
from titus.wire.outcome import ALARMING, WORKER_OUTCOMES, Outcome


@dataclass
class FakeJail:
    pid: int = 42
    violation: Any = None
    kills: int = 0

    def kill(self) -> None:
        self.kills += 1


def worker(phase: Phase = Phase.IDLE) -> Worker:
    return Worker(FakeJail(), None, None, phase=phase)  # type: ignore[arg-type]


def test_the_table_is_the_documented_path() -> None:
    path = [Phase.IDLE, Phase.HANDSHAKE, Phase.BACKEND, Phase.RELAY, Phase.DONE]
    w = worker()
    for phase in path[1:]:
        w.enter(phase)
    assert w.phase is Phase.DONE
    assert set(TRANSITIONS) == set(Phase)


@pytest.mark.parametrize(("old", "new"), list(itertools.product(Phase, Phase)))
def test_only_the_table_s_transitions_are_allowed(old: Phase, new: Phase) -> None:
    w = worker(old)
    if new in TRANSITIONS[old]:
        assert w.may_enter(new)
        w.enter(new)
        assert w.phase is new
    else:
        assert not w.may_enter(new)
        with pytest.raises(RuntimeError, match="not allowed"):
            w.enter(new)
        assert w.phase is old


def test_the_first_kill_reason_is_kept() -> None:
    w = worker(Phase.HANDSHAKE)
    w.kill(KillReason.TIMEOUT)
    w.kill(KillReason.SHUTDOWN)
    assert w.killed_for is KillReason.TIMEOUT and w.jail.kills == 2  # type: ignore[attr-defined]


def finished(outcome: Outcome) -> control.Finished:
    return control.Finished(outcome, 1, 2)


@pytest.mark.parametrize(("violation", "killed", "fin", "verdict"), [
    ("SIGSYS", KillReason.TIMEOUT, finished(Outcome.OK), Outcome.POLICY_VIOLATION),
    (None, KillReason.TIMEOUT, finished(Outcome.OK), Outcome.TIMEOUT),
    (None, KillReason.FORGED_MESSAGE, finished(Outcome.OK), Outcome.KILLED),
    (None, KillReason.SHUTDOWN, None, Outcome.KILLED),
    (None, None, finished(Outcome.CLIENT_RESET), Outcome.CLIENT_RESET),
    (None, None, None, Outcome.WORKER_DIED),
])
def test_the_verdict(violation: Any, killed: KillReason | None, fin: control.Finished | None,
                     verdict: Outcome) -> None:
    w = worker(Phase.RELAY)
    w.jail.violation = violation  # type: ignore[attr-defined]
    w.killed_for, w.finished = killed, fin
    assert w.outcome() is verdict


def test_log_values_are_unchanged() -> None:
    """What operators' log queries and dashboards match on."""
    assert [o.value for o in Outcome] == [
        "ok", "handshake-failed", "no-vhost", "backend-failed", "client-reset",
        "backend-reset", "timeout", "error", "killed", "client-not-allowed",
        "policy-violation", "worker-died"]
    assert {str(r) for r in KillReason} == {
        "timeout", "hand-off failed", "forged control message", "unexpected control message",
        "asked for a backend it has no right to", "reload", "shutdown",
        "key holder restarted", "ocsp response changed"}
    assert json.dumps({"outcome": Outcome.NO_VHOST, "state": Phase.RELAY}) == \
        '{"outcome": "no-vhost", "state": "relay"}'
    assert f"{Outcome.OK} {KillReason.RELOAD}" == "ok reload"
    assert {Outcome.POLICY_VIOLATION, Outcome.KILLED, Outcome.CLIENT_NOT_ALLOWED} == ALARMING


def test_a_worker_reports_only_its_own_outcomes() -> None:
    assert set(WORKER_OUTCOMES) == control.OUTCOMES
    for outcome in WORKER_OUTCOMES:
        msg = control.decode_from_worker(control.encode(finished(outcome)))
        assert isinstance(msg, control.Finished) and msg.outcome is outcome
    for verdict in set(Outcome) - set(WORKER_OUTCOMES):  # the supervisor's to decide
        with pytest.raises(control.ControlError, match="unknown outcome"):
            control.decode_from_worker(control.encode(finished(verdict)))
