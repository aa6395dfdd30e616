"""The host-wide uid allocator: exclusive across processes, robust to a holder that dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sandbox.spec import UidRange
from sandbox.uids import LOCK_FILE, UidAllocator, UidExhausted, held_uids, uid_in_use

REPO = Path(__file__).resolve().parents[3]
# Far above any real user (and any other test's range): nothing runs as these.
FIRST = 3_900_000_000 + (os.getpid() % 1000) * 1000


def test_two_allocators_never_hand_out_the_same_uid(tmp_path: Path) -> None:
    a = UidAllocator(UidRange(FIRST, 10), tmp_path)
    b = UidAllocator(UidRange(FIRST, 10), tmp_path)
    got_a = [a.allocate() for _ in range(4)]
    got_b = [b.allocate() for _ in range(6)]
    assert sorted(got_a + got_b) == list(range(FIRST, FIRST + 10))
    with pytest.raises(UidExhausted, match="on this host"):
        b.allocate()
    a.release(got_a[0])
    assert b.allocate() == got_a[0]
    assert held_uids(tmp_path) == set(range(FIRST, FIRST + 10))
    a.close()
    b.close()
    assert held_uids(tmp_path) == set()
    assert _marks(tmp_path, FIRST, 10) == bytes(10)  # released uids leave no mark behind


def test_one_allocator_skips_its_own_blocks_on_its_one_fd(tmp_path: Path) -> None:
    """The kernel merges ranges locked through one open file description, so only
    the allocator itself keeps its blocks apart; it opens the lock file once."""
    a = UidAllocator(UidRange(FIRST, 12), tmp_path)
    fds_before = len(os.listdir("/proc/self/fd"))
    first = a.allocate(4)
    a._next = 0  # aim the next block at the one just taken
    second = a.allocate(4)
    assert (first, second) == (FIRST, FIRST + 4)
    a._next = 2
    assert a.allocate() == FIRST + 8
    assert len(os.listdir("/proc/self/fd")) == fds_before + 1
    a.release(second)
    assert held_uids(tmp_path) == set(range(FIRST, FIRST + 4)) | {FIRST + 8}
    a.close()
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert held_uids(tmp_path) == set()


def _marks(lock_dir: Path, first: int, count: int) -> bytes:
    """The bytes of the lock file that stand for uids first..first+count-1."""
    with open(lock_dir / LOCK_FILE, "rb") as f:
        f.seek(first)
        return f.read(count).ljust(count, b"\0")


def test_blocks_are_contiguous_exclusive_and_released_together(tmp_path: Path) -> None:
    a = UidAllocator(UidRange(FIRST, 16), tmp_path)
    b = UidAllocator(UidRange(FIRST, 16), tmp_path)
    block = a.allocate(5)
    assert block == FIRST and a.count(block) == 5
    assert held_uids(tmp_path) == set(range(FIRST, FIRST + 5))
    single = b.allocate()
    assert single == FIRST + 5  # never inside a's block
    other = b.allocate(8)
    assert other == FIRST + 6
    with pytest.raises(UidExhausted, match="blocks of 3 uids"):
        a.allocate(3)  # two uids left: no room for three
    assert a.allocate(2) == FIRST + 14
    with pytest.raises(ValueError, match="does not fit"):
        a.allocate(17)
    a.release(block)  # all five at once
    assert held_uids(tmp_path) == set(range(FIRST + 5, FIRST + 16))
    assert _marks(tmp_path, FIRST, 5) == bytes(5)
    assert b.allocate(5) == FIRST
    assert b.live == {FIRST, FIRST + 5, FIRST + 6}
    a.close()
    b.close()
    assert held_uids(tmp_path) == set()


def test_a_block_skips_past_a_single_uid_held_inside_it(tmp_path: Path) -> None:
    a = UidAllocator(UidRange(FIRST, 12), tmp_path)
    b = UidAllocator(UidRange(FIRST, 12), tmp_path)
    b._next = 3
    assert b.allocate() == FIRST + 3
    assert a.allocate(4) == FIRST + 4  # 0-3 would overlap b's uid
    assert a.allocate(4) == FIRST + 8
    with pytest.raises(UidExhausted):
        a.allocate(4)  # 0-2 are free, but only three of them
    assert a.allocate(3) == FIRST
    a.close()
    b.close()


def test_overlapping_ranges_share_the_locks(tmp_path: Path) -> None:
    a = UidAllocator(UidRange(FIRST, 4), tmp_path)
    b = UidAllocator(UidRange(FIRST + 2, 4), tmp_path)
    assert [a.allocate() for _ in range(4)] == list(range(FIRST, FIRST + 4))
    assert [b.allocate() for _ in range(2)] == [FIRST + 4, FIRST + 5]
    a.close()
    b.close()


def _holder(tmp_path: Path, count: int, size: int = 1) -> subprocess.Popen:
    """A process that allocates `count` blocks of `size` uids, prints their first uids
    and waits for stdin to close."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from sandbox.spec import UidRange
        from sandbox.uids import UidAllocator
        a = UidAllocator(UidRange({FIRST}, 20), Path({str(tmp_path)!r}))
        print(" ".join(str(a.allocate({size})) for _ in range({count})), flush=True)
        sys.stdin.read()
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO)


def test_a_dead_holder_frees_its_uids(tmp_path: Path) -> None:
    proc = _holder(tmp_path, 3)
    assert proc.stdout is not None
    held = [int(x) for x in proc.stdout.readline().split()]
    assert held == [FIRST, FIRST + 1, FIRST + 2]
    mine = UidAllocator(UidRange(FIRST, 20), tmp_path)
    assert mine.allocate() == FIRST + 3  # the live holder's uids are skipped
    proc.send_signal(signal.SIGKILL)  # no release: its marks stay behind
    proc.wait()
    assert held_uids(tmp_path) == {FIRST + 3}
    assert _marks(tmp_path, FIRST, 4) == b"\1" * 4
    # The kernel dropped the dead holder's locks; nothing runs as those uids.
    again = UidAllocator(UidRange(FIRST, 20), tmp_path)
    assert [again.allocate() for _ in range(3)] == held
    again.close()
    mine.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another uid")
def test_a_stale_uid_still_in_use_is_skipped(tmp_path: Path) -> None:
    """A holder died but its jail is still on its way out: that uid is not reused yet."""
    proc = _holder(tmp_path, 1)
    assert proc.stdout is not None
    (stale,) = (int(x) for x in proc.stdout.readline().split())
    proc.kill()
    proc.wait()
    squatter = subprocess.Popen(["sleep", "30"], user=stale, group=stale)
    try:
        deadline = time.monotonic() + 5
        while not uid_in_use(stale) and time.monotonic() < deadline:
            time.sleep(0.01)
        a = UidAllocator(UidRange(FIRST, 20), tmp_path)
        assert a.allocate() == stale + 1
        squatter.kill()
        squatter.wait()
        b = UidAllocator(UidRange(FIRST, 20), tmp_path)
        assert b.allocate() == stale
        a.close()
        b.close()
    finally:
        squatter.kill()
        squatter.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another uid")
def test_a_dead_holders_block_with_a_uid_in_use_is_skipped(tmp_path: Path) -> None:
    """A holder of a block died; its jail's uid FIRST+2 is still on its way out: no
    block containing it is handed out, the others are."""
    proc = _holder(tmp_path, 1, size=4)
    assert proc.stdout is not None
    assert int(proc.stdout.readline()) == FIRST
    proc.kill()
    proc.wait()
    squatter = subprocess.Popen(["sleep", "30"], user=FIRST + 2, group=FIRST + 2)
    try:
        deadline = time.monotonic() + 5
        while not uid_in_use(FIRST + 2) and time.monotonic() < deadline:
            time.sleep(0.01)
        a = UidAllocator(UidRange(FIRST, 20), tmp_path)
        assert a.allocate(3) == FIRST + 3  # past the uid in use
        b = UidAllocator(UidRange(FIRST, 20), tmp_path)
        assert b.allocate(2) == FIRST  # FIRST, FIRST+1: marked, but nothing runs as them
        squatter.kill()
        squatter.wait()
        assert b.allocate(1) == FIRST + 2
        a.close()
        b.close()
    finally:
        squatter.kill()
        squatter.wait()


CHURN = """
import os, sys, time
from pathlib import Path
from sandbox.spec import UidRange
from sandbox.uids import UidAllocator
locks, marks = Path(sys.argv[1]), Path(sys.argv[2])
a = UidAllocator(UidRange(int(sys.argv[3]), 10), locks)
size = int(sys.argv[4])
for _ in range(150):
    uid = a.allocate(size)
    # Holding a uid must be exclusive: its marker is created and removed only by its holder.
    for u in range(uid, uid + size):
        os.close(os.open(marks / str(u), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    time.sleep(0.0005)
    for u in range(uid, uid + size):
        os.unlink(marks / str(u))
    a.release(uid)
"""


def test_churn_across_processes_is_exclusive(tmp_path: Path) -> None:
    """Six processes allocate and release blocks of 1 to 3 of ten uids 150 times each,
    releases racing locks: no uid is ever held twice (an O_EXCL marker per held uid
    proves it)."""
    locks, marks = tmp_path / "locks", tmp_path / "marks"
    marks.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", CHURN, str(locks), str(marks), str(FIRST),
                               str(1 + i % 3)],
                              cwd=REPO, stderr=subprocess.PIPE, text=True) for i in range(6)]
    for p in procs:
        try:
            _, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
        # UidExhausted is fine (six processes, six uids); a duplicate is not.
        assert p.returncode == 0 or "UidExhausted" in err, err
        assert "FileExistsError" not in err, err
    assert os.listdir(marks) == []


def test_the_lock_directory_is_made_on_first_use(tmp_path: Path) -> None:
    """After a boot /run/sandbox/uids does not exist yet (the launcher opens the lock file
    first, without os, and makes the directory only when that fails)."""
    lock_dir = tmp_path / "run" / "sandbox" / "uids"
    a = UidAllocator(UidRange(FIRST, 4), lock_dir)
    try:
        assert a.allocate() == FIRST
        assert lock_dir.stat().st_mode & 0o777 == 0o700
        assert held_uids(lock_dir) == {FIRST}
    finally:
        a.close()
