"""A CI-sized run of each coverage-guided harness in tests/fuzz/atheris/.

`make fuzz` runs them for minutes; here each does a few thousand inputs from
its seed corpus, so a harness that no longer starts, or an easy crash, shows
up in the ordinary test run.  A crash leaves its input under tmp_path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.budget import examples

pytest.importorskip("atheris")

HARNESSES = Path(__file__).resolve().parent / "atheris"
RUNS = {"config": 400, "keyproto": 3000, "control": 3000, "proxyproto": 2000}


def test_every_harness_is_listed() -> None:
    found = {p.stem.removeprefix("fuzz_") for p in HARNESSES.glob("fuzz_*.py")}
    assert found == set(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
@pytest.mark.timeout(300)
def test_harness_smoke(name: str, tmp_path: Path) -> None:
    runs = examples(RUNS[name])
    proc = subprocess.run(
        [sys.executable, str(HARNESSES / f"fuzz_{name}.py"), f"-runs={runs}", "-seed=1",
         "-timeout=20", "-rss_limit_mb=1024", f"-artifact_prefix={tmp_path}/",
         str(tmp_path / "corpus")],
        capture_output=True, text=True, timeout=280,
        env={**os.environ, "TMPDIR": str(tmp_path)})  # libFuzzer exits without cleanup
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert f"Done {runs} runs" in proc.stderr, tail
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*")), tail
