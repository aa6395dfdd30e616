"""The key holder process: what runs inside its jail, and the slots it is given.

The supervisor opens each key file and passes the open fd (it never reads a
byte of a private key); `keyholder_main` reads the keys from those fds,
checks each against its certificate, answers "ready" (or the one-line reason
it cannot start) on its control socket, then serves signing channels.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from titus.config.model import Config
from titus.keyholder.serve import load_keys_from_fds, serve
from titus.keyholder.signer import KeyStore, KeyStoreError, Signer


@dataclass(frozen=True)
class KeySlot:
    """One private key the key holder serves, with the certificate it must match."""

    key_id: int
    key_path: Path
    cert_path: Path
    cert_pem: bytes
    source: str = ""  # "FILE:LINE" of the `key` setting, for error messages


def key_slots(config: Config) -> tuple[list[KeySlot], list[int]]:
    """One key-holder slot per distinct (key, cert) pair; the slot of each vhost."""
    slots: dict[tuple[str, str], KeySlot] = {}
    of_vhost = []
    for vhost in config.vhosts:
        pair = (str(vhost.key), str(vhost.cert))
        if pair not in slots:
            slots[pair] = KeySlot(len(slots), vhost.key, vhost.cert, vhost.cert.read_bytes(),
                                  str(vhost.key_source))
        of_vhost.append(slots[pair].key_id)
    return list(slots.values()), of_vhost


def load_store(slots: Sequence[KeySlot], key_fds: Sequence[int]) -> KeyStore:
    """Read (and close) the key files opened for us, and check each key against its
    certificate; a refusal names the `key` setting's FILE:LINE.  The key holder's loader,
    and `titus --check`'s (keyholder/checks.py): both refuse the same keys alike."""
    pems = load_keys_from_fds(key_fds)
    store = KeyStore()
    for slot, pem in zip(slots, pems, strict=True):
        try:
            store.add(slot.key_id, pem, slot.cert_pem, key_name=str(slot.key_path),
                      cert_name=str(slot.cert_path))
        except (KeyStoreError, ValueError) as e:
            raise KeyStoreError(f"{slot.source}: {e}" if slot.source else str(e)) from None
    del pems
    return store


def keyholder_main(slots: Sequence[KeySlot]) -> None:
    """Runs inside the key holder's jail: fd 0 control, 1-2 stderr, 3.. key files."""
    control = socket.socket(fileno=0)
    try:
        store = load_store(slots, range(3, 3 + len(slots)))
    except (KeyStoreError, ValueError, OSError) as e:
        control.send(b"E" + str(e).encode(errors="replace")[:3000])
        return
    serve(control, Signer(store), ready=lambda: control.send(b"R"))
