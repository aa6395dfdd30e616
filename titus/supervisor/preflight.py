"""What start-up needs from the system, checked the way start-up does it, for `titus --check`.

The configuration can be valid and start-up still refuse it: a port another
program listens on, a backend name that does not resolve, a jail profile an
edit weakened, a TLS context OpenSSL will not build.  The systemd unit
runs `--check` before starting titus, so it must catch those too.  Every
problem is one line naming the file and line that asked for it.

A port held by a running titus (checking a changed configuration before a
reload) or by a systemd socket unit with ReusePort=yes (socket activation:
titus takes that socket over) is not a problem.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from dataclasses import dataclass

from titus.config.model import Config, Listener
from titus.supervisor.listeners import bound_socket
from titus.supervisor.resolve import resolve_vhosts
from titus.supervisor.startup import StartupError, jail_profile

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


@dataclass(frozen=True)
class Holder:
    """A process that holds a listening socket."""

    pid: int
    command: str

    @property
    def is_titus(self) -> bool:
        return self.command == "titus" or "titus.cli" in self.command

    def __str__(self) -> str:
        return f"{self.command} (pid {self.pid})"


def preflight(config: Config) -> tuple[str | None, list[str]]:
    """(the first problem, or None; notes): the jail profiles and TLS contexts, every
    listener and every backend name."""
    notes: list[str] = []
    problem = jails_and_contexts(config)
    if problem:
        return problem, notes
    wanted = [(lst, "listen", config.transparent == "yes") for lst in config.listeners]
    if config.metrics_listen is not None:
        wanted.append((config.metrics_listen, "metrics-listen", False))
    for listener, option, transparent in wanted:
        problem = probe(listener, transparent)
        if problem is None:
            continue
        message, holder = problem
        where = f"{listener.source}: " if listener.source else ""
        if holder is not None and holder.is_titus:
            notes.append(f"{where}{option} {listener}: in use by {holder}: fine for checking a "
                         f"reload, but start-up fails while it runs")
            continue
        return f"{where}{option} {listener}: {message}", notes
    try:
        resolve_vhosts(config)
    except OSError as e:
        return str(e), notes
    return None, notes


def jails_and_contexts(config: Config) -> str | None:
    """What the supervisor and the zygote refuse before serving, done the same way here:
    a jail profile that lost a layer titus needs, a TLS context OpenSSL will not build
    (certificates only: no key is read)."""
    from titus.keyholder.main import key_slots
    from titus.worker.contexts import TLSConfigError, build_contexts
    from titus.worker.remotekey import RemoteKeyError, read_chain

    try:
        for name in ("titus-worker", "titus-keyholder"):
            jail_profile(name)
        slots, key_of_vhost = key_slots(config)
        chains = [read_chain(slot.cert_pem, str(slot.cert_path)) for slot in slots]
        build_contexts(config.vhosts, key_of_vhost, chains)
    except (StartupError, TLSConfigError, RemoteKeyError, OSError, ValueError) as e:
        return str(e)
    return None


def probe(listener: Listener, transparent: bool = False) -> tuple[str, Holder | None] | None:
    """Bind `listener`'s address as start-up will (but do not listen); None if it can be.

    SO_REUSEPORT lets the probe share a port with a socket that also has it (a
    systemd socket unit with ReusePort=yes), never with an ordinary listener.
    """
    if listener.port == 0:
        return None
    try:
        bound_socket(listener, transparent, reuse_port=True).close()
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            holder = holder_of(listener)
            return f"address already in use{f' by {holder}' if holder else ''}", holder
        return f"cannot listen: {e.strerror or e}", None
    return None


def holder_of(listener: Listener) -> Holder | None:
    """The process listening on `listener`'s port (and address, or a wildcard), if /proc
    lets us see it."""
    inodes = _listening_inodes(listener)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{name}/fd/{fd}") in wanted:
                        return Holder(int(name), _command(int(name)))
    return None


def _command(pid: int) -> str:
    """`titus` for a titus supervisor (however it was started), else the process name."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if any(arg == b"titus.cli" or arg.endswith(b"/titus") or arg == b"titus"
               for arg in argv[:3]):
            return "titus"
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _listening_inodes(listener: Listener) -> set[str]:
    """Inodes of LISTEN sockets on the listener's port whose address overlaps it."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) < 10 or parts[3] != _LISTEN:
                    continue
                address, port = parts[1].split(":")
                if int(port, 16) == listener.port and _overlaps(address, listener):
                    found.add(parts[9])
    return found


def _overlaps(hex_address: str, listener: Listener) -> bool:
    raw = bytes.fromhex(hex_address)
    # /proc/net/tcp* writes each 32-bit word in host byte order.
    words = [raw[i:i + 4][::-1] if socket.htonl(1) != 1 else raw[i:i + 4]
             for i in range(0, len(raw), 4)]
    packed = b"".join(words)
    theirs = socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)
    if theirs.startswith("::ffff:"):
        theirs = theirs[7:]
    ours = str(listener.address)
    return ours in ("0.0.0.0", "::") or theirs in ("0.0.0.0", "::", ours)
