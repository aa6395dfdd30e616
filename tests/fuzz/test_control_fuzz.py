"""Forged supervisor control messages: a clean rejection (the worker is killed), never a
crash of the supervisor.

In-process, hypothesis drives control.decode_from_worker with mutated real
messages and JSON carrying any Unicode (lone surrogates too): anything it
accepts must be safe for everything the supervisor then does with it (the
PROXY v2 header, the JSON log).  Then a real supervisor (forked from the test
so that its zygote can be tests/fuzz/rogue_zygote.py; the workers are real
jails) meets workers that send scripted forged messages: each such worker is
killed for the reason the supervisor's rules give, and the supervisor goes on
serving real TLS.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.budget import examples, fuzz_settings, scale
from tests.fuzz.rogue_zygote import PLAN_FILE
from tests.pki import CA
from tests.titus_harness import EchoBackend, ForkedTitus, session_processes
from titus.wire import control, proxyproto

SNI = "control.test"
REQUEST = b"GET /control HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

HANDSHAKE = control.HandshakeDone(vhost=0, sni=SNI, version="TLSv1.3",
                                  cipher="TLS_AES_256_GCM_SHA384", alpn="h2", handshake_ms=2.5,
                                  client_cn="alice")
FINISHED = control.Finished("ok", 10, 20, "detail", 1, 0)
VALID = [control.encode(HANDSHAKE), control.encode(FINISHED)]
FIELDS = ["vhost", "sni", "version", "cipher", "alpn", "handshake_ms", "client_cn", "outcome",
          "bytes_in", "bytes_out", "detail", "signatures", "signature_failures", "extra"]


def mutate(data: bytes, rng: random.Random, rounds: int = 3) -> bytes:
    """Byte-level mutations: flip, insert, delete, duplicate a slice, truncate."""
    out = bytearray(data)
    for _ in range(rng.randint(1, rounds)):
        choice = rng.randrange(5)
        pos = rng.randrange(len(out) + 1)
        if choice == 0 and out:
            out[min(pos, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif choice == 1:
            out[pos:pos] = bytes([rng.choice(b'{}[]",:\\u0123456789.eE-tfn ')]) \
                if rng.random() < 0.7 else os.urandom(1)
        elif choice == 2 and out:
            del out[pos:pos + rng.randint(1, 4)]
        elif choice == 3 and out:
            end = min(len(out), pos + rng.randint(1, 16))
            out[end:end] = out[pos:end]
        else:
            del out[pos:]
    return bytes(out)


# --- in process: what decode_from_worker lets through is safe to use ---------------------------


def assert_usable(msg: control.HandshakeDone | control.Finished) -> None:
    """Everything the supervisor does with an accepted message works on it."""
    body = asdict(msg)
    for value in body.values():
        if isinstance(value, str):
            value.encode("utf-8")  # a lone surrogate cannot reach a header or a log
        elif isinstance(value, int) and not isinstance(value, bool):
            assert 0 <= value < 2**63
    json.dumps(body, ensure_ascii=False).encode("utf-8")
    if isinstance(msg, control.HandshakeDone):
        facts = proxyproto.TLSFacts(sni=msg.sni, version=msg.version, cipher=msg.cipher,
                                    alpn=msg.alpn, client_cn=msg.client_cn)
        proxyproto.v2(("192.0.2.1", 1), ("2001:db8::1", 443), facts)
        assert msg.handshake_ms == msg.handshake_ms and abs(msg.handshake_ms) != float("inf")
    else:
        assert msg.outcome in control.OUTCOMES


def decode_or_reject(packet: bytes) -> None:
    try:
        msg = control.decode_from_worker(packet)
    except control.ControlError as e:
        assert "\n" not in str(e)
        return
    assert_usable(msg)


UNICODE = st.text(st.characters(exclude_categories=()), max_size=30)
SURROGATE_TEXT = st.builds(
    lambda a, c, b: a + chr(c) + b, st.text(max_size=4), st.integers(0xD800, 0xDFFF),
    st.text(max_size=4))
JSON_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(), UNICODE,
    SURROGATE_TEXT)
JSON_VALUE = st.recursive(JSON_SCALAR, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(UNICODE, inner, max_size=3), max_leaves=8)


@fuzz_settings(800)
@given(st.sampled_from(VALID), st.integers(0, 2**32), st.integers(1, 6))
def test_mutated_real_messages(packet: bytes, seed: int, rounds: int) -> None:
    decode_or_reject(mutate(packet, random.Random(seed), rounds))


@st.composite
def real_with_fields_replaced(draw: st.DrawFn) -> bytes:
    """A real message with one to three of its own fields (or "extra") set to any JSON,
    escaped or as raw UTF-8 (a lone surrogate raw, the way a C worker could write it)."""
    kind, base = draw(st.sampled_from([("H", asdict(HANDSHAKE)), ("D", asdict(FINISHED))]))
    names = draw(st.lists(st.sampled_from([*base, "extra"]), min_size=1, max_size=3,
                          unique=True))
    body = {**base, **{name: draw(JSON_VALUE) for name in names}}
    text = json.dumps(body, ensure_ascii=draw(st.booleans()))
    return kind.encode() + text.encode("utf-8", "surrogatepass")


@fuzz_settings(500)
@given(real_with_fields_replaced())
def test_real_messages_with_fields_replaced(packet: bytes) -> None:
    decode_or_reject(packet)


@fuzz_settings(300)
@given(st.binary(max_size=64), st.sampled_from(VALID), st.integers(0, 200))
def test_spliced_bytes(junk: bytes, packet: bytes, at: int) -> None:
    decode_or_reject(packet[:at] + junk + packet[at:])


def test_lone_surrogates_are_refused() -> None:
    """Regression: a forged HandshakeDone whose sni was a lone surrogate passed the decoder
    and then raised UnicodeEncodeError in the PROXY v2 encoder, inside the supervisor loop."""
    for name in ("sni", "version", "cipher", "alpn", "client_cn"):
        body = {**asdict(HANDSHAKE), name: "a\ud800b"}
        with pytest.raises(control.ControlError, match=name):
            control.decode_from_worker(b"H" + json.dumps(body).encode())
    body = {**asdict(FINISHED), "detail": "\udfff"}
    with pytest.raises(control.ControlError, match="detail"):
        control.decode_from_worker(b"D" + json.dumps(body).encode())


# --- a real supervisor against forged messages ---------------------------------------------


@dataclass(frozen=True)
class Expected:
    outcome: str
    event: str | None  # the supervisor's event about this worker, if any


KILL_EVENTS = {
    "forged control message": "forged-control-message",
    "asked for a backend it has no right to": "forbidden-backend-request",
    "unexpected control message": "unexpected-control-message",
}


def expected(script: list[bytes], vhosts_reachable: set[int]) -> Expected:
    """What Connections.on_worker_message's rules make of a script of packets."""
    state, finished = "handshake", None
    for index, packet in enumerate(script):
        if not packet:
            # Read as EOF: the supervisor stops listening, and only the Finished messages
            # still queued when the worker dies count; in the handshake its timer ends it.
            for rest in script[index + 1 :]:
                with contextlib.suppress(control.ControlError):
                    msg = control.decode_from_worker(rest[: control.MAX_PACKET + 1])
                    if isinstance(msg, control.Finished):
                        finished = msg
            if state == "handshake":
                return Expected("timeout", None)
            break
        try:
            msg = control.decode_from_worker(packet[: control.MAX_PACKET + 1])
        except control.ControlError:
            return Expected("killed", KILL_EVENTS["forged control message"])
        if isinstance(msg, control.HandshakeDone) and state == "handshake":
            if msg.vhost not in vhosts_reachable:
                return Expected("killed", KILL_EVENTS["asked for a backend it has no right to"])
            state = "backend"
        elif isinstance(msg, control.Finished) and state in ("handshake", "backend", "relay"):
            finished, state = msg, "done"
        else:
            return Expected("killed", KILL_EVENTS["unexpected control message"])
    return Expected(finished.outcome if finished else "worker-died", None)


def json_junk(rng: random.Random, depth: int = 0) -> object:
    pick = rng.randrange(9 if depth < 3 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -1, 1, 2**63, 2**63 - 1, 2**70, 3])
    if pick == 3:
        return rng.choice([0.5, 1e308, -0.0, float("nan"), float("inf")])
    if pick == 4:
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(6)))
    if pick == 5:
        return rng.choice(["ok", "x" * 300, "a\ud800", "TLSv1.3", "\x00", "é" * 200])
    if pick == 6:
        return [json_junk(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {rng.choice(FIELDS): json_junk(rng, depth + 1) for _ in range(rng.randrange(3))}


def one_packet(rng: random.Random) -> bytes:
    pick = rng.randrange(7)
    if pick == 0:
        return os.urandom(rng.choice([1, 2, 16, 200, control.MAX_PACKET + 1, 6000]))
    if pick == 1:
        return mutate(rng.choice(VALID), rng)
    if pick == 2:
        kind = rng.choice(["H", "D", "C", "B", "X"])
        return kind.encode() + json.dumps(json_junk(rng)).encode()
    if pick == 3:
        base = asdict(rng.choice([HANDSHAKE, FINISHED]))
        base[rng.choice(FIELDS)] = json_junk(rng)
        kind = "H" if "vhost" in base else "D"
        return kind.encode() + json.dumps(base).encode("utf-8", "surrogatepass")
    if pick == 4:
        vhost = rng.choice([0, 0, 1, 2, -1, 2**62])
        return control.encode(control.HandshakeDone(
            vhost, rng.choice([SNI, None, "x" * 256]), "TLSv1.3", "c", None, 1.0))
    if pick == 5:
        return control.encode(control.Finished(rng.choice(sorted(control.OUTCOMES)),
                                               rng.randrange(2**40), 0))
    return rng.choice(VALID)


def scripts(count: int, seed: int) -> list[list[bytes]]:
    """`count` scripts of 1-3 packets; the first few are the cases that must always run."""
    fixed = [
        # The regression: a lone surrogate for a vhost that writes PROXY v2.
        [b'H{"vhost":0,"sni":"\\ud800","version":"TLSv1.3","cipher":"c","alpn":null,'
         b'"handshake_ms":1}'],
        [control.encode(control.HandshakeDone(1, SNI, "TLSv1.3", "c", None, 1.0))],
        [VALID[0], VALID[0]],  # a second HandshakeDone
        [VALID[1], VALID[1]],  # a second Finished
        [b"H" + b"[" * 4000],
        [b"D" + b" " * 6000],
        [b""],  # an empty packet reads as EOF: only the handshake timer ends this worker
        [VALID[0]],  # honest so far, then silent: dies without a word
    ]
    rng = random.Random(seed)
    out = fixed[:count]
    while len(out) < count:
        out.append([one_packet(rng) for _ in range(rng.choice([1, 1, 2, 3]))])
    return out


class RogueTitus(ForkedTitus):
    """A supervisor forked from the test whose first workers send forged messages."""

    def __init__(self, tmp: Path, config: str, plan: list[list[bytes]]) -> None:
        super().__init__(tmp, config, "tests.fuzz.rogue_zygote:setup")
        (tmp / PLAN_FILE).write_text(json.dumps([[p.hex() for p in script] for script in plan]))

@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    ca = CA(tmp_path_factory.mktemp("control-pki"))
    ca.issue(SNI, "p256", filename="leaf")
    return ca


def exchange(ca: CA, port: int) -> proxyproto.Parsed:
    """A real TLS request through titus to the echo backend; the PROXY header it got."""
    ctx = ssl.create_default_context(cafile=str(ca.path))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=SNI) as tls:
        tls.sendall(REQUEST)
        data = b""
        for _ in range(100):
            if data.endswith(REQUEST):
                break
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
        parsed = proxyproto.parse(data)
        assert parsed is not None and data[parsed.length :] == REQUEST, data
        assert parsed.src == tls.getsockname()[:2]
        assert parsed.tlvs[proxyproto.PP2_TYPE_AUTHORITY] == SNI.encode()
        return parsed


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


BATCH = 40  # connections open at once
HANDSHAKE_TIME = 4  # seconds; generous, as 40 jails start at once on a busy machine


@pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")
@pytest.mark.timeout(int(scale(180, 40)))
def test_forged_messages_get_the_worker_killed_and_the_supervisor_serves_on(tmp_path, ca):
    seed = int(os.environ.get("TITUS_FUZZ_SEED", random.randrange(2**32)))
    plan = scripts(examples(40), seed)
    backend = EchoBackend()  # bound now, served after the fork: no thread is forked
    config = f"""listen 127.0.0.1:0
min-spare-children 2
max-children {BATCH + 8}
max-handshake-time {HANDSHAKE_TIME}
backend 127.0.0.1
backend-port {backend.port}
vhost a
\tlocal-address 127.0.0.1
\tproxy-protocol v2
\tkey {tmp_path / "leaf.key"}
\tcert {tmp_path / "leaf.crt"}
vhost b
\tlocal-address 127.0.0.2
\tkey {ca.dir / "leaf.key"}
\tcert {ca.dir / "leaf.crt"}
"""
    for name in ("leaf.key", "leaf.crt"):  # the rogue zygote finds its plan beside the cert
        shutil.copy2(ca.dir / name, tmp_path / name)
    rogue = RogueTitus(tmp_path, config, plan)
    clients: list[socket.socket] = []
    child = 0
    try:
        rogue.start_forked()
        child = rogue.pid
        with backend:
            for start in range(0, len(plan), BATCH):  # a batch at once: the supervisor
                end = min(len(plan), start + BATCH)    # juggles them all
                for _ in range(start, end):
                    clients.append(socket.create_connection(
                        ("127.0.0.1", rogue.addresses[0][1]), timeout=10))
                wait_for(lambda end=end: len(rogue.connections()) >= end or not rogue.alive(),
                         60, "a record for every forged connection")
                assert rogue.alive(), f"the supervisor died (seed {seed}): {rogue.log_tail()}"
                for sock in clients:
                    sock.close()
                clients.clear()
            records = {r["conn_id"]: r for r in rogue.connections()}
            events = {(r.get("event"), r.get("pid")) for r in rogue.records()}
            for conn_id, script in enumerate(plan, 1):
                want = expected(script, {0})
                record = records[conn_id]
                why = f"seed {seed}, script {script!r}: {record}"
                assert record["outcome"] == want.outcome, why
                if want.event:
                    assert (want.event, record["worker_pid"]) in events, why
            for _ in range(3):  # and the supervisor still serves, through a real worker
                exchange(ca, rogue.addresses[0][1])
            log = rogue.log_path.read_text(errors="replace")
            assert "Traceback" not in log, log[-3000:]
            assert not [r for r in rogue.connections() if r["outcome"] == "policy-violation"]
    finally:
        for sock in clients:
            sock.close()
        code = rogue.stop_forked()
        backend.srv.close()
    assert code == 0, rogue.log_tail()
    wait_for(lambda: not session_processes(child), 5, "the forked supervisor's jails to end")
