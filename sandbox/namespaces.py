"""Namespace plumbing done by the parent: the shared empty network namespace,
the PID namespace each jail is born into, and the uid/gid maps.

The parent, not the child, writes the id maps: once the child has changed its
credentials it is no longer dumpable and cannot write its own map.
"""

from __future__ import annotations

import os

from sandbox import libc


class SharedEmptyNetns:
    """One empty network namespace that every `shared-empty` jail joins.

    A fresh namespace per jail costs 0.5 ms and its asynchronous teardown backs
    up under churn; joining one costs 0.06 ms.  The namespace lives as long as
    this fd, so nothing is bind-mounted and nothing can leak.
    """

    def __init__(self) -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.unshare(libc.CLONE_NEWNET)
            try:
                self.fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            finally:
                libc.setns(own, libc.CLONE_NEWNET)
        finally:
            os.close(own)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PidNamespaceFork:
    """Fork a child that is PID 1 of a fresh PID namespace, with no second fork.

    unshare(CLONE_NEWPID) only sets where the *next* child goes; setns back to
    our own namespace right after the fork lets us do it again for the next
    jail.  The child's real parent stays the caller, so PR_SET_PDEATHSIG works
    and no subreaper is needed.
    """

    def __init__(self) -> None:
        self._own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def fork(self) -> int:
        libc.unshare(libc.CLONE_NEWPID)
        try:
            pid = os.fork()
        except BaseException:
            libc.setns(self._own, libc.CLONE_NEWPID)
            raise
        if pid:
            libc.setns(self._own, libc.CLONE_NEWPID)
        return pid

    def close(self) -> None:
        os.close(self._own)


def write_id_maps(pid: int, host_uid: int, host_gid: int, uid: int = 0, gid: int = 0
                  ) -> None:
    """Map the jail's root (0) to one unprivileged host uid and gid.

    setgroups must be denied before gid_map can be written by an unprivileged
    writer; we deny it anyway so the jail can never drop supplementary groups
    to escape a negative group permission.
    """
    base = f"/proc/{pid}/"
    for name, text in (("setgroups", "deny"), ("gid_map", f"{gid} {host_gid} 1\n"),
                       ("uid_map", f"{uid} {host_uid} 1\n")):
        fd = os.open(base + name, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
