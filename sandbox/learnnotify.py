"""`sandbox learn` through seccomp user notification: one run finds every call.

Every call the profile does not allow reaches `sandbox` with its arguments
and is let through (refused with EPERM when the profile denies it by name), so
nothing is killed, nothing is rate-limited and nothing needs a second run.
The profile written is the base profile's own text plus the additions
(sandbox.learnwrite), and it is loaded once to prove it is valid.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox.callwatch import LearnWatch
from sandbox.learnwrite import additions, extend
from sandbox.notify import notifying
from sandbox.rules import DENY
from sandbox.runjail import EXIT_CANNOT_START, Fail, run_once, say, seccomp_line

if TYPE_CHECKING:
    from sandbox.profile import Profile


def learn_by_notification(args: argparse.Namespace, profile: Profile) -> int | None:
    """Learn in one run; None where user notification cannot be used (the caller
    falls back to the audit log)."""
    from sandbox.launcher import Launcher

    policy = profile.policy
    spec = notifying(profile.spec, policy, learning=True)
    if spec is None or policy is None:
        return None
    if args.rounds > 1:
        say("learn: one run finds every call (seccomp user notification): --rounds is not "
            "needed")
    refuse = {r.syscall for r in policy.rules if r.action == DENY and not r.args}
    watch = LearnWatch(refuse)
    launcher = Launcher(shared=False)  # one jail: nothing to share with another
    try:
        # Without --output the policy goes to stdout: the program's goes to stderr.
        fds = (0, 1, 2) if args.output else (0, 2, 2)
        outcome = run_once(launcher, spec, args.command, args.stop_timeout, fds=fds,
                           watch=lambda pid: watch.handle)
    finally:
        launcher.close()
    if outcome.jail.returncode == -signal.SIGSYS:  # a rule with its own kill action
        say(seccomp_line(outcome.jail, args.profile))
    adds = additions(policy, watch.calls.values())
    text = extend(profile.path.read_text(), adds, profile.path.parent)
    _check(text)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    for refused in watch.refused.values():
        say(f"learn: {refused.first.who} called {refused.first.text}: refused (EPERM), "
            f"profile {args.profile} denies {refused.name}; not added")
    names = sorted(watch.calls)
    say(f"learn: one run, exit status {outcome.status}: {len(names)} syscall"
        f"{'' if len(names) == 1 else 's'} added to profile {args.profile}"
        + (f" ({len(adds)} entries): {' '.join(names)}" if names else "")
        + f"; policy written to {args.output or 'stdout'}")
    return 0


def _check(text: str) -> None:
    """The learned profile must load: a broken one is a bug here, said as such."""
    from sandbox.errors import PolicyError
    from sandbox.profile import load_profile

    with tempfile.NamedTemporaryFile("w", suffix=".toml", dir="/tmp") as f:
        f.write(text)
        f.flush()
        try:
            load_profile(f.name)
        except (PolicyError, FileNotFoundError) as exc:
            raise Fail(EXIT_CANNOT_START, f"learn wrote an invalid profile: {exc}") from None
