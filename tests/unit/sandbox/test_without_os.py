"""A cached `sandbox run` does without os (2.5 ms at start-up, sandbox/runcache.py): the
few things of os it needs are done with posix, and must do exactly what os does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.callwatch import ViolationWatch
from sandbox.launcher import _candidates, _fsencode
from sandbox.runcache import getenv

REPO = Path(__file__).resolve().parents[3]


def test_getenv_without_os_decodes_as_os_environ() -> None:
    value = b"/tmp/caf\xc3\xa9/\xff"  # UTF-8, and a byte that is not (surrogateescape)
    env = {**os.environ, "SANDBOX_TEST_VALUE": value.decode(errors="surrogateescape")}
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from sandbox.runcache import getenv;"
            "print(ascii((getenv('SANDBOX_TEST_VALUE'), getenv('SANDBOX_NOT_SET'),"
            "'os' in sys.modules)))")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(REPO)], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out == ascii((os.fsdecode(value), "", False)) + "\n"


def test_getenv_sees_a_change_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """posix.environ is the environment at start-up; os.environ is the one to ask once
    os is loaded (the full CLI, tests)."""
    monkeypatch.setenv("SANDBOX_TEST_VALUE", "changed")
    assert getenv("SANDBOX_TEST_VALUE") == "changed"
    monkeypatch.delenv("SANDBOX_TEST_VALUE")
    assert getenv("SANDBOX_TEST_VALUE") == ""


@pytest.mark.parametrize("path", [None, "", "/usr/bin:/bin", "/usr/bin/:/bin//", ":/bin",
                                  "/bin::/usr/bin:", "relative/dir:/bin"])
def test_candidates_are_where_execvpe_looks(path: str | None) -> None:
    env = {} if path is None else {"PATH": path}
    expected = [os.fsencode(os.path.join(d, "prog")) for d in os.get_exec_path(env)]
    assert _candidates("prog", env) == expected
    assert _candidates("./prog", env) == [b"./prog"]


def test_fsencode_is_os_fsencode() -> None:
    for text in ("plain", "caf\u00e9", b"\xff\xfe".decode(errors="surrogateescape")):
        assert _fsencode(text) == os.fsencode(text)


def test_a_call_that_cannot_be_named_still_ends_the_jail() -> None:
    """The call is never answered: a watch that failed to name it must still kill the
    jail, or the jail would wait for the answer for ever."""
    killed = []

    class Unnamed:
        pid = os.getpid()
        args = (0,) * 6

        @property
        def name(self) -> str:
            raise ModuleNotFoundError("no syscall table")

    watch = ViolationWatch(lambda: killed.append(True))
    with pytest.raises(ModuleNotFoundError):
        watch.handle(None, Unnamed())  # type: ignore[arg-type]
    assert killed == [True]
