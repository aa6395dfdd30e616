"""Random and mutated ClientHellos at a running titus's listening port.

Hundreds of connections (bounded in count and time) each send bytes derived
from a real ClientHello (bit flips, overwritten and inserted bytes, lengths
rewritten, truncation, records split or doubled), or plain junk, then close
their side.  Afterwards titus must: still serve a real TLS request; have
logged every one of those connections as a failed handshake, none as a
policy violation, without a traceback; be back to its idle pool (no worker
leaked); and hold as many fds, and about as much memory, as before.

The mutations come from a seeded random.Random: TITUS_FUZZ_SEED=N replays a
run (a failure prints its seed), TITUS_FUZZ_EXAMPLES=N sends N connections.
"""

from __future__ import annotations

import os
import random
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tests.fuzz.budget import examples, scale
from tests.integration.test_titus_data import vm_rss_kb
from tests.integration.test_titus_pool import idle_workers, settle, workers
from tests.pki import CA
from tests.titus_harness import HTTPBackend, Titus, client_hello, open_fds

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")

SNI = "fuzz.test"
MIN_SPARE = 3
CONNECTIONS = 300
SECONDS = 60.0
THREADS = 4
WARMUP = 30
RSS_SLACK_KB = 6 * 1024  # logging and metrics may settle a little; a leak per connection won't


# --- ClientHello mutations -------------------------------------------------------------------


def hellos() -> list[bytes]:
    """Real ClientHellos: TLS 1.3 and 1.2 only, with and without SNI, with ALPN."""
    out = []
    for low, high, name, alpn in (
        (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3, SNI, None),
        (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3, SNI, ["h2", "http/1.1"]),
        (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, None, None),
        (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3, ".".join(["a" * 63] * 3), ["x" * 255]),
    ):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version, ctx.maximum_version = low, high
        if alpn:
            ctx.set_alpn_protocols(alpn)
        out.append(client_hello(ctx, name))
    return out


def _set_u16(data: bytearray, pos: int, value: int) -> None:
    if pos + 2 <= len(data):
        data[pos : pos + 2] = struct.pack("!H", value & 0xFFFF)


def mutate(hello: bytes, rng: random.Random) -> list[bytes]:
    """One connection's writes: a mutated `hello` (or junk), maybe split into pieces."""
    data = bytearray(hello)
    for _ in range(rng.choice([1, 1, 2, 3, 5])):
        pick = rng.randrange(11)
        pos = rng.randrange(len(data)) if data else 0
        if pick == 0 and data:
            data[pos] ^= 1 << rng.randrange(8)
        elif pick == 1 and data:
            data[pos] = rng.choice([0, 1, 0x16, 0x03, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif pick == 2:
            data[pos:pos] = rng.randbytes(rng.choice([1, 2, 4, 100]))
        elif pick == 3:
            del data[pos : pos + rng.choice([1, 2, 8, 64])]
        elif pick == 4:
            del data[rng.randrange(len(data) + 1) :]
        elif pick == 5:  # the record length
            _set_u16(data, 3, rng.choice([0, 1, 4, len(data) - 5 + rng.randint(-3, 3), 0xFFFF]))
        elif pick == 6 and len(data) > 9:  # the handshake length (u24)
            value = rng.choice([0, 1, len(data) - 9 + rng.randint(-3, 3), 0xFFFFFF])
            data[6:9] = (value & 0xFFFFFF).to_bytes(3, "big")
        elif pick == 7 and len(data) > 60:  # a length somewhere in the body
            at = rng.randrange(43, len(data) - 2)
            _set_u16(data, at, rng.choice([0, 1, 0xFF, 0xFFFF, rng.randrange(0x10000)]))
        elif pick == 8:  # the record again, or twice the whole thing
            data += data[: rng.randrange(len(data) + 1)]
        elif pick == 9:
            data[0:1] = bytes([rng.choice([0x14, 0x15, 0x17, 0x80, 0x47])])  # other types
        else:
            data[1:3] = rng.choice([b"\x03\x00", b"\x02\x00", b"\x03\x04", b"\xfe\xfd"])
    special = rng.randrange(40)
    if special == 0:
        data = bytearray()  # connect and close
    elif special == 1:
        data = bytearray(rng.randbytes(rng.choice([1, 5, 100, 1000])))
    elif special == 2:
        data = bytearray(b"GET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n")
    elif special == 3:
        data = bytearray(hello[:5] + b"\x00" * (70 * 1024))  # larger than a ClientHello may be
    pieces, rest = [], bytes(data)
    while rest and rng.random() < 0.3:
        cut = rng.randrange(1, len(rest) + 1)
        pieces.append(rest[:cut])
        rest = rest[cut:]
    return [*pieces, rest] if rest else pieces


# --- one bad client --------------------------------------------------------------------------


def bad_client(port: int, writes: list[bytes]) -> None:
    """Send `writes`, close our side, read until titus closes (bounded), then close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            for piece in writes:
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and sock.recv(65536):
                pass
        except OSError:
            pass  # titus may reset a connection it has given up on


def good_request(ca: CA, port: int) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=SNI) as tls:
        tls.sendall(b"GET /after-fuzz HTTP/1.1\r\nHost: fuzz.test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        return data


def run_clients(port: int, plan: list[list[bytes]], seconds: float) -> int:
    """Send `plan` from THREADS threads until done or out of time; how many were sent."""
    lock = threading.Lock()
    state = {"next": 0, "errors": []}
    deadline = time.monotonic() + seconds

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                index = state["next"]
                if index >= len(plan):
                    return
                state["next"] = index + 1
            try:
                bad_client(port, plan[index])
            except OSError as e:  # connect itself failed: titus stopped accepting
                with lock:
                    state["errors"].append(f"connection {index}: {e!r}")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    assert not state["errors"], state["errors"][:5]
    return min(state["next"], len(plan))


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    ca = CA(tmp_path_factory.mktemp("listener-fuzz-pki"))
    ca.issue(SNI, "p256", filename="leaf")
    return ca


@pytest.fixture
def titus(tmp_path, ca: CA) -> Iterator[tuple[Titus, HTTPBackend]]:
    with HTTPBackend("F") as backend, Titus(tmp_path, f"""listen 127.0.0.1:0
min-spare-children {MIN_SPARE}
max-children 32
max-handshake-time 5
key {ca.dir / "leaf.key"}
cert {ca.dir / "leaf.crt"}
backend 127.0.0.1
backend-port {backend.port}
""") as titus:
        yield titus, backend


def settled(titus: Titus) -> None:
    """Only the idle pool is left: min-spare idle workers, none busy (a leak would stay)."""
    assert settle(lambda: (len(workers(titus)), len(idle_workers(titus))),
                  (MIN_SPARE, MIN_SPARE), timeout=30) == (MIN_SPARE, MIN_SPARE), \
        f"workers {workers(titus)}, idle {idle_workers(titus)}"


@pytest.mark.timeout(int(scale(400, CONNECTIONS)))
def test_mutated_client_hellos_leave_titus_serving_and_unchanged(titus, ca) -> None:
    server, _backend = titus
    assert server.proc is not None
    pid, port = server.proc.pid, server.port
    seed = int(os.environ.get("TITUS_FUZZ_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    bases = hellos()
    count = examples(CONNECTIONS)
    plan = [mutate(rng.choice(bases), rng) for _ in range(WARMUP + count)]
    why = f"(TITUS_FUZZ_SEED={seed})"

    # Warm up (imports, logging, metrics, allocator pools), then take the baseline.
    assert run_clients(port, plan[:WARMUP], 60) == WARMUP
    server.wait_connections(WARMUP, timeout=30)
    settled(server)
    fds, rss = len(open_fds(pid)), vm_rss_kb(pid)
    assert rss is not None

    sent = WARMUP + run_clients(port, plan[WARMUP:], scale(SECONDS, CONNECTIONS))
    assert sent - WARMUP >= min(count, 100), f"only {sent - WARMUP} connections in time {why}"
    records = server.wait_connections(sent, timeout=60)
    assert len(records) == sent, f"{len(records)} records for {sent} connections {why}"

    outcomes = Counter(r["outcome"] for r in records)
    assert outcomes == {"handshake-failed": sent}, f"{outcomes} {why}: " + str(
        [r for r in records if r["outcome"] != "handshake-failed"][:3])
    events = Counter(r.get("event") for r in server.records())
    assert not {"keyholder-died", "spawn-failed", "spawn-backoff", "forged-control-message",
                "unexpected-control-message"} & set(events), f"{events} {why}"
    assert "Traceback" not in server.log_tail(10**7), why

    # A real client is still served, and titus is back where it started.
    assert good_request(ca, port).endswith(b"backend F path /after-fuzz\n"), why
    server.wait_connections(sent + 1, timeout=30)
    settled(server)
    wait_until(lambda: len(open_fds(pid)) <= fds, 10,
               f"supervisor fds back to {fds} (now {len(open_fds(pid))}) {why}")
    now = vm_rss_kb(pid)
    print(f"{sent} connections: {dict(outcomes)}; supervisor fds {fds}, RSS {rss} -> {now} kB")
    assert now is not None and now - rss < RSS_SLACK_KB, \
        f"supervisor RSS grew from {rss} kB to {now} kB over {sent} connections {why}"
    assert server.proc.poll() is None
