"""Reading TOML with line numbers, for FILE:LINE errors: the one place that finds them.

tomllib reports no line for a key, a table or a value, so a forgiving scan of
the text finds them; it is only ever used for messages.  `TomlText` is that
scan (each line without its comment, blank inside a multi-line string), and two
views share it: `SourceFile` finds a key, a table header or a quoted word at or
after a line (sandbox's policies and profiles); `KeyLines` names keys by the
table a reader walks (titus's titus.toml).  `syntax_error_line` is the line of
a tomllib error.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sandbox.errors import PolicyError, suggest

_LINE_NUMBER = re.compile(r"at line (\d+)")
_ARRAY_HEADER = re.compile(r"\[\[\s*([^\]]*?)\s*\]\]")
_TABLE_HEADER = re.compile(r"\[\s*([^\]]*?)\s*\]")
_KEY_PART = r"""(?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+)"""
_KEY = re.compile(rf"({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")
_DOTTED_PART = re.compile(rf"\s*({_KEY_PART})\s*(?:\.|$)")


def syntax_error_line(message: str, text: str) -> int:
    """The line a tomllib error names; "at end of document" is the last line."""
    match = _LINE_NUMBER.search(message)
    if match:
        return int(match.group(1))
    return text.count("\n") + 1


def without_comment(line: str) -> str:
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


class TomlText:
    """A TOML text line by line, as tomllib counts lines (only \\n ends one): `code` holds
    each line without its comment, and an empty string for the lines inside a
    multi-line string, so that no search finds a key or a word in a string's text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.split("\n")
        self.code: list[str] = []
        multiline: str | None = None
        for line in self.lines:
            if multiline is not None:
                self.code.append("")
                if line.count(multiline) % 2 == 1:
                    multiline = None
                continue
            code = without_comment(line).rstrip("\r")
            self.code.append(code)
            for quote in ('"""', "'''"):
                if code.count(quote) % 2 == 1:
                    multiline = quote
                    break


# ---------------------------------------------------------------------------
# Policies and profiles: search forward from a line


class SourceFile(TomlText):
    """A TOML file's text and data; finds lines because tomllib gives none."""

    def __init__(self, path: Path, text: str, data: dict[str, Any]) -> None:
        super().__init__(text)
        self.path = path
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
            line = syntax_error_line(str(exc), text)
            raise PolicyError(path, line, f"TOML syntax error: {exc}") from exc
        return cls(path, text, data)

    def error(self, line: int, message: str) -> PolicyError:
        """A PolicyError for this file."""
        return PolicyError(self.path, line, message)

    def find(self, pattern: str, start: int = 1, nth: int = 0) -> int | None:
        """Line (1-based) of the `nth` match of regex `pattern` at or after `start`."""
        rx = re.compile(pattern)
        for i in range(max(start, 1) - 1, len(self.code)):
            if rx.search(self.code[i]):
                if nth == 0:
                    return i + 1
                nth -= 1
        return None

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


# ---------------------------------------------------------------------------
# titus.toml: keys by the table a reader walks

Table = tuple[Any, ...]


def _dotted(text: str) -> tuple[str, ...]:
    return tuple(part.strip("\"'") for part in _DOTTED_PART.findall(text))


class KeyLines(TomlText):
    """Line numbers of keys and table headers, by table.

    Tables are named as the reader walks them: () for the top level, ("tls",),
    ("vhost", 0), ("vhost", 0, "tls"), ("listen", 2) ...  Only used for
    messages: an unusual layout falls back to the enclosing table's line.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.keys: dict[tuple[Table, str], int] = {}
        self.tables: dict[Table, int] = {(): 1}
        counts: dict[str, int] = {}
        current: Table = ()
        for number, code in enumerate(self.code, 1):
            stripped = code.strip()
            if not stripped:
                continue
            match = _ARRAY_HEADER.match(stripped)
            if match:
                path = _dotted(match.group(1))
                if path:
                    counts[path[0]] = index = counts.get(path[0], -1) + 1
                    current = (path[0], index, *path[1:])
                    self.tables.setdefault(current, number)
                continue
            match = _TABLE_HEADER.match(stripped)
            if match:
                path = _dotted(match.group(1))
                if path and path[0] in counts and len(path) > 1:
                    current = (path[0], counts[path[0]], *path[1:])
                else:
                    current = path
                self.tables.setdefault(current, number)
                continue
            match = _KEY.match(stripped)
            if match:
                parts = _dotted(match.group(1))
                if parts:
                    table = current + parts[:-1]
                    self.keys.setdefault((table, parts[-1]), number)
                    for depth in range(len(parts) - 1):  # dotted keys open implicit tables
                        self.tables.setdefault(current + parts[: depth + 1], number)

    def line(self, table: Table, key: str | None = None) -> int:
        while True:
            if key is not None and (table, key) in self.keys:
                return self.keys[(table, key)]
            if key is not None and (*table, key) in self.tables:  # a key that is a [table]
                return self.tables[(*table, key)]
            if table in self.tables:
                return self.tables[table]
            if not table:
                return 1
            # an inline table: its key in the parent table
            key = table[-1] if isinstance(table[-1], str) else None
            table = table[:-1]
