"""An operator may edit titus's jail profiles, not remove the layers its promises rest on:
a worker or key-holder profile without a syscall filter, an empty root, no_new_privs or
its own network is refused at start-up with one line, and nothing is started."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.pki import CA
from tests.titus_harness import ROOT, run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")


def weakened(profile: Path, case: str) -> None:
    text = profile.read_text()
    if case == "no-seccomp":
        head, _, _ = text.partition("\n[seccomp]")
        assert head != text
        text = head + "\n"
    elif case == "host-root":
        text = text.replace("\nempty_root = true", "\nempty_root = false", 1)
    elif case == "host-network":
        text = text.replace('\nnetwork = "shared-empty"', '\nnetwork = "host"', 1)
    assert text != profile.read_text()
    profile.write_text(text)


@pytest.mark.parametrize(("name", "case", "message"), [
    ("titus-worker", "no-seccomp", "without a [seccomp] table"),
    ("titus-worker", "host-root", "without empty_root = true"),
    ("titus-worker", "host-network", "without a network that is not the host's"),
    ("titus-keyholder", "no-seccomp", "without a [seccomp] table"),
])
def test_a_profile_without_a_layer_is_refused(tmp_path, monkeypatch, name, case, message):
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    weakened(policies / f"{name}.toml", case)
    monkeypatch.setenv("SANDBOX_POLICY_PATH", str(policies))
    leaf = CA(tmp_path / "pki").issue("a.test")
    conf = tmp_path / "titus.conf"
    conf.write_text(f"listen 127.0.0.1:0\ncert {leaf.cert}\nkey {leaf.key}\n"
                    "backend 127.0.0.1\nbackend-port 9\n")
    code, _out, err = run_cli(conf)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert f"{name}.toml" in lines[0] and message in lines[0], lines[0]
    # --check refuses it too (the systemd unit runs it before starting titus)
    code, _out, err = run_cli(conf, "--check")
    assert code == 2 and f"{name}.toml" in err and message in err, err
    # The same copy, untouched, starts (so the refusal is the edit's doing).
    shutil.copy(ROOT / "policies" / f"{name}.toml", policies / f"{name}.toml")
    code, _out, err = run_cli(conf, "--check")
    assert code == 0, err
