"""Bytes through a real titus: nothing lost, half-closes cross the proxy, errors close
both sides, and a client that does not read costs bounded memory (DESIGN.md §2 step 4,
§3 invariant 7).

The client is pyOpenSSL (its own bundled OpenSSL, not the one titus runs) on a
non-blocking socket; its SSL calls are serialised by a lock so that one thread
can send while another receives, and every wait is bounded by a deadline.
Backends are threads of this process (tests/titus_harness.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass

import pytest
from OpenSSL import SSL

from tests.pki import CA
from tests.titus_harness import (
    SinkBackend,
    StreamBackend,
    Titus,
    is_running,
    keyholder_pid,
    open_fds,
    pattern,
    pattern_stream,
    tcp_inodes,
    worker_of,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")

MB = 1 << 20
BULK = 100 * MB  # each way, through one connection
SEND = 3 * MB  # what the client sends in the half-close tests
REPLY = 8 * MB  # what the sink backends answer
FLOOD = 200 * MB  # what a flooding backend would send if it could
RESET_AFTER = 4 * MB  # the resetting backend sends this much, then RST
RSS_LIMIT_KB = 64 * 1024
CLIENT_SEED, BULK_SEED = 11, 23

VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
LINGER_RESET = (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder)
RESET_OUTCOMES = {"client-reset", "backend-reset", "error", "timeout", "worker-died"}
NAMES = ("bulk.test", "sink.test", "first.test", "refused.test", "flood.test", "reset.test",
         "late.test")
LATE_READ = 0.5  # the late backend's pause before its first read


@functools.lru_cache
def sha_of_pattern(n: int, seed: int = 7) -> str:
    digest = hashlib.sha256()
    for piece in pattern_stream(n, seed):
        digest.update(piece)
    return digest.hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Env:
    titus: Titus
    ca: CA
    bulk: StreamBackend
    sink: SinkBackend
    first: SinkBackend
    flood: StreamBackend
    resetting: StreamBackend
    late: SinkBackend
    refused_port: int


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    ca = CA(tmp / "pki")
    leaf = ca.issue(NAMES[0], "p256", extra_names=NAMES[1:])
    # Bound but never listening: a connect to it is refused, and no one else can take it.
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    refused_port = refused.getsockname()[1]
    with StreamBackend(BULK, seed=BULK_SEED) as bulk, SinkBackend(REPLY) as sink, \
            SinkBackend(REPLY, reply_first=True) as first, StreamBackend(FLOOD) as flood, \
            StreamBackend(FLOOD, reset_after=RESET_AFTER) as resetting, \
            SinkBackend(read_after=LATE_READ) as late:
        ports = dict(zip(NAMES, (bulk.port, sink.port, first.port, refused_port, flood.port,
                                 resetting.port, late.port), strict=True))
        vhosts = "".join(f"""
vhost
	sni-name {name}
	key {leaf.key}
	cert {leaf.cert}
	backend 127.0.0.1
	backend-port {port}
""" for name, port in ports.items())
        config = f"""
listen 127.0.0.1:0
min-spare-children 2
max-children 16
max-handshake-time 5
backend-connect-timeout 3
{vhosts}"""
        with Titus(tmp, config) as titus:
            yield Env(titus, ca, bulk, sink, first, flood, resetting, late, refused_port)
    refused.close()


class Client:
    """A pyOpenSSL client on a non-blocking socket; every call has a deadline."""

    def __init__(self, env: Env, sni: str, version: str = "1.3", timeout: float = 10) -> None:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(VERSIONS[version])
        ctx.set_max_proto_version(VERSIONS[version])
        ctx.load_verify_locations(str(env.ca.path))
        ctx.set_verify(SSL.VERIFY_PEER, lambda *args: args[-1])
        self.sock = socket.create_connection(("127.0.0.1", env.titus.port), timeout=5)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.conn = SSL.Connection(ctx, self.sock)
        self.conn.set_tlsext_host_name(sni.encode())
        self.conn.set_connect_state()
        self.lock = threading.Lock()  # an SSL object must not be used by two threads at once
        self.call(self.conn.do_handshake, timeout=timeout)
        assert self.conn.get_protocol_version_name() == f"TLSv{version}"

    def call(self, fn, *args, timeout: float = 10):
        deadline = time.monotonic() + timeout
        poller = select.poll()
        while True:
            with self.lock:
                try:
                    return fn(*args)
                except SSL.WantReadError:
                    events = select.POLLIN
                except SSL.WantWriteError:
                    events = select.POLLOUT
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{getattr(fn, '__name__', fn)}: no progress in {timeout}s")
            poller.register(self.sock.fileno(), events)
            poller.poll(min(left, 0.2) * 1000)

    def recv(self, n: int = 256 * 1024, timeout: float = 10) -> bytes:
        """Data, or b"" at the peer's close_notify; other endings raise."""
        try:
            return self.call(self.conn.recv, n, timeout=timeout)
        except SSL.ZeroReturnError:
            return b""

    def send_all(self, data: bytes, timeout: float = 10) -> None:
        view, off = memoryview(data), 0
        while off < len(view):
            off += self.call(self.conn.send, view[off:off + 256 * 1024], timeout=timeout)

    def read_to_close_notify(self, limit: int, timeout: float = 20) -> bytes:
        """Everything up to the peer's close_notify (at most `limit` bytes)."""
        deadline, out = time.monotonic() + timeout, bytearray()
        while len(out) <= limit:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no close_notify after {len(out)} bytes in {timeout}s")
            chunk = self.recv(timeout=left)
            if not chunk:
                return bytes(out)
            out += chunk
        raise AssertionError(f"more than {limit} bytes before close_notify")

    def close_notify(self) -> None:
        """Send our close_notify (a TLS half-close) without waiting for the peer's."""
        self.call(self.conn.shutdown)

    def tcp_eof(self, timeout: float = 5) -> bool:
        """True when the TCP stream has ended (FIN) right after what TLS consumed."""
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        if not poller.poll(timeout * 1000):
            return False
        return self.sock.recv(1, socket.MSG_PEEK) == b""

    def reset(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def record_of(env: Env, client: Client, timeout: float = 10) -> dict:
    return env.titus.wait_event(lambda r: r.get("event") == "connection"
                                and r.get("client") == f"127.0.0.1:{client.port}", timeout)


def wait_gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(pid):
            return True
        time.sleep(0.02)
    return False


def vm_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


# -- 1. 100 MB each way through one connection ------------------------------------------


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_100mb_each_way(env, version):
    index = len(env.bulk.conns)
    client = Client(env, "bulk.test", version)
    errors: list[BaseException] = []
    sent = hashlib.sha256()

    def sender() -> None:
        try:
            for piece in pattern_stream(BULK, CLIENT_SEED):
                client.send_all(piece, timeout=20)
                sent.update(piece)
            client.close_notify()
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    started = time.monotonic()
    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    received, count, deadline = hashlib.sha256(), 0, started + 45
    for _ in range(BULK // 1024 + 10):  # a recv returns one TLS record, normally 16 KiB
        assert time.monotonic() < deadline, f"only {count} bytes in 45s"
        chunk = client.recv(timeout=20)
        if not chunk:
            break
        received.update(chunk)
        count += len(chunk)
    else:
        pytest.fail(f"no close_notify after {count} bytes")
    elapsed_recv = time.monotonic() - started
    thread.join(max(0.0, deadline - time.monotonic()))
    assert not thread.is_alive(), "the sender did not finish"
    assert not errors, errors
    elapsed = time.monotonic() - started
    client.close()

    state = env.bulk.wait_conn(index, lambda s: s["done"], timeout=15)
    assert state is not None, "the backend never saw EOF"
    assert state["recv_error"] is None and state["send_error"] is None, state
    assert state["bytes"] == BULK
    assert state["sha256"] == sent.hexdigest() == sha_of_pattern(BULK, CLIENT_SEED)
    assert count == BULK
    assert received.hexdigest() == sha_of_pattern(BULK, BULK_SEED)

    record = record_of(env, client)
    assert record["outcome"] == "ok", record
    assert record["bytes_in"] == BULK and record["bytes_out"] == BULK, record
    assert record["tls_version"] == f"TLSv{version}"
    print(f"\nTLS {version}: {BULK // MB} MB each way in {elapsed:.2f}s "
          f"(client->backend and backend->client concurrently; receive done at "
          f"{elapsed_recv:.2f}s): {2 * BULK / MB / elapsed:.0f} MB/s total, "
          f"{BULK / MB / elapsed:.0f} MB/s each way")
    assert elapsed < 45


# -- 1b. a streaming client is read in batches ----------------------------------------------

SO_RCVLOWAT_BULK = 256 * 1024  # titus/worker/wk_pump.c: BULK_LOWAT
PILE = 8 * MB


def held_socket(pid: int, inode: str) -> socket.socket:
    """A copy of the socket `pid` holds (pidfd_getfd: root may, even of a non-dumpable
    jailed process), to read its options from outside."""
    fd = next(int(n) for n, target in open_fds(pid).items() if target == f"socket:[{inode}]")
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        copy = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd, the same number on every arch
        if copy < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
    finally:
        os.close(pidfd)
    return socket.socket(fileno=copy)


def test_a_streaming_client_is_read_in_batches(env):
    """While the client sends faster than the worker wakes, the worker asks the kernel
    (SO_RCVLOWAT) to wake it for 256 KiB at a time, not for every record: each wake-up
    across cores costs the sender's core an IPI.  The backend here reads late, so the
    client's bytes pile up in front of the worker and its rounds are big.  Once the
    stream stops the mark goes back to 1, every byte arrives, and the connection ends
    as usual."""
    client = Client(env, "late.test")
    before = len(env.late.results)
    worker = worker_of(env.titus, client.sock)
    assert worker is not None
    [inode] = tcp_inodes(client.sock.getpeername(), client.sock.getsockname())
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            client.send_all(pattern(PILE), timeout=20)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    with held_socket(worker, inode) as held:
        def lowat() -> int:
            return held.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)

        assert lowat() == 1
        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        seen, deadline = set(), time.monotonic() + 20
        while thread.is_alive() and time.monotonic() < deadline:
            seen.add(lowat())
            time.sleep(0.0002)
        thread.join(1)
        assert not thread.is_alive() and not errors, errors
        assert SO_RCVLOWAT_BULK in seen, f"low-water marks seen while streaming: {seen}"
        settled = time.monotonic() + 5
        while lowat() != 1 and time.monotonic() < settled:
            time.sleep(0.01)
        assert lowat() == 1, "still batching after the stream stopped"
    client.send_all(b"tail")
    client.close_notify()
    assert client.read_to_close_notify(0) == b""
    [result] = env.late.wait(before + 1)[before:]
    assert result["error"] is None and result["bytes"] == PILE + 4
    assert result["sha256"] == sha(pattern(PILE) + b"tail")
    assert record_of(env, client)["outcome"] == "ok"
    client.close()


# -- 2. half-close, client first ----------------------------------------------------------


@pytest.mark.parametrize("version", ["1.3", "1.2"])
@pytest.mark.parametrize("how", ["close_notify", "tcp_shut_wr"])
def test_half_close_client_first(env, version, how):
    before = len(env.sink.results)
    client = Client(env, "sink.test", version)
    data = pattern(SEND, seed=3)
    client.send_all(data)
    if how == "close_notify":
        client.close_notify()  # returns at once: the peer's close_notify has not come
    else:
        client.sock.shutdown(socket.SHUT_WR)  # a "ragged" EOF: TCP FIN, no close_notify
    # The sink replies only once it has seen EOF: the reply proves the EOF crossed.
    reply = client.read_to_close_notify(REPLY)
    assert len(reply) == REPLY and sha(reply) == sha_of_pattern(REPLY)
    assert client.tcp_eof()
    client.close()

    results = env.sink.wait(before + 1, timeout=10)
    assert len(results) > before
    assert results[before] == {"sha256": sha(data), "bytes": SEND, "error": None}
    record = record_of(env, client)
    assert record["outcome"] == "ok", record
    assert (record["bytes_in"], record["bytes_out"]) == (SEND, REPLY)


# -- 3. half-close, backend first ---------------------------------------------------------


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_half_close_backend_first(env, version):
    before = len(env.first.results)
    client = Client(env, "first.test", version)
    # The backend sends everything and shuts down writing before it reads a byte.
    reply = client.read_to_close_notify(REPLY)
    assert len(reply) == REPLY and sha(reply) == sha_of_pattern(REPLY)
    assert client.tcp_eof(), "titus sent close_notify but no FIN"
    # The other direction is still open: what the client sends now must arrive.
    data = pattern(SEND, seed=5)
    client.send_all(data)
    client.close_notify()
    client.close()

    results = env.first.wait(before + 1, timeout=10)
    assert len(results) > before
    assert results[before] == {"sha256": sha(data), "bytes": SEND, "error": None}
    record = record_of(env, client)
    assert record["outcome"] == "ok", record
    assert (record["bytes_in"], record["bytes_out"]) == (SEND, REPLY)


# -- 3b. data and close_notify in the same segment as the client's Finished ----------------


def test_records_sent_with_the_clients_finished(env):
    """TLS 1.3 lets a client send its data, and its close_notify too, with its Finished,
    in one segment.  The worker reads ahead (one recv takes several records), so those
    records may all sit in OpenSSL's buffer with nothing left in the socket to wake a
    poll: they must still cross, and the close_notify must still become the backend's
    EOF (the sink answers only after that EOF)."""
    before = len(env.sink.results)
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.load_verify_locations(str(env.ca.path))
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: args[-1])
    conn = SSL.Connection(ctx, None)  # memory BIOs: this test decides what goes in a send
    conn.set_tlsext_host_name(b"sink.test")
    conn.set_connect_state()
    data = pattern(3000, seed=9)  # with the rest, well under one segment: one recv takes all

    def pending_output() -> bytes:
        try:
            return conn.bio_read(1 << 20)
        except SSL.WantReadError:
            return b""

    with socket.create_connection(("127.0.0.1", env.titus.port), timeout=10) as sock:
        port = sock.getsockname()[1]
        for _ in range(20):  # two flights each way at most
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                sock.sendall(pending_output())
                chunk = sock.recv(1 << 16)
                assert chunk, "titus closed during the handshake"
                conn.bio_write(chunk)
        else:
            pytest.fail("no handshake after 20 flights")
        conn.sendall(data)
        with contextlib.suppress(SSL.WantReadError):
            conn.shutdown()  # our close_notify; the peer's has not come
        last_flight = pending_output()  # Finished, a data record, close_notify
        assert len(last_flight) > len(data)
        sock.sendall(last_flight)
        reply, deadline = bytearray(), time.monotonic() + 10
        while True:
            try:
                reply += conn.recv(1 << 16)
                continue
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:
                break
            assert time.monotonic() < deadline, f"only {len(reply)} bytes of the reply in 10s"
            chunk = sock.recv(1 << 16)
            assert chunk, f"TCP EOF without close_notify after {len(reply)} bytes"
            conn.bio_write(chunk)
    assert len(reply) == REPLY and sha(bytes(reply)) == sha_of_pattern(REPLY)
    results = env.sink.wait(before + 1, timeout=10)
    assert results[before] == {"sha256": sha(data), "bytes": len(data), "error": None}
    record = env.titus.wait_event(lambda r: r.get("event") == "connection"
                                  and r.get("client") == f"127.0.0.1:{port}", 10)
    assert record["outcome"] == "ok", record
    assert (record["bytes_in"], record["bytes_out"]) == (len(data), REPLY)


# -- 4. the backend refuses ---------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.3", "1.2"])
@pytest.mark.parametrize("request_first", [False, True])
def test_backend_refused(env, version, request_first):
    started = time.monotonic()
    client = Client(env, "refused.test", version)  # the handshake completes
    if request_first:
        client.send_all(b"GET / HTTP/1.1\r\nHost: refused.test\r\n\r\n")
    assert client.recv(timeout=5) == b"", "expected a close_notify and no data"
    assert time.monotonic() - started < 3, "a refused backend must not wait for the timeout"
    client.close()
    record = record_of(env, client)
    assert record["outcome"] == "backend-failed", record
    assert "ECONNREFUSED" in record["detail"] and str(env.refused_port) in record["detail"]
    assert record["bytes_in"] == 0 and record["bytes_out"] == 0


# -- 5. the client resets mid-stream ------------------------------------------------------


def test_client_reset_mid_stream(env):
    index = len(env.flood.conns)
    client = Client(env, "flood.test")
    got = bytearray()
    for _ in range(10_000):
        if len(got) >= 4 * MB:
            break
        chunk = client.recv(timeout=10)
        assert chunk, "the flood ended early"
        got += chunk
    assert bytes(got) == pattern(len(got))
    pid = worker_of(env.titus, client.sock)
    assert pid is not None
    state = env.flood.wait_conn(index)
    assert state is not None and state["sent"] < FLOOD and state["eof_at"] is None

    client.reset()  # SO_LINGER {1, 0} + close: RST while the backend is still sending
    reset_at = time.monotonic()
    state = env.flood.wait_conn(index, lambda s: s["eof_at"] is not None, timeout=5)
    assert state is not None, "titus did not close the backend within 5s of the client's RST"
    assert state["eof_at"] - reset_at < 5
    assert state["recv_error"] is None or "ConnectionReset" in state["recv_error"], state
    assert state["sent"] < FLOOD
    record = record_of(env, client)
    assert record["worker_pid"] == pid
    assert wait_gone(pid), f"worker {pid} still running"
    assert record["outcome"] in RESET_OUTCOMES, record
    print(f"\nclient reset: outcome {record['outcome']!r}, backend saw "
          f"{state['recv_error'] or 'EOF'} / send: {state['send_error']}")


# -- 6. the backend resets mid-stream -----------------------------------------------------


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_backend_reset_mid_stream(env, version):
    client = Client(env, "reset.test", version)
    got, ending = bytearray(), None
    deadline = time.monotonic() + 10
    for _ in range(10_000):
        assert time.monotonic() < deadline, "the client hangs after the backend's reset"
        try:
            chunk = client.recv(timeout=deadline - time.monotonic())
        except (SSL.Error, OSError) as e:
            ending = e
            break
        if not chunk:
            ending = "close_notify"
            break
        got += chunk
    client.close()
    # A reset is not an end: a close_notify would tell the client a truncated
    # stream was complete.
    print(f"\nbackend reset (TLS {version}): client got {len(got)} bytes, then {ending!r}")
    assert ending is not None and ending != "close_notify", ending
    assert len(got) <= RESET_AFTER and bytes(got) == pattern(len(got))
    record = record_of(env, client)
    assert record["outcome"] == "backend-reset", record


# -- 7. a client that never reads ---------------------------------------------------------


def test_client_that_never_reads(env):
    index = len(env.flood.conns)
    client = Client(env, "flood.test")
    pid = worker_of(env.titus, client.sock)
    assert pid is not None
    state = env.flood.wait_conn(index)
    assert state is not None
    # Wait until the backend is stalled: its send count stops moving.
    last, still_since, deadline = -1, time.monotonic(), time.monotonic() + 15
    while time.monotonic() < deadline:
        if state["sent"] != last:
            last, still_since = state["sent"], time.monotonic()
        elif time.monotonic() - still_since > 1.0:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the backend never stalled (sent {state['sent']} bytes)")
    stalled_at = state["sent"]
    rss = []
    for _ in range(10):
        rss.append(vm_rss_kb(pid))
        time.sleep(0.1)
    idle = [vm_rss_kb(p) or 0 for p in env.titus.worker_pids()
            if p not in (pid, keyholder_pid(env.titus))]
    print(f"\nstalled after the backend sent {stalled_at / MB:.1f} MB; busy worker VmRSS "
          f"max {max(rss or [0]) / 1024:.1f} MB (an idle worker: "
          f"{(idle[0] if idle else 0) / 1024:.1f} MB)")
    assert None not in rss, "the worker died while stalled"
    assert max(rss) < RSS_LIMIT_KB, rss
    assert stalled_at < 32 * MB, "titus buffered far more than its high-water mark"
    assert state["sent"] == stalled_at and state["eof_at"] is None

    client.close()  # with unread data: the kernel sends RST
    state = env.flood.wait_conn(index, lambda s: s["done"], timeout=10)
    assert state is not None, "the backend connection was not released"
    assert state["sent"] < FLOOD
    record = record_of(env, client)
    assert record["worker_pid"] == pid and wait_gone(pid)
    assert record["outcome"] in RESET_OUTCOMES, record
    assert record["bytes_out"] <= stalled_at
