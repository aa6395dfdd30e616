"""sandbox.forkserver and sandbox.clone: jails cloned by a separately exec'd server are the
caller's children, in their own PID namespace, with the caller's uid; errors name the
layer; a dead server is noticed; updates reach the jails cloned after them.  Native
entries are served by the C loop (sandbox/_jail/serve.c): the same jails and errors,
no fd left behind by any request, good or bad, and almost no page of the server
written after a clone; the server dies with its caller."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import select
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time

import pytest

from sandbox import _jail, clone, dontfork, hugetext, notify
from sandbox.forkserver import ForkServer, ForkServerError, Reply, encode_request
from sandbox.launcher import Launcher
from sandbox.listener import Listener
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


def test_a_recipes_libraries_run_from_huge_pages_in_its_jails(server):
    """Recipe.huge_text: the server moved libcrypto's code into 2 MB pages
    (sandbox/hugetext.py), which its jails inherit and run."""
    server, launcher = server
    if not hugetext.thp_allowed():
        pytest.skip("this host turned transparent huge pages off")
    maps = dontfork.mappings(f"/proc/{server.pid}/smaps")
    crypto = min((m for m in maps if "/libcrypto.so" in m.path), key=lambda m: m.offset)
    # Its first pages are gone from the file's mappings: anonymous, read+execute, huge.
    assert crypto.offset == 2 * hugetext.HUGE_PAGE, crypto
    moved = [m for m in maps if m.end == crypto.start]
    assert moved and moved[0].path == "" and moved[0].perms == "r-xp", moved
    assert moved[0].huge_kb * 1024 == moved[0].end - moved[0].start == crypto.offset
    ours, jail, reply = spawn(server, launcher, "digest")
    assert reply.error is None
    assert ours.recv(100) == hashlib.sha256(b"titus").hexdigest().encode()
    ours.close()
    assert jail.wait(10) == 0


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


@pytest.mark.parametrize("name", ["broken", "native-broken"])  # Python's, the C loop's
def test_a_failing_layer_is_named_and_the_server_goes_on(server, name):
    server, launcher = server
    ours, jail, reply = spawn(server, launcher, name)
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


def test_native_entries_are_jails_of_the_same_kind(server):
    server, launcher = server
    ours, jail, reply = spawn(server, launcher, "native")
    assert reply.error is None
    assert ours.recv(100) == b"1 0 0\n"  # PID 1, root inside its own user namespace
    assert jail.wait(10) == 0
    ours.close()
    ours, jail, reply = spawn(server, launcher, "hold")
    st = status(jail.pid)
    assert int(st["PPid"][0]) == os.getpid()
    assert st["NSpid"][-1] == "1" and int(st["Uid"][0]) == jail.uid == int(st["Gid"][0])
    assert st["NoNewPrivs"] == ["1"] and st["CapEff"] == ["0000000000000000"]
    assert os.listdir(f"/proc/{jail.pid}/fd") == ["0"]  # its fds, nothing of the server
    assert os.readlink(f"/proc/{jail.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    ours.close()
    assert jail.wait(10) == 0


@pytest.mark.parametrize("refused", ["", "ENOSYS", "EPERM"])
def test_a_native_jail_keeps_no_handler_of_the_server(refused):
    """The server's handler is SIG_DFL in its jails and its ignored signal stays ignored:
    the kernel resets handlers at the clone (clone3 with CLONE_CLEAR_SIGHAND) or, where
    clone3 is refused, the signals step does, from the list the server read."""
    usr1, usr2 = 1 << (signal.SIGUSR1 - 1), 1 << (signal.SIGUSR2 - 1)
    server = ForkServer("tests.forkserver_recipes:signals_setup", (SPEC, refused))
    server.start()
    launcher = Launcher()
    try:
        assert int(status(server.pid)["SigCgt"][0], 16) & usr1
        ours, jail, reply = spawn(server, launcher, "hold")
        assert reply.error is None
        st = status(jail.pid)
        ours.close()
        assert jail.wait(10) == 0
        assert not int(st["SigCgt"][0], 16) & usr1, "the server's handler is in the jail"
        assert int(st["SigIgn"][0], 16) & usr2
    finally:
        server.close()
        launcher.close()


def test_a_native_jail_that_fails_is_named_and_ours_to_reap(server):
    server, launcher = server
    ours, jail, reply = spawn(server, launcher, "native-netns")
    assert reply.error is not None and reply.error.layer == "network"
    assert str(reply.error) == (
        "jail layer 'network' failed (ENOENT): cannot open network namespace "
        "/nonexistent-forkserver-netns: No such file or directory")
    assert jail is not None and reply.error.pid == jail.pid  # cloned, then killed
    assert jail.wait(10) in (-signal.SIGKILL, 125)
    ours.close()
    ours, jail, reply = spawn(server, launcher, "no-such-recipe")
    assert jail is None and reply.error.layer == "spawn" and "no-such-recipe" in str(reply.error)
    ours.close()
    ours, jail, reply = spawn(server, launcher, "native")  # the server goes on
    assert reply.error is None and ours.recv(100) == b"1 0 0\n"
    ours.close()
    assert jail.wait(10) == 0


@pytest.mark.skipif(not notify.available(), reason="no seccomp user notification here")
def test_a_native_jails_listener_comes_with_its_reply(server):
    """A filter that forbids read and write still notifies: the jail says where its
    listener will be before loading it, goes on without waiting, and the server
    copies it once the jail is ready and sends it with the reply."""
    server, launcher = server
    ours, jail, reply = spawn(server, launcher, "native-notify")
    assert reply.error is None and reply.listener is not None and jail is not None
    listener = Listener(reply.listener)
    try:
        call = listener.receive(timeout=10)  # the entry's first forbidden call
        # (its arguments are evaluated in either order)
        assert call is not None and call.name in ("geteuid", "getegid"), call
        assert call.pid == jail.pid
        kept = {fd: os.readlink(f"/proc/{jail.pid}/fd/{fd}")
                for fd in os.listdir(f"/proc/{jail.pid}/fd")}
        assert sorted(kept) == ["0", "2"] and kept["2"] == "anon_inode:seccomp notify", kept
        jail.kill()  # unanswered: the call never runs, nothing is written to fd 0
        assert jail.wait(10) == -signal.SIGKILL
        ours.settimeout(5)
        assert ours.recv(100) == b""
    finally:
        listener.close()
        ours.close()


@pytest.mark.skipif(not notify.available(), reason="no seccomp user notification here")
def test_a_native_jail_that_exits_at_once_is_not_a_failed_spawn(server):
    """Its listener may be gone before the server could copy it (the jail's fds close
    before its exit shows): a ready jail without a listener, not an error."""
    server, launcher = server
    for _ in range(20):
        ours, jail, reply = spawn(server, launcher, "native-notify-exit")
        ours.close()
        assert reply.error is None, reply.error
        assert jail is not None
        killed = False
        if reply.listener is not None:
            listener = Listener(reply.listener)
            try:
                with contextlib.suppress(EOFError):  # EOF: the jail is gone
                    if listener.receive(timeout=5) is not None:
                        # A call its policy forbids: ASan's runtime on its way out
                        # (`make test-asan`), waiting on the listener.
                        jail.kill()
                        killed = True
            finally:
                listener.close()
        assert jail.wait(10) == (-signal.SIGKILL if killed else 0)


def server_fds(server: ForkServer) -> list[str]:
    return sorted(os.listdir(f"/proc/{server.pid}/fd"))


def send_raw(server: ForkServer, packet: bytes, nfds: int) -> None:
    pairs = [socket.socketpair() for _ in range((nfds + 1) // 2)]
    fds = [s.fileno() for pair in pairs for s in pair][:nfds]
    socket.send_fds(server.sock, [packet], fds)
    for pair in pairs:
        for s in pair:
            s.close()


def test_no_request_leaves_an_fd_behind(server):
    server, launcher = server
    spawn(server, launcher, "native")[0].close()
    before = server_fds(server)
    for name in ("native", "native-netns", "native-broken", "report", "broken", "no-such"):
        ours, jail, _ = spawn(server, launcher, name)
        ours.close()
        if jail is not None:
            jail.wait(10)
    server.update("report", b"again")
    uid = launcher.uids(UIDS).allocate()
    bad = {  # id -> (packet, fds sent)
        71: (encode_request(_jail.REQ_SPAWN, 71, "native", uid, 2), 1),  # fewer fds than said
        72: (encode_request(_jail.REQ_SPAWN, 72, "native", uid, 16), 17),  # more than fit
        73: (encode_request(_jail.REQ_SPAWN, 73, "native", uid, 1)[:-1] + b"\0", 1),
        74: (encode_request(_jail.REQ_UPDATE, 74, "native", uid, 1), 1),  # an update with a uid
        75: (encode_request(_jail.REQ_SPAWN, 75, "native", uid, 0) + bytes(4096), 3),
    }
    for packet, nfds in bad.values():
        send_raw(server, packet, nfds)
    deadline = time.monotonic() + 10
    while bad and time.monotonic() < deadline:
        select.select([server.fileno()], [], [], 0.1)
        replies = server.replies()
        assert replies is not None, "the fork server died"
        for reply in replies:
            assert reply.pid is None and reply.error is not None
            assert reply.error.layer == "spawn" and reply.error.errno == errno.EPROTO, reply.error
            del bad[reply.request_id]
    assert not bad
    launcher.uids(UIDS).release(uid)
    assert server_fds(server) == before
    ours, jail, reply = spawn(server, launcher, "native")
    assert reply.error is None and ours.recv(100) == b"1 0 0\n"
    ours.close()
    jail.wait(10)


def test_a_request_without_a_readable_header_ends_the_server(server):
    server, _ = server
    send_raw(server, b"not a request", 2)
    select.select([server.fileno()], [], [], 10)
    assert server.replies() is None


def private_dirty_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith("Private_Dirty:"))


def test_the_server_writes_almost_nothing_after_a_clone(server):
    """A page the server writes after a clone becomes a private copy in that jail; the
    Python loop wrote ~90 pages (~500 kB a jail), the C loop a few of its stack."""
    server, launcher = server
    held = [spawn(server, launcher, "hold") for _ in range(3)]
    dirty = [private_dirty_kb(jail.pid) for _, jail, _ in held]
    for ours, jail, _ in held:
        ours.close()
        jail.wait(10)
    assert max(dirty[:2]) < 100, dirty  # the last one: the server may write more later


HOLES = """
import ctypes, sys
from sandbox import _jail
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
chunks = [libc.malloc(3000) for _ in range(400)]
for p in chunks[::2]:
    libc.free(p)  # 200 holes among live data
taken = _jail.take_heap_holes()
fresh = libc.malloc(3000)
print(taken, int(fresh > max(chunks)))
"""


def test_the_servers_free_chunks_are_kept_and_its_jails_allocate_past_them(server):
    server, _ = server
    with open(f"/proc/{server.pid}/environ", "rb") as f:
        environ = f.read().split(b"\0")
    assert b"GLIBC_TUNABLES=glibc.malloc.tcache_count=0" in environ  # a freed chunk pins no page
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        return  # ASan's allocator is not glibc's heap
    out = subprocess.run([sys.executable, "-c", HOLES], cwd=ROOT, capture_output=True,
                         text=True, timeout=30, check=True).stdout.split()
    assert int(out[0]) >= 200 * 3000 and out[1] == "1", out


CALLER = """
import sys, time
from sandbox.forkserver import ForkServer
from sandbox.spec import JailSpec, UidRange
server = ForkServer("tests.forkserver_recipes:setup",
                    JailSpec(seccomp_bpf=None, uid_range=UidRange(660_100, 8)))
server.start()
print(server.pid, flush=True)
time.sleep(60)
"""


def gone(pid: int) -> bool:
    try:
        return status(pid)["State"][0] == "Z"
    except FileNotFoundError:
        return True


def test_the_server_dies_with_its_caller():
    caller = subprocess.Popen([sys.executable, "-c", CALLER], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        server_pid = int(caller.stdout.readline())
        assert not gone(server_pid)
    finally:
        caller.kill()
        caller.wait()
        caller.stdout.close()
    deadline = time.monotonic() + 10
    while not gone(server_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gone(server_pid)


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


@contextlib.contextmanager
def holding_jail(arg: tuple):
    """A server of native_setup(arg) (tests/forkserver_recipes.py) and one of its `hold`
    jails, alive (holding fd 0) while the test looks at both; then it exits cleanly."""
    server = ForkServer("tests.forkserver_recipes:native_setup", arg)
    server.start()
    launcher = Launcher()
    try:
        ours, jail, reply = spawn(server, launcher, "hold")
        assert reply.error is None and jail is not None
        try:
            yield server, jail
            assert jail.poll() is None  # alive: holding fd 0 until we close it
        finally:
            ours.close()
            assert jail.wait(10) == 0
    finally:
        server.close()
        launcher.close()


def test_native_jails_are_born_without_the_servers_python(tmp_path):
    """sandbox/dontfork.py: a server whose every jail is native keeps its pymalloc arenas,
    the raw allocator's regions and the interpreter's data out of them; the jail still
    runs (it needs none of them)."""
    import json

    out = tmp_path / "where.json"
    with holding_jail((SPEC, str(out))) as (server, jail):
        where = json.loads(out.read_text())
        assert where["arenas"], "the server tracked no arena"
        assert where["interpreter"], "no interpreter data found to leave out"
        for start, _length in where["arenas"] + where["interpreter"]:
            assert mapped(server.pid, start) and not mapped(jail.pid, start)
        # Tracked from before the interpreter's first arena (the module preloaded):
        # what its start-up made is left out too.
        for address in where["early"]:
            assert any(start <= address < start + length
                       for start, length in where["arenas"]), hex(address)
            assert mapped(server.pid, address) and not mapped(jail.pid, address)
        # Python's larger blocks come from the raw allocator's regions, left out too.
        for address in where["large"]:
            assert any(start <= address < start + length
                       for start, length in where["arenas"]), hex(address)
            assert mapped(server.pid, address) and not mapped(jail.pid, address)
        # ... and nothing the server starts inherits the preload.
        assert where["env"] == {"LD_PRELOAD": os.environ.get("LD_PRELOAD"),
                                "SANDBOX_TRACK_ARENAS": None, "SANDBOX_LD_PRELOAD_WAS": None}


def objects(pid: int) -> set[str]:
    """The file names of the shared objects mapped in a process."""
    return {m.path.rsplit("/", 1)[-1] for m in dontfork.mappings(f"/proc/{pid}/smaps")
            if ".so" in m.path}


@pytest.mark.parametrize("runs", [None, ()])
def test_native_jails_are_born_without_the_libraries_no_recipe_runs(tmp_path, runs):
    """Recipe.runs: with every recipe naming the objects its jails run (here: none
    beyond the executor's), the server's other shared objects (ctypes, libffi, which
    its Python loaded) stay out of its jails, which still run; unnamed (None), a jail
    inherits them all."""
    with holding_jail((SPEC, str(tmp_path / "where.json"), runs)) as (server, jail):
        theirs, its = objects(server.pid), objects(jail.pid)
        lib = "_jail" + sysconfig.get_config_var("EXT_SUFFIX")
        assert {lib, "libc.so.6", "ld-linux-x86-64.so.2"} <= its, its
        ctypes_objects = {o for o in theirs if o.startswith(("_ctypes.", "libffi.so"))}
        assert len(ctypes_objects) == 2, theirs  # the server loaded them
        if runs is None:
            assert ctypes_objects <= its
        else:
            assert not ctypes_objects & its, its
            # Only the executor and what it needs (a sanitizer build: its runtime too).
            maps = dontfork.mappings(f"/proc/{server.pid}/smaps")
            executor = next(m.path for m in maps if m.path.endswith("/" + lib))
            needed = {p.rsplit("/", 1)[-1] for p in dontfork.with_needed(maps, {executor})}
            assert its == needed, its


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
