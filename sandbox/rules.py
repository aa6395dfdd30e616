"""What a seccomp policy is once read: actions, argument conditions, rules.

`SeccompPolicy` is frozen and hashable so that `sandbox.seccomp.compile_policy`
can cache its BPF; `sandbox.policy` builds it from files.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.errors import suggest

# ---------------------------------------------------------------------------
# Actions

_FIXED_ACTIONS = ("kill-process", "kill-thread", "trap", "log", "allow")
# Marker for `deny = [...]` entries: the policy's default action, or
# kill-process when the default is allow.  Resolved when compiling, so that a
# learning run (default overridden to "log") logs denied calls too.
DENY = "deny"


def parse_action(text: object) -> str:
    """Normalise an action string; errno actions become ``errno:<number>``."""
    if not isinstance(text, str):
        raise ValueError(f"an action must be a string, not {text!r}")
    if text in _FIXED_ACTIONS:
        return text
    if text.startswith("errno:"):
        code = text[len("errno:") :]
        if code.isdigit():
            number = int(code)
        elif code in errno.errorcode.values():
            number = getattr(errno, code)
        else:
            raise ValueError(f"unknown errno {code!r}{suggest(code, errno.errorcode.values())}")
        if not 1 <= number <= 4095:
            raise ValueError(f"errno {number} is out of range 1..4095")
        return f"errno:{number}"
    choices = [*_FIXED_ACTIONS, "errno:EPERM"]
    raise ValueError(f"unknown action {text!r}{suggest(text, choices)}")


def action_label(action: str) -> str:
    """The readable form of a normalised action (``errno:1`` -> ``errno:EPERM``)."""
    if action.startswith("errno:"):
        number = int(action.split(":", 1)[1])
        return f"errno:{errno.errorcode.get(number, number)}"
    return action


def deny_action(default: str) -> str:
    """What `deny = [...]` means under this default action."""
    return "kill-process" if default == "allow" else default


# ---------------------------------------------------------------------------
# Argument filters and rules

OPS = ("==", "!=", "<", "<=", ">", ">=", "masked-eq")


@dataclass(frozen=True)
class ArgCond:
    """One comparison on a syscall argument; several in a rule are ANDed."""

    arg: int
    op: str
    value: int
    mask: int | None = None
    # As written in the file, for summaries ("PROT_EXEC" rather than 4).
    value_text: str = field(default="", compare=False)
    mask_text: str = field(default="", compare=False)

    def describe(self, name: str | None = None) -> str:
        """``arg2 & PROT_EXEC == 0`` style text."""
        who = name or f"arg{self.arg}"
        value = self.value_text or str(self.value)
        if self.op == "masked-eq":
            return f"{who} & {self.mask_text or hex(self.mask or 0)} == {value}"
        return f"{who} {self.op} {value}"


@dataclass(frozen=True)
class Rule:
    """What happens to one syscall, optionally only when its arguments match."""

    syscall: str
    action: str  # normalised action, or DENY
    args: tuple[ArgCond, ...] = ()
    # Where the rule came from ("FILE:LINE") and through which group.
    origin: str = field(default="", compare=False)
    via: str = field(default="", compare=False)


@dataclass(frozen=True)
class SeccompPolicy:
    """A validated, merged policy: the input of `sandbox.seccomp.compile_policy`."""

    default: str
    rules: tuple[Rule, ...]
    # False: the filter opens with a load the kernel cannot evaluate ahead, so
    # installing it skips the per-syscall "always allowed" precompute (about 30
    # us of the ~60 us install here) and every call runs the filter instead
    # (tens of ns): the right trade for a jail that lives for one connection.
    action_cache: bool = True
    source: Path | None = field(default=None, compare=False)
    groups: tuple[str, ...] = field(default=(), compare=False)
    includes: tuple[Path, ...] = field(default=(), compare=False)

    def rules_for(self, syscall: str) -> tuple[Rule, ...]:
        """The rules that mention `syscall` (empty: the default action applies)."""
        return tuple(r for r in self.rules if r.syscall == syscall)

    def syscalls(self) -> list[str]:
        """Every syscall with a rule, sorted."""
        return sorted({r.syscall for r in self.rules})

    def effective_action(self, rule: Rule) -> str:
        """The action of `rule` with DENY resolved."""
        return deny_action(self.default) if rule.action == DENY else rule.action

    def allowed(self) -> list[str]:
        """Syscalls allowed without conditions."""
        return sorted(r.syscall for r in self.rules if r.action == "allow" and not r.args)

    def conditional(self) -> dict[str, tuple[Rule, ...]]:
        """Syscalls whose fate depends on their arguments."""
        out: dict[str, list[Rule]] = {}
        for r in self.rules:
            if r.args:
                out.setdefault(r.syscall, []).append(r)
        return {k: tuple(v) for k, v in sorted(out.items())}

    def denied(self) -> list[str]:
        """Syscalls named in a deny list or given an unconditional non-allow action."""
        return sorted(r.syscall for r in self.rules if not r.args and r.action != "allow")

    def is_allowed(self, syscall: str) -> bool | None:
        """True: always allowed; None: depends on arguments; False: never."""
        rules = self.rules_for(syscall)
        if any(r.action == "allow" and not r.args for r in rules):
            return True
        if any(r.args for r in rules):
            return None
        if rules:
            return self.effective_action(rules[0]) == "allow"
        return self.default == "allow"

