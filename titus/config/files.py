"""Checks on the certificate and key files a vhost names.

The supervisor must never hold a byte of a private key (DESIGN §3.1), so the
key file is only stat()ed and access()ed, never opened.  Certificates are
public and are parsed; but a certificate file might hold a private key too
(titus 0.4 refused such files), so it is read into a buffer we own, searched
for a private-key PEM marker and wiped before anything copies it.
"""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

from cryptography import x509

from titus.config.values import BadValue
from titus.keyholder.keyrules import UnsupportedKey, key_kind

MAX_CERT_FILE = 1024 * 1024


def _strerror(error: OSError | ValueError) -> str:
    return getattr(error, "strerror", None) or str(error)


def check_key_file(path: Path) -> None:
    """The key must be a readable, non-empty regular file; its content is not touched."""
    try:
        info = os.stat(path)
    except (OSError, ValueError) as e:
        raise BadValue(f"cannot use key file: {_strerror(e)}") from None
    if not stat.S_ISREG(info.st_mode):
        raise BadValue("the key is not a regular file")
    if info.st_size == 0:
        raise BadValue("the key file is empty")
    if not os.access(path, os.R_OK):
        raise BadValue("the key file is not readable")


def _read_wiped(path: Path) -> bytes:
    """The file's bytes, refused (and the buffer zeroed) if they contain a private key.

    Unbuffered ``readinto`` puts the bytes straight into our bytearray, and the
    search runs in place, so a key that should not be there is never copied.
    """
    buffer = bytearray(MAX_CERT_FILE + 1)
    size = 0
    try:
        with open(path, "rb", buffering=0) as f:
            view = memoryview(buffer)
            while size <= MAX_CERT_FILE:
                count = f.readinto(view[size:])
                if not count:
                    break
                size += count
        if size > MAX_CERT_FILE:
            raise BadValue("too large for a certificate file")
        if buffer.find(b"PRIVATE KEY-----", 0, size) >= 0:
            raise BadValue(
                "the certificate file contains a private key; keep the key in its own file "
                "(only the key holder may read it)"
            )
        return bytes(buffer[:size])
    except (OSError, ValueError) as e:
        raise BadValue(f"cannot read certificate: {_strerror(e)}") from None
    finally:
        buffer[:] = bytes(len(buffer))


def check_cert_file(path: Path, key: Path | None = None) -> x509.Certificate:
    """Parse a PEM chain (leaf first); return the leaf.  Refuses keys the key holder cannot
    serve (titus.keyholder.keyrules)."""
    if key is not None:
        try:
            same = os.path.samefile(path, key)
        except (OSError, ValueError):
            same = False
        if same:
            raise BadValue("cert and key are the same file; keep the key in its own file")
    try:
        info = os.stat(path)
    except (OSError, ValueError) as e:
        raise BadValue(f"cannot read certificate: {_strerror(e)}") from None
    if not stat.S_ISREG(info.st_mode):
        raise BadValue("the certificate is not a regular file")
    data = _read_wiped(path)
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise BadValue(f"{path.name}: not a PEM certificate") from None
    leaf = chain[0]
    try:
        key_kind(leaf.public_key())  # the key holder's rule: it must be able to sign for it
    except UnsupportedKey as e:
        raise BadValue(str(e)) from None
    return leaf


def rfc3339(when: datetime.datetime) -> str:
    """A UTC time as logs and messages write it: 2026-12-02T17:10:39Z."""
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def validity_problem(leaf: x509.Certificate, now: datetime.datetime | None = None) -> str | None:
    """Why clients will refuse the certificate today, naming the date, or None.

    Not an error: the operator may be about to install the renewed one, and a
    reload must not fail over it; start-up and `--check` warn.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc < now:
        return f"expired: notAfter {rfc3339(leaf.not_valid_after_utc)}; clients will refuse it"
    if leaf.not_valid_before_utc > now:
        return (f"not valid yet: notBefore {rfc3339(leaf.not_valid_before_utc)}; clients will "
                f"refuse it until then")
    return None
