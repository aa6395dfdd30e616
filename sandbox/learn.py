"""`sandbox learn`: run a program with seccomp logging instead of killing, write a policy.

The kernel's audit records name the syscalls the program made that its
profile does not allow; the result is the profile's policy plus those.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import resource
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox.rules import ArgCond, Rule, SeccompPolicy, action_label
from sandbox.runjail import (
    EXIT_CANNOT_START,
    EXIT_USAGE,
    Fail,
    Outcome,
    check_root,
    profile_from_args,
    run_once,
    say,
    seccomp_line,
)
from sandbox.spec import NOFILE_KEPT, IpcMode, JailSpec
from sandbox.syscalls import known_syscalls
from sandbox.wording import size_text

if TYPE_CHECKING:
    from sandbox.profile import Profile

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
    say(f"learn: kernel.printk_ratelimit set to 0 while learning (was {old})")
    try:
        yield 0
    finally:
        _PRINTK_RATELIMIT.write_text(old + "\n")


def _with_allowed(base: SeccompPolicy, names: set[str]) -> SeccompPolicy:
    """`base` with `names` allowed outright (their rules and deny entries dropped)."""
    rules = [r for r in base.rules if r.syscall not in names]
    rules += [Rule(n, "allow", (), "learned") for n in sorted(names)]
    return dataclasses.replace(base, rules=tuple(sorted(rules, key=lambda r: r.syscall)))


def incomplete_note(rounds: int, last_new: int, last_lost: int) -> str | None:
    """What to say when the last round may have missed something: it still found new
    syscalls (which may unlock further code paths) or the kernel dropped records."""
    if not last_new and not last_lost:
        return None
    why = (f"the kernel dropped {last_lost} log records in the last run" if last_lost
           else f"the last run still found {last_new} new syscalls")
    return (f"learn: {why}: the list may be incomplete; run again with "
            f"--rounds {rounds + 1} or more")


def cmd_learn(args: argparse.Namespace) -> int:
    from sandbox.launcher import Launcher
    from sandbox.seccomp import compile_policy, syscall_name

    if not args.command:
        raise Fail(EXIT_USAGE, "learn needs a command: sandbox learn --profile P -- CMD ARGS")
    if args.rounds < 1:
        raise Fail(EXIT_USAGE, "--rounds must be at least 1")
    profile = profile_from_args(args)
    check_root()
    from sandbox.learnnotify import learn_by_notification

    done = learn_by_notification(args, profile)
    if done is not None:
        return done
    try:
        logged = _ACTIONS_LOGGED.read_text().split()
    except OSError:
        logged = []
    if "log" not in logged:
        raise Fail(EXIT_CANNOT_START, f"learn needs 'log' in {_ACTIONS_LOGGED} (it has: "
                   f"{' '.join(logged) or 'nothing'}); e.g. sysctl -w "
                   f"kernel.seccomp.actions_logged=\"{' '.join([*logged, 'log'])}\"")
    base = profile.policy or SeccompPolicy(default="kill-process", rules=())
    allowed = set(base.allowed())
    observed: set[str] = set()
    launcher = Launcher()
    try:
        log = launcher.violations
        if not log.available:
            raise Fail(EXIT_CANNOT_START, "learn needs to read the kernel's audit records "
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
                outcome = run_once(launcher, spec, args.command, args.stop_timeout, tick=log.poll,
                                   fds=fds)
                time.sleep(0.1)  # kauditd prints asynchronously
                records = log.records(uids={outcome.jail.uid}, actions={"log"})
                names = set()
                for r in records:
                    try:
                        names.add(syscall_name(r.syscall, r.arch))
                    except ValueError:
                        say(f"learn: unknown syscall #{r.syscall} on {r.arch}: not added")
                new = names - observed
                observed |= new
                lost = log.dropped - dropped_before
                say(f"learn: run {round_no}: exit status {outcome.status}, "
                    f"{len(records)} audit records, {len(new)} new syscalls"
                    + (f", {lost} kernel log records lost" if lost else ""))
                if not new and not lost:
                    break
        assert outcome is not None
        if outcome.jail.returncode == -signal.SIGSYS:
            say(seccomp_line(outcome.jail, args.profile))
        added = sorted(observed - allowed)
        text = learned_policy_toml(allowed | observed, based_on=profile, keep_rules=True)
        if args.output:
            Path(args.output).write_text(text)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
        where = args.output or "stdout"
        say(f"learn: {len(added)} syscall{'' if len(added) == 1 else 's'} added to the "
            f"{len(allowed)} that profile "
            f"{args.profile} allows" + (f": {' '.join(added)}" if added else "")
            + f"; policy written to {where}")
        note = incomplete_note(args.rounds, len(new), lost)
        if note:
            say(note)
        return 0
    finally:
        launcher.close()


# ---------------------------------------------------------------------------
# The learned profile, as TOML


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON escapes are valid TOML)."""
    return json.dumps(value, ensure_ascii=False)


def _jail_toml(spec: JailSpec) -> list[str]:
    lines = [
        "[jail]",
        f"network = {_toml_str(spec.network_label)}",
        *([f"ipc = {_toml_str(spec.ipc.value)}"] if spec.ipc != IpcMode.NEW else []),
        f"hostname = {_toml_str(spec.hostname)}",
        f"empty_root = {str(spec.empty_root).lower()}",
        f"mount_proc = {str(spec.mount_proc).lower()}",
    ]
    if spec.writable_tmpfs is not None:
        lines.append(f"writable_tmpfs = {_toml_str(str(spec.writable_tmpfs))}")
        lines.append(f"writable_tmpfs_size = {_toml_str(size_text(spec.writable_tmpfs_size))}")
    if spec.tmpfs:
        items = ", ".join(_toml_str(f"{path}:{size_text(size)}") for path, size in spec.tmpfs)
        lines.append(f"tmpfs = [{items}]")
    if spec.dev:
        lines.append("dev = true")
    for key, value in (("uid", spec.uid), ("gid", spec.gid), ("pids_limit", spec.pids_limit)):
        if value:
            lines.append(f"{key} = {value}")
    if spec.ids != 1:
        lines.append(f"ids = {spec.ids}")
    if spec.memory_limit is not None:
        lines.append(f"memory = {_toml_str(size_text(spec.memory_limit))}")
    for key, seconds in (("cpus", spec.cpus), ("timeout", spec.timeout)):
        if seconds is not None:
            lines.append(f"{key} = {seconds:g}")
    if spec.binds:
        lines.append("binds = [")
        for b in spec.binds:
            lines.append(
                f"    {{ source = {_toml_str(str(b.source))}, target = {_toml_str(str(b.target))}"
                f", writable = {str(b.writable).lower()} }},"
            )
        lines.append("]")
    lines += [
        f"no_new_privs = {str(spec.no_new_privs).lower()}",
        f"dumpable = {str(spec.dumpable).lower()}",
        *([] if spec.drop_capabilities else ["drop_capabilities = false"]),
        f"landlock = {str(spec.landlock).lower()}",
        f"uid_first = {spec.uid_range.first}",
        f"uid_count = {spec.uid_range.count}",
        f"cwd = {_toml_str(str(spec.cwd))}",
        "env = { " + ", ".join(f"{_toml_str(k)} = {_toml_str(v)}" for k, v in spec.env) + " }",
        "",
        "[jail.rlimits]",
    ]
    for name, value in spec.rlimits:
        if value == NOFILE_KEPT:
            lines.append(f'{name} = "kept"')
        elif value == resource.RLIM_INFINITY:
            lines.append(f'{name} = "unlimited"')
        else:
            lines.append(f"{name} = {value}")
    return lines


def _arg_toml(cond: ArgCond) -> str:
    """One argument filter as an inline table; values as strings keep their constants
    (and 64-bit values that a TOML integer cannot hold)."""
    parts = [f"arg = {cond.arg}", f"op = {_toml_str(cond.op)}"]
    if cond.mask is not None:
        parts.append(f"mask = {_toml_str(cond.mask_text or hex(cond.mask))}")
    parts.append(f"value = {_toml_str(cond.value_text or hex(cond.value))}")
    return "{ " + ", ".join(parts) + " }"


def _kept_rules(policy: SeccompPolicy, names: set[str]) -> tuple[list[str], list[Rule]]:
    """The base policy's deny list and its rules that are not plain allows, minus `names`."""
    deny = [r.syscall for r in policy.rules if r.action == "deny" and r.syscall not in names]
    rules = [
        r
        for r in policy.rules
        if r.syscall not in names and r.action != "deny" and (r.args or r.action != "allow")
    ]
    return deny, rules


def learned_policy_toml(
    syscalls: Iterable[str], based_on: Profile | None = None, *, keep_rules: bool = False
) -> str:
    """A profile that allows exactly `syscalls` (what `sandbox learn` observed).

    The [profile] and [jail] parts are copied from `based_on`.  Without
    `keep_rules`, argument rules are not carried over: review the list and
    add them by hand.  With it, the base policy's argument rules, other
    actions (e.g. clone3 -> errno:ENOSYS) and deny list are kept for every
    syscall not in `syscalls` (one in `syscalls` is allowed outright: it was
    called in a way the rules did not allow).
    """
    names = sorted(set(syscalls))
    unknown = [n for n in names if n not in known_syscalls()]
    if unknown:
        raise ValueError(f"unknown syscall names: {', '.join(unknown)}")
    source = f" from {based_on.name}" if based_on else ""
    description = f"learned{source}" + (f": {based_on.description}" if based_on else "")
    kept = keep_rules and based_on is not None and based_on.policy is not None
    what = "allowed by it or observed" if kept else "that were observed"
    review = "# Review before use: every entry is allowed without argument filters"
    if kept and based_on is not None:
        review += f";\n# the deny list and the rules at the end are kept from {based_on.name}."
    else:
        review += "."
    lines = [
        f"# Learned by `sandbox learn`{source}: the {len(names)} syscalls {what}.",
        review,
        "",
        "[profile]",
        f"description = {_toml_str(description)}",
        "",
    ]
    default = "kill-process"
    if based_on is not None:
        lines += [*_jail_toml(based_on.spec), ""]
        if based_on.policy is not None and based_on.policy.default not in ("log", "allow"):
            default = based_on.policy.default
    lines += ["[seccomp]", f"default = {_toml_str(action_label(default))}", "allow = ["]
    lines += [f"    {_toml_str(n)}," for n in names]
    lines.append("]")
    if keep_rules and based_on is not None and based_on.policy is not None:
        deny, rules = _kept_rules(based_on.policy, set(names))
        if deny:
            lines.append("deny = [" + ", ".join(_toml_str(n) for n in deny) + "]")
        for rule in rules:
            lines += ["", "[[seccomp.rules]]", f"syscall = {_toml_str(rule.syscall)}"]
            lines.append(f"action = {_toml_str(action_label(rule.action))}")
            if rule.args:
                lines.append("args = [" + ", ".join(_arg_toml(c) for c in rule.args) + "]")
    return "\n".join(lines) + "\n"


__all__ = ["cmd_learn", "learned_policy_toml"]
