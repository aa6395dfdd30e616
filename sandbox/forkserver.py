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
  spawn   pickle(("spawn", request_id, name, uid)) with the jail's fds (SCM_RIGHTS);
          answer pickle((request_id, pid, error)): pid of the new jail or None,
          error (layer, errno, message) or None; a failed jail's pid is given too.
  update  pickle(("update", name)) with a memfd holding pickle(data) (any size):
          recipe `name`'s update(data); no answer.
Both ends are trusted (root, the caller exec'd the server); the jails are not
and never see this channel.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox.errors import JailError
from sandbox.spec import JailSpec

MAX_FDS = 16
MAX_PACKET = 4096
START_TIMEOUT = 30.0


@dataclass
class Recipe:
    """What one kind of jail runs; `update` takes what the caller sends with
    ForkServer.update (e.g. new data for the jails cloned from then on).

    `target` is a Python function, or a native entry capsule (sandbox/jail_entry.h):
    then the jail runs its C function and never Python (titus's C worker)."""

    spec: JailSpec
    target: Callable[..., object] | object
    args: tuple = ()
    update: Callable[[Any], None] | None = None


@dataclass
class Reply:
    request_id: int
    pid: int | None
    error: JailError | None


class ForkServerError(RuntimeError):
    """The fork server could not start or died; the message is one line."""


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
                [self.python, "-m", "sandbox.forkserver", str(theirs.fileno()),
                 str(os.getpid())], stdin=subprocess.PIPE, stderr=self.stderr,
                pass_fds=(theirs.fileno(),), close_fds=True, env=_server_env())
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
        socket.send_fds(self.sock, [pickle.dumps(("spawn", request_id, name, uid))], list(fds))
        return request_id

    def update(self, name: str, data: object) -> None:
        """Hand `data` to recipe `name`'s update hook, before any later request."""
        assert self.sock is not None
        fd = os.memfd_create("forkserver-update", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as f:
                f.write(pickle.dumps(data))
            os.lseek(fd, 0, os.SEEK_SET)
            socket.send_fds(self.sock, [pickle.dumps(("update", name))], [fd])
        finally:
            os.close(fd)

    def replies(self) -> list[Reply] | None:
        """Answers ready now; None when the server is gone (EOF)."""
        assert self.sock is not None
        out: list[Reply] = []
        while True:
            try:
                packet = self.sock.recv(MAX_PACKET)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:
                packet = b""
            if not packet:
                return out or None
            request_id, pid, error = pickle.loads(packet)
            jail_error = None
            if error is not None:
                jail_error = JailError(*error)
                jail_error.pid = pid
            out.append(Reply(request_id, pid, jail_error))

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


def _server_env() -> dict[str, str]:
    # The sanitizers' settings too: under `make test-asan` the server loads an ASan build.
    keep = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "SYSTEMD_LOG_LEVEL", "LD_PRELOAD",
            "ASAN_OPTIONS", "UBSAN_OPTIONS")
    return {k: v for k, v in os.environ.items() if k in keep}


# -- the server ----------------------------------------------------------------------


def serve(sock: socket.socket, recipes: dict[str, Recipe]) -> None:
    from sandbox.launcher import Launcher

    launcher = Launcher(for_parent=True)
    while True:
        try:
            packet, fds, _flags, _addr = socket.recv_fds(sock, MAX_PACKET, MAX_FDS)
        except InterruptedError:
            continue
        if not packet:
            for fd in fds:
                os.close(fd)
            return
        try:
            kind, *request = pickle.loads(packet)
            if kind == "update":
                (name,) = request
                with open(fds[0], "rb", closefd=False) as f:
                    data = pickle.loads(f.read())
                update = recipes[name].update
                if update is not None:
                    update(data)
                continue
            request_id, name, uid = request
            pid, error = _spawn(launcher, recipes[name], uid, fds)
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(pickle.dumps((request_id, pid, error)))


def _spawn(launcher: object, recipe: Recipe, uid: int, fds: list[int]
           ) -> tuple[int | None, tuple[str, int, str] | None]:
    from sandbox.launcher import Launcher

    assert isinstance(launcher, Launcher)
    try:
        jail = launcher.spawn(recipe.spec, recipe.target, recipe.args, fds=fds, uid=uid)
    except JailError as e:
        return e.pid, (e.layer, e.errno, e.message)
    except OSError as e:
        return None, ("spawn", e.errno or 0, str(e))
    return jail.pid, None


def _compact() -> None:
    """Every page the server holds is copied into each jail's page tables and torn down
    at its exit: collect, freeze what is left (so no jail's collector writes to it),
    and hand free heap memory back to the kernel."""
    import ctypes
    import gc

    gc.collect()
    gc.freeze()
    ctypes.CDLL(None).malloc_trim(0)


def main() -> None:
    from sandbox import libc

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
    except Exception as e:
        sock.send(b"E" + f"{type(e).__name__}: {e}".encode()[:MAX_PACKET - 1])
        raise SystemExit(1) from None
    sys.stdin.close()
    _compact()
    sock.send(b"R")
    serve(sock, recipes)


if __name__ == "__main__":
    main()
