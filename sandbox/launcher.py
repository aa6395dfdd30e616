"""Spawning jails: `spawn` runs a Python function inside one, `run` execs a program.

The layers are applied in this order (privileged work first, untrusted code last):

  parent: unshare(PID) + fork            the child is PID 1 of a new PID namespace
          (or clone(NEWPID|PARENT)       in a fork server: the child is its caller's)
  child:  setns(shared empty netns)      or a named one, a new netns, or the host's
          setns(shared root)             a read-only root shared by the spec's jails
          or unshare(mount [, net])      as real root: mounts need no locked-flag care
             + empty read-only root      tmpfs + pivot_root, binds, optional /proc
          unshare(user, IPC, UTS)        the jail's own user namespace
  parent: uid/gid maps                   jail root -> one unique unprivileged host uid
  child:  setresuid/setresgid(0)         now host uid X, root only inside its namespace
          hostname, fds renumbered, capabilities dropped, no_new_privs, rlimits,
          not dumpable, parent-death signal, seccomp last.

Any failing layer aborts the spawn with a JailError naming the layer and errno.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import sys
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandbox import clone, landlock, libc, namespaces, privileges, rootfs
from sandbox import fds as fdlayer
from sandbox.bpf import load_bpf, load_bpf_listener, prepare_bpf
from sandbox.cgroups import JailCgroup, Limits
from sandbox.errors import JailError
from sandbox.result import JailDied, call_and_send
from sandbox.result import loads as result_loads
from sandbox.spec import JailSpec, NetworkMode, UidRange
from sandbox.uids import UidAllocator
from sandbox.violations import ViolationLog

# Exit code of a child whose jail could not be built (the parent raises JailError).
LAYER_FAILED = 125
SPAWN_TIMEOUT = 10.0


@dataclass
class Violation:
    """The jail was killed by seccomp; the syscall is named when the kernel log says."""

    syscall: str | None
    number: int | None
    arch: str | None

    def __str__(self) -> str:
        if self.syscall:
            return f"seccomp violation: {self.syscall} (#{self.number}, {self.arch})"
        return "seccomp violation (syscall unknown: kernel log unreadable)"


@dataclass
class JailProcess:
    """The parent's handle on one jail: its PID 1 as seen from the host."""

    pid: int
    uid: int
    name: str
    launcher: Launcher = field(repr=False)
    returncode: int | None = None  # exit code, or -signal as in subprocess
    violation: Violation | None = None
    # The seccomp user-notification listener, when the spec asked for one; closed
    # when the jail is reaped.
    listener: int | None = None
    # The jail's own cgroup (limits), removed when the jail is reaped.
    cgroup: JailCgroup | None = field(default=None, repr=False)
    # The socket its result comes back on (spawn(..., result=True)), and what of the
    # result arrived with the ready message.
    _result: int | None = field(default=None, repr=False)
    _head: bytes = field(default=b"", repr=False)
    _closer: Callable[[], object] | None = field(default=None, repr=False)  # closes it once

    def result(self, timeout: float | None = None) -> object:
        """The jailed function's return value, or its exception raised here; waits for
        the jail to end (TimeoutError after `timeout` seconds).  Only plain values
        and exceptions are accepted from the jail (sandbox.result)."""
        if self._result is None:
            raise RuntimeError("this jail was not spawned with result=True (or the result "
                               "was already taken)")
        deadline = None if timeout is None else time.monotonic() + timeout
        chunks = [self._head] if self._head else []
        try:
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not select.select([self._result], [], [], left)[0]:
                    raise TimeoutError(f"jail {self.name} pid {self.pid} still running")
                chunk = os.read(self._result, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            self._head = b"".join(chunks)  # kept for the next call
            raise
        if self._closer is not None:
            self._closer()
        self._result = None
        self.wait(None if deadline is None else max(0.1, deadline - time.monotonic()))
        try:
            return result_loads(b"".join(chunks))
        except JailDied:
            raise JailDied(f"jail {self.name} ended with status {self.exit_status} without "
                           "sending a result") from None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.launcher.reaped(pid, status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the jail to end; raises TimeoutError after `timeout` seconds."""
        if self.returncode is not None:
            return self.returncode
        if timeout is None:
            _, status = os.waitpid(self.pid, 0)
            self.launcher.reaped(self.pid, status)
        else:
            pidfd = os.pidfd_open(self.pid)
            try:
                if not select.select([pidfd], [], [], timeout)[0]:
                    raise TimeoutError(f"jail {self.name} pid {self.pid} still running")
            finally:
                os.close(pidfd)
            self.poll()
        assert self.returncode is not None
        return self.returncode

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    @property
    def exit_status(self) -> int | None:
        """Shell convention: the exit code, or 128+signal."""
        if self.returncode is None:
            return None
        return 128 - self.returncode if self.returncode < 0 else self.returncode


class Launcher:
    """Owns what jails share: the empty netns, the uid allocators, the violation log.

    One per process that spawns jails.  The caller must be root (or hold
    CAP_SYS_ADMIN, CAP_SETUID, CAP_SETGID in the initial namespaces).

    With `for_parent` the jails are cloned with CLONE_PARENT: they are children
    of this process's parent, which reaps them (`adopt`) and owns their uids
    (passed to `spawn`); this is how a fork server (forkserver.py) works.
    """

    def __init__(self, for_parent: bool = False) -> None:
        self._netns: namespaces.SharedEmptyNetns | None = None
        self._roots: dict[tuple, rootfs.SharedRoot] = {}
        self._pidfork = namespaces.PidNamespaceFork()
        self.for_parent = for_parent
        self._allocators: dict[UidRange, UidAllocator] = {}
        self._live: dict[int, tuple[JailProcess, UidAllocator]] = {}
        self.violations = ViolationLog()

    # -- public API ------------------------------------------------------------

    def spawn(self, spec: JailSpec, target: Callable[..., object], args: Sequence[object] = (),
              fds: Sequence[int] = (), uid: int | None = None, result: bool = False
              ) -> JailProcess:
        """Run `target(*args)` in a new jail; `fds[i]` is fd i inside, all others are closed.

        `uid` is the jail's host uid when the caller allocated it (a fork server's
        caller does); by default it comes from this launcher's allocator.  With
        `result`, the jail sends target's return value or exception back for
        `JailProcess.result()` (its policy must allow write)."""
        return self._start(spec, list(fds), lambda: _call(target, args, result), uid=uid,
                           keep_sync=result)

    def run(self, spec: JailSpec, argv: Sequence[str], fds: Sequence[int] = (0, 1, 2),
            on_listener: Callable[[int, int], None] | None = None) -> JailProcess:
        """Exec `argv` in a new jail; the exec's success is the spawn's success.

        `on_listener(pid, fd)` is called as soon as the jail's seccomp listener is
        ours (spec.seccomp_listener), before the exec: whatever answers the calls
        must be running by then, as the exec itself runs under the filter."""
        if not argv:
            raise ValueError("run needs a command")
        env = dict(spec.env)
        return self._start(spec, list(fds), lambda: _exec(list(argv), env, str(spec.cwd)),
                           restore_signals=True, on_listener=on_listener)

    def uids(self, uid_range: UidRange) -> UidAllocator:
        if uid_range not in self._allocators:
            self._allocators[uid_range] = UidAllocator(uid_range)
        return self._allocators[uid_range]

    def adopt(self, pid: int, uid: int, name: str, uid_range: UidRange) -> JailProcess:
        """Track a jail a fork server cloned as our child, with a uid from `uids(uid_range)`."""
        jail = JailProcess(pid, uid, name, self)
        self._live[pid] = (jail, self.uids(uid_range))
        return jail

    def reaped(self, pid: int, status: int) -> JailProcess | None:
        """Record a wait status for one of our jails (callers may waitpid(-1) themselves)."""
        entry = self._live.pop(pid, None)
        if entry is None:
            return None
        jail, allocator = entry
        if jail.listener is not None:
            os.close(jail.listener)
            jail.listener = None
        if jail.cgroup is not None:
            jail.cgroup.remove()  # its PID namespace is gone: the cgroup is empty
            jail.cgroup = None
        jail.returncode = os.waitstatus_to_exitcode(status)
        allocator.release(jail.uid)
        if jail.returncode == -signal.SIGSYS:
            jail.violation = self._violation(pid)
        return jail

    @property
    def live(self) -> list[JailProcess]:
        return [jail for jail, _ in self._live.values()]

    def close(self) -> None:
        for jail in self.live:
            jail.kill()
            jail.wait()
        if self._netns:
            self._netns.close()
        for root in self._roots.values():
            root.close()
        self._roots.clear()
        self._pidfork.close()
        self.violations.close()
        for allocator in self._allocators.values():
            allocator.close()  # uids handed to a fork server's jails that never came back

    # -- internals -------------------------------------------------------------

    def _violation(self, pid: int) -> Violation:
        found = self.violations.lookup(pid)
        if not found:
            return Violation(None, None, None)
        arch, number = found
        try:
            from sandbox.seccomp import syscall_name

            name: str | None = syscall_name(number, arch)
        except Exception:
            name = None
        return Violation(name, number, arch)

    def _shared_netns_fd(self) -> int:
        if self._netns is None:
            self._netns = namespaces.SharedEmptyNetns()
        return self._netns.fd

    def _shared_root_fd(self, spec: JailSpec) -> int:
        """The mount namespace this spec's jails join, or -1: each builds its own."""
        if not rootfs.shareable(spec):
            return -1
        key = spec.binds
        if key not in self._roots:
            try:
                self._roots[key] = rootfs.SharedRoot(spec)
            except OSError as e:
                raise JailError("rootfs", e.errno or 0, e.strerror or str(e)) from None
        return self._roots[key].fd

    def _open_netns(self, spec: JailSpec) -> tuple[int, int]:
        """(fd the child joins or -1, fd the parent must close after the fork or -1)."""
        if spec.network == NetworkMode.SHARED_EMPTY:
            return self._shared_netns_fd(), -1
        if spec.network == NetworkMode.NETNS:
            assert spec.netns_path is not None
            try:
                fd = os.open(spec.netns_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise JailError(
                    "network", e.errno or 0,
                    f"cannot open network namespace {spec.netns_path}: {e.strerror}",
                ) from None
            return fd, fd
        return -1, -1

    def _start(self, spec: JailSpec, fds: list[int], body: Callable[[], None],
               restore_signals: bool = False, uid: int | None = None,
               on_listener: Callable[[int, int], None] | None = None,
               keep_sync: bool = False) -> JailProcess:
        if spec.seccomp_bpf is not None:
            prepare_bpf(spec.seccomp_bpf)  # in the parent: the child only loads it
        root_fd = self._shared_root_fd(spec)
        netns_fd, own_netns_fd = self._open_netns(spec)
        allocator = None if uid is not None else self.uids(spec.uid_range)
        cgroup = None
        try:
            if allocator is not None:
                uid = allocator.allocate()
            assert uid is not None
            cgroup = _jail_cgroup(spec, uid)
            parent_end, child_end = socket.socketpair()
            try:
                if self.for_parent:
                    pid = clone.clone(clone.CLONE_PARENT | libc.CLONE_NEWPID)
                else:
                    pid = self._pidfork.fork()
            except BaseException:
                if allocator is not None:
                    allocator.release(uid)
                if cgroup is not None:
                    cgroup.remove()
                parent_end.close()
                child_end.close()
                raise
            if pid == 0:  # pragma: no cover - runs in the child, reported through the socket
                parent_end.close()
                _child(spec, child_end.detach(), netns_fd, root_fd, fds, body,
                       restore_signals)
        finally:  # (never reached in the child: _child ends in os._exit)
            if own_netns_fd >= 0:
                os.close(own_netns_fd)
        child_end.close()
        jail = JailProcess(pid, uid, spec.name, self, cgroup=cgroup)
        if not self.for_parent:
            self._live[pid] = (jail, allocator or self.uids(spec.uid_range))
        try:
            jail.listener, head = _parent_handshake(parent_end, pid, uid, on_listener, cgroup,
                                                    ready=b"R" if keep_sync else b"",
                                                    inside=(spec.uid, spec.gid))
            if keep_sync:
                jail._result = parent_end.detach()
                jail._head = head
                jail._closer = weakref.finalize(jail, _close_quietly, jail._result)
        except BaseException as e:
            jail.kill()
            if self.for_parent:  # our parent reaps it; it must know the pid
                if isinstance(e, JailError):
                    e.pid = pid
            else:
                jail.wait()
            raise
        finally:
            parent_end.close()
        return jail


def _close_quietly(fd: int) -> None:
    """A result never taken: its socket is closed with its JailProcess."""
    with contextlib.suppress(OSError):
        os.close(fd)


def _jail_cgroup(spec: JailSpec, uid: int) -> JailCgroup | None:
    """The jail's own cgroup when its spec limits memory, processes or CPU."""
    limits = Limits(spec.memory_limit, spec.pids_limit, spec.cpus)
    if not limits:
        return None
    try:
        return JailCgroup(f"sandbox-{uid}", limits)  # the uid is unique host-wide
    except OSError as e:
        raise JailError("cgroup", e.errno or 0, str(e)) from None


def _parent_handshake(sock: socket.socket, pid: int, uid: int,
                      on_listener: Callable[[int, int], None] | None = None,
                      cgroup: JailCgroup | None = None, ready: bytes = b"",
                      inside: tuple[int, int] = (0, 0)) -> tuple[int | None, bytes]:
    """The spawn's messages: id maps, the seccomp listener (ours to close), an error,
    and then EOF for ready, or `ready` (the result's first bytes may follow it).
    Returns (listener, what followed `ready`)."""
    sock.settimeout(SPAWN_TIMEOUT)
    listener = None
    try:
        first = sock.recv(4096)
        if first[:1] == b"U":
            try:
                namespaces.write_id_maps(pid, uid, uid, *inside)
            except OSError as e:
                raise JailError("id-map", e.errno or 0, str(e)) from None
            if cgroup is not None:  # before the jail runs anything of its own
                try:
                    cgroup.attach(pid)
                except OSError as e:
                    raise JailError("cgroup", e.errno or 0, str(e)) from None
            sock.sendall(b"M")
            first = sock.recv(4096)
            if first[:1] == b"L":
                listener = _take_fd(pid, int(first[1:]))
                if on_listener is not None:
                    on_listener(pid, listener)
                sock.sendall(b"T")
                first = b""
            while not (ready and first.startswith(ready)) and (chunk := sock.recv(4096)):
                first += chunk
    except TimeoutError:
        if listener is not None:
            os.close(listener)
        raise JailError("spawn", errno.ETIMEDOUT, "the jail did not report in time") from None
    after = b""
    if ready and first.startswith(ready):
        first, after = b"", first[len(ready):]
    if first and listener is not None:
        os.close(listener)
    if first.startswith(b"E"):
        layer, err, message = first[1:].split(b"\0", 2)
        raise JailError(layer.decode(), int(err), message.decode(errors="replace"))
    if first:
        raise JailError("spawn", errno.EPROTO, f"unexpected message {first[:20]!r}")
    # EOF with no message: ready (the sync socket was closed or exec'd away).
    return listener, after


_NR_PIDFD_GETFD = 438  # x86_64 and aarch64


def _take_fd(pid: int, fd: int) -> int:
    """A copy of the child's fd `fd` (pidfd_getfd, Linux >= 5.6; close-on-exec)."""
    import ctypes

    pidfd = os.pidfd_open(pid)
    try:
        libc_ = ctypes.CDLL(None, use_errno=True)
        libc_.syscall.restype = ctypes.c_long
        copy = libc_.syscall(_NR_PIDFD_GETFD, pidfd, fd, 0)
        if copy < 0:
            err = ctypes.get_errno()
            raise JailError("seccomp", err, f"copying the seccomp listener: {os.strerror(err)}")
        return int(copy)
    finally:
        os.close(pidfd)


# -- the child ---------------------------------------------------------------------


class _Layer:
    """Names the layer being applied so a failure can say which one broke, and
    where the sync socket is now (the fds layer renumbers it)."""

    name = "start"
    sync = -1


def _child(spec: JailSpec, sync: int, netns_fd: int, root_fd: int, fds: list[int],
           body: Callable[[], None], restore_signals: bool = False) -> None:
    layer = _Layer()
    try:
        _build_jail(spec, sync, netns_fd, root_fd, fds, layer, restore_signals)
    except BaseException as e:
        err = e.errno if isinstance(e, OSError) and e.errno else 0
        msg = f"E{layer.name}\0{err}\0{e}".encode()
        try:
            os.write(layer.sync if layer.sync >= 0 else sync, msg)
        finally:
            os._exit(LAYER_FAILED)
    try:
        body()
    except SystemExit as e:
        os._exit(e.code if isinstance(e.code, int) else 1)
    except BaseException as e:
        try:
            sys.stderr.flush()
            _print_exception(e)
        finally:
            os._exit(1)
    os._exit(0)


def _print_exception(exc: BaseException) -> None:
    """A traceback without source lines: traceback.print_exc() stats and opens the
    source files (linecache), which a jail's seccomp policy may forbid (SIGSYS)."""
    lines = ["Traceback (most recent call last):\n"]
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        code = frame.f_code
        lines.append(f'  File "{code.co_filename}", line {lineno}, in {code.co_name}\n')
    # Not traceback.format_exception_only: for a chained exception it builds the
    # context's stack with source lines, which stats files.
    lines.append(f"{type(exc).__qualname__}: {exc}\n")
    os.write(2, "".join(lines).encode(errors="replace"))


def _build_jail(spec: JailSpec, sync: int, netns_fd: int, root_fd: int, fds: list[int],
                layer: _Layer, restore_signals: bool = False) -> None:
    layer.name = "signals"
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    # The mask survives fork and exec: a caller that blocks signals to wait for
    # them (sandbox run does) must not hand a jail with SIGTERM blocked.
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    if restore_signals:
        # CPython ignores SIGPIPE and SIGXFSZ, and exec keeps "ignored": an exec'd
        # program must start with the defaults, as subprocess's restore_signals does.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    privileges.set_parent_death_signal(spec.parent_death_signal)

    layer.name = "network"
    ns_flags = libc.CLONE_NEWNS if root_fd < 0 else 0
    if spec.network in (NetworkMode.SHARED_EMPTY, NetworkMode.NETNS):
        libc.setns(netns_fd, libc.CLONE_NEWNET)
    elif spec.network in (NetworkMode.NEW, NetworkMode.LOOPBACK):
        ns_flags |= libc.CLONE_NEWNET

    layer.name = "mount-namespace"
    if ns_flags:
        libc.unshare(ns_flags)
    if spec.network == NetworkMode.LOOPBACK:
        layer.name = "network"
        from sandbox.network import bring_up_loopback

        bring_up_loopback()
    if root_fd >= 0:
        layer.name = "rootfs"
        libc.setns(root_fd, libc.CLONE_NEWNS)  # also moves our root and cwd there
    elif spec.empty_root:
        layer.name = "rootfs"
        rootfs.build_root(spec)

    layer.name = "user-namespace"
    libc.unshare(libc.CLONE_NEWUSER | libc.CLONE_NEWIPC | libc.CLONE_NEWUTS)
    layer.name = "id-map"
    os.write(sync, b"U")
    if os.read(sync, 1) != b"M":
        raise OSError(errno.EPIPE, "the parent went away before writing the id maps")
    layer.name = "credentials"
    # Only the ids the maps hold: a jail running as another uid becomes it once its
    # capabilities are gone (privileges.drop_capabilities).
    if spec.gid == 0:
        os.setresgid(0, 0, 0)
    if spec.uid == 0:
        os.setresuid(0, 0, 0)
    layer.name = "uts"
    libc.sethostname(spec.hostname)

    layer.name = "fds"
    kept, sync_moved = fdlayer.renumber(fds, sync)
    assert sync_moved is not None
    sync = layer.sync = sync_moved
    if spec.drop_capabilities:
        layer.name = "capabilities"
        privileges.drop_capabilities(spec.uid, spec.gid)
    elif spec.uid or spec.gid:
        layer.name = "credentials"
        os.setresgid(spec.gid, spec.gid, spec.gid)
        os.setresuid(spec.uid, spec.uid, spec.uid)
    if spec.no_new_privs:
        layer.name = "no-new-privs"
        privileges.set_no_new_privs()
    if spec.landlock:
        layer.name = "landlock"
        landlock.restrict(
            ([Path("/proc")] if spec.mount_proc else [])  # the jail's own /proc
            + [b.target for b in spec.binds if not b.writable],
            ([Path("/dev")] if spec.dev else [])  # its devices: read, write, ioctl
            + [path for path, _ in spec.tmpfs]
            + [b.target for b in spec.binds if b.writable]
            + ([spec.writable_tmpfs] if spec.writable_tmpfs is not None else []))
    layer.name = "rlimits"
    privileges.apply_rlimits(spec.rlimit_values(len(kept)))
    layer.name = "dumpable"
    privileges.set_dumpable(spec.dumpable)
    # Changing credentials cleared the parent-death signal: set it again, then
    # make sure the parent did not die before that.
    privileges.set_parent_death_signal(spec.parent_death_signal)
    if select.select([sync], [], [], 0)[0]:
        raise OSError(errno.EPIPE, "the parent went away")
    if spec.seccomp_bpf is not None and spec.seccomp_listener:
        layer.name = "seccomp"
        # The parent copies the listener (pidfd_getfd) while we wait: the filter must
        # allow write and read on the sync fd.
        listener = load_bpf_listener(spec.seccomp_bpf)
        os.write(sync, b"L%d" % listener)
        if os.read(sync, 1) != b"T":
            raise OSError(errno.EPIPE, "the parent did not take the seccomp listener")
        os.close(listener)
    elif spec.seccomp_bpf is not None:
        layer.name = "seccomp"
        load_bpf(spec.seccomp_bpf)
    layer.name = "ready"
    _SYNC_FD[0] = sync


# The sync fd after renumbering: `_call` closes it (ready), `_exec` leaves it
# close-on-exec so the parent sees EOF exactly when exec succeeded.
_SYNC_FD = [-1]


def _call(target: Callable[..., object], args: Sequence[object], send: bool = False) -> None:
    if not send:
        os.close(_SYNC_FD[0])
        target(*args)
        return
    os.write(_SYNC_FD[0], b"R")  # ready: the socket stays open for the result
    code = call_and_send(_SYNC_FD[0], target, args)
    if code:
        raise SystemExit(code)


def _exec(argv: list[str], env: dict[str, str], cwd: str) -> None:
    try:
        os.chdir(cwd)
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        os.write(_SYNC_FD[0], f"Eexec\0{e.errno or 0}\0{argv[0]}: {e.strerror}".encode())
        os._exit(127)
