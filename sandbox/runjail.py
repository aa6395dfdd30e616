"""Run one program in a jail as its PID 1, relay signals, say how it ended:
the body of `sandbox run` (and of each round of `sandbox learn`).

Apart from sandbox.cli so that a `sandbox run` whose plan is cached
(sandbox/runcache.py) needs nothing else: it imports only C modules and the
lean launcher (no argparse, enum, re, dataclasses), and starts in milliseconds.

The jailed program is PID 1 of its own PID namespace, and a PID 1 ignores
every signal it has no handler for (SIGKILL aside).  `run` therefore does not
just forward SIGTERM/SIGINT/SIGHUP: when the program has not installed a
handler, it ends it as the signal would have ended an ordinary process, so
`sandbox run` exits 128+N like the program would have.  A program that
handles (or explicitly ignores) SIGTERM/SIGINT gets the signal and
--stop-timeout seconds to exit before SIGKILL.  `supervise` does it, and ends
the program after --timeout (exit status 124).  With a filter that notifies
(sandbox/notify.py) a thread answers the jail's forbidden calls: the first one
kills the jail and is named with its arguments and its process.
"""

from __future__ import annotations

# The C module: `signal` builds its enums with `enum`, which costs milliseconds.
import _signal as signal
import errno
import posix  # not os: a cached `sandbox run` does without it (2.5 ms; sandbox/runcache.py)
import sys
import time

from sandbox.errors import JailError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import Any

    from sandbox.callwatch import Seen
    from sandbox.launcher import JailProcess, Launcher
    from sandbox.listener import Call, Listener, Watcher
    from sandbox.plan import Plan
    from sandbox.profile import Profile
    from sandbox.spec import BindMount, JailSpec

    # What answers a jail's forbidden calls: given the jail's pid, a handler.
    Handler = Callable[[Listener, Call], None]

EXIT_USAGE = 2
EXIT_CANNOT_START = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
EXIT_SECCOMP = 128 + signal.SIGSYS  # 159
EXIT_TIMEOUT = 124  # as timeout(1): the program ran past --timeout

# Signals `run` relays; the first two also start the --stop-timeout countdown
# (SIGHUP is a reload request for many daemons, so it never leads to SIGKILL).
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOPPING = (signal.SIGTERM, signal.SIGINT)
_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}
_SI_KERNEL = 0x80  # siginfo.si_code of a signal the kernel sent (e.g. the tty's ^C)


def say(message: str) -> None:
    sys.stderr.write(f"sandbox: {message}\n")
    sys.stderr.flush()


class Fail(Exception):
    """A one-line error for the user and the exit status that goes with it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def profile_from_args(args: argparse.Namespace) -> Profile:
    """The profile with the command line's overrides applied (raises Fail)."""
    from sandbox.errors import PolicyError
    from sandbox.profile import check_bind_sources, load_profile

    try:
        profile = load_profile(args.profile)
    except (PolicyError, FileNotFoundError) as exc:
        raise Fail(EXIT_CANNOT_START, str(exc)) from None
    spec = profile.spec
    changes: dict[str, Any] = {}
    extra: list[BindMount] = [*args.bind_ro, *args.bind_rw]
    if extra:
        replaced = {b.target for b in extra}
        changes["binds"] = (*(b for b in spec.binds if b.target not in replaced), *extra)
    if args.net:
        changes["network"] = args.net
    if args.tmpfs:
        given = dict(args.tmpfs)
        if spec.writable_tmpfs in given:  # the profile's own, at another size
            changes["writable_tmpfs_size"] = given.pop(spec.writable_tmpfs)
        changes["tmpfs"] = (*((p, s) for p, s in spec.tmpfs if p not in given),
                            *given.items())
    if args.dev or spec.dev:
        changes["dev"] = True
        changes["dev_tty"] = posix.isatty(0)  # the jail's stdin is ours
    if args.hostname:
        changes["hostname"] = args.hostname
    if args.env:
        env = dict(spec.env)
        env.update(args.env)
        changes["env"] = tuple(env.items())
    if args.cwd:
        if not args.cwd.startswith("/"):
            raise Fail(EXIT_USAGE, f"--cwd must be an absolute path, not {args.cwd!r}")
        from pathlib import Path

        changes["cwd"] = Path(args.cwd)
    if args.proc:
        changes["mount_proc"] = True
    if args.rlimit:
        changes["rlimits"] = tuple({**dict(spec.rlimits), **dict(args.rlimit)}.items())
    for option, field in (("timeout", "timeout"), ("memory", "memory_limit"),
                          ("pids_limit", "pids_limit"), ("cpus", "cpus"), ("uid", "uid"),
                          ("gid", "gid"), ("ids", "ids")):
        if getattr(args, option) is not None:
            changes[field] = getattr(args, option)
    try:
        profile = profile.with_jail(**changes) if changes else profile
    except (ValueError, TypeError) as exc:
        raise Fail(
            EXIT_CANNOT_START, f"cannot apply the command line to {args.profile}: {exc}"
        ) from None
    try:
        check_bind_sources(profile.spec)
    except ValueError as exc:  # PolicyError too: FILE:LINE: bind source ... does not exist
        raise Fail(EXIT_CANNOT_START, str(exc)) from None
    return profile


def check_root() -> None:
    if posix.geteuid() != 0:
        raise Fail(EXIT_CANNOT_START, "cannot start: jails need root (CAP_SYS_ADMIN, "
                   "CAP_SETUID, CAP_SETGID in the initial namespaces)")


def _disposition(pid: int, sig: int) -> str:
    """'caught', 'ignored' or 'default': what the process does with `sig`."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return "caught"  # gone already: nothing to emulate
    bit = 1 << (sig - 1)
    if int(fields.get("SigCgt", "0"), 16) & bit:
        return "caught"
    if int(fields.get("SigIgn", "0"), 16) & bit:
        return "ignored"
    return "default"


class Outcome:
    """How one jailed run ended."""

    __slots__ = ("jail", "note", "status")

    def __init__(self, jail: JailProcess, status: int, note: str | None = None) -> None:
        self.jail = jail
        self.status = status  # what `sandbox run` exits with
        self.note = note  # a line for stderr


def supervise(launcher: Launcher, spec: JailSpec, argv: list[str], stop_timeout: float,
              tick: Callable[[], None] | None = None, tick_every: float = 0.05,
              fds: Sequence[int] = (0, 1, 2), plan: Plan | None = None,
              watch: Callable[[int], Handler] | None = None) -> Outcome:
    """Start `argv` in a jail, relay signals until it ends, compute the exit status.

    Signals are blocked and taken with sigtimedwait, so none is lost between
    the spawn and the wait, and a ^C the terminal already sent to the jail
    (same process group) is not sent twice.  The executor unblocks them in the
    jail.  Afterwards what is still pending is discarded and the mask restored,
    so a SIGTERM that raced with the jail's exit does not kill us after the fact.
    With `watch` (and a plan whose filter notifies) a thread answers the jail's
    forbidden calls with `watch(pid)`, every call from the moment the listener
    exists (the exec itself runs under the filter) until the jail is gone: the
    thread starts once the jail is let go, and a call made before then waits in
    the kernel for it.  Raises JailError.
    """
    waited = (*FORWARDED, signal.SIGCHLD)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    watching = _Watching(watch)
    try:
        jail = launcher.run(spec, argv, fds=fds, plan=plan,
                            on_listener=watching.keep if watch else None)
        try:
            watching.start()
        except BaseException:
            jail.kill(signal.SIGKILL)  # a jail no one watches must not run on
            jail.wait()
            raise
        return _relay(jail, stop_timeout, tick, tick_every, waited, spec.timeout)
    finally:
        watching.stop()
        while signal.sigtimedwait(waited, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _Watching:
    """Answers a jail's calls on a thread, on a copy of its listener: the launcher
    closes its own when it reaps the jail, possibly while the thread still polls.

    The copy is taken while the jail waits to be let go (`keep`), the thread started
    once it runs (`start`): starting a thread costs a few hundred microseconds that
    need not delay the exec, and a call the jail makes before the thread polls waits
    in the kernel until it is answered."""

    def __init__(self, watch: Callable[[int], Handler] | None) -> None:
        self._watch = watch
        self._kept: tuple[int, int] | None = None  # the jail's pid, our listener copy
        self._watcher: Watcher | None = None

    def keep(self, pid: int, fd: int) -> None:
        self._kept = (pid, posix.dup(fd))

    def start(self) -> None:
        if self._kept is None:
            return
        from sandbox.listener import Listener, Watcher

        assert self._watch is not None
        (pid, fd), self._kept = self._kept, None
        listener = Listener(fd)
        try:
            self._watcher = Watcher(listener, self._watch(pid))
        except BaseException:
            listener.close()
            raise

    def stop(self) -> None:
        """Stop the thread; raise what broke it (a broken watcher must not pass unseen)."""
        if self._kept is not None:  # the spawn failed after the listener came
            posix.close(self._kept[1])
            self._kept = None
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return
        watcher.stop()
        watcher.listener.close()
        if watcher.error is not None and sys.exc_info()[0] is None:
            raise watcher.error


def _relay(jail: JailProcess, stop_timeout: float, tick: Callable[[], None] | None,
           tick_every: float, waited: tuple[int, ...], run_for: float | None) -> Outcome:
    """Relay signals until the jail has ended; its outcome.  After `run_for` seconds
    the jail gets SIGTERM as if from the terminal (its exit status is then 124)."""
    kill_at: float | None = None
    stopped_by: int | None = None  # signal whose default action we carried out
    escalated: int | None = None
    deadline = None if run_for is None else time.monotonic() + run_for
    timed_out = False
    while jail.poll() is None:
        timeout = tick_every if tick else 3600.0
        for when in (kill_at, None if timed_out else deadline):
            if when is not None:
                timeout = min(timeout, max(0.0, when - time.monotonic()))
        info = signal.sigtimedwait(waited, timeout)
        if tick:
            tick()
        sig = info.si_signo if info is not None and info.si_signo in FORWARDED else None
        if sig is None and not timed_out and deadline is not None \
                and time.monotonic() >= deadline:
            timed_out, sig = True, signal.SIGTERM
        if sig is not None:
            state = _disposition(jail.pid, sig)
            if state == "default":
                # What the signal would do to any process that is not a PID 1.
                stopped_by = sig
                jail.kill(signal.SIGKILL)
            elif state == "caught" and (info is None or info.si_code != _SI_KERNEL):
                jail.kill(sig)  # from the tty it reached the jail already
            if sig in STOPPING and kill_at is None and stopped_by is None:
                escalated = sig
                kill_at = time.monotonic() + stop_timeout
        if kill_at is not None and time.monotonic() >= kill_at and jail.poll() is None:
            jail.kill(signal.SIGKILL)
            jail.wait()
            note = (f"the program did not exit within {stop_timeout:g} s of "
                    f"{_NAMES.get(escalated or signal.SIGTERM, 'SIGTERM')}: killed it")
            if timed_out:
                return Outcome(jail, EXIT_TIMEOUT, f"--timeout {run_for:g} s passed; {note}")
            return Outcome(jail, jail.exit_status or 128 + signal.SIGKILL, note)
    if timed_out:
        return Outcome(jail, EXIT_TIMEOUT, f"--timeout {run_for:g} s passed: stopped the "
                       f"program (it ended with status {jail.exit_status})")
    code = jail.returncode
    if stopped_by is not None and code == -signal.SIGKILL:
        return Outcome(jail, 128 + stopped_by)
    return Outcome(jail, jail.exit_status if jail.exit_status is not None else 1)


def violation_line(seen: Seen, calls: int, profile_name: str) -> str:
    """The forbidden call a jail was killed for, with its arguments and its process."""
    who = "the program" if seen.pid == 1 else f"{seen.who}, started by the program,"
    more = f" (and {calls - 1} more forbidden calls)" if calls > 1 else ""
    return (f"killed by seccomp: {who} called {seen.text}, which profile {profile_name} "
            f"does not allow{more}")


def seccomp_line(jail: JailProcess, profile_name: str) -> str:
    v = jail.violation
    if v is not None and v.syscall:
        return (f"killed by seccomp: the program called {v.syscall} (#{v.number}, {v.arch}), "
                f"which profile {profile_name} does not allow")
    return (f"killed by seccomp: the program called a syscall that profile {profile_name} "
            "does not allow (the kernel log did not say which: /dev/kmsg unreadable, records "
            "rate-limited, or taken by auditd)")


def _start_failure(exc: JailError, argv: list[str], spec: JailSpec) -> Fail:
    if exc.layer == "exec":
        path = dict(spec.env).get("PATH", "")
        if exc.errno == errno.ENOENT:
            return Fail(EXIT_NOT_FOUND, f"cannot run {argv[0]!r}: not found inside the jail "
                        f"(PATH={path}; is its directory bound into the jail?)")
        return Fail(EXIT_CANNOT_EXECUTE,
                    f"cannot run {argv[0]!r}: {posix.strerror(exc.errno) if exc.errno else exc}")
    return Fail(EXIT_CANNOT_START, f"cannot start: {exc}")


def run_once(launcher: Launcher, spec: JailSpec, argv: list[str], stop_timeout: float,
             tick: Callable[[], None] | None = None, fds: Sequence[int] = (0, 1, 2),
             plan: Plan | None = None, watch: Callable[[int], Handler] | None = None
             ) -> Outcome:
    """`supervise`, with start failures as a Fail (raises Fail)."""
    try:
        return supervise(launcher, spec, argv, stop_timeout, tick, fds=fds, plan=plan,
                         watch=watch)
    except JailError as exc:
        raise _start_failure(exc, argv, spec) from None
    except (OSError, RuntimeError) as exc:  # fork failed, uids exhausted, ...
        raise Fail(EXIT_CANNOT_START, f"cannot start: {exc}") from None


def _kill(pid: int) -> None:
    """SIGKILL a jail's PID 1 (the kernel then kills the rest of its PID namespace);
    it is our unreaped child while one of its processes waits on the listener."""
    try:  # noqa: SIM105 - not contextlib: it costs milliseconds at start-up
        posix.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_program(launcher: Launcher, spec: JailSpec, argv: list[str], profile_name: str,
                stop_timeout: float, plan: Plan | None = None) -> int:
    """`sandbox run`: the program's exit status, its story on stderr; closes `launcher`.

    When the plan's filter notifies, the first forbidden call kills the jail and
    is named with its arguments (sandbox/callwatch.py); otherwise a seccomp kill
    is named from the kernel's audit log."""
    watches: list[Any] = []
    watch = None
    if plan is not None and plan.notifies:

        def watch(pid: int) -> Handler:
            def handle(listener: Listener, call: Call) -> None:
                if not watches:  # imported by the first forbidden call: most runs make none
                    from sandbox.callwatch import ViolationWatch

                    watches.append(ViolationWatch(lambda: _kill(pid)))
                watches[0].handle(listener, call)

            return handle

    try:
        outcome = run_once(launcher, spec, argv, stop_timeout, plan=plan, watch=watch)
        if outcome.note:
            say(outcome.note)
        seen = watches[0].first if watches else None
        if seen is not None:
            say(violation_line(seen, len(watches[0].seen), profile_name))
            return EXIT_SECCOMP
        if outcome.jail.returncode == -signal.SIGSYS:
            say(seccomp_line(outcome.jail, profile_name))
        return outcome.status
    finally:
        launcher.close()
