"""Human-readable views of a profile: `sandbox check` (summary) and `sandbox explain`.

Every sentence is computed from the loaded policy and JailSpec, never canned:
an operator who edits a profile must see the consequence in `explain`.
"""

from __future__ import annotations

from collections.abc import Iterable

from sandbox import ttyguard
from sandbox.profile import Profile
from sandbox.rules import Rule, SeccompPolicy, action_label
from sandbox.seccomp import RESUME, compile_policy, instruction_count
from sandbox.spec import JailSpec
from sandbox.syscalls import ARCHES, native_arch, syscall_number
from sandbox.wording import (
    binds_text,
    conds_text,
    listing,
    network_text,
    rlimits_text,
    size_text,
)

# ---------------------------------------------------------------------------
# The policy, one syscall at a time


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



def id_map_text(spec: JailSpec) -> str:
    """The jail's uid/gid maps, inside -> host, as its id-map step writes them."""
    if spec.ids > 1:
        return (f"uids and gids 0-{spec.ids - 1} -> a block of {spec.ids} host uids (and gids) "
                f"H..H+{spec.ids - 1}; setgroups denied")
    return f"uid {spec.uid} -> host uid H, gid {spec.gid} -> host gid H; setgroups denied"


def summary(profile: Profile) -> str:
    """The facts of a profile in a compact listing, for `sandbox check`."""
    spec, policy = profile.spec, profile.policy
    lines = [f"profile {profile.name} ({profile.path})"]
    if profile.description:
        lines.append(f"  {profile.description}")
    last_uid = spec.uid_range.first + spec.uid_range.count - 1
    tmpfs = ", ".join(f"{p} ({size_text(s)})" for p, s in _tmpfs(spec)) or "none"
    lines += [
        "jail:",
        f"  network: {spec.network_label}; hostname: {spec.hostname}",
        f"  root: {'empty, read-only' if spec.empty_root else 'the host root'}; "
        f"/proc: {'mounted' if spec.mount_proc else 'not mounted'}",
        f"  binds: {binds_text(spec)}",
        f"  writable tmpfs: {tmpfs}",
        f"  uids: {spec.uid_range.first}-{last_uid} ({spec.uid_range.count}); inside: uid "
        f"{spec.uid}, gid {spec.gid}; /dev: {'minimal' if spec.dev else 'none'}",
        f"  id map: {id_map_text(spec)}",
        f"  limits: {limits_text(spec)}",
        f"  no_new_privs: {_yes(spec.no_new_privs)}; dumpable: {_yes(spec.dumpable)}; "
        f"capabilities dropped: {_yes(spec.drop_capabilities)}; landlock: {_yes(spec.landlock)}",
        f"  rlimits: {rlimits_text(spec)}",
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
                lines.append(f"    {name:<{width}}  {action_label(action)} if {conds_text(rs)}")
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
    return f"{listing(names)} {'is' if len(names) == 1 else 'are'} not allowed"


def _tmpfs(spec: JailSpec) -> list[tuple[object, int]]:
    first = [(spec.writable_tmpfs, spec.writable_tmpfs_size)] if spec.writable_tmpfs else []
    return [*first, *spec.tmpfs]


def limits_text(spec: JailSpec) -> str:
    """The cgroup limits and the timeout, or "none"."""
    parts = [f"memory {size_text(spec.memory_limit)}" if spec.memory_limit else "",
             f"{spec.pids_limit} processes" if spec.pids_limit else "",
             f"{spec.cpus:g} CPUs" if spec.cpus else "",
             f"timeout {spec.timeout:g} s" if spec.timeout else ""]
    return ", ".join(p for p in parts if p) or "none"


def _filesystem(spec: JailSpec) -> str:
    if not spec.empty_root:
        return "it sees the host's whole filesystem (no empty root)"
    if not spec.binds and not _tmpfs(spec) and not spec.dev:
        return "there is no filesystem (empty read-only root)"
    seen = []
    if spec.binds:
        seen.append(binds_text(spec))
    for path, size in _tmpfs(spec):
        seen.append(f"a writable tmpfs at {path} ({size_text(size)})")
    if spec.dev:
        seen.append("a minimal /dev (null, zero, full, random, urandom)")
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
    parts = [f"{n} only when {conds_text(view.allow_rules(n))}" for n in conditional]
    how = listing([*(f"{n} is allowed" for n in allowed), *parts])
    return f"It can open files ({how}), but {fs}."


def _network(view: _View, spec: JailSpec) -> str:
    _, conditional, forbidden = view.split(["socket", "socketpair"])
    net = f"Its network is {network_text(spec)}."
    if "socket" in forbidden:
        client = view.split(["connect", "bind", "listen", "accept", "accept4"])
        extra = f" ({_not_allowed(client[2])} either)" if client[2] else ""
        io = [
            n for n in ("recvmsg", "sendmsg", "recvfrom", "sendto") if view.state(n) != "forbidden"
        ]
        given = (
            f"it can only use sockets it is given ({listing(io)})"
            if io
            else "it cannot use sockets at all"
        )
        return f"{net} It cannot create sockets: socket is not allowed{extra}, so {given}."
    if "socket" in conditional:
        return f"{net} It can create sockets only when {conds_text(view.allow_rules('socket'))}."
    return f"{net} It can create sockets of any family (socket is allowed)."


def _processes(view: _View, spec: JailSpec) -> str:
    allowed, conditional, forbidden = view.split(["fork", "vfork", "clone", "clone3"])
    nproc = dict(spec.rlimits).get("nproc")
    limit = f", and its nproc limit is {nproc}" if nproc is not None else ""
    if not allowed and not conditional:
        text = f"It cannot start processes or threads: {_not_allowed(forbidden)}{limit}."
    elif conditional and not allowed:
        ways = "; ".join(f"{n} only when {conds_text(view.allow_rules(n))}" for n in conditional)
        refused = [
            f"{n} fails with {view.action(n)}"
            for n in forbidden
            if view.action(n).startswith("errno")
        ]
        refused_text = f" ({listing(refused)})" if refused else ""
        text = f"It can start threads but not processes: {ways}{refused_text}{limit}."
    else:
        text = f"It can start processes ({listing(allowed)} allowed){limit}."
    exe_allowed, exe_cond, exe_forbidden = view.split(["execve", "execveat"])
    if not exe_allowed and not exe_cond:
        text += f" It cannot run other programs: {_not_allowed(exe_forbidden)}."
    else:
        text += (
            f" It can execute programs ({listing(exe_allowed + exe_cond)}), only those inside "
            "its root, and no_new_privs "
            + ("keeps them from gaining privileges." if spec.no_new_privs else "is NOT set.")
        )
    return text


def _memory(view: _View) -> str:
    names = ["mmap", "mprotect"]
    states = {n: view.state(n) for n in names}
    pkey = view.state("pkey_mprotect")
    if all(s == "conditional" for s in states.values()):
        conds = "; ".join(f"{n} only when {conds_text(view.allow_rules(n))}" for n in names)
        exec_bit = all("PROT_EXEC" in conds_text(view.allow_rules(n)) for n in names)
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
    if view.policy is not None and ttyguard.needed(view.policy):
        out.append("It cannot push input into a terminal: ioctl TIOCSTI and TIOCLINUX fail "
                   "with EPERM whatever the rules say.")
    allowed_ns, cond_ns, forbidden_ns = view.split(
        ["unshare", "setns", "mount", "umount2", "pivot_root", "chroot"]
    )
    if forbidden_ns and not allowed_ns and not cond_ns:
        out.append(
            f"It cannot create or join namespaces or change mounts: {_not_allowed(forbidden_ns)}."
        )
    elif allowed_ns or cond_ns:
        out.append(f"Careful: {listing(allowed_ns + cond_ns)} may be used.")
    lim_allowed, lim_cond, lim_forbidden = view.split(["setrlimit", "prlimit64"])
    limits = rlimits_text(spec)
    if not lim_allowed and not lim_cond:
        out.append(f"It cannot change its limits ({limits}): {_not_allowed(lim_forbidden)}.")
    elif lim_cond and not lim_allowed:
        ways = "; ".join(f"{n} only when {conds_text(view.allow_rules(n))}" for n in lim_cond)
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
    if spec.ids > 1:
        uids = (f"a block of {spec.ids} from {first}-{first + count - 1}" if count > spec.ids
                else f"{first}-{first + count - 1}")
        inside = (f", ids 0-{spec.ids - 1} inside, starting as uid {spec.uid} and gid "
                  f"{spec.gid}")
    else:
        inside = (f", seen inside as uid {spec.uid} and gid {spec.gid}" if spec.uid or spec.gid
                  else "")
    whom = "unprivileged uids" if spec.ids > 1 else "an unprivileged uid"
    who = f"It runs as {whom} ({uids}{inside}) in its own user namespace, with {caps} and {nnp}"
    if limits_text(spec) != "none":
        who += f"; its cgroup and run limits: {limits_text(spec)}"
    if id_allowed:
        who += f"; it may call {listing(id_allowed)}"
    out.append(who + ".")
    return out


def _can(view: _View, policy: SeccompPolicy) -> str:
    plain = [n for n in policy.allowed() if _exists(n)]
    cond = [
        f"{n} only when {conds_text(view.allow_rules(n))}"
        for n in policy.conditional()
        if _exists(n) and view.allow_rules(n)
    ]
    text = f"What it can do, in full ({native_arch()}): {listing(plain)}"
    if cond:
        text += f"; and {'; '.join(cond)}"
    if policy.default != "allow" and not policy.rules_for(RESUME):
        text += f"; and {RESUME}, as every filter, to resume a sleep that a stop interrupted"
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
            f"({listing(denied)}): a deny-list, weaker than an allowlist."
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
            "mounts and limits confine it, and nothing keeps it from pushing input into "
            "the terminal it runs on (ioctl TIOCSTI). "
            f"{_filesystem(spec).capitalize()}. "
            f"Its network is {network_text(spec)}."
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


__all__ = ["explain", "summary"]
