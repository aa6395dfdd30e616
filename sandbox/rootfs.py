"""The jail's filesystem: an empty, read-only tmpfs root with optional bind mounts.

Done as real root in a fresh mount namespace owned by the host user namespace,
before the jail's own user namespace exists: the jail then holds no
capability over its mounts at all, and read-only remounts need no care for
locked flags.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sandbox import libc
from sandbox.spec import JailSpec

# Any existing directory serves as the staging mount point: the mount is
# private to the jail's namespace and vanishes with it.
_STAGING = "/tmp"


def _bind(fd: int, target_in_root: str, writable: bool) -> None:
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.makedirs(target_in_root, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target_in_root), exist_ok=True)
        if not os.path.exists(target_in_root):
            os.close(os.open(target_in_root, os.O_CREAT | os.O_WRONLY, 0o444))
    libc.mount(f"/proc/self/fd/{fd}", target_in_root, None, libc.MS_BIND | libc.MS_REC)
    flags = libc.MS_REMOUNT | libc.MS_BIND | libc.MS_NOSUID | libc.MS_NODEV
    if not writable:
        flags |= libc.MS_RDONLY
    libc.mount(None, target_in_root, None, flags)


# The devices of --dev, as bwrap's: harmless to any program, needed by many.
DEVICES = ("null", "zero", "full", "random", "urandom")


def _dev(target: str, tty: bool) -> None:
    """A tmpfs /dev holding binds of the host's harmless devices (each its own mount
    without nodev, the tmpfs itself nodev) and the usual links into /proc/self/fd."""
    os.makedirs(target, exist_ok=True)
    libc.mount("jaildev", target, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC,
               "size=64k,nr_inodes=64,mode=0755")
    for name in (*DEVICES, *(("tty",) if tty else ())):
        node = f"{target}/{name}"
        os.close(os.open(node, os.O_CREAT | os.O_WRONLY, 0o666))
        libc.mount(f"/dev/{name}", node, None, libc.MS_BIND)
        libc.mount(None, node, None,
                   libc.MS_REMOUNT | libc.MS_BIND | libc.MS_NOSUID | libc.MS_NOEXEC)
    for name, to in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                     ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(to, f"{target}/{name}")
    os.mkdir(f"{target}/shm", 0o1777)  # a directory only: POSIX shm needs a writable one
    libc.mount(None, target, None, libc.MS_REMOUNT | libc.MS_NOSUID | libc.MS_NODEV
               | libc.MS_NOEXEC | libc.MS_RDONLY)


def build_root(spec: JailSpec) -> None:
    """Replace the root of the calling process's (new) mount namespace."""
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    # Sources are opened before the staging tmpfs goes up, which may hide them.
    sources = [os.open(b.source, os.O_PATH | os.O_CLOEXEC) for b in spec.binds]
    root = _STAGING
    libc.mount("jail", root, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV,
               "size=64k,nr_inodes=256,mode=0555")
    # The writable tmpfs first: a bind beneath it must land on it, not under it.
    tmpfs = [(spec.writable_tmpfs, spec.writable_tmpfs_size)] if spec.writable_tmpfs else []
    for path, size in sorted([*tmpfs, *spec.tmpfs], key=lambda t: len(Path(t[0]).parts)):
        target = root + str(path)
        os.makedirs(target, exist_ok=True)
        libc.mount("jailtmp", target, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV,
                   f"size={size},mode=1777")
    # Parents before children, whatever order the profile lists them in.
    ordered = sorted(zip(spec.binds, sources, strict=True), key=lambda b: len(b[0].target.parts))
    for bind, fd in ordered:
        _bind(fd, root + str(bind.target), bind.writable)
        os.close(fd)
    if spec.mount_proc:
        os.makedirs(root + "/proc", exist_ok=True)
        libc.mount("proc", root + "/proc", "proc",
                   libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
    if spec.dev:
        _dev(root + "/dev", spec.dev_tty)
    # pivot_root(".", ".") stacks the old root under the new one; detaching it
    # leaves only the new root.  No directory for the old root is needed.
    os.chdir(root)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")
    libc.mount(None, "/", None,
               libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV)


def shareable(spec: JailSpec) -> bool:
    """Whether every jail of `spec` can share one root: read-only and nothing per jail
    (a /proc shows its mounter's PID namespace; a writable place would be a channel
    between jails)."""
    return (spec.empty_root and spec.writable_tmpfs is None and not spec.mount_proc
            and not spec.tmpfs and not spec.dev and not any(b.writable for b in spec.binds))


class SharedRoot:
    """A mount namespace holding one spec's empty read-only root, built once and then
    joined (setns) by every jail of that spec, as the empty network namespace is.

    A jail then neither copies the host's mount table (hundreds of mounts on a
    host that runs containers) nor tears a namespace down when it exits.  The
    namespace is owned by the host's user namespace, so no jail holds any
    capability over it: none can mount, unmount or write there.  It lives as
    long as this fd.
    """

    def __init__(self, spec: JailSpec) -> None:
        ready_r, ready_w = os.pipe()
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - reported through the pipe
            code = 1
            try:
                os.close(ready_r)
                os.close(done_w)
                libc.unshare(libc.CLONE_NEWNS)
                build_root(spec)
                os.write(ready_w, b"k")
                os.read(done_r, 1)  # hold the namespace until the parent has it
                code = 0
            except BaseException as e:
                err = e.errno or 0 if isinstance(e, OSError) else 0
                text = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and \
                    e.filename else getattr(e, "strerror", None) or str(e)
                os.write(ready_w, f"E{err}\0{text}".encode(errors="replace"))
            finally:
                os._exit(code)
        os.close(ready_w)
        os.close(done_r)
        try:
            answer = os.read(ready_r, 4096)
            if answer != b"k":
                err, _, text = answer[1:].partition(b"\0")
                raise OSError(int(err or 0), text.decode(errors="replace") or "the builder died")
            self.fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(ready_r)
            os.close(done_w)
            os.waitpid(pid, 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
