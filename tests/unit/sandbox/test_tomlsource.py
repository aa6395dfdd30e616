"""sandbox/tomlsource.py: the one scan that finds TOML line numbers, for sandbox's policy and
profile errors (SourceFile) and titus's titus.toml errors (KeyLines)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from sandbox.tomlsource import KeyLines, SourceFile, TomlText, syntax_error_line

TEXT = '''\
description = """
allow = ["in a string"]
"""
# allow = ["in a comment"]
note = "a # is text here" # """ in a comment opens nothing
allow = ["getpid"]
[seccomp]
default = "kill-process"
'''


def test_both_views_skip_strings_and_comments(tmp_path: Path) -> None:
    assert TomlText(TEXT).code[1:4] == ["", "", ""]
    src = SourceFile(tmp_path / "p.toml", TEXT, tomllib.loads(TEXT))
    assert src.key_line("allow") == 6
    assert src.quoted_line("in a string") is None
    assert src.quoted_line("getpid") == 6
    assert src.key_line("default", src.best(src.table_line("seccomp"))) == 8
    lines = KeyLines(TEXT)
    assert (lines.line((), "allow"), lines.line((), "note")) == (6, 5)
    assert lines.line(("seccomp",), "default") == 8


@pytest.mark.parametrize(("text", "line"), [
    ("a = 1\nb = = 2\n", 2),
    ('a = 1\nb = "unterminated', 2),
    ("a = 1\nb = [\n", 3),  # at end of document: the last line
])
def test_a_syntax_error_names_its_line(text: str, line: int) -> None:
    with pytest.raises(tomllib.TOMLDecodeError) as error:
        tomllib.loads(text)
    assert syntax_error_line(str(error.value), text) == line
