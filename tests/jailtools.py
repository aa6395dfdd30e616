"""Run a probe function inside a jail and bring its answer back to the test.

The probe's return value travels as JSON over fd 0 of the jail (a pipe), so
the jail needs no more than the fds the test gives it.  An exception inside
the probe is reported as {"error": errno-name or repr}.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sandbox.launcher import JailProcess, Launcher
from sandbox.spec import JailSpec


@dataclass
class Outcome:
    jail: JailProcess
    returncode: int
    value: Any  # the probe's return value, None if it died before answering

    @property
    def killed_by_seccomp(self) -> bool:
        return self.returncode == -31


def errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, repr(e))


def _report(probe: Callable[..., Any], args: Sequence[Any]) -> None:
    try:
        value = probe(*args)
    except OSError as e:
        value = {"error": errname(e)}
    data = json.dumps(value).encode()
    os.write(0, data)


def run_probe(launcher: Launcher, spec: JailSpec, probe: Callable[..., Any],
              args: Sequence[Any] = (), fds: Sequence[int] = (), timeout: float = 20) -> Outcome:
    """Run `probe(*args)` in a jail built from `spec`; extra `fds` become 1, 2, ..."""
    r, w = os.pipe()
    try:
        jail = launcher.spawn(spec, _report, (probe, args), fds=[w, *fds])
    finally:
        os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())
    code = jail.wait(timeout)
    raw = b"".join(chunks)
    return Outcome(jail, code, json.loads(raw) if raw else None)


def with_nofile(spec: JailSpec, n: int) -> JailSpec:
    """The same spec allowing n fds, for probes that need to open something."""
    others = tuple((k, v) for k, v in spec.rlimits if k != "nofile")
    return replace(spec, rlimits=(*others, ("nofile", n)))


def sandbox_cli(*args: str, cwd: object = None, timeout: float = 120
                ) -> subprocess.CompletedProcess:
    """`python -m sandbox ARGS` as a separate process, as an operator runs the console script."""
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo)}
    return subprocess.run([sys.executable, "-m", "sandbox", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd or repo, env=env, check=False)
