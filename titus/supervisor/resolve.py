"""Backend name resolution: A and AAAA looked up separately and concurrently.

One getaddrinfo(AF_UNSPEC) waits for both answers, so a DNS server that
drops or stalls AAAA queries (some mishandle CNAMEs for AAAA) delays or fails
every connection, even though the IPv4 answer is there.  Here each family
has its own thread: once one family has answered, the other gets a short
grace period (RFC 8305's 50 ms "resolution delay") and is then abandoned.
The whole lookup never takes longer than ``timeout``.  An abandoned lookup
finishes in its daemon thread and its answer is dropped.

IP literals never touch DNS.  Results are sockaddr tuples ready for
``connect``: ``(host, port)`` for IPv4, ``(host, port, flowinfo, scope_id)``
for IPv6, IPv6 and IPv4 interleaved (IPv6 first, as RFC 8305 suggests).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

Sockaddr = tuple[Any, ...]
GetAddrInfo = Callable[..., list[tuple[Any, ...]]]

RESOLUTION_DELAY = 0.05


class ResolveError(OSError):
    """The backend's name gave no address in either family within the timeout."""


def _literal(host: str, port: int) -> list[Sockaddr] | None:
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    # AI_NUMERICHOST: parses the literal (and an IPv6 %scope) without any lookup.
    infos = socket.getaddrinfo(
        text, port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP, socket.AI_NUMERICHOST
    )
    return [infos[0][4]]


class _Lookup:
    """One family's getaddrinfo in a daemon thread; ``done`` is set when it returns."""

    def __init__(
        self, getaddrinfo: GetAddrInfo, host: str, port: int, family: int, done: threading.Event
    ) -> None:
        self.family = family
        self.addresses: list[Sockaddr] = []
        self.error: BaseException | None = None
        self.finished = False
        self._args = (getaddrinfo, host, port, family)
        self._done = done
        thread = threading.Thread(target=self._run, name=f"resolve-{host}", daemon=True)
        thread.start()

    def _run(self) -> None:
        getaddrinfo, host, port, family = self._args
        try:
            infos = getaddrinfo(host, port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            self.addresses = [info[4] for info in infos if info[0] == family]
        except BaseException as e:  # reported to the caller, never raised in the thread
            self.error = e
        finally:
            self.finished = True
            self._done.set()

    def describe(self) -> str:
        name = "IPv6" if self.family == socket.AF_INET6 else "IPv4"
        if not self.finished:
            return f"{name}: timed out"
        if self.error is not None:
            return f"{name}: {self.error}"
        return f"{name}: no address"


def _interleave(first: list[Sockaddr], second: list[Sockaddr]) -> list[Sockaddr]:
    merged: list[Sockaddr] = []
    for index in range(max(len(first), len(second))):
        merged.extend(group[index] for group in (first, second) if index < len(group))
    return list(dict.fromkeys(merged))


def lookup_families(
    host: str,
    port: int,
    timeout: float,
    *,
    getaddrinfo: GetAddrInfo = socket.getaddrinfo,
    resolution_delay: float = RESOLUTION_DELAY,
) -> list[_Lookup]:
    """The IPv6 and IPv4 lookups of a name, each finished or abandoned: once one family has
    answered, the other gets ``resolution_delay``; neither more than ``timeout``."""
    done = threading.Event()
    deadline = time.monotonic() + timeout
    lookups = [
        _Lookup(getaddrinfo, host, port, family, done)
        for family in (socket.AF_INET6, socket.AF_INET)
    ]
    first_answer: float | None = None
    while True:
        done.clear()  # before looking: a lookup finishing from here on wakes the wait
        now = time.monotonic()
        if all(lookup.finished for lookup in lookups):
            break
        if first_answer is None and any(lookup.finished and lookup.addresses for lookup in lookups):
            first_answer = now
        limit = deadline if first_answer is None else min(deadline, first_answer + resolution_delay)
        if now >= limit:
            break
        done.wait(limit - now)
    return lookups


def _check(host: str, port: int, timeout: float) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if not host:
        raise ResolveError("no backend host to resolve")


def resolve_backend(
    host: str,
    port: int,
    timeout: float,
    *,
    getaddrinfo: GetAddrInfo = socket.getaddrinfo,
    resolution_delay: float = RESOLUTION_DELAY,
) -> list[Sockaddr]:
    """Addresses of ``host`` for ``connect``; ResolveError if neither family resolves.

    ``getaddrinfo`` is replaceable for tests (and is only used for names).
    """
    _check(host, port, timeout)
    literal = _literal(host, port)
    if literal is not None:
        return literal
    lookups = lookup_families(host, port, timeout, getaddrinfo=getaddrinfo,
                              resolution_delay=resolution_delay)
    v6, v4 = (list(lookup.addresses) if lookup.finished else [] for lookup in lookups)
    addresses = _interleave(v6, v4)
    if not addresses:
        details = "; ".join(lookup.describe() for lookup in lookups)
        raise ResolveError(f"cannot resolve backend {host}: {details}")
    return addresses


def is_name(host: str) -> bool:
    """True for a DNS name (worth refreshing), False for an IP literal."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return True
    return False


# A family's lookup that ended in one of these says the name has no such address now;
# any other error (a timeout, EAI_AGAIN) says nothing, and the old addresses stay.
_NO_SUCH_ADDRESS = {getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA")
                    if hasattr(socket, name)}


def refreshed(previous: list[Sockaddr], lookups: list[_Lookup]) -> tuple[list[Sockaddr], str]:
    """A background refresh's new address list, family by family (the A/AAAA independence
    of start-up): a family that answered replaces its old addresses; one that timed out or
    failed for a reason other than "no such address" keeps them.  Never empty: if the
    name has no address left, the old list stays.  Returns (addresses, what happened:
    "changed", "unchanged" or the failure's one-line reason)."""
    old = {family: [a for a in previous if (len(a) == 4) == (family == socket.AF_INET6)]
           for family in (socket.AF_INET6, socket.AF_INET)}
    new = dict(old)
    answered = False
    for lookup in lookups:
        error = getattr(lookup.error, "errno", None)
        if lookup.finished and (lookup.addresses or error in _NO_SUCH_ADDRESS):
            new[lookup.family] = list(lookup.addresses)
            answered = answered or bool(lookup.addresses)
    merged = _interleave(new[socket.AF_INET6], new[socket.AF_INET])
    if not merged or not answered:
        return previous, "; ".join(lookup.describe() for lookup in lookups if not
                                   (lookup.finished and lookup.addresses)) or "no address"
    return merged, "unchanged" if set(merged) == set(previous) else "changed"

Backends = dict[int, list[tuple[int, Sockaddr]]]  # vhost index -> [(family, sockaddr)]


def resolve_vhosts(config: Any, timeout: float | None = None) -> Backends:
    """Every vhost's backend name, resolved as start-up and `--check` need it.

    ResolveError's message is one line naming the file and line of the vhost's
    `backend` setting.  Vhosts without a backend name (the local address, or
    transparent mode) have no entry.
    """
    found: Backends = {}
    for index, vhost in enumerate(config.vhosts):
        if vhost.backend_host is None:
            continue
        try:
            addresses = resolve_backend(vhost.backend_host, vhost.backend_port or 0,
                                        timeout or config.dns_timeout)
        except OSError as e:
            raise ResolveError(f"{vhost.where('backend')}: {e}") from None
        found[index] = [(socket.AF_INET6 if len(a) == 4 else socket.AF_INET, a)
                        for a in addresses]
    return found
