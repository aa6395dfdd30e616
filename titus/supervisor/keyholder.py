"""The supervisor's side of the key holder: start it jailed, check it, restart it.

The supervisor opens each key file and passes the open fd: it never reads a
byte of a private key.  Inside its jail the key holder reads the keys, checks
each against its certificate, answers "ready" (or the one-line reason it
cannot start) on its control socket, then serves signing channels.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import JailError
from sandbox.launcher import JailProcess, Launcher
from sandbox.spec import JailSpec
from titus.keyholder import serve as keyholder
from titus.keyholder.signer import KeyStore, KeyStoreError, Signer
from titus.wire.keyproto import Grant

STARTUP_TIMEOUT = 10.0


class KeyHolderError(RuntimeError):
    """The key holder could not start (bad key, key/cert mismatch, jail failure)."""


@dataclass(frozen=True)
class KeySlot:
    """One private key the key holder serves, with the certificate it must match."""

    key_id: int
    key_path: Path
    cert_path: Path
    cert_pem: bytes
    source: str = ""  # "FILE:LINE" of the `key` setting, for error messages


def _keyholder_main(slots: Sequence[KeySlot]) -> None:
    """Runs inside the key holder's jail: fd 0 control, 1-2 stderr, 3.. key files."""
    control = socket.socket(fileno=0)
    try:
        pems = keyholder.load_keys_from_fds(range(3, 3 + len(slots)))
        store = KeyStore()
        for slot, pem in zip(slots, pems, strict=True):
            try:
                store.add(slot.key_id, pem, slot.cert_pem, key_name=str(slot.key_path),
                          cert_name=str(slot.cert_path))
            except (KeyStoreError, ValueError) as e:
                raise KeyStoreError(f"{slot.source}: {e}" if slot.source else str(e)) from None
        del pems
    except (KeyStoreError, ValueError, OSError) as e:
        control.send(b"E" + str(e).encode(errors="replace")[:3000])
        return
    control.send(b"R")
    keyholder.serve(control, Signer(store))


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
            self.jail = self.launcher.spawn(self.spec, _keyholder_main, (self.slots,),
                                            fds=[theirs.fileno(), self.stderr_fd, self.stderr_fd,
                                                  *key_fds])
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
            return keyholder.new_channel(self.control, grant)
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
