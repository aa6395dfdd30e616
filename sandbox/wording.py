"""Phrases that `sandbox check`, `explain` and `learn` share: lists, sizes, conditions.

Every sentence those commands print is computed from the loaded policy and
JailSpec; these are its small parts.
"""

from __future__ import annotations

import resource
from collections.abc import Iterable

from sandbox.rules import ArgCond, Rule
from sandbox.spec import NOFILE_KEPT, JailSpec, NetworkMode

# Argument names for the syscalls that rules usually filter, for readable conditions.
ARG_NAMES: dict[str, tuple[str, ...]] = {
    "mmap": ("addr", "length", "prot", "flags", "fd", "offset"),
    "mprotect": ("addr", "length", "prot"),
    "pkey_mprotect": ("addr", "length", "prot", "pkey"),
    "socket": ("domain", "type", "protocol"),
    "socketpair": ("domain", "type", "protocol", "sv"),
    "ioctl": ("fd", "request", "arg"),
    "fcntl": ("fd", "cmd", "arg"),
    "open": ("path", "flags", "mode"),
    "openat": ("dirfd", "path", "flags", "mode"),
    "clone": ("flags", "stack", "parent_tid", "child_tid", "tls"),
    "prlimit64": ("pid", "resource", "new_limit", "old_limit"),
    "setrlimit": ("resource", "rlim"),
    "prctl": ("option", "arg2", "arg3", "arg4", "arg5"),
    "kill": ("pid", "sig"),
    "unshare": ("flags",),
    "sendto": ("fd", "buf", "len", "flags", "dest_addr", "addrlen"),
    "recvfrom": ("fd", "buf", "len", "flags", "src_addr", "addrlen"),
    "sendmsg": ("fd", "msg", "flags"),
    "recvmsg": ("fd", "msg", "flags"),
    "setsockopt": ("fd", "level", "optname", "optval", "optlen"),
}

_NETWORK_WORDS = {
    NetworkMode.SHARED_EMPTY: "the one shared, empty network namespace (no interfaces at all)",
    NetworkMode.NEW: "a new, empty network namespace (no interfaces at all)",
    NetworkMode.LOOPBACK: "a new network namespace with only the loopback interface",
    NetworkMode.NETNS: "the existing network namespace {path} (whatever interfaces it has)",
    NetworkMode.HOST: "the HOST's network namespace (no network isolation)",
}


def network_text(spec: JailSpec) -> str:
    """What the jail's network namespace is, as a noun phrase."""
    return _NETWORK_WORDS[spec.network].format(path=spec.netns_path)


def listing(names: Iterable[str], word: str = "and") -> str:
    """ "a, b and c" — lists in sentences."""
    items = list(names)
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


def size_text(n: int) -> str:
    """Bytes as 16M / 1G when exact, else the number."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def _describe(cond: ArgCond, name: str) -> str:
    """One comparison in words where the shape is common: "prot has no PROT_EXEC"."""
    if cond.op != "masked-eq" or not cond.mask_text:
        return cond.describe(name)
    bits = [b.strip() for b in cond.mask_text.split("|")]
    wanted = [b.strip() for b in str(cond.value_text).split("|")] if cond.value else []
    if not set(wanted) <= set(bits):  # not flags-shaped: say it as it is
        mask = f"({cond.mask_text})" if len(bits) > 1 else cond.mask_text
        return f"{name} & {mask} == {cond.value_text or cond.value}"
    parts = []
    if wanted:
        parts.append(f"has {listing(wanted)}")
    absent = [b for b in bits if b not in wanted]
    if absent:
        parts.append(
            f"has no {absent[0]}" if len(absent) == 1 else f"has none of {listing(absent, 'or')}"
        )
    text = f"{name} {' and '.join(parts)}"
    if "O_ACCMODE" in absent:
        text += " (read-only)"
    return text


def _cond_text(rule: Rule) -> str:
    """``prot has no PROT_EXEC and ...`` for one rule (args are ANDed)."""
    names = ARG_NAMES.get(rule.syscall, ())
    return " and ".join(
        _describe(c, names[c.arg] if c.arg < len(names) else f"arg{c.arg}") for c in rule.args
    )


def conds_text(rules: Iterable[Rule]) -> str:
    """Several rules are ORed."""
    return " or ".join(f"({_cond_text(r)})" if len(r.args) > 1 else _cond_text(r) for r in rules)


def rlimits_text(spec: JailSpec) -> str:
    """``nofile=64, as=1G``: the jail's resource limits."""
    parts = []
    for name, value in spec.rlimits:
        if value == NOFILE_KEPT:
            text = "kept (the fds passed in)"
        elif value == resource.RLIM_INFINITY:
            text = "unlimited"
        elif name in ("as", "data", "fsize", "stack", "memlock", "msgqueue"):
            text = size_text(value)
        else:
            text = str(value)
        parts.append(f"{name}={text}")
    return ", ".join(parts) or "none"


def binds_text(spec: JailSpec) -> str:
    """The bind mounts, each with where it appears and whether it is writable."""
    out = []
    for b in spec.binds:
        where = str(b.source) if b.source == b.target else f"{b.source} at {b.target}"
        out.append(f"{where} ({'writable' if b.writable else 'read-only'})")
    return ", ".join(out) or "none"
