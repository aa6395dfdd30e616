"""`sandbox` CLI end to end: real jails, real programs, real signals, as root.

Every test runs `python -m sandbox` as a separate process, exactly as an
operator would run the console script.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
EXAMPLE = POLICIES / "examples" / "http-static.toml"
PYTHON = "/usr/bin/python3"  # the interpreter the example profile was measured with

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="jails need root"),
    pytest.mark.skipif(not Path(PYTHON).exists(), reason=f"needs {PYTHON}"),
]

_RATELIMIT = Path("/proc/sys/kernel/printk_ratelimit")


@pytest.fixture(scope="module", autouse=True)
def audit_records_not_rate_limited() -> Iterator[None]:
    """The kernel prints seccomp's audit records through printk_ratelimit (10 per 5 s);
    other jails on the machine must not eat the budget that names our violation."""
    old = _RATELIMIT.read_text()
    if old.strip() == "0":  # lifted by someone else (a learn, a parallel run): theirs to restore
        yield
        return
    _RATELIMIT.write_text("0\n")
    try:
        yield
    finally:
        _RATELIMIT.write_text(old)


def sandbox(*args: str, timeout: float = 60, **kwargs: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "sandbox", *args], capture_output=True, text=True,
        timeout=timeout, cwd=REPO, env=env, check=False, **kwargs,
    )  # fmt: skip


def start_sandbox(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "sandbox", *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
    )  # fmt: skip


@pytest.fixture
def www(tmp_path: Path) -> Path:
    """A directory to serve; readable by the jail's unprivileged uid."""
    d = tmp_path / "www"
    d.mkdir()
    d.chmod(0o755)
    page = d / "hello.txt"
    page.write_text("hello from the jail\n")
    page.chmod(0o644)
    return d


def example(www: Path, *extra: str) -> list[str]:
    """`--profile examples/http-static` with the served directory replaced by `www`."""
    return ["--profile", "examples/http-static", "--bind-ro", f"{www}:/srv/www", *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], timeout)[0]:
        proc.kill()
        pytest.fail(f"no output within {timeout} s; stderr: {proc.communicate()[1]}")
    return proc.stdout.readline()


# ---------------------------------------------------------------------------
# check, explain, --help


SHIPPED = ["titus-worker", "titus-keyholder", "examples/http-static", "examples/nginx-static",
           "examples/redis", "examples/shell"]


@pytest.fixture(scope="module")
def bind_sources() -> Iterator[None]:
    """The example profiles' data directories (/srv/www, /var/lib/redis-jail), which
    `check` requires to exist, made empty where missing and removed afterwards."""
    from sandbox.profile import load_profile

    made = []
    for name in SHIPPED:
        for bind in load_profile(name).spec.binds:
            if not bind.source.exists() and bind.source.parent.is_dir():
                bind.source.mkdir(mode=0o755)
                made.append(bind.source)
    try:
        yield
    finally:
        for path in made:
            path.rmdir()


@pytest.mark.parametrize("name", SHIPPED)
def test_check_shipped_profiles(name: str, bind_sources: None) -> None:
    out = sandbox("check", name)
    assert out.returncode == 0, out.stderr
    stem = name.rsplit("/", 1)[-1]
    assert out.stdout.startswith(f"profile {stem} ({POLICIES / name}.toml)")
    assert "default action: kill-process" in out.stdout
    assert re.search(r"x86_64: \d+ syscalls allowed", out.stdout)


@pytest.mark.parametrize("name", SHIPPED)
def test_explain_shipped_profiles(name: str) -> None:
    out = sandbox("explain", name)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"Profile {name.rsplit('/', 1)[-1]}")
    assert "SIGSYS" in out.stdout


def test_explain_names_the_network() -> None:
    out = sandbox("explain", "examples/http-static")
    assert "a new network namespace with only the loopback interface" in out.stdout


def test_check_misspelt_syscall(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[jail]\nhostname = "x"\n\n[seccomp]\nallow = [\n    "read",\n    "opnat",\n]\n')
    out = sandbox("check", str(bad))
    assert out.returncode == 2
    assert out.stdout == ""
    line = out.stderr.strip()
    assert line.startswith(f"{bad}:7: unknown syscall 'opnat'"), line
    assert "did you mean 'openat'?" in line
    # The same profile cannot be run either: nothing starts.
    ran = sandbox("run", "--profile", str(bad), "--", "/bin/true")
    assert ran.returncode == 125
    assert f"{bad}:7: unknown syscall 'opnat'" in ran.stderr


def test_help_documents_exit_codes() -> None:
    out = sandbox("run", "--help")
    assert out.returncode == 0
    for code in ("159", "125", "126", "127"):
        assert re.search(rf"^\s+{code}\s", out.stdout, re.MULTILINE), code


# ---------------------------------------------------------------------------
# run: a real server


SERVE_AND_FETCH = textwrap.dedent("""
    import functools, http.server, threading, urllib.request
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory="/srv/www")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hello.txt"
    print(urllib.request.urlopen(url).read().decode(), end="")
    server.shutdown()
""")


def test_run_serves_on_loopback(www: Path) -> None:
    """The example's server and a client, both inside one jail with only `lo`."""
    out = sandbox("run", *example(www, "--net", "loopback"), "--", PYTHON, "-c", SERVE_AND_FETCH)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello from the jail\n"
    assert '"GET /hello.txt HTTP/1.1" 200' in out.stderr  # the server's access log


@pytest.fixture
def netns_name() -> Iterator[str]:
    """A named network namespace (/run/netns/NAME) with `lo` up, removed afterwards."""
    from pyroute2 import NetNS, netns

    name = f"sandbox-test-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        with NetNS(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        yield name
    finally:
        netns.remove(name)


FETCH_IN_NETNS = textwrap.dedent("""
    import os, sys, time, urllib.request
    from sandbox import libc
    fd = os.open(sys.argv[1], os.O_RDONLY)
    libc.setns(fd, libc.CLONE_NEWNET)
    deadline = time.monotonic() + 10
    while True:
        try:
            print(urllib.request.urlopen(sys.argv[2], timeout=5).read().decode(), end="")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
""")


def test_run_serves_in_a_named_netns(www: Path, netns_name: str) -> None:
    """The jailed server joins a namespace the test made; a client in that namespace
    gets the page, the host's network cannot even connect."""
    port = free_port()
    server = start_sandbox(
        "run", *example(www, "--net", f"netns:{netns_name}", "--env", "PYTHONUNBUFFERED=1"),
        "--", PYTHON, "-m", "http.server", "--bind", "127.0.0.1", str(port),
        "--directory", "/srv/www",
    )  # fmt: skip
    try:
        assert "Serving HTTP on 127.0.0.1 port" in read_line(server, 20)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        client = subprocess.run(
            [sys.executable, "-c", FETCH_IN_NETNS, f"/run/netns/{netns_name}",
             f"http://127.0.0.1:{port}/hello.txt"],
            capture_output=True, text=True, timeout=30, env=env, check=False,
        )  # fmt: skip
        assert client.returncode == 0, client.stderr
        assert client.stdout == "hello from the jail\n"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        server.send_signal(signal.SIGINT)  # http.server handles it: a clean exit
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert '"GET /hello.txt HTTP/1.1" 200' in err


def test_unknown_netns_is_a_named_layer_failure(www: Path) -> None:
    out = sandbox("run", *example(www, "--net", "netns:no-such-ns-here"), "--", PYTHON, "-V")
    assert out.returncode == 125
    assert out.stderr.strip() == (
        "sandbox: cannot start: jail layer 'network' failed (ENOENT): cannot open network "
        "namespace /run/netns/no-such-ns-here: No such file or directory"
    )


# ---------------------------------------------------------------------------
# run: seccomp violations, start failures, exit statuses, signals


def forbid_getppid(tmp_path: Path) -> Path:
    """The example's jail and policy (by include), with getppid explicitly denied."""
    profile = tmp_path / "no-getppid.toml"
    profile.write_text(textwrap.dedent(f"""
        [jail]
        network = "loopback"
        binds = ["/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache"]
        env = {{ PATH = "/usr/bin:/bin", HOME = "/tmp" }}
        writable_tmpfs = "/tmp"
        [jail.rlimits]
        nofile = 64
        [seccomp]
        default = "kill-process"
        include = ["{EXAMPLE}"]
        deny = ["getppid"]
    """))
    return profile


def test_forbidden_syscall_is_named(tmp_path: Path) -> None:
    profile = forbid_getppid(tmp_path)
    fine = sandbox("run", "--profile", str(profile), "--", PYTHON, "-c",
                   "import os; print(os.getpid())")
    assert fine.returncode == 0, fine.stderr
    assert fine.stdout == "1\n"  # PID 1 of its namespace
    out = sandbox("run", "--profile", str(profile), "--", PYTHON, "-c",
                  "import os; print('before', flush=True); os.getppid(); print('after')")
    assert out.returncode == 159
    assert out.stdout == "before\n"
    # Named by seccomp user notification, with its (here: no) arguments.
    assert out.stderr.strip().splitlines()[-1] == (
        f"sandbox: killed by seccomp: the program called getppid(), which profile {profile} "
        "does not allow"
    )


def test_a_profile_without_execve_is_refused_at_once(tmp_path: Path) -> None:
    """The exec runs under the filter before the watcher answers anything: refused, it
    waited for an answer until the spawn timed out (10 s, then 'did not report in
    time').  Now `run` says what is missing before it starts a jail."""
    profile = tmp_path / "no-exec.toml"
    profile.write_text(textwrap.dedent("""
        [jail]
        binds = ["/usr", "/lib", "/lib64"]
        [seccomp]
        default = "kill-process"
        groups = ["@basic-io", "@memory", "@process-exit"]
    """))
    start = time.monotonic()
    out = sandbox("run", "--profile", str(profile), "--", PYTHON, "-c", "pass")
    assert out.returncode == 125
    assert time.monotonic() - start < 5
    assert out.stderr == (f"sandbox: profile {profile} does not allow execve, which `sandbox "
                          "run` starts the program with: add it to the profile's allow list\n")


def test_command_not_found_and_not_executable(www: Path) -> None:
    missing = sandbox("run", *example(www), "--", "no-such-program")
    assert missing.returncode == 127
    assert "cannot run 'no-such-program': not found inside the jail" in missing.stderr
    # A file that exists in the jail but is not a program.
    (www / "data.txt").write_text("not a program\n")
    (www / "data.txt").chmod(0o644)
    noexec = sandbox("run", *example(www), "--", "/srv/www/data.txt")
    assert noexec.returncode == 126, noexec.stderr
    assert "cannot run '/srv/www/data.txt'" in noexec.stderr


def test_layer_failure_exits_125(tmp_path: Path, www: Path) -> None:
    """A bind that cannot be made fails the rootfs layer, and the message says so
    (its target would be inside the read-only /usr bind)."""
    out = sandbox("run", *example(www, "--bind-ro", f"{tmp_path}:/usr/absent-dir"),
                  "--", PYTHON, "-V")
    assert out.returncode == 125
    assert re.fullmatch(
        r"sandbox: cannot start: jail layer 'rootfs' failed \(EROFS\): .*\n",
        out.stderr,
    ), out.stderr


def test_missing_bind_source_is_named_before_start(tmp_path: Path, www: Path) -> None:
    out = sandbox("run", *example(www, "--bind-ro", f"{tmp_path}/absent:/srv/absent"),
                  "--", PYTHON, "-V")
    assert out.returncode == 125
    assert out.stderr == (f"sandbox: --bind-ro: bind source {tmp_path}/absent does not exist "
                          "(to be bound at /srv/absent)\n")


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("import sys; sys.exit(3)", 3),
        ("import sys; sys.exit(0)", 0),
        ("import ctypes; ctypes.string_at(0)", 128 + signal.SIGSEGV),  # a real crash
    ],
)
def test_exit_status_propagates(www: Path, code: str, status: int) -> None:
    out = sandbox("run", *example(www), "--", PYTHON, "-c", code)
    assert out.returncode == status, out.stderr


def start_and_signal(www: Path, code: str, sig: int, *extra: str) -> tuple[int, str, float]:
    """Start `code` jailed, wait until it says 'up', send `sig` to `sandbox run`."""
    proc = start_sandbox("run", *example(www, *extra), "--", PYTHON, "-c", code)
    try:
        assert read_line(proc, 20) == "up\n"
        sent = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        return proc.returncode, err, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


UP_AND_SLEEP = "import time; print('up', flush=True); time.sleep(60)"


def test_sigterm_ends_a_program_without_handler(www: Path) -> None:
    """As PID 1 the program would ignore SIGTERM; sandbox ends it like any process: 143."""
    status, err, took = start_and_signal(www, UP_AND_SLEEP, signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, err
    assert took < 3  # at once, not after --stop-timeout


def test_sigterm_is_forwarded_to_a_handler(www: Path) -> None:
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda s, f: sys.exit(40 + s))\n"
            "print('up', flush=True)\ntime.sleep(60)")
    status, err, _ = start_and_signal(www, code, signal.SIGTERM)
    assert status == 40 + signal.SIGTERM, err


def test_sigint_reaches_python_as_keyboard_interrupt(www: Path) -> None:
    code = ("import time\ntry:\n    print('up', flush=True)\n    time.sleep(60)\n"
            "except KeyboardInterrupt:\n    raise SystemExit(5)")
    status, err, _ = start_and_signal(www, code, signal.SIGINT)
    assert status == 5, err


def test_sigterm_ignored_leads_to_sigkill_after_stop_timeout(www: Path) -> None:
    code = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('up', flush=True)\ntime.sleep(60)")
    status, err, took = start_and_signal(www, code, signal.SIGTERM, "--stop-timeout", "0.5")
    assert status == 128 + signal.SIGKILL
    assert "did not exit within 0.5 s of SIGTERM: killed it" in err
    assert 0.4 < took < 10


# ---------------------------------------------------------------------------
# learn


def test_learn_then_run_under_kill_process(tmp_path: Path, www: Path, bind_sources: None
                                           ) -> None:
    code = "import os; os.getppid(); os.getpgrp(); print('all done')"
    before = sandbox("run", *example(www), "--", PYTHON, "-c", code)
    assert before.returncode == 159
    assert "the program called getppid" in before.stderr

    learned = tmp_path / "learned.toml"
    out = sandbox("learn", *example(www), "--output", str(learned), "--", PYTHON, "-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "all done\n"  # nothing was killed while learning
    assert re.search(r"learn: one run, exit status 0: 2 syscalls added to profile "
                     r"examples/http-static \(2 entries\): getpgrp getppid", out.stderr), out.stderr

    check = sandbox("check", str(learned))
    assert check.returncode == 0, check.stderr
    assert "default action: kill-process" in check.stdout
    assert "ioctl      allow if request == TCGETS" in check.stdout  # rules were kept

    # The learned profile is the base's text: the command line's bind is given again.
    served = ["--bind-ro", f"{www}:/srv/www"]
    after = sandbox("run", "--profile", str(learned), *served, "--", PYTHON, "-c", code)
    assert after.returncode == 0, after.stderr
    assert after.stdout == "all done\n"
    # Still a filter: a syscall that was not learned kills.
    other = sandbox("run", "--profile", str(learned), *served, "--", PYTHON, "-c",
                    "import os; os.getsid(0)")
    assert other.returncode == 159
    assert "the program called getsid" in other.stderr


def test_learn_follows_forked_children(www: Path) -> None:
    """Records are matched by the jail's uid, so a child process's syscalls count too.
    Without --output the policy is all there is on stdout."""
    code = ("import os, sys\npid = os.fork()\nif pid == 0:\n    os.getsid(0)\n    os._exit(0)\n"
            "os.waitpid(pid, 0)\nprint('parent done')")
    out = sandbox("learn", *example(www), "--", PYTHON, "-c", code)
    assert out.returncode == 0, out.stderr
    added = re.search(r"syscalls? added .*?: (.*); policy written to stdout", out.stderr)
    assert added, out.stderr
    assert {"getsid", "wait4", "clone"} <= set(added.group(1).split())
    assert "parent done" in out.stderr  # the program's stdout went to stderr
    policy = tomllib.loads(out.stdout)
    assert {"getsid", "wait4"} <= set(policy["seccomp"]["allow"])
    # fork is a clone outside the profile's threads-only rule: a rule of the same shape
    # for the flags seen, named with the process that made it (the child called getsid).
    assert re.search(r'"getsid",  # learned: process 2 \(python3\): getsid\(0x0\)', out.stdout)
    clones = [r for r in policy["seccomp"]["rules"] if r["syscall"] == "clone"]
    assert len(clones) == 2 and clones[1]["args"][0]["op"] == "masked-eq"


# ---------------------------------------------------------------------------
# the netns network mode in profiles and on the command line


def test_netns_network_in_a_profile(tmp_path: Path) -> None:
    named = tmp_path / "named.toml"
    named.write_text('[jail]\nnetwork = "netns:web"\n')
    check = sandbox("check", str(named))
    assert check.returncode == 0, check.stderr
    assert "network: netns:/run/netns/web;" in check.stdout
    explained = sandbox("explain", str(named))
    assert "the existing network namespace /run/netns/web" in explained.stdout

    by_path = tmp_path / "path.toml"
    by_path.write_text('[jail]\nnetwork = "netns:/proc/1/ns/net"\n')
    assert "network: netns:/proc/1/ns/net;" in sandbox("check", str(by_path)).stdout

    empty = tmp_path / "empty.toml"
    empty.write_text('[jail]\nhostname = "x"\nnetwork = "netns:"\n')
    out = sandbox("check", str(empty))
    assert out.returncode == 2
    assert out.stderr.startswith(f"{empty}:3: netns: needs a name or a path")

    typo = tmp_path / "typo.toml"
    typo.write_text('[jail]\nnetwork = "loopbak"\n')
    out = sandbox("check", str(typo))
    assert out.returncode == 2
    assert "did you mean 'loopback'?" in out.stderr and "netns:NAME" in out.stderr


def test_bad_net_option_is_a_usage_error(www: Path) -> None:
    out = sandbox("run", *example(www, "--net", "wifi"), "--", PYTHON, "-V")
    assert out.returncode == 2
    assert "--net" in out.stderr and "netns:NAME" in out.stderr
