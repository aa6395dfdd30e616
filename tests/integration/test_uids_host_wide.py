"""Host uids are unique across every process that starts jails on the host.

Many `sandbox run` processes and two titus instances draw from ONE small uid
range at the same time; every live jail (titus workers, key holders and the
`sandbox run` jails) must have a host uid of its own.  With an allocator
that is unique only within one process, every `sandbox run` takes the range's
first uid and this fails at once.  Some of the runs map a block of BLOCK ids
(`--ids`): no block may overlap another jail's uid or block.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.uids import held_uids, process_uid
from tests.pki import CA
from tests.titus_harness import ROOT, EchoBackend, Titus, jailed_children

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")

RUNS = 12  # concurrent `sandbox run` processes
BLOCKS = 4  # of them with --ids BLOCK
BLOCK = 5
SPARE = 3  # idle workers per titus
UID_COUNT = 64
UID_FIRST = 4_000_000 + (os.getpid() % 1000) * UID_COUNT  # nobody else's range
WAIT = 20.0
SNI = "uids.test"


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    """A jail with the host's programs read-only, drawing from our small range."""
    path = tmp_path / "uids.toml"
    path.write_text(f"""[jail]
binds = ["/usr", "/lib", "/lib64", "/bin"]
uid_first = {UID_FIRST}
uid_count = {UID_COUNT}
""")
    return path


def titus_config(ca: CA, backend_port: int) -> str:
    return f"""min-spare-children = {SPARE}
max-children = 8

[[listen]]
address = "127.0.0.1"
port = 0

[[vhost]]
name = "uids"
sni-name = "{SNI}"
key = "{ca.dir / "leaf.key"}"
cert = "{ca.dir / "leaf.crt"}"
backend = "127.0.0.1"
backend-port = {backend_port}

[jail]
uid-first = {UID_FIRST}
uid-count = {UID_COUNT}
"""


@pytest.fixture
def two_titus(tmp_path: Path) -> Iterator[list[Titus]]:
    ca = CA(tmp_path / "pki")
    ca.issue(SNI, "p256", filename="leaf")
    with EchoBackend() as backend:
        instances = []
        try:
            for name in ("a", "b"):
                d = tmp_path / name
                d.mkdir()
                instances.append(Titus(d, titus_config(ca, backend.port), suffix=".toml").start())
            yield instances
        finally:
            for t in instances:
                t.stop()


def test_concurrent_jails_of_many_processes_have_distinct_uids(
        profile: Path, two_titus: list[Titus]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen(
        [sys.executable, "-m", "sandbox", "run", "--profile", str(profile),
         *(["--ids", str(BLOCK)] if i < BLOCKS else []), "--", "sleep", "60"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=env, cwd=ROOT) for i in range(RUNS)]  # fmt: skip
    blocks = {run.pid for run in runs[:BLOCKS]}
    try:
        deadline = time.monotonic() + WAIT
        jails: dict[int, int] = {}  # jail pid -> host uid
        sizes: dict[int, int] = {}  # jail pid -> how many uids it holds
        while time.monotonic() < deadline:
            jails = {}
            for run in runs:
                assert run.poll() is None, run.communicate()[1]
                for pid in children(run.pid):
                    uid = process_uid(pid)
                    if uid not in (None, 0):
                        jails[pid] = uid
                        sizes[pid] = BLOCK if run.pid in blocks else 1
            titus_jails = [p for t in two_titus for p in jailed_children(t)]
            if len(jails) == RUNS and len(titus_jails) >= 2 * (SPARE + 1):
                break
            time.sleep(0.05)
        assert len(jails) == RUNS, f"{len(jails)} of {RUNS} sandbox jails started"
        for pid in titus_jails:
            uid = process_uid(pid)
            if uid is not None:
                jails[pid] = uid
        # Every uid of every jail's block: each held by one jail only.
        uids = [u for pid, first in jails.items() for u in range(first, first + sizes.get(pid, 1))]
        assert len(jails) >= RUNS + 2 * (SPARE + 1)
        assert sum(size == BLOCK for size in sizes.values()) == BLOCKS
        assert all(UID_FIRST <= u < UID_FIRST + UID_COUNT for u in uids), uids
        assert len(set(uids)) == len(uids), sorted(uids)
        # Each live uid is held host-wide, locked in the file under /run.
        assert held_uids() >= set(uids)
    finally:
        for run in runs:
            run.send_signal(signal.SIGTERM)
        for run in runs:
            assert run.wait(WAIT) == 128 + signal.SIGTERM, run.communicate()[1]
    # The runs released theirs: only the titus jails' uids remain held.
    titus_uids = {process_uid(p) for t in two_titus for p in jailed_children(t)}
    ours = {u for u in held_uids() if UID_FIRST <= u < UID_FIRST + UID_COUNT}
    assert ours <= titus_uids, (ours, titus_uids)
