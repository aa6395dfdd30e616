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

This module reads entries (sandbox/runcachewrite.py writes them, in the full
CLI).  `load` and `run` import only C modules and the lean launcher, not even
os (2.5 ms: its _collections_abc): this is the path that makes `sandbox run`
start in milliseconds.
"""

from __future__ import annotations

import marshal
import posix  # not os: a cached `sandbox run` does without it (2.5 ms; sandbox/runcache.py)
import sys
from _blake2 import blake2b  # hashlib would load OpenSSL (milliseconds)

from sandbox.listener import may_copy_listeners

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from sandbox.plan import Plan

FORMAT = 2
DEFAULT_DIR = "/var/cache/sandbox"
SUFFIX = ".plan"


def getenv(name: str) -> str:
    """os.environ.get(name, "") without os: os.environ is posix.environ decoded, until
    someone changes it (which needs os, so then it is asked)."""
    os = sys.modules.get("os")
    if os is not None:
        return os.environ.get(name, "")
    value = posix.environ.get(name.encode())
    return "" if value is None else value.decode(sys.getfilesystemencoding(),
                                                 sys.getfilesystemencodeerrors())


def cache_dir() -> str:
    return getenv("SANDBOX_CACHE_DIR") or DEFAULT_DIR


def key(options: Sequence[str]) -> str:
    """The entry's file name (without SUFFIX) for these options, here and now."""
    # Not marshal: its bytes depend on whether a string is interned.
    u = posix.uname()
    parts = (str(FORMAT), *options, "\0", getenv("SANDBOX_POLICY_PATH"),
             getenv("SANDBOX_SECCOMP_NOTIFY"), str(may_copy_listeners()),
             str(posix.isatty(0)),
             posix.getcwd(), u.release, u.machine)
    return blake2b("\0".join(parts).encode(errors="surrogateescape"), digest_size=16).hexdigest()


def signature(path: str) -> tuple[int, int, int, int] | None:
    """What says a file is unchanged: its mtime, ctime, size and inode."""
    try:
        st = posix.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino


def hash_file(path: str) -> str:
    with open(path, "rb") as f:
        return blake2b(f.read(), digest_size=16).hexdigest()


def root_only(st: posix.stat_result) -> bool:
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
        if not root_only(posix.stat(directory)):
            return None
        fd = posix.open(f"{directory}/{key(options)}{SUFFIX}",
                        posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not root_only(posix.fstat(fd)):
            return None
        raw = b""
        while chunk := posix.read(fd, 1 << 16):
            raw += chunk
    except OSError:
        return None
    finally:
        posix.close(fd)
    try:
        entry = marshal.loads(raw)
        if entry["format"] != FORMAT or entry["options"] != tuple(options):
            return None
        if any(signature(path) != sig for path, sig in entry["deps"]):
            return None
        if hash_file(entry["profile"]) != entry["profile_hash"]:
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
