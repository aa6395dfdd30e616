"""systemd socket activation: listening sockets passed in as LISTEN_FDS (sd_listen_fds(3)).

With contrib/titus.socket, systemd binds the ports (before titus runs, and
across its restarts, so no connection is refused meanwhile) and passes them
as fds 3, 4, ...  titus takes each one in place of binding the `listen` line
with the same address; the configuration stays the one authority on what
titus listens on, so a passed socket no `listen` line names is an error.
The variables are removed from the environment: nothing titus starts
inherits them, and the fds are made close-on-exec.
"""

from __future__ import annotations

import os
import socket
import stat

from titus.config.model import Listener

SD_LISTEN_FDS_START = 3


class ActivationError(RuntimeError):
    """The passed sockets do not fit the configuration; one line for the operator."""


def passed_sockets(environ: dict[str, str] | None = None) -> list[socket.socket]:
    """The listening TCP sockets systemd passed to this process (none without LISTEN_FDS);
    the LISTEN_* variables are removed from os.environ."""
    env = os.environ if environ is None else environ
    pid, count = env.pop("LISTEN_PID", None), env.pop("LISTEN_FDS", None)
    env.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None or not pid.isdigit() or int(pid) != os.getpid():
        return []
    if not count.isdigit():
        raise ActivationError(f"LISTEN_FDS={count!r}: not a number")
    found = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise ActivationError(f"systemd passed fd {fd}, which is not a socket")
        except OSError as e:
            raise ActivationError(f"systemd passed fd {fd}: {e.strerror}") from None
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET,
                                                                 socket.AF_INET6):
            raise ActivationError(f"systemd passed fd {fd}, which is not a TCP socket "
                                  "(titus.socket needs ListenStream=ADDRESS:PORT)")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ActivationError(f"systemd passed fd {fd}, which is not listening")
        found.append(sock)
    return found


def _key(address: tuple) -> tuple[str, int]:
    host = str(address[0])
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, int(address[1])


def match(listeners: tuple[Listener, ...], passed: list[socket.socket]
          ) -> dict[Listener, socket.socket]:
    """The passed socket of each `listen` line that has one (same address and port); an
    error names a passed socket that no line names."""
    by_address = {_key(sock.getsockname()): sock for sock in passed}
    taken: dict[Listener, socket.socket] = {}
    for listener in listeners:
        sock = by_address.pop(_key(listener.sockaddr), None)
        if sock is not None:
            sock.setblocking(False)
            taken[listener] = sock
    if by_address:
        host, port = next(iter(by_address))
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        for sock in by_address.values():
            sock.close()
        raise ActivationError(f"systemd passed a socket on {shown}, but no `listen` line names "
                              f"it; add `listen {shown}` to the configuration")
    return taken
