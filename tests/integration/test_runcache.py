"""`sandbox run`'s plan cache: the second identical run goes from the cache straight to
the jail (no CLI, no TOML, no libseccomp imported); any change to the profile, a file it
includes or the command line recompiles; a cache that is not root's alone is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "policies" / "examples" / "http-static.toml"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")


def sandbox(cache: Path, *args: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SANDBOX_CACHE_DIR": str(cache), **env_vars}
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "sandbox", *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
                          check=False)


def imported(out: subprocess.CompletedProcess) -> set[str]:
    return {line.split("|")[-1].strip() for line in out.stderr.splitlines()
            if line.startswith("import time:")}


def messages(out: subprocess.CompletedProcess) -> list[str]:
    return [line for line in out.stderr.splitlines() if not line.startswith("import time:")]


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[seccomp]\ndefault = "kill-process"\ninclude = ["{POLICY}"]\n')
    path = tmp_path / "true.toml"
    path.write_text('[jail]\nbinds = ["/usr", "/lib", "/lib64", "/bin"]\n'
                    '[jail.rlimits]\nnofile = 64\n'
                    '[seccomp]\ndefault = "kill-process"\ninclude = ["policy.toml"]\n')
    return path


FULL_CLI = {"sandbox.cli", "argparse", "pyseccomp", "tomllib", "sandbox.profile"}
# Pure-Python modules that cost a cached run milliseconds each (it starts in the time of
# the interpreter's own start plus a few ms), the seccomp watcher's thread included.
HEAVY = {"typing", "dataclasses", "threading", "difflib", "pathlib", "enum", "ctypes"}


def compiled(out: subprocess.CompletedProcess) -> bool:
    """Whether this run loaded the full CLI (a cache miss) rather than only the cache."""
    return FULL_CLI.issubset(imported(out))


def test_second_run_comes_from_the_cache(tmp_path: Path, profile: Path) -> None:
    cache = tmp_path / "cache"
    first = sandbox(cache, "run", "--profile", str(profile), "--", "/bin/true")
    assert first.returncode == 0, messages(first)
    assert compiled(first)
    assert cache.stat().st_mode & 0o777 == 0o700 and cache.stat().st_uid == 0
    entries = list(cache.glob("*.plan"))
    assert len(entries) == 1 and entries[0].stat().st_mode & 0o777 == 0o600
    second = sandbox(cache, "run", "--profile", str(profile), "--", "/bin/true")
    assert second.returncode == 0, messages(second)
    assert not FULL_CLI & imported(second), FULL_CLI & imported(second)
    assert not HEAVY & imported(second), HEAVY & imported(second)
    # The cached run reports like the full one.
    missing = sandbox(cache, "run", "--profile", str(profile), "--", "no-such-program")
    assert missing.returncode == 127
    # Under `make test-asan` the executor's exit after the failed exec goes through
    # libasan's _exit, whose sigaltstack the profile forbids: the jail also dies of
    # SIGSYS, and naming that syscall loads libseccomp (not the CLI).
    namer = {"pyseccomp"} if "libasan" in os.environ.get("LD_PRELOAD", "") else set()
    assert not (FULL_CLI - namer) & imported(missing), (FULL_CLI - namer) & imported(missing)
    assert "cannot run 'no-such-program': not found inside the jail" in missing.stderr


def test_changes_recompile(tmp_path: Path, profile: Path) -> None:
    cache = tmp_path / "cache"
    run = ("run", "--profile", str(profile), "--", "/bin/true")
    assert sandbox(cache, *run).returncode == 0
    assert not FULL_CLI & imported(sandbox(cache, *run))
    # The profile's content, a file it includes, the command line: each is a miss.
    profile.write_text(profile.read_text().replace("nofile = 64", "nofile = 65"))
    assert compiled(sandbox(cache, *run))
    assert not FULL_CLI & imported(sandbox(cache, *run))
    policy = profile.with_name("policy.toml")
    policy.write_text(policy.read_text() + 'deny = ["ptrace"]\n')
    assert compiled(sandbox(cache, *run))
    assert compiled(sandbox(cache, "run", "--profile", str(profile), "--hostname", "other",
                            "--", "/bin/true"))


def test_a_cached_run_keeps_the_parents_side(tmp_path: Path, profile: Path) -> None:
    """What the parent does for a jail (its cgroup, --timeout, naming a forbidden call
    with its arguments) is the same from the cache: those are not in the plan."""
    cache = tmp_path / "cache"
    code = "import time; print(open('/proc/self/cgroup').read(), flush=True); time.sleep(30)"
    run = ("run", "--profile", str(profile), "--bind-ro", "/etc/alternatives", "--proc",
           "--pids-limit", "16", "--timeout", "0.5", "--", "python3", "-c", code)
    for first in (True, False):
        out = sandbox(cache, *run)
        assert compiled(out) == first
        assert out.returncode == 124, messages(out)
        assert "sandbox-" in out.stdout  # in a cgroup of its own
        assert "--timeout 0.5 s passed" in out.stderr
    names_the_forbidden_call(sandbox, cache, profile)


def names_the_forbidden_call(command: Callable[..., subprocess.CompletedProcess], cache: Path,
                             profile: Path) -> None:
    """A jail's forbidden call is named with its arguments, compiled and then cached."""
    forbidden = ("run", "--profile", str(profile), "--", "python3", "-c",
                 "import os; os.getppid()")
    for first in (True, False):
        out = command(cache, *forbidden)
        assert compiled(out) == first
        assert out.returncode == 159, messages(out)
        assert messages(out)[-1].startswith("sandbox: killed by seccomp: the program called "
                                            "getppid(")


def test_a_profile_name_is_resolved_again(tmp_path: Path, profile: Path) -> None:
    """A profile of that name appearing earlier in the search path is a miss."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (second / "policy.toml").write_text(profile.with_name("policy.toml").read_text())
    (second / "mine.toml").write_text(profile.read_text())
    path = {"SANDBOX_POLICY_PATH": f"{first}:{second}"}
    run = ("run", "--profile", "mine", "--", "/bin/true")
    cache = tmp_path / "cache"
    assert sandbox(cache, *run, **path).returncode == 0
    assert not compiled(sandbox(cache, *run, **path))
    (first / "policy.toml").write_text(profile.with_name("policy.toml").read_text())
    (first / "mine.toml").write_text(profile.read_text().replace("nofile = 64", "nofile = 66"))
    assert compiled(sandbox(cache, *run, **path))


def test_a_cache_that_is_not_roots_alone_is_refused(tmp_path: Path, profile: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    cache.chmod(0o755)
    run = ("run", "--profile", str(profile), "--", "/bin/true")
    out = sandbox(cache, *run)
    assert out.returncode == 0
    assert messages(out) == [f"sandbox: not caching plans in {cache}: it must be root's, "
                             "mode 0700"]
    assert not list(cache.iterdir())
    # An entry others could have written is not read either.
    cache.chmod(0o700)
    assert sandbox(cache, *run).returncode == 0
    (entry,) = cache.glob("*.plan")
    entry.chmod(0o644)
    assert compiled(sandbox(cache, *run))


def test_explain_shows_the_plan() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "sandbox", "explain", "--plan", "titus-worker"],
                         capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
                         check=True).stdout
    plan = out[out.index("The jail plan"):]
    layers = [line.split()[1] for line in plan.splitlines()[2:]]
    assert layers[0] == "signals" and layers[-1] == "seccomp"
    assert "clone(CLONE_NEWPID)" in plan and "setresuid(0)" in plan


# The `sandbox` command as `make` installs it: a launcher that starts Python without site
# (the Makefile says why), next to the interpreter running these tests.
LAUNCHER = Path(sys.executable).parent / "sandbox"
# What a cached run from the launcher must not load: site and what it imports, os (2.5 ms:
# the cached path uses posix), and callwatch until the jail makes a forbidden call.
SITE = {"site", "os", "sitecustomize", "_distutils_hack", "sandbox.callwatch"}


def launch(cache: Path, *args: str, **env_vars: str) -> subprocess.CompletedProcess:
    """The installed launcher, as an operator runs it (no PYTHONPATH: it finds the tree)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(SANDBOX_CACHE_DIR=str(cache), PYTHONPROFILEIMPORTTIME="1", **env_vars)
    return subprocess.run([str(LAUNCHER), *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env=env, check=False)


def test_the_launcher_starts_python_without_site(tmp_path: Path, profile: Path) -> None:
    first_line = LAUNCHER.read_text().splitlines()[0]
    assert first_line.startswith("#!") and first_line.split()[1:] == ["-S"], first_line
    cache = tmp_path / "cache"
    run = ("run", "--profile", str(profile), "--", "/bin/true")
    assert launch(cache, *run).returncode == 0
    cached = launch(cache, *run)
    assert cached.returncode == 0, messages(cached)
    assert not (FULL_CLI | HEAVY | SITE) & imported(cached), (
        (FULL_CLI | HEAVY | SITE) & imported(cached))
    assert "sandbox.runcache" in imported(cached)


def test_a_miss_from_the_launcher_runs_site_and_the_full_cli(tmp_path: Path,
                                                               profile: Path) -> None:
    """The full CLI needs site-packages (pyseccomp compiles the filter): entry.py runs
    site first, and the plan it compiled is cached."""
    cache = tmp_path / "cache"
    out = launch(cache, "run", "--profile", str(profile), "--", "/bin/true")
    assert out.returncode == 0, messages(out)
    assert {"site", "pyseccomp", "sandbox.cli"} <= imported(out)
    assert len(list(cache.glob("*.plan"))) == 1
    assert not compiled(launch(cache, "run", "--profile", str(profile), "--", "/bin/true"))
    # The other commands are the full CLI too.
    check = launch(cache, "check", str(profile))
    assert check.returncode == 0, messages(check)


def test_a_cached_run_from_the_launcher_names_a_forbidden_call(tmp_path: Path,
                                                               profile: Path) -> None:
    """Naming the call needs pyseccomp's syscall table, from site-packages, which the
    cached path brings in only then."""
    names_the_forbidden_call(launch, tmp_path / "cache", profile)


def test_pythonpath_comes_before_the_launchers_tree(tmp_path: Path) -> None:
    """As with site's .pth: `make test-asan` runs the launcher on its ASan-built copy."""
    fake = tmp_path / "other" / "sandbox"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "entry.py").write_text("def main():\n    print('the other tree')\n    return 3\n")
    out = launch(tmp_path / "cache", "run", PYTHONPATH=str(fake.parent))
    assert (out.returncode, out.stdout) == (3, "the other tree\n")
