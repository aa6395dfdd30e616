"""Writing `sandbox run` cache entries (sandbox/runcache.py, which reads them, says what
they are): in the full CLI, after a run's plan was compiled.  Apart from the reader so
that a cached run does not load what only writing needs (os, the policy search path).
"""

from __future__ import annotations

import marshal
import os
import sys

from sandbox.runcache import FORMAT, SUFFIX, cache_dir, hash_file, key, root_only, signature

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from sandbox.plan import Plan
    from sandbox.profile import Profile
    from sandbox.spec import JailSpec

MAX_ENTRIES = 256


def _dependencies(profile: Profile, label: str) -> list[tuple[str, tuple | None]]:
    """Everything whose change could change the plan, with its stat signature now."""
    from sandbox import _jail
    from sandbox.policy import group_dirs_for, policy_search_path

    paths = [label, str(profile.path), _jail.__file__]
    if profile.policy is not None:
        paths += [str(p) for p in profile.policy.includes]
    if not os.path.isfile(label):  # a name: a file of that name may appear in the search path
        filename = label if label.endswith(".toml") else f"{label}.toml"
        paths += [os.path.dirname(os.path.join(d, filename)) for d in policy_search_path()]
    package = os.path.dirname(os.path.abspath(__file__))
    paths += [os.path.join(package, n) for n in sorted(os.listdir(package)) if n.endswith(".py")]
    for d in group_dirs_for(profile.path):
        paths.append(str(d))
        if d.is_dir():
            paths += sorted(str(p) for p in d.glob("*.toml"))
    unique = list(dict.fromkeys(paths))
    return [(p, signature(p)) for p in unique]


_warned = [False]


def store(options: Sequence[str], profile: Profile, spec: JailSpec, plan: Plan, label: str,
          stop_timeout: float) -> None:
    """Write the entry for these options (best effort: a run never fails for its cache).
    `spec` is the one the plan was compiled from (the profile's, with its filter
    made to notify where the kernel can)."""
    from sandbox.runjail import say

    directory = cache_dir()
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not root_only(os.stat(directory)):
            if not _warned[0]:
                say(f"not caching plans in {directory}: it must be root's, mode 0700")
                _warned[0] = True
            return
        entry = {
            "format": FORMAT, "options": tuple(options), "deps": _dependencies(profile, label),
            "profile": str(profile.path), "profile_hash": hash_file(str(profile.path)),
            "plan": plan.state(), "name": spec.name,
            "uid_range": (spec.uid_range.first, spec.uid_range.count),
            "env": tuple(spec.env), "label": label, "stop_timeout": stop_timeout,
            "limits": (spec.memory_limit, spec.pids_limit, spec.cpus, spec.timeout),
        }  # fmt: skip
        _write(directory, f"{key(options)}{SUFFIX}", marshal.dumps(entry))
        _prune(directory)
    except (OSError, ValueError) as exc:
        print(f"sandbox: plan cache not written: {exc}", file=sys.stderr)


def _write(directory: str, name: str, data: bytes) -> None:
    """Atomically: a reader sees the old entry or the new one, never half of one."""
    tmp = f"{directory}/.{name}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, f"{directory}/{name}")


def _prune(directory: str) -> None:
    """Keep the newest MAX_ENTRIES entries."""
    entries = [e for e in os.scandir(directory) if e.name.endswith(SUFFIX)]
    if len(entries) <= MAX_ENTRIES:
        return
    entries.sort(key=lambda e: e.stat().st_mtime_ns)
    for e in entries[:-MAX_ENTRIES]:
        os.unlink(e.path)
