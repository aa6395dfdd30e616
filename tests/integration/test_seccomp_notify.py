"""Violations and `learn` through seccomp user notification, on real programs.

- `run` names the forbidden call with its decoded arguments, in whichever process
  of the jail made it, kills the jail and exits 159, however many violations come
  in a row (the audit log would drop names after 10 in 5 s);
- `learn` finds every call in ONE run, here on two programs nobody here wrote: a
  dash script of coreutils and redis-server with a BGSAVE; the learned profile
  then runs them under kill-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from sandbox.notify import available
from tests.debian import require
from tests.integration.test_daemon_profiles import in_netns, netns, start, stop, until
from tests.jailtools import sandbox_cli

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="jails need root"),
    pytest.mark.skipif(not available(), reason="needs seccomp user notification (Linux 5.5)"),
]
__all__ = ["netns"]  # a fixture, used by name

SYSTEM = '"/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache", "/etc/alternatives"'


sandbox = sandbox_cli


def test_run_names_the_call_with_its_arguments(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    out = sandbox("run", "--profile", "examples/http-static", "--bind-ro",
                  f"{tmp_path / 'www'}:/srv/www", "--", "python3", "-c",
                  "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 3)")
    assert out.returncode == 159
    assert out.stderr.splitlines()[-1] == (
        "sandbox: killed by seccomp: the program called socket(AF_PACKET, "
        "SOCK_RAW|SOCK_CLOEXEC, 3), which profile examples/http-static does not allow")


def test_a_child_process_violation_is_named_and_ends_the_jail() -> None:
    """The shell survives its child's violation as far as the kernel is concerned;
    sandbox still names it, ends the jail and exits 159."""
    out = sandbox("run", "--profile", "examples/shell", "--", "sh", "-c",
                  "unshare --user true; echo after")
    assert out.returncode == 159, out.stderr
    assert "after" not in out.stdout
    assert out.stderr.splitlines()[-1] == (
        "sandbox: killed by seccomp: process 2 (unshare), started by the program, called "
        "unshare(CLONE_NEWUSER), which profile examples/shell does not allow")


def test_every_violation_of_a_burst_is_named() -> None:
    """Fifteen jails in a row, each killed for a call: every one is named, with its path
    (the kernel's audit log says at most 10 records per 5 s)."""
    for i in range(15):
        out = sandbox("run", "--profile", "examples/shell", "--", "busybox", "chroot",
                      f"/no-{i}", "true")
        assert out.returncode == 159, out.stderr
        assert out.stderr.splitlines()[-1] == (
            f'sandbox: killed by seccomp: the program called chroot("/no-{i}"), which '
            "profile examples/shell does not allow")


def test_a_jail_that_cannot_be_watched_is_killed_not_left_running() -> None:
    """The thread that answers a jail's calls starts once the jail runs; if it cannot
    start, the jail is killed and reaped before the error is raised (a jail whose
    forbidden calls would wait forever must not outlive the run)."""
    from sandbox.launcher import Launcher
    from sandbox.notify import notifying
    from sandbox.profile import load_profile
    from sandbox.runjail import supervise

    profile = load_profile("examples/shell")
    spec = notifying(profile.spec, profile.policy)
    assert spec is not None

    def no_watcher(pid: int) -> None:
        raise RuntimeError(f"cannot watch {pid}")

    launcher = Launcher(shared=False)
    try:
        with pytest.raises(RuntimeError, match="cannot watch"):
            supervise(launcher, spec, ["sleep", "60"], 1.0, watch=no_watcher)  # type: ignore[arg-type]
        assert launcher.live == [], "the jail was left running"
    finally:
        launcher.close()


# -- learn: one run ---------------------------------------------------------------------------


def minimal(tmp_path: Path, jail: str = "") -> Path:
    """A base profile that allows almost nothing: learn must find the rest."""
    base = tmp_path / "base.toml"
    base.write_text(textwrap.dedent(f"""\
        # a base that allows almost nothing (this comment is kept)
        [jail]
        binds = [{SYSTEM}]
        writable_tmpfs = "/tmp"
        cwd = "/tmp"
        {jail}

        [seccomp]
        default = "kill-process"
        groups = ["@basic-io", "@memory-exec"]   # kept as written
        allow = ["execve"]
        deny = ["ptrace"]
    """))
    return base


SCRIPT = """set -e
echo one two three > a.txt
tr a-z A-Z < a.txt > b.txt
cp b.txt c.txt && mv c.txt d.txt
sort a.txt b.txt | uniq | wc -l
grep -c ONE d.txt
sed 's/ONE/1/' d.txt
mkdir -p x/y && ln -s ../../a.txt x/y/link && cat x/y/link
ls x/y
rm -r x
awk '{ print $3 }' a.txt
echo "$(expr 6 \\* 7)"
"""


def test_learn_finds_every_call_of_a_dash_script_in_one_run(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(SCRIPT)
    tmp_path.chmod(0o755)
    script.chmod(0o644)
    base = minimal(tmp_path)
    job = ["--bind-ro", f"{script}:/job.sh", "--", "dash", "/job.sh"]
    assert sandbox("run", "--profile", str(base), *job).returncode == 159  # as it is
    learned = tmp_path / "learned.toml"
    out = sandbox("learn", "--profile", str(base), "--output", str(learned), *job)
    assert out.returncode == 0, out.stderr
    expected = "2\n1\n1 TWO THREE\none two three\nlink\nthree\n42\n"
    assert out.stdout == expected  # nothing was refused while learning
    assert "learn: one run, exit status 0:" in out.stderr
    text = learned.read_text()
    assert text.startswith("# a base that allows almost nothing (this comment is kept)\n")
    assert 'groups = ["@basic-io", "@memory-exec"]   # kept as written' in text
    assert "# learned: process 1 (dash): pipe2(" in text  # where each one was seen
    assert "(cp): ioctl(" in text and "FICLONE" in text  # children of the script too
    policy = tomllib.loads(text)["seccomp"]
    assert "socket" not in policy["allow"]  # socket only by family, never outright
    after = sandbox("run", "--profile", str(learned), *job)  # under kill-process
    assert (after.returncode, after.stdout) == (0, expected), after.stderr


def test_learn_finds_every_call_of_redis_with_bgsave_in_one_run(tmp_path: Path,
                                                                netns: str) -> None:
    server = require("redis-server", "redis-server")
    require("redis-tools", "redis-cli")
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, 191000, 191000)
    base = minimal(tmp_path, "uid_first = 191000\nuid_count = 1")
    learned = tmp_path / "learned.toml"
    argv = ["--net", f"netns:{netns}", "--bind-rw", f"{data}:/data", "--",
            server, "--bind", "127.0.0.1", "--port", "6379", "--dir", "/data", "--logfile", ""]
    cli = ["redis-cli", "-p", "6379"]

    def exercise(daemon: subprocess.Popen) -> None:
        assert until(netns, [*cli, "ping"], daemon) == "PONG\n"
        assert in_netns(netns, *cli, "set", "k", "v").stdout == "OK\n"
        assert in_netns(netns, *cli, "bgsave").stdout == "Background saving started\n"
        until(netns, ["sh", "-c", f"{' '.join(cli)} info persistence | "
                      "grep -q 'rdb_bgsave_in_progress:0'"], daemon)
        in_netns(netns, *cli, "shutdown", "save", check=False)
        daemon.wait(30)

    def drive(sandbox_args: list[str]) -> tuple[int, str]:
        daemon = start(["sandbox", *sandbox_args])
        try:
            exercise(daemon)
        except BaseException:
            stop(daemon)
            raise
        return stop(daemon)

    status, output = drive(["learn", "--profile", str(base), "--output", str(learned), *argv])
    assert status == 0, output
    assert "learn: one run, exit status 0:" in output
    assert (data / "dump.rdb").exists()
    text = learned.read_text()
    rules = tomllib.loads(text)["seccomp"]["rules"]
    assert {r["args"][0]["value"] for r in rules if r["syscall"] == "socket"} == {"AF_INET"}
    assert "# learned: process 1 (redis-server): " in text  # where each one was seen
    (data / "dump.rdb").unlink()
    status, output = drive(["run", "--profile", str(learned), *argv])
    assert status == 0, output
    assert "Background saving terminated with success" in output


def test_the_audit_log_fallback_still_names_and_learns(tmp_path: Path) -> None:
    """Where the kernel has no user notification (forced here), run names the syscall
    from the audit log and learn works in rounds, as before."""
    www = tmp_path / "www"
    www.mkdir()
    args = ["--profile", "examples/http-static", "--bind-ro", f"{www}:/srv/www"]
    code = "import os; os.getppid(); print('done')"
    env = {**os.environ, "PYTHONPATH": str(REPO), "SANDBOX_SECCOMP_NOTIFY": "0"}
    run = subprocess.run([sys.executable, "-m", "sandbox", "run", *args, "--", "python3", "-c",
                          code], capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert run.returncode == 159
    assert "the program called getppid (#" in run.stderr  # by name, from the audit record
    learned = tmp_path / "learned.toml"
    out = subprocess.run([sys.executable, "-m", "sandbox", "learn", *args, "--rounds", "3",
                          "-o", str(learned), "--", "python3", "-c", code],
                         capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "learn: run 1: exit status 0" in out.stderr
    assert "getppid" in tomllib.loads(learned.read_text())["seccomp"]["allow"]
    assert "--rounds 2 or more" not in out.stderr


def test_without_cap_sys_ptrace_the_audit_log_names_the_call(tmp_path: Path) -> None:
    """Root without CAP_SYS_PTRACE (a systemd unit's bounding set, a container's default
    capabilities) cannot copy a jail's listener (pidfd_getfd: EPERM): run falls back to
    the audit log instead of failing every spawn, and its cached plan is not reused."""
    www = tmp_path / "www"
    www.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "SANDBOX_CACHE_DIR": str(tmp_path / "cache")}
    argv = [sys.executable, "-m", "sandbox", "run", "--profile", "examples/http-static",
            "--bind-ro", f"{www}:/srv/www", "--", "python3", "-c", "import os; os.getppid()"]
    for _ in range(2):  # the second run with a plan cached by a run that could notify
        full = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env,
                              cwd=REPO)
        assert full.returncode == 159 and "getppid()" in full.stderr, full.stderr
        run = subprocess.run(["setpriv", "--bounding-set=-sys_ptrace", *argv],
                             capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
        assert run.returncode == 159, run.stderr
        assert "the program called getppid (#" in run.stderr  # by name, from the audit record
