"""The per-connection worker: what the zygote hands the C connection path.

A worker runs jailed, serves exactly one connection and exits; all of that is
C (titus.worker._worker: wk_conn.c, wk_pump.c, wk_remotekey.c), entered through
the native entry point of the table built here, and never re-enters Python.
Inside the jail it has three fds and nothing else: 0 the control channel to the
supervisor, 1 its channel to the key holder, 2 stderr.

Python decides, C executes: the table lists the vhosts in configuration order
with their SSL_CTXs and match rules (local address and port, server names), the
OCSP staples and the timeouts; the C side only looks them up.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence

from titus.config.model import VHost
from titus.worker import _worker

CONTROL_FD = 0
KEYHOLDER_FD = 1

Staple = tuple[bytes | None, float | None] | None  # (DER response, expiry) of one vhost


def vhost_row(vhost: VHost, ctx: ssl.SSLContext, stapling: bool
              ) -> tuple[ssl.SSLContext, int | None, bytes | None, int | None, tuple[str, ...],
                         bool]:
    """One vhost as the C table takes it: the same rules as VHost.matches_local and
    VHost.matches_sni (an IPv4-mapped local address is compared as IPv4)."""
    addr = vhost.local_address
    return (ctx, None if addr is None else addr.version, None if addr is None else addr.packed,
            vhost.local_port, tuple(vhost.sni_names), stapling)


def build_table(vhosts: Sequence[VHost], contexts: Sequence[ssl.SSLContext],
                handshake_timeout: float, keyholder_timeout: float,
                staples: Sequence[Staple] = ()) -> _worker.Table:
    """The table every worker of a generation runs on; `staples` (one per vhost, None
    without ``ocsp-response``) can be replaced later with ``table.update_staples``."""
    staples = list(staples) or [None] * len(vhosts)
    rows = [vhost_row(v, ctx, s is not None)
            for v, ctx, s in zip(vhosts, contexts, staples, strict=True)]
    table = _worker.Table(rows, handshake_timeout, keyholder_timeout)
    table.update_staples(staples)
    return table


def local_address(host: str, port: int) -> tuple[int, bytes, int]:
    """(4 or 6, packed address, port): how the table takes a connection's local address."""
    addr = ipaddress.ip_address(host)
    return addr.version, addr.packed, port
