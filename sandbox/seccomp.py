"""Compile a `SeccompPolicy` to BPF once, load the raw program cheaply in each child.

Why split compile and load: libseccomp compiling in every child costs ~0.18 ms
per spawn, installing an exported program costs ~0.06 ms (DESIGN.md §4).  The
parent compiles (no root needed), the child calls `load_bpf` as its very last
jail layer, right before untrusted code, so `load_bpf` imports nothing and
allocates as little as possible.
"""

from __future__ import annotations

import errno
import functools
import os
import struct

from sandbox import ttyguard
from sandbox.bpf import _BPF_MAXINSNS, _SOCK_FILTER_SIZE, prepare_bpf
from sandbox.rules import DENY, ArgCond, SeccompPolicy, deny_action, parse_action
from sandbox.seccomplib import pyseccomp
from sandbox.syscalls import ARCHES, arch_token, native_arch, syscall_number, syscall_table

_OPS = {
    "==": pyseccomp.EQ,
    "!=": pyseccomp.NE,
    "<": pyseccomp.LT,
    "<=": pyseccomp.LE,
    ">": pyseccomp.GT,
    ">=": pyseccomp.GE,
    "masked-eq": pyseccomp.MASKED_EQ,
}

# Audit arch values (as in kernel audit records) -> our arch names.
_AUDIT_ARCHES = {f"{token:x}": name for name, token in ARCHES.items()}


def action_value(action: str) -> int:
    """libseccomp's number for a normalised action string."""
    fixed = {
        "kill-process": pyseccomp.KILL_PROCESS,
        "kill-thread": pyseccomp.KILL_THREAD,
        "trap": pyseccomp.TRAP,
        "log": pyseccomp.LOG,
        "allow": pyseccomp.ALLOW,
        "notify": pyseccomp.NOTIFY,  # user notification: never in a profile, see notify.py
    }
    if action in fixed:
        return fixed[action]
    if action.startswith("errno:"):
        return pyseccomp.ERRNO(int(action.split(":", 1)[1]))
    raise ValueError(f"unknown action {action!r}")


def _arg(cond: ArgCond) -> pyseccomp.Arg:
    """pyseccomp.Arg for an ArgCond (masked-eq takes the mask first, then the value)."""
    if cond.op == "masked-eq":
        return pyseccomp.Arg(cond.arg, pyseccomp.MASKED_EQ, cond.mask or 0, cond.value)
    return pyseccomp.Arg(cond.arg, _OPS[cond.op], cond.value)


# BPF_LD|BPF_W|BPF_ABS of seccomp_data.instruction_pointer (offset 8), a value the
# kernel's constant-action precompute (seccomp_cache_prepare) cannot know: it gives
# up at once for every syscall number instead of emulating the filter ~900 times.
# The filter's own first instruction loads the arch again, so nothing else changes.
_NO_ACTION_CACHE = struct.pack("=HBBI", 0x20, 0, 0, 8)


# Allowed in every filter unless the policy names it: the kernel resumes a sleep with a
# timeout (poll, nanosleep, a futex wait) that a stop interrupted (SIGSTOP and SIGCONT,
# ^Z and fg, a cgroup freeze and thaw) through restart_syscall, which only continues the
# call the filter already let through.  Refused, a stop and continue killed the jail.
RESUME = "restart_syscall"


@functools.lru_cache(maxsize=64)
def compile_policy(
    policy: SeccompPolicy, arch: str | None = None, default_override: str | None = None
) -> bytes:
    """The raw BPF program (array of struct sock_filter) for `policy` on `arch`.

    `default_override` ("notify" for `sandbox run` and `learn`: every other call
    goes to the supervisor, see notify.py) replaces the default action; deny
    rules follow it.  Syscalls absent on `arch` are skipped.
    Calls from another arch (e.g. int 0x80 on x86_64) kill the process.
    """
    arch_name = arch or native_arch()
    token = arch_token(arch_name)
    default = (default_override if default_override == "notify"
               else parse_action(default_override) if default_override else policy.default)
    flt = pyseccomp.SyscallFilter(action_value(default))
    flt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    native = pyseccomp.system_arch()
    if token != native:
        flt.add_arch(token)
        flt.remove_arch(native)
    if policy.default != "allow" and not policy.rules_for(RESUME):
        flt.add_rule(pyseccomp.ALLOW, RESUME)
    for rule in policy.rules:
        action = deny_action(default) if rule.action == DENY else rule.action
        if action == default:
            continue  # libseccomp refuses rules that repeat the default (and they change nothing)
        if syscall_number(rule.syscall, arch_name) is None:
            continue  # e.g. "open" or "poll" on aarch64
        try:
            # A name resolves on the native arch; libseccomp translates it to `token`.
            flt.add_rule(action_value(action), rule.syscall, *(_arg(c) for c in rule.args))
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"libseccomp refused the rule for {rule.syscall!r} ({rule.origin}): {exc.strerror}",
            ) from exc
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        with open(fd, "w+b", closefd=False) as fileobj:
            flt.export_bpf(fileobj)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    program = b"".join(chunks)
    if not program or len(program) % _SOCK_FILTER_SIZE:
        raise OSError(
            errno.EINVAL, f"libseccomp exported a malformed program ({len(program)} bytes)"
        )
    if ttyguard.needed(policy):  # no jail pushes input into a terminal, whatever the rules
        ioctl = syscall_number("ioctl", arch_name)
        if ioctl is not None:
            program = ttyguard.program(token, ioctl) + program
    if len(program) // _SOCK_FILTER_SIZE > _BPF_MAXINSNS:
        raise OSError(errno.E2BIG, f"the BPF program has over {_BPF_MAXINSNS} instructions")
    if not policy.action_cache:
        program = _NO_ACTION_CACHE + program
    prepare_bpf(program)
    return program


def instruction_count(program: bytes) -> int:
    """Number of BPF instructions in a raw program."""
    return len(program) // _SOCK_FILTER_SIZE


def syscall_name(nr: int, arch: str | int | None = None) -> str:
    """Name of syscall `nr` on `arch` ("x86_64", "aarch64", an audit arch such as
    "c000003e" or its int, None = native), for naming seccomp violations.

    Raises ValueError for an unknown arch or number.
    """
    if arch is None:
        name = native_arch()
    elif isinstance(arch, int):
        name = _AUDIT_ARCHES.get(f"{arch:x}", "")
    elif arch in ARCHES:
        name = arch
    else:
        name = _AUDIT_ARCHES.get(arch.lower().removeprefix("0x"), arch)
    table = syscall_table(name)
    try:
        return table[nr]
    except KeyError:
        raise ValueError(f"no syscall number {nr} on {name}") from None
