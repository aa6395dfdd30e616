"""`spawn(...).result()`: the jailed function's value or exception comes back, and nothing
else: a hostile jail cannot make the parent call a function by sending a crafted pickle."""

from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path

import pytest

import sandbox
from sandbox.launcher import Launcher
from sandbox.result import JailDied, ResultRefused
from sandbox.spec import JailSpec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")

SPEC = JailSpec()


class CustomError(Exception):
    pass


def returns() -> object:
    return {"pid": os.getpid(), "uid": os.getuid(), "data": [b"x" * 100_000, 1.5, None]}


def raises() -> None:
    raise CustomError("from the jail")


class _Marker:
    """Unpickling this calls os.mkdir(path): a callable the parent must never run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


def hostile(path: str) -> object:
    return _Marker(path)


def raw_pickle(path: str) -> None:
    # Even without our pickler, bytes that name os.mkdir are refused.
    data = pickle.dumps(("ok", _Marker(path), ""))
    from sandbox import launcher

    os.write(launcher._SYNC_FD[0], data)
    os._exit(0)


def test_value_and_exception_come_back() -> None:
    value = sandbox.spawn(SPEC, returns).result(timeout=20)
    assert value == {"pid": 1, "uid": 0, "data": [b"x" * 100_000, 1.5, None]}
    with pytest.raises(CustomError, match="from the jail") as info:
        sandbox.spawn(SPEC, raises).result(timeout=20)
    assert "raised in the jail" in info.value.__notes__[0]
    assert "in raises" in info.value.__notes__[0]


@pytest.mark.parametrize("target", [hostile, raw_pickle])
def test_a_crafted_pickle_is_refused_not_run(tmp_path: Path, target: object) -> None:
    marker = tmp_path / "pwned"
    launcher = Launcher()
    try:
        jail = launcher.spawn(SPEC, target, (str(marker),), result=True)
        with pytest.raises(ResultRefused, match=r"posix\.mkdir"):
            jail.result(timeout=20)
    finally:
        launcher.close()
    assert not marker.exists()


def test_no_result_and_no_leaked_fds() -> None:
    before = set(os.listdir("/proc/self/fd"))
    launcher = Launcher()
    try:
        with pytest.raises(JailDied, match="status 7"):
            launcher.spawn(SPEC, os._exit, (7,), result=True).result(timeout=20)
        with pytest.raises(TimeoutError):
            launcher.spawn(SPEC, signal.pause, result=True).result(timeout=0.3)
    finally:
        launcher.close()
    import gc

    gc.collect()  # an untaken result's socket is closed with its handle
    assert set(os.listdir("/proc/self/fd")) <= before | {str(launcher.violations._fd)}


def floods() -> None:
    """Writes result bytes forever: the parent must not keep them all."""
    from sandbox import launcher

    chunk = b"x" * 65536
    while True:
        os.write(launcher._SYNC_FD[0], chunk)


def test_a_flood_is_cut_off_and_the_jail_killed() -> None:
    launcher = Launcher()
    try:
        jail = launcher.spawn(SPEC, floods, result=True)
        with pytest.raises(ResultRefused, match="more than 1048576 bytes"):
            jail.result(timeout=20, limit=1 << 20)
        assert jail.returncode == -signal.SIGKILL
    finally:
        launcher.close()
