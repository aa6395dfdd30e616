"""The example profiles run real daemons from Debian, under kill-process, for real.

Each daemon runs in a network namespace this test makes (and removes), with
`--net netns:NAME` or, for README's line, `--net host` inside `ip netns exec`:
fixed ports (8000, 8080, 6379) cannot collide with anything else on the host,
and the clients (curl, redis-cli) reach the daemon in that namespace.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.profile import load_profile
from tests.debian import require

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "policies" / "examples"
WAIT = 20.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")


@pytest.fixture
def netns() -> Iterator[str]:
    """A named network namespace with `lo` up, removed afterwards."""
    name = f"sandbox-daemon-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def env() -> dict[str, str]:
    """`sandbox` on PATH as the console script, exactly as an operator has it."""
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PYTHONPATH": str(REPO)}


def start(argv: list[str], cwd: Path = REPO) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=env())


def in_netns(name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True,
                          timeout=WAIT, check=check)


def until(name: str, argv: list[str], daemon: subprocess.Popen) -> str:
    """Retry a client in the namespace until it succeeds (the daemon is starting)."""
    deadline = time.monotonic() + WAIT
    while True:
        out = in_netns(name, *argv, check=False)
        if out.returncode == 0:
            return out.stdout
        if daemon.poll() is not None:
            pytest.fail(f"the daemon exited ({daemon.returncode}): {daemon.communicate()[1]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{argv} kept failing: {out.stderr}")
        time.sleep(0.05)


def stop(daemon: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[int, str]:
    """Signal `sandbox run`, wait; (exit status, what the daemon printed on stdout+stderr)."""
    if daemon.poll() is None:
        daemon.send_signal(sig)
    try:
        out, err = daemon.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        daemon.kill()
        out, err = daemon.communicate()
    return daemon.returncode, out + err


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """Files to serve, readable by any jail uid."""
    d = tmp_path / "site"
    (d / "sub").mkdir(parents=True)
    (d / "index.html").write_text("<h1>hello from the jail</h1>\n")
    (d / "sub" / "one.txt").write_text("one\n")
    (d / "sub" / "two.txt").write_text("two\n")
    for p in (tmp_path, d, d / "sub"):
        p.chmod(0o755)
    return d


# -- python3 -m http.server --------------------------------------------------------------------


def readme_line() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"^sandbox run --profile examples/http-static .*$", text, re.MULTILINE)
    assert m, "README.md has no `sandbox run --profile examples/http-static` line"
    return m.group(0)


def test_readme_line_as_written(netns: str, site: Path) -> None:
    """README's line, run verbatim by a shell in the site's directory: the page is
    served on the (namespace's) host network, files and directory listings alike."""
    line = readme_line()
    assert "--net host" in line and "127.0.0.1 8000" in line
    server = start(["ip", "netns", "exec", netns, "bash", "-c", line], cwd=site)
    try:
        page = until(netns, ["curl", "-sf", "http://127.0.0.1:8000/index.html"], server)
        assert page == "<h1>hello from the jail</h1>\n"
        listing = until(netns, ["curl", "-sf", "http://127.0.0.1:8000/sub/"], server)
        assert 'href="one.txt"' in listing and 'href="two.txt"' in listing
    finally:
        status, err = stop(server, signal.SIGINT)  # http.server exits on ^C
    assert status == 0, err
    assert '"GET /index.html HTTP/1.1" 200' in err
    assert "killed by seccomp" not in err


def test_http_server_with_no_bind_address(netns: str, site: Path) -> None:
    """Without --bind, http.server asks getaddrinfo, which opens a NETLINK_ROUTE socket,
    and getfqdn, which asks the resolver: both allowed, nothing killed."""
    server = start(["sandbox", "run", "--profile", "examples/http-static", "--net",
                    f"netns:{netns}", "--bind-ro", f"{site}:/srv/www", "--",
                    "python3", "-m", "http.server", "8000"])  # fmt: skip
    try:
        page = until(netns, ["curl", "-sf", "http://127.0.0.1:8000/sub/one.txt"], server)
        assert page == "one\n"
    finally:
        status, err = stop(server, signal.SIGINT)
    assert status == 0, err


# -- nginx -------------------------------------------------------------------------------------


def test_nginx_serves_static_files(netns: str, site: Path) -> None:
    nginx = require("nginx-light", "nginx")
    daemon = start(["sandbox", "run", "--profile", "examples/nginx-static", "--net",
                    f"netns:{netns}", "--bind-ro", f"{site}:/srv/www", "--",
                    nginx, "-e", "stderr"])  # fmt: skip
    try:
        page = until(netns, ["curl", "-sf", "http://127.0.0.1:8080/"], daemon)
        assert page == "<h1>hello from the jail</h1>\n"
        listing = in_netns(netns, "curl", "-sf", "http://127.0.0.1:8080/sub/").stdout
        assert 'href="one.txt"' in listing and 'href="two.txt"' in listing
        missing = in_netns(netns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                           "http://127.0.0.1:8080/absent").stdout
        assert missing == "404"
    finally:
        status, err = stop(daemon)  # nginx exits cleanly on SIGTERM
    assert status == 0, err
    assert "signal 15 (SIGTERM) received, exiting" in err


# -- redis ------------------------------------------------------------------------------------


REDIS_CLI = ["redis-cli", "-p", "6379"]


def redis_argv(netns: str, tmp_path: Path) -> tuple[list[str], Path]:
    """`sandbox run` of redis-server in the redis profile, its /data a fresh directory
    owned by the profile's uid; (argv, that directory)."""
    server = require("redis-server", "redis-server")
    require("redis-tools", "redis-cli")
    uid = load_profile("examples/redis").spec.uid_range.first
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, uid, uid)
    argv = ["sandbox", "run", "--profile", "examples/redis", "--net", f"netns:{netns}",
            "--bind-rw", f"{data}:/data", "--",
            server, "--bind", "127.0.0.1", "--port", "6379", "--dir", "/data", "--logfile", ""]
    return argv, data


def test_redis_bgsave_into_a_writable_bind(netns: str, tmp_path: Path) -> None:
    """BGSAVE forks a child that writes, fsyncs and renames the snapshot in /data; a
    second redis started on the same directory loads it."""
    argv, data = redis_argv(netns, tmp_path)
    uid = load_profile("examples/redis").spec.uid_range.first
    cli = REDIS_CLI
    daemon = start(argv)
    try:
        assert until(netns, [*cli, "ping"], daemon) == "PONG\n"
        assert in_netns(netns, *cli, "set", "greeting", "hello").stdout == "OK\n"
        assert in_netns(netns, *cli, "rpush", "list", "a", "b", "c").stdout == "3\n"
        assert in_netns(netns, *cli, "bgsave").stdout == "Background saving started\n"
        deadline = time.monotonic() + WAIT
        while "rdb_bgsave_in_progress:0" not in (
                info := in_netns(netns, *cli, "info", "persistence").stdout):
            assert time.monotonic() < deadline, info
            time.sleep(0.05)
        assert "rdb_last_bgsave_status:ok" in info
        in_netns(netns, *cli, "shutdown", "nosave", check=False)  # the connection just ends
        daemon.wait(WAIT)  # it exits by itself
        status, err = stop(daemon)
    finally:
        if daemon.poll() is None:
            stop(daemon)
    assert status == 0, err
    assert "Background saving terminated with success" in err
    dump = data / "dump.rdb"
    assert dump.stat().st_uid == uid  # written by the jail, as its own host uid
    assert sorted(p.name for p in data.iterdir()) == ["dump.rdb"]  # no temp file left
    again = start(argv)
    try:
        assert until(netns, [*cli, "get", "greeting"], again) == "hello\n"
        assert in_netns(netns, *cli, "lrange", "list", "0", "-1").stdout == "a\nb\nc\n"
    finally:
        status, err = stop(again)  # SIGTERM: redis shuts down (and saves) cleanly
    assert status == 0, err


def test_redis_answers_the_admin_commands(netns: str, tmp_path: Path) -> None:
    """INFO (uname, getrusage), CLIENT LIST (getsockname) and an append-only file
    rewritten in the background: each killed redis before its call was allowed."""
    argv, data = redis_argv(netns, tmp_path)
    daemon = start(argv)
    try:
        assert until(netns, [*REDIS_CLI, "ping"], daemon) == "PONG\n"
        info = in_netns(netns, *REDIS_CLI, "info").stdout
        assert "os:Linux" in info and "used_cpu_sys:" in info
        clients = in_netns(netns, *REDIS_CLI, "client", "list").stdout
        assert "laddr=127.0.0.1:6379" in clients
        assert in_netns(netns, *REDIS_CLI, "set", "k", "v").stdout == "OK\n"
        assert in_netns(netns, *REDIS_CLI, "config", "set", "appendonly", "yes").stdout == "OK\n"
        deadline = time.monotonic() + WAIT
        while "aof_rewrite_in_progress:0" not in (
                info := in_netns(netns, *REDIS_CLI, "info", "persistence").stdout) or \
                "aof_last_bgrewrite_status:ok" not in info:
            assert time.monotonic() < deadline, info
            time.sleep(0.05)
        assert in_netns(netns, *REDIS_CLI, "ping").stdout == "PONG\n"
    finally:
        status, err = stop(daemon)
    assert status == 0, err
    assert "Background AOF rewrite finished successfully" in err
    assert (data / "appendonlydir").is_dir()


# -- shell scripts ----------------------------------------------------------------------------

SCRIPT = r"""set -e
cd /tmp
echo hello world > a.txt
cat a.txt | tr a-z A-Z > b.txt
mkdir -p d/e
cp b.txt d/e/
mv d/e/b.txt d/e/c.txt
ls -la d/e > listing.txt
rm -r d
grep -c HELLO b.txt
sed 's/H/J/' b.txt
sort < a.txt | uniq
wc -c < a.txt
head -n 1 a.txt
x=$(expr 1 + 2)
test "$x" = 3
sleep 0.1
touch a.txt
chmod 600 a.txt
ln -s a.txt l
readlink l
stat -c %s a.txt
find . -name '*.txt' | sort
awk '{print $2}' a.txt
id -u
date -u +%Y > year.txt
basename /x/y.txt .txt
( exit 3 ) || echo "subshell said $?"
sleep 0.1 &
wait $!
echo "background job: $?"
kill -0 $$ && echo "kill works"
ls /nonexistent 2>/dev/null || echo "stderr to /dev/null"
trap 'echo bye' EXIT
"""

EXPECTED = """1
JELLO WORLD
hello world
12
hello world
a.txt
12
./a.txt
./b.txt
./listing.txt
world
0
y
subshell said 3
background job: 0
kill works
stderr to /dev/null
bye
"""


def run_script(tmp_path: Path, text: str, shell: list[str]) -> subprocess.CompletedProcess[str]:
    """`text` run by `shell` in the shell profile's jail, bound in read-only as /job.sh."""
    script = tmp_path / "job.sh"
    script.write_text(text)
    script.chmod(0o644)
    tmp_path.chmod(0o755)
    return subprocess.run(
        ["sandbox", "run", "--profile", "examples/shell", "--bind-ro", f"{script}:/job.sh",
         "--", *shell, "/job.sh"],
        capture_output=True, text=True, timeout=60, env=env(), cwd=REPO, check=False)


@pytest.mark.parametrize("shell", [["dash"], ["busybox", "sh"]], ids=["dash", "busybox"])
def test_shell_profile_runs_scripts(tmp_path: Path, shell: list[str]) -> None:
    if shell[0] == "busybox":
        require("busybox-static", "busybox")
    out = run_script(tmp_path, SCRIPT, shell)
    assert out.returncode == 0, out.stderr
    assert out.stdout == EXPECTED


# What scripts reach for next: archives, xargs, timeout, in-place edits, named pipes, locks.
# Each line was killed by the policy before it allowed the call named in its comment.
TOOLS = r"""set -e
cd /tmp
id | cut -c1-5                                   # getgroups
echo one > f1; echo two > f2
tar cf t.tar f1 f2; mkdir x; tar xf t.tar -C x   # creat
cat x/f2
printf 'a\nb\n' | xargs echo                     # poll
timeout 0.1 sleep 5 || echo "timeout said $?"     # timer_create
nice -n 5 echo nicer                             # getpriority, setpriority
install -m 600 f1 f3                             # fsetxattr (ENOTSUP: no ACL to copy)
stat -c %a f3
cp -p f1 f4; cp -a x y                           # fchown (to the jail's own uid)
cat y/f1
sed -i s/one/uno/ f1                             # fchown
cat f1
mkfifo p                                         # mknodat, a FIFO
(echo through > p) &
cat p
wait
flock lock echo locked                           # open(O_RDONLY|O_CREAT), flock
sync                                             # sync (EPERM, ignored)
seq 200000 | gzip > n.gz
zcat n.gz | head -n 1                            # gettid, tgkill: gzip re-raises SIGPIPE
"""

TOOLS_EXPECTED = """uid=0
two
a b
timeout said 124
nicer
600
one
uno
through
locked
1
"""


def test_shell_profile_runs_everyday_tools(tmp_path: Path) -> None:
    out = run_script(tmp_path, TOOLS, ["dash"])
    assert out.returncode == 0, out.stderr
    assert out.stdout == TOOLS_EXPECTED


def test_shell_profile_with_proc_lists_only_its_own_processes() -> None:
    """ps, pgrep and free with --proc: the jail's own PID namespace, nothing of the
    host's (prctl PR_CAPBSET_READ, get_mempolicy; set_mempolicy and pgrep's
    epoll_create refused with an errno, not a kill)."""
    require("procps", "ps")  # not Essential in Debian: a minimal install lacks it
    script = ("sleep 5 & ps -e -o pid=,comm=; pgrep -x sleep; kill $!; "
              "wait $! || echo \"sleep ended by $?\"; free -m | head -n 1 | tr -s ' '")
    out = subprocess.run(
        ["sandbox", "run", "--profile", "examples/shell", "--proc", "--", "sh", "-c", script],
        capture_output=True, text=True, timeout=60, env=env(), cwd=REPO, check=False)
    assert out.returncode == 0, out.stderr
    pids = [line.split() for line in out.stdout.splitlines()[:3]]
    assert pids == [["1", "sh"], ["2", "sleep"], ["3", "ps"]]
    assert out.stdout.splitlines()[3:] == [
        "2", "sleep ended by 143", " total used free shared buff/cache available"]


def test_a_stopped_and_continued_jail_carries_on() -> None:
    """^Z and fg, a debugger's stop, a cgroup freeze: the sleep resumes through
    restart_syscall, which no profile names (every filter allows it)."""
    proc = subprocess.Popen(
        ["sandbox", "run", "--profile", "examples/shell", "--", "sh", "-c",
         "sleep 1.5; echo slept"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
    try:
        deadline = time.monotonic() + WAIT
        while (sleeper := _descendant(proc.pid, "sleep")) is None:
            assert time.monotonic() < deadline, "no sleep in the jail"
            time.sleep(0.02)
        time.sleep(0.2)  # in clock_nanosleep
        os.kill(sleeper, signal.SIGSTOP)
        time.sleep(0.2)
        os.kill(sleeper, signal.SIGCONT)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == "slept\n"


def _descendant(pid: int, comm: str) -> int | None:
    """A process named `comm` below `pid` (its jail's processes are its descendants)."""
    parents, names = {}, {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        names[int(entry)] = stat[stat.index("(") + 1:stat.rindex(")")]
        parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    for candidate in (p for p, name in names.items() if name == comm):
        up = candidate
        while up in parents and up != pid:
            up = parents[up]
        if up == pid:
            return candidate
    return None


def test_shell_profile_makes_no_device_nodes() -> None:
    """mknod is allowed for named pipes only: a device node is the kernel's to refuse
    too, but the policy refuses it first (exit 159, the call named)."""
    out = subprocess.run(
        ["sandbox", "run", "--profile", "examples/shell", "--", "mknod", "/tmp/null", "c", "1",
         "3"], capture_output=True, text=True, timeout=60, env=env(), cwd=REPO, check=False)
    assert out.returncode == 159, out.stderr
    assert "mknodat" in out.stderr


# -- explain, for review ----------------------------------------------------------------------

PROFILES = ["http-static", "nginx-static", "redis", "shell"]


@pytest.mark.parametrize("name", PROFILES)
def test_explain_output_is_committed_and_current(name: str) -> None:
    """policies/examples/NAME.explain.txt is what `sandbox explain` says of the profile,
    for a reviewer to read without running anything; regenerate it with
    `sandbox explain examples/NAME > policies/examples/NAME.explain.txt`, then write
    the checkout's path as <repo> (a bind source beside the profile names it)."""
    out = subprocess.run(["sandbox", "explain", f"examples/{name}"], capture_output=True,
                         text=True, timeout=60, env=env(), cwd=REPO, check=False)
    assert out.returncode == 0, out.stderr
    committed = (EXAMPLES / f"{name}.explain.txt").read_text()
    said = out.stdout.replace(str(REPO), "<repo>")
    assert said == committed, f"regenerate: {shlex.join(['sandbox', 'explain', name])}"
