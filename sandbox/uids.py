"""Host uids for jails: a block per live jail, unique host-wide, reused only after its
PID namespace is gone.

Every process that starts jails (each `sandbox run`, each titus supervisor,
tests) draws from the same uid ranges, so uniqueness inside one process is not
enough: two concurrent `sandbox run` would both pick 200000.  A jail holds a
block of N contiguous host uids (N = its spec's `ids`, usually 1; the same
numbers serve as gids) as an exclusive byte-range lock on one file,
LOCK_DIR/held: the byte at offset U stands for uid U.

- The lock is an open-file-description lock (F_OFD_SETLK): the kernel grants
  the whole range [U, U+N) at once or not at all, so two blocks, and a block and
  a single uid, never overlap, whatever processes hold them; a taken range is
  skipped at once (no waiting), past the end of the lock in the way.
- The holder writes a 1 into each byte of its block, and release zeroes them and
  then unlocks: a range that is unlocked but marked was left by a holder that
  died without releasing (the kernel dropped its lock), and it is reused only
  when no process on the host runs with any of its uids (the dead holder's jail
  may still be on its way out).
- Each allocator opens the file once: its blocks are ranges locked through that
  one open file description (one fd however many jails, and no open or close
  per jail: /run is not always a tmpfs, and creating and unlinking a file per
  uid cost 70 us of the supervisor's CPU per connection on ext4).  Two
  allocators, in one process or two, are two descriptions and exclude each
  other; the kernel merges one description's own ranges, so an allocator skips
  its own blocks itself.

Reuse is safe because a jail is a PID namespace: when its PID 1 has been
reaped, the kernel has killed and reaped everything else in it, so no process
with the uids lies in wait (the blog's "dynamic UIDs" done right).
"""

from __future__ import annotations

import _struct as struct  # the C module: struct.py only re-exports it (a file fewer to load)
import errno
import fcntl
import posix  # not os: a cached `sandbox run` does without it (2.5 ms; sandbox/runcache.py)
from io import SEEK_SET  # io: imported by the interpreter itself

TYPE_CHECKING = False
if TYPE_CHECKING:  # not at run time: the launcher must not import dataclasses
    from os import PathLike

    from sandbox.spec import UidRange

LOCK_DIR = "/run/sandbox/uids"  # a str: pathlib costs `sandbox run` milliseconds
LOCK_FILE = "held"  # in LOCK_DIR: byte U is 1 while uid U is held
# struct flock (fcntl(2)): l_type, l_whence, l_start, l_len, l_pid, in C's layout;
# padded, since the kernel reads sizeof(struct flock) (32 on 64-bit Linux).
_FLOCK = struct.Struct("@hhqqi")
_FLOCK_PAD = b"\0" * 8
_ZEROS = bytes(4096)


class UidExhausted(RuntimeError):
    pass


class UidAllocator:
    """Hands out blocks of host uids from a range, never overlapping a block of any
    live jail on this host.

    `allocate` costs an fcntl, a pread and a pwrite, `release` a pwrite and an
    fcntl (a few microseconds); the allocator holds one fd (close-on-exec; jails
    close it with all the others) until `close`.
    """

    def __init__(self, uid_range: UidRange, lock_dir: str | PathLike[str] = LOCK_DIR) -> None:
        self.range = uid_range
        self.lock_dir = lock_dir
        self._next = 0
        self._held: dict[int, int] = {}  # first uid -> how many
        self._owned: set[int] = set()  # every uid of those blocks
        self._path = f"{posix.fspath(lock_dir)}/{LOCK_FILE}"
        self._fd: int | None = None  # LOCK_FILE, opened once: every block is a range of it

    def allocate(self, count: int = 1) -> int:
        """The first of `count` contiguous uids no live jail on the host has.

        Raises UidExhausted, ValueError (a block larger than the range), or OSError."""
        first, size = self.range.first, self.range.count
        if not 1 <= count <= size:
            raise ValueError(f"a block of {count} ids does not fit in the jail uid range "
                             f"{first}+{size}")
        span = size - count + 1  # where a block may start, relative to `first`
        fd = self._open()
        pos, left = self._next % span, span
        while left > 0:
            # Our own locks never conflict with a new one on the same open file
            # description (the kernel merges them): skip our blocks here.
            mine = [u for u in range(first + pos, first + pos + count) if u in self._owned]
            skip = max(mine) - (first + pos) + 1 if mine else _take(fd, first + pos, count)
            if skip == 0:
                self._held[first + pos] = count
                self._owned.update(range(first + pos, first + pos + count))
                self._next = (pos + count) % span
                return first + pos
            skip = min(skip, span - pos, left)  # never past the end: wrap to `first`
            left -= skip
            pos = (pos + skip) % span
        what = "uids" if count == 1 else f"blocks of {count} uids"
        raise UidExhausted(f"all {what} of the {size} jail uids from {first} are in use on "
                           f"this host")

    def release(self, uid: int) -> None:
        """Give back the block starting at `uid` (its jail's PID 1 has been reaped, or it
        never started)."""
        count = self._held.pop(uid, None)
        if count is None or self._fd is None:
            return
        self._owned.difference_update(range(uid, uid + count))
        try:
            _mark(self._fd, uid, count, False)
        finally:
            _lock(self._fd, fcntl.F_UNLCK, uid, count)

    def close(self) -> None:
        """Release every block this allocator holds, and its lock file."""
        for uid in list(self._held):
            self.release(uid)
        if self._fd is not None:
            posix.close(self._fd)
            self._fd = None

    @property
    def live(self) -> frozenset[int]:
        """The first uid of each block held."""
        return frozenset(self._held)

    def count(self, uid: int) -> int:
        """How many uids the block starting at `uid` has (0: not held here)."""
        return self._held.get(uid, 0)

    def _open(self) -> int:
        if self._fd is None:
            flags = posix.O_RDWR | posix.O_CREAT | posix.O_CLOEXEC | posix.O_NOFOLLOW
            try:
                self._fd = posix.open(self._path, flags, 0o600)
            except FileNotFoundError:  # the first jail since boot: no lock directory yet
                import os

                os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)
                self._fd = posix.open(self._path, flags, 0o600)
        return self._fd


def _lock(fd: int, kind: int, start: int, count: int, cmd: int = fcntl.F_OFD_SETLK) -> bytes:
    """fcntl(F_OFD_*) on [start, start+count); the kernel's struct flock back."""
    raw = _FLOCK.pack(kind, SEEK_SET, start, count, 0) + _FLOCK_PAD
    return fcntl.fcntl(fd, cmd, raw)


def _take(fd: int, start: int, count: int) -> int:
    """0 when [start, start+count) is now ours; else how far on the next try should
    start (the end of the lock in the way, or 1 past a marked uid still in use)."""
    try:
        _lock(fd, fcntl.F_WRLCK, start, count)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        kind, _, l_start, l_len, _ = _FLOCK.unpack_from(
            _lock(fd, fcntl.F_WRLCK, start, count, fcntl.F_OFD_GETLK))
        if kind == fcntl.F_UNLCK:  # released between the two calls
            return 1
        return max(1, l_start + l_len - start) if l_len else count  # l_len 0: to EOF
    try:
        marks = posix.pread(fd, count, start)
        if marks.count(0) != len(marks):  # marked, unlocked: its holder died
            stale = {start + i for i, b in enumerate(marks) if b}
            busy = uids_in_use(stale)
            if busy:
                _lock(fd, fcntl.F_UNLCK, start, count)
                return max(busy) - start + 1
        _mark(fd, start, count, True)
    except BaseException:
        _lock(fd, fcntl.F_UNLCK, start, count)
        raise
    return 0


def _mark(fd: int, start: int, count: int, held: bool) -> None:
    """Write 1 (held) or 0 into the bytes of [start, start+count)."""
    fill = b"\1" * min(count, len(_ZEROS)) if held else _ZEROS
    done = 0
    while done < count:
        n = posix.pwrite(fd, fill[:count - done], start + done)
        if n <= 0:
            raise OSError(errno.EIO, f"writing {LOCK_FILE} at {start + done}")
        done += n


def held_uids(lock_dir: str | PathLike[str] = LOCK_DIR) -> set[int]:
    """Every uid a live holder on the host holds now (diagnostics and tests): the
    marked bytes of the file whose range some process has locked."""
    path = f"{posix.fspath(lock_dir)}/{LOCK_FILE}"
    try:
        fd = posix.open(path, posix.O_RDWR | posix.O_CLOEXEC | posix.O_NOFOLLOW)
    except FileNotFoundError:
        return set()
    out: set[int] = set()
    try:
        end = posix.fstat(fd).st_size
        pos = 0
        while pos < end:
            try:
                data_at = posix.lseek(fd, pos, posix.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            hole_at = posix.lseek(fd, data_at, posix.SEEK_HOLE)
            chunk = posix.pread(fd, hole_at - data_at, data_at)
            for i, b in enumerate(chunk):
                if b:
                    uid = data_at + i
                    kind = _FLOCK.unpack_from(
                        _lock(fd, fcntl.F_WRLCK, uid, 1, fcntl.F_OFD_GETLK))[0]
                    if kind != fcntl.F_UNLCK:
                        out.add(uid)
            pos = hole_at
    finally:
        posix.close(fd)
    return out


def uids_in_use(uids: set[int]) -> set[int]:
    """Those of `uids` that some process on the host has as its real, effective or
    saved uid."""
    try:
        pids = [name for name in posix.listdir("/proc") if name.isdigit()]
    except OSError as e:
        raise OSError(e.errno or errno.EIO, f"cannot list /proc: {e.strerror}") from None
    found: set[int] = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        found.update(u for u in (int(x) for x in line.split()[1:4]) if u in uids)
                        break
        except OSError:
            continue
    return found


def uid_in_use(uid: int) -> bool:
    """Whether any process on the host has `uid` as its real, effective or saved uid."""
    return bool(uids_in_use({uid}))


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
