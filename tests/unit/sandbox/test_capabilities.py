"""capabilities.held reads the effective set from a status file."""

from __future__ import annotations

from sandbox import capabilities


def test_a_capability_is_held_only_when_its_bit_is_set(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000800000\n")
    assert capabilities.held(capabilities.CAP_SYS_NICE, str(status))
    assert not capabilities.held(capabilities.CAP_SYS_PTRACE, str(status))
    assert not capabilities.held(capabilities.CAP_SYS_NICE, str(tmp_path / "missing"))
