"""Reader for titus 0.4's ``titus.conf`` format and its ``--option value`` command line.

The syntax is titus 0.4's, with its quirks decided explicitly:

* One ``option value`` per line; the value is the rest of the line, trailing
  spaces, tabs and CR removed.  There are no inline comments ("port 443 # x"
  is an error here; titus's atoi quietly read 443).
* Blank lines and lines whose first non-blank character is ``#`` are skipped
  and do not end a vhost block.
* ``vhost`` at the start of a line opens a block; the block's options are the
  following lines that start with a space or tab, and it ends at the first
  option line that does not.  Indented lines outside a block are ordinary
  global lines.  ``vhost NAME`` names the block (an extension; titus 0.4
  took NAME as an option and failed).
* Global lines may come before or after vhost blocks: vhosts inherit the
  global value wherever it stands.
* ``config FILE`` and ``config-directory DIR`` are read where they stand;
  relative paths (these and every other path) are relative to the directory of
  the file they are written in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from titus.config.draft import Draft, VHostDraft, shown
from titus.config.model import ConfigError, Source
from titus.config.options import IncludeFn, apply_option

COMMAND_LINE = "<command line>"
_LINE = re.compile(r"([^ \t]+)(?:[ \t]+(.*))?", re.DOTALL)


def read_conf(draft: Draft, path: Path, text: str, include: IncludeFn) -> None:
    base = path.parent
    vhost: VHostDraft | None = None
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip(" \t\r")
        stripped = line.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        src = Source(str(path), number)
        indented = len(stripped) != len(line)
        match = _LINE.fullmatch(stripped)
        assert match is not None  # stripped is non-empty and starts with a non-blank
        name, value = match.group(1), match.group(2) or ""
        if not indented:
            vhost = None
        if name == "vhost":
            if vhost is not None:
                raise ConfigError(
                    src, "vhost blocks cannot be nested; start the next vhost at the beginning "
                    "of a line"
                )
            vhost = VHostDraft(source=src)
            draft.vhosts.append(vhost)
            if value:
                apply_option(draft, "name", value, src, base, vhost=vhost, include=None)
            continue
        apply_option(draft, name, value, src, base, vhost=vhost, include=include)


def parse_command_line(args: Sequence[str]) -> list[tuple[str, str]]:
    """titus 0.4's command line: ``--name value`` pairs (``--name=value`` also works).

    Errors name ``<command line>:N``, N counting options (not words) from 1.
    """
    pairs: list[tuple[str, str]] = []
    index = 0
    while index < len(args):
        arg = args[index]
        src = Source(COMMAND_LINE, len(pairs) + 1)
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(src, f"expected --option value, got '{shown(arg)}'")
        if "=" in arg:
            name, _, value = arg[2:].partition("=")
            pairs.append((name, value))
            index += 1
            continue
        if index + 1 >= len(args):
            raise ConfigError(src, f"{shown(arg)}: missing value")
        pairs.append((arg[2:], args[index + 1]))
        index += 2
    return pairs
