"""Dropping privileges inside the jail: capabilities, securebits, no_new_privs,
rlimits, dumpable, and the parent-death signal.

Applied after the jail has become root of its own user namespace, so dropping
the bounding set is allowed (CAP_SETPCAP there) and affects only the jail.
"""

from __future__ import annotations

import resource

from sandbox import _jail, libc
from sandbox.plan import Step
from sandbox.spec import NOFILE_KEPT, RLIMIT_NAMES, JailSpec

# SECBIT_NOROOT, NO_SETUID_FIXUP, KEEP_CAPS(off), NO_CAP_AMBIENT_RAISE, each locked:
# an exec'd program never regains capabilities by being uid 0 in its namespace.
_SECUREBITS = (
    (1 << 0) | (1 << 1)  # NOROOT, NOROOT_LOCKED
    | (1 << 2) | (1 << 3)  # NO_SETUID_FIXUP, _LOCKED
    | (1 << 5)  # KEEP_CAPS_LOCKED (KEEP_CAPS itself off)
    | (1 << 6) | (1 << 7)  # NO_CAP_AMBIENT_RAISE, _LOCKED
)


def _last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


LAST_CAP = _last_cap()


def capability_steps(spec: JailSpec) -> list[Step]:
    if not spec.drop_capabilities:
        return []
    return [Step(_jail.OP_CAPS, "capabilities",
                 f"securebits {_SECUREBITS:#x} locked, ambient set cleared, bounding set "
                 f"0..{LAST_CAP} dropped, no capabilities left", args=(_SECUREBITS, LAST_CAP),
                 subs={0: "prctl(PR_SET_SECUREBITS): {err}", 1: "clearing ambient caps: {err}",
                       2: "dropping the bounding set: {err}", 3: "capset: {err}"})]


def no_new_privs_steps(spec: JailSpec) -> list[Step]:
    if not spec.no_new_privs:
        return []
    return [Step(_jail.OP_PRCTL, "no-new-privs", "no_new_privs: exec never gains privileges",
                 args=(libc.PR_SET_NO_NEW_PRIVS, 1))]


def rlimit_steps(spec: JailSpec) -> list[Step]:
    """Soft and hard limit alike, so the jail cannot raise them back.  "kept" (nofile):
    the number of fds passed in; "unlimited": the hard limit the jail starts with
    (raising it needs a capability the jail no longer has by then)."""
    out = []
    for name, value in spec.rlimits:
        if name not in RLIMIT_NAMES:
            raise ValueError(f"unknown rlimit {name!r}")
        if value == NOFILE_KEPT and name == "nofile":
            what, raw, flags = "the number of kept fds", 0, _jail.RLIMIT_KEPT
        elif value == resource.RLIM_INFINITY:
            what, raw, flags = "its hard limit (unlimited)", 0, _jail.RLIMIT_HARD
        elif value < 0:
            raise ValueError(f"rlimit {name} = {value}")
        else:
            what, raw, flags = str(value), min(value, 2**63 - 1), 0
        out.append(Step(_jail.OP_RLIMIT, "rlimits", f"RLIMIT_{name.upper()} = {what}",
                        args=(RLIMIT_NAMES[name], raw), flags=flags,
                        subs={1: "reading the hard limit: {err}"}))
    return out


def dumpable_steps(spec: JailSpec) -> list[Step]:
    """Not dumpable: no ptrace, no /proc/PID/mem, no core file, even by the same uid."""
    return [Step(_jail.OP_PRCTL, "dumpable", f"dumpable {int(spec.dumpable)}",
                 args=(libc.PR_SET_DUMPABLE, int(spec.dumpable)))]


def parent_death_steps(spec: JailSpec, layer: str) -> list[Step]:
    """The signal the jail gets when its parent dies.  Set first, and again once the
    credentials changed (which cleared it), then make sure the parent is still there."""
    out = [Step(_jail.OP_PRCTL, layer, f"parent-death signal {spec.parent_death_signal}",
                args=(libc.PR_SET_PDEATHSIG, spec.parent_death_signal))]
    if layer != "signals":
        out.append(Step(_jail.OP_PARENT_CHECK, layer, "the parent is still there",
                        subs={0: "the parent went away: {err}"}))
    return out
