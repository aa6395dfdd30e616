"""Profiles: the format, the search path, the shipped profiles really working, explain/learn."""

from __future__ import annotations

import datetime
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sandbox.errors import PolicyError
from sandbox.explain import explain, summary
from sandbox.learn import learned_policy_toml
from sandbox.profile import Profile, find_profile, load_profile, parse_size
from sandbox.seccomp import compile_policy
from sandbox.spec import DEFAULT_NOFILE, NOFILE_KEPT, BindMount, IpcMode, NetworkMode
from sandbox.syscalls import syscall_number
from tests.unit.sandbox.test_seccomp import run_filtered, start_filtered, wait_filtered

POLICIES = Path(__file__).resolve().parents[3] / "policies"
KILLED = ("signal", signal.SIGSYS)
OK = ("exit", 0)

# DESIGN.md section 4: the minimal allowlist measured for an initialised CPython
# 3.11 serving TLS on inherited sockets, plus what the worker brief adds (epoll
# for selectors; epoll_pwait/ppoll are the aarch64 spellings).
# The titus worker is C (titus/worker/*.c): what it calls once its jail is built.
WORKER_ALLOWED = {
    "recvfrom", "recvmsg", "sendto", "poll", "ppoll", "shutdown", "close", "getrandom",
    "getpid", "clock_gettime", "brk", "munmap", "mremap", "madvise", "exit", "exit_group",
}  # fmt: skip
WORKER_CONDITIONAL = {"mmap", "mprotect", "setsockopt"}
NEVER_IN_A_WORKER = {
    "socket", "connect", "bind", "open", "openat", "openat2", "fork", "vfork", "clone",
    "clone3", "execve", "execveat", "ptrace", "kill", "tkill", "tgkill", "unshare", "setns",
    "mount", "umount2", "pivot_root", "chroot", "setrlimit", "prlimit64", "setuid", "setresuid",
    "sendmsg", "write", "read", "ioctl", "fcntl",
}  # fmt: skip


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"))
    return path


# ---------------------------------------------------------------------------
# The format


FULL = """
[profile]
description = "every key"

[jail]
network = "loopback"
hostname = "box"
empty_root = true
mount_proc = true
writable_tmpfs = "/tmp"
writable_tmpfs_size = "8M"
binds = ["/usr", { source = "/etc/ssl", target = "/ssl" }, { source = "/srv", writable = true }]
no_new_privs = true
dumpable = false
landlock = true
uid_first = 300000
uid_count = 1000
cwd = "/srv"
env = { PATH = "/usr/bin", HOME = "/tmp" }

[jail.rlimits]
nofile = "kept"
core = 0
fsize = "1M"
nproc = 0
as = "1G"
cpu = "unlimited"

[seccomp]
default = "kill-process"
allow = ["read", "write", "exit_group"]
"""


def test_every_jail_key(tmp_path: Path) -> None:
    prof = load_profile(write(tmp_path, "full.toml", FULL))
    spec = prof.spec
    assert prof.name == "full" and prof.description == "every key"
    assert spec.name == "full"
    assert spec.network is NetworkMode.LOOPBACK
    assert spec.hostname == "box"
    assert spec.mount_proc and spec.landlock and spec.empty_root and not spec.dumpable
    assert spec.writable_tmpfs == Path("/tmp") and spec.writable_tmpfs_size == 8 << 20
    assert spec.binds == (
        BindMount(Path("/usr"), Path("/usr"), False),
        BindMount(Path("/etc/ssl"), Path("/ssl"), False),
        BindMount(Path("/srv"), Path("/srv"), True),
    )
    assert (spec.uid_range.first, spec.uid_range.count) == (300000, 1000)
    assert spec.cwd == Path("/srv") and dict(spec.env) == {"PATH": "/usr/bin", "HOME": "/tmp"}
    limits = dict(spec.rlimits)
    assert limits == {
        "nofile": NOFILE_KEPT,
        "core": 0,
        "fsize": 1 << 20,
        "nproc": 0,
        "as": 1 << 30,
        "cpu": resource.RLIM_INFINITY,
    }
    assert spec.rlimit_values(3)[0] == (resource.RLIMIT_NOFILE, 3)
    assert spec.seccomp_bpf == compile_policy(prof.policy)


def test_defaults_and_no_seccomp(tmp_path: Path) -> None:
    prof = load_profile(write(tmp_path, "bare.toml", '[profile]\ndescription = "x"\n'))
    assert prof.policy is None and prof.spec.seccomp_bpf is None
    assert prof.spec.network is NetworkMode.SHARED_EMPTY
    assert prof.spec.ipc is IpcMode.NEW  # what bwrap and nsjail give each jail
    # An ordinary program needs more than fds 0-2 (ld.so alone opens a few).
    assert dict(prof.spec.rlimits) == {"nofile": DEFAULT_NOFILE, "core": 0}


@pytest.mark.parametrize(
    ("jail", "line", "message"),
    [
        ('network = "loopbak"', 2, "did you mean 'loopback'?"),
        ("hostnme = 'x'", 2, "did you mean 'hostname'?"),
        ("empty_root = 'yes'", 2, "'empty_root' must be bool"),
        ("uid_first = 0", 2, "not a valid host uid range"),
        ("writable_tmpfs = 'tmp'", 2, "absolute"),
        ("writable_tmpfs_size = '16Q'", 2, "expected a size"),
        ('binds = ["usr"]', 2, "absolute"),
        ('binds = [{ source = "/usr", writeable = true }]', 2, "did you mean 'writable'?"),
        ("[jail.rlimits]\ncore = 'kept'", 3, "only for nofile"),
        ("[jail.rlimits]\nnfile = 3", 3, "did you mean 'nofile'?"),
        ('ipc = "shared"', 2, "unknown ipc 'shared'; one of new, shared-empty"),
        ('ipc = "shared-empty"', 2, "without a [seccomp] table"),
        ('ipc = "shared-empty"\n[seccomp]\ndefault = "allow"\ndeny = ["ptrace"]', 2,
         "needs a [seccomp] policy whose default is not allow"),
        ('ipc = "shared-empty"\n[seccomp]\nallow = ["read", "shmat", "mq_open"]', 2,
         'ipc = "shared-empty" with mq_open, shmat allowed'),
    ],
)
def test_jail_errors(tmp_path: Path, jail: str, line: int, message: str) -> None:
    path = write(tmp_path, "p.toml", f"[jail]\n{jail}\n")
    with pytest.raises(PolicyError) as info:
        load_profile(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert message in str(info.value)


def test_unknown_key_in_profile_table(tmp_path: Path) -> None:
    path = write(tmp_path, "p.toml", '[profile]\ndescription = "x"\nnmae = "y"\n')
    with pytest.raises(PolicyError, match=r"p.toml:3: unknown key 'nmae'"):
        load_profile(path)


def test_parse_size() -> None:
    assert parse_size("16M") == 16 << 20
    assert parse_size("512k") == 512 << 10
    assert parse_size("2GiB") == 2 << 30
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError):
        parse_size(-1)


def test_overrides(tmp_path: Path) -> None:
    prof = load_profile("titus-worker", network="host", binds=["/usr"])
    assert prof.spec.network is NetworkMode.HOST
    assert prof.spec.binds == (BindMount(Path("/usr"), Path("/usr")),)
    again = prof.with_jail(network="new", hostname="h")
    assert again.spec.network is NetworkMode.NEW and again.spec.hostname == "h"
    assert again.spec.seccomp_bpf == prof.spec.seccomp_bpf
    with pytest.raises(TypeError, match="no field"):
        prof.with_jail(netwrk="host")
    # An override is held to what the file would be: no shared IPC without a policy.
    bare = write(tmp_path, "bare.toml", "[jail]\nhostname = 'x'\n")
    assert load_profile("titus-worker", ipc="new").spec.ipc is IpcMode.NEW
    with pytest.raises(PolicyError, match="without a \\[seccomp\\] table"):
        load_profile(bare, ipc="shared-empty")


# ---------------------------------------------------------------------------
# Finding profiles


def test_find_profile_by_name() -> None:
    assert find_profile("titus-worker") == POLICIES / "titus-worker.toml"
    assert find_profile("examples/http-static") == POLICIES / "examples" / "http-static.toml"


def test_search_path_env_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write(second, "titus-worker.toml", '[profile]\ndescription = "mine"\n')
    monkeypatch.setenv("SANDBOX_POLICY_PATH", f"{first}:{second}")
    assert find_profile("titus-worker") == second / "titus-worker.toml"
    assert load_profile("titus-worker").description == "mine"


def test_unknown_profile_suggests() -> None:
    with pytest.raises(FileNotFoundError, match="did you mean 'titus-worker'"):
        find_profile("titus-wroker")
    with pytest.raises(FileNotFoundError):
        load_profile("/nonexistent/profile.toml")


# ---------------------------------------------------------------------------
# The shipped profiles


@pytest.fixture(scope="module")
def worker() -> Profile:
    return load_profile("titus-worker")


@pytest.fixture(scope="module")
def keyholder() -> Profile:
    return load_profile("titus-keyholder")


def shipped() -> list[Path]:
    return sorted(
        p for p in POLICIES.rglob("*.toml") if "groups" not in p.relative_to(POLICIES).parts
    )


def test_shipped_profiles_load_and_compile_for_both_arches() -> None:
    names = [str(p.relative_to(POLICIES).with_suffix("")) for p in shipped()]
    assert {"titus-worker", "titus-keyholder", "examples/http-static"} <= set(names)
    for path in shipped():
        prof = load_profile(path)
        assert prof.policy is not None and prof.spec.seccomp_bpf
        assert prof.description
        for arch in ("x86_64", "aarch64"):
            assert len(compile_policy(prof.policy, arch)) % 8 == 0


def test_worker_allowlist_is_exactly_the_measured_one(worker: Profile) -> None:
    p = worker.policy
    assert p is not None and p.default == "kill-process"
    assert set(p.allowed()) == WORKER_ALLOWED
    assert set(p.conditional()) == WORKER_CONDITIONAL
    for name in NEVER_IN_A_WORKER:
        assert p.is_allowed(name) is False, name
    # mmap/mprotect: never PROT_EXEC.
    for name in ("mmap", "mprotect"):
        ((cond,),) = [r.args for r in p.rules_for(name)]
        assert (cond.arg, cond.op, cond.mask, cond.value) == (2, "masked-eq", 4, 0)
    # setsockopt: the receive low-water mark (SOL_SOCKET, SO_RCVLOWAT) and nothing else.
    ((level, option),) = [r.args for r in p.rules_for("setsockopt")]
    assert (level.arg, level.op, level.value) == (1, "==", 1)
    assert (option.arg, option.op, option.value) == (2, "==", 18)


def test_worker_jail(worker: Profile) -> None:
    spec = worker.spec
    assert spec.network is NetworkMode.SHARED_EMPTY and spec.empty_root and not spec.binds
    assert spec.no_new_privs and not spec.dumpable
    limits = dict(spec.rlimits)
    # Its 3 fds plus room for the client and backend sockets it is handed.
    assert 5 <= limits["nofile"] <= 8
    assert limits["core"] == limits["nproc"] == 0
    assert 0 < limits["as"] <= 1 << 30


def test_keyholder_cannot_open_or_create_sockets(keyholder: Profile) -> None:
    p = keyholder.policy
    assert p is not None
    for name in ("socket", "socketpair", "connect", "open", "openat", "clone", "execve"):
        assert p.is_allowed(name) is False, name
    for name in ("recvmsg", "sendmsg", "getrandom", "futex"):
        assert p.is_allowed(name) is True, name
    assert keyholder.spec.network is NetworkMode.SHARED_EMPTY and keyholder.spec.empty_root
    assert keyholder.spec.uid_range.first != load_profile("titus-worker").spec.uid_range.first


@pytest.mark.parametrize(
    "probe",
    [
        lambda: os.open("/etc/hostname", os.O_RDONLY) and 0,  # openat
        lambda: socket.socket(socket.AF_INET) and 0,  # socket
        lambda: socket.socket(socket.AF_UNIX) and 0,  # socket, even unix
        lambda: os.fork() and 0,  # clone
        lambda: os.execv("/bin/true", ["true"]) or 0,  # execve
        lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)) or 0,  # prlimit64
        lambda: os.kill(1, 0) or 0,  # kill
    ],
    ids=["open", "socket-inet", "socket-unix", "fork", "exec", "setrlimit", "kill"],
)
def test_worker_kills_forbidden_actions(worker: Profile, probe: object) -> None:
    assert run_filtered(worker.spec.seccomp_bpf, probe) == KILLED  # type: ignore[arg-type]


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# That the worker profile is enough for real TLS (handshake, key holder, pump) is proved
# by the C worker itself: every worker of tests/integration/test_cworker.py and
# test_remotekey.py runs under this profile's filter.

def test_keyholder_profile_receives_channels_and_signs(keyholder: Profile) -> None:
    """SCM_RIGHTS channel passing + in-process ECDSA/RSA-PSS under the keyholder filter."""
    import selectors

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(65537, 2048)
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), 32)
    prehashed = utils.Prehashed(hashes.SHA256())
    # Warm up: lazy imports inside cryptography must happen before the jail closes.
    ec_key.sign(b"\0" * 32, ec.ECDSA(prehashed))
    rsa_key.sign(b"\0" * 32, pss, prehashed)
    control, control_inside = socket.socketpair()

    def serve() -> int:
        control.close()
        sel = selectors.DefaultSelector()
        sel.register(control_inside, selectors.EVENT_READ)
        served = 0
        while served < 2:
            for item, _ in sel.select(5):
                if item.fileobj is control_inside:
                    _, fds, _, _ = socket.recv_fds(control_inside, 16, 4)
                    channel = socket.socket(fileno=fds[0])
                    channel.setblocking(False)
                    sel.register(channel, selectors.EVENT_READ)
                    continue
                channel = item.fileobj  # type: ignore[assignment]
                digest = channel.recv(32)
                sig = ec_key.sign(digest, ec.ECDSA(prehashed))
                channel.settimeout(5)
                channel.sendall(sig + rsa_key.sign(digest, pss, prehashed))
                sel.unregister(channel)
                channel.close()
                served += 1
        return 0

    pid = start_filtered(keyholder.spec.seccomp_bpf, serve)
    control_inside.close()
    for _ in range(2):
        mine, theirs = socket.socketpair()
        socket.send_fds(control, [b"c"], [theirs.fileno()])
        theirs.close()
        digest = os.urandom(32)
        mine.settimeout(5)
        mine.sendall(digest)
        reply = b""
        while chunk := mine.recv(4096):
            reply += chunk
        rsa_key.public_key().verify(reply[-256:], digest, pss, prehashed)
        ec_key.public_key().verify(reply[:-256], digest, ec.ECDSA(prehashed))
    assert wait_filtered(pid) == OK


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs /usr/bin/python3")
def test_http_static_example_serves_under_its_filter(tmp_path: Path) -> None:
    """The exec'd example: python3 -m http.server starts, serves and exits under kill-process."""
    prof = load_profile("examples/http-static")
    www = tmp_path / "www"
    (www / "sub").mkdir(parents=True)
    (www / "hello.txt").write_text("hello from the jail\n")
    port = _free_port()
    argv = ["/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1", str(port),
            "--directory", str(www)]  # fmt: skip
    env = dict(prof.spec.env)
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115

    def exec_server() -> int:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        os.execve(argv[0], argv, env)
        return 9

    pid = start_filtered(prof.spec.seccomp_bpf, exec_server)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done or time.monotonic() > deadline:
                    pytest.fail(f"server did not start: {(tmp_path / 'server.log').read_text()}")
                time.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        assert urllib.request.urlopen(f"{base}/hello.txt").read() == b"hello from the jail\n"
        assert b"hello.txt" in urllib.request.urlopen(f"{base}/").read()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{base}/missing")
        assert info.value.code == 404
    finally:
        os.kill(pid, signal.SIGINT)  # the server's clean shutdown path runs under the filter too
        ended = wait_filtered(pid)
    assert ended == OK, (tmp_path / "server.log").read_text()


# ---------------------------------------------------------------------------
# explain, summary, learn


def test_explain_worker_states_policy_facts(worker: Profile) -> None:
    text = explain(worker)
    assert "It cannot open files: there is no filesystem (empty read-only root)" in text
    assert "openat" in text
    assert "It cannot create sockets" in text and "shared, empty network namespace" in text
    assert "It cannot start processes or threads" in text and "nproc limit is 0" in text
    assert "It cannot make memory executable" in text and "PROT_EXEC" in text
    assert "mmap only when prot has no PROT_EXEC" in text
    assert "SIGSYS" in text
    assert "It cannot change its limits" in text and "prlimit64" in text


def test_explain_follows_the_policy(tmp_path: Path) -> None:
    """Change the file, and the sentences change: nothing is canned."""
    text = explain(
        load_profile(
            write(
                tmp_path,
                "open.toml",
                """
[jail]
network = "host"
binds = ["/usr"]
[seccomp]
default = "errno:EPERM"
allow = ["read", "execve", "clone", "mmap", "mprotect"]
[[seccomp.rules]]
syscall = "openat"
args = [{ arg = 2, op = "masked-eq", mask = "O_ACCMODE", value = 0 }]
""",
            )
        )
    )
    assert "It can open files (openat only when flags has no O_ACCMODE (read-only))" in text
    assert "/usr (read-only)" in text
    assert "HOST" in text
    assert "It can start processes (clone allowed)" in text
    assert "It can execute programs (execve)" in text
    assert "It can map executable memory" in text
    assert "fails with EPERM" in text
    assert "cannot create sockets" in text
    bare = explain(load_profile(write(tmp_path, "bare.toml", "[jail]\nhostname = 'x'\n")))
    assert "NO seccomp filter" in bare
    assert "pushing input into the terminal it runs on (ioctl TIOCSTI)" in bare
    assert "It cannot push input into a terminal" in text  # the guard, with a filter


def test_summary_counts_per_arch(worker: Profile) -> None:
    text = summary(worker)
    p = worker.policy
    assert p is not None
    for arch in ("x86_64", "aarch64"):
        allowed = [n for n in p.allowed() if syscall_number(n, arch) is not None]
        cond = [n for n in p.conditional() if syscall_number(n, arch) is not None]
        expected = f"{arch}: {len(allowed) + len(cond)} syscalls allowed ({len(allowed)} "
        assert expected in text
    assert "default action: kill-process" in text
    assert "allow if prot has no PROT_EXEC" in text
    assert "network: shared-empty" in text and "nproc=0" in text
    assert "explicitly denied (kill-process):" in text


def test_learned_policy_round_trips(worker: Profile, tmp_path: Path) -> None:
    observed = ["read", "write", "exit_group", "getrandom", "read"]
    text = learned_policy_toml(observed, based_on=worker)
    prof = load_profile(write(tmp_path, "learned.toml", text))
    assert prof.policy is not None
    assert prof.policy.allowed() == ["exit_group", "getrandom", "read", "write"]
    assert prof.policy.default == "kill-process"
    assert prof.spec.seccomp_bpf is not None
    # Everything but the name and the program is the worker's jail.
    from dataclasses import replace

    assert replace(prof.spec, name="x", seccomp_bpf=None) == replace(
        worker.spec, name="x", seccomp_bpf=None
    )
    assert "learned from titus-worker" in prof.description
    with pytest.raises(ValueError, match="opnat"):
        learned_policy_toml(["opnat"], None)
    alone = load_profile(write(tmp_path, "alone.toml", learned_policy_toml(["getpid"], None)))
    assert alone.policy is not None and alone.policy.allowed() == ["getpid"]


def test_learned_policy_keeps_the_daily_keys(tmp_path: Path) -> None:
    """The audit-log fallback writes the jail it learned in: /dev, more tmpfs, the ids
    inside and the limits stay (a learned shell profile without /dev breaks scripts)."""
    from dataclasses import replace

    shell = load_profile("examples/shell")
    spec = replace(shell.spec, tmpfs=((Path("/run"), 1 << 20),), uid=33, gid=34, ids=40,
                   drop_capabilities=False, memory_limit=96 << 20, pids_limit=8, cpus=0.25,
                   timeout=2.5)
    text = learned_policy_toml(["getpid"], based_on=replace(shell, spec=spec))
    prof = load_profile(write(tmp_path, "learned.toml", text))
    assert replace(prof.spec, name="x", seccomp_bpf=None) == replace(
        spec, name="x", seccomp_bpf=None)


def test_learned_policy_runs(tmp_path: Path) -> None:
    """A learned policy is a real filter: what was observed works, the rest is killed."""
    observed = ["exit_group", "getpid", "brk", "munmap", "madvise", "futex", "rt_sigreturn"]
    prof = load_profile(write(tmp_path, "l.toml", learned_policy_toml(observed, None)))
    assert run_filtered(prof.spec.seccomp_bpf, lambda: 0 if os.getpid() else 1) == OK
    assert run_filtered(prof.spec.seccomp_bpf, lambda: 0 if os.getppid() else 1) == KILLED


def test_profiles_do_not_need_the_cwd(tmp_path: Path) -> None:
    """Loading by name works from anywhere (search path is absolute)."""
    code = "from sandbox.profile import load_profile;print(load_profile('titus-keyholder').name)"
    env = {**os.environ, "PYTHONPATH": str(POLICIES.parent)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "titus-keyholder"


def test_ids_are_checked_with_file_and_line(tmp_path: Path) -> None:
    """uid and gid must be among the mapped ids; the error names the line to change."""
    spec = load_profile(write(tmp_path, "ok.toml", "[jail]\nids = 34\nuid = 33\n")).spec
    assert (spec.ids, spec.uid, spec.gid) == (34, 33, 0)
    one = load_profile(write(tmp_path, "one.toml", "[jail]\nuid = 1000\n")).spec
    assert (one.ids, one.uid) == (1, 1000)  # one id: the program's own, as bwrap maps it
    cases = {
        '[jail]\nids = 8\nhostname = "x"\nuid = 8\n':
            (4, "uid 8 is not mapped inside the jail: ids = 8 maps 0-7; raise ids to 9 or more"),
        "[jail]\nids = 8\ngid = 100\n": (3, "gid 100 is not mapped inside the jail"),
        "[jail]\nids = 0\n": (2, "ids must be a whole number of at least 1, not 0"),
        '[jail]\nids = "many"\n': (2, "ids must be a whole number of at least 1"),
        "[jail]\nuid_first = 300000\nuid_count = 10\nids = 11\n":
            (4, "ids = 11 is more than the 10 host uids of the jail range"),
        "[jail]\ndrop_capabilities = 1\n": (2, "'drop_capabilities' must be bool"),
    }
    for text, (line, message) in cases.items():
        with pytest.raises(PolicyError) as info:
            load_profile(write(tmp_path, "bad.toml", text))
        assert str(info.value).startswith(f"{tmp_path / 'bad.toml'}:{line}: {message}"), text


def test_summary_and_explain_show_the_id_map(tmp_path: Path) -> None:
    prof = load_profile(write(tmp_path, "ids.toml",
                              "[jail]\nids = 34\nuid_first = 300000\nuid_count = 1000\n"
                              '[seccomp]\nallow = ["read", "setuid"]\n'))
    assert ("  id map: uids and gids 0-33 -> a block of 34 host uids (and gids) H..H+33; "
            "setgroups denied\n") in summary(prof)
    assert ("It runs as unprivileged uids (a block of 34 from 300000-300999, ids 0-33 "
            "inside, starting as uid 0 and gid 0) in its own user namespace") in explain(prof)
    one = load_profile(write(tmp_path, "one.toml", "[jail]\nuid = 7\n"))
    assert "  id map: uid 7 -> host uid H, gid 0 -> host gid H; setgroups denied\n" in (
        summary(one))
