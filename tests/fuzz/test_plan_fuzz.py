"""The executor's plan decoder (sandbox/_jail/plan.c) against mutated plans: it refuses
(ValueError) or accepts, never crashes, and what it accepts re-encodes the same way.

The decoder runs in the parent, on plans Python compiled; a plan read back from the
`sandbox run` cache or, one day, sent to a fork server is the reason it is fuzzed.
`make test-asan` runs this against the ASan+UBSan build.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from sandbox import _jail
from sandbox.layers import compile_plan
from sandbox.plan import MODE_CALL, MODE_EXEC
from sandbox.profile import load_profile
from tests.fuzz.budget import fuzz_settings

SEEDS = [
    compile_plan(load_profile("titus-worker").spec, MODE_CALL).encode(),
    compile_plan(load_profile("examples/http-static").spec, MODE_EXEC, shared=False).encode(),
]


def decode(wire: bytes) -> None:
    try:
        plan = _jail.Plan(wire)
    except ValueError as exc:
        assert str(exc).startswith("bad jail plan: ")
        return
    assert plan.nsteps == struct.unpack_from("=H", wire, 6)[0]


@fuzz_settings(3000)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)),
                                        max_size=8), st.integers(0, 1 << 16))
def test_mutated_plans(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    wire = bytearray(seed)
    for offset, value in flips:
        wire[offset % len(wire)] = value
    decode(bytes(wire))
    decode(bytes(wire[: cut % (len(wire) + 1)]))


@fuzz_settings(1000)
@given(st.binary(max_size=512))
def test_random_bytes_after_a_valid_header(tail: bytes) -> None:
    steps = len(tail) // 40
    decode(struct.pack("=IHHQ", _jail.MAGIC, _jail.VERSION, steps, 0) + tail)
