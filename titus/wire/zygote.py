"""What the supervisor hands a generation's zygote: its setup (pickled by sandbox.forkserver
when the zygote is exec'd), the name of its one recipe, and the OCSP staples it updates.

Here rather than in titus/worker/zygote.py so that the supervisor, which builds
these, never imports the zygote's code and with it the worker's connection path
(tests/security/test_boundaries.py checks that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandbox.spec import JailSpec
from titus.config.model import VHost

if TYPE_CHECKING:
    from titus.worker.remotekey import CertChain

WORKER = "worker"  # the zygote's recipe: one jailed worker per request

# One per vhost: (DER response, expiry as a Unix time), or None without ocsp-response.
StapleValue = tuple[bytes | None, float | None] | None


@dataclass(frozen=True)
class ZygoteSetup:
    """Everything a generation's workers are made of."""

    worker_spec: JailSpec
    vhosts: tuple[VHost, ...]
    key_ids: tuple[int, ...]
    chains: tuple[CertChain, ...]  # by key id
    handshake_timeout: float
    keyholder_timeout: float
    staples: tuple[StapleValue, ...]  # per vhost (OCSP)


class Stapled:
    """What a vhost's workers staple: a checked response and when it expires.  The
    supervisor's ocsp.Staple keeps one up to date; a worker's copy is what it was
    cloned with (its C callback, wk_ctx.c, checks the expiry again by its own clock)."""

    def __init__(self, der: bytes | None = None, expires: float | None = None) -> None:
        self.der = der
        self.expires = expires

    def current(self, now: float) -> bytes | None:
        """The bytes to staple at wall-clock ``now``, or None (a worker forked before
        the response expired checks the clock itself)."""
        if self.der is None or (self.expires is not None and now >= self.expires):
            return None
        return self.der

    @property
    def value(self) -> tuple[bytes | None, float | None]:
        return self.der, self.expires
