"""Several ids inside one jail (`ids`, `--ids`), as a daemon that starts as root and
drops to www-data (33) needs: real namespaces, real setuid, real files on the host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.uids import held_uids
from tests.jailtools import sandbox_cli as sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")

UID_COUNT = 256
UID_FIRST = 4_300_000 + (os.getpid() % 1000) * UID_COUNT  # nobody else's range

# Drop from 0 to 33 as a daemon does (gid first), write a file as each, then try to
# come back: the drop cleared its capabilities, so it cannot.
DROP = """
import os, sys
open("/w/as-root", "w").close()
try:
    os.setgid(33)
    os.setuid(33)
except OSError as e:
    print("drop failed", e.errno, flush=True)
    sys.exit(3)
open("/w/as-33", "w").close()
print(os.getuid(), os.getgid(), flush=True)
try:
    os.setuid(0)
except PermissionError:
    print("no way back", flush=True)
"""


@pytest.fixture
def profile(tmp_path: Path) -> tuple[Path, Path]:
    """A jail with python3, a writable bind at /w, its capabilities in its own namespace
    (to change ids) and a range of our own; and that bind's host directory."""
    shared = tmp_path / "w"
    shared.mkdir()
    shared.chmod(0o777)
    path = tmp_path / "ids.toml"
    path.write_text(f"""[jail]
binds = ["/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache",
         {{ source = "{shared}", target = "/w", writable = true }}]
env = {{ PATH = "/usr/bin:/bin", PYTHONDONTWRITEBYTECODE = "1" }}
drop_capabilities = false
uid_first = {UID_FIRST}
uid_count = {UID_COUNT}
""")
    return path, shared


def test_a_program_drops_to_another_mapped_id(profile: tuple[Path, Path]) -> None:
    path, shared = profile
    out = sandbox("run", "--profile", str(path), "--ids", "34", "--",
                  "python3", "-c", DROP)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["33 33", "no way back"]
    # The files are the block's host ids: H for 0, H+33 for 33.
    root, www = os.stat(shared / "as-root"), os.stat(shared / "as-33")
    assert UID_FIRST <= root.st_uid < UID_FIRST + UID_COUNT - 33
    assert (root.st_uid, root.st_gid) == (root.st_uid, root.st_uid)
    assert (www.st_uid, www.st_gid) == (root.st_uid + 33, root.st_uid + 33)
    assert held_uids() & set(range(UID_FIRST, UID_FIRST + UID_COUNT)) == set()  # released


def test_with_one_id_the_program_cannot_change_ids(profile: tuple[Path, Path]) -> None:
    path, shared = profile
    out = sandbox("run", "--profile", str(path), "--", "python3", "-c", DROP)
    assert (out.returncode, out.stdout) == (3, "drop failed 22\n"), out.stderr  # EINVAL
    assert [p.name for p in shared.iterdir()] == ["as-root"]
    # With the default capabilities (all dropped) and several ids, it cannot either.
    text = path.read_text().replace("drop_capabilities = false\n", "")
    path.write_text(text)
    out = sandbox("run", "--profile", str(path), "--ids", "34", "--", "python3", "-c", DROP)
    assert (out.returncode, out.stdout) == (3, "drop failed 1\n"), out.stderr  # EPERM


def test_a_profile_starts_the_program_as_a_mapped_uid(profile: tuple[Path, Path]) -> None:
    path, shared = profile
    path.write_text(path.read_text().replace("[jail]\n", "[jail]\nids = 100\nuid = 99\n"
                                                         "gid = 98\n"))
    out = sandbox("run", "--profile", str(path), "--proc", "--", "sh", "-c",
                  "id -u; id -g; touch /w/f; cat /proc/self/uid_map /proc/self/gid_map")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[:2] == ["99", "98"]
    host = [line.split() for line in lines[2:4]]
    assert host[0][0] == "0" and host[0][2] == "100" and host[1] == host[0]
    first = int(host[0][1])
    st = os.stat(shared / "f")
    assert (st.st_uid, st.st_gid) == (first + 99, first + 98)
    check = sandbox("check", str(path))
    assert check.returncode == 0, check.stderr
    assert ("id map: uids and gids 0-99 -> a block of 100 host uids (and gids) H..H+99"
            in check.stdout)


def test_ids_outside_the_map_are_one_line_errors(profile: tuple[Path, Path]) -> None:
    path, _ = profile
    out = sandbox("run", "--profile", str(path), "--ids", "34", "--uid", "34", "--", "true")
    assert (out.returncode, out.stderr) == (125, (
        f"sandbox: cannot apply the command line to {path}: uid 34 is not mapped inside the "
        f"jail: ids = 34 maps 0-33; raise ids to 35 or more\n"))
    out = sandbox("run", "--profile", str(path), "--ids", "0", "--", "true")
    assert out.returncode == 2 and "--ids: ids must be a whole number of at least 1" in out.stderr
    out = sandbox("run", "--profile", str(path), "--ids", str(UID_COUNT + 1), "--", "true")
    assert out.returncode == 125
    assert f"ids = {UID_COUNT + 1} is more than the {UID_COUNT} host uids" in out.stderr
    path.write_text(path.read_text().replace("[jail]\n", "[jail]\nids = 8\ngid = 8\n"))
    out = sandbox("check", str(path))
    assert (out.returncode, out.stderr) == (2, (
        f"{path}:3: gid 8 is not mapped inside the jail: ids = 8 maps 0-7; raise ids to 9 "
        f"or more\n"))
