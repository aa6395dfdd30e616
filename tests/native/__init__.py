"""Test-only native code: rogue titus workers that run attacker code in a real worker jail.

`load()` builds tests/native/rogue.c (gcc, the project's hardened flags, the
worker's entry header) once per content into build/tests-native/ and imports it.
`setup` is a zygote setup for the tests' forked supervisors: the real zygote's
setup (real contexts, real table, real jail spec), with each worker's entry
wrapped by the rogue one, which serves honestly unless the client asks for a
plan or a payload first (see rogue.c).  The scripts for "PLAN n" come from
PLAN_FILE beside the first vhost's certificate (the zygote is exec'd: a file is
how the test reaches it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).with_name("rogue.c")
PLAN_FILE = "rogue-plan.json"
FLAGS = ["-std=c11", "-O2", "-D_FORTIFY_SOURCE=3", "-fstack-protector-strong",
         "-fstack-clash-protection", "-fcf-protection", "-Wall", "-Wextra", "-Werror",
         "-D_GNU_SOURCE", "-fPIC", "-shared", "-Wl,-z,relro,-z,now"]

_module: ModuleType | None = None


def build() -> Path:
    """The shared object for the current source (built if missing; atomic)."""
    tag = hashlib.sha256(SOURCE.read_bytes() + (ROOT / "titus/worker/wk_entry.h").read_bytes()
                         + (ROOT / "sandbox/jail_entry.h").read_bytes()).hexdigest()[:16]
    out_dir = ROOT / "build" / "tests-native"
    target = out_dir / f"_rogue.{tag}{sysconfig.get_config_var('EXT_SUFFIX')}"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{target.name}.{os.getpid()}"
    subprocess.run(["gcc", *FLAGS, f"-I{sysconfig.get_paths()['include']}",
                    f"-I{ROOT / 'titus' / 'worker'}", str(SOURCE), "-o", str(tmp)],
                   check=True, capture_output=True, text=True)
    os.replace(tmp, target)
    return target


def load() -> ModuleType:
    global _module
    if _module is None:
        path = build()
        loader = importlib.machinery.ExtensionFileLoader("_rogue", str(path))
        spec = importlib.util.spec_from_file_location("_rogue", path, loader=loader)
        assert spec is not None
        _module = importlib.util.module_from_spec(spec)
        loader.exec_module(_module)
    return _module


def write_plan(directory: Path, plan: list[list[bytes]]) -> None:
    (directory / PLAN_FILE).write_text(json.dumps([[p.hex() for p in s] for s in plan]))


def setup(arg: Any) -> dict[str, Any]:
    """A zygote setup (supervisor.zygote_setup = "tests.native:setup")."""
    from titus.worker import zygote

    recipes = zygote.setup(arg)
    worker = recipes[zygote.WORKER]
    plan_path = Path(arg.vhosts[0].cert).parent / PLAN_FILE
    plans = ([[bytes.fromhex(p) for p in s] for s in json.loads(plan_path.read_text())]
             if plan_path.exists() else [])
    wait_ms = int((arg.handshake_timeout + 2) * 1000)  # outlive the supervisor's timer
    honest = zygote._tables[-1].entry  # the real worker, which serves what is not an attack
    _, for_jail = load().entry(honest, plans, wait_ms)
    recipes[zygote.WORKER] = dataclasses.replace(worker, target=for_jail)  # the jail's entry
    return recipes


def encode_args(args: list[Any]) -> str:
    """A payload's arguments as rogue.c reads them: integers in decimal, strings and
    bytes in hex (a caller flattens lists the way the payload reads them)."""
    out: list[str] = []
    for a in args:
        if isinstance(a, bool) or not isinstance(a, (int, str, bytes)):
            raise TypeError(f"cannot pass {a!r} to a payload")
        out.append(str(a) if isinstance(a, int)
                   else (a.encode("latin-1") if isinstance(a, str) else a).hex())
    return " ".join(out)
