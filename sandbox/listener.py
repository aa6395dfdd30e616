"""Seccomp user notification, the supervisor's side: the listener and its thread.

The primitives `sandbox run` needs on its fast path (a cached plan whose filter
notifies): nothing here imports more than C modules until a call arrives (its
name comes from the syscall table then).  What notification is and how it is
chosen: sandbox/notify.py.

Strings and structs the call points at are read from /proc/PID/mem, then the
notification id is checked again (SECCOMP_IOCTL_NOTIF_ID_VALID): a pid reused
in between cannot feed us another process's memory.
"""

from __future__ import annotations

import _struct as struct  # the C module: struct.py only re-exports it (a file fewer to load)
import _thread
import errno
import fcntl
import posix  # not os: a cached `sandbox run` does without it (2.5 ms; sandbox/runcache.py)
import select

from sandbox import capabilities

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

# linux/seccomp.h
_IOCTL_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif): 80 bytes
_IOCTL_SEND = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp): 24 bytes
_IOCTL_ID_VALID = 0x40082102  # _IOW('!', 2, __u64)
_FLAG_CONTINUE = 1
_NOTIF = struct.Struct("=QII iIQ 6Q")  # id, pid, flags, then seccomp_data: nr, arch, ip, args
_RESP = struct.Struct("=Qqi I")  # id, val, error, flags
_AUDIT_ARCHES = {0xC000003E: "x86_64", 0xC00000B7: "aarch64"}  # AUDIT_ARCH_*


def may_copy_listeners() -> bool:
    """Whether this process holds CAP_SYS_PTRACE: a listener is copied out of its jail
    with pidfd_getfd, a ptrace-mode access to a process of another uid that is not
    dumpable.  Root without it (a systemd unit's CapabilityBoundingSet, a container's
    default capabilities) gets EPERM on every spawn, so it must use the audit log."""
    return capabilities.held(capabilities.CAP_SYS_PTRACE)


class Call:
    """One forbidden call, as the kernel reported it."""

    __slots__ = ("arch", "args", "id", "nr", "pid")

    def __init__(self, id: int, pid: int, nr: int, arch: str, args: tuple[int, ...]) -> None:
        self.id = id
        self.pid = pid  # in the supervisor's PID namespace
        self.nr = nr
        self.arch = arch  # "x86_64", "aarch64" or the audit arch in hex
        self.args = args

    def __repr__(self) -> str:
        return f"Call(id={self.id}, pid={self.pid}, nr={self.nr}, arch={self.arch!r})"

    @property
    def name(self) -> str:
        from sandbox.syscalls import syscall_table

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
            fd = posix.open(f"/proc/{call.pid}/mem", posix.O_RDONLY | posix.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = posix.pread(fd, size, address)
        except OSError:
            return None
        finally:
            posix.close(fd)
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
            posix.close(self.fd)
            self.fd = -1


class Watcher:
    """A thread answering a listener's calls with `handle(listener, call)` until the jail
    is gone or `stop` is called.  The handler answers (allow/fail) or leaves the call
    waiting (when it kills the jail).  A bare _thread: `threading` costs `sandbox run`
    milliseconds at start-up."""

    def __init__(self, listener: Listener, handle: Callable[[Listener, Call], None]) -> None:
        self.listener = listener
        self._handle = handle
        self._stopping = False
        self.error: BaseException | None = None
        self._done = _thread.allocate_lock()
        self._done.acquire()
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        try:
            while not self._stopping:
                try:
                    call = self.listener.receive(timeout=0.1)
                except EOFError:
                    return
                if call is not None:
                    self._handle(self.listener, call)
        except BaseException as e:  # reported by stop(): a broken watcher must not hang a jail
            self.error = e
        finally:
            self._done.release()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop answering (pending calls fail with ENOSYS once the listener is closed)."""
        self._stopping = True
        if self._done.acquire(timeout=timeout):
            self._done.release()
