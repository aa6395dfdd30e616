"""`titus --check`: prove each private key matches its certificate, without the supervisor
ever holding a key byte.

The keys are read in a short-lived child process that reports only "ok" or the
one-line problem; its memory dies with it.
"""

from __future__ import annotations

import os

from titus.config.model import Config


def check_keys(config: Config) -> str | None:
    from titus.keyholder.main import key_slots
    from titus.keyholder.signer import KeyStore, KeyStoreError

    slots, _ = key_slots(config)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reported through the pipe
        os.close(r)
        message = b""
        try:
            store = KeyStore()
            for slot in slots:
                try:
                    with open(slot.key_path, "rb") as f:
                        store.add(slot.key_id, f.read(), slot.cert_pem,
                                  key_name=str(slot.key_path), cert_name=str(slot.cert_path))
                except (KeyStoreError, OSError) as e:
                    raise KeyStoreError(f"{slot.source}: {e}" if slot.source else str(e)) \
                        from None
        except (KeyStoreError, OSError) as e:
            message = str(e).encode(errors="replace")
        finally:
            os.write(w, message[:4000])
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read()
    os.waitpid(pid, 0)
    return answer.decode(errors="replace") or None
