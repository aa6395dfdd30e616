"""The C executor (sandbox._jail) itself: jails from a process full of busy threads,
the native entry point, exec, the seccomp listener handed to the parent, and the
Landlock rights of a directory bound after a file."""

from __future__ import annotations

import fcntl
import os
import threading
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from sandbox import _jail, bpf, landlock
from sandbox.errors import JailError
from sandbox.launcher import Launcher
from sandbox.plan import MODE_CALL, MODE_ENTRY, MODE_EXEC, Plan
from sandbox.policy import load_policy
from sandbox.seccomp import compile_policy
from sandbox.spec import BindMount, JailSpec
from tests.jailtools import run_probe, with_nofile

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")

BASE = with_nofile(JailSpec(seccomp_bpf=None), 16)
SYSTEM = replace(BASE, binds=tuple(BindMount(Path(p), Path(p)) for p in
                                   ("/usr", "/lib", "/lib64", "/bin") if os.path.exists(p)))
SPAWNS = 200


@pytest.fixture(scope="module")
def launcher():
    launcher = Launcher()
    yield launcher
    launcher.close()


def allocate() -> object:
    """Python work in the jail that needs malloc and the interpreter's locks."""
    table = {str(i): [i] * 8 for i in range(2000)}
    return len(table)


class Busy:
    """Threads that each hold a lock for their whole life and keep malloc busy with
    the GIL released (os.urandom and zlib both allocate outside it)."""

    def __init__(self, count: int = 4) -> None:
        self.stop = threading.Event()
        self.locks = [threading.Lock() for _ in range(count)]
        self.threads = [threading.Thread(target=self._work, args=(lock,), daemon=True)
                        for lock in self.locks]
        for t in self.threads:
            t.start()

    def _work(self, lock: threading.Lock) -> None:
        with lock:
            while not self.stop.is_set():
                zlib.compress(os.urandom(1 << 16))

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def test_jails_from_a_process_with_busy_threads(launcher):
    busy = Busy()
    try:
        assert all(lock.locked() for lock in busy.locks)
        assert threading.active_count() >= 5
        for i in range(SPAWNS):
            kind = i % 3
            if kind == 0:  # back into Python: glibc's fork made malloc usable
                out = run_probe(launcher, BASE, allocate, timeout=10)
                assert (out.returncode, out.value) == (0, 2000), i
            elif kind == 1:  # exec: the child ran only the executor's C
                jail = launcher.run(SYSTEM, ["/bin/true"], fds=())
                assert jail.wait(10) == 0, i
            else:  # a native entry
                assert native_report(launcher) == (b"1 0 0\n", 0), i
    finally:
        busy.close()


def native_report(launcher: Launcher) -> tuple[bytes, int]:
    """The built-in "report" entry's line (pid uid gid) and the jail's exit status."""
    r, w = os.pipe()
    try:
        jail = launcher.spawn(BASE, _jail.entry("report"), fds=[w])
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        line = f.read()
    return line, jail.wait(10)


def test_native_entry_runs_in_the_whole_jail(launcher):
    assert native_report(launcher) == (b"1 0 0\n", 0)  # PID 1, root in its user namespace
    # Its return value is the jail's exit status.
    assert launcher.spawn(BASE, _jail.entry("exit", 7)).wait(10) == 7
    assert not _jail.is_entry(lambda: None) and _jail.is_entry(_jail.entry("hold"))


def worker_filter_and_write() -> JailSpec:
    """titus's worker jail, its filter allowing `write` too (bench/jail_spawn.py's), and
    under `make test-asan` what ASan's runtime calls (tests/asan_policies.py)."""
    from sandbox.profile import load_profile
    from sandbox.rules import Rule
    from tests.asan_policies import ASAN_SYSCALLS

    worker = load_profile("titus-worker")
    extra = {"write"} | (set(ASAN_SYSCALLS) if "libasan" in os.environ.get("LD_PRELOAD", "")
                         else set())
    rules = [r for r in worker.policy.rules if r.syscall not in extra]
    policy = replace(worker.policy, rules=(*rules, *(Rule(n, "allow") for n in sorted(extra))))
    return replace(worker.spec, seccomp_bpf=compile_policy(policy))


@pytest.mark.parametrize("kind", ["entry", "entry-under-seccomp", "exec"])
def test_per_step_timings_come_back_for_every_step(kind):
    """bench/jail_spawn.py's numbers: with timings asked for, the child's CPU clock at its
    start and after each step, one a step, never going back; none when not asked for.
    Under seccomp the record is sent with nothing but `write`."""
    launcher = Launcher()
    try:
        launcher.timings = True
        if kind == "exec":
            spec, mode = SYSTEM, MODE_EXEC
            jail = launcher.run(spec, ["/bin/true"], fds=())
        else:
            spec, mode = (BASE if kind == "entry" else worker_filter_and_write()), MODE_ENTRY
            jail = launcher.spawn(spec, _jail.entry("exit", 0))
        assert jail.wait(10) == 0
        steps = len(launcher.plan(spec, mode).steps)
        assert jail.times is not None and len(jail.times) == steps + 1
        assert jail.times[0] > 0 and list(jail.times) == sorted(jail.times)
        launcher.timings = False
        untimed = launcher.spawn(BASE, _jail.entry("exit", 0))
        assert untimed.wait(10) == 0 and untimed.times is None
    finally:
        launcher.close()


def test_exec_failure_names_the_program(launcher):
    with pytest.raises(JailError) as info:
        launcher.run(SYSTEM, ["/no/such/program"], fds=())
    assert (info.value.layer, info.value.errno) == ("exec", 2)
    assert info.value.message == "/no/such/program: No such file or directory"
    assert not launcher.live


def test_seccomp_listener_is_handed_to_the_parent(launcher, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text('[seccomp]\ndefault = "allow"\ndeny = ["ptrace"]\n')
    program = compile_policy(load_policy(policy))
    plan = launcher.plan(BASE, MODE_CALL)
    steps = [*plan.steps, *bpf.steps(program, bpf.FILTER_FLAG_NEW_LISTENER)]
    with_listener = Plan(steps, plan.clone_flags, plan.slots, plan.mode)
    jail = launcher.spawn(BASE, allocate, plan=with_listener)
    assert jail.listener is not None
    assert os.readlink(f"/proc/self/fd/{jail.listener}") == "anon_inode:seccomp notify"
    assert jail.wait(10) == 0
    assert jail.listener is None  # closed when the jail was reaped


def open_fds() -> list[int]:
    """The fds open in the jail (no /proc there): F_GETFD on each number."""
    found = []
    for fd in range(64):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            continue
        found.append(fd)
    return found


def test_the_jail_keeps_no_listener_of_its_own(launcher, tmp_path):
    """A jail holding its own listener could answer its own forbidden calls: the
    executor closes its copy once the parent has taken it."""
    policy = tmp_path / "p.toml"
    policy.write_text('[seccomp]\ndefault = "allow"\ndeny = ["ptrace"]\n')
    program = compile_policy(load_policy(policy))
    plan = launcher.plan(BASE, MODE_CALL)
    steps = [*plan.steps, *bpf.steps(program, bpf.FILTER_FLAG_NEW_LISTENER)]
    jail = launcher.spawn(BASE, open_fds, plan=Plan(steps, plan.clone_flags, plan.slots,
                                                   plan.mode), result=True)
    assert jail.listener is not None
    assert jail.result(timeout=10) == [0]  # the sync socket the result goes back on


def list_dir(path: str) -> object:
    return sorted(os.listdir(path))


def test_landlock_directory_after_a_file_keeps_its_rights(launcher, tmp_path):
    if landlock.abi_version() < 1:
        pytest.skip("no Landlock on this kernel")
    tmp_path.chmod(0o755)
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a").write_text("a")
    for p in (tmp_path / "file", tmp_path / "dir", tmp_path / "dir" / "a"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    # A file bind listed first once narrowed the rights of every later path: the
    # directory lost READ_DIR and could not be listed.
    spec = replace(BASE, landlock=True, binds=(BindMount(tmp_path / "file", tmp_path / "file"),
                                               BindMount(tmp_path / "dir", tmp_path / "dir")))
    assert run_probe(launcher, spec, list_dir, (str(tmp_path / "dir"),)).value == ["a"]
    # The rules themselves: the file keeps only file rights, the directory all of its own.
    _, _, _, rules = landlock.ruleset([tmp_path / "file", tmp_path / "dir"], [],
                                      landlock.abi_version())
    (_, file_file, _), (dir_dir, _, _) = rules
    assert file_file & landlock.READ_DIR == 0 and dir_dir & landlock.READ_DIR
    assert dir_dir == landlock.READ_ONLY & landlock.handled_fs(landlock.abi_version())
