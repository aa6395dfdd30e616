"""Installing an exported seccomp BPF program: the jail's last layer.

Apart from seccomp.py (which compiles policies with libseccomp) so that loading
a program needs no libseccomp: the parent compiles once, the executor loads the
bytes (sandbox/_jail/steps.c, do_seccomp) right before untrusted code runs.

The step's flags are seccomp(2)'s: SECCOMP_FILTER_FLAG_NEW_LISTENER makes the
kernel return a user-notification listener, which the executor hands to the
parent (it copies the fd with pidfd_getfd while the child waits; the policy must
then allow write and read on the sync fd).
"""

from __future__ import annotations

import errno

from sandbox import _jail
from sandbox.plan import Step, apply_here

_BPF_MAXINSNS = 4096
_SOCK_FILTER_SIZE = 8  # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }
FILTER_FLAG_LOG = 1 << 1
FILTER_FLAG_NEW_LISTENER = 1 << 3
LAYER = "seccomp"


def prepare_bpf(program: bytes) -> None:
    """Check that `program` is a loadable BPF program (raises OSError EINVAL)."""
    count = len(program) // _SOCK_FILTER_SIZE
    if not program or len(program) % _SOCK_FILTER_SIZE or count > _BPF_MAXINSNS:
        raise OSError(errno.EINVAL, f"not a BPF program: {len(program)} bytes")


def steps(program: bytes, flags: int = 0, leave: bool = False) -> list[Step]:
    """The OP_SECCOMP step.  `leave` (with FILTER_FLAG_NEW_LISTENER; a native entry):
    the child leaves its listener open where it said, before the filter, it would be,
    and the parent takes it once the child is ready, with no round trip (a filter
    that forbids read and write needs this: sandbox/_jail/confine.c)."""
    prepare_bpf(program)
    listener = ""
    if flags & FILTER_FLAG_NEW_LISTENER:
        listener = (" (listener left open, taken by the parent when the jail is ready)"
                    if leave else " (listener to the parent)")
    return [Step(_jail.OP_SECCOMP, LAYER,
                 f"load the seccomp filter: {len(program) // _SOCK_FILTER_SIZE} BPF "
                 f"instructions{listener}", args=(flags,), data=program,
                 flags=_jail.SECCOMP_LEAVE if leave else 0,
                 subs={0: "seccomp(SET_MODE_FILTER): {err}",
                       1: "handing over the listener: {err}",
                       2: "the parent did not take the listener: {err}",
                       3: "finding the listener's fd: {err}"})]


def load_bpf(program: bytes) -> None:
    """Install `program` as a seccomp filter on the calling thread (irreversible).

    The caller has set no_new_privs (or holds CAP_SYS_ADMIN).  Raises OSError."""
    apply_here(steps(program))
