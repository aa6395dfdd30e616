"""An attacker with code execution inside a live titus worker (issue 5).

The set-up is titus itself: the real Supervisor (forked from the test, like
tests/faults and tests/fuzz do), its real jailed key holder, its real pool of
workers built from policies/titus-worker.toml.  The one change: the zygote
wraps each worker's native entry point in the rogue one of tests/native/rogue.c
(C, like the worker: the jail and its seccomp policy are exactly a worker's),
so every worker runs it inside its finished jail, exactly where a TLS bug
would hand an attacker control.  A client that opens with `ATTACK name`
gets that payload run there, holding what a live worker holds: fd 0 the
control socket the supervisor serves, fd 1 its key-holder channel, fd 2 the
jail-stderr pipe, fd 3 the client's TCP socket.  Any other client gets the
honest C worker, which is how every test proves afterwards that nothing else
was affected: the same supervisor and key holder (pids unchanged) still serve
real TLS 1.3 GETs for an RSA and an ECDSA vhost (`unharmed`).

Before each payload runs, the worker says "ready" and the test checks from
outside that this is a jailed worker holding exactly those fds (a probe that
failed to run cannot pass for a blocked one).  Payload results come back on
the client socket as one JSON line; a payload killed by seccomp sends none,
and its connection record says policy-violation.

Mapping of the issue's list.  Before: WP = test_worker_profile.py (Python probes
in a jail built from the worker profile, holding only a pipe; since the worker
is C its policy has no room for an interpreter, so those moved here), TI =
test_titus_invariants.py, LY = test_layers.py, KH = unit/test_keyholder.py
(the loop in a thread), SG = unit/test_signer.py, RK = integration/
test_remotekey.py (the test process as worker, no jail), CT = unit/
test_control.py, FT = faults/test_titus_faults.py, CF = fuzz/
test_control_fuzz.py (real forked supervisor, rogue serve in the real jail).
Here: K[id] = test_forbidden_syscall_kills_the_worker[id], others by name.

attempt                        | before                          | here (in a live titus worker)
-------------------------------|---------------------------------|-------------------------------
read files                     | WP host_files_and_processes     | K[read-key-file, read-shadow]
enumerate processes            | WP host_files_and_processes     | K[list-proc]
open a socket; connect to the  | WP no_network; FT forbidden_    | K[tcp-backend, tcp-host,
  host, 127.0.0.1, the backend |   syscall_is_logged_and_worker_ |   udp-host, socketpair,
                               |   replaced (AF_INET socket)     |   connect-held-socket-to-
                               |                                 |   backend]; sendto_on_the_
                               |                                 |   held_socket_reaches_only_
                               |                                 |   the_client
talk to a sibling worker       | WP no_sibling_over_abstract_    | no_sibling_over_an_abstract_
                               |   unix (probe)                  |   unix_socket; K[kill-sibling,
                               |                                 |   ptrace-sibling]
ptrace/kill/signal supervisor, | WP no_signal_or_ptrace (pytest  | K[kill-supervisor, kill-
  key holder, a sibling        |   as target); TI workers_are_   |   keyholder, kill-sibling,
                               |   locked_down (the worker's uid |   kill-all, ptrace-*, vm-read-
                               |   outside the jail); LY         |   keyholder], real pids
fork, exec, fork bomb          | WP forbidden; LY nproc_limit    | K[fork, fork-bomb, thread,
                               |                                 |   exec]
memory bomb: capped, killed    | none (WP drops RLIMIT_AS)       | memory_bomb_is_capped_then_
                               |                                 |   killed
unshare, setns, mount, chroot  | WP forbidden (no chroot); LY    | K[unshare, setns, mount,
                               |   mount_refused                 |   chroot]
key holder: a decryption       | SG decrypting_a_ciphertext_is_  | keyholder_never_decrypts[raw,
                               |   refused; RK rsa_key_exchange_*|   pkcs1, decrypt-op]
key holder: raw non-PSS block  | KH bad_shape_is_refused_and_    | keyholder_refuses_a_raw_block_
                               |   closes; SG random_blocks_*    |   that_is_not_pss
key holder: over the budget    | KH signs_within_budget_then_    | keyholder_budget_is_one_
                               |   refuses_and_closes; RK budget_|   signature
                               |   is_one_handshake_per_channel  |
key holder: fds passed to it   | KH fds_from_a_worker_are_dropped| no_fds_for_the_keyholder
                               |                                 |   (killed: no sendmsg)
supervisor: malformed, forged  | CF forged_messages_get_the_     | backend_of_another_address_
  messages, another vhost's    |   worker_killed_... (garbage,   |   is_refused[2, 99] (+ that
  backend, one it has no right |   unknown types, vhost of the   |   backend sees no connection;
  to                           |   other address, repeats); CT   |   control: backend_of_the_own_
                               |                                 |   address_is_given); no_fds_
                               |                                 |   for_the_supervisor (killed:
                               |                                 |   no sendmsg)
files, limits, executable      | WP host_files_and_processes,    | K[write-root, raise-rlimit,
  memory                       |   forbidden (Python probes: no  |   exec-memory, mprotect-exec]
                               |   longer in the C worker's jail)|
supervisor and key holder      | CF (supervisor only)            | unharmed() after every test
  survive all of it            |                                 |
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from sandbox import libc, notify
from tests.native import encode_args
from tests.pki import CA, Leaf
from tests.titus_harness import (
    LISTENER_FD,
    ForkedTitus,
    HTTPBackend,
    TCPBackend,
    idle_worker_fds,
    is_listener,
    is_running,
    keyholder_pid,
    open_fds,
    session_processes,
    start_time,
    worker_of,
)
from titus.wire import keyproto

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")

MAGIC = b"ATTACK "
SIGSYS_EXIT, SIGKILL_EXIT = 128 + 31, 128 + 9
# The workers' filters notify (a violation named by the supervisor, the worker SIGKILLed)
# where this kernel can; else they kill (SIGSYS, named from the audit log).
NOTIFIES = notify.available()
WAIT = 10.0  # seconds: the bound of every wait in this file
MAX_HANDSHAKE = 3  # seconds: how long an attack may run before the supervisor kills it
RSA_KEY, EC_KEY = 0, 1  # key-holder slots: one per distinct (key, cert), in vhost order
SNI = {"rsa": "rsa.test", "ec": "ec.test"}
REQUEST = b"GET /unharmed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

# -- inside the worker: tests/native/rogue.c --------------------------------------------------


class AttackedTitus(ForkedTitus):
    def __init__(self, tmp: Path, config: str) -> None:
        super().__init__(tmp, config, "tests.native:setup")


@dataclass
class Env:
    titus: AttackedTitus
    ca: CA
    leaves: dict[str, Leaf]
    backend: HTTPBackend  # the backend of vhosts rsa and ec (127.0.0.1)
    other: TCPBackend  # the backend of vhost other (127.0.0.2 only)
    keyholder: int
    supervisor: int

    @property
    def port(self) -> int:
        return self.titus.addresses[0][1]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("attacks")
    ca = CA(tmp / "pki")
    leaves = {"rsa": ca.issue(SNI["rsa"], "rsa2048"), "ec": ca.issue(SNI["ec"], "p256")}
    # Bound now, served after the fork: no thread is forked.
    backend, other = HTTPBackend("A"), TCPBackend()
    config = f"""listen 127.0.0.1:0
listen 127.0.0.2:0
min-spare-children 3
max-children 16
max-handshake-time {MAX_HANDSHAKE}
vhost rsa
\tlocal-address 127.0.0.1
\tsni-name {SNI["rsa"]}
\tkey {leaves["rsa"].key}
\tcert {leaves["rsa"].cert}
\tbackend 127.0.0.1
\tbackend-port {backend.port}
vhost ec
\tlocal-address 127.0.0.1
\tsni-name {SNI["ec"]}
\tkey {leaves["ec"].key}
\tcert {leaves["ec"].cert}
\tbackend 127.0.0.1
\tbackend-port {backend.port}
vhost other
\tlocal-address 127.0.0.2
\tkey {leaves["ec"].key}
\tcert {leaves["ec"].cert}
\tbackend 127.0.0.1
\tbackend-port {other.port}
"""
    titus = AttackedTitus(tmp, config)
    child = 0
    try:
        titus.start_forked()
        child = titus.pid
        with backend, other:
            wait_for(lambda: len(titus.worker_pids()) >= 2, "the key holder and a worker")
            env = Env(titus, ca, leaves, backend, other, keyholder_pid(titus), titus.pid)
            unharmed(env)
            yield env
    finally:
        code = titus.stop_forked()
        backend.server.server_close()
    assert code == 0, titus.log_tail()
    log = titus.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    wait_for(lambda: not session_processes(child), "every jail of the forked titus gone")


# -- the test's side ------------------------------------------------------------------------------


def wait_for(pred: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def get(env: Env, kind: str) -> bytes:
    ctx = ssl.create_default_context(cafile=str(env.ca.path))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection(("127.0.0.1", env.port), timeout=WAIT) as raw, \
            ctx.wrap_socket(raw, server_hostname=SNI[kind]) as tls:
        tls.sendall(REQUEST)
        data = b""
        for _ in range(1000):
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def unharmed(env: Env) -> None:
    """The supervisor and the key holder are the same processes as at the start, and
    they still serve real TLS (RSA and ECDSA signatures by that key holder)."""
    assert env.titus.alive(), env.titus.log_tail()
    assert keyholder_pid(env.titus) == env.keyholder and is_running(env.keyholder)
    for kind in ("rsa", "ec"):
        assert get(env, kind).endswith(b"backend A path /unharmed\n")
    assert not [r for r in env.titus.records() if r.get("event") in ("keyholder-died",
                                                                      "keyholder-restarted")]


@dataclass
class Attack:
    record: dict[str, Any]  # the supervisor's connection record
    lines: list[Any]  # what the payload reported (JSON lines), in order
    raw: bytes  # every byte the worker sent after "ready"
    worker: int  # its pid on the host
    fds: dict[int, str]  # its fds before the payload ran


Args = list[Any] | Callable[[int], list[Any]]


def _keyholder_args(values: list[Any]) -> list[Any]:
    """[[op, key, payload hex], ...], [fds] -> count, op key payload..., nfds, fds."""
    requests, fds = values[0], list(values[1]) if len(values) > 1 else []
    flat: list[Any] = [len(requests)]
    for op, key, payload in requests:
        flat += [int(op), key, bytes.fromhex(payload)]
    return [*flat, len(fds), *fds]


def _forge_args(values: list[Any]) -> list[Any]:
    fds = list(values[1]) if len(values) > 1 else []
    return [values[0], len(fds), *fds]


PAYLOAD_ARGS: dict[str, Callable[[list[Any]], list[Any]]] = {
    "ask_keyholder": _keyholder_args, "forge_handshake": _forge_args,
    "memory_bomb": lambda v: [*v, 3 * MAX_HANDSHAKE * 1000],
}


def attack(env: Env, name: str, args: Args = (), host: str = "127.0.0.1") -> Attack:
    """Run one payload in a fresh titus worker.  `args` may be a function of the worker's
    pid: it is called once the worker is known, before the payload starts."""
    first = len(env.titus.connections())
    port = env.titus.addresses[0 if host == "127.0.0.1" else 1][1]
    with socket.create_connection((host, port), timeout=WAIT) as sock:
        sock.sendall(MAGIC + name.encode() + b"\n")
        stream = sock.makefile("rb")
        assert stream.readline() == b"ready\n", "the payload did not start in the worker"
        worker = worker_of(env.titus, sock)
        assert worker is not None
        fds = check_is_a_jailed_worker(worker)
        values = args(worker) if callable(args) else list(args)
        sock.sendall(b"go " + encode_args(PAYLOAD_ARGS.get(name, list)(values)).encode()
                     + b"\n")
        raw = b""
        try:
            while chunk := stream.read1(65536):
                raw += chunk
        except ConnectionResetError:
            pass
        client = "{}:{}".format(*sock.getsockname())
    lines = []
    for line in raw.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            lines.append(line.decode(errors="replace"))
    record: dict[str, Any] = {}

    def ours() -> bool:
        for r in env.titus.connections()[first:]:
            if r["client"] == client and r["worker_pid"] == worker:
                record.update(r)
                return True
        return False

    wait_for(ours, f"the connection record of the {name} attack")
    return Attack(record, lines, raw, worker, fds)


def check_is_a_jailed_worker(pid: int) -> dict[int, str]:
    """Seen from the host: a seccomp-filtered PID 1 under its own uid, holding exactly
    the control channel, the key-holder channel, stderr and our connection."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1", status
    assert status["NSpid"].split()[-1] == "1" and int(status["Uid"].split()[0]) != 0, status
    fds = open_fds(pid)
    # ... and, where the kernel notifies, the seccomp listener the supervisor has a
    # copy of (the worker cannot use it: ioctl is forbidden).
    listener = ["anon_inode"] if NOTIFIES else []
    assert [fds.get(i, "").split(":")[0] for i in range(len(fds))] == \
        ["socket", "socket", "pipe", "socket", *listener], fds
    assert not NOTIFIES or is_listener(fds[LISTENER_FD]), fds
    return fds


def killed_by_seccomp(result: Attack, syscall: str) -> None:
    record = result.record
    assert result.raw == b"", f"the payload survived: {result.raw[:300]!r}"
    assert record["outcome"] == "policy-violation", record
    if NOTIFIES:  # the supervisor got the call itself: named, with its arguments
        assert record["worker_exit"] == SIGKILL_EXIT, record
        assert record["syscall"] == syscall, record
        assert record["violation"].startswith(f"seccomp violation: {syscall}("), record
        return
    assert record["worker_exit"] == SIGSYS_EXIT, record
    # The kernel may rate-limit its audit lines: the name is checked when it came through.
    assert record["syscall"] in (None, syscall), record


def sibling(env: Env, exclude: int) -> int:
    """An idle worker other than `exclude`: one that holds no client socket yet (fds 0-2
    only) and so will still be there after the attack (a busy one exits when done)."""
    found: list[int] = []

    def pick() -> bool:
        found[:] = [p for p in env.titus.worker_pids()
                    if p not in (exclude, env.keyholder) and idle_worker_fds(open_fds(p))]
        return bool(found)

    wait_for(pick, "a sibling worker")
    return found[0]


def log_lines(env: Env, text: str) -> int:
    """How many lines the jails wrote to stderr (the key holder's log) contain `text`."""
    return sum(1 for r in env.titus.records()
               if r.get("event") == "jail-stderr" and text in r.get("line", ""))


# -- seccomp: every forbidden syscall kills the worker --------------------------------------------

KILLS = [
    # (test id, payload, args: "<...>" is filled in once the worker is known, killing syscall)
    ("read-key-file", "read_file", ["<rsa key>"], "openat"),
    ("read-shadow", "read_file", ["/etc/shadow"], "openat"),
    ("list-proc", "list_processes", [], "openat"),
    ("tcp-backend", "tcp_connect", ["127.0.0.1", "<backend port>"], "socket"),
    ("tcp-host", "tcp_connect", ["127.0.0.1", "<host port>"], "socket"),
    ("udp-host", "udp_send", ["127.0.0.1", "<host port>"], "socket"),
    ("socketpair", "make_socketpair", [], "socketpair"),
    ("connect-held-socket-to-backend", "connect_held_socket", ["127.0.0.1", "<backend port>"],
     "connect"),
    # setsockopt is there for the receive low-water mark only (SOL_SOCKET 1, SO_RCVLOWAT 18)
    ("socket-option-rcvbuf", "set_socket_option", [1, 8], "setsockopt"),  # SO_RCVBUF
    ("socket-option-bpf-filter", "set_socket_option", [1, 26], "setsockopt"),  # SO_ATTACH_FILTER
    ("socket-option-tcp", "set_socket_option", [6, 18], "setsockopt"),  # TCP_USER_TIMEOUT
    ("kill-supervisor", "send_signal", ["<supervisor>", 9], "kill"),
    ("kill-keyholder", "send_signal", ["<keyholder>", 9], "kill"),
    ("kill-sibling", "send_signal", ["<sibling>", 9], "kill"),
    ("kill-all", "send_signal", [-1, 9], "kill"),
    ("ptrace-supervisor", "ptrace_attach", ["<supervisor>"], "ptrace"),
    ("ptrace-keyholder", "ptrace_attach", ["<keyholder>"], "ptrace"),
    ("ptrace-sibling", "ptrace_attach", ["<sibling>"], "ptrace"),
    ("vm-read-keyholder", "read_memory", ["<keyholder>"], "process_vm_readv"),
    ("fork", "forks", [1], "clone"),
    ("fork-bomb", "forks", [64], "clone"),
    ("thread", "clone3", [], "clone3"),
    ("exec", "execute", ["/bin/sh"], "execve"),
    ("unshare", "unshare_user", [], "unshare"),
    ("setns", "setns_net", [], "setns"),
    ("mount", "mount_tmpfs", [], "mount"),
    ("chroot", "chroot", [], "chroot"),
    ("write-root", "write_root", [], "mkdirat"),
    ("raise-rlimit", "raise_rlimit", [], "prlimit64"),
    ("exec-memory", "exec_memory", [], "mmap"),
    ("mprotect-exec", "mprotect_exec", [], "mprotect"),
]


@pytest.fixture(scope="module")
def host_service() -> Iterator[int]:
    """A TCP and a UDP service on the host's loopback (one port) that no worker may reach."""
    tcp = socket.create_server(("127.0.0.1", 0))
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(tcp.getsockname())
    udp.setblocking(False)
    yield tcp.getsockname()[1]
    for sock in (tcp, udp):
        with pytest.raises(BlockingIOError):  # nothing ever arrived
            sock.recvfrom(1) if sock is udp else sock.accept()
        sock.close()


@pytest.mark.parametrize(("name", "args", "syscall"), [k[1:] for k in KILLS],
                         ids=[k[0] for k in KILLS])
def test_forbidden_syscall_kills_the_worker(env, host_service, name, args, syscall):
    targets: dict[int, int] = {}  # pid -> start time of each process the attack aims at

    def resolve(worker: int) -> list[Any]:
        fixed = {"<rsa key>": str(env.leaves["rsa"].key), "<backend port>": env.backend.port,
                 "<host port>": host_service, "<supervisor>": env.supervisor,
                 "<keyholder>": env.keyholder}
        out = [sibling(env, worker) if a == "<sibling>" else fixed.get(a, a) for a in args]
        for a, value in zip(args, out, strict=True):
            if a in ("<supervisor>", "<keyholder>", "<sibling>"):
                targets[value] = start_time(value)
        return out

    killed_by_seccomp(attack(env, name, resolve), syscall)
    for pid, started in targets.items():
        assert is_running(pid) and start_time(pid) == started, f"{name} harmed {pid}"
    unharmed(env)


def test_sendto_on_the_held_socket_reaches_only_the_client(env):
    """sendto is allowed (it is how ssl writes); an address does not redirect a connected
    TCP socket: the bytes go to the attacker's own client, the other backend sees nothing."""
    before = env.other.accepted
    result = attack(env, "sendto_held_socket", ["127.0.0.1", env.other.port])
    assert result.raw in (b'escaped?{"sent": 8}\n', b'{"error": "EISCONN"}\n'), result.raw
    assert env.other.accepted == before
    unharmed(env)


def test_no_sibling_over_an_abstract_unix_socket(env):
    """Workers share one empty network namespace, where an abstract Unix name is a path
    between them.  A listener there (the test's, in that namespace) stands for a sibling
    that managed to listen; a control client in the same namespace reaches it."""
    name = b"\0titus-attack-sibling-%d" % os.getpid()
    listener: list[socket.socket] = []

    def listen_in_netns_of(worker: int) -> list[Any]:
        def body() -> None:  # setns changes only this thread's network namespace
            fd = os.open(f"/proc/{worker}/ns/net", os.O_RDONLY)
            try:
                libc.setns(fd, libc.CLONE_NEWNET)
            finally:
                os.close(fd)
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            srv.bind(name)
            srv.listen()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(name)  # the control: the name is reachable in that namespace
            srv.accept()[0].close()
            srv.setblocking(False)
            listener.append(srv)

        thread = threading.Thread(target=body)
        thread.start()
        thread.join(WAIT)
        assert listener, "could not listen in the workers' network namespace"
        return [name.decode("latin-1")]

    try:
        killed_by_seccomp(attack(env, "unix_connect", listen_in_netns_of), "socket")
        with pytest.raises(BlockingIOError):
            listener[0].accept()
    finally:
        for srv in listener:
            srv.close()
    unharmed(env)


# -- limits ---------------------------------------------------------------------------------------


def test_memory_bomb_is_capped_then_killed(env):
    """RLIMIT_AS (512M, policies/titus-worker.toml) refuses the allocation; the worker,
    sitting on what it got, is killed at max-handshake-time."""
    result = attack(env, "memory_bomb", [1024])  # twice the cap: enough to see it refused
    assert len(result.lines) == 1, f"no report, or not killed: {result.lines}"
    report = result.lines[0]
    assert report["capped"] and 0 < report["allocated_mib"] < 512, report
    record = result.record
    assert (record["outcome"], record["worker_exit"]) == ("timeout", 128 + 9), record
    assert MAX_HANDSHAKE * 1000 <= record["duration_ms"] < (MAX_HANDSHAKE + 5) * 1000, record
    unharmed(env)


# -- the key holder: signatures only, well-formed only, within the budget -------------------------

SECRET = b"\x03\x03" + bytes(range(46))  # a TLS 1.2 RSA-kex premaster secret


def keyholder_requests(env: Env, requests: list[list[Any]], fds: tuple[int, ...] = ()
                       ) -> list[Any]:
    result = attack(env, "ask_keyholder", [requests, list(fds)])
    assert result.record["outcome"] == "ok", result.record  # the payload ran to its end
    assert len(result.lines) == 1, result.lines
    return result.lines[0]


@pytest.mark.parametrize("how", ["raw", "pkcs1", "decrypt-op"])
def test_keyholder_never_decrypts(env, how):
    rsa_public = env.leaves["rsa"].private_key.public_key()
    ciphertext = rsa_public.encrypt(SECRET, padding.PKCS1v15()).hex()
    op = {"raw": keyproto.Op.SIGN_RSA_RAW, "pkcs1": keyproto.Op.SIGN_RSA_PKCS1,
          "decrypt-op": 4}[how]  # 4: no such operation in the protocol
    logged = log_lines(env, "; closed")
    answers = keyholder_requests(env, [[int(op), RSA_KEY, ciphertext],
                                       [keyproto.Op.SIGN_ECDSA, EC_KEY, "00" * 32]])
    if how == "decrypt-op":
        assert answers == ["closed"], answers  # a protocol error: no answer at all
    else:
        assert answers == [{"status": "REFUSED_SHAPE", "payload": ""}, "closed"], answers
    assert SECRET.hex() not in json.dumps(answers)
    wait_for(lambda: log_lines(env, "; closed") > logged, "the key holder's refusal in the log")
    unharmed(env)


def test_keyholder_refuses_a_raw_block_that_is_not_pss(env):
    block = (b"\x00\x01" + b"\xff" * 202 + b"\x00" + os.urandom(51)).hex()  # 256 bytes, PKCS#1
    answers = keyholder_requests(env, [[keyproto.Op.SIGN_RSA_RAW, RSA_KEY, block],
                                       [keyproto.Op.SIGN_RSA_RAW, RSA_KEY, "00" + "5a" * 255]])
    assert answers == [{"status": "REFUSED_SHAPE", "payload": ""}, "closed"], answers
    unharmed(env)


def test_keyholder_budget_is_one_signature(env):
    digests = [os.urandom(32) for _ in range(3)]
    logged = log_lines(env, "refused REFUSED_BUDGET")
    answers = keyholder_requests(env, [[keyproto.Op.SIGN_ECDSA, EC_KEY, d.hex()]
                                       for d in digests])
    assert [a if isinstance(a, str) else a["status"] for a in answers] == \
        ["OK", "REFUSED_BUDGET", "closed"], answers
    # The one signature was real (the channel was live), over the attacker's digest.
    public = env.leaves["ec"].private_key.public_key()
    public.verify(bytes.fromhex(answers[0]["payload"]), digests[0],
                  ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    wait_for(lambda: log_lines(env, "refused REFUSED_BUDGET") > logged, "the budget refusal")
    unharmed(env)


def test_no_fds_for_the_keyholder(env):
    """A worker cannot pass fds at all: sendmsg is not in its policy (the C worker never
    needs it).  The key holder's own refusal of fds from a worker stays proved in
    tests/unit/test_keyholder.py."""
    result = attack(env, "ask_keyholder", [[[keyproto.Op.SIGN_ECDSA, EC_KEY, "00" * 32]], [0, 3]])
    killed_by_seccomp(result, "sendmsg")
    held = set(open_fds(env.keyholder).values())
    assert not {result.fds[0], result.fds[3]} & held, "the key holder got a worker's fd"
    unharmed(env)


# -- the supervisor: a backend only for the connection's own address, no fds taken ----------------


@pytest.mark.parametrize("vhost", [2, 99])
def test_backend_of_another_address_is_refused(env, vhost):
    """vhost 2 is reachable only through 127.0.0.2; this worker's client came to 127.0.0.1."""
    before = env.other.accepted
    result = attack(env, "forge_handshake", [vhost])
    assert result.raw == b"", result.raw  # killed before any answer
    assert (result.record["outcome"], result.record["detail"]) == \
        ("killed", "asked for a backend it has no right to"), result.record
    events = [r for r in env.titus.records()
              if r.get("event") == "forbidden-backend-request" and r.get("pid") == result.worker]
    assert [e["vhost"] for e in events] == [vhost], events
    time.sleep(0.2)  # a connection the broker started would have been accepted by now
    assert env.other.accepted == before
    unharmed(env)


def test_backend_of_the_own_address_is_given(env):
    """The control for the test above: the same message through 127.0.0.2 gets the backend."""
    before = env.other.accepted
    result = attack(env, "forge_handshake", [2], host="127.0.0.2")
    assert result.lines == [{"reply": "BackendReady", "fds": 1}], result.lines
    wait_for(lambda: env.other.accepted == before + 1, "the backend's connection")
    unharmed(env)


def test_no_fds_for_the_supervisor(env):
    """A control message carrying the worker's key-holder channel and client socket cannot
    be sent: sendmsg is not in the worker policy.  (Were it sent, the supervisor reads
    without room for fds, so the kernel would discard them.)"""
    result = attack(env, "forge_handshake", [0, [1, 3]])
    killed_by_seccomp(result, "sendmsg")
    held = set(open_fds(env.supervisor).values())
    assert not {result.fds[1], result.fds[3]} & held, "the supervisor got a worker's fd"
    unharmed(env)
