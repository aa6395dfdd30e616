"""`sandbox learn`'s advice when its last round may have missed something."""

from __future__ import annotations

from sandbox.learn import incomplete_note as _incomplete_note


def test_complete_last_round_says_nothing() -> None:
    assert _incomplete_note(3, 0, 0) is None


def test_advice_names_more_rounds_than_were_run() -> None:
    note = _incomplete_note(3, 0, 7)
    assert note is not None
    assert "dropped 7 log records in the last run" in note
    assert note.endswith("run again with --rounds 4 or more")
    assert _incomplete_note(1, 2, 0) == (
        "learn: the last run still found 2 new syscalls: the list may be incomplete; "
        "run again with --rounds 2 or more")
