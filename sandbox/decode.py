"""A forbidden call in words: `socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, NETLINK_ROUTE)`.

Why: "the program called socket" does not say why it was refused; the family
does.  Arguments are decoded for the calls a profile usually filters (and the
paths of the calls that take one); any other argument is printed in hex.
Decoding is for the native arch: the values of O_DIRECTORY and friends differ
between x86_64 and aarch64.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
from collections.abc import Callable

from sandbox.constants import CONSTANTS

# The first value of each prefix in CONSTANTS wins (AF_UNIX over AF_LOCAL).
_BY_PREFIX: dict[str, dict[int, str]] = {}
for _name, _value in CONSTANTS.items():
    _prefix = _name.split("_", 1)[0] + "_"
    _BY_PREFIX.setdefault(_prefix, {}).setdefault(_value, _name)

FAMILIES = {
    **_BY_PREFIX["AF_"], 3: "AF_AX25", 4: "AF_IPX", 5: "AF_APPLETALK", 15: "AF_KEY",
    29: "AF_CAN", 31: "AF_BLUETOOTH", 38: "AF_ALG", 40: "AF_VSOCK", 44: "AF_XDP",
}
NETLINK = {0: "NETLINK_ROUTE", 4: "NETLINK_SOCK_DIAG", 6: "NETLINK_XFRM", 9: "NETLINK_AUDIT",
           12: "NETLINK_NETFILTER", 15: "NETLINK_KOBJECT_UEVENT", 16: "NETLINK_GENERIC"}
IPPROTO = {0: "0", 1: "IPPROTO_ICMP", 6: "IPPROTO_TCP", 17: "IPPROTO_UDP", 58: "IPPROTO_ICMPV6",
           132: "IPPROTO_SCTP", 255: "IPPROTO_RAW"}
SOCK_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 5: "SOCK_SEQPACKET",
              10: "SOCK_PACKET"}
SOCK_FLAGS = {0o4000: "SOCK_NONBLOCK", 0o2000000: "SOCK_CLOEXEC"}
IOCTLS = {
    **{v: k for k, v in CONSTANTS.items() if k.startswith(("TC", "TIO", "FIO", "FICLONE"))},
    0x540F: "TIOCGPGRP", 0x5410: "TIOCSPGRP", 0x540E: "TIOCSCTTY", 0x5412: "TIOCSTI",
    0x5402: "TCSETS", 0x5403: "TCSETSW", 0x5404: "TCSETSF", 0x5452: "FIOASYNC",
    0x8912: "SIOCGIFCONF", 0x8933: "SIOCGIFINDEX",
}
FCNTL = {**{v: k for k, v in CONSTANTS.items() if k.startswith("F_") and k != "FD_CLOEXEC"},
         8: "F_SETOWN", 9: "F_GETOWN", 10: "F_SETSIG", 11: "F_GETSIG", 1024: "F_SETLEASE",
         1025: "F_GETLEASE", 1031: "F_SETPIPE_SZ", 1032: "F_GETPIPE_SZ"}
PRCTL = {**_BY_PREFIX["PR_"], 4: "PR_SET_DUMPABLE", 8: "PR_SET_KEEPCAPS", 22: "PR_SET_SECCOMP",
         24: "PR_CAPBSET_DROP", 38: "PR_SET_NO_NEW_PRIVS", 47: "PR_CAP_AMBIENT"}
RLIMITS = {0: "RLIMIT_CPU", 1: "RLIMIT_FSIZE", 2: "RLIMIT_DATA", 3: "RLIMIT_STACK",
           4: "RLIMIT_CORE", 5: "RLIMIT_RSS", 6: "RLIMIT_NPROC", 7: "RLIMIT_NOFILE",
           8: "RLIMIT_MEMLOCK", 9: "RLIMIT_AS"}
# open flags for this machine (os knows the arch-dependent ones).
OPEN_FLAGS = {getattr(os, n): n for n in (
    "O_WRONLY", "O_RDWR", "O_CREAT", "O_EXCL", "O_NOCTTY", "O_TRUNC", "O_APPEND", "O_NONBLOCK",
    "O_DSYNC", "O_DIRECTORY", "O_NOFOLLOW", "O_CLOEXEC", "O_NOATIME", "O_PATH", "O_DIRECT",
    "O_LARGEFILE") if hasattr(os, n)}
CLONE_FLAGS = {v: k for k, v in CONSTANTS.items() if k.startswith("CLONE_")}
PROT = {v: k for k, v in CONSTANTS.items() if k.startswith("PROT_") and v}
MAP = {v: k for k, v in CONSTANTS.items() if k.startswith("MAP_") and k != "MAP_ANON"}
AT_FDCWD = 0xFFFFFF9C  # -100 as the kernel passes it (an int in a 64-bit register)

# Reads a string (path) or bytes from the caller: (address, limit) -> value or None.
Reader = Callable[[int, int], bytes | None]


def flags(value: int, names: dict[int, str], zero: str = "0") -> str:
    """`A|B|0x40` for the bits of `value` named in `names`."""
    parts, left = [], value
    for bit, name in sorted(names.items()):
        if bit and value & bit == bit and left & bit:
            parts.append(name)
            left &= ~bit
    if left:
        parts.append(hex(left))
    return "|".join(parts) or zero


def _name(value: int, names: dict[int, str]) -> str:
    return names.get(value, str(value) if value < 4096 else hex(value))


def _int(value: int) -> str:
    return str(value - (1 << 64) if value >= 1 << 63 else value)


def _fd(value: int) -> str:
    low = value & 0xFFFFFFFF
    if low == AT_FDCWD:
        return "AT_FDCWD"
    return str(low - (1 << 32) if low >= 1 << 31 else low)


def _socktype(value: int) -> str:
    return "|".join([_name(value & 0xF, SOCK_TYPES), *(n for b, n in SOCK_FLAGS.items()
                                                      if value & b)])


def _open_flags(value: int) -> str:
    mode = {0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR"}.get(value & 3, "3")
    rest = flags(value & ~3, OPEN_FLAGS, zero="")
    return f"{mode}|{rest}" if rest else mode


def _signal(value: int) -> str:
    try:
        return signal.Signals(value).name
    except ValueError:
        return str(value)


def _sockaddr(data: bytes | None) -> str:
    if not data or len(data) < 2:
        return "?"
    family = struct.unpack("=H", data[:2])[0]
    if family == socket.AF_UNIX:
        raw = data[2:]
        abstract = raw[:1] == b"\0"
        path = (raw[1:] if abstract else raw).split(b"\0", 1)[0].decode(errors="replace")
        return f'{{AF_UNIX, "{"@" if abstract else ""}{path}"}}'
    if family == socket.AF_INET and len(data) >= 8:
        port = struct.unpack("!H", data[2:4])[0]
        return f"{{AF_INET, {socket.inet_ntop(socket.AF_INET, data[4:8])}:{port}}}"
    if family == socket.AF_INET6 and len(data) >= 24:
        port = struct.unpack("!H", data[2:4])[0]
        return f"{{AF_INET6, [{socket.inet_ntop(socket.AF_INET6, data[8:24])}]:{port}}}"
    return f"{{{FAMILIES.get(family, family)}, ...}}"


_SIGNATURES: dict[str, tuple[str, ...]] = {
    "socket": ("family", "socktype", "protocol"),
    "socketpair": ("family", "socktype", "protocol", "ptr"),
    "connect": ("fd", "sockaddr", "int"),
    "bind": ("fd", "sockaddr", "int"),
    "open": ("path", "open", "mode"),
    "openat": ("fd", "path", "open", "mode"),
    "creat": ("path", "mode"),
    "execve": ("path", "ptr", "ptr"),
    "execveat": ("fd", "path", "ptr", "ptr", "hex"),
    "ioctl": ("fd", "ioctl", "hex"),
    "fcntl": ("fd", "fcntl", "int"),
    "prctl": ("prctl", "hex", "hex", "hex", "hex"),
    "clone": ("clone", "ptr", "ptr", "ptr", "ptr"),
    "unshare": ("clone",),
    "setns": ("fd", "clone"),
    "mmap": ("ptr", "int", "prot", "map", "fd", "hex"),
    "mprotect": ("ptr", "int", "prot"),
    "kill": ("int", "signal"),
    "tgkill": ("int", "int", "signal"),
    "prlimit64": ("int", "rlimit", "ptr", "ptr"),
    "setrlimit": ("rlimit", "ptr"),
    "getrlimit": ("rlimit", "ptr"),
    "mount": ("path", "path", "path", "hex", "ptr"),
    "umount2": ("path", "hex"),
    "chroot": ("path",),
    "chdir": ("path",),
    "mkdir": ("path", "mode"),
    "mkdirat": ("fd", "path", "mode"),
    "unlink": ("path",),
    "unlinkat": ("fd", "path", "hex"),
    "rmdir": ("path",),
    "rename": ("path", "path"),
    "renameat2": ("fd", "path", "fd", "path", "hex"),
    "symlink": ("path", "path"),
    "chmod": ("path", "mode"),
    "fchmodat": ("fd", "path", "mode"),
    "access": ("path", "int"),
    "faccessat2": ("fd", "path", "int", "hex"),
    "newfstatat": ("fd", "path", "ptr", "hex"),
    "statx": ("fd", "path", "hex", "hex", "ptr"),
    "readlink": ("path", "ptr", "int"),
    "ptrace": ("int", "int", "ptr", "ptr"),
    "setuid": ("int",),
    "setgid": ("int",),
    "getpriority": ("int", "int"),
}


# How many arguments the other common calls take (the rest of the registers are noise).
_ARITY = {n: k for k, names in {
    0: "getpid getppid gettid getuid geteuid getgid getegid getpgrp setsid sched_yield "
       "vfork fork pause sync inotify_init",
    1: "close dup exit exit_group umask uname sysinfo chroot unlink rmdir fchdir setsid "
       "brk epoll_create epoll_create1 getpgid getsid alarm set_tid_address fsync "
       "fdatasync personality eventfd io_destroy",
    2: "dup2 munmap listen shutdown pipe2 fstat stat lstat getrlimit setpgid link "
       "rename symlink truncate ftruncate fchmod sigaltstack set_robust_list "
       "clock_gettime clock_getres gettimeofday nanosleep flock eventfd2 getcwd "
       "timerfd_create umount2 tkill setitimer memfd_create inotify_add_watch "
       "arch_prctl getitimer",
    3: "read write lseek readv writev dup3 getdents64 accept accept4 getsockname "
       "getpeername fchown lchown chown poll madvise mincore msync mremap "
       "sched_getaffinity sched_setaffinity getrandom symlinkat readlinkat unlinkat "
       "fchownat futimesat epoll_ctl shmget rt_sigaction rt_sigprocmask "
       "signalfd inotify_rm_watch ioprio_set sendmsg recvmsg",
    4: "pread64 pwrite64 fadvise64 sendfile wait4 epoll_wait rt_sigtimedwait "
       "utimensat fallocate linkat renameat mknodat tee timerfd_settime "
       "clock_nanosleep rseq sync_file_range",
    5: "getxattr lgetxattr fgetxattr setxattr waitid select ppoll pselect6 "
       "epoll_pwait splice keyctl",
    6: "futex sendto recvfrom copy_file_range setsockopt getsockopt "
       "process_vm_readv process_vm_writev sendmmsg recvmmsg",
}.items() for n in names.split()}


def signature(name: str) -> tuple[str, ...] | None:
    """The argument kinds of `name`, when it is one we decode."""
    return _SIGNATURES.get(name)


def describe(name: str, args: tuple[int, ...], read: Reader | None = None) -> str:
    """`name(arg, ...)` with the arguments decoded; `read` fetches pointed-to memory."""
    kinds = _SIGNATURES.get(name)
    if kinds is None:  # the arguments it takes, in hex; "..." when not known
        count = _ARITY.get(name)
        if count is None:
            return f"{name}(...)"
        return f"{name}({', '.join(hex(a) for a in args[:count])})"
    out = []
    for i, kind in enumerate(kinds):
        out.append(_one(kind, args[i], args, i, read))
    return f"{name}({', '.join(out)})"


def _one(kind: str, value: int, args: tuple[int, ...], i: int, read: Reader | None) -> str:
    if kind == "family":
        return _name(value, FAMILIES)
    if kind == "socktype":
        return _socktype(value)
    if kind == "protocol":
        family = args[0]
        if family == socket.AF_NETLINK:
            return _name(value, NETLINK)
        if family in (socket.AF_INET, socket.AF_INET6):
            return _name(value, IPPROTO)
        return str(value)
    if kind == "path":
        data = read(value, 256) if read and value else None
        if data is None:
            return "NULL" if not value else hex(value)
        text = data.split(b"\0", 1)[0].decode(errors="backslashreplace")
        return f'"{text}"' + ("..." if b"\0" not in data else "")
    if kind == "sockaddr":
        length = args[i + 1] if i + 1 < len(args) else 0
        return _sockaddr(read(value, min(length, 128)) if read and value else None)
    simple: dict[str, Callable[[int], str]] = {
        "fd": _fd, "int": _int, "hex": hex, "ptr": lambda v: hex(v) if v else "NULL",
        "mode": lambda v: f"0{v:o}", "open": _open_flags, "signal": _signal,
        "ioctl": lambda v: _name(v & 0xFFFFFFFF, IOCTLS),
        "fcntl": lambda v: _name(v, FCNTL), "prctl": lambda v: _name(v, PRCTL),
        "clone": lambda v: flags(v & ~0xFF, CLONE_FLAGS) + (
            f"|{_signal(v & 0xFF)}" if v & 0xFF else ""),
        "prot": lambda v: flags(v, PROT, "PROT_NONE"), "map": lambda v: flags(v, MAP),
        "rlimit": lambda v: _name(v, RLIMITS),
    }
    return simple[kind](value)
