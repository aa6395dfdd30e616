"""Recipes for tests/integration/test_forkserver.py, imported by a real fork server."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from sandbox.forkserver import Recipe
from sandbox.spec import BindMount, JailSpec
from tests.jailtools import with_nofile

_said = [b"first"]


def _report() -> None:
    """Fd 0 is a socket to the test: say what the last update brought, then wait
    (the test looks at us from outside) until it closes."""
    os.write(0, _said[0])
    os.read(0, 1)


def _update(data: bytes) -> None:
    _said[0] = data


def setup(spec: JailSpec) -> dict[str, Recipe]:
    broken = replace(spec, binds=(BindMount(Path("/nonexistent-forkserver-test"), Path("/x")),))
    return {"report": Recipe(with_nofile(spec, 1), _report, (), update=_update),
            "broken": Recipe(broken, _report, ())}



def native_setup(arg: tuple[JailSpec, str]) -> dict[str, Recipe]:
    """Native jails only (the built-in `hold` entry): the server keeps its Python out of
    them (sandbox/dontfork.py).  Writes, to the file the test names, the arenas and
    the interpreter's data the server leaves out, so that the test can look for them
    in a jail's memory map."""
    from sandbox import _jail, dontfork

    spec, out = arg
    Path(out).write_text(json.dumps({"arenas": _jail.tracked_arenas(),
                                     "interpreter": dontfork.interpreter_data()}))
    return {"hold": Recipe(with_nofile(spec, 1), _jail.entry("hold"), ())}
