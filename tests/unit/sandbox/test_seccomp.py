"""sandbox.seccomp against the real kernel: compiled programs are loaded in forked children.

Each test forks; the child sets no_new_privs, installs the program and runs a
probe; the parent sees an exit code or a signal (SIGSYS for a kill).  The
probes call libc through ctypes so that exactly one known syscall is made.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.bpf import load_bpf
from sandbox.policy import load_policy
from sandbox.rules import SeccompPolicy
from sandbox.seccomp import compile_policy, instruction_count, syscall_name

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = (
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
)
_libc.syscall.restype = ctypes.c_long
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.socket.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
_libc.fcntl.argtypes = (ctypes.c_int, ctypes.c_int)

PR_SET_NO_NEW_PRIVS = 38
SYS_GETPPID = 110  # x86_64
NATIVE_IS_X86_64 = os.uname().machine == "x86_64"
MAP_FAILED = ctypes.c_void_p(-1).value

# What any Python child needs between loading the filter and os._exit.
BASE = """
[seccomp]
default = "kill-process"
allow = ["exit_group", "exit", "rt_sigreturn", "brk", "munmap", "madvise", "futex", "getpid"]
"""


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def policy(tmp_path: Path, extra: str = "", base: str = BASE) -> SeccompPolicy:
    return load_policy(write(tmp_path, base + extra))


def start_filtered(
    program: bytes | None,
    probe: Callable[[], int],
    *,
    nnp: bool = True,
    before: Callable[[], None] | None = None,
) -> int:
    """Fork a child that loads `program` then exits with probe()'s value; return its pid."""
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            if before is not None:
                before()
            if nnp:
                _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            if program is not None:
                try:
                    load_bpf(program)
                except OSError as exc:
                    code = 200 + (exc.errno or 0) % 50
                    raise
            code = probe()
        except BaseException:
            pass
        finally:
            os._exit(code)
    return pid


def wait_filtered(pid: int, timeout: float = 10.0) -> tuple[str, int]:
    """("exit", code) or ("signal", signo); a hung child fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("filtered child hung")
        time.sleep(0.002)
    if os.WIFSIGNALED(status):
        return ("signal", os.WTERMSIG(status))
    return ("exit", os.WEXITSTATUS(status))


def run_filtered(
    program: bytes | None,
    probe: Callable[[], int],
    *,
    nnp: bool = True,
    before: Callable[[], None] | None = None,
) -> tuple[str, int]:
    """Run `probe` under `program` in a child and return how the child ended."""
    return wait_filtered(start_filtered(program, probe, nnp=nnp, before=before))


KILLED = ("signal", signal.SIGSYS)
OK = ("exit", 0)


def _getppid_errno() -> int:
    ctypes.set_errno(0)
    r = _libc.syscall(SYS_GETPPID)
    return ctypes.get_errno() if r == -1 else 0


# ---------------------------------------------------------------------------
# Compiling


def test_program_is_raw_sock_filter_array_for_each_arch(tmp_path: Path) -> None:
    p = policy(tmp_path)
    x86 = compile_policy(p, "x86_64")
    arm = compile_policy(p, "aarch64")
    for prog, audit_arch, other in ((x86, 0xC000003E, 0xC00000B7), (arm, 0xC00000B7, 0xC000003E)):
        assert len(prog) % 8 == 0 and instruction_count(prog) > 5
        insns = [struct.unpack("=HBBI", prog[i : i + 8]) for i in range(0, len(prog), 8)]
        # The first thing a libseccomp program does: load seccomp_data.arch (offset 4)
        # and compare it with the arch it was compiled for.
        assert insns[0] == (0x20, 0, 0, 4)
        ks = {k for _, _, _, k in insns}
        assert audit_arch in ks and other not in ks
    # getpid is 39 on x86_64 and 172 on aarch64: the programs really differ.
    assert x86 != arm


def test_syscall_missing_on_one_arch_is_skipped(tmp_path: Path) -> None:
    with_open = policy(tmp_path, 'deny = []\n[[seccomp.rules]]\nsyscall = "open"\n')
    without = policy(tmp_path)
    # aarch64 has no open(2): same program; x86_64 has one more comparison.
    assert compile_policy(with_open, "aarch64") == compile_policy(without, "aarch64")
    assert instruction_count(compile_policy(with_open, "x86_64")) > instruction_count(
        compile_policy(without, "x86_64")
    )


def test_unknown_arch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="aarch64"):
        compile_policy(policy(tmp_path), "arm64")


def test_compile_needs_no_root(tmp_path: Path) -> None:
    p = policy(tmp_path)
    expected = compile_policy.__wrapped__(p, "x86_64")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            prog = compile_policy.__wrapped__(p, "x86_64")  # bypass the parent's cache
            os.write(w, prog)
        finally:
            os._exit(0)
    os.close(w)
    got = b""
    while chunk := os.read(r, 65536):
        got += chunk
    os.close(r)
    os.waitpid(pid, 0)
    assert got == expected


def test_compile_is_cached(tmp_path: Path) -> None:
    p = policy(tmp_path)
    assert compile_policy(p) is compile_policy(p)


def test_syscall_name() -> None:
    assert syscall_name(39, "x86_64") == "getpid"
    assert syscall_name(172, "aarch64") == "getpid"
    assert syscall_name(59, "c000003e") == "execve"  # audit arch, as in kernel logs
    assert syscall_name(0xDD, 0xC00000B7) == "execve"
    with pytest.raises(ValueError):
        syscall_name(39, "sparc")
    with pytest.raises(ValueError):
        syscall_name(100_000, "x86_64")


# ---------------------------------------------------------------------------
# Loading


def test_load_rejects_malformed_program() -> None:
    # Checked before any prctl, so it is safe in the test process itself.
    with pytest.raises(OSError) as info:
        load_bpf(b"\x00" * 7)
    assert info.value.errno == errno.EINVAL


def test_load_reports_kernel_errno_without_no_new_privs(tmp_path: Path) -> None:
    prog = compile_policy(policy(tmp_path))

    def drop() -> None:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)

    # Unprivileged and no no_new_privs: the kernel says EACCES, load_bpf raises it.
    assert run_filtered(prog, lambda: 0, nnp=False, before=drop) == (
        "exit",
        200 + errno.EACCES % 50,
    )


def test_allowed_syscall_works_forbidden_one_kills(tmp_path: Path) -> None:
    prog = compile_policy(policy(tmp_path))
    parent = os.getpid()
    assert run_filtered(prog, lambda: 0 if os.getppid() == parent else 1) == KILLED
    assert run_filtered(prog, lambda: 0 if os.getpid() > 0 else 1) == OK
    assert run_filtered(None, lambda: 0 if os.getppid() == parent else 1) == OK


def test_exec_mappings_are_killed(tmp_path: Path) -> None:
    prog = compile_policy(
        policy(
            tmp_path,
            """
[[seccomp.rules]]
syscall = "mmap"
args = [{ arg = 2, op = "masked-eq", mask = "PROT_EXEC", value = 0 }]
[[seccomp.rules]]
syscall = "mprotect"
args = [{ arg = 2, op = "masked-eq", mask = "PROT_EXEC", value = 0 }]
""",
        )
    )
    rw = mmap.PROT_READ | mmap.PROT_WRITE
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS

    def map_with(prot: int) -> Callable[[], int]:
        return lambda: 0 if _libc.mmap(None, 4096, prot, flags, -1, 0) != MAP_FAILED else 1

    def rw_then_exec() -> int:
        addr = _libc.mmap(None, 4096, rw, flags, -1, 0)
        if _libc.mprotect(addr, 4096, mmap.PROT_READ) != 0:
            return 2
        _libc.mprotect(addr, 4096, mmap.PROT_READ | mmap.PROT_EXEC)
        return 0

    assert run_filtered(prog, map_with(rw)) == OK
    assert run_filtered(prog, map_with(mmap.PROT_READ | mmap.PROT_EXEC)) == KILLED
    assert run_filtered(prog, map_with(mmap.PROT_EXEC)) == KILLED
    assert run_filtered(prog, rw_then_exec) == KILLED
    # Python's own mmap module with PROT_EXEC goes through the same syscall.
    assert run_filtered(prog, lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_EXEC) and 0) == KILLED


def test_socket_domain_filter_and_anded_args(tmp_path: Path) -> None:
    prog = compile_policy(
        policy(
            tmp_path,
            """
[[seccomp.rules]]
syscall = "socket"
args = [{ arg = 0, op = "==", value = "AF_UNIX" },
        { arg = 1, op = "masked-eq", mask = "0xf", value = "SOCK_STREAM" }]
""",
        )
    )

    def sock(domain: int, kind: int) -> Callable[[], int]:
        return lambda: 0 if _libc.socket(domain, kind, 0) >= 0 else 1

    assert run_filtered(prog, sock(1, 1)) == OK  # AF_UNIX, SOCK_STREAM
    assert run_filtered(prog, sock(1, 1 | 0o2000000)) == OK  # | SOCK_CLOEXEC: masked away
    assert run_filtered(prog, sock(1, 2)) == KILLED  # AF_UNIX, SOCK_DGRAM: second arg fails
    assert run_filtered(prog, sock(2, 1)) == KILLED  # AF_INET
    assert run_filtered(prog, sock(10, 1)) == KILLED  # AF_INET6


def test_rules_for_one_syscall_are_ored(tmp_path: Path) -> None:
    prog = compile_policy(
        policy(
            tmp_path,
            """
[[seccomp.rules]]
syscall = "fcntl"
args = [{ arg = 1, op = "==", value = "F_GETFL" }]
[[seccomp.rules]]
syscall = "fcntl"
args = [{ arg = 1, op = "==", value = "F_GETFD" }]
""",
        )
    )
    assert run_filtered(prog, lambda: 0 if _libc.fcntl(0, 3) >= 0 else 1) == OK
    assert run_filtered(prog, lambda: 0 if _libc.fcntl(0, 1) >= 0 else 1) == OK
    assert run_filtered(prog, lambda: 0 if _libc.fcntl(0, 1030) >= 0 else 1) == KILLED


@pytest.mark.skipif(not NATIVE_IS_X86_64, reason="raw syscall number is x86_64's")
def test_errno_default_returns_errno(tmp_path: Path) -> None:
    eperm = compile_policy(policy(tmp_path, base=BASE.replace("kill-process", "errno:EPERM")))
    assert run_filtered(eperm, _getppid_errno) == ("exit", errno.EPERM)
    eacces = compile_policy(policy(tmp_path, base=BASE.replace("kill-process", "errno:13")))
    assert run_filtered(eacces, _getppid_errno) == ("exit", errno.EACCES)


@pytest.mark.skipif(not NATIVE_IS_X86_64, reason="raw syscall number is x86_64's")
def test_per_rule_errno_action(tmp_path: Path) -> None:
    prog = compile_policy(
        policy(tmp_path, '[[seccomp.rules]]\nsyscall = "getppid"\naction = "errno:ENOSYS"\n')
    )
    assert run_filtered(prog, _getppid_errno) == ("exit", errno.ENOSYS)


def test_default_allow_with_deny_list(tmp_path: Path) -> None:
    prog = compile_policy(
        policy(tmp_path, base='[seccomp]\ndefault = "allow"\ndeny = ["getppid"]\n')
    )
    assert run_filtered(prog, lambda: 0 if os.getppid() > 0 else 1) == KILLED
    assert run_filtered(prog, lambda: 0 if os.getuid() == 0 else 1) == OK


def test_default_override_log_lets_forbidden_calls_through(tmp_path: Path) -> None:
    p = policy(tmp_path, 'deny = ["getppid"]\n')
    parent = os.getpid()
    probe = lambda: 0 if os.getppid() == parent else 1  # noqa: E731
    assert run_filtered(compile_policy(p), probe) == KILLED
    # `sandbox learn`: everything not allowed is logged, denied calls included.
    assert run_filtered(compile_policy(p, default_override="log"), probe) == OK


def test_bad_arch_calls_are_killed(tmp_path: Path) -> None:
    """A filter for another arch does not match this one: the process dies at once."""
    other = "aarch64" if NATIVE_IS_X86_64 else "x86_64"
    prog = compile_policy(
        policy(tmp_path, base=BASE.replace("kill-process", "allow") + 'deny = ["getppid"]\n'), other
    )
    assert run_filtered(prog, lambda: 0) == KILLED


def test_without_action_cache_the_filter_decides_the_same(tmp_path: Path) -> None:
    """action_cache = false only prepends a load the kernel cannot precompute:
    allowed calls, argument rules and kills are unchanged."""
    rules = """
[[seccomp.rules]]
syscall = "mmap"
args = [{ arg = 2, op = "masked-eq", mask = "PROT_EXEC", value = 0 }]
"""
    cached = compile_policy(policy(tmp_path, rules))
    uncached = compile_policy(policy(tmp_path, rules, BASE + "action_cache = false\n"))
    assert uncached[8:] == cached
    assert struct.unpack_from("=HBBI", uncached) == (0x20, 0, 0, 8)  # ld instruction_pointer
    parent = os.getpid()
    assert run_filtered(uncached, lambda: 0 if os.getpid() > 0 else 1) == OK
    assert run_filtered(uncached, lambda: 0 if os.getppid() == parent else 1) == KILLED

    def anonymous(prot: int) -> Callable[[], int]:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        return lambda: 0 if _libc.mmap(None, 4096, prot, flags, -1, 0) != MAP_FAILED else 1

    assert run_filtered(uncached, anonymous(mmap.PROT_READ)) == OK
    assert run_filtered(uncached, anonymous(mmap.PROT_READ | mmap.PROT_EXEC)) == KILLED


def test_action_cache_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r":\d+: action_cache must be true or false"):
        policy(tmp_path, "", BASE + 'action_cache = "no"\n')


# -- the terminal guard (sandbox/ttyguard.py) ---------------------------------------------

_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
TIOCSTI, TIOCLINUX, TCGETS = 0x5412, 0x541C, 0x5401


def _ioctl_errno(request: int) -> Callable[[], int]:
    """ioctl(/dev/null, request) in the child: its errno, 0 if it worked (it never does:
    /dev/null is no terminal, so a request the filter lets through says ENOTTY)."""
    def probe() -> int:
        fd = os.open("/dev/null", os.O_RDONLY)
        ctypes.set_errno(0)
        byte = ctypes.c_char(b"x")
        return 0 if _libc.ioctl(fd, request, ctypes.byref(byte)) == 0 else ctypes.get_errno()
    return probe


IOCTL_BASE = BASE.replace('"getpid"]', '"getpid", "openat"]')
IOCTL_ALLOWED = IOCTL_BASE.replace('"openat"]', '"openat", "ioctl"]')
IOCTL_NOT_TCGETS = IOCTL_BASE + """
[[seccomp.rules]]
syscall = "ioctl"
args = [{ arg = 1, op = "!=", value = "TCGETS" }]
"""


@pytest.mark.parametrize("text", [IOCTL_ALLOWED, IOCTL_NOT_TCGETS],
                         ids=["unconditional", "not-equal"])
def test_no_policy_lets_ioctl_push_input_into_a_terminal(tmp_path: Path, text: str) -> None:
    """Unconditional: libseccomp could not refuse one request under it; not-equal: the
    kernel reads the request's low 32 bits, a 64-bit comparison lets a high bit by."""
    prog = compile_policy(policy(tmp_path, base=text))
    assert run_filtered(prog, _ioctl_errno(TIOCSTI)) == ("exit", errno.EPERM)
    assert run_filtered(prog, _ioctl_errno(TIOCSTI | 1 << 32)) == ("exit", errno.EPERM)
    assert run_filtered(prog, _ioctl_errno(TIOCLINUX)) == ("exit", errno.EPERM)
    assert run_filtered(prog, _ioctl_errno(TIOCLINUX | 1 << 40)) == ("exit", errno.EPERM)
    assert run_filtered(prog, _ioctl_errno(TIOCSTI + 1)) == ("exit", errno.ENOTTY)  # the rest


def test_a_policy_that_kills_every_ioctl_keeps_its_kill(tmp_path: Path) -> None:
    """No guard where none is needed: the kill names the call, an errno would hide it."""
    prog = compile_policy(policy(tmp_path, base=IOCTL_BASE))
    assert run_filtered(prog, _ioctl_errno(TIOCSTI)) == KILLED
    guarded = compile_policy(policy(tmp_path, base=IOCTL_ALLOWED))
    assert instruction_count(guarded) - instruction_count(prog) >= 8


# -- restart_syscall, in every filter -----------------------------------------------------

SYS_RESTART_SYSCALL = 219  # x86_64


def _restart_syscall_errno() -> int:
    """restart_syscall with nothing to resume: the kernel says EINTR."""
    ctypes.set_errno(0)
    _libc.syscall(SYS_RESTART_SYSCALL)
    return ctypes.get_errno()


@pytest.mark.skipif(not NATIVE_IS_X86_64, reason="raw syscall number is x86_64's")
def test_every_filter_lets_a_stopped_sleep_resume(tmp_path: Path) -> None:
    """restart_syscall only continues a call the filter let through; refused, a stop and
    continue (^Z and fg, a cgroup freeze) of a jail sleeping with a timeout killed it.
    A policy that names it keeps its own word."""
    assert run_filtered(compile_policy(policy(tmp_path)), _restart_syscall_errno) == (
        "exit", errno.EINTR)
    denied = compile_policy(policy(tmp_path, 'deny = ["restart_syscall"]\n'))
    assert run_filtered(denied, _restart_syscall_errno) == KILLED
