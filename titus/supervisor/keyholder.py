"""The supervisor's side of the key holder: start it jailed, check it, restart it, and
hand it one signing channel per worker.

The supervisor opens each key file and passes the open fd: it never reads a
byte of a private key.  What runs inside the key holder's jail is
titus/keyholder/main.py.
"""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Sequence
from dataclasses import replace

from sandbox.errors import JailError
from sandbox.launcher import JailProcess, Launcher
from sandbox.spec import JailSpec
from titus.keyholder.main import KeySlot, keyholder_main
from titus.supervisor import priority
from titus.wire.keyproto import MAX_GRANT_KEYS, Grant, encode_grant

STARTUP_TIMEOUT = 10.0
SPARE_FDS = 64  # the key holder's fds beyond one channel per worker


def sized_spec(base: JailSpec, max_children: int) -> JailSpec:
    """The key holder's jail for a configuration: it holds one channel per live worker,
    so its nofile limit is sized from max-children.  Every generation (start-up, each
    reload) starts its own key holder with its own configuration's size."""
    rlimits = tuple((k, v) for k, v in base.rlimits if k != "nofile")
    return replace(base, rlimits=(*rlimits, ("nofile", max_children + SPARE_FDS)))


class KeyHolderError(RuntimeError):
    """The key holder could not start (bad key, key/cert mismatch, jail failure)."""


class KeyHolder:
    """A running key holder jail and the supervisor's end of its control socket."""

    def __init__(self, launcher: Launcher, spec: JailSpec, slots: Sequence[KeySlot]) -> None:
        self.launcher = launcher
        self.spec = spec
        self.slots = list(slots)
        self.jail: JailProcess | None = None
        self.control: socket.socket | None = None
        self._next_channel = 1
        self.stderr_fd = 2  # the supervisor points this at its jail-stderr pipe

    def start(self) -> None:
        """Start and wait for "ready"; raises KeyHolderError with the reason otherwise."""
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as e:  # e.g. out of fds: the caller retries, it must not crash
            raise KeyHolderError(f"key holder: control channel: {e.strerror}") from None
        key_fds: list[int] = []
        try:
            for slot in self.slots:
                try:
                    key_fds.append(os.open(slot.key_path, os.O_RDONLY | os.O_CLOEXEC))
                except OSError as e:
                    raise KeyHolderError(f"{slot.key_path}: {e.strerror}") from None
            with priority.children_at_base():
                self.jail = self.launcher.spawn(
                    self.spec, keyholder_main, (self.slots,),
                    fds=[theirs.fileno(), self.stderr_fd, self.stderr_fd, *key_fds])
        except (OSError, JailError) as e:
            ours.close()
            raise KeyHolderError(f"key holder: {e}") from None
        except KeyHolderError:
            ours.close()
            raise
        finally:
            theirs.close()
            for fd in key_fds:
                os.close(fd)
        ours.settimeout(STARTUP_TIMEOUT)
        try:
            answer = ours.recv(4096)
        except TimeoutError:
            answer = b"Edid not report ready in time"
        if answer != b"R":
            self.stop()
            ours.close()
            reason = answer[1:].decode(errors="replace") if answer else "exited at start-up"
            raise KeyHolderError(f"key holder: {reason}")
        ours.setblocking(False)
        self.control = ours

    def channel(self, budget: int) -> socket.socket:
        """A new signing channel for one worker, allowed every key, `budget` signatures."""
        assert self.control is not None
        grant = Grant(self._next_channel, budget, tuple(s.key_id for s in self.slots))
        self._next_channel = self._next_channel % 0xFFFFFFFF + 1
        self.control.setblocking(True)
        try:
            return new_channel(self.control, grant)
        finally:
            self.control.setblocking(False)

    @property
    def alive(self) -> bool:
        return self.jail is not None and self.jail.returncode is None

    def stop(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.jail is not None and self.jail.returncode is None:
            self.jail.kill()
            self.jail.wait()


def send_grant(control_sock: socket.socket, channel_end: socket.socket, grant: Grant) -> None:
    """Hand one channel end to the key holder (the caller closes its copy afterwards)."""
    if len(grant.key_ids) > MAX_GRANT_KEYS:
        raise ValueError(f"at most {MAX_GRANT_KEYS} keys per channel")
    fds = array.array("i", [channel_end.fileno()])
    control_sock.sendmsg(
        [encode_grant(grant)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())]
    )


def new_channel(control_sock: socket.socket, grant: Grant) -> socket.socket:
    """Create a worker channel, give the key holder its end, return the worker's end."""
    worker_end, holder_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        send_grant(control_sock, holder_end, grant)
    except BaseException:
        worker_end.close()
        raise
    finally:
        holder_end.close()
    return worker_end
