"""The jail plan: every layer's decisions as plain data, for the C executor to apply.

Python decides, C executes (DESIGN.md §2, §4).  Each layer module turns its part
of a JailSpec into `Step`s (sandbox/layers.py puts them in order); a `Plan` is
encoded once into the wire format of sandbox/_jail/jail.h, decoded and checked
once by the executor, and then applied by every jail of that spec, in a child
that runs no Python and allocates nothing.  A failing step comes back as
(layer id, step, sub-step, errno), which `Plan.error` turns into the JailError
the old Python child raised.

Imports nothing heavy: `sandbox run` rebuilds plans from its cache with this
module and the executor alone.
"""

from __future__ import annotations

import _struct as struct  # the C module: struct.py only re-exports it (a file fewer to load)
import errno
import posix  # not os: a cached `sandbox run` does without it (2.5 ms; sandbox/runcache.py)

from sandbox import _jail
from sandbox.errors import JailError

MODE_CALL, MODE_EXEC, MODE_ENTRY = _jail.MODE_CALL, _jail.MODE_EXEC, _jail.MODE_ENTRY
MODE_NAMES = {MODE_CALL: "call", MODE_EXEC: "exec", MODE_ENTRY: "entry"}

# What each op does, for `sandbox explain --plan`.
OP_NAMES = {getattr(_jail, n): n.removeprefix("OP_").lower().replace("_", "-")
            for n in dir(_jail) if n.startswith("OP_")}

# The fds a launcher supplies per spawn, by index: a step names the index.
SLOTS = ("netns", "root", "ipcns")

_HEADER = struct.Struct("=IHHQ")
_STEP = struct.Struct("=HHIqqqII")
_RULE = struct.Struct("=QQII")
_SPECIAL = {_jail.LAYER_EXEC: "exec", _jail.LAYER_IDMAP: "id-map", _jail.LAYER_SPAWN: "spawn",
            _jail.LAYER_CGROUP: "cgroup"}
_ID_FILES = ("setgroups", "gid_map", "uid_map")
# What failed of a spawn itself (the handshake in spawn.c reports 1 and 2, a fork server's
# C loop 3 and 4: sandbox/_jail/serve.c).
_SPAWN_SUBS = {1: "copying the seccomp listener", 2: "the seccomp listener's handler failed",
               3: "the sync socket", 4: "the clone"}
_CLONE_NEWPID = 0x20000000
_FILTER_FLAG_NEW_LISTENER = 1 << 3  # seccomp(2); sandbox/bpf.py


def _strerror(err: int) -> str:
    return posix.strerror(err) if err else "unknown error"


class Step:
    """One thing the child does: an op of sandbox/_jail/jail.h and its arguments.

    `what` says what it does in words, for explain and for errors: a failure
    reads `what` with "{err}" replaced by the errno's text (appended after ": "
    when there is no "{err}").  `subs` gives other words for a sub-step (which
    of the step's system calls failed)."""

    __slots__ = ("args", "data", "flags", "layer", "op", "subs", "what")

    def __init__(self, op: int, layer: str, what: str, *, args: tuple[int, ...] = (),
                 flags: int = 0, strings: tuple[str | bytes, ...] = (), data: bytes = b"",
                 subs: dict[int, str] | None = None) -> None:
        self.op = op
        self.layer = layer
        self.what = what
        self.args = (*args, 0, 0, 0)[:3]
        self.flags = flags
        if strings:
            data = b"".join((s.encode() if isinstance(s, str) else s) + b"\0" for s in strings)
        self.data = data
        self.subs = subs or {}

    def message(self, sub: int, err: int) -> str:
        template = self.subs.get(sub, self.what)
        if "{err}" not in template:
            template += ": {err}"
        return template.replace("{err}", _strerror(err))

    def state(self) -> tuple:
        return (self.op, self.layer, self.what, self.args, self.flags, self.data,
                tuple(self.subs.items()))

    @classmethod
    def from_state(cls, state: tuple) -> Step:
        op, layer, what, args, flags, data, subs = state
        return cls(op, layer, what, args=tuple(args), flags=flags, data=data, subs=dict(subs))


class Plan:
    """The steps of one jail in order, the namespace flags of its clone, and the
    names of the fds the launcher supplies per spawn (`slots`, e.g. "netns")."""

    __slots__ = ("_id_map", "_native", "clone_flags", "layers", "mode", "slots", "steps")

    def __init__(self, steps: list[Step], clone_flags: int = 0, slots: tuple[str, ...] = (),
                 mode: int = MODE_CALL) -> None:
        self.steps = tuple(steps)
        self.clone_flags = clone_flags
        self.slots = slots
        self.mode = mode
        self.layers = tuple(dict.fromkeys(s.layer for s in self.steps))
        self._native: _jail.Plan | None = None
        self._id_map = next((s.args for s in self.steps if s.op == _jail.OP_IDMAP_SYNC), None)

    def encode(self) -> bytes:
        """The wire format (sandbox/_jail/jail.h)."""
        ids = {name: i for i, name in enumerate(self.layers)}
        out = [_HEADER.pack(_jail.MAGIC, _jail.VERSION, len(self.steps), self.clone_flags)]
        for s in self.steps:
            out.append(_STEP.pack(s.op, ids[s.layer], s.flags, *s.args, len(s.data), 0))
            out.append(s.data + b"\0" * (-len(s.data) % 8))
        return b"".join(out)

    @property
    def native(self) -> _jail.Plan:
        """The executor's decoded, checked copy (made once)."""
        if self._native is None:
            self._native = _jail.Plan(self.encode())
        return self._native

    def id_maps(self, host_uid: int, host_gid: int) -> tuple[str | None, str | None]:
        """(uid_map, gid_map) the parent writes when the child asks (None: no user
        namespace): the jail's ids, as its id-map step names them, -> the host's."""
        if self._id_map is None:
            return None, None
        inside_uid, inside_gid, count = self._id_map
        return f"{inside_uid} {host_uid} {count}\n", f"{inside_gid} {host_gid} {count}\n"

    @property
    def id_count(self) -> int:
        """How many host uids the jail's id maps need (a block from the allocator)."""
        return 1 if self._id_map is None else self._id_map[2]

    @property
    def notifies(self) -> bool:
        """Whether its seccomp filter hands a user-notification listener to the parent."""
        return any(s.op == _jail.OP_SECCOMP and s.args[0] & _FILTER_FLAG_NEW_LISTENER
                   for s in self.steps)

    def without(self, *layers: str) -> Plan:
        """The same plan with these layers' steps dropped (tests prove each layer counts);
        "pid-namespace" is the clone's CLONE_NEWPID."""
        kept = [s for s in self.steps if s.layer not in layers]
        flags = self.clone_flags & ~_CLONE_NEWPID if "pid-namespace" in layers else self.clone_flags
        return Plan(kept, flags, self.slots, self.mode)

    def error(self, error: tuple[int, int, int, int]) -> JailError:
        """The JailError for an executor error (layer id, step, sub-step, errno)."""
        layer_id, index, sub, err = error
        if layer_id == _jail.LAYER_IDMAP:
            name = _ID_FILES[sub] if sub < len(_ID_FILES) else "id map"
            return JailError("id-map", err, f"writing {name}: {_strerror(err)}")
        if layer_id == _jail.LAYER_SPAWN:
            if err == errno.ETIMEDOUT:
                return JailError("spawn", err, "the jail did not report in time")
            what = _SPAWN_SUBS.get(sub, "the spawn handshake")
            return JailError("spawn", err, f"{what}: {_strerror(err)}")
        if layer_id == _jail.LAYER_CGROUP:
            return JailError("cgroup", err, f"putting the jail in its cgroup: {_strerror(err)}")
        if layer_id in _SPECIAL or index >= len(self.steps):
            return JailError(_SPECIAL.get(layer_id, "spawn"), err, _strerror(err))
        step = self.steps[index]
        return JailError(step.layer, err, step.message(sub, err))

    def describe(self) -> list[str]:
        """One line per step: layer, op, what it does."""
        lines = []
        if self.clone_flags == _CLONE_NEWPID:
            lines.append("clone(CLONE_NEWPID): the jail is PID 1 of a new PID namespace")
        elif self.clone_flags:
            lines.append(f"clone: namespace flags {self.clone_flags:#x}")
        for i, s in enumerate(self.steps):
            what = s.what.replace(": {err}", "").replace("{err}", "").rstrip(": ")
            lines.append(f"{i:3} {s.layer:16} {OP_NAMES.get(s.op, s.op)}: {what}")
        return lines

    def state(self) -> tuple:
        """Plain data for marshal (the `sandbox run` cache)."""
        return (self.clone_flags, self.slots, self.mode, tuple(s.state() for s in self.steps))

    @classmethod
    def from_state(cls, state: tuple) -> Plan:
        clone_flags, slots, mode, steps = state
        return cls([Step.from_state(s) for s in steps], clone_flags, tuple(slots), mode)


def apply_here(steps: list[Step], keep: tuple[int, ...] = (), sync: int = -1) -> int:
    """Apply `steps` to this very process (no clone); the sync fd after them.

    How the in-process helpers (fds.renumber, landlock.restrict, bpf.load_bpf)
    run the executor's one implementation of their layer.  Raises OSError."""
    plan = Plan(steps)
    new_sync, error = _jail.apply(plan.native, keep=list(keep), sync=sync)
    if error is not None:
        exc = plan.error(error)
        raise OSError(exc.errno, exc.message)
    return new_sync


def landlock_rules(rules: list[tuple[int, int, str]]) -> bytes:
    """The payload of an OP_LANDLOCK step: (access for a directory, for a file, path)."""
    out = []
    for access_dir, access_file, path in rules:
        raw = path.encode() + b"\0"
        out.append(_RULE.pack(access_dir, access_file, len(raw), 0))
        out.append(raw + b"\0" * (-len(raw) % 8))
    return b"".join(out)
