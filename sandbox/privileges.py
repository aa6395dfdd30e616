"""Dropping privileges inside the jail: capabilities, securebits, no_new_privs,
dumpable, parent-death signal and rlimits.

Called after the jail has become root of its own user namespace, so dropping
the bounding set is allowed (CAP_SETPCAP there) and affects only the jail.
"""

from __future__ import annotations

import os
import resource

from sandbox import libc

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


def drop_capabilities(uid: int = 0, gid: int = 0) -> None:
    """No capability now or after any exec; then become uid/gid (ids inside the jail).

    The securebits keep a uid change from touching capabilities (NO_SETUID_FIXUP),
    so the ids change while CAP_SETUID/SETGID are still there, and capset then
    empties every set."""
    libc.prctl(libc.PR_SET_SECUREBITS, _SECUREBITS)
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in range(LAST_CAP + 1):
        libc.prctl(libc.PR_CAPBSET_DROP, cap)
    if gid:
        os.setresgid(gid, gid, gid)
    if uid:
        os.setresuid(uid, uid, uid)
    libc.capset_empty()


def set_no_new_privs() -> None:
    libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)


def set_dumpable(dumpable: bool) -> None:
    """Not dumpable: no ptrace, no /proc/PID/mem, no core file, even by the same uid."""
    libc.prctl(libc.PR_SET_DUMPABLE, 1 if dumpable else 0)


def set_parent_death_signal(sig: int) -> None:
    libc.prctl(libc.PR_SET_PDEATHSIG, sig)


def apply_rlimits(limits: list[tuple[int, int]]) -> None:
    for res, value in limits:
        resource.setrlimit(res, (value, value))
