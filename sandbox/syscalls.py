"""Syscall names and numbers per architecture, as libseccomp knows them.

A policy is checked against both supported arches (x86_64, aarch64), so a
name that exists on neither is a typo, and one that exists on only one is
skipped when compiling for the other.
"""

from __future__ import annotations

import errno
import functools

from sandbox.errors import suggest
from sandbox.seccomplib import pyseccomp

ARCHES: dict[str, int] = {"x86_64": pyseccomp.Arch.X86_64, "aarch64": pyseccomp.Arch.AARCH64}
# The highest syscall number worth probing: both arches end in the 450s today.
_MAX_SYSCALL_NR = 1024


def native_arch() -> str:
    """The name of the machine's arch, as used in `ARCHES`."""
    token = pyseccomp.system_arch()
    for name, value in ARCHES.items():
        if value == token:
            return name
    raise OSError(errno.ENOSYS, f"unsupported seccomp architecture 0x{token:x}")


def arch_token(arch: str | None) -> int:
    """libseccomp's token for an arch name (None = native)."""
    name = arch or native_arch()
    try:
        return ARCHES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}{suggest(name, ARCHES)}; known: {', '.join(ARCHES)}"
        ) from None


@functools.cache
def syscall_table(arch: str) -> dict[int, str]:
    """number -> name for every syscall libseccomp knows on `arch` (a few ms, once)."""
    token = arch_token(arch)
    table: dict[int, str] = {}
    for nr in range(_MAX_SYSCALL_NR):
        try:
            table[nr] = pyseccomp.resolve_syscall(token, nr).decode()
        except ValueError:
            continue
    return table


@functools.cache
def known_syscalls() -> frozenset[str]:
    """Every syscall name that exists on at least one supported arch."""
    names: set[str] = set()
    for arch in ARCHES:
        names.update(syscall_table(arch).values())
    return frozenset(names)


def syscall_number(name: str, arch: str | None = None) -> int | None:
    """The syscall's number on `arch`, or None where it does not exist there."""
    nr = pyseccomp.resolve_syscall(arch_token(arch), name)
    return nr if nr >= 0 else None

