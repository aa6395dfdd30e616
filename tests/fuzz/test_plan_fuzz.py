"""The executor's plan decoder (sandbox/_jail/plan.c) against mutated plans: it refuses
(ValueError) or accepts, never crashes, and what it accepts re-encodes the same way.

The decoder runs in the parent, on plans Python compiled; a plan read back from the
`sandbox run` cache or, one day, sent to a fork server is the reason it is fuzzed.
`make test-asan` runs this against the ASan+UBSan build.
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from sandbox import _jail, bpf
from sandbox.layers import compile_plan
from sandbox.plan import MODE_CALL, MODE_EXEC, Plan, Step
from sandbox.profile import load_profile
from tests.fuzz.budget import fuzz_settings

# The daily flags' steps too: /dev (binds of devices, symlinks, a read-only remount),
# more tmpfs, other ids inside, "unlimited" rlimits, a filter that hands over a listener.
_DAILY = compile_plan(dataclasses.replace(
    load_profile("examples/shell").spec, dev=True, dev_tty=True,
    tmpfs=((Path("/run"), 1 << 20), (Path("/cache"), 1 << 24)), uid=33, gid=34,
    mount_proc=True, rlimits=(("nofile", 256), ("nproc", -1), ("core", 0)),
    seccomp_listener=True), MODE_EXEC, shared=False)
assert _DAILY.notifies and any(s.op == _jail.OP_SYMLINK for s in _DAILY.steps)

SEEDS = [
    compile_plan(load_profile("titus-worker").spec, MODE_CALL).encode(),
    compile_plan(load_profile("examples/http-static").spec, MODE_EXEC, shared=False).encode(),
    _DAILY.encode(),
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


@fuzz_settings(1000)
@given(st.lists(st.binary(max_size=12), max_size=4), st.binary(max_size=16))
def test_symlink_steps(strings: list[bytes], raw: bytes) -> None:
    """Exactly two NUL-terminated strings, neither empty; anything else is refused."""
    clean = [s.replace(b"\0", b"") for s in strings]
    for data in (b"".join(s + b"\0" for s in clean), raw):
        wire = Plan([Step(_jail.OP_SYMLINK, "rootfs", "x", data=data)]).encode()
        well_formed = data.count(b"\0") == 2 and data.endswith(b"\0") and all(
            data.split(b"\0")[:2])
        try:
            _jail.Plan(wire)
        except ValueError:
            assert not well_formed, data
        else:
            assert well_formed, data


@fuzz_settings(1000)
@given(st.integers(-1, 20), st.integers(-(1 << 63), (1 << 63) - 1), st.integers(0, 7))
def test_rlimit_steps(resource: int, value: int, flags: int) -> None:
    """A known resource and at most one of the flags (kept fds, the hard limit)."""
    wire = Plan([Step(_jail.OP_RLIMIT, "rlimits", "x", args=(resource, value),
                      flags=flags)]).encode()
    # RLIM_NLIMITS is 16 on Linux.
    ok = 0 <= resource < 16 and flags in (0, _jail.RLIMIT_KEPT, _jail.RLIMIT_HARD)
    try:
        _jail.Plan(wire)
    except ValueError:
        assert not ok
    else:
        assert ok


def test_a_notifying_plan_keeps_its_listener_flag() -> None:
    step = next(s for s in _DAILY.steps if s.op == _jail.OP_SECCOMP)
    assert step.args[0] == bpf.FILTER_FLAG_NEW_LISTENER
