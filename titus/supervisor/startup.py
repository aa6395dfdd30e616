"""What stops titus from starting: the one-line error, and the layers a jail profile must keep."""

from __future__ import annotations

from sandbox.profile import Profile, load_profile
from sandbox.spec import NetworkMode


class StartupError(RuntimeError):
    """titus cannot start; the message is one line for the operator."""


def jail_profile(name: str) -> Profile:
    """A titus jail profile, which must keep every layer titus's promises rest on: an
    operator's edit may change the syscall list, not drop the filter or the empty root."""
    profile = load_profile(name)
    spec = profile.spec
    missing = [what for what, ok in (
        ("a [seccomp] table", spec.seccomp_bpf is not None),
        ("empty_root = true", spec.empty_root),
        ("no_new_privs = true", spec.no_new_privs),
        ("capabilities dropped", spec.drop_capabilities),
        ("dumpable = false", not spec.dumpable),
        ("a network that is not the host's", spec.network != NetworkMode.HOST),
    ) if not ok]
    if missing:
        raise StartupError(f"{profile.path}: titus will not run its {name} jails without "
                           f"{', '.join(missing)}")
    return profile
