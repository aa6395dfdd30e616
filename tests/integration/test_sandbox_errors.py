"""Error quality of the `sandbox` CLI, as a new user meets it: a missing bind source named
with FILE:LINE before anything starts, a profile given as a path, a default fd limit
that lets ordinary programs run."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from tests.debian import require
from tests.jailtools import sandbox_cli

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")

SYSTEM = '["/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache"]'


sandbox = sandbox_cli


def test_missing_bind_source_is_an_error_in_check_with_file_and_line(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(textwrap.dedent(f"""\
        [jail]
        binds = [
            "/usr", "/lib", "/lib64", "/bin",
            {{ source = "{tmp_path}/data", target = "/data" }},
        ]
    """))
    message = f"{profile}:4: bind source {tmp_path}/data does not exist (to be bound at /data)\n"
    out = sandbox("check", str(profile))
    assert (out.returncode, out.stdout, out.stderr) == (2, "", message)
    # explain describes the profile wherever it is read (a reviewer's machine).
    assert sandbox("explain", str(profile)).returncode == 0
    ran = sandbox("run", "--profile", str(profile), "--", "/bin/true")
    assert (ran.returncode, ran.stderr) == (125, f"sandbox: {message}")
    # Replacing that bind on the command line is what an operator does: then it runs.
    (tmp_path / "elsewhere").mkdir()
    fixed = sandbox("run", "--profile", str(profile), "--bind-ro", f"{tmp_path}/elsewhere:/data",
                    "--", "/bin/true")
    assert fixed.returncode == 0, fixed.stderr


def test_a_path_is_accepted_where_a_profile_name_is_expected(tmp_path: Path) -> None:
    sub = tmp_path / "profiles"
    sub.mkdir()
    (sub / "mine.toml").write_text('[profile]\ndescription = "mine"\n')
    for given, cwd in [
        (str(sub / "mine.toml"), REPO),  # absolute
        (str(sub / "mine"), REPO),  # absolute, without .toml
        ("profiles/mine.toml", tmp_path),  # relative, no ./
        ("profiles/mine", tmp_path),  # relative, without .toml
        ("./mine", sub),
        ("mine.toml", sub),
    ]:
        out = sandbox("check", given, cwd=cwd)
        assert out.returncode == 0, (given, out.stderr)
        assert out.stdout.startswith(f"profile mine ({sub / 'mine.toml'})"), (given, out.stdout)
    # Names still come from the search path.
    assert sandbox("check", "titus-worker", cwd=sub).returncode == 0
    out = sandbox("check", "profiles/absent", cwd=tmp_path)
    assert out.returncode == 2
    assert "no file profiles/absent or profiles/absent.toml in" in out.stderr
    out = sandbox("check", str(sub))
    assert (out.returncode, out.stderr) == (2, f"{sub} is a directory, not a profile file\n")


def test_default_nofile_lets_ordinary_programs_run(tmp_path: Path) -> None:
    plain = tmp_path / "plain.toml"
    plain.write_text(f"[jail]\nbinds = {SYSTEM}\n")
    out = sandbox("run", "--profile", str(plain), "--", "sh", "-c", "ulimit -n; ls / >&2")
    assert (out.returncode, out.stdout) == (0, "1024\n"), out.stderr
    # "kept" is still there for the tightest limit: the fds passed in.
    kept = tmp_path / "kept.toml"
    kept.write_text(f'[jail]\nbinds = {SYSTEM}\n[jail.rlimits]\nnofile = "kept"\n')
    busybox = require("busybox-static", "busybox")  # static: ld.so needs more than 3 fds
    out = sandbox("run", "--profile", str(kept), "--", busybox, "sh", "-c", "ulimit -n")
    assert (out.returncode, out.stdout) == (0, "3\n"), out.stderr
