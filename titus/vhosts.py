"""Choosing the vhost for a connection: local address and port first, then SNI.

First match wins, as in titus 0.4.  The supervisor uses `for_local` too, to
check that a worker asks only for a backend its connection could have had.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any, Protocol


class VHostLike(Protocol):
    local_address: Any  # ipaddress object or None
    local_port: int | None
    sni_names: tuple[str, ...] | None


def _same_address(configured: Any, local_ip: str) -> bool:
    addr = ipaddress.ip_address(local_ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    want = ipaddress.ip_address(str(configured))
    if isinstance(want, ipaddress.IPv6Address) and want.ipv4_mapped:
        want = want.ipv4_mapped
    return addr == want


def matches_local(vhost: VHostLike, local_ip: str, local_port: int) -> bool:
    if vhost.local_port is not None and vhost.local_port != local_port:
        return False
    return vhost.local_address is None or _same_address(vhost.local_address, local_ip)


def for_local(vhosts: Sequence[VHostLike], local_ip: str, local_port: int) -> list[int]:
    """Indexes of the vhosts a connection to this local address may use, in order."""
    return [i for i, v in enumerate(vhosts) if matches_local(v, local_ip, local_port)]


def sni_matches(patterns: tuple[str, ...] | None, name: str | None) -> bool:
    """Exact names, or '*.example.com' for exactly one more label."""
    if not patterns:
        return True
    if name is None:
        return False
    name = name.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern == name:
            return True
        if pattern.startswith("*.") and "." in name:
            label, rest = name.split(".", 1)
            if label and rest == pattern[2:]:
                return True
    return False


def choose(vhosts: Sequence[VHostLike], candidates: Sequence[int], sni: str | None) -> int | None:
    for i in candidates:
        if sni_matches(vhosts[i].sni_names, sni):
            return i
    return None
