"""The parent's handle on one jail (`JailProcess`) and how a seccomp kill is named
(`Violation`).  Apart from the launcher, which makes them; imports nothing heavy.
"""

from __future__ import annotations

# The C module: `signal` builds its enums with `enum`, which costs milliseconds.
import _signal as signal
import posix  # not os: a cached `sandbox run` does without it (2.5 ms; sandbox/runcache.py)
import select
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sandbox.cgroups import JailCgroup
    from sandbox.launcher import Launcher


class Violation:
    """The jail was killed by seccomp; the syscall is named when the kernel log says,
    and `call` gives it with its arguments when its filter notified (sandbox/notify.py):
    `socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)`."""

    __slots__ = ("arch", "call", "number", "syscall")

    def __init__(self, syscall: str | None, number: int | None, arch: str | None,
                 call: str | None = None) -> None:
        self.syscall = syscall
        self.number = number
        self.arch = arch
        self.call = call

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Violation) and (
            self.syscall, self.number, self.arch, self.call) == (
            other.syscall, other.number, other.arch, other.call)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Violation({self.syscall!r}, {self.number!r}, {self.arch!r}, {self.call!r})"

    def __str__(self) -> str:
        if self.syscall:
            return f"seccomp violation: {self.call or self.syscall} (#{self.number}, {self.arch})"
        return "seccomp violation (syscall unknown: kernel log unreadable)"


class JailProcess:
    """The parent's handle on one jail: its PID 1 as seen from the host."""

    def __init__(self, pid: int, uid: int, name: str, launcher: Launcher) -> None:
        self.pid = pid
        self.uid = uid
        self.name = name
        self.launcher = launcher
        self.returncode: int | None = None  # exit code, or -signal as in subprocess
        self.violation: Violation | None = None
        # The executor's measurements (bench): thread CPU ns at the child's start
        # and after each step of the plan; None unless asked for.
        self.times: tuple[int, ...] | None = None
        # A seccomp user-notification listener, when the plan's filter made one;
        # closed when the jail is reaped.
        self.listener: int | None = None
        # The jail's own cgroup (its limits), removed when the jail is reaped.
        self.cgroup: JailCgroup | None = None
        # The socket its result comes back on (spawn(..., result=True)), what of it
        # arrived so far, and what closes it if the result is never taken.
        self._result: int | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._closer: object = None

    def __repr__(self) -> str:
        return (f"JailProcess(pid={self.pid}, uid={self.uid}, name={self.name!r}, "
                f"returncode={self.returncode})")

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = posix.waitpid(self.pid, posix.WNOHANG)
            if pid:
                self.launcher.reaped(pid, status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the jail to end; raises TimeoutError after `timeout` seconds."""
        if self.returncode is not None:
            return self.returncode
        if timeout is None:
            _, status = posix.waitpid(self.pid, 0)
            self.launcher.reaped(self.pid, status)
        else:
            pidfd = posix.pidfd_open(self.pid)
            try:
                if not select.select([pidfd], [], [], timeout)[0]:
                    raise TimeoutError(f"jail {self.name} pid {self.pid} still running")
            finally:
                posix.close(pidfd)
            self.poll()
        assert self.returncode is not None
        return self.returncode

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.returncode is None:
            try:  # noqa: SIM105 - not contextlib: it costs milliseconds at start-up
                posix.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    @property
    def exit_status(self) -> int | None:
        """Shell convention: the exit code, or 128+signal."""
        if self.returncode is None:
            return None
        return 128 - self.returncode if self.returncode < 0 else self.returncode

    def keep_result(self, fd: int) -> None:
        """The spawn kept the sync socket `fd` open for the result (ours to close)."""
        import weakref

        self._result = fd
        self._closer = weakref.finalize(self, _close_quietly, fd)

    def result(self, timeout: float | None = None, limit: int = 256 << 20) -> object:
        """The jailed function's return value, or its exception raised here; waits for
        the jail to end (TimeoutError after `timeout` seconds).  Only plain values
        and exceptions are accepted from the jail (sandbox.result), and at most
        `limit` bytes of them: a jail that sends more is killed (ResultRefused)."""
        from sandbox.result import CHUNK, JailDied, ResultRefused, loads

        if self._result is None:
            raise RuntimeError("this jail was not spawned with result=True (or the result "
                               "was already taken)")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._result], [], [], left)[0]:
                raise TimeoutError(f"jail {self.name} pid {self.pid} still running")
            try:
                chunk = posix.read(self._result, CHUNK)  # one record of the SEQPACKET socket
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            self._chunks.append(chunk)
            self._size += len(chunk)
            if self._size > limit:
                self.kill()
                self._closer()  # type: ignore[operator]
                self._result, self._chunks = None, []
                self.wait(None if deadline is None else max(0.1, deadline - time.monotonic()))
                raise ResultRefused(f"jail {self.name} sent more than {limit} bytes of result")
        self._closer()  # type: ignore[operator]
        self._result = None
        data, self._chunks = b"".join(self._chunks), []
        self.wait(None if deadline is None else max(0.1, deadline - time.monotonic()))
        try:
            return loads(data)
        except JailDied:
            raise JailDied(f"jail {self.name} ended with status {self.exit_status} without "
                           "sending a result") from None


def _close_quietly(fd: int) -> None:
    """A result never taken: its socket is closed with its JailProcess."""
    try:  # noqa: SIM105 - not contextlib: it costs milliseconds at start-up
        posix.close(fd)
    except OSError:
        pass
