"""`titus --check`: prove each private key matches its certificate, without the supervisor
ever holding a key byte.

The keys are read in a short-lived child process that reports only "ok" or the
one-line problem; its memory dies with it.  It opens the key files as the
supervisor does for the key holder and reads them with the key holder's own
loader (`main.load_store`), so the check refuses exactly what start-up would.
"""

from __future__ import annotations

import os

from titus.config.model import Config


def check_keys(config: Config) -> str | None:
    from titus.keyholder.main import key_slots, load_store
    from titus.keyholder.signer import KeyStoreError

    slots, _ = key_slots(config)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reported through the pipe
        os.close(r)
        message = b""
        try:
            key_fds = []
            for slot in slots:
                try:
                    key_fds.append(os.open(slot.key_path, os.O_RDONLY | os.O_CLOEXEC))
                except OSError as e:
                    raise KeyStoreError(f"{slot.source}: {e}" if slot.source else str(e)) \
                        from None
            load_store(slots, key_fds)
        except (KeyStoreError, ValueError, OSError) as e:
            message = str(e).encode(errors="replace")
        finally:
            os.write(w, message[:4000])
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read()
    os.waitpid(pid, 0)
    return answer.decode(errors="replace") or None
