"""Host uids for jails: one per live jail host-wide, reused only after its PID namespace is gone.

Every process that starts jails (each `sandbox run`, each titus supervisor,
tests) draws from the same uid ranges, so uniqueness inside one process is not
enough: two concurrent `sandbox run` would both pick 200000.  Each live jail's
uid is therefore held as an exclusive flock(2) on a file named after the uid in
LOCK_DIR (/run/sandbox/uids):

- the lock is taken with LOCK_NB, so a uid held by anyone is skipped at once;
- release unlinks the file and then unlocks: a file that exists unlocked was
  left by a holder that died without releasing (the kernel dropped its lock),
  and its uid is reused only when no process on the host runs with it (the
  dead holder's jail may still be on its way out);
- whoever opened the file just before it was unlinked finds that its inode is
  no longer the one at the path, and tries again.

Reuse is safe because a jail is a PID namespace: when its PID 1 has been
reaped, the kernel has killed and reaped everything else in it, so no process
with the uid lies in wait (the blog's "dynamic UIDs" done right).
"""

from __future__ import annotations

import errno
import fcntl
import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # not at run time: the launcher must not import dataclasses
    from os import PathLike

    from sandbox.spec import UidRange

LOCK_DIR = "/run/sandbox/uids"  # a str: pathlib costs `sandbox run` milliseconds
# How often one uid is retried when its file is swapped under us (a release racing us).
_RETRIES = 3


class UidExhausted(RuntimeError):
    pass


class UidAllocator:
    """Hands out host uids from a range, never two to live jails on this host at once.

    `allocate` costs an open, a flock and two stats (tens of microseconds);
    each uid held costs one fd (close-on-exec; jails close it with all the
    others) until `release`.
    """

    def __init__(self, uid_range: UidRange, lock_dir: str | PathLike[str] = LOCK_DIR) -> None:
        self.range = uid_range
        self.lock_dir = lock_dir
        self._next = 0
        self._held: dict[int, int] = {}  # uid -> fd holding its lock
        self._dir_ready = False

    def allocate(self) -> int:
        """A uid no live jail on the host has; raises UidExhausted, or OSError (EMFILE...)."""
        first, count = self.range.first, self.range.count
        self._make_dir()
        for _ in range(count):
            uid = first + self._next
            self._next = (self._next + 1) % count
            if uid in self._held:
                continue
            fd = self._lock(uid)
            if fd is not None:
                self._held[uid] = fd
                return uid
        raise UidExhausted(f"all {count} jail uids from {first} are in use on this host")

    def release(self, uid: int) -> None:
        """Give `uid` back (its jail's PID 1 has been reaped, or it never started)."""
        fd = self._held.pop(uid, None)
        if fd is None:
            return
        try:  # noqa: SIM105 - not contextlib: it costs milliseconds at start-up
            os.unlink(self._path(uid))
        except FileNotFoundError:
            pass
        # LOCK_UN before close: a forked child that has not yet closed its copy of
        # the fd (a jail between fork and its fds layer) must not keep the lock.
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def close(self) -> None:
        """Release every uid this allocator holds."""
        for uid in list(self._held):
            self.release(uid)

    @property
    def live(self) -> frozenset[int]:
        return frozenset(self._held)

    # -- internals -----------------------------------------------------------------

    def _path(self, uid: int) -> str:
        return f"{self.lock_dir}/{uid}"

    def _make_dir(self) -> None:
        if not self._dir_ready:
            os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)
            self._dir_ready = True

    def _lock(self, uid: int) -> int | None:
        """An fd holding `uid`'s lock, or None if someone holds it (or a process runs as it)."""
        path = self._path(uid)
        for _ in range(_RETRIES):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            try:
                mine = os.fstat(fd)
                there = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                there = None
            except BaseException:
                os.close(fd)
                raise
            if there is None or (there.st_dev, there.st_ino) != (mine.st_dev, mine.st_ino):
                os.close(fd)  # released (unlinked) between our open and our lock: again
                continue
            if mine.st_size and uid_in_use(uid):
                # Left by a holder that died; its jail is still going away.
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                return None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        return None


def uid_in_use(uid: int) -> bool:
    """Whether any process on the host has `uid` as its real, effective or saved uid."""
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError as e:
        raise OSError(e.errno or errno.EIO, f"cannot list /proc: {e.strerror}") from None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        if uid in (int(x) for x in line.split()[1:4]):
                            return True
                        break
        except OSError:
            continue
    return False


def process_uid(pid: int) -> int | None:
    """The real uid of a live process (None if it is gone): a jail's host uid."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
