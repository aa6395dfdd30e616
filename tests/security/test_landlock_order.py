"""Landlock gives each bind its own access: a directory bound after a file is still listable
(the old code narrowed the access set for every later path, so http-static's directory
listing answered 404 and `ls /srv` was denied)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from sandbox import landlock
from sandbox.launcher import Launcher
from sandbox.spec import BindMount, JailSpec
from tests.jailtools import run_probe

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")


def listing(path: str) -> object:
    return sorted(os.listdir(path))


def test_a_directory_after_a_file_bind_is_listable(tmp_path) -> None:
    if landlock.abi_version() < 1:
        pytest.skip("no Landlock on this kernel")
    tmp_path.chmod(0o755)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inside").write_text("y")
    binds = (BindMount(tmp_path / "a-file", tmp_path / "a-file"),  # a file first
             BindMount(tmp_path / "dir", tmp_path / "dir"))
    spec = replace(JailSpec(seccomp_bpf=None), binds=binds, landlock=True)
    launcher = Launcher()
    try:
        assert run_probe(launcher, spec, listing, (str(tmp_path / "dir"),)).value == ["inside"]
        # Still confined: the file is no directory, and nothing else is reachable.
        assert run_probe(launcher, spec, listing, ("/",)).value == {"error": "EACCES"}
    finally:
        launcher.close()
