"""How many connections wait in a listening socket's accept queue (Linux TCP_INFO).

For a socket in the LISTEN state the kernel reports the accept queue's length
in tcp_info.tcpi_unacked and its limit (the listen backlog) in tcpi_sacked:
the connections whose handshake the kernel completed and titus has not
accepted yet, e.g. because every one of max-children workers is busy.
"""

from __future__ import annotations

import socket
import struct

# struct tcp_info begins with eight u8 fields (state first), then u32 rto, ato, snd_mss,
# rcv_mss, unacked, sacked.
_LAYOUT = struct.Struct("=8B6I")
TCP_LISTEN = 10
TCP_INFO_SIZE = _LAYOUT.size


def accept_queue(sock: socket.socket) -> tuple[int, int] | None:
    """(connections waiting, backlog limit) of a listening TCP socket; None if not known."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    except OSError:
        return None
    if len(raw) < TCP_INFO_SIZE:
        return None
    fields = _LAYOUT.unpack_from(raw)
    state, unacked, sacked = fields[0], fields[12], fields[13]
    if state != TCP_LISTEN:
        return None
    return unacked, sacked
