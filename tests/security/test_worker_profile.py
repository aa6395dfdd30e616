"""policies/titus-worker.toml: the jail of a worker that runs C only.

The worker's connection path is C (titus/worker/*.c, entered by the executor
after the jail's last layer), so its seccomp policy holds what that C calls and
nothing an interpreter would need.  The sandbox issue's acceptance list (files,
processes, network, siblings, signals, ptrace, fork, exec, namespaces, mounts,
limits, executable memory) runs as C payloads in live titus workers, under this
very policy: tests/security/test_worker_attacks.py.  Here: the policy's exact
allowlist (a syscall added to it is a decision, made in this file too), that a
Python probe cannot even start in it (what the Python worker needed is gone),
and the one layer fact that needs no seccomp.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import replace

import pytest

from sandbox.launcher import Launcher
from sandbox.profile import load_profile
from sandbox.spec import IPC_SYSCALLS, IpcMode
from tests.jailtools import run_probe

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")

# What the C worker calls after its jail is complete, and why (titus/worker/*.c).
C_WORKER_SYSCALLS = {
    "recvfrom", "sendto",        # the client, the backend, the key holder (recv/send)
    "recvmsg",                   # control messages with their fds (SCM_RIGHTS in only)
    "poll", "ppoll",             # waiting (ppoll: aarch64's poll)
    "shutdown",                  # half-close, both ways
    "close",                     # fds beyond the one a control message may carry
    "getrandom",                 # OpenSSL's reseed in every worker (RAND_poll)
    "getpid",                    # OpenSSL's fork check before drawing random bytes
    "clock_gettime",             # deadlines, when the vDSO does not answer
    "brk", "munmap", "mremap", "madvise",  # malloc (@memory)
    "exit", "exit_group",        # @process-exit
}
C_WORKER_CONDITIONAL = {
    "mmap", "mprotect",          # never PROT_EXEC (@memory)
    "setsockopt",                # SO_RCVLOWAT only: a streaming client read in batches
}


@pytest.fixture(scope="module")
def launcher():
    launcher = Launcher()
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def worker():
    # The probes are forks of pytest, whose address space can already exceed the
    # worker's RLIMIT_AS budget (512M); that limit is not under test here.
    spec = load_profile("titus-worker").spec
    return replace(spec, rlimits=tuple((k, v) for k, v in spec.rlimits if k != "as"))


def test_the_shared_ipc_namespace_is_unusable() -> None:
    """Workers share one empty IPC namespace (ipc = "shared-empty"): that is safe only
    while no System V IPC or POSIX message queue call is allowed."""
    profile = load_profile("titus-worker")
    assert profile.spec.ipc == IpcMode.SHARED_EMPTY
    assert profile.policy is not None and profile.policy.default == "kill-process"
    reachable = set(profile.policy.allowed()) | set(profile.policy.conditional())
    assert not IPC_SYSCALLS & reachable, "an IPC call in a jail that shares IPC"


def test_the_allowlist_is_the_c_workers() -> None:
    policy = load_profile("titus-worker").policy
    assert set(policy.allowed()) == C_WORKER_SYSCALLS
    assert set(policy.conditional()) == C_WORKER_CONDITIONAL
    assert policy.default == "kill-process"


def test_a_python_probe_cannot_even_start(launcher, worker) -> None:
    """The interpreter's own start-up syscalls (signals, fcntl, ...) are not there; the
    same probe runs in the same jail without the filter (so it is not broken)."""
    assert run_probe(launcher, worker, lambda: "ran").killed_by_seccomp
    assert run_probe(launcher, replace(worker, seccomp_bpf=None), lambda: "ran").value == "ran"


def attempt_unshare_user() -> object:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    return "unshared"


def test_unshare_user_needs_seccomp(launcher, worker):
    """DESIGN §4: with caps dropped and no_new_privs, unshare(CLONE_NEWUSER) still works."""
    out = run_probe(launcher, replace(worker, seccomp_bpf=None), attempt_unshare_user)
    assert out.value == "unshared"
