"""Seccomp policy files: parse, resolve groups and includes, validate.

Everything is checked here, before any jail runs: a typo in a syscall name must
fail as ``FILE:LINE: unknown syscall 'opnat' (did you mean 'openat'?)`` at
start-up, not as a SIGSYS in production.  The result is a frozen, hashable
`SeccompPolicy` so that `sandbox.seccomp.compile_policy` can cache its BPF.

Format (documented in docs/sandbox.md)::

    [seccomp]
    default = "kill-process"
    include = ["other.toml"]
    groups = ["@basic-io"]
    allow = ["getpid"]
    deny = ["socket"]
    action_cache = true
    [[seccomp.rules]]
    syscall = "mmap"
    action = "allow"
    args = [{ arg = 2, op = "masked-eq", mask = "PROT_EXEC", value = 0 }]

Group files ``groups/<name>.toml`` define ``@<name>`` in a ``[group]`` table
(description, allow, groups, rules).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.constants import parse_value
from sandbox.errors import PolicyError, suggest
from sandbox.rules import (
    DENY,
    OPS,
    ArgCond,
    Rule,
    SeccompPolicy,
    action_label,
    deny_action,
    parse_action,
)
from sandbox.syscalls import known_syscalls
from sandbox.tomlsource import SourceFile, check_keys

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

_SECCOMP_KEYS = ("default", "action_cache", "include", "groups", "allow", "deny", "rules")
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
            f"{suggest(name, known_syscalls())}",
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
                    f"unknown key {key!r} in an argument filter{suggest(key, _ARG_KEYS)}",
                )
        arg = item.get("arg")
        if isinstance(arg, bool) or not isinstance(arg, int) or not 0 <= arg <= 5:
            raise src.error(line, f"'arg' must be an argument index 0..5, not {arg!r}")
        op = item.get("op", "==")
        if op not in OPS:
            raise src.error(
                src.best(src.quoted_line(str(op), rule_line), line),
                f"unknown op {op!r}{suggest(str(op), OPS)}; ops: {', '.join(OPS)}",
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
            line, f"unknown group {name!r}{suggest(name, available_groups(col.group_dirs))}"
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
    action_cache = src.data["seccomp"].get("action_cache", True)
    if not isinstance(action_cache, bool):
        raise src.error(src.best(src.key_line("action_cache", start), start),
                        f"action_cache must be true or false, not {action_cache!r}")
    if default == "allow" and not any(r.action != "allow" for r in rules):
        raise src.error(
            src.best(src.key_line("default", start), start),
            'default = "allow" needs explicit deny rules (deny = [...] or rules with '
            "another action); otherwise the filter does nothing",
        )
    return SeccompPolicy(
        default=default,
        rules=tuple(rules),
        action_cache=action_cache,
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
