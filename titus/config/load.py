"""Load titus's configuration: ``titus.toml`` (native) or titus 0.4's ``titus.conf``.

    config = load_config("/etc/titus/titus.conf", [("port", "8443")])

The format is chosen by extension: ``.toml`` is TOML, anything else is
titus.conf.  ``overrides`` are titus.conf options as given on the command
line (``--port 8443`` is ``("port", "8443")``).  titus 0.4 applied command-line
options in order, with ``--config FILE`` read where it stood; ``load_config``
is that with ``--config path`` first, so overrides win over the file.  For
the full titus 0.4 command line (options before ``--config`` lose to the
file, ``--config`` repeated or absent), use ``load_options``.

Every problem raises ConfigError, one line naming the file and line.  The
model is in config_model; the option table in config_options.  This module
never reads a private key: key files are only stat()ed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from titus.config.build import build_config
from titus.config.conf import COMMAND_LINE, parse_command_line, read_conf
from titus.config.draft import Draft, resolve_path, shown
from titus.config.model import (
    Config,
    ConfigError,
    DHGroup,
    Listener,
    Notice,
    Source,
    TLSSettings,
    VHost,
)
from titus.config.options import apply_option, cwd
from titus.config.toml import read_toml

__all__ = [
    "Config",
    "ConfigError",
    "DHGroup",
    "Listener",
    "Notice",
    "Source",
    "TLSSettings",
    "VHost",
    "load_config",
    "load_options",
    "parse_command_line",
]

MAX_INCLUDE_DEPTH = 16
MAX_CONFIG_FILE = 16 * 1024 * 1024


def _strerror(error: OSError | ValueError) -> str:
    return getattr(error, "strerror", None) or str(error)


def read_config_text(path: Path, origin: Source, what: str) -> str:
    """A config file's text; errors point at the line that named the file."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block, a directory cannot be read
            raise IsADirectoryError(0, "not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_FILE + 1)
    except (OSError, ValueError) as e:
        message = f"{what} {shown(str(path))}: cannot read: {_strerror(e)}"
        raise ConfigError(origin, message) from None
    if len(data) > MAX_CONFIG_FILE:
        raise ConfigError(origin, f"{what} {shown(str(path))}: larger than 16 MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(Source(str(path), line), "not valid UTF-8") from None


class _Loader:
    """Reads files into one Draft, following includes, refusing include cycles."""

    def __init__(self, draft: Draft) -> None:
        self.draft = draft
        self.stack: list[str] = []

    def load_file(self, path: Path, origin: Source) -> None:
        real = os.path.realpath(path)
        if real in self.stack:
            cycle = " -> ".join([*self.stack[self.stack.index(real) :], real])
            raise ConfigError(origin, f"config {shown(str(path))}: include cycle: {cycle}")
        if len(self.stack) >= MAX_INCLUDE_DEPTH:
            raise ConfigError(origin, f"config {shown(str(path))}: includes nested too deeply")
        text = read_config_text(path, origin, "config")
        self.draft.sources.append(path)
        self.stack.append(real)
        try:
            if path.suffix == ".toml":
                read_toml(self.draft, path, text, self.include)
            else:
                read_conf(self.draft, path, text, self.include)
        finally:
            self.stack.pop()

    def load_directory(self, path: Path, origin: Source) -> None:
        """Every non-hidden regular file, in byte order of names (titus: alphasort)."""
        try:
            with os.scandir(path) as entries:
                names = sorted(
                    (entry.name, entry.is_file())
                    for entry in entries
                    if not entry.name.startswith(".")
                )
        except (OSError, ValueError) as e:
            raise ConfigError(
                origin, f"config-directory {shown(str(path))}: cannot read: {_strerror(e)}"
            ) from None
        for name, is_file in names:
            if is_file:  # subdirectories, sockets and FIFOs are skipped
                self.load_file(path / name, origin)

    def include(self, kind: str, text: str, src: Source, base: Path) -> None:
        path = resolve_path(text, base)
        if kind == "config":
            self.load_file(path, src)
        else:
            self.load_directory(path, src)


def load_options(options: Iterable[tuple[str, str]]) -> Config:
    """titus 0.4's command line semantics: options applied in order, ``config`` read in place.

    Errors in an option name ``<command line>:N`` (N = its position, from 1).
    Options valid only in a vhost block cannot be given here, as in titus 0.4.
    """
    options = list(options)
    first_file = next((value for name, value in options if name == "config"), None)
    main = Source(first_file if first_file is not None else COMMAND_LINE, 0)
    draft = Draft.new(main)
    loader = _Loader(draft)
    base = cwd()
    for position, (name, value) in enumerate(options, 1):
        src = Source(COMMAND_LINE, position)
        apply_option(draft, name, value, src, base, vhost=None, include=loader.include)
    return build_config(draft)


def load_config(path: str | os.PathLike[str], overrides: Iterable[tuple[str, str]] = ()) -> Config:
    """Load ``path`` (TOML if it ends in .toml), then apply command-line ``overrides``."""
    return load_options([("config", os.fspath(path)), *overrides])
