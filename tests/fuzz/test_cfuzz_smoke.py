"""A CI-sized run of each libFuzzer harness of the C worker's decoders (tests/fuzz/c/).

Built with clang, ASan and UBSan; `make fuzz` runs them for minutes.  Here each
does a few thousand inputs from its seeds, so a harness that no longer builds,
or an easy crash, shows up in the ordinary test run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz import cfuzz
from tests.fuzz.budget import examples

pytestmark = pytest.mark.skipif(cfuzz.clang() is None,
                                reason="clang is not installed (make deps installs it)")


@pytest.mark.parametrize("name", sorted(cfuzz.HARNESSES))
@pytest.mark.timeout(300)
def test_harness_smoke(name: str, tmp_path: Path) -> None:
    runs = examples(20000)
    proc = cfuzz.run(name, tmp_path, runs=runs)
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert f"Done {runs} runs" in proc.stderr, tail
    assert not list((tmp_path / name).glob("crash-*")), tail
