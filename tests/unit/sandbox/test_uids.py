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
from sandbox.uids import UidAllocator, UidExhausted, uid_in_use

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
    a.close()
    b.close()
    assert os.listdir(tmp_path) == []  # released uids leave no file behind


def test_overlapping_ranges_share_the_locks(tmp_path: Path) -> None:
    a = UidAllocator(UidRange(FIRST, 4), tmp_path)
    b = UidAllocator(UidRange(FIRST + 2, 4), tmp_path)
    assert [a.allocate() for _ in range(4)] == list(range(FIRST, FIRST + 4))
    assert [b.allocate() for _ in range(2)] == [FIRST + 4, FIRST + 5]
    a.close()
    b.close()


def _holder(tmp_path: Path, count: int) -> subprocess.Popen:
    """A process that allocates `count` uids, prints them and waits for stdin to close."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from sandbox.spec import UidRange
        from sandbox.uids import UidAllocator
        a = UidAllocator(UidRange({FIRST}, 20), Path({str(tmp_path)!r}))
        print(" ".join(str(a.allocate()) for _ in range({count})), flush=True)
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
    proc.send_signal(signal.SIGKILL)  # no release: its lock files stay behind
    proc.wait()
    assert sorted(os.listdir(tmp_path)) == sorted(str(u) for u in [*held, FIRST + 3])
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


CHURN = """
import os, sys, time
from pathlib import Path
from sandbox.spec import UidRange
from sandbox.uids import UidAllocator
locks, marks = Path(sys.argv[1]), Path(sys.argv[2])
a = UidAllocator(UidRange(int(sys.argv[3]), 6), locks)
for _ in range(150):
    uid = a.allocate()
    # Holding a uid must be exclusive: the marker is created and removed only by its holder.
    fd = os.open(marks / str(uid), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.close(fd)
    time.sleep(0.0005)
    os.unlink(marks / str(uid))
    a.release(uid)
"""


def test_churn_across_processes_is_exclusive(tmp_path: Path) -> None:
    """Six processes allocate and release six uids 150 times each, releases racing
    opens: no uid is ever held twice (an O_EXCL marker per held uid proves it)."""
    locks, marks = tmp_path / "locks", tmp_path / "marks"
    marks.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", CHURN, str(locks), str(marks), str(FIRST)],
                              cwd=REPO, stderr=subprocess.PIPE, text=True) for _ in range(6)]
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
