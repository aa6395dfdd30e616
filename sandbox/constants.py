"""Symbolic constants that argument filters may name (``"PROT_READ|PROT_WRITE"``)."""

from __future__ import annotations

import re

from sandbox.errors import suggest

# Only constants with the same value on x86_64 and aarch64: a policy is
# compiled for both, so an arch-dependent value would silently be wrong on one.
CONSTANTS: dict[str, int] = {
    # mmap/mprotect protection bits
    "PROT_NONE": 0x0,
    "PROT_READ": 0x1,
    "PROT_WRITE": 0x2,
    "PROT_EXEC": 0x4,
    "PROT_GROWSDOWN": 0x01000000,
    "PROT_GROWSUP": 0x02000000,
    # mmap flags
    "MAP_SHARED": 0x01,
    "MAP_PRIVATE": 0x02,
    "MAP_FIXED": 0x10,
    "MAP_ANONYMOUS": 0x20,
    "MAP_ANON": 0x20,
    "MAP_GROWSDOWN": 0x0100,
    "MAP_NORESERVE": 0x4000,
    "MAP_POPULATE": 0x8000,
    "MAP_STACK": 0x20000,
    "MAP_HUGETLB": 0x40000,
    "MAP_FIXED_NOREPLACE": 0x100000,
    # socket domains and types
    "AF_UNSPEC": 0,
    "AF_UNIX": 1,
    "AF_LOCAL": 1,
    "AF_INET": 2,
    "AF_INET6": 10,
    "AF_NETLINK": 16,
    "AF_PACKET": 17,
    "SOCK_STREAM": 1,
    "SOCK_DGRAM": 2,
    "SOCK_RAW": 3,
    "SOCK_SEQPACKET": 5,
    "SOCK_NONBLOCK": 0o4000,
    "SOCK_CLOEXEC": 0o2000000,
    # socket options (asm-generic values, shared by both arches)
    "SOL_SOCKET": 1,
    "SO_RCVLOWAT": 18,
    # send/recv flags
    "MSG_PEEK": 0x2,
    "MSG_DONTWAIT": 0x40,
    "MSG_NOSIGNAL": 0x4000,
    "MSG_CMSG_CLOEXEC": 0x40000000,
    # ioctl requests (asm-generic values, shared by both arches)
    "TCGETS": 0x5401,
    "TIOCGWINSZ": 0x5413,
    "FIONREAD": 0x541B,
    "FIONBIO": 0x5421,
    "FIONCLEX": 0x5450,
    "FIOCLEX": 0x5451,
    # fcntl commands
    "F_DUPFD": 0,
    "F_GETFD": 1,
    "F_SETFD": 2,
    "F_GETFL": 3,
    "F_SETFL": 4,
    "F_GETLK": 5,
    "F_SETLK": 6,
    "F_SETLKW": 7,
    "F_DUPFD_CLOEXEC": 1030,
    "F_ADD_SEALS": 1033,
    "F_GET_SEALS": 1034,
    "FD_CLOEXEC": 1,
    # open flags (O_DIRECTORY, O_NOFOLLOW, O_DIRECT, O_LARGEFILE differ: not here)
    "O_RDONLY": 0,
    "O_WRONLY": 0o1,
    "O_RDWR": 0o2,
    "O_ACCMODE": 0o3,
    "O_CREAT": 0o100,
    "O_EXCL": 0o200,
    "O_NOCTTY": 0o400,
    "O_TRUNC": 0o1000,
    "O_APPEND": 0o2000,
    "O_NONBLOCK": 0o4000,
    "O_DSYNC": 0o10000,
    "O_SYNC": 0o4010000,
    "O_NOATIME": 0o1000000,
    "O_CLOEXEC": 0o2000000,
    "O_PATH": 0o10000000,
    "AT_FDCWD": -100,
    "AT_SYMLINK_NOFOLLOW": 0x100,
    "AT_EMPTY_PATH": 0x1000,
    # clone flags
    "CLONE_VM": 0x00000100,
    "CLONE_FS": 0x00000200,
    "CLONE_FILES": 0x00000400,
    "CLONE_SIGHAND": 0x00000800,
    "CLONE_PIDFD": 0x00001000,
    "CLONE_PTRACE": 0x00002000,
    "CLONE_VFORK": 0x00004000,
    "CLONE_PARENT": 0x00008000,
    "CLONE_THREAD": 0x00010000,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_SYSVSEM": 0x00040000,
    "CLONE_SETTLS": 0x00080000,
    "CLONE_PARENT_SETTID": 0x00100000,
    "CLONE_CHILD_CLEARTID": 0x00200000,
    "CLONE_UNTRACED": 0x00800000,
    "CLONE_CHILD_SETTID": 0x01000000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "CLONE_IO": 0x80000000,
    # prctl options
    "PR_SET_PDEATHSIG": 1,
    "PR_GET_DUMPABLE": 3,
    "PR_SET_NAME": 15,
    "PR_GET_NAME": 16,
    "PR_CAPBSET_READ": 23,
    # file types of mknod's mode (mkfifo)
    "S_IFMT": 0o170000,
    "S_IFIFO": 0o010000,
    # cp's reflink attempt, _IOW(0x94, 9, int) on both arches
    "FICLONE": 0x40049409,
}
_ARCH_DEPENDENT = {"O_DIRECTORY", "O_NOFOLLOW", "O_DIRECT", "O_LARGEFILE", "O_TMPFILE"}
_U64 = (1 << 64) - 1


def parse_value(value: object) -> int:
    """An int, or ``"PROT_READ|PROT_WRITE"``-style constants (and numbers) joined by '|'."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number or a constant name, not {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        number = 0
        for part in (p.strip() for p in value.split("|")):
            if part in CONSTANTS:
                number |= CONSTANTS[part] & _U64
            elif re.fullmatch(r"-?(0x[0-9a-fA-F]+|0o[0-7]+|[0-9]+)", part):
                number |= int(part, 0) & _U64
            elif part in _ARCH_DEPENDENT:
                raise ValueError(
                    f"constant {part!r} differs between x86_64 and aarch64; write a separate "
                    "policy per arch with the number"
                )
            else:
                raise ValueError(f"unknown constant {part!r}{suggest(part, CONSTANTS)}")
    else:
        raise ValueError(f"expected a number or a constant name, not {value!r}")
    if not -(1 << 63) <= number <= _U64:
        raise ValueError(f"value {value!r} does not fit in 64 bits")
    return number & _U64

