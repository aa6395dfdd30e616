"""Installing an exported seccomp BPF program: the jail's last layer.

Apart from seccomp.py (which compiles policies with libseccomp) so a fork
server's children can load a program without importing pyseccomp: the layer
runs after the empty root is in place, where no module can be imported.
"""

from __future__ import annotations

import ctypes
import errno
import os

_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_BPF_MAXINSNS = 4096
_SOCK_FILTER_SIZE = 8  # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong)
_prctl.restype = ctypes.c_int


# program -> (buffer, sock_fprog) built in the parent: a forked child that
# finds its program here skips the allocations (copy-on-write page faults cost
# ~0.1 ms right after fork) and goes straight to prctl.
_PREPARED: dict[bytes, tuple[ctypes.Array[ctypes.c_char], _SockFprog]] = {}
_PREPARED_MAX = 64


def prepare_bpf(program: bytes) -> None:
    """Build the ctypes structures for `program` now (in the parent), for `load_bpf`."""
    if program in _PREPARED:
        return
    count = len(program) // _SOCK_FILTER_SIZE
    if not program or len(program) % _SOCK_FILTER_SIZE or count > _BPF_MAXINSNS:
        raise OSError(errno.EINVAL, f"not a BPF program: {len(program)} bytes")
    if len(_PREPARED) >= _PREPARED_MAX:
        del _PREPARED[next(iter(_PREPARED))]
    buf = ctypes.create_string_buffer(program, len(program))
    _PREPARED[program] = (buf, _SockFprog(count, ctypes.addressof(buf)))


# seccomp(2): SECCOMP_SET_MODE_FILTER with SECCOMP_FILTER_FLAG_NEW_LISTENER returns a
# user-notification listener fd (sandbox.notify), which the parent takes over.
_NR_SECCOMP = {"x86_64": 317, "aarch64": 277}.get(os.uname().machine, -1)
_SET_MODE_FILTER = 1
FILTER_FLAG_NEW_LISTENER = 1 << 3
_libc.syscall.restype = ctypes.c_long


def load_bpf_listener(program: bytes) -> int:
    """`load_bpf`, returning the filter's user-notification listener fd."""
    prepared = _PREPARED.get(program)
    if prepared is None:
        prepare_bpf(program)
        prepared = _PREPARED[program]
    fd = _libc.syscall(_NR_SECCOMP, _SET_MODE_FILTER, FILTER_FLAG_NEW_LISTENER,
                       ctypes.c_void_p(ctypes.addressof(prepared[1])))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp(SET_MODE_FILTER, NEW_LISTENER): {os.strerror(err)}")
    return fd


def load_bpf(program: bytes) -> None:
    """Install `program` as a seccomp filter on the calling thread (irreversible).

    The caller has set no_new_privs (or holds CAP_SYS_ADMIN).  Imports nothing:
    it runs in a jailed child right before untrusted code.  Raises OSError.
    """
    prepared = _PREPARED.get(program)
    if prepared is None:
        prepare_bpf(program)
        prepared = _PREPARED[program]
    if _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prepared[1]), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")
