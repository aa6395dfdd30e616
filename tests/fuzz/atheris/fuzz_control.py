"""Coverage-guided fuzzing of the supervisor's parser for worker messages (titus.wire.control).

A compromised worker controls every byte: decode_from_worker must raise
ControlError or return a message the supervisor can safely use (see
tests/fuzz/test_control_fuzz.py's assert_usable: valid Unicode, bounded
integers, a PROXY v2 header that can be written).
"""

from __future__ import annotations

import atheris
import runner

with atheris.instrument_imports(include=["titus"]):  # before anything imports them
    from tests.fuzz.test_control_fuzz import VALID, assert_usable
    from titus.wire.control import ControlError, decode_from_worker


def one_input(data: bytes) -> None:
    try:
        msg = decode_from_worker(data)
    except ControlError as e:
        assert "\n" not in str(e)
        return
    assert_usable(msg)


def seeds() -> list[bytes]:
    return [*VALID, VALID[0].replace(b"alice", b"\xc3\xa9lic")]


if __name__ == "__main__":
    runner.fuzz(one_input, seeds)
