"""Each non-seccomp layer of the jail, proven by an attack that fails with the
layer and succeeds without it (seccomp is off here, so it cannot mask a layer).

The seccomp layer has its own tests (test_worker_profile.py).
"""

from __future__ import annotations

import ctypes
import os
import resource
import socket
import threading
from dataclasses import replace

import pytest

from sandbox.launcher import Launcher
from sandbox.spec import BindMount, JailSpec, NetworkMode
from tests.jailtools import run_probe, with_nofile

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")

BASE = with_nofile(JailSpec(seccomp_bpf=None), 16)


@pytest.fixture(scope="module")
def launcher():
    launcher = Launcher()
    yield launcher
    launcher.close()


def read_host_file(path: str) -> object:
    with open(path, "rb") as f:
        return len(f.read())


def test_empty_root_hides_host_files(launcher, tmp_path):
    jailed = run_probe(launcher, BASE, read_host_file, ("/etc/passwd",))
    assert jailed.value == {"error": "ENOENT"}
    without = run_probe(launcher, replace(BASE, empty_root=False), read_host_file,
                        ("/etc/passwd",))
    assert without.value == os.path.getsize("/etc/passwd")
    # Even with the host's files visible, the jail's uid is nobody's: a
    # root-only file stays closed.
    secret = tmp_path / "secret"
    secret.write_text("x" * 10)
    secret.chmod(0o600)
    no_root = run_probe(launcher, replace(BASE, empty_root=False), read_host_file,
                        (str(secret),))
    assert no_root.value == {"error": "EACCES"}


def write_file(path: str) -> object:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    return "written"


def test_root_is_read_only(launcher):
    assert run_probe(launcher, BASE, write_file, ("/x",)).value == {"error": "EROFS"}
    with_tmp = replace(BASE, writable_tmpfs="/tmp")
    assert run_probe(launcher, with_tmp, write_file, ("/tmp/x",)).value == "written"


def test_bind_mounts_are_read_only(launcher, tmp_path):
    tmp_path.chmod(0o755)
    (tmp_path / "data").write_text("abc")
    spec = replace(BASE, binds=(BindMount(tmp_path, tmp_path),))
    assert run_probe(launcher, spec, read_host_file, (str(tmp_path / "data"),)).value == 3
    assert run_probe(launcher, spec, write_file, (str(tmp_path / "new"),)).value == {
        "error": "EROFS"}
    assert not (tmp_path / "new").exists()


def list_pids() -> object:
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())


def test_pid_namespace_shows_only_the_jail(launcher):
    spec = replace(BASE, mount_proc=True)
    assert run_probe(launcher, spec, list_pids).value == [1]
    # Without its own PID namespace the jail's /proc would list the host: the
    # same probe on the host side sees many processes.
    assert len(list_pids()) > 1


def my_ids() -> object:
    return [os.getpid(), os.getuid(), os.getgid()]


def test_jail_is_pid_1_with_unique_host_uid(launcher):
    jails = [launcher.spawn(BASE, threading.Event().wait) for _ in range(3)]
    try:
        host_uids = set()
        for jail in jails:
            with open(f"/proc/{jail.pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f)
            host_uids.add(fields["Uid"].split()[0])
            assert fields["NSpid"].split()[-1] == "1"
        assert len(host_uids) == 3 and "0" not in host_uids
    finally:
        for jail in jails:
            jail.kill()
            jail.wait()
    assert run_probe(launcher, BASE, my_ids).value == [1, 0, 0]


def connect_tcp(port: int) -> object:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.connect(("127.0.0.1", port))
        return "connected"
    finally:
        s.close()


@pytest.fixture
def tcp_listener():
    srv = socket.create_server(("127.0.0.1", 0))
    yield srv.getsockname()[1]
    srv.close()


@pytest.mark.parametrize("mode", [NetworkMode.SHARED_EMPTY, NetworkMode.NEW, NetworkMode.LOOPBACK])
def test_network_namespace_cuts_the_host_network(launcher, tcp_listener, mode):
    out = run_probe(launcher, replace(BASE, network=mode), connect_tcp, (tcp_listener,))
    assert out.value == {"error": "ECONNREFUSED" if mode == NetworkMode.LOOPBACK
                         else "ENETUNREACH"}
    host = run_probe(launcher, replace(BASE, network=NetworkMode.HOST), connect_tcp,
                     (tcp_listener,))
    assert host.value == "connected"


def kill_pid(pid: int) -> object:
    os.kill(pid, 0)
    return "signalled"


def test_cannot_signal_parent_or_sibling(launcher):
    sibling = launcher.spawn(BASE, threading.Event().wait)
    try:
        for target in (os.getpid(), sibling.pid):
            assert run_probe(launcher, BASE, kill_pid, (target,)).value == {"error": "ESRCH"}
        # Control: the probe works on a pid the jail can see (its own PID 1).
        assert run_probe(launcher, BASE, kill_pid, (1,)).value == "signalled"
    finally:
        sibling.kill()
        sibling.wait()


def host_has_cap(cap: int) -> bool:
    with open("/proc/self/status") as f:
        eff = next(line for line in f if line.startswith("CapEff")).split()[1]
    return bool(int(eff, 16) >> cap & 1)


def raise_nofile() -> object:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard * 2, hard * 2))
    except ValueError:  # how Python reports EPERM from setrlimit
        return {"error": "EPERM"}
    return "raised"


def test_rlimits_cannot_be_raised(launcher):
    assert run_probe(launcher, BASE, raise_nofile).value == {"error": "EPERM"}
    # Even with its capabilities kept, the jail's root is root of its own user
    # namespace only: CAP_SYS_RESOURCE there does not raise a host limit.
    keep_caps = replace(BASE, drop_capabilities=False)
    assert run_probe(launcher, keep_caps, raise_nofile).value == {"error": "EPERM"}
    # Control: the same probe as host root, outside any jail, succeeds (where
    # this machine grants root CAP_SYS_RESOURCE at all; some containers do not).
    if not host_has_cap(24):
        return
    pid = os.fork()
    if pid == 0:
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
        os._exit(0 if raise_nofile() == "raised" else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def do_mount() -> object:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"none", b"/", b"tmpfs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), "mount")
    return "mounted"


def test_mount_refused(launcher):
    # The mount namespace belongs to the host user namespace: even the jail's
    # own root (capabilities kept) may not mount in it.
    assert run_probe(launcher, BASE, do_mount).value == {"error": "EPERM"}
    assert run_probe(launcher, replace(BASE, drop_capabilities=False), do_mount).value == {
        "error": "EPERM"}


def do_fork() -> object:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return "forked"


def test_nproc_limit_stops_fork(launcher):
    spec = replace(BASE, rlimits=(*BASE.rlimits, ("nproc", 0)))
    assert run_probe(launcher, spec, do_fork).value == {"error": "EAGAIN"}
    assert run_probe(launcher, BASE, do_fork).value == "forked"


def cap_effective() -> object:
    with open(f"/proc/{os.getppid() or 1}/status") as f:
        return next(line for line in f if line.startswith("CapEff")).split()[1]


def test_capabilities_are_empty(launcher):
    spec = replace(BASE, mount_proc=True)
    assert run_probe(launcher, spec, cap_effective).value == "0000000000000000"
    keep = replace(spec, drop_capabilities=False)
    assert run_probe(launcher, keep, cap_effective).value != "0000000000000000"


def dumpable() -> object:
    libc = ctypes.CDLL(None, use_errno=True)
    return [libc.prctl(3, 0, 0, 0, 0), libc.prctl(39, 0, 0, 0, 0)]  # GET_DUMPABLE, GET_NNP


def test_not_dumpable_and_no_new_privs(launcher):
    assert run_probe(launcher, BASE, dumpable).value == [0, 1]
    loose = replace(BASE, dumpable=True, no_new_privs=False)
    assert run_probe(launcher, loose, dumpable).value == [1, 0]


def count_fds() -> object:
    return sorted(int(n) for n in os.listdir("/proc/self/fd"))


def test_only_passed_fds_survive(launcher, tmp_path):
    spec = replace(BASE, mount_proc=True)
    stray = os.open(str(tmp_path), os.O_RDONLY)  # inheritable=False but fork keeps it
    extra_r, extra_w = os.pipe()
    try:
        out = run_probe(launcher, spec, count_fds, fds=[extra_w])
    finally:
        for fd in (stray, extra_r, extra_w):
            os.close(fd)
    # 0: the probe's answer pipe, 1: the extra fd, 2: listdir's own fd.
    assert out.value == [0, 1, 2]


def test_failed_layer_is_named(launcher):
    from sandbox.errors import JailError

    bad = replace(BASE, binds=(BindMount("/nonexistent-for-test", "/x"),))
    with pytest.raises(JailError) as info:
        launcher.spawn(bad, lambda: None)
    assert info.value.layer == "rootfs"
    assert not launcher.live


def test_landlock_confines_to_binds(launcher, tmp_path):
    from sandbox import landlock

    if landlock.abi_version() < 1:
        pytest.skip("no Landlock on this kernel")
    tmp_path.chmod(0o755)
    (tmp_path / "data").write_text("abc")
    # The jail's root is writable only where a writable tmpfs is; with Landlock
    # even the tmpfs is reachable only because the profile names it.
    spec = replace(BASE, binds=(BindMount(tmp_path, tmp_path),), writable_tmpfs="/tmp",
                   landlock=True)
    assert run_probe(launcher, spec, read_host_file, (str(tmp_path / "data"),)).value == 3
    assert run_probe(launcher, spec, write_file, ("/tmp/x",)).value == "written"
    # Control: without Landlock the (empty, read-only) root itself is listable...
    assert run_probe(launcher, replace(spec, landlock=False), list_root).value == ["tmp"]
    # ...with it, nothing outside the named trees is reachable, not even "/".
    assert run_probe(launcher, spec, list_root).value == {"error": "EACCES"}


def list_root() -> object:
    return sorted(os.listdir("/"))
