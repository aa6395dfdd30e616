"""Shared start-up of the atheris harnesses: the repository on sys.path, a seed corpus.

Run a harness as a script, libFuzzer style:

    .venv/bin/python tests/fuzz/atheris/fuzz_keyproto.py -max_total_time=60 build/fuzz/keyproto

The first corpus directory, if empty, is filled with the harness's seeds
(real, valid inputs), so coverage starts deep rather than at "not a frame".
A harness fails (exit code != 0, a crash-* file under -artifact_prefix) on
any exception its target must not raise; -timeout=N catches hangs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def fuzz(one_input: Callable[[bytes], None], seeds: Callable[[], Iterable[bytes]]) -> None:
    import atheris

    corpus = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    if corpus:
        first = Path(corpus[0])
        first.mkdir(parents=True, exist_ok=True)
        if not any(first.iterdir()):
            for i, seed in enumerate(seeds()):
                (first / f"seed-{i:03d}").write_bytes(seed)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
