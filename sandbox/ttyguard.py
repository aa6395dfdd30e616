"""No jail pushes input into a terminal: ioctl TIOCSTI and TIOCLINUX fail with EPERM.

A jail's stdin is often the terminal of the shell that started `sandbox run`, and that
terminal stays the jail's controlling terminal.  TIOCSTI queues bytes as if typed: once
the jail exits, the shell reads and runs them (bubblewrap's CVE-2017-5226). TIOCLINUX
pastes the console's selection the same way on a virtual console (CVE-2023-28100;
kernels before 6.2 let anyone do it).  A policy that lets the jail call ioctl at all
(many do: isatty, the window size) is one rule away from allowing them, and libseccomp
cannot refuse one request under an unconditional allow of the call: its rule without
arguments wins.

So the compiled program opens with a guard of its own, for such policies only (one whose
ioctl is killed whatever its request keeps its kill, which reports better):

    arch == the policy's arch and nr == ioctl and (u32) request in {TIOCSTI, TIOCLINUX}
        -> errno EPERM; anything else -> the policy's program

The request is compared on its low 32 bits, as the kernel reads it (an unsigned int): a
filter that compared all 64 let 0x1_0000_5412 through (flatpak's CVE-2019-10063).
"""

from __future__ import annotations

import errno
import struct

from sandbox.rules import SeccompPolicy

TIOCSTI = 0x5412  # the same on x86_64 and aarch64 (asm-generic)
TIOCLINUX = 0x541C

_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06
_RET_ERRNO = 0x00050000
# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_NR, _ARCH, _ARG1_LOW = 0, 4, 24  # args[1]'s low half: both arches are little-endian
_KILLS = ("kill-process", "kill-thread")


def needed(policy: SeccompPolicy) -> bool:
    """Whether ioctl might get past `policy` with some request: its default is not a
    kill, or a rule gives ioctl another action (deny rules take the default's)."""
    if policy.default not in _KILLS:
        return True
    return any(policy.effective_action(rule) not in _KILLS for rule in policy.rules_for("ioctl"))


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(arch_token: int, ioctl_nr: int) -> bytes:
    """The guard's instructions, which fall through to whatever follows them."""
    return b"".join([
        _insn(_LD_W_ABS, 0, 0, _ARCH),
        _insn(_JEQ_K, 0, 6, arch_token),     # another arch: on to the policy's program
        _insn(_LD_W_ABS, 0, 0, _NR),
        _insn(_JEQ_K, 0, 4, ioctl_nr),       # not ioctl: on
        _insn(_LD_W_ABS, 0, 0, _ARG1_LOW),
        _insn(_JEQ_K, 1, 0, TIOCSTI),        # -> refuse
        _insn(_JEQ_K, 0, 1, TIOCLINUX),      # -> refuse, else on
        _insn(_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
    ])
