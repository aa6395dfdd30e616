"""Notices for vhosts that can never be chosen: shadowed by an earlier one, or matching a
local port or address titus does not listen on.  Said at load time, with the vhost's line,
because the first-match rule (the worker's chooser, titus/worker/wk_choose.c, whose
agreement with VHost.matches_local/matches_sni tests/integration/test_cworker.py checks)
makes such a vhost dead.
"""

from __future__ import annotations

from typing import Any

from titus.config.model import Listener, Notice, VHost


def unreachable(vhosts: tuple[VHost, ...], listeners: tuple[Listener, ...],
                transparent: bool) -> list[Notice]:
    """One notice per vhost that no connection can reach."""
    notices: list[Notice] = []
    for later_index, later in enumerate(vhosts):
        for earlier in vhosts[:later_index]:
            if _shadows(earlier, later):
                notices.append(
                    Notice(
                        later.source,
                        f"vhost {later.name} can never be chosen: vhost {earlier.name} "
                        f"({earlier.source}) comes first and matches all its connections",
                    )
                )
                break
    if transparent:
        return notices  # local address and port are the client's original destination
    ports = {listener.port for listener in listeners}
    for vhost in vhosts:
        if vhost.local_port is not None and 0 not in ports and vhost.local_port not in ports:
            notices.append(
                Notice(
                    vhost.source,
                    f"vhost {vhost.name}: local-port {vhost.local_port} is not a port "
                    f"titus listens on, so it never matches",
                )
            )
        if vhost.local_address is not None and not any(
            _listener_covers(listener, vhost.local_address) for listener in listeners
        ):
            notices.append(
                Notice(
                    vhost.source,
                    f"vhost {vhost.name}: local-address {vhost.local_address} is not an "
                    f"address titus listens on, so it never matches",
                )
            )
    return notices


def _shadows(earlier: VHost, later: VHost) -> bool:
    """True if every connection ``later`` matches is taken by ``earlier`` first."""
    if earlier.local_address not in (None, later.local_address):
        return False
    if earlier.local_port not in (None, later.local_port):
        return False
    if not earlier.sni_names:
        return True
    return bool(later.sni_names) and set(later.sni_names) <= set(earlier.sni_names)


def _listener_covers(listener: Listener, address: Any) -> bool:
    if listener.address == address or listener.port == 0:
        return True
    if listener.address.is_unspecified and listener.address.version == 6:  # "::"
        return address.version == 6 or listener.dual_stack
    return listener.address.is_unspecified and address.version == 4  # "0.0.0.0"
