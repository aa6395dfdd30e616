"""The jail's filesystem: an empty, read-only tmpfs root with optional bind mounts.

Built as real root in a fresh mount namespace owned by the host user namespace,
before the jail's own user namespace exists: the jail then holds no capability
over its mounts at all, and read-only remounts need no care for locked flags.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from sandbox import _jail, libc
from sandbox.plan import MODE_ENTRY, SLOTS, Plan, Step
from sandbox.spec import JailSpec

LAYER = "rootfs"
# Any existing directory serves as the staging mount point: the mount is
# private to the jail's namespace and vanishes with it.
_STAGING = "/tmp"
_HOLD = _jail.entry("hold")


def _mount(target: str, what: str, *, source: str | None = None, fstype: str | None = None,
           flags: int = 0, data: str | None = None) -> Step:
    present = (source is not None) | (fstype is not None) << 1 | (data is not None) << 2
    return Step(_jail.OP_MOUNT, LAYER, what, args=(flags, present),
                strings=(target, source or "", fstype or "", data or ""))


def _mkdirs(path: PurePosixPath, made: set[PurePosixPath]) -> list[Step]:
    """mkdir -p of `path` below the staging root, each directory once per plan."""
    out = []
    for d in (*reversed(path.parents), path):
        if len(d.parts) > 2 and d not in made:  # "/", "/tmp" exist
            made.add(d)
            out.append(Step(_jail.OP_MKDIR, LAYER, f"mkdir {d}", args=(0o755,),
                            strings=(str(d),)))
    return out


def root_steps(spec: JailSpec) -> list[Step]:
    """Replace the root of the child's (new) mount namespace with the spec's."""
    root = PurePosixPath(_STAGING)
    out = [_mount("/", "make every mount private", flags=libc.MS_REC | libc.MS_PRIVATE)]
    # Sources are opened before the staging tmpfs goes up, which may hide them.
    for i, b in enumerate(spec.binds):
        out.append(Step(_jail.OP_OPEN_BIND, LAYER, f"open the bind source {b.source}",
                        args=(i,), strings=(str(b.source),), subs={0: f"{{err}}: {b.source}"}))
    out.append(_mount(str(root), "the empty root: a tmpfs", source="jail", fstype="tmpfs",
                      flags=libc.MS_NOSUID | libc.MS_NODEV,
                      data="size=64k,nr_inodes=256,mode=0555"))
    made: set[PurePosixPath] = set()
    # The writable tmpfs mounts first (parents before children): a bind beneath one
    # must land on it, not under it.
    tmpfs = [(spec.writable_tmpfs, spec.writable_tmpfs_size)] if spec.writable_tmpfs else []
    for path, size in sorted([*tmpfs, *spec.tmpfs], key=lambda t: len(PurePosixPath(t[0]).parts)):
        target = root / PurePosixPath(path).relative_to("/")
        out += _mkdirs(target, made)
        out.append(_mount(str(target), f"writable tmpfs at {path} ({size} bytes)",
                          source="jailtmp", fstype="tmpfs", flags=libc.MS_NOSUID | libc.MS_NODEV,
                          data=f"size={size},mode=1777"))
    # Parents before children, whatever order the profile lists them in.
    ordered = sorted(enumerate(spec.binds), key=lambda ib: len(PurePosixPath(ib[1].target).parts))
    for i, b in ordered:
        target = root / PurePosixPath(b.target).relative_to("/")
        out += _mkdirs(target.parent, made)
        remount = libc.MS_REMOUNT | libc.MS_BIND | libc.MS_NOSUID | libc.MS_NODEV
        if not b.writable:
            remount |= libc.MS_RDONLY
        mode = "writable" if b.writable else "read-only"
        out.append(Step(_jail.OP_BIND, LAYER, f"bind {b.source} at {b.target} ({mode})",
                        args=(i, remount), strings=(str(target),),
                        subs={0: f"{{err}}: {b.source}",
                              1: f"making the mount point {b.target}: {{err}}"}))
    if spec.mount_proc:
        out += _mkdirs(root / "proc", made)
        out.append(_mount(str(root / "proc"), "a /proc of the jail's PID namespace",
                          source="proc", fstype="proc",
                          flags=libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC))
    if spec.dev:
        out += dev_steps(spec, root / "dev", len(spec.binds), made)
    # pivot_root(".", ".") stacks the old root under the new one; detaching it
    # leaves only the new root.  No directory for the old root is needed.
    out += [
        Step(_jail.OP_CHDIR, LAYER, f"chdir {root}", strings=(str(root),)),
        Step(_jail.OP_PIVOT_ROOT, LAYER, "pivot_root into it", strings=(".", ".")),
        Step(_jail.OP_UMOUNT, LAYER, "detach the host's root", args=(libc.MNT_DETACH,),
             strings=(".",)),
        Step(_jail.OP_CHDIR, LAYER, "chdir /", strings=("/",)),
        _mount("/", "the root read-only",
               flags=libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV),
    ]
    return out


# The devices of --dev, as bwrap's: harmless to any program, needed by many.
DEVICES = ("null", "zero", "full", "random", "urandom")
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))


def dev_steps(spec: JailSpec, target: PurePosixPath, first_bind: int,
              made: set[PurePosixPath]) -> list[Step]:
    """A read-only tmpfs /dev (nodev) holding binds of the host's harmless devices, each
    a mount of its own where devices work, and the usual links into /proc/self/fd.
    Bind indices from `first_bind` on (the profile's binds come first)."""
    devices = (*DEVICES, *(("tty",) if spec.dev_tty else ()))
    out = _mkdirs(target, made)
    out.append(_mount(str(target), "a tmpfs /dev", source="jaildev", fstype="tmpfs",
                      flags=libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC,
                      data="size=64k,nr_inodes=64,mode=0755"))
    for i, name in enumerate(devices, first_bind):
        out.append(Step(_jail.OP_OPEN_BIND, LAYER, f"open the device /dev/{name}", args=(i,),
                        strings=(f"/dev/{name}",), subs={0: f"{{err}}: /dev/{name}"}))
        out.append(Step(_jail.OP_BIND, LAYER, f"bind /dev/{name} at /dev/{name}",
                        args=(i, libc.MS_REMOUNT | libc.MS_BIND | libc.MS_NOSUID | libc.MS_NOEXEC),
                        strings=(str(target / name),),
                        subs={0: f"{{err}}: /dev/{name}",
                              1: f"making the mount point /dev/{name}: {{err}}"}))
    for name, to in _DEV_LINKS:
        out.append(Step(_jail.OP_SYMLINK, LAYER, f"/dev/{name} -> {to}",
                        strings=(to, str(target / name))))
    # A directory only: POSIX shared memory would need a writable one.
    out.append(Step(_jail.OP_MKDIR, LAYER, "mkdir /dev/shm", args=(0o1777,),
                    strings=(str(target / "shm"),)))
    out.append(_mount(str(target), "/dev read-only",
                      flags=libc.MS_REMOUNT | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
                      | libc.MS_RDONLY))
    return out


def join_steps() -> list[Step]:
    """Join a SharedRoot (slot "root"); setns also moves root and cwd there."""
    return [Step(_jail.OP_SETNS_SLOT, LAYER, "join the spec's shared read-only root",
                 args=(SLOTS.index("root"), libc.CLONE_NEWNS))]


def cwd_steps(spec: JailSpec) -> list[Step]:
    """The working directory of an exec'd program."""
    return [Step(_jail.OP_CHDIR, "cwd", f"chdir {spec.cwd}", strings=(str(spec.cwd),))]


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
    long as this fd.  Built by the executor like a jail: a child that applies
    the root's steps and holds the namespace until we have opened it.
    """

    def __init__(self, spec: JailSpec) -> None:
        steps = [Step(_jail.OP_UNSHARE, "mount-namespace", "a new mount namespace",
                      args=(libc.CLONE_NEWNS,)),
                 *root_steps(spec),
                 Step(_jail.OP_FDS, "fds", "keep only the hold pipe")]
        plan = Plan(steps, mode=MODE_ENTRY)
        hold_r, hold_w = os.pipe()
        try:
            pid, error, _, _, _ = _jail.spawn(plan.native, MODE_ENTRY, how=_jail.HOW_CLONE,
                                           keep=[hold_r], entry=_HOLD)
        except BaseException:
            os.close(hold_w)
            raise
        finally:
            os.close(hold_r)
        try:
            if error is not None:
                raise plan.error(error)
            self.fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(hold_w)  # the builder exits
            os.waitpid(pid, 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
