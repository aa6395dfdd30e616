"""A Linux jail built in layers: namespaces, empty root, privileges, rlimits, seccomp.

    import sandbox
    spec = sandbox.load_profile("examples/shell").spec
    jail = sandbox.spawn(spec, sum, ([1, 2, 3],))
    assert jail.result() == 6            # the function's return value, or its exception
    sandbox.run(spec, ["true"]).wait()   # exec a program in a jail

`spawn` and `run` use one Launcher per process, made on first use and closed
at exit; make your own `sandbox.launcher.Launcher` to control its lifetime.
Documented in docs/sandbox.md.  `sandbox` never imports `titus`; any daemon
can use it.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # nothing at run time: `sandbox run` imports this package first
    from collections.abc import Callable, Sequence
    from typing import Any

    from sandbox.launcher import JailProcess, Launcher
    from sandbox.profile import Profile
    from sandbox.spec import JailSpec

__all__ = ["load_profile", "run", "spawn"]

_launcher: list[Launcher] = []


def _default() -> Launcher:
    if not _launcher:
        import atexit

        from sandbox.launcher import Launcher

        _launcher.append(Launcher())
        atexit.register(_launcher[0].close)
    return _launcher[0]


def spawn(spec: JailSpec, target: Callable[..., Any], args: Sequence[object] = (),
          fds: Sequence[int] = ()) -> JailProcess:
    """Run `target(*args)` in a new jail (fds[i] becomes fd i there); the handle's
    `result(timeout)` returns what it returned or raises what it raised.  Needs root."""
    return _default().spawn(spec, target, args, fds=fds, result=True)


def run(spec: JailSpec, argv: Sequence[str], fds: Sequence[int] = (0, 1, 2)) -> JailProcess:
    """Exec `argv` in a new jail; `wait()` gives its exit status.  Needs root."""
    return _default().run(spec, argv, fds=fds)


def load_profile(name_or_path: str, **overrides: Any) -> Profile:
    """A profile by name ("examples/shell") or path, with JailSpec fields overridden."""
    from sandbox.profile import load_profile as load

    return load(name_or_path, **overrides)
