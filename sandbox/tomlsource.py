"""Reading TOML with approximate line numbers, for FILE:LINE errors.

tomllib reports no line for a key or a value, so a small scan of the text
finds where a key, a table header or a quoted word is written.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sandbox.errors import PolicyError, suggest


class SourceFile:
    """A TOML file's text and data; finds lines because tomllib gives none."""

    def __init__(self, path: Path, text: str, data: dict[str, Any]) -> None:
        self.path = path
        self.text = text
        self.lines = text.splitlines()
        self.data = data

    @classmethod
    def read(cls, path: Path | str) -> SourceFile:
        """Read and parse `path`; syntax errors become PolicyError with the line."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(path, 1, f"cannot read: {exc.strerror or exc}") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"\(at line (\d+)", str(exc))
            line = int(m.group(1)) if m else 1
            raise PolicyError(path, line, f"TOML syntax error: {exc}") from exc
        return cls(path, text, data)

    def error(self, line: int, message: str) -> PolicyError:
        """A PolicyError for this file."""
        return PolicyError(self.path, line, message)

    def find(self, pattern: str, start: int = 1, nth: int = 0) -> int | None:
        """Line (1-based) of the `nth` match of regex `pattern` at or after `start`."""
        rx = re.compile(pattern)
        for i in range(max(start, 1) - 1, len(self.lines)):
            if rx.search(self._code(self.lines[i])):
                if nth == 0:
                    return i + 1
                nth -= 1
        return None

    @staticmethod
    def _code(line: str) -> str:
        """The line without a trailing comment (a '#' outside quotes)."""
        quote = ""
        for i, ch in enumerate(line):
            if quote:
                if ch == quote:
                    quote = ""
            elif ch in "\"'":
                quote = ch
            elif ch == "#":
                return line[:i]
        return line

    def table_line(self, dotted: str, nth: int = 0) -> int | None:
        """Line of the ``[a.b]`` (or nth ``[[a.b]]``) header."""
        parts = r"\s*\.\s*".join(re.escape(p) for p in dotted.split("."))
        return self.find(rf"^\s*\[\[?\s*{parts}\s*\]\]?", nth=nth)

    def key_line(self, key: str, start: int = 1) -> int | None:
        """Line of ``key =`` at or after `start`."""
        return self.find(rf"(^|[{{,\s]){re.escape(key)}\s*=", start)

    def quoted_line(self, word: str, start: int = 1) -> int | None:
        """Line of ``"word"`` (or 'word') at or after `start`, else anywhere."""
        pattern = rf"[\"']{re.escape(word)}[\"']"
        return self.find(pattern, start) or self.find(pattern)

    def best(self, *candidates: int | None) -> int:
        """The first line found, else 1."""
        for c in candidates:
            if c:
                return c
        return 1


def check_keys(
    src: SourceFile, table: dict[str, Any], allowed: Iterable[str], where: str, start: int = 1
) -> None:
    """Unknown keys are errors: a misspelt option must not be silently ignored."""
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            table_name = f"{where}.{key}" if where else key
            line = src.best(src.key_line(key, start), src.table_line(table_name))
            place = f"in [{where}]" if where else "at top level"
            raise src.error(line, f"unknown key {key!r} {place}{suggest(key, allowed)}")

