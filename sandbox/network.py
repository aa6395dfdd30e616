"""The jail's network: which namespace it joins or makes, and `lo` up in a loopback one.

SHARED_EMPTY joins one empty namespace the launcher keeps (slot "netns"): a fresh
namespace per jail costs 0.5 ms and its teardown backs up under churn.  A launcher
that runs a single jail has nothing to share and gives it its own.  Joining must
happen before the jail's user namespace exists (setns needs CAP_SYS_ADMIN in the
namespace's owner, the host's), and so must bringing `lo` up (CAP_NET_ADMIN there).
"""

from __future__ import annotations

from sandbox import _jail, libc
from sandbox.plan import SLOTS, Step
from sandbox.spec import JailSpec, NetworkMode

LAYER = "network"


def steps(spec: JailSpec, shared: bool) -> tuple[list[Step], int, tuple[str, ...]]:
    """(steps that join a namespace, namespace flags to unshare with the mount
    namespace, slots the launcher must fill)."""
    if spec.network == NetworkMode.SHARED_EMPTY and shared:
        return ([Step(_jail.OP_SETNS_SLOT, LAYER, "join the shared empty network namespace",
                      args=(SLOTS.index("netns"), libc.CLONE_NEWNET))], 0, ("netns",))
    if spec.network == NetworkMode.NETNS:
        path = str(spec.netns_path)
        return ([Step(_jail.OP_SETNS_PATH, LAYER, f"join the network namespace {path}",
                      args=(0, libc.CLONE_NEWNET), strings=(path,),
                      subs={0: f"cannot open network namespace {path}: {{err}}",
                            1: f"cannot join network namespace {path}: {{err}}"})], 0, ())
    if spec.network == NetworkMode.HOST:
        return [], 0, ()
    return [], libc.CLONE_NEWNET, ()  # NEW, LOOPBACK, or SHARED_EMPTY for a lone jail


def loopback_steps(spec: JailSpec) -> list[Step]:
    """A fresh namespace has `lo` down; a loopback jail wants it up (ioctl, in C)."""
    if spec.network != NetworkMode.LOOPBACK:
        return []
    return [Step(_jail.OP_LOOPBACK_UP, LAYER, "bring lo up",
                 subs={0: "loopback socket: {err}", 1: "reading lo's flags: {err}",
                       2: "setting lo up: {err}"})]
