"""docs/sandbox.md says what the code does: its CLI reference is what argparse prints
(regenerate with `python -m sandbox.clidoc`), and its Python example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import clidoc

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "sandbox.md"


def test_cli_reference_is_current() -> None:
    text = DOC.read_text()
    assert clidoc.render(text) == text, "docs/sandbox.md is stale: python -m sandbox.clidoc"


def test_cli_reference_names_every_option() -> None:
    """Not a tautology: each documented command lists the options the parser has."""
    from sandbox.cli import build_parser

    text = DOC.read_text()
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():  # type: ignore
        section = text.split(f"### `sandbox {name}`", 1)[1].split("###", 1)[0]
        for action in sub._actions:
            for option in action.option_strings:
                assert option in section, f"sandbox {name}: {option} is not documented"


def test_the_format_lives_in_the_docs_not_in_the_worker_profile() -> None:
    assert "PROFILE FORMAT" not in (REPO / "policies" / "titus-worker.toml").read_text()
    for key in ("pids_limit", "memory", "cpus", "timeout", "landlock", "writable_tmpfs"):
        assert re.search(rf"^{key} = ", DOC.read_text(), re.MULTILINE), key


@pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")
def test_the_python_example_runs_as_written(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) == 1
    script = tmp_path / "example.py"
    script.write_text(blocks[0] + "print('example ok')\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (out.returncode, out.stdout) == (0, "example ok\n"), out.stderr
