"""A fork server: a small, separately exec'd Python that spawns jails for its caller.

Why not fork the caller?  A daemon that spawns a jail per request (titus's
supervisor) is big and busy: every fork copies its page tables, and after
every fork both it and the child pay copy-on-write faults for each page they
write.  A fresh interpreter that imported only what the jailed code needs
forks faster, and its jails start from a clean slate: nothing of the caller's
memory (other clients' addresses, logs, configuration) is in them.

The jails are cloned with CLONE_PARENT, so their parent is the caller: it
reaps them (`Launcher.adopt`), owns their uids, and its death kills them
(parent-death signal), exactly as if it had forked them itself.

Protocol, over a SOCK_SEQPACKET socketpair (the server's fd is its first argument):
  setup   the caller writes pickle(("module:function", argument)) to the server's
          stdin; the server imports the module, calls function(argument), which
          returns {name: Recipe}, and answers b"R" (ready) or b"E" + message.
  spawn   a request (the fixed binary layout of sandbox/_jail/serve.h: kind, id,
          the jail's host uid, the recipe's name) with the jail's fds (SCM_RIGHTS);
          a reply (serve.h): the pid of the ready jail, or the error's layer, errno
          and message (with the failed jail's pid, if it was cloned).  A ready jail
          whose filter notifies comes with its seccomp listener (SCM_RIGHTS): the
          caller holds it before it hands the jail any work (sandbox/notify.py).
  update  a request of kind "update" with a memfd holding pickle(data) (any size):
          recipe `name`'s update(data); no reply.
Both ends are trusted (root, the caller exec'd the server); the jails are not
and never see this channel.

The spawns are served in C (sandbox/_jail/serve.c): Python prepares each recipe
once (its plan, the shared namespaces its plan joins, its id-map templates),
and the C loop receives, clones through the executor, writes the id maps, waits
for the jail to be ready and replies, with no Python in between.  Every page the
server writes after a clone becomes a private copy in that jail; a Python loop
wrote about 90 per spawn.  Python serves what C cannot: updates, a recipe whose
target is a Python function (the jail re-enters Python, which needs CPython's
fork duties in the parent), and one whose shared root or network namespace could
not be built yet (retried at each request, as the launcher does); and it names
the errors the loop reports (the plan's words).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox import _jail
from sandbox.errors import JailError
from sandbox.spec import JailSpec

MAX_FDS = _jail.REQ_MAX_FDS
MAX_PACKET = _jail.REPLY_MAX
START_TIMEOUT = 30.0

# The wire formats of sandbox/_jail/serve.h.
_REQUEST = struct.Struct("=IHHQIHH")
_REPLY = struct.Struct("=IHHQiiHHI")
_READY, _FAILED = 0, 1


@dataclass
class Recipe:
    """What one kind of jail runs; `update` takes what the caller sends with
    ForkServer.update (e.g. new data for the jails cloned from then on).

    `target` is a Python function, or a native entry capsule (sandbox/jail_entry.h):
    then the jail runs its C function and never Python (titus's C worker).
    `huge_text` names the shared libraries (a file name or its start: "libcrypto.so")
    whose code the jails run most: the server moves it into 2 MB pages
    (sandbox/hugetext.py), so that a jail faults on none of it.
    `runs` names, the same way, every shared object whose code a native jail runs
    besides the executor's own, the C library and the entry's own object: when every
    recipe names them, the server's other shared objects stay out of its jails
    (sandbox/dontfork.py).  None: the jails inherit every one."""

    spec: JailSpec
    target: Callable[..., object] | object
    args: tuple = ()
    update: Callable[[Any], None] | None = None
    huge_text: tuple[str, ...] = ()
    runs: tuple[str, ...] | None = None


@dataclass
class Reply:
    request_id: int
    pid: int | None
    error: JailError | None
    listener: int | None = None  # the ready jail's seccomp listener fd, the caller's to close


class ForkServerError(RuntimeError):
    """The fork server could not start or died; the message is one line."""


def encode_request(kind: int, request_id: int, name: str, uid: int, nfds: int) -> bytes:
    """One request (sandbox/_jail/serve.h); kind is _jail.REQ_SPAWN or REQ_UPDATE."""
    raw = name.encode()
    if not 0 < len(raw) <= _jail.REQ_MAX_NAME or b"\0" in raw:
        raise ValueError(f"recipe name {name!r}: 1 to {_jail.REQ_MAX_NAME} bytes, no NUL")
    if nfds > MAX_FDS:
        raise ValueError(f"{nfds} fds: a jail is given at most {MAX_FDS}")
    return _REQUEST.pack(_jail.REQ_MAGIC, _jail.SERVE_VERSION, kind, request_id, uid, nfds,
                         len(raw)) + raw


def decode_reply(packet: bytes, listener: int | None = None) -> Reply:
    """One reply (sandbox/_jail/serve.h), `listener` the fd that came with it (a
    ready reply's flag says whether one must); ValueError if it is not exactly one.
    The fd is not closed here: the caller closes it on ValueError."""
    if len(packet) < _REPLY.size:
        raise ValueError(f"a reply of {len(packet)} bytes")
    magic, version, status, request_id, pid, err, layer_len, message_len, flags = (
        _REPLY.unpack_from(packet))
    if (magic, version) != (_jail.REPLY_MAGIC, _jail.SERVE_VERSION) or \
            flags & ~_jail.REPLY_LISTENER:
        raise ValueError("not a fork server reply of this version")
    if len(packet) != _REPLY.size + layer_len + message_len:
        raise ValueError(f"a reply of {len(packet)} bytes for texts of {layer_len + message_len}")
    if bool(flags) != (listener is not None):
        raise ValueError(f"a reply of flags {flags:#x} with {int(listener is not None)} fds")
    if status == _READY and pid > 0 and not (err or layer_len or message_len):
        return Reply(request_id, pid, None, listener)
    if status != _FAILED or not layer_len or pid < 0 or flags:
        raise ValueError(f"a reply of status {status}, pid {pid}, layer of {layer_len} bytes")
    texts = packet[_REPLY.size:]
    error = JailError(texts[:layer_len].decode(errors="replace"), err,
                      texts[layer_len:].decode(errors="replace"))
    error.pid = pid or None
    return Reply(request_id, pid or None, error)


@dataclass
class ForkServer:
    """The caller's handle: start it, send spawn requests, read replies in an event loop."""

    setup: str
    argument: object
    stderr: int | None = None
    python: str = sys.executable
    sock: socket.socket | None = field(default=None, init=False)
    proc: Any = field(default=None, init=False, repr=False)  # subprocess.Popen
    _next_id: int = field(default=1, init=False)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        import subprocess  # here: the server itself never needs it

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [self.python, "-c", _SERVER_MAIN, str(theirs.fileno()), str(os.getpid())],
                stdin=subprocess.PIPE, stderr=self.stderr, pass_fds=(theirs.fileno(),),
                close_fds=True, env=_server_env())
        finally:
            theirs.close()
        self.sock = ours
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(pickle.dumps((self.setup, self.argument)))
            self.proc.stdin.close()
        except OSError as e:
            self.close()
            raise ForkServerError(f"fork server did not take its setup: {e}") from None
        ours.settimeout(timeout)
        try:
            answer = ours.recv(MAX_PACKET)
        except (TimeoutError, OSError) as e:
            self.close()
            raise ForkServerError(f"fork server did not start: {e}") from None
        if answer != b"R":
            self.close()
            why = answer[1:].decode(errors="replace") if answer[:1] == b"E" else "it died"
            raise ForkServerError(f"fork server did not start: {why}")
        ours.setblocking(False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def request(self, name: str, uid: int, fds: Sequence[int]) -> int:
        """Ask for a jail; the answer comes later from `replies()`."""
        assert self.sock is not None
        request_id = self._next_id
        self._next_id += 1
        packet = encode_request(_jail.REQ_SPAWN, request_id, name, uid, len(fds))
        socket.send_fds(self.sock, [packet], list(fds))
        return request_id

    def update(self, name: str, data: object) -> None:
        """Hand `data` to recipe `name`'s update hook, before any later request."""
        assert self.sock is not None
        fd = os.memfd_create("forkserver-update", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as f:
                f.write(pickle.dumps(data))
            os.lseek(fd, 0, os.SEEK_SET)
            socket.send_fds(self.sock, [encode_request(_jail.REQ_UPDATE, 0, name, 0, 1)], [fd])
        finally:
            os.close(fd)

    def replies(self) -> list[Reply] | None:
        """Answers ready now; None when the server is gone (EOF), or broke the protocol
        (then it is stopped)."""
        assert self.sock is not None
        out: list[Reply] = []
        while True:
            try:
                packet, fds, _, _ = socket.recv_fds(self.sock, MAX_PACKET, 1,
                                                    socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:
                packet, fds = b"", []
            if not packet:
                for fd in fds:
                    os.close(fd)
                return out or None
            try:
                out.append(decode_reply(packet, fds[0] if fds else None))
            except ValueError:
                for fd in fds:
                    os.close(fd)
                self.close()
                return None

    def close(self) -> None:
        """Stop the server; jails it made are the caller's children and live on."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(ChildProcessError):
                self.proc.wait()  # (a caller reaping with waitpid(-1) may have taken it)
            self.proc = None


# The server tracks pymalloc's arenas (sandbox/_jail/arenas.c) from before the
# interpreter's first one when the module is preloaded (_server_env), else from its
# first statement, so that they can be kept out of native jails (sandbox/dontfork.py).
_SERVER_MAIN = ("from sandbox import _jail; _jail.track_arenas(); "
                "from sandbox.forkserver import main; main()")


# No per-thread cache in malloc (glibc's tcache) in the server, and so in its jails: a
# jail's freed chunks then go back to the heap, where malloc_trim can give their pages
# back (a cached chunk pins its page).  Measured: an idle titus worker's heap 300 -> 216
# kB private with this alone, 120 with the holes taken and a trim after the handshake.
# No restartable-sequences area (glibc.pthread.rseq=0): the kernel writes the CPU number
# into it after every switch, and after each clone that write copied the server's page
# (a fault per jail, ~9 us here); nothing of the server or its jails uses it.
_TUNABLES = "glibc.malloc.tcache_count=0:glibc.pthread.rseq=0"


def _server_env() -> dict[str, str]:
    # The sanitizers' settings too: under `make test-asan` the server loads an ASan build.
    keep = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "SYSTEMD_LOG_LEVEL", "LD_PRELOAD",
            "ASAN_OPTIONS", "UBSAN_OPTIONS")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["GLIBC_TUNABLES"] = ":".join(filter(None, (os.environ.get("GLIBC_TUNABLES"), _TUNABLES)))
    # The executor module preloaded: it tracks pymalloc's arenas from before the
    # interpreter's first one (sandbox/_jail/arenas.c), then puts LD_PRELOAD back.
    was = env.get("LD_PRELOAD", "")
    env["SANDBOX_LD_PRELOAD_WAS"] = was
    env["SANDBOX_TRACK_ARENAS"] = "1"
    env["LD_PRELOAD"] = " ".join(filter(None, (was, _jail.__file__)))
    return env


# -- the server ----------------------------------------------------------------------


class _Served:
    """The server's side: the recipes, what the C loop serves of them, and the
    launcher that prepares them (and spawns what Python serves)."""

    def __init__(self, sock: socket.socket, recipes: dict[str, Recipe]) -> None:
        from sandbox.launcher import SPAWN_TIMEOUT, Launcher

        self.recipes = recipes
        self.launcher = Launcher(for_parent=True)
        self.loop = _jail.Server(sock.fileno(), SPAWN_TIMEOUT)
        self.why_python: dict[str, str] = {}  # recipes Python serves, and why
        for name in recipes:
            self.prepare(name)

    def prepare(self, name: str) -> bool:
        """Hand recipe `name` to the C loop, or say why not (`why_python`)."""
        from sandbox.plan import MODE_ENTRY

        recipe = self.recipes[name]
        self.loop.remove(name.encode())
        why = None
        if not _jail.is_entry(recipe.target):
            why = "a Python function: its jail re-enters Python (CPython's fork duties)"
        elif len(name.encode()) > _jail.REQ_MAX_NAME:
            why = "a name longer than a request holds"
        else:
            try:
                plan = self.launcher.plan(recipe.spec, MODE_ENTRY)
                slots = self.launcher._slots(recipe.spec, plan)
            except JailError as e:
                why = f"not ready: {e}"
            else:
                maps = _id_map_templates(plan)
                if maps is False:
                    why = "its id maps are not the request's uid in a fixed text"
                else:
                    self.loop.add(name.encode(), plan.native, slots, recipe.target, *maps)
        if why is None:
            self.why_python.pop(name, None)
        else:
            self.why_python[name] = why
        return why is None

    def serve(self) -> None:
        """Until the caller closes its end."""
        while True:
            event = self.loop.serve()  # C, until something needs Python
            what = event[0]
            if what == "eof":
                return
            if what == "request":
                _, kind, request_id, name, uid, fds = event
                try:
                    self.request(kind, request_id, name.decode(errors="replace"), uid, fds)
                finally:
                    for fd in fds:
                        os.close(fd)
            elif what == "failed":
                _, request_id, name, pid, error = event
                self.failed(request_id, name.decode(), pid, error)
            elif what == "bad":
                _, request_id, why = event
                if request_id is None:
                    raise SystemExit(f"fork server: a bad request: {why}")
                self.reply(request_id, None, JailError("spawn", errno.EPROTO,
                                                       f"a bad request: {why}"))

    def request(self, kind: int, request_id: int, name: str, uid: int, fds: list[int]) -> None:
        recipe = self.recipes.get(name)
        if kind == _jail.REQ_UPDATE:
            with open(fds[0], "rb", closefd=False) as f:
                data = pickle.loads(f.read())
            if recipe is not None and recipe.update is not None:
                recipe.update(data)
                self.prepare(name)  # the recipe may serve its jails otherwise now
            return
        if recipe is None:
            self.reply(request_id, None, JailError("spawn", errno.ENOENT, f"no recipe {name!r}"))
            return
        if name in self.why_python:
            self.prepare(name)  # ready now? then C serves the next ones; this one is here
        try:
            jail = self.launcher.spawn(recipe.spec, recipe.target, recipe.args, fds=fds, uid=uid)
        except JailError as e:
            self.reply(request_id, e.pid, e)
        except OSError as e:
            self.reply(request_id, None, JailError("spawn", e.errno or 0, str(e)))
        else:
            listener, jail.listener = jail.listener, None
            try:
                self.reply(request_id, jail.pid, None, listener)
            finally:
                if listener is not None:
                    os.close(listener)  # the caller has its copy

    def failed(self, request_id: int, name: str, pid: int, error: tuple[int, int, int, int]
               ) -> None:
        """A spawn of the C loop failed: the plan names the error; a jail that was
        cloned is killed, as the launcher does (the caller reaps it)."""
        from sandbox.plan import MODE_ENTRY

        exc = self.launcher.plan(self.recipes[name].spec, MODE_ENTRY).error(error)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.reply(request_id, pid or None, exc)

    def reply(self, request_id: int, pid: int | None, error: JailError | None,
              listener: int | None = None) -> None:
        if error is None:
            self.loop.reply(request_id, pid or 0, listener=-1 if listener is None else listener)
            return
        room = MAX_PACKET - _REPLY.size - _jail.REPLY_MAX_LAYER
        message = error.message.encode()[:room].decode(errors="ignore")
        self.loop.reply(request_id, pid or 0, error.layer[:_jail.REPLY_MAX_LAYER], error.errno,
                        message)


_PROBES = (4_000_000_007, 1_234_567)  # two host uids: a template must make both


def _id_map_templates(plan: Any) -> tuple[bytes | None, bytes | None] | bool:
    """The plan's (uid_map, gid_map) as templates for the C loop: the text with the
    host uid's place marked by _jail.IDMAP_HOLE; (None, None) without a user namespace;
    False when the text is not the uid in a fixed text (then Python serves it)."""
    # The launcher maps the jail's ids to the host uid, for both uid and gid.
    uid_map, gid_map = plan.id_maps(_PROBES[0], _PROBES[0])
    if uid_map is None or gid_map is None:
        return (None, None) if uid_map is None and gid_map is None else False
    hole = chr(_jail.IDMAP_HOLE)
    templates = (uid_map.replace(str(_PROBES[0]), hole), gid_map.replace(str(_PROBES[0]), hole))
    check = tuple(t.replace(hole, str(_PROBES[1])) for t in templates)
    if check != plan.id_maps(_PROBES[1], _PROBES[1]) or any(hole not in t for t in templates):
        return False
    return templates[0].encode(), templates[1].encode()


def _compact() -> None:
    """Every page the server holds is copied into each jail's page tables and torn down
    at its exit: collect, freeze what is left (so no jail's collector writes to it),
    and hand free heap memory back to the kernel.  Then keep malloc's free chunks, so
    that what a native jail allocates comes from fresh pages past the heap, not from
    holes among the server's data (copy-on-write copies it could never give back)."""
    import ctypes
    import gc

    gc.collect()
    gc.freeze()
    trim = ctypes.CDLL(None).malloc_trim
    trim(0)
    _jail.take_heap_holes()
    trim(0)


def main() -> None:
    from sandbox import dontfork, hugetext, libc

    fd, caller = int(sys.argv[1]), int(sys.argv[2])
    # It dies with its caller; signals meant for the caller's process group are not its.
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != caller:
        raise SystemExit(1)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    try:
        setup, argument = pickle.loads(sys.stdin.buffer.read())
        module, _, function = setup.partition(":")
        recipes = getattr(importlib.import_module(module), function)(argument)
        served = _Served(sock, recipes)
    except Exception as e:
        sock.send(b"E" + f"{type(e).__name__}: {e}".encode()[:MAX_PACKET - 1])
        raise SystemExit(1) from None
    sys.stdin.close()
    _compact()
    targets = [r.target for r in recipes.values()]
    dontfork.keep_python_out(targets)
    if all(r.runs is not None for r in recipes.values()):
        dontfork.keep_libraries_out(targets, [n for r in recipes.values()
                                              for n in (*(r.runs or ()), *r.huge_text)])
    hugetext.remap(dict.fromkeys(lib for r in recipes.values() for lib in r.huge_text))
    sock.send(b"R")
    served.serve()


if __name__ == "__main__":
    main()
