"""The jail's namespaces: its PID namespace (a clone flag), its user, IPC and UTS
namespaces, the id maps and the credentials inside; and the shared empty network
and IPC namespaces a launcher keeps.

The user namespace comes after the network and mount work, which needs the
host's CAP_SYS_ADMIN (setns into shared namespaces, mounts owned by the host).
The parent, not the child, writes the id maps: once the child has changed its
credentials it is no longer dumpable and cannot write its own map.  setgroups is
denied first, so the jail can never drop a supplementary group.
"""

from __future__ import annotations

import os

from sandbox import _jail, libc
from sandbox.plan import SLOTS, Step
from sandbox.spec import IpcMode, JailSpec

# The jail's own ids by default, mapped to one host uid and gid per jail (the
# launcher's); a spec's uid and gid (--uid, --gid) map another id instead, and its
# `ids` (--ids) map 0..ids-1 to a block of host uids.
INSIDE_UID = INSIDE_GID = 0


class SharedEmptyNamespace:
    """One empty namespace of a kind (network, IPC) that every `shared-empty` jail
    joins instead of making its own.

    A fresh network namespace per jail costs 0.5 ms and its asynchronous teardown
    backs up under churn; joining one costs 0.06 ms.  An IPC namespace costs less
    (~0.05 ms, and an unmount at teardown) but is just as shareable.  The namespace
    lives as long as this fd, so nothing is bind-mounted and nothing can leak.
    """

    def __init__(self, kind: str, flag: int) -> None:
        own = os.open(f"/proc/thread-self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.unshare(flag)
            try:
                self.fd = os.open(f"/proc/thread-self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
            finally:
                libc.setns(own, flag)
        finally:
            os.close(own)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# The slot of each shared namespace (sandbox.plan.SLOTS): its /proc/PID/ns name, flag.
SHARED_KINDS = {"netns": ("net", libc.CLONE_NEWNET), "ipcns": ("ipc", libc.CLONE_NEWIPC)}


def ipc_steps(spec: JailSpec, shared: bool) -> tuple[list[Step], int, tuple[str, ...]]:
    """(steps that join the shared IPC namespace, the IPC flag for the user step's
    unshare otherwise, slots the launcher must fill).  Joining needs the host's
    CAP_SYS_ADMIN, so it comes before the jail's user namespace, like the network's."""
    if spec.ipc == IpcMode.SHARED_EMPTY and shared:
        return ([Step(_jail.OP_SETNS_SLOT, "ipc", "join the shared empty IPC namespace",
                      args=(SLOTS.index("ipcns"), libc.CLONE_NEWIPC))], 0, ("ipcns",))
    return [], libc.CLONE_NEWIPC, ()  # NEW, or SHARED_EMPTY for a lone jail


def user_steps(spec: JailSpec, ipc_flag: int) -> list[Step]:
    """The jail's own user and UTS namespaces, and IPC's unless it joined a shared one
    (`ipc_flag` 0); one id inside (root unless the spec
    says another uid/gid), one host uid and gid outside; or, with `ids` N > 1, ids
    0..N-1 inside mapped to the jail's block of N host uids (and gids), so that
    a program holding CAP_SETUID/CAP_SETGID there can change between them.

    The ids change while the jail still holds every capability of its namespace:
    the kernel clears capabilities on a change away from the namespace's root,
    and the jail's ids until then are the host's root, which is not that; the
    capabilities layer drops them all later.  No id but the mapped one exists."""
    uid, gid = spec.uid, spec.gid
    if spec.ids > 1:
        mapped = (0, 0, spec.ids)
        what = f"the parent maps uids and gids 0-{spec.ids - 1} to the jail's {spec.ids} host ids"
    else:
        mapped = (uid, gid, 1)
        what = f"the parent maps uid {uid} and gid {gid} to the jail's host ids"
    return [
        Step(_jail.OP_UNSHARE, "user-namespace",
             "new user, IPC and UTS namespaces" if ipc_flag else "new user and UTS namespaces",
             args=(libc.CLONE_NEWUSER | ipc_flag | libc.CLONE_NEWUTS,)),
        # The parent writes the maps (Plan.id_maps): inside uid, gid, how many ids.
        Step(_jail.OP_IDMAP_SYNC, "id-map", what, args=mapped,
             subs={0: "asking the parent for the id maps: {err}",
                   1: "the parent went away before writing the id maps: {err}"}),
        Step(_jail.OP_SETRESGID, "credentials", f"setresgid({gid})", args=(gid,)),
        Step(_jail.OP_SETRESUID, "credentials", f"setresuid({uid})", args=(uid,)),
        Step(_jail.OP_SETHOSTNAME, "uts", f"hostname {spec.hostname!r}",
             strings=(spec.hostname,)),
    ]
