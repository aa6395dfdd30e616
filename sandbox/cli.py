"""`sandbox`: run a program in a jail described by a profile, check, explain, learn.

    sandbox run --profile P [overrides] -- CMD ARGS
    sandbox check P
    sandbox explain P
    sandbox learn --profile P [--output FILE] -- CMD ARGS

Each command is a module: `sandbox.runjail` (run: signals and exit status),
`sandbox.explain` (check, explain), `sandbox.learn` (learn).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sandbox.errors import JailError, PolicyError
from sandbox.learn import cmd_learn
from sandbox.limits import parse_id, parse_limit, parse_rlimit, parse_tmpfs
from sandbox.rules import SeccompPolicy
from sandbox.runjail import (
    EXIT_CANNOT_EXECUTE,
    EXIT_CANNOT_START,
    EXIT_NOT_FOUND,
    EXIT_SECCOMP,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Fail,
    check_root,
    profile_from_args,
    run_program,
    say,
)
from sandbox.spec import BindMount, parse_network

EXIT_CODES = f"""\
exit status:
  run     the program's exit status, or 128+N if it ended by signal N
          (a signal it does not handle, forwarded by sandbox, counts as ending it)
          {EXIT_SECCOMP}  killed by seccomp (128+SIGSYS): it (or a process it started) called a
               syscall the profile does not allow; the call and its arguments are
               named on stderr
          {EXIT_TIMEOUT}  it ran longer than --timeout (then SIGTERM, SIGKILL after --stop-timeout)
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
    p.add_argument("--tmpfs", action="append", type=_limit(parse_tmpfs), default=[],
                   metavar="PATH[:SIZE]",
                   help="a writable tmpfs at PATH inside the jail, 16M unless SIZE (repeatable)")
    p.add_argument("--dev", action="store_true",
                   help="a minimal /dev: null, zero, full, random, urandom, and tty when stdin "
                        "is one")
    p.add_argument("--hostname", metavar="H", help="the jail's hostname")
    p.add_argument("--env", action="append", type=_env, default=[], metavar="K=V",
                   help="set an environment variable for the program (repeatable)")
    p.add_argument("--stop-timeout", type=_seconds, default=5.0, metavar="S",
                   help="seconds a program that handles SIGTERM/SIGINT gets to exit before "
                        "SIGKILL (default 5)")
    p.add_argument("--cwd", metavar="DIR", help="working directory inside the jail")
    p.add_argument("--uid", type=_limit(lambda t: parse_id("--uid", t)), metavar="N",
                   help="the uid the program runs as inside the jail (default 0)")
    p.add_argument("--gid", type=_limit(lambda t: parse_id("--gid", t)), metavar="N",
                   help="the gid the program runs as inside the jail (default 0)")
    p.add_argument("--ids", type=_limit(lambda t: parse_limit("ids", t)), metavar="N",
                   help="map ids 0..N-1 inside the jail to a block of N host uids and gids, "
                        "so the program may switch between them (default 1: only --uid and "
                        "--gid are mapped)")
    p.add_argument("--proc", action="store_true",
                   help="mount /proc (the jail's own PID namespace only)")
    p.add_argument("--rlimit", action="append", type=_limit(parse_rlimit), default=[],
                   metavar="NAME=VALUE",
                   help="set a resource limit, e.g. nofile=256, as=1G, core=0 (repeatable)")
    p.add_argument("--timeout", type=_limit(lambda t: parse_limit("timeout", t)), metavar="S",
                   help=f"wall-clock seconds, then SIGTERM, then SIGKILL after --stop-timeout;"
                        f" exit status {EXIT_TIMEOUT}")
    p.add_argument("--memory", type=_limit(lambda t: parse_limit("memory", t)), metavar="SIZE",
                   help="memory limit of the whole jail (cgroup), e.g. 256M")
    p.add_argument("--pids-limit", type=_limit(lambda t: parse_limit("pids_limit", t)),
                   metavar="N", help="most processes and threads of the whole jail (cgroup)")
    p.add_argument("--cpus", type=_limit(lambda t: parse_limit("cpus", t)), metavar="FRACTION",
                   help="CPU time of the whole jail in CPUs, e.g. 0.5 (cgroup)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS")


def _limit(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a limits parser: its ValueError becomes a usage error."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


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
    explain.add_argument("--plan", action="store_true",
                         help="also list the jail plan: every step the executor takes, in order")

    learn = sub.add_parser(
        "learn", help="record the syscalls CMD needs beyond a profile, write a policy",
        epilog=EXIT_CODES + _LEARN_NOTES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run CMD once in the jail of profile P; every call P does not allow "
                    "reaches sandbox with its arguments (seccomp user notification) and is let "
                    "through; write P's own text plus what was new, each addition commented "
                    "with the process and call that needed it.",
    )
    learn.add_argument("--output", "-o", metavar="FILE",
                       help="write the learned profile here (default: stdout)")
    learn.add_argument("--rounds", type=int, default=1, metavar="N",
                       help="without user notification only: run CMD up to N times, each time "
                            "with what was learned so far, until a run logs nothing new "
                            "(default 1)")
    learn.add_argument("--keep-ratelimit", action="store_true",
                       help="without user notification only: do not lift "
                            "kernel.printk_ratelimit while learning (see below)")
    _add_jail_options(learn)
    return parser


_LEARN_NOTES = """
learn notes:
  One run finds every call CMD makes on the paths it takes: exercise them all.  Calls the
  profile denies by name are refused (EPERM) and not added.  socket, ioctl, fcntl and
  prctl are added for the values seen; a syscall the profile filters by its arguments
  gets rules of the same shape.  Where the kernel lacks seccomp user notification
  (Linux < 5.5), learn falls back to the kernel's audit messages (type=1326) read
  from /dev/kmsg: it then needs "log" in /proc/sys/kernel/seccomp/actions_logged and no
  audit daemon (auditd takes the records instead); the kernel prints them through
  printk_ratelimit (by default 10 per 5 s) and drops the rest, so learn sets
  kernel.printk_ratelimit to 0 while CMD runs and restores it afterwards, unless
  --keep-ratelimit is given (then each further round waits out the rate-limit window).
  The fallback allows a syscall called outside its rules outright: review the result.
"""


def _split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Options before the first '--', and the command after it (None if no '--')."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, None


# ---------------------------------------------------------------------------
# Commands


def _refuses_exec(policy: SeccompPolicy | None) -> bool:
    """Whether the profile's filter stops execve whatever its arguments.  The exec runs
    under the filter before anything answers the jail's calls: `run` would wait for
    an answer until the spawn timed out, so it says so at once instead."""
    if policy is None or policy.is_allowed("execve") is not False:
        return False
    rules = policy.rules_for("execve")
    return (policy.effective_action(rules[0]) if rules else policy.default) != "log"


def cmd_run(args: argparse.Namespace) -> int:
    from sandbox import runcachewrite
    from sandbox.launcher import Launcher
    from sandbox.notify import notifying
    from sandbox.plan import MODE_EXEC

    if not args.command:
        raise Fail(EXIT_USAGE, "run needs a command: sandbox run --profile P -- CMD ARGS")
    profile = profile_from_args(args)
    if _refuses_exec(profile.policy):
        raise Fail(EXIT_CANNOT_START, f"profile {args.profile} does not allow execve, which "
                   "`sandbox run` starts the program with: add it to the profile's allow list")
    check_root()
    # Forbidden calls reach us with their arguments where the kernel can notify;
    # elsewhere the audit log names them (sandbox/notify.py).
    spec = notifying(profile.spec, profile.policy) or profile.spec
    launcher = Launcher(shared=False)  # one jail: nothing to share with another
    try:
        plan = launcher.plan(spec, MODE_EXEC)
    except JailError:
        plan = None  # run_program reports it
    else:  # the next identical `sandbox run` starts from here (sandbox/runcache.py)
        runcachewrite.store(args.raw_options, profile, spec, plan, args.profile, args.stop_timeout)
    return run_program(launcher, spec, args.command, args.profile, args.stop_timeout, plan)


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

    if not args.plan:
        return _print_profile(args, explain)
    from sandbox.layers import plan_section

    return _print_profile(args, lambda profile: explain(profile) + plan_section(profile.spec))


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
    args.raw_options = options[1:]  # the `sandbox run` cache's key
    try:
        return _COMMANDS[args.action](args)
    except Fail as exc:
        say(str(exc))
        return exc.status


if __name__ == "__main__":
    sys.exit(main())
