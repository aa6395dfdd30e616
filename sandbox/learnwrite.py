"""The profile `sandbox learn` writes: the base profile's own text, plus what was new.

Why text and not a regenerated file: the base's groups, comments and layout
are what a reviewer knows; a learned profile that keeps them shows only the
additions, each on its own line with a comment naming the process that made
the call and the call itself.  Argument rules are kept: socket is added for
the families seen (never outright), ioctl for the requests, fcntl for the
commands, prctl for the options; a syscall the base already filters by its
arguments gets rules of the same shape with the values seen.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sandbox.callwatch import Learned, Seen
from sandbox.constants import CONSTANTS
from sandbox.rules import ArgCond, SeccompPolicy
from sandbox.tomlsource import without_comment

# The argument that says what a call is for: a rule per value seen.
KEY_ARGS = {"socket": 0, "ioctl": 1, "fcntl": 1, "prctl": 0}
_COMPLEMENT = {"==": "!=", "!=": "==", "<": ">=", ">=": "<", "<=": ">", ">": "<="}
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class Addition:
    """One new allowance: outright (no conds) or one argument rule."""

    syscall: str
    conds: tuple[ArgCond, ...]
    comment: str


def _value_text(value: int, like: str = "") -> str:
    """A value as a policy writes it: constant names where they say it exactly."""
    prefix = like.split("_", 1)[0] + "_" if "_" in like else ""
    names = [n for n, v in CONSTANTS.items() if v == value and (v or prefix)]
    for name in names:
        if not prefix or name.startswith(prefix):
            return name
    if prefix and value:  # flags: A|B from the same family of names, if they add up
        parts = [n for n, v in CONSTANTS.items() if n.startswith(prefix) and v and
                 value & v == v and bin(v).count("1") == 1]
        total = 0
        chosen = []
        for n in parts:
            if not total & CONSTANTS[n]:
                chosen.append(n)
                total |= CONSTANTS[n]
        if total == value:
            return "|".join(chosen)
    return hex(value) if value > 9 else str(value)


def _where(seen: Seen, count: int = 1) -> str:
    """`learned: process 3 (ls): socket(AF_UNIX, ...), 4 calls` for a comment."""
    text = seen.text.replace("\n", " ")
    if len(text) > 72:
        text = text[:69] + "..."
    times = f", {count} calls" if count > 1 else ""
    return f"learned: {seen.who}: {text}{times}"


def additions(base: SeccompPolicy | None, calls: Iterable[Learned]) -> list[Addition]:
    """What to add to `base` so that every call in `calls` is allowed, rules kept."""
    out: list[Addition] = []
    for learned in sorted(calls, key=lambda c: c.name):
        name = learned.name
        shaped = [r for r in (base.rules_for(name) if base else ()) if r.args
                  and r.action == "allow"]
        if name in KEY_ARGS and all(c.arg == KEY_ARGS[name] and c.op == "=="
                                    for r in shaped for c in r.args):
            i = KEY_ARGS[name]
            mask = 0xFFFFFFFF if name == "ioctl" else _U64
            like = {"socket": "AF_", "fcntl": "F_", "prctl": "PR_"}.get(name, "")
            firsts: dict[int, Seen] = {}
            for seen in learned.examples:
                firsts.setdefault(seen.args[i] & mask, seen)
            for v, seen in sorted(firsts.items()):
                cond = ArgCond(i, "==", v, value_text=_value_text(v, like))
                out.append(Addition(name, (cond,), _where(seen)))
        elif shaped:
            out += _same_shape(name, shaped[0].args, learned)
        else:
            out.append(Addition(name, (), _where(learned.first, learned.count)))
    return out


def _same_shape(name: str, shape: tuple[ArgCond, ...], learned: Learned) -> list[Addition]:
    """Rules like the base's for `name`, with the values seen (masked-eq), or the
    complement of the base's condition (other ops: the values are pointers or sizes)."""
    if any(c.op != "masked-eq" for c in shape):
        conds = tuple(ArgCond(c.arg, _COMPLEMENT[c.op], c.value, None, c.value_text)
                      for c in shape if c.op != "masked-eq")[:1]
        return [Addition(name, conds, _where(learned.first, learned.count)
                         + " (any other value)")]
    firsts: dict[tuple[ArgCond, ...], Seen] = {}
    for seen in learned.examples:
        conds = tuple(ArgCond(c.arg, "masked-eq", seen.args[c.arg] & (c.mask or 0), c.mask,
                              _value_text(seen.args[c.arg] & (c.mask or 0), c.mask_text),
                              c.mask_text) for c in shape)
        firsts.setdefault(conds, seen)
    return [Addition(name, conds, _where(seen)) for conds, seen in firsts.items()]


# ---------------------------------------------------------------------------
# Into the base profile's text


def _toml(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _cond_toml(c: ArgCond) -> str:
    parts = [f"arg = {c.arg}", f"op = {_toml(c.op)}"]
    if c.mask is not None:
        parts.append(f"mask = {_toml(c.mask_text or hex(c.mask))}")
    parts.append(f"value = {_toml(c.value_text or hex(c.value))}")
    return "{ " + ", ".join(parts) + " }"


def _comment(text: str) -> str:
    return text.replace("\n", " ")


_HEADER = re.compile(r"^\s*\[")
_SECCOMP = re.compile(r"^\s*\[seccomp\]\s*(#.*)?$")
_ALLOW = re.compile(r"^(\s*)allow\s*=\s*\[")


def extend(text: str, adds: list[Addition], base_dir: Path | None = None) -> str:
    """`text` (a profile) with `adds` in it: outright allowances in its [seccomp] allow
    list, argument rules as [[seccomp.rules]] at the end.  `base_dir`: where the
    base profile lives, to make its ./relative bind sources absolute."""
    lines = text.splitlines()
    if base_dir is not None:
        lines = [re.sub(r'"(\.\.?/[^"]*)"',
                        lambda m: _toml(str((base_dir / m.group(1)).resolve())), ln)
                 for ln in lines]
    plain = [a for a in adds if not a.conds]
    new_entries = [f'    {_toml(a.syscall)},  # {_comment(a.comment)}' for a in plain]
    if new_entries:
        lines = _add_to_allow(lines, new_entries)
    for a in (a for a in adds if a.conds):
        lines += ["", "[[seccomp.rules]]", f"syscall = {_toml(a.syscall)}  # {_comment(a.comment)}",
                  "args = [" + ", ".join(_cond_toml(c) for c in a.conds) + "]"]
    return "\n".join(lines) + "\n"


def _add_to_allow(lines: list[str], entries: list[str]) -> list[str]:
    start = next((i for i, ln in enumerate(lines) if _SECCOMP.match(ln)), None)
    if start is None:
        return [*lines, "", "[seccomp]", 'default = "kill-process"', "allow = [", *entries, "]"]
    end = next((i for i in range(start + 1, len(lines)) if _HEADER.match(lines[i])), len(lines))
    for i in range(start + 1, end):
        m = _ALLOW.match(lines[i])
        if not m:
            continue
        code = without_comment(lines[i])
        if "]" in code[code.index("[") :]:  # allow = ["a", "b"] on one line
            inner = code[code.index("[") + 1 : code.rindex("]")].strip().rstrip(",")
            tail = lines[i][len(code):]
            first = f"{m.group(1)}allow = [" + (f" {inner}," if inner else "") + tail
            return [*lines[:i], first.rstrip(), *entries, f"{m.group(1)}]", *lines[i + 1 :]]
        close = next(j for j in range(i + 1, end)
                     if without_comment(lines[j]).strip().startswith("]"))
        return [*lines[:close], *entries, *lines[close:]]
    return [*lines[: start + 1], "allow = [", *entries, "]", *lines[start + 1 :]]
