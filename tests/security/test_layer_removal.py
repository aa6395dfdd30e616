"""Each layer counts: an attack that the full plan stops succeeds once that layer's
steps are dropped from the plan (Plan.without), and nothing else changed.

test_layers.py proves the layers through the spec's switches; this proves them
through the plan the executor applies, one layer at a time.  seccomp is off
except in its own case, so it cannot mask another layer.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import signal
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from sandbox.launcher import Launcher
from sandbox.plan import MODE_CALL
from sandbox.policy import load_policy
from sandbox.seccomp import compile_policy
from sandbox.spec import BindMount, IpcMode, JailSpec
from tests.jailtools import with_nofile

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")

BASE = with_nofile(JailSpec(seccomp_bpf=None), 16)
_libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the jail cannot open libraries
PR_GET_PDEATHSIG, PR_GET_DUMPABLE, PR_CAPBSET_READ, PR_GET_NO_NEW_PRIVS = 2, 3, 23, 39
CAP_SYS_ADMIN = 21


@pytest.fixture(scope="module")
def launcher():
    launcher = Launcher()
    yield launcher
    launcher.close()


def connect(port: int) -> object:
    with socket.socket() as s:  # no create_connection: its getaddrinfo imports codecs
        s.connect(("127.0.0.1", port))
        return "connected"


def read_file(path: str) -> object:
    with open(path, "rb") as f:
        return len(f.read())


def prctl(option: int, arg: int = 0) -> object:
    return _libc.prctl(option, arg, 0, 0, 0)


def pdeathsig() -> object:
    sig = ctypes.c_int(-1)
    _libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0)
    return sig.value


def own_pid() -> object:
    return os.getpid()


def nofile() -> object:
    return list(resource.getrlimit(resource.RLIMIT_NOFILE))


def hostname() -> object:
    return os.uname().nodename


def list_dir(path: str) -> object:
    return sorted(os.listdir(path))


def mount_ns() -> object:
    return os.readlink("/proc/self/ns/mnt")


def parent_pid() -> object:
    return os.getppid()


def shm_lookup(key: int) -> object:
    """The System V shared memory segment `key` as this process's IPC namespace has it."""
    if _libc.shmget(key, 0, 0) < 0:
        raise OSError(ctypes.get_errno(), "shmget")
    return "found"


def signal_self() -> object:
    os.kill(os.getpid(), signal.SIGUSR1)
    return "survived"


@dataclass
class Case:
    layers: tuple[str, ...]
    spec: JailSpec
    probe: Any
    args: tuple = ()
    jailed: object = None  # the probe's answer with every layer
    bare: object = None  # ... and with `layers` dropped


def cases(tmp: Path, port: int, shm_key: int) -> list[Case]:
    secret = tmp / "secret"
    secret.write_text("x" * 5)
    secret.chmod(0o600)
    tmp.chmod(0o755)
    host_ns = os.readlink("/proc/self/ns/mnt")
    getppid = tmp / "no-getppid.toml"
    getppid.write_text('[seccomp]\ndefault = "allow"\ndeny = ["getppid"]\n')
    seen = replace(BASE, empty_root=False, mount_proc=False)
    return [
        Case(("network",), BASE, connect, (port,), {"error": "ENETUNREACH"}, "connected"),
        Case(("rootfs",), BASE, read_file, ("/etc/passwd",), {"error": "ENOENT"},
             os.path.getsize("/etc/passwd")),
        Case(("mount-namespace",), seen, mount_ns, (), "other", host_ns),
        Case(("user-namespace", "id-map", "credentials", "uts"), seen, read_file,
             (str(secret),), {"error": "EACCES"}, 5),
        Case(("pid-namespace",), BASE, own_pid, (), 1, "other"),
        # The host's segment: out of sight in the jail's own IPC namespace (made with
        # its user namespace), and in the shared empty one (its own layer).
        Case(("user-namespace", "id-map", "credentials", "uts"), BASE, shm_lookup, (shm_key,),
             {"error": "ENOENT"}, "found"),
        Case(("ipc",), replace(BASE, ipc=IpcMode.SHARED_EMPTY), shm_lookup, (shm_key,),
             {"error": "ENOENT"}, "found"),
        Case(("capabilities",), BASE, prctl, (PR_CAPBSET_READ, CAP_SYS_ADMIN), 0, 1),
        Case(("no-new-privs",), BASE, prctl, (PR_GET_NO_NEW_PRIVS,), 1, 0),
        Case(("rlimits",), BASE, nofile, (), [16, 16], nofile()),
        Case(("uts",), BASE, hostname, (), "jail", os.uname().nodename),
        Case(("landlock",), replace(BASE, landlock=True, binds=(BindMount(tmp, tmp),)),
             list_dir, ("/",), {"error": "EACCES"}, [tmp.parts[1]]),
        Case(("seccomp",), replace(BASE, seccomp_bpf=compile_policy(load_policy(getppid))),
             parent_pid, (), "killed", 0),
    ]


def outcome(launcher: Launcher, case: Case, drop: tuple[str, ...]) -> object:
    plan = launcher.plan(case.spec, MODE_CALL)
    r, w = os.pipe()
    try:
        jail = launcher.spawn(case.spec, _answer, (case.probe, case.args), fds=[w],
                              plan=plan.without(*drop))
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        raw = f.read()
    code = jail.wait(20)
    if code == -signal.SIGSYS:
        return "killed"
    return json.loads(raw) if raw else code


def _answer(probe: Any, args: tuple) -> None:
    try:
        value = probe(*args)
    except OSError as e:
        value = {"error": errno.errorcode.get(e.errno or 0, repr(e))}
    os.write(0, json.dumps(value).encode())


@pytest.fixture
def shm_key():
    """A System V shared memory segment in the host's IPC namespace, readable by all."""
    IPC_CREAT, IPC_EXCL, IPC_RMID = 0o1000, 0o2000, 0
    for key in range(0x7175_0000 + os.getpid() % 4096, 0x7175_0000 + os.getpid() % 4096 + 64):
        shmid = _libc.shmget(key, 4096, IPC_CREAT | IPC_EXCL | 0o644)
        if shmid >= 0:
            break
    else:
        raise OSError(ctypes.get_errno(), "shmget")
    yield key
    _libc.shmctl(shmid, IPC_RMID, None)


@pytest.fixture
def port():
    srv = socket.create_server(("127.0.0.1", 0))
    yield srv.getsockname()[1]
    srv.close()


def test_each_layer_stops_its_attack_and_only_it(launcher, tmp_path, port, shm_key):
    for case in cases(tmp_path, port, shm_key):
        jailed, bare = outcome(launcher, case, ()), outcome(launcher, case, case.layers)
        if case.jailed == "other":
            assert jailed != case.bare, case.layers
        else:
            assert jailed == case.jailed, (case.layers, jailed)
        if case.bare == "other":
            assert bare != case.jailed, case.layers
        else:
            assert bare == case.bare, (case.layers, bare)


def test_parent_death_signal_is_set_again_after_the_credentials(launcher):
    """The credential change clears PDEATHSIG: the "parent" layer sets it again."""
    case = Case(("parent",), BASE, pdeathsig)
    assert outcome(launcher, case, ()) == BASE.parent_death_signal
    assert outcome(launcher, case, ("parent",)) == 0


def test_fds_layer_closes_what_was_not_passed(launcher, tmp_path):
    stray = os.open(tmp_path, os.O_RDONLY)  # close-on-exec, but a clone keeps it
    try:
        plan = launcher.plan(BASE, MODE_CALL)
        for drop, expect in (((), 0), (("fds",), 3)):
            jail = launcher.spawn(BASE, _stray_open, (stray,), plan=plan.without(*drop))
            assert jail.wait(20) == expect, drop
    finally:
        os.close(stray)


def _stray_open(fd: int) -> None:
    try:
        os.fstat(fd)
    except OSError:
        os._exit(0)
    os._exit(3)


def test_signals_layer_resets_the_parents_handlers(launcher):
    """A handler of the spawning process must not run in the jail (nor its wakeup fd).
    Outside a PID namespace: a PID 1 ignores its own signals when it has no handler."""
    old = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        case = Case(("signals",), BASE, signal_self)
        assert outcome(launcher, case, ("pid-namespace",)) == -signal.SIGUSR1
        assert outcome(launcher, case, ("pid-namespace", "signals")) == "survived"
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_dumpable_layer(launcher):
    """Not dumpable is the layer's doing where the kernel would not do it anyway: with
    fs.suid_dumpable = 0 the credential change alone clears it, so the check is
    that the layer's value wins both ways."""
    loose = replace(BASE, dumpable=True)
    case = Case(("dumpable",), loose, prctl, (PR_GET_DUMPABLE,))
    assert outcome(launcher, case, ()) == 1
    suid_dumpable = int(Path("/proc/sys/fs/suid_dumpable").read_text())
    assert outcome(launcher, case, ("dumpable",)) == (1 if suid_dumpable == 1 else 0)
