"""Seccomp policy files: parse, resolve groups and includes, validate.

Everything is checked here, before any jail runs: a typo in a syscall name must
fail as ``FILE:LINE: unknown syscall 'opnat' (did you mean 'openat'?)`` at
start-up, not as a SIGSYS in production.  The result is a frozen, hashable
`SeccompPolicy` so that `sandbox.seccomp.compile_policy` can cache its BPF.

Format (see the header of ``policies/titus-worker.toml``)::

    [seccomp]
    default = "kill-process"
    include = ["other.toml"]
    groups = ["@basic-io"]
    allow = ["getpid"]
    deny = ["socket"]
    [[seccomp.rules]]
    syscall = "mmap"
    action = "allow"
    args = [{ arg = 2, op = "masked-eq", mask = "PROT_EXEC", value = 0 }]

Group files ``groups/<name>.toml`` define ``@<name>`` in a ``[group]`` table
(description, allow, groups, rules).
"""

from __future__ import annotations

import difflib
import errno
import functools
import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyseccomp

# ---------------------------------------------------------------------------
# Errors


class PolicyError(ValueError):
    """A policy or profile file is wrong; str() is ``FILE:LINE: message``."""

    def __init__(self, path: Path | str, line: int, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.message = message
        super().__init__(f"{path}:{line}: {message}")


def _suggest(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` or nothing: every error should point at the fix."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------
# Syscall names, per architecture

ARCHES: dict[str, int] = {"x86_64": pyseccomp.Arch.X86_64, "aarch64": pyseccomp.Arch.AARCH64}
# The highest syscall number worth probing: both arches end in the 450s today.
_MAX_SYSCALL_NR = 1024


def native_arch() -> str:
    """The name of the machine's arch, as used in `ARCHES`."""
    token = pyseccomp.system_arch()
    for name, value in ARCHES.items():
        if value == token:
            return name
    raise OSError(errno.ENOSYS, f"unsupported seccomp architecture 0x{token:x}")


def arch_token(arch: str | None) -> int:
    """libseccomp's token for an arch name (None = native)."""
    name = arch or native_arch()
    try:
        return ARCHES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}{_suggest(name, ARCHES)}; known: {', '.join(ARCHES)}"
        ) from None


@functools.cache
def syscall_table(arch: str) -> dict[int, str]:
    """number -> name for every syscall libseccomp knows on `arch` (a few ms, once)."""
    token = arch_token(arch)
    table: dict[int, str] = {}
    for nr in range(_MAX_SYSCALL_NR):
        try:
            table[nr] = pyseccomp.resolve_syscall(token, nr).decode()
        except ValueError:
            continue
    return table


@functools.cache
def known_syscalls() -> frozenset[str]:
    """Every syscall name that exists on at least one supported arch."""
    names: set[str] = set()
    for arch in ARCHES:
        names.update(syscall_table(arch).values())
    return frozenset(names)


def syscall_number(name: str, arch: str | None = None) -> int | None:
    """The syscall's number on `arch`, or None where it does not exist there."""
    nr = pyseccomp.resolve_syscall(arch_token(arch), name)
    return nr if nr >= 0 else None


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
            raise ValueError(f"unknown errno {code!r}{_suggest(code, errno.errorcode.values())}")
        if not 1 <= number <= 4095:
            raise ValueError(f"errno {number} is out of range 1..4095")
        return f"errno:{number}"
    choices = [*_FIXED_ACTIONS, "errno:EPERM"]
    raise ValueError(f"unknown action {text!r}{_suggest(text, choices)}")


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
# Argument filters and symbolic constants

OPS = ("==", "!=", "<", "<=", ">", ">=", "masked-eq")

# Only constants with the same value on x86_64 and aarch64: a policy is
# compiled for both, so an arch-dependent value would silently be wrong on one.
CONSTANTS: dict[str, int] = {
    # mmap/mprotect protection bits
    "PROT_NONE": 0x0,
    "PROT_READ": 0x1,
    "PROT_WRITE": 0x2,
    "PROT_EXEC": 0x4,
    "PROT_GROWSDOWN": 0x01000000,
    "PROT_GROWSUP": 0x02000000,
    # mmap flags
    "MAP_SHARED": 0x01,
    "MAP_PRIVATE": 0x02,
    "MAP_FIXED": 0x10,
    "MAP_ANONYMOUS": 0x20,
    "MAP_ANON": 0x20,
    "MAP_GROWSDOWN": 0x0100,
    "MAP_NORESERVE": 0x4000,
    "MAP_POPULATE": 0x8000,
    "MAP_STACK": 0x20000,
    "MAP_HUGETLB": 0x40000,
    "MAP_FIXED_NOREPLACE": 0x100000,
    # socket domains and types
    "AF_UNSPEC": 0,
    "AF_UNIX": 1,
    "AF_LOCAL": 1,
    "AF_INET": 2,
    "AF_INET6": 10,
    "AF_NETLINK": 16,
    "AF_PACKET": 17,
    "SOCK_STREAM": 1,
    "SOCK_DGRAM": 2,
    "SOCK_RAW": 3,
    "SOCK_SEQPACKET": 5,
    "SOCK_NONBLOCK": 0o4000,
    "SOCK_CLOEXEC": 0o2000000,
    # send/recv flags
    "MSG_PEEK": 0x2,
    "MSG_DONTWAIT": 0x40,
    "MSG_NOSIGNAL": 0x4000,
    "MSG_CMSG_CLOEXEC": 0x40000000,
    # ioctl requests (asm-generic values, shared by both arches)
    "TCGETS": 0x5401,
    "TIOCGWINSZ": 0x5413,
    "FIONREAD": 0x541B,
    "FIONBIO": 0x5421,
    "FIONCLEX": 0x5450,
    "FIOCLEX": 0x5451,
    # fcntl commands
    "F_DUPFD": 0,
    "F_GETFD": 1,
    "F_SETFD": 2,
    "F_GETFL": 3,
    "F_SETFL": 4,
    "F_GETLK": 5,
    "F_SETLK": 6,
    "F_SETLKW": 7,
    "F_DUPFD_CLOEXEC": 1030,
    "F_ADD_SEALS": 1033,
    "F_GET_SEALS": 1034,
    "FD_CLOEXEC": 1,
    # open flags (O_DIRECTORY, O_NOFOLLOW, O_DIRECT, O_LARGEFILE differ: not here)
    "O_RDONLY": 0,
    "O_WRONLY": 0o1,
    "O_RDWR": 0o2,
    "O_ACCMODE": 0o3,
    "O_CREAT": 0o100,
    "O_EXCL": 0o200,
    "O_NOCTTY": 0o400,
    "O_TRUNC": 0o1000,
    "O_APPEND": 0o2000,
    "O_NONBLOCK": 0o4000,
    "O_DSYNC": 0o10000,
    "O_SYNC": 0o4010000,
    "O_NOATIME": 0o1000000,
    "O_CLOEXEC": 0o2000000,
    "O_PATH": 0o10000000,
    "AT_FDCWD": -100,
    "AT_SYMLINK_NOFOLLOW": 0x100,
    "AT_EMPTY_PATH": 0x1000,
    # clone flags
    "CLONE_VM": 0x00000100,
    "CLONE_FS": 0x00000200,
    "CLONE_FILES": 0x00000400,
    "CLONE_SIGHAND": 0x00000800,
    "CLONE_PIDFD": 0x00001000,
    "CLONE_PTRACE": 0x00002000,
    "CLONE_VFORK": 0x00004000,
    "CLONE_PARENT": 0x00008000,
    "CLONE_THREAD": 0x00010000,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_SYSVSEM": 0x00040000,
    "CLONE_SETTLS": 0x00080000,
    "CLONE_PARENT_SETTID": 0x00100000,
    "CLONE_CHILD_CLEARTID": 0x00200000,
    "CLONE_UNTRACED": 0x00800000,
    "CLONE_CHILD_SETTID": 0x01000000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "CLONE_IO": 0x80000000,
    # prctl options
    "PR_SET_PDEATHSIG": 1,
    "PR_GET_DUMPABLE": 3,
    "PR_SET_NAME": 15,
    "PR_GET_NAME": 16,
    "PR_CAPBSET_READ": 23,
    # cp's reflink attempt, _IOW(0x94, 9, int) on both arches
    "FICLONE": 0x40049409,
}
_ARCH_DEPENDENT = {"O_DIRECTORY", "O_NOFOLLOW", "O_DIRECT", "O_LARGEFILE", "O_TMPFILE"}
_U64 = (1 << 64) - 1


def parse_value(value: object) -> int:
    """An int, or ``"PROT_READ|PROT_WRITE"``-style constants (and numbers) joined by '|'."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number or a constant name, not {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        number = 0
        for part in (p.strip() for p in value.split("|")):
            if part in CONSTANTS:
                number |= CONSTANTS[part] & _U64
            elif re.fullmatch(r"-?(0x[0-9a-fA-F]+|0o[0-7]+|[0-9]+)", part):
                number |= int(part, 0) & _U64
            elif part in _ARCH_DEPENDENT:
                raise ValueError(
                    f"constant {part!r} differs between x86_64 and aarch64; write a separate "
                    "policy per arch with the number"
                )
            else:
                raise ValueError(f"unknown constant {part!r}{_suggest(part, CONSTANTS)}")
    else:
        raise ValueError(f"expected a number or a constant name, not {value!r}")
    if not -(1 << 63) <= number <= _U64:
        raise ValueError(f"value {value!r} does not fit in 64 bits")
    return number & _U64


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


# ---------------------------------------------------------------------------
# Reading TOML with approximate line numbers


class SourceFile:
    """A TOML file's text and data; finds lines because tomllib gives none."""

    def __init__(self, path: Path, text: str, data: dict[str, Any]) -> None:
        self.path = path
        self.text = text
        self.lines = text.splitlines()
        self.data = data

    @classmethod
    def read(cls, path: Path | str) -> SourceFile:
        """Read and parse `path`; syntax errors become PolicyError with the line."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(path, 1, f"cannot read: {exc.strerror or exc}") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"\(at line (\d+)", str(exc))
            line = int(m.group(1)) if m else 1
            raise PolicyError(path, line, f"TOML syntax error: {exc}") from exc
        return cls(path, text, data)

    def error(self, line: int, message: str) -> PolicyError:
        """A PolicyError for this file."""
        return PolicyError(self.path, line, message)

    def find(self, pattern: str, start: int = 1, nth: int = 0) -> int | None:
        """Line (1-based) of the `nth` match of regex `pattern` at or after `start`."""
        rx = re.compile(pattern)
        for i in range(max(start, 1) - 1, len(self.lines)):
            if rx.search(self._code(self.lines[i])):
                if nth == 0:
                    return i + 1
                nth -= 1
        return None

    @staticmethod
    def _code(line: str) -> str:
        """The line without a trailing comment (a '#' outside quotes)."""
        quote = ""
        for i, ch in enumerate(line):
            if quote:
                if ch == quote:
                    quote = ""
            elif ch in "\"'":
                quote = ch
            elif ch == "#":
                return line[:i]
        return line

    def table_line(self, dotted: str, nth: int = 0) -> int | None:
        """Line of the ``[a.b]`` (or nth ``[[a.b]]``) header."""
        parts = r"\s*\.\s*".join(re.escape(p) for p in dotted.split("."))
        return self.find(rf"^\s*\[\[?\s*{parts}\s*\]\]?", nth=nth)

    def key_line(self, key: str, start: int = 1) -> int | None:
        """Line of ``key =`` at or after `start`."""
        return self.find(rf"(^|[{{,\s]){re.escape(key)}\s*=", start)

    def quoted_line(self, word: str, start: int = 1) -> int | None:
        """Line of ``"word"`` (or 'word') at or after `start`, else anywhere."""
        pattern = rf"[\"']{re.escape(word)}[\"']"
        return self.find(pattern, start) or self.find(pattern)

    def best(self, *candidates: int | None) -> int:
        """The first line found, else 1."""
        for c in candidates:
            if c:
                return c
        return 1


def check_keys(
    src: SourceFile, table: dict[str, Any], allowed: Iterable[str], where: str, start: int = 1
) -> None:
    """Unknown keys are errors: a misspelt option must not be silently ignored."""
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            table_name = f"{where}.{key}" if where else key
            line = src.best(src.key_line(key, start), src.table_line(table_name))
            place = f"in [{where}]" if where else "at top level"
            raise src.error(line, f"unknown key {key!r} {place}{_suggest(key, allowed)}")


# ---------------------------------------------------------------------------
# Search path for profiles and groups


def policy_search_path() -> list[Path]:
    """$SANDBOX_POLICY_PATH dirs, then the repo's policies/, then /etc/sandbox/policies."""
    dirs = [Path(p) for p in os.environ.get("SANDBOX_POLICY_PATH", "").split(":") if p]
    dirs.append(Path(__file__).resolve().parent.parent / "policies")
    dirs.append(Path("/etc/sandbox/policies"))
    return dirs


def group_dirs_for(path: Path) -> list[Path]:
    """Where groups are looked up for a file: groups/ beside it or its parent, then the path."""
    path = path.resolve()
    dirs = [path.parent / "groups", path.parent.parent / "groups"]
    dirs += [d / "groups" for d in policy_search_path()]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def available_groups(dirs: Iterable[Path]) -> list[str]:
    """Every ``@name`` that a group dir defines (for suggestions and listings)."""
    names: set[str] = set()
    for d in dirs:
        if d.is_dir():
            names.update(f"@{p.stem}" for p in d.glob("*.toml"))
    return sorted(names)


# ---------------------------------------------------------------------------
# Parsing [seccomp] and [group] tables

_SECCOMP_KEYS = ("default", "include", "groups", "allow", "deny", "rules")
_GROUP_KEYS = ("description", "allow", "groups", "rules")
_RULE_KEYS = ("syscall", "action", "args")
_ARG_KEYS = ("arg", "op", "value", "mask")
_GROUP_NAME = re.compile(r"^@[a-z0-9][a-z0-9_-]*$")


@dataclass
class _Entry:
    """One mention of a syscall, with where it came from (for conflict messages)."""

    rule: Rule
    src: SourceFile
    line: int

    @property
    def where(self) -> str:
        via = f" (via {self.rule.via})" if self.rule.via else ""
        return f"{self.src.path}:{self.line}{via}"


@dataclass
class _Collector:
    """Accumulates entries from a profile, its includes and its groups."""

    group_dirs: list[Path]
    entries: dict[str, list[_Entry]] = field(default_factory=dict)
    groups_used: list[str] = field(default_factory=list)
    includes: list[Path] = field(default_factory=list)
    group_stack: list[str] = field(default_factory=list)
    include_stack: list[Path] = field(default_factory=list)
    done_groups: set[str] = field(default_factory=set)
    done_includes: set[Path] = field(default_factory=set)

    def add(self, rule: Rule, src: SourceFile, line: int) -> None:
        self.entries.setdefault(rule.syscall, []).append(_Entry(rule, src, line))


def _list_of_str(src: SourceFile, table: dict[str, Any], key: str, start: int) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise src.error(src.best(src.key_line(key, start)), f"{key!r} must be a list of strings")
    return value


def _check_syscall(src: SourceFile, name: str, line: int) -> None:
    if name.startswith("@"):
        raise src.error(line, f"{name!r} is a group: list it in groups = [...]")
    if name not in known_syscalls():
        raise src.error(
            line,
            f"unknown syscall {name!r} (not known to libseccomp on x86_64 or aarch64)"
            f"{_suggest(name, known_syscalls())}",
        )


def _value_at(src: SourceFile, raw: object, start: int, fallback: int) -> int:
    """parse_value, with errors pointing at the line where the value is written."""
    try:
        return parse_value(raw)
    except ValueError as exc:
        line = src.best(
            src.quoted_line(str(raw), start) if isinstance(raw, str) else None, fallback
        )
        raise src.error(line, str(exc)) from None


def _parse_args(src: SourceFile, raw: object, rule_line: int) -> tuple[ArgCond, ...]:
    if not isinstance(raw, list):
        raise src.error(src.best(src.key_line("args", rule_line)), "'args' must be a list")
    conds = []
    for item in raw:
        line = src.best(src.key_line("args", rule_line), rule_line)
        if not isinstance(item, dict):
            raise src.error(line, "each of 'args' must be a table like { arg = 0, op = ..., }")
        for key in item:
            if key not in _ARG_KEYS:
                raise src.error(
                    src.best(src.key_line(key, rule_line), line),
                    f"unknown key {key!r} in an argument filter{_suggest(key, _ARG_KEYS)}",
                )
        arg = item.get("arg")
        if isinstance(arg, bool) or not isinstance(arg, int) or not 0 <= arg <= 5:
            raise src.error(line, f"'arg' must be an argument index 0..5, not {arg!r}")
        op = item.get("op", "==")
        if op not in OPS:
            raise src.error(
                src.best(src.quoted_line(str(op), rule_line), line),
                f"unknown op {op!r}{_suggest(str(op), OPS)}; ops: {', '.join(OPS)}",
            )
        if "value" not in item:
            raise src.error(line, "an argument filter needs a 'value'")
        value = _value_at(src, item["value"], rule_line, line)
        mask = _value_at(src, item["mask"], rule_line, line) if "mask" in item else None
        if op == "masked-eq" and mask is None:
            raise src.error(line, "op 'masked-eq' needs a 'mask'")
        if op != "masked-eq" and mask is not None:
            raise src.error(line, f"'mask' is only for op 'masked-eq', not {op!r}")
        conds.append(
            ArgCond(
                arg,
                op,
                value,
                mask,
                value_text=str(item["value"]),
                mask_text=str(item["mask"]) if mask is not None else "",
            )
        )
    return tuple(conds)


def _parse_rules(
    src: SourceFile, raw: object, table_name: str, via: str, default_action: str, col: _Collector
) -> None:
    if not isinstance(raw, list):
        raise src.error(src.best(src.key_line("rules")), "'rules' must be an array of tables")
    for i, item in enumerate(raw):
        header = src.table_line(f"{table_name}.rules", nth=i)
        if not isinstance(item, dict):
            raise src.error(src.best(header), "each rule must be a table")
        start = header or 1
        check_keys(src, item, _RULE_KEYS, f"{table_name}.rules", start)
        name = item.get("syscall")
        if not isinstance(name, str):
            raise src.error(src.best(header), 'a rule needs syscall = "name"')
        line = src.best(
            src.find(rf"syscall\s*=\s*[\"']{re.escape(name)}[\"']", start) if header else None,
            src.quoted_line(name, start),
            header,
        )
        _check_syscall(src, name, line)
        try:
            action = parse_action(item.get("action", default_action))
        except ValueError as exc:
            raise src.error(src.best(src.key_line("action", line), line), str(exc)) from None
        args = _parse_args(src, item.get("args", []), line)
        col.add(Rule(name, action, args, f"{src.path}:{line}", via), src, line)


def _parse_group_refs(src: SourceFile, names: list[str], start: int, col: _Collector) -> None:
    for name in names:
        line = src.best(src.quoted_line(name, start), start)
        _resolve_group(src, name, line, col)


def _resolve_group(src: SourceFile, name: str, line: int, col: _Collector) -> None:
    if not _GROUP_NAME.match(name):
        hint = f" (did you mean '@{name}'?)" if not name.startswith("@") else ""
        raise src.error(line, f"bad group name {name!r}: groups are named '@name'{hint}")
    if name in col.group_stack:
        chain = " -> ".join([*col.group_stack[col.group_stack.index(name) :], name])
        raise src.error(line, f"group cycle: {chain}")
    if name in col.done_groups:
        return
    path = next(
        (d / f"{name[1:]}.toml" for d in col.group_dirs if (d / f"{name[1:]}.toml").is_file()), None
    )
    if path is None:
        raise src.error(
            line, f"unknown group {name!r}{_suggest(name, available_groups(col.group_dirs))}"
        )
    gsrc = SourceFile.read(path)
    check_keys(gsrc, gsrc.data, ("group",), "")
    table = gsrc.data.get("group")
    if not isinstance(table, dict):
        raise gsrc.error(1, f"a group file needs a [group] table (it defines {name})")
    start = gsrc.best(gsrc.table_line("group"))
    check_keys(gsrc, table, _GROUP_KEYS, "group", start)
    col.group_stack.append(name)
    try:
        for sc in _list_of_str(gsrc, table, "allow", start):
            sline = gsrc.best(gsrc.quoted_line(sc, gsrc.key_line("allow", start) or start))
            _check_syscall(gsrc, sc, sline)
            col.add(Rule(sc, "allow", (), f"{gsrc.path}:{sline}", name), gsrc, sline)
        _parse_group_refs(gsrc, _list_of_str(gsrc, table, "groups", start), start, col)
        if "rules" in table:
            _parse_rules(gsrc, table["rules"], "group", name, "allow", col)
    finally:
        col.group_stack.pop()
    col.done_groups.add(name)
    col.groups_used.append(name)


def _parse_seccomp_table(src: SourceFile, col: _Collector, via: str = "") -> str | None:
    """Collect the [seccomp] table of `src` (and its includes); return its default."""
    table = src.data.get("seccomp")
    if table is None:
        return None
    start = src.best(src.table_line("seccomp"))
    if not isinstance(table, dict):
        raise src.error(start, "[seccomp] must be a table")
    check_keys(src, table, _SECCOMP_KEYS, "seccomp", start)
    default = None
    if "default" in table:
        try:
            default = parse_action(table["default"])
        except ValueError as exc:
            raise src.error(src.best(src.key_line("default", start)), str(exc)) from None

    for inc in _list_of_str(src, table, "include", start):
        line = src.best(src.quoted_line(inc, src.key_line("include", start) or start))
        path = (src.path.parent / inc).resolve()
        if path in col.include_stack:
            chain = " -> ".join(str(p) for p in [*col.include_stack, path])
            raise src.error(line, f"include cycle: {chain}")
        if path in col.done_includes:
            continue
        if not path.is_file():
            raise src.error(line, f"included file {inc!r} not found ({path})")
        isrc = SourceFile.read(path)
        check_keys(isrc, isrc.data, ("profile", "jail", "seccomp"), "")
        col.include_stack.append(path)
        try:
            _parse_seccomp_table(isrc, col, via=f"include {inc}")
        finally:
            col.include_stack.pop()
        col.done_includes.add(path)
        col.includes.append(path)

    allow_start = src.key_line("allow", start) or start
    for name in _list_of_str(src, table, "allow", start):
        line = src.best(src.quoted_line(name, allow_start))
        _check_syscall(src, name, line)
        col.add(Rule(name, "allow", (), f"{src.path}:{line}", via), src, line)
    deny_start = src.key_line("deny", start) or start
    for name in _list_of_str(src, table, "deny", start):
        line = src.best(src.quoted_line(name, deny_start))
        _check_syscall(src, name, line)
        col.add(Rule(name, DENY, (), f"{src.path}:{line}", via), src, line)
    _parse_group_refs(src, _list_of_str(src, table, "groups", start), start, col)
    if "rules" in table:
        _parse_rules(src, table["rules"], "seccomp", via, "allow", col)
    return default


def _merge(entries: list[_Entry], default: str, top: Path) -> list[Rule]:
    """Check one syscall's entries for conflicts; return its distinct rules.

    The error is reported at the place in the profile itself when one of the
    two is there (that is the file the operator is editing), else the later one.
    """

    def act(e: _Entry) -> str:
        return deny_action(default) if e.rule.action == DENY else e.rule.action

    def fail(a: _Entry, b: _Entry, message: str) -> PolicyError:
        here = a if a.src.path == top and b.src.path != top else b
        return here.src.error(here.line, message)

    first = entries[0]
    for e in entries[1:]:
        a, b = first, e
        name = e.rule.syscall
        denied = [x for x in (a, b) if x.rule.action == DENY]
        allowed = [x for x in (a, b) if x.rule.action == "allow"]
        if denied and allowed:
            raise fail(
                a,
                b,
                f"conflict: {name!r} is allowed at {allowed[0].where} "
                f"and denied at {denied[0].where}",
            )
        # Argument rules may differ in action (socket: AF_UNIX refused with an errno,
        # AF_INET allowed); whatever has no argument filter has one action only.
        if act(a) != act(b) and not (a.rule.args and b.rule.args):
            raise fail(
                a,
                b,
                f"conflict: {name!r} has action {action_label(act(a))} at {a.where} "
                f"and {action_label(act(b))} at {b.where}",
            )
        if bool(a.rule.args) != bool(b.rule.args):
            plain, cond = (a, b) if not a.rule.args else (b, a)
            what = "allowed" if act(plain) == "allow" else f"set to {action_label(act(plain))}"
            raise fail(
                a,
                b,
                f"conflict: {name!r} is {what} unconditionally at {plain.where} "
                f"and also has argument rules at {cond.where}",
            )
    out: list[Rule] = []
    for e in entries:
        if e.rule not in out:
            out.append(e.rule)
    return out


def parse_policy(src: SourceFile, *, group_dirs: list[Path] | None = None) -> SeccompPolicy | None:
    """The validated policy of a profile file's [seccomp] table, or None if it has none."""
    if "seccomp" not in src.data:
        return None
    col = _Collector(group_dirs if group_dirs is not None else group_dirs_for(src.path))
    col.include_stack.append(src.path.resolve())
    default = _parse_seccomp_table(src, col) or "kill-process"
    rules: list[Rule] = []
    for name in sorted(col.entries):
        rules.extend(_merge(col.entries[name], default, src.path))
    start = src.best(src.table_line("seccomp"))
    if default == "allow" and not any(r.action != "allow" for r in rules):
        raise src.error(
            src.best(src.key_line("default", start), start),
            'default = "allow" needs explicit deny rules (deny = [...] or rules with '
            "another action); otherwise the filter does nothing",
        )
    return SeccompPolicy(
        default=default,
        rules=tuple(rules),
        source=src.path,
        groups=tuple(col.groups_used),
        includes=tuple(col.includes),
    )


def load_policy(path: Path | str) -> SeccompPolicy:
    """Load the [seccomp] part of a profile or policy file."""
    src = SourceFile.read(path)
    check_keys(src, src.data, ("profile", "jail", "seccomp"), "")
    policy = parse_policy(src)
    if policy is None:
        raise src.error(1, "no [seccomp] table")
    return policy
