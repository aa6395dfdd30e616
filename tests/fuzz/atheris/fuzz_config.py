"""Coverage-guided fuzzing of the configuration loader (titus.config.load.load_config).

The first byte picks the format (titus.conf or TOML), the rest is the file.
Files it may name exist: certificates and keys, an include, a FIFO.  Only
ConfigError may come out, its text one `FILE:LINE: message` line (`FILE: message`
for a setting missing from the whole file).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import atheris
import runner

with atheris.instrument_imports(include=["titus", "tomllib"]):  # before anything imports them
    from tests.fuzz.test_config_fuzz import ERROR_FORMAT, conf_seed, toml_seed
    from tests.unit.titus.test_config_support import make_cert, write
    from titus.config.load import ConfigError, load_config

WORKDIR = Path(tempfile.mkdtemp(prefix="titus-atheris-config-"))


def _prepare() -> None:
    make_cert(WORKDIR / "certs", "a", kind="ec")
    make_cert(WORKDIR / "certs", "b")
    write(WORKDIR / "inc.conf", "dns-timeout 2\n")
    os.mkfifo(WORKDIR / "fifo")


def one_input(data: bytes) -> None:
    if not data:
        return
    path = WORKDIR / ("fuzz.toml" if data[0] & 1 else "fuzz.conf")
    path.write_bytes(data[1:])
    try:
        load_config(path)
    except ConfigError as e:
        assert ERROR_FORMAT.match(str(e)), repr(str(e))


def seeds() -> list[bytes]:
    return [b"\x00" + conf_seed(WORKDIR).encode(), b"\x01" + toml_seed(WORKDIR).encode(),
            b"\x00port 443\ncert certs/a.crt\nkey certs/a.key\nbackend-port 1\n"]


if __name__ == "__main__":
    _prepare()  # libFuzzer ends the process with exit(): WORKDIR stays, under $TMPDIR
    runner.fuzz(one_input, seeds)
