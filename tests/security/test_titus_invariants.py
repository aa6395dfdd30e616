"""DESIGN §3's process invariants, checked on a real titus (a subprocess, as root).

§3.1  No byte of a private key in the supervisor or any worker while TLS
      connections that used the remote key are open (/proc/PID/mem scan); the
      same scan finds the keys in the key holder, and every needle in a decoy
      process that holds the key file.
§3.2  Every connection is its own worker: its own host uid and PID namespace,
      where it is PID 1.  A worker is not dumpable, has no capabilities,
      no_new_privs and a seccomp filter; a process with a worker's uid can
      neither read nor ptrace it, nor signal another worker, the key holder
      or the supervisor.
§3.5  Two workers never share randomness: server randoms and ECDHE key shares,
      read from the raw server bytes (TLS 1.3 ServerHello key_share, TLS 1.2
      ServerKeyExchange), differ across 200 connections per version.
§3.6  When a worker exits nothing of it survives: its pid is reaped, its PID
      namespace is empty and its host uid is used by no process.

How processes are found:
* workers serving *our* connections: the server side of each client TCP
  connection (its inode, from /proc/net/tcp) is held by exactly one child of
  titus: the worker it was handed to (the supervisor closes its copy);
* the key holder: the only jailed child whose UTS hostname is the one
  policies/titus-keyholder.toml gives it (read with nsenter), which must also
  be the earliest started jailed child (titus starts it before any worker)
  unless the log says it was restarted, and which no connection record names.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.memscan import locate_secrets
from tests.pki import CA, Leaf
from tests.titus_harness import ROOT, HTTPBackend, Titus

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
SNI = {"rsa": "rsa.test", "ec": "ec.test"}
MAX_CHILDREN = 24
# A uid range of our own: other titus instances (other tests running at the same
# time) use the default range, and the §3.6 test looks for our uids host-wide.
UID_COUNT = 4096
UID_FIRST = 3_000_000 + (os.getpid() % 1000) * UID_COUNT
WAIT = 10.0  # seconds: the bound of every wait in this file


# -- the titus under test ----------------------------------------------------------------------


@dataclass
class Env:
    titus: Titus
    ca: CA
    leaves: dict[str, Leaf]  # "rsa" -> RSA-2048, "ec" -> P-256


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("invariants")
    ca = CA(tmp / "pki")
    leaves = {"rsa": ca.issue(SNI["rsa"], "rsa2048"), "ec": ca.issue(SNI["ec"], "p256")}
    with HTTPBackend("inv") as backend:
        vhosts = "".join(f"""
[[vhost]]
name = "{kind}"
sni-name = "{SNI[kind]}"
key = "{leaf.key}"
cert = "{leaf.cert}"
backend = "127.0.0.1"
backend-port = {backend.port}
""" for kind, leaf in leaves.items())
        config = f"""min-spare-children = 2
max-children = {MAX_CHILDREN}
max-handshake-time = 5

[[listen]]
address = "127.0.0.1"
port = 0
{vhosts}
[jail]
uid-first = {UID_FIRST}
uid-count = {UID_COUNT}
"""
        with Titus(tmp, config, suffix=".toml") as titus:
            yield Env(titus, ca, leaves)


def client_context(ca: CA, version: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    ctx.minimum_version = ctx.maximum_version = VERSIONS[version]
    return ctx


# -- /proc -------------------------------------------------------------------------------------


def status(pid: int) -> dict[str, str] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}
    except (FileNotFoundError, ProcessLookupError):
        return None


def host_uid(pid: int) -> int | None:
    st = status(pid)
    return int(st["Uid"].split()[0]) if st else None


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: identifies a process across pid reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[19])
    except (FileNotFoundError, ProcessLookupError):
        return None


def pid_ns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/pid").st_ino


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError), \
                    open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(p) for p in f.read().split())
    return out


def jailed_children(titus: Titus) -> list[int]:
    """titus's children that run under a non-root host uid: the key holder and the workers."""
    assert titus.proc is not None
    return [p for p in children(titus.proc.pid) if host_uid(p) not in (None, 0)]


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def uts_hostname(pid: int) -> str | None:
    """The hostname in the UTS namespace of `pid`; None if the process is gone."""
    out = subprocess.run(["nsenter", "--target", str(pid), "--uts", "uname", "-n"],
                         capture_output=True, text=True, timeout=WAIT)
    if out.returncode != 0:
        assert start_time(pid) is None, f"nsenter failed on a live process: {out.stderr}"
        return None
    return out.stdout.strip()


def profile_hostname(profile: str) -> str:
    with open(ROOT / "policies" / f"{profile}.toml", "rb") as f:
        return tomllib.load(f)["jail"]["hostname"]


def identify_keyholder(titus: Titus) -> int:
    keyholder_name = profile_hostname("titus-keyholder")
    assert keyholder_name != profile_hostname("titus-worker"), \
        "the profiles no longer tell the key holder from a worker by hostname"
    jails = {}  # pid -> (start time, hostname) of each live jailed child
    for pid in jailed_children(titus):
        name, started = uts_hostname(pid), start_time(pid)
        if name is not None and started is not None:
            jails[pid] = (started, name)
    named = [p for p, (_, name) in jails.items() if name == keyholder_name]
    assert len(named) == 1, f"jailed children {jails}: {named} have hostname {keyholder_name}"
    keyholder = named[0]
    restarts = [r for r in titus.records() if r.get("event") == "keyholder-restarted"]
    if restarts:
        assert keyholder == restarts[-1]["pid"]
    else:
        assert keyholder == min(jails, key=lambda p: jails[p][0]), \
            "the key holder is not the first jail titus started"
    return keyholder


# -- connections held open mid-stream ----------------------------------------------------------


def server_socket_inode(client: socket.socket, server_port: int) -> int:
    """Inode of the server side of `client`'s TCP connection (host netns, /proc/net/tcp)."""
    _, client_port = client.getsockname()[:2]
    with open("/proc/self/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            if int(local.split(":")[1], 16) == server_port and \
                    int(remote.split(":")[1], 16) == client_port:
                return inode
    raise LookupError(f"no server socket for client port {client_port}")


def holders_of_socket(inode: int, pids: list[int]) -> list[int]:
    target = f"socket:[{inode}]"
    out = []
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(FileNotFoundError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        out.append(pid)
                        break
    return out


def worker_of(titus: Titus, client: socket.socket) -> int:
    """The child of titus that holds the server side of `client`'s connection."""
    assert titus.proc is not None
    inode = server_socket_inode(client, titus.port)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        holders = holders_of_socket(inode, children(titus.proc.pid))
        if holders:
            assert len(holders) == 1, f"socket {inode} held by {holders}"
            return holders[0]
        time.sleep(0.02)
    raise TimeoutError(f"no child of titus holds the server socket {inode}")


def worker_tcp_sockets(titus: Titus, client: socket.socket) -> list[str]:
    """For a failure message: "local->remote" of every TCP socket of the worker serving
    `client` (a rare flake once showed a client its own request echoed back)."""
    try:
        worker = worker_of(titus, client)
        inodes = set()
        for fd in os.listdir(f"/proc/{worker}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{worker}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
        out = []
        with open("/proc/self/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[9]) in inodes:
                    out.append(f"{_hexaddr(fields[1])}->{_hexaddr(fields[2])} st={fields[3]}")
        return out
    except (OSError, TimeoutError, LookupError) as e:
        return [f"unknown: {e}"]


def _hexaddr(text: str) -> str:
    ip, port = text.split(":")
    return f"{socket.inet_ntoa(bytes.fromhex(ip)[::-1])}:{int(port, 16)}"


class Held:
    """One TLS connection through titus, left open after an HTTP exchange (keep-alive)."""

    def __init__(self, env: Env, kind: str, version: str) -> None:
        self.env, self.kind, self.version = env, kind, version
        raw = socket.create_connection(("127.0.0.1", env.titus.port), timeout=WAIT)
        self.tls = client_context(env.ca, version).wrap_socket(raw, server_hostname=SNI[kind])
        self.client_port = self.tls.getsockname()[1]
        self.exchange()
        self.worker = worker_of(env.titus, self.tls)

    def exchange(self) -> None:
        self.tls.sendall(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = self.tls.recv(65536)
            assert chunk, "titus closed a connection that should stay open"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")]
        assert lengths, (f"no Content-Length in {head!r}; the worker's TCP sockets: "
                         f"{worker_tcp_sockets(self.env.titus, self.tls)}")
        length = lengths[0]
        while len(body) < length:
            chunk = self.tls.recv(65536)
            assert chunk
            body += chunk
        assert body == b"backend inv path /held\n"
        assert self.tls.version() == f"TLSv{self.version}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.tls.close()


@contextlib.contextmanager
def held_connections(env: Env, plan: list[tuple[str, str]]) -> Iterator[list[Held]]:
    held: list[Held] = []
    try:
        for kind, version in plan:
            held.append(Held(env, kind, version))
        yield held
    finally:
        for h in held:
            h.close()


MIXED = [("rsa", "1.3"), ("ec", "1.3"), ("rsa", "1.2"), ("ec", "1.2"), ("rsa", "1.3"),
         ("ec", "1.2")]


def wait_records(env: Env, held: list[Held], first: int) -> dict[int, dict]:
    """The connection record of each held connection, by client port: the record (from
    index `first` on) with its client port and the worker we saw holding its socket.
    (Loopback reuses client ports quickly, so the port alone does not say which.)"""
    want = {(h.client_port, h.worker) for h in held}
    deadline = time.monotonic() + WAIT
    while True:
        found = {}
        for r in env.titus.connections()[first:]:
            key = (int(r["client"].rsplit(":", 1)[1]), r["worker_pid"])
            if r["client"].startswith("127.0.0.1:") and key in want:
                found[key[0]] = r
        if len(found) == len(want) or time.monotonic() > deadline:
            assert len(found) == len(want), f"{len(want) - len(found)} records missing"
            return found
        time.sleep(0.05)


# -- §3.1: no key material outside the key holder ----------------------------------------------


def minimal_bytes(n: int) -> tuple[bytes, bytes]:
    """(big-endian, little-endian) minimal-length byte strings of n."""
    be = n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")
    return be, be[::-1]


# In the key holder the key lives as OpenSSL BIGNUMs (little-endian limbs on
# this machine); it wipes the PEM and DER it loaded them from (remnants may
# stay).  So only these forms must be found there; every needle is proven
# findable on the decoy below.
KEYHOLDER_MUST_SHOW = {"rsa": ("p/le", "q/le", "d/le"), "ec": ("x/le",)}


def key_needles(leaf: Leaf) -> dict[str, bytes]:
    key = leaf.private_key
    out: dict[str, bytes] = {}
    if isinstance(key, rsa.RSAPrivateKey):
        nums = key.private_numbers()
        ints = {"p": nums.p, "q": nums.q, "d": nums.d,
                "dp": nums.dmp1, "dq": nums.dmq1, "qinv": nums.iqmp}
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        ints = {"x": key.private_numbers().private_value}
    for name, value in ints.items():
        out[f"{name}/be"], out[f"{name}/le"] = minimal_bytes(value)
    out["der/pkcs8"] = key.private_bytes(serialization.Encoding.DER,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
    out["der/traditional"] = key.private_bytes(serialization.Encoding.DER,
                                               serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption())
    body = [line for line in leaf.key.read_bytes().splitlines() if not line.startswith(b"-----")]
    out["pem/lines"] = b"\n".join(body)
    out["pem/base64"] = b"".join(body)
    for name, needle in out.items():
        assert len(needle) >= 16, f"{name} is too short to be a needle"
    return out


def all_needles(env: Env) -> dict[str, bytes]:
    return {f"{kind}:{name}": needle for kind, leaf in env.leaves.items()
            for name, needle in key_needles(leaf).items()}


# Holds the key the way a leaky process would: the file's text, its DER, the
# numbers as bytes.  Proves that every needle can be found in another process.
DECOY = r"""
import sys
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import rsa
held = []
for path in sys.argv[1:]:
    pem = open(path, "rb").read()
    held.append(pem)
    held.append(b"".join(l for l in pem.splitlines() if not l.startswith(b"-----")))
    key = s.load_pem_private_key(pem, None)
    for fmt in (s.PrivateFormat.PKCS8, s.PrivateFormat.TraditionalOpenSSL):
        held.append(key.private_bytes(s.Encoding.DER, fmt, s.NoEncryption()))
    n = key.private_numbers()
    ints = [n.p, n.q, n.d, n.dmp1, n.dmq1, n.iqmp] if isinstance(key, rsa.RSAPrivateKey) \
        else [n.private_value]
    for i in ints:
        be = i.to_bytes((i.bit_length() + 7) // 8, "big")
        held += [be, be[::-1]]
print("ready", flush=True)
sys.stdin.read()
"""


def canaries(env: Env) -> dict[str, bytes]:
    """Public bytes every titus process holds in some form, per vhost certificate: its
    DER, a line of its PEM, or its public key's number (either byte order, as a BIGNUM
    keeps it).  Finding one shows the scan really read that process's memory, not a
    run of failed reads.  Names are public:KIND:FORM."""
    out = {}
    for kind, leaf in env.leaves.items():
        pem = leaf.cert.read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
        out[f"public:{kind}:der"] = cert.public_bytes(serialization.Encoding.DER)
        out[f"public:{kind}:pem"] = pem.splitlines()[2]
        key = cert.public_key()
        number = key.public_numbers().n if isinstance(key, rsa.RSAPublicKey) \
            else key.public_numbers().x
        be = number.to_bytes((number.bit_length() + 7) // 8, "big")
        out[f"public:{kind}:number-be"], out[f"public:{kind}:number-le"] = be, be[::-1]
    return out


def unread_kinds(public: dict[str, bytes], found: dict) -> list[str]:
    """Certificate kinds of which no public form was found in a process."""
    kinds = {name.split(":")[1] for name in public}
    seen = {name.split(":")[1] for name in found if name.startswith("public:")}
    return sorted(kinds - seen)


def test_scanner_finds_every_needle_in_a_process_holding_the_key(env):
    needles = all_needles(env)
    decoy = subprocess.Popen([sys.executable, "-c", DECOY,
                              *(str(leaf.key) for leaf in env.leaves.values())],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert decoy.stdout is not None and decoy.stdout.readline() == b"ready\n"
        found = locate_secrets(decoy.pid, needles)
    finally:
        decoy.kill()
        decoy.wait(WAIT)
    assert sorted(set(needles) - set(found)) == []


def test_no_key_material_in_supervisor_or_workers_while_connections_are_open(env):
    titus = env.titus
    secrets, public = all_needles(env), canaries(env)
    first_record = len(titus.connections())
    with held_connections(env, MIXED) as held:
        keyholder = identify_keyholder(titus)
        workers = [p for p in jailed_children(titus) if p != keyholder]
        busy = {h.worker for h in held}
        assert busy <= set(workers) and len(busy) == len(held)
        scans: dict[int, dict[str, tuple[int, str]]] = {}
        zygotes = titus.zygote_pids()
        assert len(zygotes) == 1
        for pid in [titus.proc.pid, *zygotes, *workers, keyholder]:
            try:
                scans[pid] = locate_secrets(pid, secrets | public)
            except (FileNotFoundError, ProcessLookupError):
                # Only a worker of an earlier connection may end meanwhile.
                assert pid not in busy and pid not in (titus.proc.pid, keyholder)
                assert start_time(pid) is None
        for h in held:  # every connection is still alive and usable after the scans
            h.exchange()
    assert len(scans) >= len(held) + 3
    unread = {pid: unread_kinds(public, found) for pid, found in scans.items()
              if unread_kinds(public, found)}
    assert unread == {}, f"the scan did not read these processes (certificates not seen): {unread}"
    in_keyholder = scans.pop(keyholder)
    leaks = {pid: {name: f"{addr:#x} {region}" for name, (addr, region) in found.items()
                   if name in secrets}
             for pid, found in scans.items() if set(found) & set(secrets)}
    assert leaks == {}, f"private key bytes outside the key holder: {leaks}"
    must = {f"{kind}:{name}" for kind, names in KEYHOLDER_MUST_SHOW.items() for name in names}
    assert sorted(must - set(in_keyholder)) == [], \
        f"the scan does not find the keys in the key holder {keyholder}: {sorted(in_keyholder)}"
    # The process scanned as the key holder served no connection, and is still there.
    records = wait_records(env, held, first_record)
    assert {r["worker_pid"] for r in records.values()} == busy
    assert host_uid(keyholder) not in {r["worker_uid"] for r in titus.connections()}
    assert identify_keyholder(titus) == keyholder


# -- §3.2: a process, a uid and a PID namespace per connection ---------------------------------


def test_each_connection_has_its_own_uid_and_pid_namespace(env):
    titus = env.titus
    supervisor_ns = pid_ns(titus.proc.pid)
    first_record = len(titus.connections())
    with held_connections(env, MIXED + MIXED[:2]) as held:
        keyholder = identify_keyholder(titus)
        pids = [h.worker for h in held]
        uids = [host_uid(p) for p in pids]
        namespaces = [pid_ns(p) for p in pids]
        nspids = [status(p)["NSpid"].split() for p in pids]
        for h in held:
            h.exchange()
        keyholder_uid, keyholder_ns = host_uid(keyholder), pid_ns(keyholder)
    assert len(set(pids)) == len(held)
    assert all(u not in (None, 0) for u in uids), uids
    assert len(set(uids)) == len(held), uids
    assert keyholder_uid not in uids
    assert all(UID_FIRST <= u < UID_FIRST + UID_COUNT for u in uids)
    assert len(set(namespaces)) == len(held), namespaces
    assert supervisor_ns not in namespaces and keyholder_ns not in namespaces
    for pid, nspid in zip(pids, nspids, strict=True):
        assert len(nspid) == 2 and nspid[0] == str(pid) and nspid[1] == "1", nspid
    # The log agrees: each record names the worker and uid we saw holding its socket.
    records = wait_records(env, held, first_record)
    for h, pid, uid in zip(held, pids, uids, strict=True):
        assert (records[h.client_port]["worker_pid"], records[h.client_port]["worker_uid"]) \
            == (pid, uid)


# -- §3.2: nothing to ptrace, read or signal ---------------------------------------------------

# Runs as root, becomes the given uid (no capabilities), then tries what a
# worker that escaped its PID namespace and seccomp but kept its uid could
# try.  A dumpable decoy of the same uid, its own child, shows each attempt
# can succeed.
PROBE = r"""
import ctypes, errno, json, os, sys, time
uid, own = int(sys.argv[1]), int(sys.argv[2])
others = [int(a) for a in sys.argv[3:]]
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                       ctypes.c_ulong]
PTRACE_SEIZE, PR_SET_DUMPABLE = 0x4206, 4
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
r, w = os.pipe()
decoy = os.fork()
if decoy == 0:
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    os.write(w, b"x")
    time.sleep(30)
    os._exit(0)
os.read(r, 1)

def err(code):
    return errno.errorcode.get(code, str(code))

def attempt(pid, kill=True):
    out = {}
    if kill:
        try:
            os.kill(pid, 0)
            out["kill"] = "ok"
        except OSError as e:
            out["kill"] = err(e.errno)
    try:
        os.close(os.open(f"/proc/{pid}/mem", os.O_RDONLY))
        out["mem"] = "ok"
    except OSError as e:
        out["mem"] = err(e.errno)
    # SEIZE does not stop the tracee; our exit detaches it again.
    out["ptrace"] = "ok" if libc.ptrace(PTRACE_SEIZE, pid, None, None) == 0 \
        else err(ctypes.get_errno())
    return out

result = {"uid": os.getuid(), "caps": open("/proc/self/status").read().split("CapEff:")[1]
          .split()[0], "decoy": attempt(decoy), "own": attempt(own, kill=False),
          "others": {str(p): attempt(p) for p in others}}
os.kill(decoy, 9)
os.waitpid(decoy, 0)
print(json.dumps(result))
"""

DENIED = {"EPERM", "EACCES"}


def test_workers_are_locked_down(env):
    titus = env.titus
    with held_connections(env, MIXED[:3]) as held:
        keyholder = identify_keyholder(titus)
        busy = [h.worker for h in held]
        workers = [p for p in jailed_children(titus) if p != keyholder]
        assert set(busy) <= set(workers)
        statuses, mem_owner = {}, {}
        for pid in workers:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                mem_owner[pid] = os.stat(f"/proc/{pid}/mem").st_uid
                statuses[pid] = status(pid)
            if pid not in mem_owner or statuses[pid] is None:  # it ended meanwhile
                assert pid not in busy, f"worker {pid} vanished while its connection was open"
                statuses.pop(pid, None)
        assert set(busy) <= set(statuses)
        me, *others = busy
        my_uid = host_uid(me)
        probe = subprocess.run(
            [sys.executable, "-c", PROBE, str(my_uid), str(me), *map(str, others),
             str(titus.proc.pid), str(keyholder)],
            capture_output=True, text=True, timeout=WAIT * 2, cwd="/")
        for h in held:
            h.exchange()
    for pid, st in statuses.items():
        assert st["NoNewPrivs"] == "1", (pid, st["NoNewPrivs"])
        assert st["Seccomp"] == "2", (pid, st["Seccomp"])  # SECCOMP_MODE_FILTER
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(st[cap], 16) == 0, (pid, cap, st[cap])
        # Not dumpable: the kernel makes /proc/PID/* belong to root, not to the worker.
        assert int(st["Uid"].split()[0]) != 0 and mem_owner[pid] == 0, (pid, mem_owner[pid])
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout)
    assert result["uid"] == my_uid and int(result["caps"], 16) == 0
    assert result["decoy"] == {"kill": "ok", "mem": "ok", "ptrace": "ok"}, result["decoy"]
    assert set(result["own"].values()) <= DENIED, result["own"]
    assert len(result["others"]) == len(others) + 2
    for pid, tried in result["others"].items():
        assert set(tried.values()) <= DENIED, (pid, tried)


# -- §3.5: no shared randomness ----------------------------------------------------------------

HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


def records_of(data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 5 <= len(data):
        ctype, _version, length = struct.unpack_from("!BHH", data, pos)
        if pos + 5 + length > len(data):
            return
        yield ctype, data[pos + 5:pos + 5 + length]
        pos += 5 + length


def plaintext_handshake(data: bytes) -> list[tuple[int, bytes]]:
    """The server's handshake messages sent before ChangeCipherSpec: the unencrypted ones."""
    stream = b""
    for ctype, payload in records_of(data):
        if ctype == 20:  # ChangeCipherSpec: everything after it is encrypted
            break
        assert ctype != 21, f"alert from the server: {payload.hex()}"
        assert ctype == 22, f"unexpected record type {ctype} before ChangeCipherSpec"
        stream += payload
    messages, pos = [], 0
    while pos + 4 <= len(stream):
        mtype, length = stream[pos], int.from_bytes(stream[pos + 1:pos + 4], "big")
        assert pos + 4 + length <= len(stream), "truncated handshake message"
        messages.append((mtype, stream[pos + 4:pos + 4 + length]))
        pos += 4 + length
    return messages


@dataclass
class ServerHello:
    version: int  # the negotiated one (supported_versions for 1.3)
    random: bytes
    extensions: dict[int, bytes]


def parse_server_hello(body: bytes) -> ServerHello:
    legacy_version = int.from_bytes(body[0:2], "big")
    random = body[2:34]
    pos = 35 + body[34]  # session id
    pos += 3  # cipher suite, compression
    extensions: dict[int, bytes] = {}
    if pos < len(body):
        end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
        assert end == len(body), "ServerHello extensions overrun"
        pos += 2
        while pos < end:
            etype, elen = struct.unpack_from("!HH", body, pos)
            extensions[etype] = body[pos + 4:pos + 4 + elen]
            pos += 4 + elen
    version = legacy_version
    if 43 in extensions:  # supported_versions
        version = int.from_bytes(extensions[43], "big")
    return ServerHello(version, random, extensions)


def server_key_share(data: bytes) -> tuple[int, bytes, bytes]:
    """(TLS version, server random, server ECDHE public value) from the server's raw bytes."""
    messages = plaintext_handshake(data)
    hellos = [parse_server_hello(body) for mtype, body in messages if mtype == 2]
    assert len(hellos) == 1 and hellos[0].random != HRR_RANDOM, "expected one ServerHello"
    hello = hellos[0]
    if hello.version == 0x0304:
        ks = hello.extensions[51]  # key_share: group, length, key_exchange
        group, length = struct.unpack_from("!HH", ks, 0)
        share = ks[4:4 + length]
        assert len(share) == length and length in (32, 65, 97), (group, length)
        return hello.version, hello.random, share
    assert hello.version == 0x0303
    # RFC 8446 §4.1.3: a TLS 1.3 server that negotiates 1.2 ends its random so.
    assert hello.random[24:] == b"DOWNGRD\x01", "not where the server random is"
    ske = [body for mtype, body in messages if mtype == 12]  # ServerKeyExchange
    assert len(ske) == 1, "no ServerKeyExchange: not an ephemeral key exchange"
    body = ske[0]
    assert body[0] == 3, "ECParameters must be a named curve"
    length = body[3]
    share = body[4:4 + length]
    assert len(share) == length and length in (32, 65, 97), length
    return hello.version, hello.random, share


def capture_handshake(env: Env, kind: str, version: str) -> tuple[bytes, tuple[int, int]]:
    """Every byte the server sent during a handshake (client over MemoryBIO), and the
    worker that served it: (pid, start time), unique even if the kernel reuses the pid."""
    ctx = client_context(env.ca, version)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=SNI[kind])
    received = b""
    with socket.create_connection(("127.0.0.1", env.titus.port), timeout=WAIT) as sock:
        for _ in range(100):
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if pending := outgoing.read():
                    sock.sendall(pending)
                data = sock.recv(65536)
                assert data, "titus closed the connection during the handshake"
                received += data
                incoming.write(data)
        else:
            raise AssertionError("handshake did not finish in 100 rounds")
        assert tls.version() == f"TLSv{version}"
        worker = worker_of(env.titus, sock)
        worker_started = start_time(worker)
        assert worker_started is not None
        with contextlib.suppress(ssl.SSLError):
            tls.unwrap()  # close_notify: the worker ends its connection cleanly
        if pending := outgoing.read():
            with contextlib.suppress(OSError):
                sock.sendall(pending)
    return received, (worker, worker_started)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_workers_never_share_randomness(env, version):
    count = 200
    kinds = ["rsa", "ec"] * (count // 2)
    deadline = time.monotonic() + 55
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda kind: capture_handshake(env, kind, version), kinds))
    assert time.monotonic() < deadline, "200 connections took too long"
    shares = [server_key_share(data) for data, _ in results]
    expected = 0x0304 if version == "1.3" else 0x0303
    assert {v for v, _, _ in shares} == {expected}
    randoms = [r for _, r, _ in shares]
    publics = [s for _, _, s in shares]
    assert len(set(randoms)) == count, f"{count - len(set(randoms))} repeated server randoms"
    assert len(set(publics)) == count, f"{count - len(set(publics))} repeated key shares"
    # ... and they came from `count` different workers.
    assert len({worker for _, worker in results}) == count


# -- §3.6: nothing survives a worker -----------------------------------------------------------


def processes_with_uid(uid: int) -> list[int]:
    out = []
    for pid in all_pids():
        st = status(pid)
        if st and (str(uid) in st["Uid"].split() or str(uid) in st["Gid"].split()):
            out.append(pid)
    return out


def survivors_in_pid_ns(inode: int) -> list[int]:
    """Processes in the PID namespace with this inode number that are not its PID 1.

    Called once that namespace's PID 1 is reaped: by then the kernel has killed
    and reaped everything else in it.  nsfs recycles inode numbers, so the next
    jail may already own this one: its own PID 1 is no survivor of the old
    namespace (a namespace has one PID 1, ever; a worker cannot fork).
    """
    out = []
    for pid in all_pids():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            if os.stat(f"/proc/{pid}/ns/pid").st_ino == inode:
                st = status(pid)
                if st is not None and st["NSpid"].split()[-1] != "1":
                    out.append(pid)
    return out


def processes_in_pid_ns(inode: int) -> list[int]:
    out = []
    for pid in all_pids():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            if os.stat(f"/proc/{pid}/ns/pid").st_ino == inode:
                out.append(pid)
    return out


def test_nothing_survives_a_worker(env):
    first_record = len(env.titus.connections())
    with held_connections(env, MIXED[:4]) as held:
        seen = [(h, h.worker, host_uid(h.worker), pid_ns(h.worker), start_time(h.worker))
                for h in held]
        for _, pid, uid, ns, _ in seen:  # while it runs, the scans see it, and only it
            assert processes_with_uid(uid) == [pid] and processes_in_pid_ns(ns) == [pid]
    records = wait_records(env, held, first_record)
    for h, pid, uid, ns, started in seen:
        deadline = time.monotonic() + WAIT
        while start_time(pid) == started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert start_time(pid) != started, f"worker {pid} still exists after its connection"
        assert survivors_in_pid_ns(ns) == [], f"processes left in worker {pid}'s PID namespace"
        assert processes_with_uid(uid) == [], f"processes still run as uid {uid} of worker {pid}"
        assert records[h.client_port]["worker_pid"] == pid
        assert records[h.client_port]["worker_exit"] == 0
