"""priority.py on a fake scheduler: what the supervisor and its children get."""

from __future__ import annotations

import pytest

from sandbox import capabilities
from titus.supervisor import priority


class Scheduler:
    """The nice values setpriority/getpriority would see, with or without CAP_SYS_NICE."""

    def __init__(self, nice: int, capable: bool) -> None:
        self.nice = nice
        self.capable = capable
        self.started_at: list[int] = []  # a child's nice, were it started now

    def get(self, which: int, who: int) -> int:
        assert who == 0
        return self.nice

    def set(self, which: int, who: int, value: int) -> None:
        assert who == 0
        if value < self.nice and not self.capable:
            raise PermissionError(13, "Permission denied")
        self.nice = value


@pytest.fixture
def sched(monkeypatch):
    def make(nice: int = 0, capable: bool = True) -> Scheduler:
        s = Scheduler(nice, capable)
        monkeypatch.setattr(priority.os, "getpriority", s.get)
        monkeypatch.setattr(priority.os, "setpriority", s.set)
        monkeypatch.setattr(capabilities, "held", lambda cap: capable)
        monkeypatch.setattr(priority, "_base", None)
        return s
    return make


def test_the_supervisor_goes_down_and_its_children_start_at_the_base(sched):
    s = sched(nice=5)
    priority.lower_supervisor()
    assert s.nice == 5 + priority.OFFSET
    with priority.children_at_base():
        s.started_at.append(s.nice)
    assert s.started_at == [5] and s.nice == 15


def test_never_below_nineteen(sched):
    s = sched(nice=15)
    priority.lower_supervisor()
    assert s.nice == 19


def test_without_cap_sys_nice_nothing_moves(sched):
    s = sched(nice=0, capable=False)
    priority.lower_supervisor()
    with priority.children_at_base():
        s.started_at.append(s.nice)
    assert s.nice == 0 and s.started_at == [0]


def test_a_capability_lost_later_leaves_the_child_lowered_not_failed(sched):
    s = sched(nice=0)
    priority.lower_supervisor()
    s.capable = False
    with priority.children_at_base():
        s.started_at.append(s.nice)
    assert s.started_at == [10] and s.nice == 10
