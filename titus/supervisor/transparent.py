"""Transparent proxying (titus's `transparent yes | backend-only`) with IP_TRANSPARENT.

`yes`: the listener is transparent, so a TPROXY rule can hand it connections
addressed to other hosts; getsockname() on such a connection is the client's
original destination, which becomes the backend.  `yes` and `backend-only`:
the backend socket is transparent and bound to the client's own address and
port, so the backend sees the client as the TCP peer.  Both need
CAP_NET_ADMIN, and routing that brings the backend's replies to the client's
address back to this host (a fwmark rule and a `local` route; see
tests/integration/test_titus_transparent.py for a complete set-up).
"""

from __future__ import annotations

import errno
import socket

IP_TRANSPARENT = 19  # <linux/in.h>
IPV6_TRANSPARENT = 75  # <linux/in6.h>; not in Python's socket module


def set_transparent(sock: socket.socket, on: bool = True) -> None:
    """Let `sock` accept for, or bind to, addresses that are not this host's (or no more)."""
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, int(on))
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, int(on))
    except PermissionError as e:
        raise PermissionError(e.errno, f"transparent mode needs CAP_NET_ADMIN: {e.strerror}"
                              ) from None


def client_source(family: int, peer: tuple) -> tuple:
    """The address to bind for reaching a backend of `family` as the client `peer`.

    A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; an IPv4
    backend needs the plain address.  An IPv6 client cannot be an IPv4 source
    (nor the reverse): OSError, so the broker tries the next address.
    """
    host, port = str(peer[0]), int(peer[1])
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    client_is_v6 = ":" in host
    if client_is_v6 != (family == socket.AF_INET6):
        raise OSError(errno.EAFNOSUPPORT,
                      f"transparent: cannot connect as the IPv{6 if client_is_v6 else 4} "
                      f"client {host} to an IPv{6 if family == socket.AF_INET6 else 4} "
                      "backend")
    return (host, port, 0, 0) if client_is_v6 else (host, port)


def bind_as_client(sock: socket.socket, peer: tuple) -> None:
    """Bind `sock` to the client's address and port (IP_TRANSPARENT).

    EADDRINUSE means the client is on this host and holds that port itself:
    keep its address and let the kernel pick the port, as titus 0.2 did.
    """
    source = client_source(sock.family, peer)
    try:
        set_transparent(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(source)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            sock.bind((source[0], 0, *source[2:]))
    except OSError as e:
        raise OSError(e.errno, f"transparent bind to the client's address {source[0]}:"
                               f"{source[1]}: {e.strerror}") from None
