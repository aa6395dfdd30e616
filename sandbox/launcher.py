"""Spawning jails: `spawn` runs a Python function (or a native entry) in one, `run`
execs a program.  One executor for all of them: sandbox._jail applies the plan
that sandbox.layers compiled for the spec (once, cached here).

How the child is made (Python decides, the executor does it):
  exec (run)           a raw clone: the child runs only the executor's
                       async-signal-safe C until execve, so any caller may use
                       it, threads and all;
  call/entry (spawn)   glibc's fork() after unshare(CLONE_NEWPID), with CPython's
                       fork duties around it, as os.fork: another thread of the
                       caller may hold malloc's lock at the clone, and glibc's
                       at-fork handlers are what make malloc (and so Python)
                       usable in the child.  CPython's own after-fork work
                       runs inside the jail, before seccomp (the plan's "python"
                       step), so a policy need not allow it;
  for_parent           a fork server: a raw clone(CLONE_NEWPID | CLONE_PARENT),
                       so the jail is its caller's child; CLONE_PARENT has no
                       fork() equivalent, so the server must be single-threaded.

Any failing layer aborts the spawn with a JailError naming the layer and errno.
Imports nothing heavy: `sandbox run` starts in milliseconds.
"""

from __future__ import annotations

# The C module: `signal` builds its enums with `enum`, which costs milliseconds.
import _signal as signal
import errno
import posix  # not os: a cached `sandbox run` does without it (2.5 ms; sandbox/runcache.py)
import sys
from io import SEEK_END  # io: imported by the interpreter itself

from sandbox import _jail
from sandbox.errors import JailError
from sandbox.jailprocess import JailProcess, Violation
from sandbox.plan import MODE_CALL, MODE_ENTRY, MODE_EXEC, SLOTS, Plan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sandbox.cgroups import JailCgroup
    from sandbox.namespaces import SharedEmptyNamespace
    from sandbox.rootfs import SharedRoot
    from sandbox.spec import JailSpec, UidRange
    from sandbox.uids import UidAllocator
    from sandbox.violations import ViolationLog

__all__ = ["JailProcess", "Launcher", "Violation"]

SPAWN_TIMEOUT = 10.0
_PLANS_MAX = 64
# The jailed child's end of the sync socket, when it sends a result back on it.
_SYNC_FD = [-1]


class Launcher:
    """Owns what jails share: the empty netns, the shared roots, the uid allocators,
    the compiled plans, the violation log.

    One per process that spawns jails.  The caller must be root (or hold
    CAP_SYS_ADMIN, CAP_SETUID, CAP_SETGID in the initial namespaces).

    With `for_parent` the jails are cloned with CLONE_PARENT: they are children
    of this process's parent, which reaps them (`adopt`) and owns their uids
    (passed to `spawn`); this is how a fork server (forkserver.py) works.
    With `shared=False` (a launcher for one jail, e.g. `sandbox run`) nothing is
    built to be shared: the jail makes its own network namespace and root.
    """

    def __init__(self, for_parent: bool = False, shared: bool = True) -> None:
        self.for_parent = for_parent
        self.shared = shared
        self.timings = False  # ask the executor for per-step CPU times (bench)
        self._shared_ns: dict[str, SharedEmptyNamespace] = {}  # by slot: netns, ipcns
        self._roots: dict[tuple, SharedRoot] = {}
        self._allocators: dict[UidRange, UidAllocator] = {}
        self._live: dict[int, tuple[JailProcess, UidAllocator]] = {}
        self._plans: dict[tuple[JailSpec, int], Plan] = {}
        self._plans_by_id: dict[tuple[int, int], tuple[JailSpec, Plan]] = {}
        self._violations: ViolationLog | None = None
        # The kernel log is opened now, at its end (cheaply), and parsed only if
        # a jail is killed: it must not miss the record of that kill.
        try:
            self._kmsg = posix.open("/dev/kmsg",
                                    posix.O_RDONLY | posix.O_NONBLOCK | posix.O_CLOEXEC)
            posix.lseek(self._kmsg, 0, SEEK_END)
        except OSError:
            self._kmsg = -1

    # -- public API ------------------------------------------------------------

    def spawn(self, spec: JailSpec, target: Callable[..., object] | object,
              args: Sequence[object] = (), fds: Sequence[int] = (), uid: int | None = None,
              plan: Plan | None = None, result: bool = False) -> JailProcess:
        """Run `target(*args)` in a new jail; `fds[i]` is fd i inside, all others are closed.

        `target` may also be a native entry capsule (sandbox/jail_entry.h): the
        child then calls its C function and never runs Python.  `uid` is the
        jail's host uid (the first of its block) when the caller allocated it (a
        fork server's caller does, `plan.id_count` of them); by default it comes
        from this launcher's allocator.  With `result`, the jail sends target's
        return value or exception back for `JailProcess.result()` (its policy
        must allow write)."""
        if _jail.is_entry(target):
            if result:
                raise ValueError("a native entry has no Python result")
            return self._start(spec, MODE_ENTRY, list(fds), uid, plan, entry=target)
        return self._start(spec, MODE_CALL, list(fds), uid, plan, target=target, args=args,
                           keep_sync=result)

    def run(self, spec: JailSpec, argv: Sequence[str], fds: Sequence[int] = (0, 1, 2),
            plan: Plan | None = None,
            on_listener: Callable[[int, int], None] | None = None) -> JailProcess:
        """Exec `argv` in a new jail; the exec's success is the spawn's success.

        `spec` needs only name, uid_range, env and the cgroup limits when `plan` is
        given (a plan from the `sandbox run` cache).  `on_listener(pid, fd)` is
        called as soon as the jail's seccomp listener is ours (a plan whose filter
        notifies), while the jail waits: whatever answers its calls must be
        running by then, as the exec itself runs under the filter."""
        if not argv:
            raise ValueError("run needs a command")
        return self._start(spec, MODE_EXEC, list(fds), None, plan, argv=list(argv),
                           on_listener=on_listener)

    def plan(self, spec: JailSpec, mode: int) -> Plan:
        """The compiled plan of `spec` for `mode`, compiled once per launcher."""
        same = self._plans_by_id.get((id(spec), mode))
        if same is not None and same[0] is spec:  # the usual case, without hashing the spec
            return same[1]
        key = (spec, mode)
        plan = self._plans.get(key)
        if plan is None:
            from sandbox.layers import compile_plan

            plan = compile_plan(spec, mode, shared=self.shared)
            plan.native  # noqa: B018 - decoded and checked now, once
            if len(self._plans) >= _PLANS_MAX:
                del self._plans[next(iter(self._plans))]
            self._plans[key] = plan
        if len(self._plans_by_id) >= _PLANS_MAX:
            del self._plans_by_id[next(iter(self._plans_by_id))]
        self._plans_by_id[(id(spec), mode)] = (spec, plan)
        return plan

    def uids(self, uid_range: UidRange) -> UidAllocator:
        if uid_range not in self._allocators:
            from sandbox.uids import UidAllocator

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
        jail.returncode = posix.waitstatus_to_exitcode(status)
        if jail.listener is not None:
            posix.close(jail.listener)
            jail.listener = None
        if jail.cgroup is not None:
            cgroup, jail.cgroup = jail.cgroup, None
            # Its PID namespace is gone: the cgroup is empty.  A failure is not raised
            # out of a wait(); the next jail of this uid removes the directory first.
            try:  # noqa: SIM105 - not contextlib: it costs milliseconds at start-up
                cgroup.remove()
            except OSError:
                pass
        allocator.release(jail.uid)
        if jail.returncode == -signal.SIGSYS:
            jail.violation = self._violation(pid)
        return jail

    @property
    def live(self) -> list[JailProcess]:
        return [jail for jail, _ in self._live.values()]

    @property
    def violations(self) -> ViolationLog:
        """The seccomp records of the kernel log since this launcher started."""
        if self._violations is None:
            from sandbox.violations import ViolationLog

            self._violations = ViolationLog(fd=self._kmsg)
            self._kmsg = -1  # the log owns it now
        return self._violations

    def close(self) -> None:
        for jail in self.live:
            jail.kill()
            jail.wait()
        for ns in self._shared_ns.values():
            ns.close()
        self._shared_ns.clear()
        for root in self._roots.values():
            root.close()
        self._roots.clear()
        if self._kmsg >= 0:
            posix.close(self._kmsg)
            self._kmsg = -1
        if self._violations is not None:
            self._violations.close()
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

    def _slots(self, spec: JailSpec, plan: Plan) -> list[int]:
        """The fds the plan's steps join, by slot index (-1: not used)."""
        fds = [-1] * len(SLOTS)
        for slot in plan.slots:
            if slot == "root":
                continue
            if slot not in self._shared_ns:
                from sandbox.namespaces import SHARED_KINDS, SharedEmptyNamespace

                self._shared_ns[slot] = SharedEmptyNamespace(*SHARED_KINDS[slot])
            fds[SLOTS.index(slot)] = self._shared_ns[slot].fd
        if "root" in plan.slots:
            key = spec.binds
            if key not in self._roots:
                from sandbox.rootfs import SharedRoot

                self._roots[key] = SharedRoot(spec)
            fds[SLOTS.index("root")] = self._roots[key].fd
        return fds

    def _cgroup(self, spec: JailSpec, uid: int) -> JailCgroup | None:
        """The jail's own cgroup when its spec limits memory, processes or CPU."""
        memory, pids, cpus = spec.memory_limit, spec.pids_limit, spec.cpus
        if memory is None and pids is None and cpus is None:
            return None
        if self.for_parent:  # its jails are reaped by our caller, who could not remove it
            raise JailError("cgroup", errno.ENOTSUP,
                            "cgroup limits are not available to a fork server's jails")
        from sandbox.cgroups import for_jail

        try:
            return for_jail(f"sandbox-{uid}", memory, pids, cpus)  # the uid is unique host-wide
        except OSError as e:
            raise JailError("cgroup", e.errno or 0, str(e)) from None

    def _start(self, spec: JailSpec, mode: int, fds: list[int], uid: int | None,
               plan: Plan | None, *, target: Callable[..., object] | None = None,
               args: Sequence[object] = (), entry: object = None,
               argv: list[str] | None = None, keep_sync: bool = False,
               on_listener: Callable[[int, int], None] | None = None) -> JailProcess:
        plan = plan or self.plan(spec, mode)
        slots = self._slots(spec, plan)
        how = _jail.HOW_CLONE if mode == MODE_EXEC or self.for_parent else _jail.HOW_FORK
        if self.for_parent and mode == MODE_CALL:
            _refuse_threads()
        exec_args: dict[str, list[bytes]] = {}
        if argv is not None:
            env = dict(spec.env)
            exec_args = {
                "argv": [_fsencode(a) for a in argv],
                "envp": [_fsencode(f"{k}={v}") for k, v in env.items()],
                "paths": _candidates(argv[0], env),
            }
        send = None
        if keep_sync:  # imported here: the jail cannot import anything
            from sandbox.result import call_and_send as send
        hook, hook_errors = _listener_hook(on_listener)
        allocator = None if uid is not None else self.uids(spec.uid_range)
        if allocator is not None:
            uid = allocator.allocate(plan.id_count)  # a block when the jail maps several ids
        assert uid is not None
        uid_map, gid_map = plan.id_maps(uid, uid)
        cgroup: JailCgroup | None = None
        cgroup_fds: list[int] = []
        try:
            cgroup = self._cgroup(spec, uid)
            if cgroup is not None:
                cgroup_fds = cgroup.open_dirs()
            result = _jail.spawn(plan.native, mode, how=how, parent=self.for_parent,
                                 slots=slots, keep=fds, uid_map=uid_map, gid_map=gid_map,
                                 entry=entry, timeout=SPAWN_TIMEOUT, timings=self.timings,
                                 cgroups=cgroup_fds, on_listener=hook, keep_sync=keep_sync,
                                 **exec_args)
        except BaseException:  # the parent's: the jailed child never raises out of spawn
            for fd in cgroup_fds:
                posix.close(fd)
            if cgroup is not None:
                cgroup.remove()
            if allocator is not None:
                allocator.release(uid)
            raise
        if not isinstance(result, tuple):  # pragma: no cover - the jailed child (MODE_CALL)
            assert target is not None
            _SYNC_FD[0] = -1 if result is None else result
            _run_target(target, args, send)
        for fd in cgroup_fds:
            posix.close(fd)
        pid, error, listener, times, kept = result
        jail = JailProcess(pid, uid, spec.name, self)
        jail.times = times
        jail.cgroup = cgroup
        if listener >= 0:
            jail.listener = listener
        if kept >= 0:
            jail.keep_result(kept)
        if not self.for_parent:
            self._live[pid] = (jail, allocator or self.uids(spec.uid_range))
        if error is not None:
            exc: BaseException = plan.error(error)
            if exc.layer == "exec" and argv:
                exc = JailError("exec", exc.errno, f"{argv[0]}: {posix.strerror(exc.errno)}")
            jail.kill()
            if self.for_parent:  # our parent reaps it; it must know the pid
                exc.pid = pid
                if jail.listener is not None:
                    posix.close(jail.listener)
            else:
                jail.wait()
            raise hook_errors[0] if hook_errors else exc
        return jail


def _listener_hook(on_listener: Callable[[int, int], None] | None
                   ) -> tuple[Callable[[int, int], bool] | None, list[BaseException]]:
    """`on_listener` as the executor calls it (False fails the spawn), and where an
    exception it raised is kept for the caller (raised once the jail is reaped)."""
    errors: list[BaseException] = []
    if on_listener is None:
        return None, errors

    def hook(pid: int, fd: int) -> bool:
        try:
            on_listener(pid, fd)
        except BaseException as e:
            errors.append(e)
            return False
        return True

    return hook, errors


def _refuse_threads() -> None:
    """A raw clone skips glibc's at-fork handlers: only a single-threaded caller may
    re-enter Python in the child (malloc's lock may be held by another thread)."""
    threading = sys.modules.get("threading")  # not imported: its at-fork hook would run
    if threading is not None and threading.active_count() > 1:
        raise RuntimeError("clone() needs a single-threaded caller")


def _candidates(program: str, env: dict[str, str]) -> list[bytes]:
    """Where execvpe would look for `program`, as os.execvpe does (PATH of `env`, else
    os.defpath; an empty entry is the working directory)."""
    if "/" in program:
        return [_fsencode(program)]
    dirs = env.get("PATH", "/bin:/usr/bin").split(":")
    return [_fsencode(f"{d}/{program}" if d and not d.endswith("/") else d + program)
            for d in dirs]


def _fsencode(text: str) -> bytes:
    """os.fsencode, without os (see the import)."""
    return text.encode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())


def _run_target(target: Callable[..., object], args: Sequence[object],
                send: Callable[[int, Callable[..., object], Sequence[object]], int] | None = None
                ) -> None:
    """The jailed child's whole Python life: the target (its outcome sent back on the
    kept sync socket with `send`), then _exit."""
    try:
        if send is not None:
            code = send(_SYNC_FD[0], target, args)
            posix._exit(code)
        target(*args)
    except SystemExit as e:
        posix._exit(e.code if isinstance(e.code, int) else 1)
    except BaseException as e:
        try:
            sys.stderr.flush()
            _print_exception(e)
        finally:
            posix._exit(1)
    posix._exit(0)


def _print_exception(exc: BaseException) -> None:
    """A traceback without source lines: traceback.print_exc() stats and opens the
    source files (linecache), which a jail's seccomp policy may forbid (SIGSYS),
    and importing `traceback` in a jail would need files too."""
    lines = ["Traceback (most recent call last):\n"]
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        lines.append(f'  File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}\n')
        tb = tb.tb_next
    lines.append(f"{type(exc).__qualname__}: {exc}\n")
    posix.write(2, "".join(lines).encode(errors="replace"))
