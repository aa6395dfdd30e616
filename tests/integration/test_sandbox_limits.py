"""Daily flags of `sandbox run`, as bwrap and docker users name them, and their profile keys:
--timeout, --rlimit, --cwd, --proc, and cgroup limits --memory, --pids-limit, --cpus
(the jail's own cgroup, v2 or v1 as the host has them, created and removed per jail)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sandbox.cgroups import detect
from tests.jailtools import sandbox_cli as sandbox

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")

# No seccomp table: these tests are about limits; the binds give python3 and sh.
PLAIN = """[jail]
binds = ["/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache"]
writable_tmpfs = "/tmp"
env = { PATH = "/usr/bin:/bin", PYTHONDONTWRITEBYTECODE = "1" }
[jail.rlimits]
nproc = "unlimited"
"""


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    path = tmp_path / "plain.toml"
    path.write_text(PLAIN)
    return path


def jail_cgroups(uid: int) -> list[Path]:
    """The per-jail cgroup directories of the jail with host uid `uid`."""
    return [h.base / f"sandbox-{uid}" for h in detect().values()
            if (h.base / f"sandbox-{uid}").exists()]


def test_timeout_stops_the_program_with_status_124(plain: Path) -> None:
    started = time.monotonic()
    out = sandbox("run", "--profile", str(plain), "--timeout", "0.5", "--", "sleep", "30")
    assert out.returncode == 124, out.stderr
    assert time.monotonic() - started < 10
    assert "--timeout 0.5 s passed" in out.stderr
    # A program that handles SIGTERM gets it, and --stop-timeout to finish.
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda s, f: (print('term', flush=True), sys.exit(3)))\n"
            "time.sleep(30)")
    out = sandbox("run", "--profile", str(plain), "--timeout", "0.5", "--", "python3", "-c", code)
    assert (out.returncode, out.stdout) == (124, "term\n"), out.stderr
    # In the profile too.
    profile = plain.with_name("timed.toml")
    profile.write_text(PLAIN.replace("[jail]\n", "[jail]\ntimeout = 0.5\n"))
    assert sandbox("run", "--profile", str(profile), "--", "sleep", "30").returncode == 124


def test_rlimit_cwd_and_proc(plain: Path) -> None:
    out = sandbox("run", "--profile", str(plain), "--rlimit", "nofile=77", "--rlimit",
                  "fsize=1M", "--cwd", "/usr/lib", "--proc", "--",
                  "sh", "-c", "ulimit -n; ulimit -f; pwd; cat /proc/self/status | grep ^NSpid")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == ["77", "2048", "/usr/lib"]  # ulimit -f counts 512-byte blocks
    assert lines[3].split()[-1] == "2"  # the jail's own PID namespace: sh is 1, cat 2
    bad = sandbox("run", "--profile", str(plain), "--rlimit", "nofiles=3", "--", "true")
    assert bad.returncode == 2 and "unknown rlimit 'nofiles'" in bad.stderr


FORK_BOMB = textwrap.dedent("""
    import os, time
    print("bombing", flush=True)
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.01)
""")


def test_pids_limit_stops_a_fork_bomb(plain: Path) -> None:
    """Every process of the bomb forks forever; the jail's pids.max holds them at 32,
    --timeout ends it, and its cgroup is gone afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "run", "--profile", str(plain), "--pids-limit", "32",
         "--timeout", "3", "--stop-timeout", "0", "--", "python3", "-c", FORK_BOMB],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "bombing\n"
        time.sleep(1)
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            (jail,) = (int(p) for p in f.read().split())
        uid = int(Path(f"/proc/{jail}").stat().st_uid or _uid(jail))
        pids = [d for d in jail_cgroups(uid) if (d / "pids.current").exists()]
        assert pids, "the jail has no pids cgroup of its own"
        assert int((pids[0] / "pids.max").read_text()) == 32
        assert 20 <= int((pids[0] / "pids.current").read_text()) <= 32
    finally:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 124, err
    assert jail_cgroups(uid) == []  # removed with the jail


def _uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_memory_limit_kills_a_hog_and_cpus_sets_the_quota(plain: Path) -> None:
    hog = "b = []\nwhile True:\n    b.append(bytearray(16 << 20))"
    out = sandbox("run", "--profile", str(plain), "--memory", "64M", "--", "python3", "-c", hog)
    assert out.returncode == 128 + signal.SIGKILL, out.stderr  # the OOM killer, in the jail
    fine = sandbox("run", "--profile", str(plain), "--memory", "64M", "--", "python3", "-c",
                   "b = bytearray(16 << 20); print(len(b))")
    assert (fine.returncode, fine.stdout) == (0, f"{16 << 20}\n"), fine.stderr
    # --cpus: the jail's cpu cgroup has a quota of half a CPU per period.
    code = "import os\nfor line in open('/proc/self/cgroup'):\n    print(line.strip())"
    out = sandbox("run", "--profile", str(plain), "--proc", "--cpus", "0.5", "--memory", "256M",
                  "--", "python3", "-c", code)
    assert out.returncode == 0, out.stderr
    assert "sandbox-" in out.stdout  # it ran in a cgroup of its own


def test_cgroup_limits_in_a_profile_and_bad_values(tmp_path: Path) -> None:
    profile = tmp_path / "limited.toml"
    profile.write_text(PLAIN.replace("[jail]\n", '[jail]\nmemory = "96M"\npids_limit = 8\n'
                                                 "cpus = 0.25\n"))
    check = sandbox("check", str(profile))
    assert check.returncode == 0, check.stderr
    code = "import time; time.sleep(0.5)"
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "run", "--profile", str(profile),
                             "--", "python3", "-c", code], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 10
        dirs: list[Path] = []
        while not dirs and time.monotonic() < deadline:
            try:
                with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                    children = [int(p) for p in f.read().split()]
            except FileNotFoundError:
                children = []
            if children:
                dirs = jail_cgroups(_uid(children[0]))
            time.sleep(0.02)
        values = {f.name: f.read_text().split() for d in dirs for f in d.iterdir()
                  if f.name in ("memory.limit_in_bytes", "memory.max", "pids.max",
                                "cpu.cfs_quota_us", "cpu.max")}
    finally:
        assert proc.wait(30) == 0
    assert values.get("pids.max") == ["8"]
    assert values.get("memory.max", values.get("memory.limit_in_bytes")) == [str(96 << 20)]
    assert values.get("cpu.max", values.get("cpu.cfs_quota_us"))[0] == "25000"
    bad = tmp_path / "bad.toml"
    bad.write_text('[jail]\nhostname = "x"\npids_limit = 0\n')
    out = sandbox("check", str(bad))
    assert (out.returncode, out.stderr) == (
        2, f"{bad}:3: pids_limit must be a whole number of at least 1, not 0\n")


def test_dev_tmpfs_uid_and_gid(plain: Path) -> None:
    script = ("id -u; id -g; ls /dev | tr '\\n' ' '; echo; echo x > /dev/null && echo null; "
              "head -c 4 /dev/urandom | wc -c; "
              "df -k /run /cache | tail -2 | tr -s ' ' | cut -d' ' -f2; "
              "touch /run/f /cache/f && echo writable; touch /usr/f 2>/dev/null || echo ro")
    out = sandbox("run", "--profile", str(plain), "--dev", "--proc", "--uid", "33", "--gid", "34",
                  "--tmpfs", "/run:1M", "--tmpfs", "/cache", "--", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "33", "34", "fd full null random shm stderr stdin stdout urandom zero ", "null", "4",
        "1024", "16384", "writable", "ro"]
    # Without --dev there is no /dev at all; without --uid the program is root inside.
    out = sandbox("run", "--profile", str(plain), "--", "sh", "-c", "id -u; ls /dev || true")
    assert out.stdout == "0\n" and "No such file" in out.stderr
    # The devices are the host's harmless ones only: no disk, no /dev/mem, no kmsg.
    out = sandbox("run", "--profile", str(plain), "--dev", "--", "sh", "-c",
                  "ls /dev/mem /dev/kmsg /dev/sda 2>&1 | grep -c 'No such file'")
    assert out.stdout == "3\n", out.stderr


def test_uid_and_dev_in_a_profile(tmp_path: Path) -> None:
    profile = tmp_path / "ids.toml"
    profile.write_text(PLAIN.replace("[jail]\n", '[jail]\nuid = 1000\ngid = 1000\ndev = true\n'
                                                 'tmpfs = ["/run:2M"]\n'))
    out = sandbox("run", "--profile", str(profile), "--", "sh", "-c",
                  "id -u; id -g; test -c /dev/null && echo dev; df -k /run | tail -1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == ["1000", "1000", "dev"] and lines[3].split()[1] == "2048"
    check = sandbox("check", str(profile))
    assert "inside: uid 1000, gid 1000; /dev: minimal" in check.stdout
    assert "/run (2M)" in check.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[jail]\nhostname = "x"\ntmpfs = ["run"]\n')
    out = sandbox("check", str(bad))
    assert (out.returncode, out.stderr) == (
        2, f"{bad}:3: a tmpfs path must be absolute, not 'run'\n")
