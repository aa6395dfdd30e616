"""Recipes for tests/integration/test_forkserver.py, imported by a real fork server."""

from __future__ import annotations

import hashlib  # libcrypto, loaded in the server (as in titus's zygote); jails cannot import
import json
import os
from dataclasses import replace
from pathlib import Path

from sandbox import _jail
from sandbox.forkserver import Recipe
from sandbox.spec import BindMount, JailSpec, NetworkMode
from tests.jailtools import with_nofile

_said = [b"first"]


def _report() -> None:
    """Fd 0 is a socket to the test: say what the last update brought, then wait
    (the test looks at us from outside) until it closes."""
    os.write(0, _said[0])
    os.read(0, 1)


def _update(data: bytes) -> None:
    _said[0] = data


def _digest() -> None:
    """sha256 of b"titus" on fd 0: libcrypto's code, run from the server's 2 MB pages."""
    os.write(0, hashlib.sha256(b"titus").hexdigest().encode())


def setup(spec: JailSpec) -> dict[str, Recipe]:
    """Python functions (served by Python) and native entries (served by the C loop).
    The server moves libcrypto's code into 2 MB pages (`huge_text`) for all of them."""
    broken = replace(spec, binds=(BindMount(Path("/nonexistent-forkserver-test"), Path("/x")),))
    no_netns = replace(spec, network=NetworkMode.NETNS,
                       netns_path=Path("/nonexistent-forkserver-netns"))
    return {"report": Recipe(with_nofile(spec, 1), _report, (), update=_update),
            "digest": Recipe(spec, _digest, huge_text=("libcrypto.so",)),
            "broken": Recipe(broken, _report, ()),
            # Native: "pid uid gid" on fd 0, then exit; fd 0 read until EOF; a layer
            # that fails in the child (after the clone); a root that cannot be built.
            "native": Recipe(spec, _jail.entry("report")),
            "hold": Recipe(spec, _jail.entry("hold")),
            "native-netns": Recipe(no_netns, _jail.entry("report")),
            "native-broken": Recipe(broken, _jail.entry("report")),
            # Under titus's worker policy, whose filter notifies (read and write
            # forbidden): the entry's geteuid or getegid is its first forbidden call.
            "native-notify": Recipe(notifying_worker(spec), _jail.entry("report")),
            "native-notify-exit": Recipe(notifying_worker(spec), _jail.entry("exit"))}


def notifying_worker(spec: JailSpec) -> JailSpec:
    """`spec` under policies/titus-worker.toml's filter, notifying (where the kernel can:
    else as it is, and the test that uses it is skipped)."""
    from sandbox.notify import notifying
    from sandbox.profile import load_profile

    return notifying(spec, load_profile("titus-worker").policy, entry=True) or spec


def signals_setup(arg: tuple[JailSpec, str]) -> dict[str, Recipe]:
    """A server with a handler (SIGUSR1) and an ignored signal (SIGUSR2).  With
    `refused` an errno name, clone3 fails with it (a container runtime's seccomp
    profile answers ENOSYS, an older one EPERM), so the executor falls back to clone
    and the parent's list."""
    import errno
    import signal

    spec, refused = arg
    signal.signal(signal.SIGUSR1, lambda *_: None)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    if refused:
        import pyseccomp

        refuse = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        refuse.add_rule(pyseccomp.ERRNO(getattr(errno, refused)), "clone3")
        refuse.load()
    return {"hold": Recipe(spec, _jail.entry("hold"))}


_KEPT: list[bytes] = []


def native_setup(arg: tuple[JailSpec, str] | tuple[JailSpec, str, tuple[str, ...]]
                 ) -> dict[str, Recipe]:
    """Native jails only (the built-in `hold` entry): the server keeps its Python out of
    them (sandbox/dontfork.py).  Writes, to the file the test names, the arenas and
    the interpreter's data the server leaves out, so that the test can look for them
    in a jail's memory map.  A third item is the recipe's `runs`."""
    from sandbox import dontfork

    spec, out, *runs = arg
    import builtins
    import sys

    # Objects the interpreter's start-up made, before the server's first statement.
    early = [id(sys), id(builtins), id(sys.modules), id(sys.path), id(sys.modules["encodings"])]
    # Blocks over pymalloc's 512 bytes: from the raw allocator (one of its 1 KiB-128 KiB
    # slabs, one mapping of its own), not from malloc's heap.
    _KEPT.extend([bytes(2000), bytes(300_000)])
    # It reallocates across its sizes and back, keeping the contents.
    block = bytearray()
    for i in range(1, 19):
        block += bytes([i]) * (1 << i)
    while len(block) > 600:
        del block[len(block) // 2:]
    assert block == b"".join(bytes([i]) * (1 << i) for i in range(1, 19))[:len(block)]
    Path(out).write_text(json.dumps({"arenas": _jail.tracked_arenas(),
                                     "large": [id(b) for b in _KEPT],
                                     "interpreter": dontfork.interpreter_data(),
                                     "early": early,
                                     "env": {k: os.environ.get(k) for k in (
                                         "LD_PRELOAD", "SANDBOX_TRACK_ARENAS",
                                         "SANDBOX_LD_PRELOAD_WAS")}}))
    return {"hold": Recipe(with_nofile(spec, 1), _jail.entry("hold"), (),
                           runs=runs[0] if runs else None)}
