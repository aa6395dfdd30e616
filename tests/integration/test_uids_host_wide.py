"""Host uids are unique across every process that starts jails on the host.

Many `sandbox run` processes and two titus instances draw from ONE small uid
range at the same time; every live jail (titus workers, key holders and the
`sandbox run` jails) must have a host uid of its own.  With an allocator
that is unique only within one process, every `sandbox run` takes the range's
first uid and this fails at once.
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

from sandbox.uids import LOCK_DIR, process_uid
from tests.pki import CA
from tests.titus_harness import ROOT, EchoBackend, Titus, jailed_children

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")

RUNS = 12  # concurrent `sandbox run` processes
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
        [sys.executable, "-m", "sandbox", "run", "--profile", str(profile), "--", "sleep", "60"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=env, cwd=ROOT) for _ in range(RUNS)]  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT
        jails: dict[int, int] = {}  # jail pid -> host uid
        while time.monotonic() < deadline:
            jails = {}
            for run in runs:
                assert run.poll() is None, run.communicate()[1]
                for pid in children(run.pid):
                    uid = process_uid(pid)
                    if uid not in (None, 0):
                        jails[pid] = uid
            titus_jails = [p for t in two_titus for p in jailed_children(t)]
            if len(jails) == RUNS and len(titus_jails) >= 2 * (SPARE + 1):
                break
            time.sleep(0.05)
        assert len(jails) == RUNS, f"{len(jails)} of {RUNS} sandbox jails started"
        for pid in titus_jails:
            uid = process_uid(pid)
            if uid is not None:
                jails[pid] = uid
        uids = list(jails.values())
        assert len(jails) >= RUNS + 2 * (SPARE + 1)
        assert all(UID_FIRST <= u < UID_FIRST + UID_COUNT for u in uids), uids
        assert len(set(uids)) == len(uids), sorted(uids)
        # Each live uid is held host-wide as a locked file under /run.
        assert {int(n) for n in os.listdir(LOCK_DIR) if n.isdigit()} >= set(uids)
    finally:
        for run in runs:
            run.send_signal(signal.SIGTERM)
        for run in runs:
            assert run.wait(WAIT) == 128 + signal.SIGTERM, run.communicate()[1]
    # The runs released theirs: only the titus jails' uids remain held.
    titus_uids = {process_uid(p) for t in two_titus for p in jailed_children(t)}
    held = {int(n) for n in os.listdir(LOCK_DIR) if n.isdigit()}
    ours = {u for u in held if UID_FIRST <= u < UID_FIRST + UID_COUNT}
    assert ours <= titus_uids, (ours, titus_uids)
