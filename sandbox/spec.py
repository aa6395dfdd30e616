"""The declarative description of a jail.

A `JailSpec` says *what* the jail is; `sandbox.launcher` decides *how* and in
which order the layers are applied.  Profiles (TOML files in `policies/`) are
parsed into a `JailSpec` by `sandbox.profile`.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class NetworkMode(StrEnum):
    """How the jail sees the network.

    SHARED_EMPTY joins one pre-made empty namespace (cheap: no teardown per
    jail); NEW makes a fresh empty one; LOOPBACK a fresh one with `lo` up;
    NETNS joins an existing namespace named by `JailSpec.netns_path` (written
    "netns:/run/netns/NAME" in profiles, so an operator can put a daemon in a
    namespace they set up with veths and routes); HOST keeps the host's
    network (an explicit opt-out).
    """

    SHARED_EMPTY = "shared-empty"
    NEW = "new"
    LOOPBACK = "loopback"
    NETNS = "netns"
    HOST = "host"


class IpcMode(StrEnum):
    """The jail's System V IPC and POSIX message queue namespace.

    NEW makes one per jail (what bwrap and nsjail do).  SHARED_EMPTY joins one empty
    namespace the launcher keeps, as SHARED_EMPTY does for the network: a namespace
    per jail costs ~0.05 ms to make (its sysctl tables and mqueue mount) and its
    teardown (an unmount and an RCU grace period) runs in kernel workers.  Jails that
    share it could meet there, so a profile that shares it forbids the IPC calls
    (shmget, semget, msgget, mq_open, ...) in its seccomp policy.
    """

    NEW = "new"
    SHARED_EMPTY = "shared-empty"


# What reaches an IPC namespace: System V shared memory, semaphores and message
# queues, and POSIX message queues.  A jail in a shared one is allowed none of them.
IPC_SYSCALLS = frozenset({
    "shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semtimedop", "semctl",
    "msgget", "msgsnd", "msgrcv", "msgctl", "ipc", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr"})


# Where `ip netns add NAME` (and pyroute2.netns) pin named network namespaces.
NETNS_RUN_DIR = Path("/run/netns")


def parse_network(text: str) -> tuple[NetworkMode, Path | None]:
    """A network setting as written in a profile or on the command line.

    "netns:NAME" means /run/netns/NAME; "netns:/path" any nsfs file (e.g.
    /proc/PID/ns/net).  Raises ValueError for anything else unknown.
    """
    if text.startswith("netns:"):
        target = text.removeprefix("netns:")
        if not target:
            raise ValueError("netns: needs a name or a path, e.g. netns:/run/netns/web")
        if "/" not in target:
            return NetworkMode.NETNS, NETNS_RUN_DIR / target
        if not target.startswith("/"):
            raise ValueError(f"netns path must be absolute: {target!r}")
        return NetworkMode.NETNS, Path(target)
    if text == NetworkMode.NETNS.value:
        raise ValueError("netns needs a namespace: netns:NAME or netns:/path")
    return NetworkMode(text), None


@dataclass(frozen=True)
class BindMount:
    """A host path made visible inside the jail's root."""

    source: Path
    target: Path
    writable: bool = False
    # Where it was asked for, for error messages: "FILE:LINE" or "--bind-ro".
    origin: str = field(default="", compare=False)


@dataclass(frozen=True)
class UidRange:
    """Host uids (and gids, the same numbers) that jails are mapped to."""

    first: int = 200_000
    count: int = 65_536

    def __post_init__(self) -> None:
        if self.first <= 0 or self.count <= 0 or self.first + self.count > 2**32 - 1:
            raise ValueError(f"uid range {self.first}+{self.count} is not a valid host uid range")


def ids_problem(ids: int, uid: int, gid: int, uid_range: UidRange) -> tuple[str, str] | None:
    """What is wrong with these ids, as (the key to blame, a one-line message), or None.

    A uid or gid outside the mapped ids would be unmapped inside: the jail could not
    start (setresuid fails EINVAL), so it is refused before anything runs."""
    if isinstance(ids, bool) or not isinstance(ids, int) or ids < 1:
        return "ids", f"ids must be a whole number of at least 1, not {ids!r}"
    if ids > uid_range.count:
        return "ids", (f"ids = {ids} is more than the {uid_range.count} host uids of the jail "
                       f"range (uid_first {uid_range.first}, uid_count {uid_range.count})")
    if ids > 1:
        for key, value in (("uid", uid), ("gid", gid)):
            if value >= ids:
                return key, (f"{key} {value} is not mapped inside the jail: ids = {ids} maps "
                             f"0-{ids - 1}; raise ids to {value + 1} or more")
    return None


# Symbolic rlimit names used in profiles, mapped to the resource module.
RLIMIT_NAMES: dict[str, int] = {
    "as": resource.RLIMIT_AS,
    "core": resource.RLIMIT_CORE,
    "cpu": resource.RLIMIT_CPU,
    "data": resource.RLIMIT_DATA,
    "fsize": resource.RLIMIT_FSIZE,
    "memlock": resource.RLIMIT_MEMLOCK,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "stack": resource.RLIMIT_STACK,
    "msgqueue": resource.RLIMIT_MSGQUEUE,
    "sigpending": resource.RLIMIT_SIGPENDING,
}

# RLIMIT_NOFILE set to this value means "exactly the number of fds passed in".
NOFILE_KEPT = -2  # not -1: that is resource.RLIM_INFINITY ("unlimited")
# The default RLIMIT_NOFILE: what an ordinary program expects (ld.so alone needs
# a few fds beyond 0-2).  A profile that wants the tightest limit says "kept".
DEFAULT_NOFILE = 1024


@dataclass(frozen=True)
class JailSpec:
    """Everything that defines one jail; immutable so it can be shared by many spawns.

    `seccomp_bpf` is the already compiled program (see `sandbox.seccomp`):
    compiling once in the parent costs 0.18 ms less per spawn than compiling
    in every child.  `None` means no seccomp layer at all.
    """

    name: str = "jail"
    network: NetworkMode = NetworkMode.SHARED_EMPTY
    # The namespace file to join when network is NETNS (and only then).
    netns_path: Path | None = None
    ipc: IpcMode = IpcMode.NEW
    hostname: str = "jail"
    uid_range: UidRange = field(default_factory=UidRange)
    # Filesystem: an empty read-only tmpfs root, plus these bind mounts.
    empty_root: bool = True
    binds: tuple[BindMount, ...] = ()
    # A writable tmpfs inside the root (e.g. "/tmp"), size in bytes; None for none.
    writable_tmpfs: Path | None = None
    writable_tmpfs_size: int = 16 * 1024 * 1024
    # More writable tmpfs mounts: (path inside, size in bytes), as --tmpfs PATH[:SIZE].
    tmpfs: tuple[tuple[Path, int], ...] = ()
    mount_proc: bool = False
    # A minimal /dev: null, zero, full, random, urandom (and tty with dev_tty).
    dev: bool = False
    dev_tty: bool = False
    # How many ids the jail has: 1 maps only the program's uid and gid (bwrap's
    # --uid), each to the jail's host uid; N > 1 maps 0..N-1 to a block of N host
    # uids (and gids, the same numbers), so the program may change between them
    # (a daemon started as 0 that drops to 33).
    ids: int = 1
    # The ids the program runs as inside; below `ids` when more than one is mapped.
    uid: int = 0
    gid: int = 0
    # Process limits: name -> (soft, hard); NOFILE_KEPT for "fds passed in".
    rlimits: tuple[tuple[str, int], ...] = (("nofile", DEFAULT_NOFILE), ("core", 0))
    no_new_privs: bool = True
    dumpable: bool = False
    drop_capabilities: bool = True
    seccomp_bpf: bytes | None = None
    # Load the filter with a user-notification listener and hand it to the parent
    # (JailProcess.listener): a filter whose default is "notify" needs it.
    seccomp_listener: bool = False
    # Landlock: deny all filesystem access except the bind mounts (exec'd daemons).
    landlock: bool = False
    # cgroup limits (sandbox.cgroups), None for none: bytes of memory, processes and
    # threads, CPUs' worth of time.  The jail gets a cgroup of its own only with one.
    memory_limit: int | None = None
    pids_limit: int | None = None
    cpus: float | None = None
    # `sandbox run`: wall-clock seconds, then SIGTERM, then SIGKILL (exit status 124).
    timeout: float | None = None
    # Signal the jail receives when the process that spawned it dies.
    parent_death_signal: int = 9
    # Environment for `run` (exec); spawn keeps the Python process as it is.
    env: tuple[tuple[str, str], ...] = (("PATH", "/usr/bin:/bin"),)
    cwd: Path = Path("/")

    def __post_init__(self) -> None:
        if (self.network == NetworkMode.NETNS) != (self.netns_path is not None):
            raise ValueError("netns_path is set exactly when network is NETNS")
        problem = ids_problem(self.ids, self.uid, self.gid, self.uid_range)
        if problem:
            raise ValueError(problem[1])

    @property
    def network_label(self) -> str:
        """The network setting as a profile writes it ("loopback", "netns:/run/netns/x")."""
        if self.network == NetworkMode.NETNS:
            return f"netns:{self.netns_path}"
        return self.network.value

    def rlimit_values(self, kept_fds: int) -> list[tuple[int, int]]:
        """(resource, limit) pairs, with NOFILE_KEPT resolved to the passed fd count."""
        out = []
        for name, value in self.rlimits:
            if name not in RLIMIT_NAMES:
                raise ValueError(f"unknown rlimit {name!r}")
            res = RLIMIT_NAMES[name]
            if name == "nofile" and value == NOFILE_KEPT:
                value = kept_fds
            elif value == resource.RLIM_INFINITY:
                # As high as it goes: raising a hard limit needs a capability the jail
                # has dropped by then.
                value = resource.getrlimit(res)[1]
            out.append((res, value))
        return out
