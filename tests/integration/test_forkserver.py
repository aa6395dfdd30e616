"""sandbox.forkserver and sandbox.clone: jails cloned by a separately exec'd server are the
caller's children, in their own PID namespace, with the caller's uid; errors name the
layer; a dead server is noticed; updates reach the jails cloned after them."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading

import pytest

from sandbox import clone
from sandbox.forkserver import ForkServer, ForkServerError, Reply
from sandbox.launcher import Launcher
from sandbox.spec import JailSpec, UidRange
from tests.titus_harness import ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")

UIDS = UidRange(660_000, 64)
SPEC = JailSpec(seccomp_bpf=None, uid_range=UIDS)


@pytest.fixture
def server():
    server = ForkServer("tests.forkserver_recipes:setup", SPEC)
    server.start()
    launcher = Launcher()
    yield server, launcher
    server.close()
    launcher.close()


def reply_of(server: ForkServer) -> Reply:
    for _ in range(100):
        select.select([server.fileno()], [], [], 0.1)
        replies = server.replies()
        assert replies is not None, "the fork server died"
        if replies:
            return replies[0]
    raise AssertionError("no reply from the fork server")


def status(pid: int) -> dict[str, list[str]]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.split() for k, _, v in (line.partition(":") for line in f)}


def spawn(server: ForkServer, launcher: Launcher, name: str = "report"):
    ours, theirs = socket.socketpair()
    uid = launcher.uids(UIDS).allocate()
    server.request(name, uid, [theirs.fileno()])
    theirs.close()
    reply = reply_of(server)
    if reply.pid is None:  # failed before the clone
        launcher.uids(UIDS).release(uid)
        return ours, None, reply
    return ours, launcher.adopt(reply.pid, uid, name, UIDS), reply


def test_jails_are_our_children_with_our_uid_in_their_own_pid_namespace(server):
    server, launcher = server
    ours, jail, reply = spawn(server, launcher)
    assert reply.error is None
    assert ours.recv(100) == b"first"
    st = status(jail.pid)
    assert int(st["PPid"][0]) == os.getpid()  # CLONE_PARENT: not the server's child
    assert st["NSpid"][-1] == "1"  # PID 1 of its own namespace
    assert int(st["Uid"][0]) == jail.uid
    assert st["Seccomp"] == ["0"] and st["NoNewPrivs"] == ["1"]
    second_ours, second, _ = spawn(server, launcher)
    # One shared empty read-only root (a mount namespace) for the spec, not ours.
    mnt = os.readlink(f"/proc/{jail.pid}/ns/mnt")
    assert mnt == os.readlink(f"/proc/{second.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    assert os.readlink(f"/proc/{jail.pid}/ns/pid") != os.readlink(f"/proc/{second.pid}/ns/pid")
    assert second.uid != jail.uid
    assert second_ours.recv(100) == b"first"
    for sock, j in ((ours, jail), (second_ours, second)):
        sock.close()
        assert j.wait(10) == 0  # reaped by us, through the launcher


def test_updates_reach_the_jails_cloned_after_them(server):
    server, launcher = server
    server.update("report", b"second" * 100_000)  # far beyond one packet
    ours, jail, _ = spawn(server, launcher)
    data = b""
    while len(data) < 600_000:
        chunk = ours.recv(1 << 20)
        assert chunk
        data += chunk
    assert data == b"second" * 100_000
    ours.close()
    assert jail.wait(10) == 0


def test_a_failing_layer_is_named_and_the_server_goes_on(server):
    server, launcher = server
    ours, jail, reply = spawn(server, launcher, "broken")
    assert reply.error is not None and reply.error.layer == "rootfs"
    assert str(reply.error) == ("jail layer 'rootfs' failed (ENOENT): No such file or "
                                "directory: /nonexistent-forkserver-test")
    assert jail is None  # the shared root could not be built: nothing was cloned
    ours.close()
    ours, jail, reply = spawn(server, launcher)  # the server goes on
    assert reply.error is None and ours.recv(100) == b"first"
    ours.close()
    assert jail.wait(10) == 0


def test_a_dead_server_is_noticed_and_its_jails_live_on(server):
    server, launcher = server
    ours, jail, _ = spawn(server, launcher)
    os.kill(server.pid, signal.SIGKILL)
    select.select([server.fileno()], [], [], 5)
    assert server.replies() is None
    assert ours.recv(100) == b"first"  # the jail is ours, and still serving
    ours.close()
    assert jail.wait(10) == 0


def test_a_setup_error_is_one_line():
    server = ForkServer("tests.forkserver_recipes:no_such_setup", SPEC)
    with pytest.raises(ForkServerError, match="no_such_setup") as e:
        server.start()
    assert "\n" not in str(e.value)
    assert server.sock is None and server.proc is None


CLONE_PROBE = """
import os, random
from sandbox import clone, libc
r, w = os.pipe()
pid = clone.clone(libc.CLONE_NEWPID)
if pid == 0:
    os.write(w, b"%d %r" % (os.getpid(), random.random()))
    os._exit(0)
os.close(w)
child_pid, child_random = os.read(r, 100).split()
assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
print(child_pid.decode(), float(child_random) != random.random())
"""


def test_clone_runs_python_fork_duties_and_makes_pid_1():
    # In a fresh interpreter: clone() refuses a caller with threads (pytest's may have some).
    out = subprocess.run([sys.executable, "-c", CLONE_PROBE], cwd=ROOT, capture_output=True,
                         text=True, timeout=30, check=True).stdout.split()
    assert out == ["1", "True"]  # PID 1, and `random` reseeded after the clone as after fork


def test_clone_refuses_a_threaded_caller():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        with pytest.raises(RuntimeError, match="single-threaded"):
            clone.clone(0)
    finally:
        stop.set()
        thread.join()


def mapped(pid: int, address: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if start <= address < end:
                return True
    return False


def test_native_jails_are_born_without_the_servers_python(tmp_path):
    """sandbox/dontfork.py: a server whose every jail is native keeps its pymalloc arenas
    and the interpreter's data out of them; the jail still runs (it needs neither)."""
    import json

    out = tmp_path / "where.json"
    server = ForkServer("tests.forkserver_recipes:native_setup", (SPEC, str(out)))
    server.start()
    launcher = Launcher()
    try:
        where = json.loads(out.read_text())
        ours, jail, reply = spawn(server, launcher, "hold")
        assert reply.error is None and jail is not None
        try:
            assert where["arenas"], "the server tracked no arena"
            assert where["interpreter"], "no interpreter data found to leave out"
            for start, _length in where["arenas"] + where["interpreter"]:
                assert mapped(server.pid, start) and not mapped(jail.pid, start)
            assert jail.poll() is None  # alive: holding fd 0 until we close it
        finally:
            ours.close()
            assert jail.wait(10) == 0
    finally:
        server.close()
        launcher.close()


def test_python_jails_keep_the_servers_python(server, tmp_path):
    """A server with Python recipes leaves its memory alone: the jail runs Python."""
    srv, launcher = server
    ours, jail, reply = spawn(srv, launcher)
    try:
        assert reply.error is None and ours.recv(16) == b"first"
    finally:
        ours.close()
        if jail is not None:
            jail.wait(10)
