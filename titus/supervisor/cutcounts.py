"""Byte counts of connections titus cuts (drain-timeout), from the kernel.

A worker reports its byte counts when its connection ends; one killed at the
end of a drain never does.  The backend side of a connection is plaintext, so
the kernel's counters of the backend TCP connection are the relayed bytes:
what the backend acknowledged (bytes_in, the client's bytes) and what it sent
(bytes_out).  They are read with sock_diag (pyroute2), by the connection's
addresses, just before the workers are killed: the supervisor holds no copy
of the socket.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable

from pyroute2 import DiagSocket
from pyroute2.netlink.diag import SS_ALL

Pair = tuple[tuple[str, int], tuple[str, int]]  # (local, peer) of a backend connection
_INET_DIAG_INFO = 2  # idiag_ext bit for struct tcp_info


def _key(host: str, port: int) -> tuple[str, int]:
    host = host.split("%", 1)[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, int(port)


def backend_counts(pairs: Iterable[Pair]) -> dict[Pair, tuple[int, int]]:
    """(bytes the peer acknowledged, bytes received from it) of each live TCP connection
    among `pairs`; a connection the kernel no longer knows is left out."""
    wanted = {(_key(*local), _key(*peer)): (local, peer) for local, peer in pairs}
    found: dict[Pair, tuple[int, int]] = {}
    if not wanted:
        return found
    with contextlib.suppress(OSError), DiagSocket() as diag:
        diag.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in diag.get_sock_stats(family=family, states=SS_ALL,
                                           extensions=1 << (_INET_DIAG_INFO - 1)):
                key = (_key(msg["idiag_src"], msg["idiag_sport"]),
                       _key(msg["idiag_dst"], msg["idiag_dport"]))
                info = msg.get_attr("INET_DIAG_INFO")
                if key in wanted and info is not None:
                    # bytes_acked counts the SYN too
                    found[wanted[key]] = (max(0, info["tcpi_bytes_acked"] - 1),
                                          info["tcpi_bytes_received"])
    return found
