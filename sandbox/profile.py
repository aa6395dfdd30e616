"""Jail profiles: one TOML file -> a `JailSpec` with its seccomp program compiled.

A profile is the unit operators edit (``policies/titus-worker.toml``); the
launcher only ever sees the resulting immutable `JailSpec`.  The format is
documented in docs/sandbox.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.errors import PolicyError
from sandbox.limits import JAIL_KEYS, parse_limit, parse_size, parse_tmpfs, rlimit_value
from sandbox.policy import parse_policy, policy_search_path
from sandbox.rules import SeccompPolicy
from sandbox.seccomp import compile_policy
from sandbox.spec import (
    IPC_SYSCALLS,
    RLIMIT_NAMES,
    BindMount,
    IpcMode,
    JailSpec,
    NetworkMode,
    UidRange,
    ids_problem,
    parse_network,
)
from sandbox.tomlsource import SourceFile, check_keys

_TOP_KEYS = ("profile", "jail", "seccomp")
_PROFILE_KEYS = ("description",)
_JAIL_KEYS = (
    "network",
    "ipc",
    "hostname",
    "empty_root",
    "mount_proc",
    "writable_tmpfs",
    "writable_tmpfs_size",
    "binds",
    "no_new_privs",
    "dumpable",
    "drop_capabilities",
    "landlock",
    "uid_first",
    "uid_count",
    "rlimits",
    "cwd",
    "env",
    "dev",
    "tmpfs",
    *JAIL_KEYS,
)
_BIND_KEYS = ("source", "target", "writable")


@dataclass(frozen=True)
class Profile:
    """A loaded profile: the jail to build and the policy it was compiled from."""

    name: str
    path: Path
    description: str
    spec: JailSpec
    policy: SeccompPolicy | None

    def with_jail(self, **changes: Any) -> Profile:
        """A copy with JailSpec fields changed (e.g. network="host", extra binds)."""
        return dataclasses.replace(self, spec=_replace_spec(self.spec, changes))


def find_profile(name: str) -> Path:
    """Resolve a bare profile name ("titus-worker", "examples/http-static").

    Searched in order: $SANDBOX_POLICY_PATH (colon separated), the repo's
    policies/, /etc/sandbox/policies.  Raises FileNotFoundError naming them.
    """
    filename = name if name.endswith(".toml") else f"{name}.toml"
    dirs = policy_search_path()
    for d in dirs:
        candidate = d / filename
        if candidate.is_file():
            return candidate
    known: set[str] = set()
    for d in dirs:
        if d.is_dir():
            known.update(
                str(p.relative_to(d).with_suffix(""))
                for p in d.rglob("*.toml")
                if "groups" not in p.relative_to(d).parts
            )
    close = difflib.get_close_matches(name.removesuffix(".toml"), sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    searched = ", ".join(str(d) for d in dirs)
    raise FileNotFoundError(f"no profile {name!r}{hint}; searched {searched}")


def resolve_profile(text: str) -> Path:
    """The file a `--profile` argument names: a path (with or without ".toml") when
    one exists, else a profile name looked up in the search path.

    Raises FileNotFoundError naming what was tried.
    """
    candidates = [Path(text)] if text.endswith(".toml") else [Path(text), Path(f"{text}.toml")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if Path(text).is_dir():
        raise FileNotFoundError(f"{text} is a directory, not a profile file")
    tried = " or ".join(str(c) for c in candidates)
    if text.startswith(("/", "./", "../", "~")) or text in (".", ".."):
        raise FileNotFoundError(f"no profile file {tried}")
    try:
        return find_profile(text)
    except FileNotFoundError as exc:
        if "/" in text or text.endswith(".toml"):  # meant as a path, perhaps
            raise FileNotFoundError(f"{exc}; no file {tried} in {Path.cwd()} either") from None
        raise


def check_bind_sources(spec: JailSpec) -> None:
    """Raise PolicyError (FILE:LINE: bind ...) for the first bind whose source is missing,
    or ValueError for one from the command line: `check` must say so, not `run` later
    with a layer error and no line."""
    for bind in spec.binds:
        if os.path.lexists(bind.source):
            continue
        message = f"bind source {bind.source} does not exist" + (
            f" (to be bound at {bind.target})" if bind.target != bind.source else "")
        path, _, line = bind.origin.rpartition(":")
        if path and line.isdigit():
            raise PolicyError(path, int(line), message)
        raise ValueError(f"{bind.origin or 'bind'}: {message}")


def load_profile(path_or_name: str | Path, **jail_overrides: Any) -> Profile:
    """Load, validate and compile a profile given as a path or a bare name.

    `jail_overrides` replace JailSpec fields after loading (network="host",
    binds=[...], ...), so callers need not edit a file for a one-off change.
    Raises PolicyError (FILE:LINE: message) or FileNotFoundError.
    """
    path = resolve_profile(str(path_or_name))
    src = SourceFile.read(path)
    check_keys(src, src.data, _TOP_KEYS, "")

    description = ""
    prof = src.data.get("profile", {})
    if prof:
        start = src.best(src.table_line("profile"))
        if not isinstance(prof, dict):
            raise src.error(start, "[profile] must be a table")
        check_keys(src, prof, _PROFILE_KEYS, "profile", start)
        description = prof.get("description", "")
        if not isinstance(description, str):
            raise src.error(src.best(src.key_line("description", start)), "must be a string")

    name = path.stem
    spec = _parse_jail(src, name)
    policy = parse_policy(src)
    if policy is not None:
        try:
            program = compile_policy(policy)
        except OSError as exc:
            raise src.error(src.best(src.table_line("seccomp")), str(exc)) from exc
        spec = dataclasses.replace(spec, seccomp_bpf=program)
    spec = _replace_spec(spec, jail_overrides)
    if spec.ipc == IpcMode.SHARED_EMPTY:  # from the file or an override
        _check_shared_ipc(src, policy)
    return Profile(name, path.resolve(), description, spec, policy)


def _check_shared_ipc(src: SourceFile, policy: SeccompPolicy | None) -> None:
    """Jails that share an IPC namespace could meet there: only a policy that allows
    no IPC call may share one."""
    line = src.best(src.key_line("ipc", src.best(src.table_line("jail"))))
    if policy is None:
        raise src.error(line, 'ipc = "shared-empty" without a [seccomp] table: jails that '
                              "share it could meet there")
    if policy.default == "allow":
        raise src.error(line, 'ipc = "shared-empty" needs a [seccomp] policy whose default '
                              "is not allow (jails that share it could meet there)")
    reachable = IPC_SYSCALLS & (set(policy.allowed()) | set(policy.conditional()))
    if reachable:
        raise src.error(line, f'ipc = "shared-empty" with {", ".join(sorted(reachable))} '
                              "allowed: jails that share it could meet there")


def _replace_spec(spec: JailSpec, changes: dict[str, Any]) -> JailSpec:
    """dataclasses.replace with the conveniences of the file format (str network, ipc and
    binds)."""
    changes = dict(changes)
    if "network" in changes:
        net = changes["network"]
        if net == NetworkMode.NETNS and changes.get("netns_path") is not None:
            changes["network"] = NetworkMode.NETNS
            changes["netns_path"] = Path(changes["netns_path"])
        else:  # "netns:NAME" strings carry their path; other modes have none
            changes["network"], changes["netns_path"] = parse_network(str(net))
    if "ipc" in changes:
        changes["ipc"] = IpcMode(changes["ipc"])
    if "binds" in changes:
        changes["binds"] = tuple(
            b if isinstance(b, BindMount) else BindMount(Path(b), Path(b)) for b in changes["binds"]
        )
    if "writable_tmpfs" in changes and changes["writable_tmpfs"] is not None:
        changes["writable_tmpfs"] = Path(changes["writable_tmpfs"])
    fields = {f.name for f in dataclasses.fields(JailSpec)}
    for key in changes:
        if key not in fields:
            raise TypeError(f"JailSpec has no field {key!r}")
    return dataclasses.replace(spec, **changes)


def _parse_jail(src: SourceFile, name: str) -> JailSpec:
    defaults = JailSpec()
    jail = src.data.get("jail", {})
    start = src.best(src.table_line("jail"))
    if not isinstance(jail, dict):
        raise src.error(start, "[jail] must be a table")
    check_keys(src, jail, _JAIL_KEYS, "jail", start)

    def line(key: str) -> int:
        return src.best(src.key_line(key, start), start)

    def typed(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = jail.get(key, default)
        if key in jail and (
            not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        ):
            names = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise src.error(line(key), f"'{key}' must be {names}, not {value!r}")
        return value

    network_text = typed("network", str, defaults.network.value)
    try:
        network, netns_path = parse_network(network_text)
    except ValueError as exc:
        if network_text.startswith("netns"):
            raise src.error(line("network"), str(exc)) from None
        modes = [m.value for m in NetworkMode if m != NetworkMode.NETNS]
        close = difflib.get_close_matches(network_text, modes, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise src.error(
            line("network"),
            f"unknown network {network_text!r}{hint}; one of {', '.join(modes)}, netns:NAME",
        ) from None

    ipc_text = typed("ipc", str, defaults.ipc.value)
    try:
        ipc = IpcMode(ipc_text)
    except ValueError:
        raise src.error(line("ipc"), f"unknown ipc {ipc_text!r}; one of "
                        f"{', '.join(m.value for m in IpcMode)}") from None

    tmpfs = typed("writable_tmpfs", str, None)
    if tmpfs is not None and not tmpfs.startswith("/"):
        raise src.error(line("writable_tmpfs"), "writable_tmpfs must be an absolute path")
    try:
        tmpfs_size = parse_size(jail.get("writable_tmpfs_size", defaults.writable_tmpfs_size))
    except ValueError as exc:
        raise src.error(line("writable_tmpfs_size"), str(exc)) from None

    try:
        uid_range = UidRange(
            typed("uid_first", int, defaults.uid_range.first),
            typed("uid_count", int, defaults.uid_range.count),
        )
    except ValueError as exc:
        raise src.error(line("uid_first"), str(exc)) from None

    env = typed("env", dict, None)
    if env is not None:
        if not all(isinstance(v, str) for v in env.values()):
            raise src.error(line("env"), "env values must be strings")
        env_items = tuple(env.items())
    else:
        env_items = defaults.env
    cwd = typed("cwd", str, str(defaults.cwd))
    if not cwd.startswith("/"):
        raise src.error(line("cwd"), "cwd must be an absolute path")

    limits = _parse_limits(src, jail, line)
    problem = ids_problem(*(limits.get(k, getattr(defaults, k)) for k in ("ids", "uid", "gid")),
                          uid_range)
    if problem:
        key, message = problem
        if key not in jail:  # a uid or gid beyond the default single id cannot happen
            key = "ids" if "ids" in jail else "uid_count"
        raise src.error(line(key), message)

    return JailSpec(
        name=name,
        network=network,
        netns_path=netns_path,
        ipc=ipc,
        hostname=typed("hostname", str, defaults.hostname),
        uid_range=uid_range,
        empty_root=typed("empty_root", bool, defaults.empty_root),
        binds=_parse_binds(src, typed("binds", list, []), line("binds")),
        writable_tmpfs=Path(tmpfs) if tmpfs else None,
        writable_tmpfs_size=tmpfs_size,
        mount_proc=typed("mount_proc", bool, defaults.mount_proc),
        rlimits=_parse_rlimits(src, jail.get("rlimits", {}), defaults.rlimits),
        no_new_privs=typed("no_new_privs", bool, defaults.no_new_privs),
        dumpable=typed("dumpable", bool, defaults.dumpable),
        drop_capabilities=typed("drop_capabilities", bool, defaults.drop_capabilities),
        landlock=typed("landlock", bool, defaults.landlock),
        env=env_items,
        cwd=Path(cwd),
        dev=typed("dev", bool, defaults.dev),
        tmpfs=_parse_tmpfs(src, typed("tmpfs", list, []), line("tmpfs")),
        **limits,
    )


def _parse_tmpfs(src: SourceFile, raw: list[Any], line: int) -> tuple[tuple[Path, int], ...]:
    out = []
    for item in raw:
        here = src.best(src.quoted_line(str(item), line), line)
        if not isinstance(item, str):
            raise src.error(here, f'a tmpfs is "PATH" or "PATH:SIZE", not {item!r}')
        try:
            out.append(parse_tmpfs(item))
        except ValueError as exc:
            raise src.error(here, str(exc)) from None
    return tuple(out)


def _parse_limits(src: SourceFile, jail: dict[str, Any], line: Callable[[str], int]
                  ) -> dict[str, int | float]:
    """memory, pids_limit, cpus and timeout as JailSpec fields (FILE:LINE errors)."""
    out: dict[str, int | float] = {}
    for key, field_name in JAIL_KEYS.items():
        if key in jail:
            try:
                out[field_name] = parse_limit(key, jail[key])
            except ValueError as exc:
                raise src.error(line(key), str(exc)) from None
    return out


def _parse_binds(src: SourceFile, raw: list[Any], line: int) -> tuple[BindMount, ...]:
    binds = []
    for item in raw:
        if isinstance(item, str):
            item = {"source": item}
        if not isinstance(item, dict):
            raise src.error(line, f"a bind is a path or {{ source = ..., ... }}, not {item!r}")
        here = src.best(src.quoted_line(str(item.get("source")), line), line)
        check_keys(src, item, _BIND_KEYS, "jail.binds", here)
        source = item.get("source")
        target = item.get("target", source)
        writable = item.get("writable", False)
        if not isinstance(source, str) or not isinstance(target, str):
            raise src.error(here, "bind source and target must be strings")
        if source.startswith(("./", "../")):
            # Shipped beside the profile (a daemon's config file): where it goes must be said.
            if "target" not in item:
                raise src.error(here, f"bind source {source!r} is relative: give it a target")
            source = os.path.normpath(src.path.resolve().parent / source)
        if not source.startswith("/") or not target.startswith("/"):
            raise src.error(here, f"bind paths must be absolute (a source may also be "
                            f"./PATH, beside the profile): {source!r} -> {target!r}")
        if not isinstance(writable, bool):
            raise src.error(here, "bind 'writable' must be true or false")
        binds.append(BindMount(Path(source), Path(target), writable, f"{src.path}:{here}"))
    return tuple(binds)


def _parse_rlimits(
    src: SourceFile, raw: object, defaults: Iterable[tuple[str, int]]
) -> tuple[tuple[str, int], ...]:
    start = src.best(src.table_line("jail.rlimits"), src.key_line("rlimits"))
    if not isinstance(raw, dict):
        raise src.error(start, "[jail.rlimits] must be a table")
    check_keys(src, raw, RLIMIT_NAMES, "jail.rlimits", start)
    merged = dict(defaults)
    for key, value in raw.items():
        line = src.best(src.key_line(key, start), start)
        try:
            merged[key] = rlimit_value(key, value)
        except ValueError as exc:
            raise src.error(line, str(exc)) from None
    return tuple(merged.items())


__all__ = [
    "PolicyError", "Profile", "check_bind_sources", "find_profile", "load_profile", "parse_size",
    "resolve_profile",
]
