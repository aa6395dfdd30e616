"""`sandbox`: run a program in a jail described by a profile, check, explain, learn.

    sandbox run --profile P [overrides] -- CMD ARGS
    sandbox check P
    sandbox explain P
    sandbox learn --profile P [--output FILE] -- CMD ARGS

The jailed program is PID 1 of its own PID namespace, and a PID 1 ignores
every signal it has no handler for (SIGKILL aside).  `run` therefore does not
just forward SIGTERM/SIGINT/SIGHUP: when the program has not installed a
handler, it ends it as the signal would have ended an ordinary process, so
`sandbox run` exits 128+N like the program would have.  A program that
handles (or explicitly ignores) SIGTERM/SIGINT gets the signal and
--stop-timeout seconds to exit before SIGKILL.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.errors import JailError
from sandbox.policy import PolicyError, Rule, SeccompPolicy
from sandbox.spec import BindMount, JailSpec, parse_network

if TYPE_CHECKING:  # imported lazily at run time: `check` need not load the launcher
    from sandbox.launcher import JailProcess, Launcher
    from sandbox.profile import Profile

EXIT_USAGE = 2
EXIT_CANNOT_START = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
EXIT_SECCOMP = 128 + signal.SIGSYS  # 159

# Signals `run` relays; the first two also start the --stop-timeout countdown
# (SIGHUP is a reload request for many daemons, so it never leads to SIGKILL).
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOPPING = (signal.SIGTERM, signal.SIGINT)
_SI_KERNEL = 0x80  # siginfo.si_code of a signal the kernel sent (e.g. the tty's ^C)

EXIT_CODES = f"""\
exit status:
  run     the program's exit status, or 128+N if it ended by signal N
          (a signal it does not handle, forwarded by sandbox, counts as ending it)
          {EXIT_SECCOMP}  killed by seccomp (128+SIGSYS): it called a syscall the profile does
               not allow; the syscall is named on stderr
          {EXIT_CANNOT_START}  the jail was not started: bad profile, or a jail layer failed
          {EXIT_CANNOT_EXECUTE}  the program was found but could not be executed
          {EXIT_NOT_FOUND}  the program was not found inside the jail
          137  it did not stop within --stop-timeout of SIGTERM/SIGINT and was SIGKILLed
  check   0 the profile is valid, {EXIT_USAGE} it is not (FILE:LINE: message)
  explain 0, or {EXIT_USAGE} for an invalid profile
  learn   0 a policy was written; otherwise as for run (125 also when the kernel's
          audit records cannot be read)
  any     {EXIT_USAGE} for a command-line error
"""


# ---------------------------------------------------------------------------
# Messages


def _say(message: str) -> None:
    print(f"sandbox: {message}", file=sys.stderr, flush=True)


class _Fail(Exception):
    """A one-line error for the user and the exit status that goes with it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------
# Arguments


def _bind(text: str, writable: bool) -> BindMount:
    """SRC or SRC:DST (both absolute) as a BindMount."""
    source, _, target = text.partition(":")
    target = target or source
    if not source.startswith("/") or not target.startswith("/"):
        raise argparse.ArgumentTypeError(f"bind paths must be absolute: {text!r}")
    return BindMount(Path(source), Path(target), writable,
                     "--bind-rw" if writable else "--bind-ro")


def _bind_ro(text: str) -> BindMount:
    return _bind(text, False)


def _bind_rw(text: str) -> BindMount:
    return _bind(text, True)


def _env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


def _net(text: str) -> str:
    try:
        parse_network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc}; one of shared-empty, new, loopback, host, netns:NAME, netns:/path"
        ) from None
    return text


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _add_jail_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", required=True, metavar="P",
                   help="profile name (e.g. examples/http-static) or path to a .toml file")
    p.add_argument("--bind-ro", action="append", type=_bind_ro, default=[], metavar="SRC[:DST]",
                   help="add a read-only bind mount (replaces the profile's bind at DST)")
    p.add_argument("--bind-rw", action="append", type=_bind_rw, default=[], metavar="SRC[:DST]",
                   help="add a writable bind mount (replaces the profile's bind at DST)")
    p.add_argument("--net", type=_net, metavar="MODE",
                   help="network: shared-empty, new, loopback, host, netns:NAME (/run/netns/NAME)"
                        " or netns:/path")
    p.add_argument("--tmpfs", metavar="PATH", help="a writable tmpfs at PATH inside the jail")
    p.add_argument("--hostname", metavar="H", help="the jail's hostname")
    p.add_argument("--env", action="append", type=_env, default=[], metavar="K=V",
                   help="set an environment variable for the program (repeatable)")
    p.add_argument("--stop-timeout", type=_seconds, default=5.0, metavar="S",
                   help="seconds a program that handles SIGTERM/SIGINT gets to exit before "
                        "SIGKILL (default 5)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandbox",
        description="Run programs in a layered Linux jail described by a profile.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run CMD in a jail", epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run CMD in the jail of profile P (as its PID 1), relay SIGTERM, SIGINT "
                    "and SIGHUP, and exit with its status.",
    )
    _add_jail_options(run)

    check = sub.add_parser("check", help="validate a profile and summarise it", epilog=EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("profile", metavar="P")

    explain = sub.add_parser("explain", help="say in sentences what a jail can and cannot do",
                             epilog=EXIT_CODES,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    explain.add_argument("profile", metavar="P")

    learn = sub.add_parser(
        "learn", help="record the syscalls CMD needs beyond a profile, write a policy",
        epilog=EXIT_CODES + _LEARN_NOTES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run CMD in the jail of profile P with the seccomp default action set to "
                    "'log' (nothing is killed), read the kernel's audit records of the syscalls "
                    "it made that P does not allow, and write P's policy plus those.",
    )
    learn.add_argument("--output", "-o", metavar="FILE",
                       help="write the learned profile here (default: stdout)")
    learn.add_argument("--rounds", type=int, default=1, metavar="N",
                       help="run CMD up to N times, each time with what was learned so far, "
                            "until a run logs nothing new (default 1)")
    learn.add_argument("--keep-ratelimit", action="store_true",
                       help="do not lift kernel.printk_ratelimit while learning (see below)")
    _add_jail_options(learn)
    return parser


_LEARN_NOTES = """
learn notes:
  The records are the kernel's audit messages (type=1326) read from /dev/kmsg, so learn
  needs root, "log" in /proc/sys/kernel/seccomp/actions_logged, and no audit daemon
  (auditd takes the records instead).  Without auditd the kernel prints them through
  printk_ratelimit (by default 10 per 5 s) and drops the rest: learn sets
  kernel.printk_ratelimit to 0 while CMD runs and restores it afterwards, unless
  --keep-ratelimit is given (then each further round waits out the rate-limit window).
  Only what CMD did in this run is learned: exercise every code path.  Argument rules
  of the profile are kept; a syscall that was called outside its rules is allowed
  outright: review the result.
"""


def _split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Options before the first '--', and the command after it (None if no '--')."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, None


# ---------------------------------------------------------------------------
# Profiles with command-line overrides


def _load(args: argparse.Namespace) -> Profile:
    """The profile with the command line's overrides applied (raises _Fail)."""
    from sandbox.profile import check_bind_sources, load_profile

    try:
        profile = load_profile(args.profile)
    except (PolicyError, FileNotFoundError) as exc:
        raise _Fail(EXIT_CANNOT_START, str(exc)) from None
    spec = profile.spec
    changes: dict[str, Any] = {}
    extra: list[BindMount] = [*args.bind_ro, *args.bind_rw]
    if extra:
        replaced = {b.target for b in extra}
        changes["binds"] = (*(b for b in spec.binds if b.target not in replaced), *extra)
    if args.net:
        changes["network"] = args.net
    if args.tmpfs:
        if not args.tmpfs.startswith("/"):
            raise _Fail(EXIT_USAGE, f"--tmpfs must be an absolute path, not {args.tmpfs!r}")
        changes["writable_tmpfs"] = args.tmpfs
    if args.hostname:
        changes["hostname"] = args.hostname
    if args.env:
        env = dict(spec.env)
        env.update(args.env)
        changes["env"] = tuple(env.items())
    try:
        profile = profile.with_jail(**changes) if changes else profile
    except (ValueError, TypeError) as exc:
        raise _Fail(
            EXIT_CANNOT_START, f"cannot apply the command line to {args.profile}: {exc}"
        ) from None
    try:
        check_bind_sources(profile.spec)
    except ValueError as exc:  # PolicyError too: FILE:LINE: bind source ... does not exist
        raise _Fail(EXIT_CANNOT_START, str(exc)) from None
    return profile


# ---------------------------------------------------------------------------
# Running one jail and relaying signals


@contextlib.contextmanager
def _blocked(signals: Sequence[int]) -> Iterator[None]:
    """Block `signals` so they queue for sigtimedwait (the launcher unblocks them in
    the jail); afterwards discard what is still pending and restore the mask, so a
    SIGTERM that raced with the jail's exit does not kill us after the fact."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        while signal.sigtimedwait(signals, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


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


@dataclasses.dataclass
class Outcome:
    """How one jailed run ended."""

    jail: JailProcess
    status: int  # what `sandbox run` exits with
    note: str | None = None  # a line for stderr


def supervise(launcher: Launcher, spec: JailSpec, argv: list[str], stop_timeout: float,
              tick: Callable[[], None] | None = None, tick_every: float = 0.05,
              fds: Sequence[int] = (0, 1, 2)) -> Outcome:
    """Start `argv` in a jail, relay signals until it ends, compute the exit status.

    Signals are blocked and taken with sigtimedwait, so none is lost between
    the spawn and the wait, and a ^C the terminal already sent to the jail
    (same process group) is not sent twice.  Raises JailError.
    """
    waited = (*FORWARDED, signal.SIGCHLD)
    with _blocked(waited):
        jail = launcher.run(spec, argv, fds=fds)
        kill_at: float | None = None
        stopped_by: int | None = None  # signal whose default action we carried out
        escalated: int | None = None
        while jail.poll() is None:
            timeout = tick_every if tick else 3600.0
            if kill_at is not None:
                timeout = min(timeout, max(0.0, kill_at - time.monotonic()))
            info = signal.sigtimedwait(waited, timeout)
            if tick:
                tick()
            if info is not None and info.si_signo in FORWARDED:
                sig = info.si_signo
                state = _disposition(jail.pid, sig)
                if state == "default":
                    # What the signal would do to any process that is not a PID 1.
                    stopped_by = sig
                    jail.kill(signal.SIGKILL)
                elif state == "caught" and info.si_code != _SI_KERNEL:
                    jail.kill(sig)  # from the tty it reached the jail already
                if sig in STOPPING and kill_at is None and stopped_by is None:
                    escalated = sig
                    kill_at = time.monotonic() + stop_timeout
            if kill_at is not None and time.monotonic() >= kill_at and jail.poll() is None:
                jail.kill(signal.SIGKILL)
                jail.wait()
                note = (f"the program did not exit within {stop_timeout:g} s of "
                        f"{signal.Signals(escalated or signal.SIGTERM).name}: killed it")
                return Outcome(jail, jail.exit_status or 128 + signal.SIGKILL, note)
    code = jail.returncode
    if stopped_by is not None and code == -signal.SIGKILL:
        return Outcome(jail, 128 + stopped_by)
    return Outcome(jail, jail.exit_status if jail.exit_status is not None else 1)


def _seccomp_line(jail: JailProcess, profile_name: str) -> str:
    v = jail.violation
    if v is not None and v.syscall:
        return (f"killed by seccomp: the program called {v.syscall} (#{v.number}, {v.arch}), "
                f"which profile {profile_name} does not allow")
    return (f"killed by seccomp: the program called a syscall that profile {profile_name} "
            "does not allow (the kernel log did not say which: /dev/kmsg unreadable, records "
            "rate-limited, or taken by auditd)")


def _start_failure(exc: JailError, argv: list[str], spec: JailSpec) -> _Fail:
    if exc.layer == "exec":
        path = dict(spec.env).get("PATH", "")
        if exc.errno == errno.ENOENT:
            return _Fail(EXIT_NOT_FOUND, f"cannot run {argv[0]!r}: not found inside the jail "
                         f"(PATH={path}; is its directory bound into the jail?)")
        return _Fail(EXIT_CANNOT_EXECUTE,
                     f"cannot run {argv[0]!r}: {os.strerror(exc.errno) if exc.errno else exc}")
    return _Fail(EXIT_CANNOT_START, f"cannot start: {exc}")


def _run_once(launcher: Launcher, spec: JailSpec, argv: list[str], args: argparse.Namespace,
              tick: Callable[[], None] | None = None, fds: Sequence[int] = (0, 1, 2)) -> Outcome:
    try:
        return supervise(launcher, spec, argv, args.stop_timeout, tick, fds=fds)
    except JailError as exc:
        raise _start_failure(exc, argv, spec) from None
    except (OSError, RuntimeError) as exc:  # fork failed, uids exhausted, ...
        raise _Fail(EXIT_CANNOT_START, f"cannot start: {exc}") from None


def _check_root() -> None:
    if os.geteuid() != 0:
        raise _Fail(EXIT_CANNOT_START, "cannot start: jails need root (CAP_SYS_ADMIN, "
                    "CAP_SETUID, CAP_SETGID in the initial namespaces)")


# ---------------------------------------------------------------------------
# Commands


def cmd_run(args: argparse.Namespace) -> int:
    from sandbox.launcher import Launcher

    if not args.command:
        raise _Fail(EXIT_USAGE, "run needs a command: sandbox run --profile P -- CMD ARGS")
    profile = _load(args)
    _check_root()
    launcher = Launcher()
    try:
        outcome = _run_once(launcher, profile.spec, args.command, args)
        if outcome.note:
            _say(outcome.note)
        if outcome.jail.returncode == -signal.SIGSYS:
            _say(_seccomp_line(outcome.jail, args.profile))
        return outcome.status
    finally:
        launcher.close()


def _print_profile(args: argparse.Namespace, render: Callable[[Any], str],
                   binds_must_exist: bool = False) -> int:
    """Load the profile (a bad one is a usage error) and print what `render` says of it."""
    from sandbox.profile import check_bind_sources, load_profile

    try:
        profile = load_profile(args.profile)
        if binds_must_exist:
            check_bind_sources(profile.spec)
    except (PolicyError, FileNotFoundError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    print(render(profile), end="")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from sandbox.explain import summary

    return _print_profile(args, summary, binds_must_exist=True)


def cmd_explain(args: argparse.Namespace) -> int:
    from sandbox.explain import explain

    return _print_profile(args, explain)


_ACTIONS_LOGGED = Path("/proc/sys/kernel/seccomp/actions_logged")
_PRINTK_RATELIMIT = Path("/proc/sys/kernel/printk_ratelimit")


@contextlib.contextmanager
def _ratelimit_lifted(keep: bool) -> Iterator[int]:
    """Set kernel.printk_ratelimit to 0 (no limit) for the duration; yields the
    window in seconds that still applies (0 when lifted)."""
    try:
        old = _PRINTK_RATELIMIT.read_text().strip()
    except OSError:
        old = ""
    window = int(old) if old.isdigit() else 5
    if keep or not old or old == "0":
        yield window if old != "0" else 0
        return
    try:
        _PRINTK_RATELIMIT.write_text("0\n")
    except OSError:
        yield window
        return
    _say(f"learn: kernel.printk_ratelimit set to 0 while learning (was {old})")
    try:
        yield 0
    finally:
        _PRINTK_RATELIMIT.write_text(old + "\n")


def _with_allowed(base: SeccompPolicy, names: set[str]) -> SeccompPolicy:
    """`base` with `names` allowed outright (their rules and deny entries dropped)."""
    rules = [r for r in base.rules if r.syscall not in names]
    rules += [Rule(n, "allow", (), "learned") for n in sorted(names)]
    return dataclasses.replace(base, rules=tuple(sorted(rules, key=lambda r: r.syscall)))


def _incomplete_note(rounds: int, last_new: int, last_lost: int) -> str | None:
    """What to say when the last round may have missed something: it still found new
    syscalls (which may unlock further code paths) or the kernel dropped records."""
    if not last_new and not last_lost:
        return None
    why = (f"the kernel dropped {last_lost} log records in the last run" if last_lost
           else f"the last run still found {last_new} new syscalls")
    return (f"learn: {why}: the list may be incomplete; run again with "
            f"--rounds {rounds + 1} or more")


def cmd_learn(args: argparse.Namespace) -> int:
    from sandbox.explain import learned_policy_toml
    from sandbox.launcher import Launcher
    from sandbox.seccomp import compile_policy, syscall_name

    if not args.command:
        raise _Fail(EXIT_USAGE, "learn needs a command: sandbox learn --profile P -- CMD ARGS")
    if args.rounds < 1:
        raise _Fail(EXIT_USAGE, "--rounds must be at least 1")
    profile = _load(args)
    _check_root()
    try:
        logged = _ACTIONS_LOGGED.read_text().split()
    except OSError:
        logged = []
    if "log" not in logged:
        raise _Fail(EXIT_CANNOT_START, f"learn needs 'log' in {_ACTIONS_LOGGED} (it has: "
                    f"{' '.join(logged) or 'nothing'}); e.g. sysctl -w "
                    f"kernel.seccomp.actions_logged=\"{' '.join([*logged, 'log'])}\"")
    base = profile.policy or SeccompPolicy(default="kill-process", rules=())
    allowed = set(base.allowed())
    observed: set[str] = set()
    launcher = Launcher()
    try:
        log = launcher.violations
        if not log.available:
            raise _Fail(EXIT_CANNOT_START, "learn needs to read the kernel's audit records "
                        "from /dev/kmsg, which cannot be opened")
        outcome: Outcome | None = None
        new: set[str] = set()
        lost = 0
        with _ratelimit_lifted(args.keep_ratelimit) as window:
            for round_no in range(1, args.rounds + 1):
                if round_no > 1 and window:
                    time.sleep(window)  # let printk's rate-limit budget refill
                dropped_before = log.dropped
                program = compile_policy(_with_allowed(base, observed), default_override="log")
                spec = dataclasses.replace(profile.spec, seccomp_bpf=program)
                # Without --output the policy goes to stdout: the program's goes to stderr.
                fds = (0, 1, 2) if args.output else (0, 2, 2)
                outcome = _run_once(launcher, spec, args.command, args, tick=log.poll, fds=fds)
                time.sleep(0.1)  # kauditd prints asynchronously
                records = log.records(uids={outcome.jail.uid}, actions={"log"})
                names = set()
                for r in records:
                    try:
                        names.add(syscall_name(r.syscall, r.arch))
                    except ValueError:
                        _say(f"learn: unknown syscall #{r.syscall} on {r.arch}: not added")
                new = names - observed
                observed |= new
                lost = log.dropped - dropped_before
                _say(f"learn: run {round_no}: exit status {outcome.status}, "
                     f"{len(records)} audit records, {len(new)} new syscalls"
                     + (f", {lost} kernel log records lost" if lost else ""))
                if not new and not lost:
                    break
        assert outcome is not None
        if outcome.jail.returncode == -signal.SIGSYS:
            _say(_seccomp_line(outcome.jail, args.profile))
        added = sorted(observed - allowed)
        text = learned_policy_toml(allowed | observed, based_on=profile, keep_rules=True)
        if args.output:
            Path(args.output).write_text(text)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
        where = args.output or "stdout"
        _say(f"learn: {len(added)} syscall{'' if len(added) == 1 else 's'} added to the "
             f"{len(allowed)} that profile "
             f"{args.profile} allows" + (f": {' '.join(added)}" if added else "")
             + f"; policy written to {where}")
        note = _incomplete_note(args.rounds, len(new), lost)
        if note:
            _say(note)
        return 0
    finally:
        launcher.close()


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "check": cmd_check,
    "explain": cmd_explain,
    "learn": cmd_learn,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sandbox` console script; returns the exit status."""
    raw = list(sys.argv[1:] if argv is None else argv)
    options, command = _split_command(raw)
    parser = build_parser()
    args = parser.parse_args(options)
    if command is not None:
        if getattr(args, "command", None):
            parser.error(f"unexpected arguments before '--': {' '.join(args.command)}")
        if args.action not in ("run", "learn"):
            parser.error(f"'{args.action}' takes no command after '--'")
        args.command = command
    try:
        return _COMMANDS[args.action](args)
    except _Fail as exc:
        _say(str(exc))
        return exc.status


if __name__ == "__main__":
    sys.exit(main())
