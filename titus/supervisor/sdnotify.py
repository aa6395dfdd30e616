"""systemd's readiness protocol (sd_notify): one datagram to $NOTIFY_SOCKET.

Ten lines of protocol, written here rather than pulling in systemd-python,
which needs libsystemd's headers to build.
"""

from __future__ import annotations

import os
import socket


def notify(*states: str) -> bool:
    """Send e.g. notify("READY=1", "STATUS=serving"); False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError:
        return False
    return True
