"""Network set-up inside a jail's own network namespace (pyroute2, no shelling out)."""

from __future__ import annotations


def bring_up_loopback() -> None:
    """A fresh network namespace has `lo` down; `loopback` jails want it up."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=index, state="up")
