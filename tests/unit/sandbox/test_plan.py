"""The jail plan: compiled from a spec in the DESIGN.md §4 order, encoded, checked by the
executor's decoder (sandbox/_jail/plan.c), kept as plain data, named in errors."""

from __future__ import annotations

import errno
import marshal
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from sandbox import _jail, bpf, libc
from sandbox.errors import JailError
from sandbox.layers import compile_plan
from sandbox.plan import MODE_CALL, MODE_ENTRY, MODE_EXEC, Plan, Step
from sandbox.profile import load_profile
from sandbox.spec import BindMount, IpcMode, JailSpec, NetworkMode

SPEC = JailSpec(seccomp_bpf=None, binds=(BindMount(Path("/usr"), Path("/usr")),),
                writable_tmpfs=Path("/tmp"), mount_proc=True)


def layers_in_order(plan: Plan) -> list[str]:
    return list(dict.fromkeys(s.layer for s in plan.steps))


def test_order_is_the_designs():
    worker = load_profile("titus-worker").spec
    plan = compile_plan(worker, MODE_ENTRY)
    assert layers_in_order(plan) == [
        "signals", "network", "ipc", "rootfs", "user-namespace", "id-map", "credentials",
        "uts", "fds", "capabilities", "no-new-privs", "rlimits", "dumpable", "parent",
        "seccomp"]
    assert plan.slots == ("netns", "ipcns", "root") and plan.clone_flags == 0x20000000
    assert plan.steps[-1].op == _jail.OP_SECCOMP
    # A jail with a root of its own (writable tmpfs, /proc) builds it after unsharing.
    own = compile_plan(SPEC, MODE_EXEC, shared=False)
    assert layers_in_order(own)[:4] == ["signals", "mount-namespace", "rootfs",
                                        "user-namespace"]
    assert own.slots == ()
    assert [s.layer for s in own.steps][-2:] == ["parent", "cwd"]
    # A Python child's after-fork duties run inside the jail, before seccomp.
    call = compile_plan(worker, MODE_CALL)
    assert [s.layer for s in call.steps][-2:] == ["python", "seccomp"]


def test_ipc_modes():
    """A shared empty IPC namespace is joined (before the user namespace, with the
    host's CAP_SYS_ADMIN); otherwise, or for a lone jail, the user step makes one."""
    def plan(mode: IpcMode, shared: bool = True) -> tuple[list[int], int, tuple[str, ...]]:
        p = compile_plan(replace(SPEC, ipc=mode), MODE_EXEC, shared)
        unshare = next(s.args[0] for s in p.steps if s.layer == "user-namespace")
        return [s.op for s in p.steps if s.layer == "ipc"], unshare & libc.CLONE_NEWIPC, p.slots

    assert plan(IpcMode.SHARED_EMPTY) == ([_jail.OP_SETNS_SLOT], 0, ("netns", "ipcns"))
    assert plan(IpcMode.SHARED_EMPTY, shared=False) == ([], libc.CLONE_NEWIPC, ())
    assert plan(IpcMode.NEW) == ([], libc.CLONE_NEWIPC, ("netns",))


def test_network_modes():
    def ops(mode: NetworkMode, shared: bool = True, path: Path | None = None) -> list[int]:
        spec = replace(SPEC, network=mode, netns_path=path)
        return [s.op for s in compile_plan(spec, MODE_EXEC, shared).steps if
                s.layer in ("network", "mount-namespace")]

    assert ops(NetworkMode.SHARED_EMPTY) == [_jail.OP_SETNS_SLOT, _jail.OP_UNSHARE]
    assert ops(NetworkMode.SHARED_EMPTY, shared=False) == [_jail.OP_UNSHARE]
    assert ops(NetworkMode.LOOPBACK) == [_jail.OP_UNSHARE, _jail.OP_LOOPBACK_UP]
    assert ops(NetworkMode.NETNS, path=Path("/run/netns/x")) == [_jail.OP_SETNS_PATH,
                                                                 _jail.OP_UNSHARE]
    assert ops(NetworkMode.HOST) == [_jail.OP_UNSHARE]


def test_state_round_trip_and_encoding_are_stable():
    plan = compile_plan(load_profile("examples/http-static").spec, MODE_EXEC, shared=False)
    again = Plan.from_state(marshal.loads(marshal.dumps(plan.state())))
    assert again.encode() == plan.encode()
    assert again.native.nsteps == len(plan.steps)
    assert again.describe() == plan.describe()
    assert any("landlock" in line for line in plan.describe())


def test_errors_name_the_layer_and_what_failed():
    plan = compile_plan(SPEC, MODE_EXEC, shared=False)
    index = next(i for i, s in enumerate(plan.steps) if s.op == _jail.OP_OPEN_BIND)
    err = plan.error((plan.layers.index("rootfs"), index, 0, errno.ENOENT))
    assert str(err) == "jail layer 'rootfs' failed (ENOENT): No such file or directory: /usr"
    assert plan.error((_jail.LAYER_SPAWN, 0, 0, errno.ETIMEDOUT)).message == (
        "the jail did not report in time")
    idmap = plan.error((_jail.LAYER_IDMAP, 0, 2, errno.EPERM))
    assert (idmap.layer, idmap.message) == ("id-map", "writing uid_map: Operation not permitted")
    assert plan.without("rootfs").layers.count("rootfs") == 0


def test_id_maps_follow_the_id_map_step():
    plan = compile_plan(SPEC, MODE_CALL)
    assert plan.id_maps(200_000, 200_001) == ("0 200000 1\n", "0 200001 1\n")
    assert Plan([]).id_maps(1, 1) == (None, None)
    # --uid/--gid: those ids inside, mapped to the jail's host ids, and become them.
    other = compile_plan(replace(SPEC, uid=33, gid=34), MODE_EXEC, shared=False)
    assert other.id_maps(200_000, 200_000) == ("33 200000 1\n", "34 200000 1\n")
    assert [(s.op, s.args[0]) for s in other.steps if s.layer == "credentials"] == [
        (_jail.OP_SETRESGID, 34), (_jail.OP_SETRESUID, 33)]
    assert (plan.id_count, other.id_count, Plan([]).id_count) == (1, 1, 1)


def test_several_ids_map_a_block_and_the_fork_server_templates_it():
    """ids = N: 0..N-1 inside -> the block from the jail's host uid; the program still
    starts as its uid and gid; the allocator is asked for N (id_count)."""
    from sandbox.forkserver import _id_map_templates

    plan = compile_plan(replace(SPEC, ids=34, uid=33, gid=33), MODE_ENTRY)
    assert plan.id_count == 34
    assert plan.id_maps(200_000, 200_000) == ("0 200000 34\n", "0 200000 34\n")
    assert [(s.op, s.args[0]) for s in plan.steps if s.layer == "credentials"] == [
        (_jail.OP_SETRESGID, 33), (_jail.OP_SETRESUID, 33)]
    hole = chr(_jail.IDMAP_HOLE).encode()
    assert _id_map_templates(plan) == (b"0 " + hole + b" 34\n",) * 2
    with pytest.raises(ValueError, match="uid 34 is not mapped inside the jail: ids = 34"):
        replace(SPEC, ids=34, uid=34)


def test_daily_flags_are_rootfs_and_rlimit_steps():
    spec = replace(SPEC, dev=True, tmpfs=((Path("/run"), 1 << 20),),
                   rlimits=(("nofile", -2), ("nproc", -1), ("core", 0)))
    plan = compile_plan(spec, MODE_EXEC, shared=False)
    rootfs = [s for s in plan.steps if s.layer == "rootfs"]
    mounts = [s.data.split(b"\0")[0] for s in rootfs if s.op == _jail.OP_MOUNT]
    assert b"/tmp/run" in mounts and mounts.count(b"/tmp/dev") == 2  # tmpfs, read-only
    devices = [s.data.rstrip(b"\0") for s in rootfs if s.op == _jail.OP_OPEN_BIND]
    assert devices[1:] == [b"/dev/null", b"/dev/zero", b"/dev/full", b"/dev/random",
                           b"/dev/urandom"]  # after the profile's own bind of /usr
    links = [s.data.split(b"\0")[:2] for s in rootfs if s.op == _jail.OP_SYMLINK]
    assert [b"/proc/self/fd", b"/tmp/dev/fd"] in links and len(links) == 4
    flags = [s.flags for s in plan.steps if s.op == _jail.OP_RLIMIT]
    assert flags == [_jail.RLIMIT_KEPT, _jail.RLIMIT_HARD, 0]
    assert not compile_plan(spec, MODE_CALL).slots.count("root")  # nothing shareable


def _step(op: int, args: tuple = (), data: bytes = b"", flags: int = 0) -> bytes:
    return Plan([Step(op, "x", "x", args=args, data=data, flags=flags)]).encode()


@pytest.mark.parametrize("wire", [
    b"",
    b"JPLN",
    struct.pack("=IHHQ", 0, 1, 0, 0),  # bad magic
    struct.pack("=IHHQ", _jail.MAGIC, 1, 1, 0),  # a step is missing
    struct.pack("=IHHQ", _jail.MAGIC, 1, 0, 1 << 40),  # not a namespace flag
    _step(0),  # no op 0
    _step(99),
    _step(_jail.OP_SETNS_SLOT, (_jail.MAX_SLOTS, 0x40000000)),
    _step(_jail.OP_SETNS_SLOT, (0, 0x40000001)),  # two namespace types
    _step(_jail.OP_BIND, (0, 0)),  # a bind never opened
    _step(_jail.OP_MKDIR, (0o777,), b"/a"),  # not NUL-terminated
    _step(_jail.OP_MKDIR, (0o777,), b"/a\0/b\0"),  # one string too many
    _step(_jail.OP_MOUNT, (0, 0), b"\0\0\0\0"),  # no target
    _step(_jail.OP_PRCTL, (22, 2)),  # PR_SET_SECCOMP: not through OP_PRCTL
    _step(_jail.OP_SECCOMP, (0,), b"\0" * 7),
    _step(_jail.OP_SECCOMP, (1,), b"\0" * 8),  # TSYNC: never
    _step(_jail.OP_LANDLOCK, (1, 0, 0), b"\0" * 10, flags=8),
    _step(_jail.OP_FDS, (), b"\0"),  # a payload where none belongs
    _step(_jail.OP_SETHOSTNAME, (), b"h" * 65 + b"\0"),
    _step(_jail.OP_RLIMIT, (16, 0)),
    _step(_jail.OP_RLIMIT, (7, 0), flags=3),  # kept fds and the hard limit: one or the other
    _step(_jail.OP_SYMLINK, (), b"/proc/self/fd\0"),  # no path for the link
    _step(_jail.OP_SYMLINK, (), b"/proc/self/fd\0\0"),  # an empty path
    Plan([]).encode() + b"\0" * 8,  # trailing bytes
])
def test_decoder_refuses_bad_plans(wire: bytes):
    with pytest.raises(ValueError, match="bad jail plan"):
        _jail.Plan(wire)


def test_layer_ids_are_checked_and_reserved_ones_refused():
    for reserved in (_jail.LAYER_SPAWN, _jail.LAYER_CGROUP, _jail.LAYER_RESERVED):
        wire = bytearray(_step(_jail.OP_FDS))
        struct.pack_into("=H", wire, 16 + 2, reserved)
        with pytest.raises(ValueError, match="reserved"):
            _jail.Plan(bytes(wire))


def test_spawn_checks_its_arguments():
    plan = compile_plan(load_profile("titus-worker").spec, MODE_ENTRY)
    with pytest.raises(ValueError, match="slot"):
        _jail.spawn(plan.native, MODE_ENTRY, entry=_jail.entry("exit"))
    with pytest.raises(ValueError, match="CLONE_PARENT"):
        _jail.spawn(Plan([]).native, MODE_CALL, parent=True)
    with pytest.raises(ValueError, match="exec needs"):
        _jail.spawn(Plan([]).native, MODE_EXEC)
    with pytest.raises(ValueError, match="NUL"):
        _jail.spawn(Plan([]).native, MODE_EXEC, argv=[b"a\0b"], envp=[], paths=[b"/x"])
    with pytest.raises(ValueError, match="PyCapsule"):
        _jail.spawn(Plan([]).native, MODE_ENTRY, entry=object())
    with pytest.raises(ValueError, match="no built-in entry"):
        _jail.entry("nothing")
    with pytest.raises(ValueError, match="keep_sync"):
        _jail.spawn(Plan([]).native, MODE_ENTRY, entry=_jail.entry("exit"), keep_sync=True)
    with pytest.raises(ValueError, match="id-map step"):  # the child must wait to be put in
        _jail.spawn(Plan([]).native, MODE_CALL, cgroups=[0])
    with pytest.raises(ValueError, match="more than"):
        _jail.spawn(Plan([]).native, MODE_CALL, cgroups=[0] * (_jail.MAX_CGROUPS + 1))
    with pytest.raises(TypeError, match="callable"):
        _jail.spawn(Plan([]).native, MODE_CALL, on_listener=3)


def test_parent_side_errors_are_named():
    plan = compile_plan(SPEC, MODE_CALL)
    cgroup = plan.error((_jail.LAYER_CGROUP, 0, 0, errno.EACCES))
    assert (cgroup.layer, cgroup.message) == (
        "cgroup", "putting the jail in its cgroup: Permission denied")
    hook = plan.error((_jail.LAYER_SPAWN, 0, 2, errno.ECANCELED))
    assert hook.message.startswith("the seccomp listener's handler failed")


def test_bpf_step_checks_the_program():
    with pytest.raises(OSError) as info:
        bpf.steps(b"\0" * 12)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(JailError):
        raise Plan([]).error((_jail.LAYER_EXEC, 0, 0, errno.ENOENT))
