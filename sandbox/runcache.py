"""The `sandbox run` cache: the compiled plan of a command line, so the next
identical run parses no TOML, loads no libseccomp and compiles nothing.

Where: $SANDBOX_CACHE_DIR, else /var/cache/sandbox.  It must be root's and mode
0700, and so must each entry: a cached plan is what a jail becomes, nobody else
may write one.  A directory that is not is refused (said once, then no cache).
Key: the `run` options as given (everything before "--"), $SANDBOX_POLICY_PATH,
$SANDBOX_SECCOMP_NOTIFY, whether stdin is a terminal (--dev binds /dev/tty then),
the working directory, the kernel release and the machine; one file per key.
Valid while the profile's content hash is the same and so is the stat signature
(mtime, ctime, size, inode) of everything the profile was resolved from (the
search path's directories, the group directories and their files, includes)
and of the sandbox code itself.  Anything else: the full CLI runs and stores
a fresh entry.

`load` and `run` import only C modules and the lean launcher: this is the path
that makes `sandbox run` start in milliseconds.
"""

from __future__ import annotations

import marshal
import os
import sys
from _blake2 import blake2b  # hashlib would load OpenSSL (milliseconds)

from sandbox.listener import may_copy_listeners

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from sandbox.plan import Plan
    from sandbox.profile import Profile
    from sandbox.spec import JailSpec

FORMAT = 2
DEFAULT_DIR = "/var/cache/sandbox"
MAX_ENTRIES = 256
_SUFFIX = ".plan"


def cache_dir() -> str:
    return os.environ.get("SANDBOX_CACHE_DIR") or DEFAULT_DIR


def _key(options: Sequence[str]) -> str:
    # Not marshal: its bytes depend on whether a string is interned.
    u = os.uname()
    parts = (str(FORMAT), *options, "\0", os.environ.get("SANDBOX_POLICY_PATH", ""),
             os.environ.get("SANDBOX_SECCOMP_NOTIFY", ""), str(may_copy_listeners()),
             str(os.isatty(0)),
             os.getcwd(), u.release, u.machine)
    return blake2b("\0".join(parts).encode(errors="surrogateescape"), digest_size=16).hexdigest()


def _signature(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino


def _hash_file(path: str) -> str:
    with open(path, "rb") as f:
        return blake2b(f.read(), digest_size=16).hexdigest()


def _root_only(st: os.stat_result) -> bool:
    return st.st_uid == 0 and not st.st_mode & 0o077


class UidRangeKey:
    """The jail's uid range as the launcher's allocators need it (first, count)."""

    __slots__ = ("count", "first")

    def __init__(self, first: int, count: int) -> None:
        self.first = first
        self.count = count

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UidRangeKey) and (self.first, self.count) == (
            other.first, other.count)

    def __hash__(self) -> int:
        return hash((self.first, self.count))


class CachedJail:
    """What `Launcher.run` and `runjail` need of a spec when they are given the plan:
    the parent's side of the jail (its uid range, environment, cgroup limits, timeout)."""

    __slots__ = ("cpus", "env", "memory_limit", "name", "pids_limit", "timeout", "uid_range")

    def __init__(self, name: str, uid_range: UidRangeKey, env: tuple,
                 limits: tuple = (None, None, None, None)) -> None:
        self.name = name
        self.uid_range = uid_range
        self.env = env
        self.memory_limit, self.pids_limit, self.cpus, self.timeout = limits


class Entry:
    """A valid cache entry: the jail, its plan, and what `run` reports with."""

    __slots__ = ("jail", "label", "plan", "stop_timeout")

    def __init__(self, jail: CachedJail, plan: Plan, label: str, stop_timeout: float) -> None:
        self.jail = jail
        self.plan = plan
        self.label = label
        self.stop_timeout = stop_timeout


def load(options: Sequence[str]) -> Entry | None:
    """The entry for these `run` options, if there is a valid one."""
    directory = cache_dir()
    try:
        if not _root_only(os.stat(directory)):
            return None
        fd = os.open(f"{directory}/{_key(options)}{_SUFFIX}",
                     os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not _root_only(os.fstat(fd)):
            return None
        raw = b""
        while chunk := os.read(fd, 1 << 16):
            raw += chunk
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        entry = marshal.loads(raw)
        if entry["format"] != FORMAT or entry["options"] != tuple(options):
            return None
        if any(_signature(path) != sig for path, sig in entry["deps"]):
            return None
        if _hash_file(entry["profile"]) != entry["profile_hash"]:
            return None
        from sandbox.plan import Plan

        plan = Plan.from_state(entry["plan"])
        jail = CachedJail(entry["name"], UidRangeKey(*entry["uid_range"]), entry["env"],
                          tuple(entry["limits"]))
        return Entry(jail, plan, entry["label"], entry["stop_timeout"])
    except (KeyError, TypeError, ValueError, EOFError, OSError):
        return None


def run(entry: Entry, argv: list[str]) -> int:
    """`sandbox run` from a cache entry."""
    from sandbox.launcher import Launcher
    from sandbox.runjail import Fail, check_root, run_program, say

    try:
        check_root()
        return run_program(Launcher(shared=False), entry.jail, argv, entry.label,
                           entry.stop_timeout, entry.plan)
    except Fail as exc:
        say(str(exc))
        return exc.status


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
    return [(p, _signature(p)) for p in unique]


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
        if not _root_only(os.stat(directory)):
            if not _warned[0]:
                say(f"not caching plans in {directory}: it must be root's, mode 0700")
                _warned[0] = True
            return
        entry = {
            "format": FORMAT, "options": tuple(options), "deps": _dependencies(profile, label),
            "profile": str(profile.path), "profile_hash": _hash_file(str(profile.path)),
            "plan": plan.state(), "name": spec.name,
            "uid_range": (spec.uid_range.first, spec.uid_range.count),
            "env": tuple(spec.env), "label": label, "stop_timeout": stop_timeout,
            "limits": (spec.memory_limit, spec.pids_limit, spec.cpus, spec.timeout),
        }  # fmt: skip
        _write(directory, f"{_key(options)}{_SUFFIX}", marshal.dumps(entry))
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
    entries = [e for e in os.scandir(directory) if e.name.endswith(_SUFFIX)]
    if len(entries) <= MAX_ENTRIES:
        return
    entries.sort(key=lambda e: e.stat().st_mtime_ns)
    for e in entries[:-MAX_ENTRIES]:
        os.unlink(e.path)
