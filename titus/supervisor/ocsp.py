"""OCSP stapling: one DER response file per vhost, checked by the supervisor, stapled by workers.

A worker has no filesystem, so the response must already be in its memory when
it is forked: each vhost with ``ocsp-response`` gets a ``Staple`` that the
supervisor refreshes every second (one stat of the file; it is re-read only
when it changed) and sends to the zygote when what may be stapled changed;
workers cloned from then on have it (a C callback, titus/worker/wk_ctx.c, staples it).  A response
that is unsuccessful, for another certificate, not yet valid or expired is not
stapled, and said once as a warning.

The response's signature is not verified here: clients verify it against
their trust store, and a bad signature would only make them ignore it.
"""

from __future__ import annotations

import datetime
import logging
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from titus import logs
from titus.config.model import VHost
from titus.wire.zygote import Stapled

__all__ = ["OCSPError", "Staple", "check_response", "issuer_of", "read_response_file"]

MAX_RESPONSE_FILE = 256 * 1024  # real responses are a few KiB, with the responder's chain
REFRESH_INTERVAL = 1.0  # seconds between two stats of one file
CLOCK_SKEW = datetime.timedelta(minutes=5)  # a thisUpdate this far ahead is still accepted


class OCSPError(ValueError):
    """Why a response file cannot be stapled; one line."""


# --- reading and checking a response --------------------------------------------------------


def read_response_file(path: Path) -> bytes:
    """The bytes of a regular, readable response file of a sane size."""
    try:
        # O_NONBLOCK: a FIFO put there by mistake must not hang the supervisor.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OCSPError("not a regular file")
            data = f.read(MAX_RESPONSE_FILE + 1)
    except (OSError, ValueError) as e:
        raise OCSPError(f"cannot read: {getattr(e, 'strerror', None) or e}") from None
    if not data:
        raise OCSPError("the file is empty")
    if len(data) > MAX_RESPONSE_FILE:
        raise OCSPError(f"larger than {MAX_RESPONSE_FILE} bytes: not an OCSP response")
    return data


def parse_response(data: bytes) -> ocsp.OCSPResponse:
    try:
        return ocsp.load_der_ocsp_response(data)
    except ValueError:
        raise OCSPError("not a DER OCSP response") from None


@dataclass(frozen=True)
class Checked:
    """A response fit to staple: its bytes, when it expires (epoch seconds, None: no
    nextUpdate) and the certificate's status ("good" or "revoked")."""

    der: bytes
    expires: float | None
    status: str


def _matches(single: ocsp.OCSPSingleResponse, leaf: x509.Certificate,
             issuer: x509.Certificate | None) -> bool:
    """The single response's CertID names ``leaf``: serial, issuer name hash, and the
    issuer key hash when the chain holds the issuer."""
    if single.serial_number != leaf.serial_number:
        return False
    algorithm = single.hash_algorithm
    if issuer is not None:
        try:
            request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, algorithm).build()
        except ValueError:  # a hash OpenSSL's CertID cannot use
            return False
        return (single.issuer_name_hash, single.issuer_key_hash) == (
            request.issuer_name_hash, request.issuer_key_hash)
    digest = hashes.Hash(algorithm)
    digest.update(leaf.issuer.public_bytes())
    return single.issuer_name_hash == digest.finalize()


def check_response(data: bytes, leaf: x509.Certificate, issuer: x509.Certificate | None,
                   now: datetime.datetime) -> Checked:
    """``data`` if it can be stapled for ``leaf`` at ``now``; else OCSPError saying why."""
    response = parse_response(data)
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OCSPError(f"the responder answered {response.response_status.name}, "
                        "not SUCCESSFUL")
    single = next((s for s in response.responses if _matches(s, leaf, issuer)), None)
    if single is None:
        raise OCSPError(f"it is for another certificate (none of its responses names serial "
                        f"{leaf.serial_number:x} of issuer {leaf.issuer.rfc4514_string()})")
    if single.this_update_utc > now + CLOCK_SKEW:
        raise OCSPError(f"not valid before {single.this_update_utc.isoformat()}")
    expires = single.next_update_utc
    if expires is not None and expires <= now:
        raise OCSPError(f"expired at {expires.isoformat()}")
    status = single.certificate_status
    if status == ocsp.OCSPCertStatus.UNKNOWN:
        raise OCSPError("the responder does not know the certificate (status unknown)")
    return Checked(data, expires.timestamp() if expires else None,
                   "good" if status == ocsp.OCSPCertStatus.GOOD else "revoked")


def issuer_of(leaf: x509.Certificate, chain: Sequence[x509.Certificate]
              ) -> x509.Certificate | None:
    return next((c for c in chain if c.subject == leaf.issuer and c != leaf), None)


# --- the per-vhost staple ---------------------------------------------------------------------


def _file_signature(path: Path) -> tuple[int, ...]:
    """What tells a changed file from an unchanged one, without reading it."""
    try:
        info = os.stat(path)
    except OSError as e:
        return (-1, e.errno or 0)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class Staple(Stapled):
    """One vhost's response file, watched by the supervisor: ``refresh`` (a stat at
    most once per ``interval``) re-reads and checks it when it changed; the zygote
    gets what is fit to staple (``der``, ``expires``) whenever that changes."""

    def __init__(self, vhost: str, path: Path, leaf: x509.Certificate,
                 issuer: x509.Certificate | None, interval: float = REFRESH_INTERVAL) -> None:
        super().__init__()
        self.vhost, self.path, self.leaf, self.issuer = vhost, path, leaf, issuer
        self.interval = interval
        self._seen: tuple[int, ...] | None = None
        self._checked_at = float("-inf")

    @classmethod
    def for_vhost(cls, vhost: VHost, interval: float = REFRESH_INTERVAL) -> Staple:
        assert vhost.ocsp_response is not None
        try:
            chain = x509.load_pem_x509_certificates(vhost.cert.read_bytes())
        except (OSError, ValueError) as e:
            raise OCSPError(f"{vhost.where('cert')} (vhost {vhost.name}): cannot read the "
                            f"certificate {vhost.cert}: {e}") from None
        return cls(vhost.name, vhost.ocsp_response, chain[0], issuer_of(chain[0], chain),
                   interval)

    def refresh(self) -> None:
        """Re-read the file if it changed (checked at most once per ``interval``)."""
        mono = time.monotonic()
        if mono - self._checked_at < self.interval:
            return
        self._checked_at = mono
        signature = _file_signature(self.path)
        if signature != self._seen:
            self._seen = signature
            self._load()
        elif self.der is not None and self.current(time.time()) is None:
            self._refuse("it has expired; the file has not been replaced")

    def _load(self) -> None:
        try:
            checked = check_response(read_response_file(self.path), self.leaf, self.issuer,
                                     datetime.datetime.now(datetime.UTC))
        except OCSPError as e:
            self._refuse(str(e))
            return
        self.der, self.expires = checked.der, checked.expires
        until = (datetime.datetime.fromtimestamp(checked.expires, datetime.UTC).isoformat()
                 if checked.expires is not None else None)
        level = logging.WARNING if checked.status == "revoked" else logging.INFO
        logs.event("ocsp-response-loaded", level, vhost=self.vhost, file=str(self.path),
                   status=checked.status, next_update=until, bytes=len(checked.der))

    def _refuse(self, reason: str) -> None:
        self.der, self.expires = None, None
        logs.event("ocsp-not-stapled", logging.WARNING, vhost=self.vhost, file=str(self.path),
                   reason=reason)
