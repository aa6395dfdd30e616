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

Strings and structs the call points at are read from /proc/PID/mem, then the
notification id is checked again (SECCOMP_IOCTL_NOTIF_ID_VALID): a pid reused
in between cannot feed us another process's memory.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import os
import select
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sandbox.rules import SeccompPolicy
from sandbox.spec import JailSpec
from sandbox.syscalls import ARCHES, syscall_table

# linux/seccomp.h
_SECCOMP_GET_ACTION_AVAIL = 2
_SECCOMP_RET_USER_NOTIF = 0x7FC00000
_IOCTL_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif): 80 bytes
_IOCTL_SEND = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp): 24 bytes
_IOCTL_ID_VALID = 0x40082102  # _IOW('!', 2, __u64)
_FLAG_CONTINUE = 1
_NOTIF = struct.Struct("=QII iIQ 6Q")  # id, pid, flags, then seccomp_data: nr, arch, ip, args
_RESP = struct.Struct("=Qqi I")  # id, val, error, flags
_AUDIT_ARCHES = {token: name for name, token in ARCHES.items()}
_NR_SECCOMP = {"x86_64": 317, "aarch64": 277}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def available() -> bool:
    """Whether this kernel can notify (SECCOMP_RET_USER_NOTIF) and continue a call.

    SANDBOX_SECCOMP_NOTIFY=0 in the environment says no: the audit-log fallback
    of an older kernel, chosen on purpose (and tested so)."""
    if os.environ.get("SANDBOX_SECCOMP_NOTIFY") == "0":
        return False
    nr = _NR_SECCOMP.get(os.uname().machine)
    if nr is None:
        return False
    action = ctypes.c_uint32(_SECCOMP_RET_USER_NOTIF)
    if _libc.syscall(nr, _SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(action)) != 0:
        return False
    # FLAG_CONTINUE came with 5.5; there is no probe for it but the version.
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (5, 5)


@dataclass(frozen=True)
class Call:
    """One forbidden call, as the kernel reported it."""

    id: int
    pid: int  # in the supervisor's PID namespace
    nr: int
    arch: str  # "x86_64", "aarch64" or the audit arch in hex
    args: tuple[int, ...]

    @property
    def name(self) -> str:
        try:
            return syscall_table(self.arch)[self.nr]
        except (KeyError, ValueError):
            return f"syscall_{self.nr}"


class Listener:
    """A seccomp listener fd (owned: `close` closes it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def receive(self, timeout: float | None = 0) -> Call | None:
        """The next pending call, or None when there is none within `timeout` seconds
        (or the call went away: its thread was killed before we read it).

        Raises EOFError once no process can notify any more (the jail is gone)."""
        ready = select.poll()
        ready.register(self.fd, select.POLLIN)
        events = ready.poll(None if timeout is None else int(timeout * 1000))
        if not events:
            return None
        if events[0][1] & select.POLLIN == 0:
            raise EOFError("no process of the jail is left")
        buf = bytearray(_NOTIF.size)
        try:
            fcntl.ioctl(self.fd, _IOCTL_RECV, buf, True)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EINTR):  # the caller died meanwhile
                return None
            raise
        nid, pid, _flags, nr, arch, _ip, *args = _NOTIF.unpack(buf)
        return Call(nid, pid, nr, _AUDIT_ARCHES.get(arch, f"{arch:x}"), tuple(args))

    def _send(self, call: Call, error: int, flags: int) -> bool:
        try:
            fcntl.ioctl(self.fd, _IOCTL_SEND, _RESP.pack(call.id, 0, -error, flags))
        except OSError as e:
            if e.errno == errno.ENOENT:  # the caller died (e.g. the jail was killed)
                return False
            raise
        return True

    def allow(self, call: Call) -> bool:
        """Let the call run as if allowed (False if its caller is gone)."""
        return self._send(call, 0, _FLAG_CONTINUE)

    def fail(self, call: Call, err: int) -> bool:
        """Make the call fail with `err` (False if its caller is gone)."""
        return self._send(call, err, 0)

    def valid(self, call: Call) -> bool:
        """Whether the call is still waiting (its process and memory are the same)."""
        try:
            fcntl.ioctl(self.fd, _IOCTL_ID_VALID, struct.pack("=Q", call.id))
        except OSError:
            return False
        return True

    def read_memory(self, call: Call, address: int, size: int) -> bytes | None:
        """Up to `size` bytes of the caller's memory, or None (unreadable, or no longer
        the same call by the time they were read)."""
        if not address:
            return None
        try:
            fd = os.open(f"/proc/{call.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.pread(fd, size, address)
        except OSError:
            return None
        finally:
            os.close(fd)
        return data if self.valid(call) else None

    def read_string(self, call: Call, address: int, limit: int = 256) -> str | None:
        """A NUL-terminated string of the caller (a path), cut at `limit` bytes."""
        data = self.read_memory(call, address, limit)
        if data is None:
            return None
        text = data.split(b"\0", 1)[0]
        return text.decode(errors="backslashreplace") + ("..." if b"\0" not in data else "")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Watcher:
    """A thread answering a listener's calls with `handle(listener, call)` until the jail
    is gone or `stop` is called.  The handler answers (allow/fail) or leaves the call
    waiting (when it kills the jail)."""

    def __init__(self, listener: Listener, handle: Callable[[Listener, Call], None]) -> None:
        self.listener = listener
        self._handle = handle
        self._stopping = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="seccomp-notify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    call = self.listener.receive(timeout=0.1)
                except EOFError:
                    return
                if call is not None:
                    self._handle(self.listener, call)
        except BaseException as e:  # reported by stop(): a broken watcher must not hang a jail
            self.error = e

    def stop(self, timeout: float = 5.0) -> None:
        """Stop answering (pending calls fail with ENOSYS once the listener is closed)."""
        self._stopping.set()
        self._thread.join(timeout)


def notifying(spec: JailSpec, policy: SeccompPolicy | None, learning: bool = False
              ) -> JailSpec | None:
    """`spec` with its filter's default action replaced by "notify", or None where
    the audit log must do: no user notification here, no policy, a default that
    does not kill (errno, trap, log: nothing to report), or read/write not allowed
    outright (the listener is handed over with a write and a read after the
    filter is in place)."""
    from sandbox.seccomp import compile_policy

    if policy is None or not available():
        return None
    if not learning and policy.default not in ("kill-process", "kill-thread"):
        return None
    if policy.is_allowed("read") is not True or policy.is_allowed("write") is not True:
        return None
    program = compile_policy(policy, default_override="notify")
    return dataclasses.replace(spec, seccomp_bpf=program, seccomp_listener=True)
