"""Seccomp user notification (SECCOMP_RET_USER_NOTIF, Linux >= 5.0), the supervisor's side.

A filter whose default action is "notify" hands every forbidden call, from any
process of the jail, to whoever holds its listener fd; the calling thread
waits in the kernel until it is answered.  Nothing is rate-limited (the audit
log is: 10 records per 5 s), and the arguments come with the call.  The
supervisor answers each call:

- `kill`: the forbidden call never runs; the caller kills the jail (`sandbox run`);
- `allow`: the call runs as if the filter had allowed it (`sandbox learn`),
  SECCOMP_USER_NOTIF_FLAG_CONTINUE, Linux >= 5.5;
- `fail(errno)`: the call returns -1 with that errno.

If the listener is closed (its holder died), every waiting and later call fails
with ENOSYS; a jail also dies with its supervisor (parent-death signal).

The listener, its thread and the reading of a caller's memory are in
sandbox/listener.py (the lean part, for `sandbox run`'s fast path); this module
decides whether a jail notifies at all.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os

from sandbox.listener import Call, Listener, Watcher, may_copy_listeners
from sandbox.rules import SeccompPolicy
from sandbox.spec import JailSpec

__all__ = ["Call", "Listener", "Watcher", "available", "notifying"]

_SECCOMP_GET_ACTION_AVAIL = 2
_SECCOMP_RET_USER_NOTIF = 0x7FC00000
_NR_SECCOMP = {"x86_64": 317, "aarch64": 277}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def available() -> bool:
    """Whether this kernel can notify (SECCOMP_RET_USER_NOTIF) and continue a call,
    and this process can take a jail's listener.

    SANDBOX_SECCOMP_NOTIFY=0 in the environment says no: the audit-log fallback
    of an older kernel, chosen on purpose (and tested so)."""
    if os.environ.get("SANDBOX_SECCOMP_NOTIFY") == "0" or not may_copy_listeners():
        return False
    nr = _NR_SECCOMP.get(os.uname().machine)
    if nr is None:
        return False
    action = ctypes.c_uint32(_SECCOMP_RET_USER_NOTIF)
    if _libc.syscall(nr, _SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(action)) != 0:
        return False
    # FLAG_CONTINUE came with 5.5, pidfd_getfd (how a listener is taken) with 5.6;
    # there is no probe for them but the version.
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (5, 6)



def notifying(spec: JailSpec, policy: SeccompPolicy | None, learning: bool = False,
              entry: bool = False) -> JailSpec | None:
    """`spec` with its filter's default action replaced by "notify", or None where
    the audit log must do: no user notification here, no policy, a default that
    does not kill (errno, trap, log: nothing to report), or the calls the hand-over
    makes after the filter is in place not allowed outright.  An exec or a Python
    function hands the listener over with a write and a read, then closes its own
    copy; a native `entry` (titus's worker) leaves it open for the parent to take
    once it is ready, and needs only close (of the sync socket, which says ready)."""
    from sandbox.seccomp import compile_policy

    if policy is None or not available():
        return None
    if not learning and policy.default not in ("kill-process", "kill-thread"):
        return None
    needed = ("close",) if entry else ("read", "write", "close")
    if any(policy.is_allowed(name) is not True for name in needed):
        return None
    program = compile_policy(policy, default_override="notify")
    return dataclasses.replace(spec, seccomp_bpf=program, seccomp_listener=True)
