"""Human-readable views of a profile: `sandbox check` (summary), `sandbox explain`, `learn`.

Every sentence is computed from the loaded policy and JailSpec, never canned:
an operator who edits a profile must see the consequence in `explain`.
"""

from __future__ import annotations

import json
import resource
from collections.abc import Iterable

from sandbox.policy import (
    ARCHES,
    ArgCond,
    Rule,
    SeccompPolicy,
    action_label,
    known_syscalls,
    native_arch,
    syscall_number,
)
from sandbox.profile import Profile
from sandbox.seccomp import compile_policy, instruction_count
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
}

_NETWORK_WORDS = {
    NetworkMode.SHARED_EMPTY: "the one shared, empty network namespace (no interfaces at all)",
    NetworkMode.NEW: "a new, empty network namespace (no interfaces at all)",
    NetworkMode.LOOPBACK: "a new network namespace with only the loopback interface",
    NetworkMode.NETNS: "the existing network namespace {path} (whatever interfaces it has)",
    NetworkMode.HOST: "the HOST's network namespace (no network isolation)",
}


def _network_words(spec: JailSpec) -> str:
    return _NETWORK_WORDS[spec.network].format(path=spec.netns_path)


# ---------------------------------------------------------------------------
# Small helpers


def _join(names: Iterable[str], word: str = "and") -> str:
    """ "a, b and c" — lists in sentences."""
    items = list(names)
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


def _size(n: int) -> str:
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
        parts.append(f"has {_join(wanted)}")
    absent = [b for b in bits if b not in wanted]
    if absent:
        parts.append(
            f"has no {absent[0]}" if len(absent) == 1 else f"has none of {_join(absent, 'or')}"
        )
    text = f"{name} {' and '.join(parts)}"
    if "O_ACCMODE" in absent:
        text += " (read-only)"
    return text


def _cond(rule: Rule) -> str:
    """``prot has no PROT_EXEC and ...`` for one rule (args are ANDed)."""
    names = ARG_NAMES.get(rule.syscall, ())
    return " and ".join(
        _describe(c, names[c.arg] if c.arg < len(names) else f"arg{c.arg}") for c in rule.args
    )


def _conds(rules: Iterable[Rule]) -> str:
    """Several rules are ORed."""
    return " or ".join(f"({_cond(r)})" if len(r.args) > 1 else _cond(r) for r in rules)


def _exists(name: str) -> bool:
    return syscall_number(name, native_arch()) is not None


class _View:
    """The policy seen from one question: is this syscall allowed here?"""

    def __init__(self, policy: SeccompPolicy | None) -> None:
        self.policy = policy

    def state(self, name: str) -> str:
        """'allowed', 'conditional', or 'forbidden' (any other action, or the default)."""
        if self.policy is None:
            return "allowed"
        verdict = self.policy.is_allowed(name)
        if verdict is None:
            return "conditional"
        return "allowed" if verdict else "forbidden"

    def split(self, names: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
        """(allowed, conditional, forbidden) among names that exist on this arch."""
        out: tuple[list[str], list[str], list[str]] = ([], [], [])
        for n in names:
            if not _exists(n):
                continue
            index = {"allowed": 0, "conditional": 1, "forbidden": 2}[self.state(n)]
            out[index].append(n)
        return out

    def allow_rules(self, name: str) -> list[Rule]:
        """The argument rules under which `name` is allowed."""
        if self.policy is None:
            return []
        return [r for r in self.policy.rules_for(name) if r.args and r.action == "allow"]

    def action(self, name: str) -> str:
        """The readable action for a syscall without argument rules."""
        if self.policy is None:
            return "allow"
        rules = [r for r in self.policy.rules_for(name) if not r.args]
        if rules:
            return action_label(self.policy.effective_action(rules[0]))
        return action_label(self.policy.default)


# ---------------------------------------------------------------------------
# sandbox check


def _arch_counts(policy: SeccompPolicy, arch: str) -> str:
    allowed = [n for n in policy.allowed() if syscall_number(n, arch) is not None]
    conditional = [
        n
        for n, rules in policy.conditional().items()
        if syscall_number(n, arch) is not None and any(r.action == "allow" for r in rules)
    ]
    try:
        size = f"; BPF {instruction_count(compile_policy(policy, arch))} instructions"
    except OSError as exc:
        size = f"; does not compile: {exc}"
    return (
        f"{arch}: {len(allowed) + len(conditional)} syscalls allowed "
        f"({len(allowed)} unconditionally, {len(conditional)} with argument filters){size}"
    )


def _rlimits(spec: JailSpec) -> str:
    parts = []
    for name, value in spec.rlimits:
        if value == NOFILE_KEPT:
            text = "kept (the fds passed in)"
        elif value == resource.RLIM_INFINITY:
            text = "unlimited"
        elif name in ("as", "data", "fsize", "stack", "memlock", "msgqueue"):
            text = _size(value)
        else:
            text = str(value)
        parts.append(f"{name}={text}")
    return ", ".join(parts) or "none"


def _binds(spec: JailSpec) -> str:
    out = []
    for b in spec.binds:
        where = str(b.source) if b.source == b.target else f"{b.source} at {b.target}"
        out.append(f"{where} ({'writable' if b.writable else 'read-only'})")
    return ", ".join(out) or "none"


def summary(profile: Profile) -> str:
    """The facts of a profile in a compact listing, for `sandbox check`."""
    spec, policy = profile.spec, profile.policy
    lines = [f"profile {profile.name} ({profile.path})"]
    if profile.description:
        lines.append(f"  {profile.description}")
    last_uid = spec.uid_range.first + spec.uid_range.count - 1
    tmpfs = (
        f"{spec.writable_tmpfs} ({_size(spec.writable_tmpfs_size)})"
        if spec.writable_tmpfs
        else "none"
    )
    lines += [
        "jail:",
        f"  network: {spec.network_label}; hostname: {spec.hostname}",
        f"  root: {'empty, read-only' if spec.empty_root else 'the host root'}; "
        f"/proc: {'mounted' if spec.mount_proc else 'not mounted'}",
        f"  binds: {_binds(spec)}",
        f"  writable tmpfs: {tmpfs}",
        f"  uids: {spec.uid_range.first}-{last_uid} ({spec.uid_range.count})",
        f"  no_new_privs: {_yes(spec.no_new_privs)}; dumpable: {_yes(spec.dumpable)}; "
        f"capabilities dropped: {_yes(spec.drop_capabilities)}; landlock: {_yes(spec.landlock)}",
        f"  rlimits: {_rlimits(spec)}",
    ]
    if policy is None:
        lines.append("seccomp: NONE (no [seccomp] table: every syscall is allowed)")
        return "\n".join(lines) + "\n"
    lines += ["seccomp:", f"  default action: {action_label(policy.default)}"]
    if policy.groups:
        lines.append(f"  groups: {' '.join(policy.groups)}")
    if policy.includes:
        lines.append(f"  includes: {' '.join(str(p) for p in policy.includes)}")
    for arch in ARCHES:
        lines.append(f"  {_arch_counts(policy, arch)}")
    cond = policy.conditional()
    if cond:
        lines.append("  rules with argument filters:")
        width = max(len(n) for n in cond)
        for name, rules in cond.items():
            by_action: dict[str, list[Rule]] = {}
            for r in rules:
                by_action.setdefault(policy.effective_action(r), []).append(r)
            for action, rs in by_action.items():
                lines.append(f"    {name:<{width}}  {action_label(action)} if {_conds(rs)}")
    others = [r for r in policy.rules if not r.args and r.action not in ("allow", "deny")]
    if others:
        lines.append("  other actions:")
        for r in others:
            lines.append(f"    {r.syscall}: {action_label(r.action)}")
    denied = [r.syscall for r in policy.rules if r.action == "deny"]
    if denied:
        deny_label = action_label(policy.effective_action(Rule("", "deny")))
        lines.append(f"  explicitly denied ({deny_label}): {' '.join(denied)}")
    lines.append(f"  allowed: {' '.join(policy.allowed())}")
    return "\n".join(lines) + "\n"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


# ---------------------------------------------------------------------------
# sandbox explain


def _not_allowed(names: list[str]) -> str:
    return f"{_join(names)} {'is' if len(names) == 1 else 'are'} not allowed"


def _filesystem(spec: JailSpec) -> str:
    if not spec.empty_root:
        return "it sees the host's whole filesystem (no empty root)"
    if not spec.binds and not spec.writable_tmpfs:
        return "there is no filesystem (empty read-only root)"
    seen = []
    if spec.binds:
        seen.append(_binds(spec))
    if spec.writable_tmpfs:
        seen.append(
            f"a writable tmpfs at {spec.writable_tmpfs} ({_size(spec.writable_tmpfs_size)})"
        )
    text = f"its otherwise empty read-only root holds only {'; and '.join(seen)}"
    if spec.landlock:
        text += ", and landlock denies any other filesystem access"
    return text


def _files(view: _View, spec: JailSpec) -> str:
    allowed, conditional, forbidden = view.split(
        ["open", "openat", "openat2", "creat", "open_by_handle_at"]
    )
    fs = _filesystem(spec)
    if not allowed and not conditional:
        return f"It cannot open files: {fs} and {_not_allowed(forbidden)}."
    parts = [f"{n} only when {_conds(view.allow_rules(n))}" for n in conditional]
    how = _join([*(f"{n} is allowed" for n in allowed), *parts])
    return f"It can open files ({how}), but {fs}."


def _network(view: _View, spec: JailSpec) -> str:
    _, conditional, forbidden = view.split(["socket", "socketpair"])
    net = f"Its network is {_network_words(spec)}."
    if "socket" in forbidden:
        client = view.split(["connect", "bind", "listen", "accept", "accept4"])
        extra = f" ({_not_allowed(client[2])} either)" if client[2] else ""
        io = [
            n for n in ("recvmsg", "sendmsg", "recvfrom", "sendto") if view.state(n) != "forbidden"
        ]
        given = (
            f"it can only use sockets it is given ({_join(io)})"
            if io
            else "it cannot use sockets at all"
        )
        return f"{net} It cannot create sockets: socket is not allowed{extra}, so {given}."
    if "socket" in conditional:
        return f"{net} It can create sockets only when {_conds(view.allow_rules('socket'))}."
    return f"{net} It can create sockets of any family (socket is allowed)."


def _processes(view: _View, spec: JailSpec) -> str:
    allowed, conditional, forbidden = view.split(["fork", "vfork", "clone", "clone3"])
    nproc = dict(spec.rlimits).get("nproc")
    limit = f", and its nproc limit is {nproc}" if nproc is not None else ""
    if not allowed and not conditional:
        text = f"It cannot start processes or threads: {_not_allowed(forbidden)}{limit}."
    elif conditional and not allowed:
        ways = "; ".join(f"{n} only when {_conds(view.allow_rules(n))}" for n in conditional)
        refused = [
            f"{n} fails with {view.action(n)}"
            for n in forbidden
            if view.action(n).startswith("errno")
        ]
        refused_text = f" ({_join(refused)})" if refused else ""
        text = f"It can start threads but not processes: {ways}{refused_text}{limit}."
    else:
        text = f"It can start processes ({_join(allowed)} allowed){limit}."
    exe_allowed, exe_cond, exe_forbidden = view.split(["execve", "execveat"])
    if not exe_allowed and not exe_cond:
        text += f" It cannot run other programs: {_not_allowed(exe_forbidden)}."
    else:
        text += (
            f" It can execute programs ({_join(exe_allowed + exe_cond)}), only those inside "
            "its root, and no_new_privs "
            + ("keeps them from gaining privileges." if spec.no_new_privs else "is NOT set.")
        )
    return text


def _memory(view: _View) -> str:
    names = ["mmap", "mprotect"]
    states = {n: view.state(n) for n in names}
    pkey = view.state("pkey_mprotect")
    if all(s == "conditional" for s in states.values()):
        conds = "; ".join(f"{n} only when {_conds(view.allow_rules(n))}" for n in names)
        exec_bit = all("PROT_EXEC" in _conds(view.allow_rules(n)) for n in names)
        head = (
            "It cannot make memory executable"
            if exec_bit and pkey == "forbidden"
            else "Its memory mappings are restricted"
        )
        return f"{head}: {conds}" + (
            " (pkey_mprotect is not allowed)." if pkey == "forbidden" else "."
        )
    if all(s == "allowed" for s in states.values()):
        return (
            "It can map executable memory (mmap and mprotect are unrestricted), as a "
            "dynamically linked program that is exec'd must."
        )
    return "Memory: " + "; ".join(f"{n} is {s}" for n, s in states.items()) + "."


def _others(view: _View, spec: JailSpec) -> list[str]:
    out = []
    _, _, forbidden = view.split(
        [
            "kill",
            "tkill",
            "tgkill",
            "rt_sigqueueinfo",
            "pidfd_send_signal",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
        ]
    )
    if forbidden:
        dump = "; it is not dumpable either" if not spec.dumpable else ""
        out.append(
            f"It cannot signal, trace or read the memory of other processes: "
            f"{_not_allowed(forbidden)}{dump}."
        )
    allowed_ns, cond_ns, forbidden_ns = view.split(
        ["unshare", "setns", "mount", "umount2", "pivot_root", "chroot"]
    )
    if forbidden_ns and not allowed_ns and not cond_ns:
        out.append(
            f"It cannot create or join namespaces or change mounts: {_not_allowed(forbidden_ns)}."
        )
    elif allowed_ns or cond_ns:
        out.append(f"Careful: {_join(allowed_ns + cond_ns)} may be used.")
    lim_allowed, lim_cond, lim_forbidden = view.split(["setrlimit", "prlimit64"])
    limits = _rlimits(spec)
    if not lim_allowed and not lim_cond:
        out.append(f"It cannot change its limits ({limits}): {_not_allowed(lim_forbidden)}.")
    elif lim_cond and not lim_allowed:
        ways = "; ".join(f"{n} only when {_conds(view.allow_rules(n))}" for n in lim_cond)
        out.append(f"Its limits are {limits}; it may read them ({ways}) but not raise them.")
    else:
        out.append(f"Its limits are {limits}, and it may change them within the hard limits.")
    id_allowed, _, _ = view.split(
        ["setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "capset"]
    )
    caps = "all capabilities dropped" if spec.drop_capabilities else "capabilities KEPT"
    nnp = "no_new_privs set" if spec.no_new_privs else "no_new_privs NOT set"
    first, count = spec.uid_range.first, spec.uid_range.count
    uids = f"{first}" if count == 1 else f"one of {first}-{first + count - 1}"
    who = (
        f"It runs as an unprivileged uid ({uids}) in its own user namespace, with {caps} and {nnp}"
    )
    if id_allowed:
        who += f"; it may call {_join(id_allowed)}"
    out.append(who + ".")
    return out


def _can(view: _View, policy: SeccompPolicy) -> str:
    plain = [n for n in policy.allowed() if _exists(n)]
    cond = [
        f"{n} only when {_conds(view.allow_rules(n))}"
        for n in policy.conditional()
        if _exists(n) and view.allow_rules(n)
    ]
    text = f"What it can do, in full ({native_arch()}): {_join(plain)}"
    if cond:
        text += f"; and {'; '.join(cond)}"
    return text + "."


def _violations(policy: SeccompPolicy) -> str:
    d = policy.default
    if d == "kill-process":
        return (
            "Any other system call kills the whole process with SIGSYS (default "
            "kill-process), and the launcher reports it as a policy violation."
        )
    if d == "kill-thread":
        return "Any other system call kills the calling thread with SIGSYS (kill-thread)."
    if d == "trap":
        return "Any other system call raises SIGSYS in the process (trap), which may catch it."
    if d == "log":
        return (
            "Any other system call is ALLOWED and logged to the kernel audit log "
            "(default log: a learning policy, not a sandbox)."
        )
    if d == "allow":
        denied = [r.syscall for r in policy.rules if not r.args and r.action != "allow"]
        return (
            f"Every system call is allowed except {len(denied)} denied ones "
            f"({_join(denied)}): a deny-list, weaker than an allowlist."
        )
    return (
        f"Any other system call fails with {action_label(d).split(':', 1)[1]} ({action_label(d)})."
    )


def explain(profile: Profile) -> str:
    """What the jail allows, in sentences, for `sandbox explain`."""
    spec, policy = profile.spec, profile.policy
    head = f"Profile {profile.name}" + (f": {profile.description}" if profile.description else "")
    paras = [head.rstrip(".") + "."]
    if policy is None:
        paras.append(
            "It has NO seccomp filter: every system call is allowed; only the namespaces, "
            f"mounts and limits confine it. {_filesystem(spec).capitalize()}. "
            f"Its network is {_network_words(spec)}."
        )
        return "\n\n".join(paras) + "\n"
    view = _View(policy)
    paras += [
        _files(view, spec),
        _network(view, spec),
        _processes(view, spec),
        _memory(view),
        *_others(view, spec),
        _violations(policy),
        _can(view, policy),
    ]
    return "\n\n".join(paras) + "\n"


# ---------------------------------------------------------------------------
# sandbox learn


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON escapes are valid TOML)."""
    return json.dumps(value, ensure_ascii=False)


def _jail_toml(spec: JailSpec) -> list[str]:
    lines = [
        "[jail]",
        f"network = {_toml_str(spec.network_label)}",
        f"hostname = {_toml_str(spec.hostname)}",
        f"empty_root = {str(spec.empty_root).lower()}",
        f"mount_proc = {str(spec.mount_proc).lower()}",
    ]
    if spec.writable_tmpfs is not None:
        lines.append(f"writable_tmpfs = {_toml_str(str(spec.writable_tmpfs))}")
        lines.append(f"writable_tmpfs_size = {_toml_str(_size(spec.writable_tmpfs_size))}")
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


__all__ = ["explain", "learned_policy_toml", "summary"]
