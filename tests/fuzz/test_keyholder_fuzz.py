"""The key holder's serving loop against a compromised worker, over real sockets.

First a hypothesis state machine drives keyholder.serve (in a thread, as in
tests/unit/titus/test_keyholder.py) through sequences of grants, well-formed
requests, malformed frames, fds and hang-ups across several channels, and
checks each answer against the independent model in tests/fuzz/keymodel.py:
a signature only within the rules and the channel's budget, every refusal and
protocol error closes that channel, and the loop never stops.

Then the same kind of traffic goes to a real key-holder jail
(titus.supervisor.keyholder.KeyHolder: its own namespaces, the keyholder seccomp
profile), a bounded number of frames, after which it must still be alive,
hold no more fds than before, have logged every closed channel without a
traceback, and sign a valid request.
"""

from __future__ import annotations

import array
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import pytest
from cryptography import x509
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from sandbox.launcher import Launcher
from sandbox.profile import load_profile
from sandbox.spec import UidRange
from tests.fuzz.budget import examples, fuzz_settings
from tests.fuzz.keymodel import (
    KeyFacts,
    facts_of,
    frame,
    packets,
    parse_frame,
    probes,
    refusals,
    shared,
    verify,
)
from tests.pki import CA
from tests.titus_harness import open_fds
from tests.unit.titus.test_keyholder import Holder
from tests.unit.titus.test_signer import emsa_pss
from titus.keyholder.main import KeySlot
from titus.supervisor.keyholder import KeyHolder
from titus.wire import keyproto
from titus.wire.keyproto import Op, Status

RECV = keyproto.MAX_RESPONSE + 1


@dataclass
class Channel:
    sock: socket.socket
    keys: frozenset[int]
    budget: int
    open: bool = True
    signed: int = 0


def judge_reply(facts: dict[int, KeyFacts], chan: Channel, packet: bytes) -> None:
    """Read what the key holder answered to `packet` on `chan` and check it with the model."""
    sock = chan.sock
    parsed = parse_frame(packet)
    if parsed is None:  # not one valid frame: closed without an answer
        assert sock.recv(RECV) == b"", f"answered a malformed packet {packet[:40]!r}"
        chan.open = False
        return
    op, key_id, request_id, payload = parsed
    granted = {k: f for k, f in facts.items() if k in chan.keys}
    reasons = refusals(granted, op, key_id, payload, chan.budget - chan.signed)
    reply = sock.recv(RECV)
    assert reply, f"no answer to a valid frame ({op.name} key {key_id}); expected {reasons}"
    resp = keyproto.decode_response_packet(reply)
    assert resp.request_id == request_id
    if reasons:
        assert resp.status in reasons, f"{resp.status.name}, the rules say {reasons}"
        assert resp.payload == b""
        assert sock.recv(RECV) == b"", "a refusal must close the channel"
        chan.open = False
        return
    assert resp.status == Status.OK, f"{resp.status.name} for a request the rules allow"
    verify(facts[key_id], op, payload, resp.payload)
    chan.signed += 1
    assert chan.signed <= chan.budget


@st.composite
def aimed_packets(draw: st.DrawFn, private: dict[int, object], keys: list[int]) -> bytes:
    """Mostly well-formed requests carrying a probe, sometimes anything at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(packets())
    probe = draw(probes(private))
    op, key_id = probe.op, probe.key_id
    if draw(st.integers(0, 4)) == 0:
        op = draw(st.sampled_from(list(Op)))
        key_id = draw(st.sampled_from([*keys, 0, 99, 0xFFFF]))
    return frame(op, key_id, draw(st.integers(0, 0xFFFFFFFF)), probe.payload)


# --- the loop, in process --------------------------------------------------------------------


GRANT_KEYS = st.lists(st.sampled_from(sorted(shared().private)), min_size=1, max_size=4,
                     unique=True)
BUDGETS = st.sampled_from([0, 1, 1, 2, 3])


class LoopMachine(RuleBasedStateMachine):
    """keyholder.serve in a thread; the rules are what a hostile worker can do."""

    def __init__(self) -> None:
        super().__init__()
        self.keys = shared()
        self.holder = Holder(self.keys.signer)
        self.channels: list[Channel] = []

    def open_channels(self) -> list[Channel]:
        return [c for c in self.channels if c.open]

    def pick(self, data: st.DataObject) -> Channel:
        """An open channel; a new one when none is (so no rule ever waits on another)."""
        if not self.open_channels():
            self.grant(data.draw(GRANT_KEYS), data.draw(BUDGETS))
        return data.draw(st.sampled_from(self.open_channels()))

    @rule(keys=GRANT_KEYS, budget=BUDGETS)
    def grant(self, keys: list[int], budget: int) -> None:
        open_now = self.open_channels()
        if len(open_now) >= 6:  # bounded: the oldest worker goes away
            open_now[0].sock.close()
            open_now[0].open = False
        sock = self.holder.channel(tuple(keys), budget)
        self.channels.append(Channel(sock, frozenset(keys), budget))

    @rule(data=st.data(), count=st.integers(1, 4))
    def send(self, data: st.DataObject, count: int) -> None:
        """Up to `count` packets on one channel, while it stays open."""
        chan = self.pick(data)
        for _ in range(count):
            packet = data.draw(aimed_packets(self.keys.private, sorted(chan.keys)))
            if not packet:
                packet = b"\0"  # an empty packet reads as a hang-up: see hang_up
            chan.sock.send(packet)
            judge_reply(self.keys.facts, chan, packet)
            event("signed" if chan.open else "closed")
            if not chan.open:
                break

    @rule(data=st.data())
    def pass_an_fd(self, data: st.DataObject) -> None:
        """A worker may not pass fds: the channel is closed, the fd never used."""
        chan = self.pick(data)
        r, w = os.pipe()
        try:
            packet = frame(Op.SIGN_ECDSA, 1, 1, bytes(32))
            chan.sock.sendmsg([packet], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          array.array("i", [r]).tobytes())])
            assert chan.sock.recv(RECV) == b""
            chan.open = False
        finally:
            os.close(r)
            os.close(w)

    @rule(data=st.data(), empty=st.booleans())
    def hang_up(self, data: st.DataObject, empty: bool) -> None:
        """The worker goes away (or sends an empty packet, which reads the same)."""
        chan = self.pick(data)
        if empty:
            chan.sock.send(b"")
            assert chan.sock.recv(RECV) == b""
        chan.sock.close()
        chan.open = False

    @invariant()
    def serving(self) -> None:
        assert self.holder.thread.is_alive(), "the key holder's loop ended"

    def teardown(self) -> None:
        for chan in self.channels:
            chan.sock.close()
        try:
            self.holder.alive()  # a fresh channel still gets a signature
        finally:
            self.holder.stop()


TestLoop = LoopMachine.TestCase
TestLoop.settings = settings(fuzz_settings(40, deadline=None), stateful_step_count=30)


# --- a real key-holder jail ------------------------------------------------------------------


class StderrLines:
    """The key holder's stderr (a pipe), read by a thread so it can never block on it."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        self.data = bytearray()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while chunk := os.read(self.read_fd, 65536):
            self.data += chunk

    def lines(self) -> list[str]:
        return self.data.decode(errors="replace").splitlines()

    def close(self) -> None:
        """Once every writer is gone (the jail has exited): EOF ends the thread."""
        os.close(self.write_fd)
        self.thread.join(10)
        os.close(self.read_fd)


@dataclass
class Jailed:
    holder: KeyHolder
    stderr: StderrLines
    private: dict[int, object]
    facts: dict[int, KeyFacts] = field(default_factory=dict)


@pytest.fixture(scope="module")
def jailed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jailed]:
    ca = CA(tmp_path_factory.mktemp("keyholder-fuzz"))
    leaves = {0: ca.issue("rsa.test", "rsa2048"), 1: ca.issue("ec.test", "p256")}
    slots = [KeySlot(i, leaf.key, leaf.cert, leaf.cert.read_bytes(), f"slot {i}")
             for i, leaf in leaves.items()]
    profile = load_profile("titus-keyholder").spec
    spec = replace(profile, name="titus-keyholder", uid_range=UidRange(),
                   rlimits=(*[(k, v) for k, v in profile.rlimits if k != "nofile"],
                            ("nofile", 64)))
    launcher = Launcher()
    stderr = StderrLines()
    holder = KeyHolder(launcher, spec, slots)
    holder.stderr_fd = stderr.write_fd
    try:
        holder.start()
        facts = {i: facts_of(x509.load_pem_x509_certificate(leaf.cert.read_bytes())
                             .public_key())  # type: ignore[arg-type]
                 for i, leaf in leaves.items()}
        yield Jailed(holder, stderr, {i: leaf.private_key for i, leaf in leaves.items()}, facts)
    finally:
        holder.stop()
        launcher.close()
        stderr.close()


def _alive(jailed: Jailed) -> bool:
    jail = jailed.holder.jail
    return jail is not None and jail.poll() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")
@pytest.mark.timeout(300)
def test_a_real_key_holder_jail_survives_hostile_frames(jailed: Jailed) -> None:
    assert _alive(jailed)
    pid = jailed.holder.jail.pid  # type: ignore[union-attr]
    baseline = len(open_fds(pid))
    counts = {"frames": 0, "closed": 0}

    @fuzz_settings(200, deadline=None)
    @given(st.integers(0, 3), st.data())
    def one_channel(budget: int, data: st.DataObject) -> None:
        sock = jailed.holder.channel(budget)
        sock.settimeout(10)
        chan = Channel(sock, frozenset(jailed.facts), budget)
        try:
            for _ in range(data.draw(st.integers(1, 4))):
                packet = data.draw(aimed_packets(jailed.private, sorted(jailed.facts))) or b"\0"
                sock.send(packet)
                counts["frames"] += 1
                judge_reply(jailed.facts, chan, packet)
                if not chan.open:
                    counts["closed"] += 1
                    break
        finally:
            sock.close()
        assert _alive(jailed), f"the key holder died: {jailed.stderr.lines()[-5:]}"

    one_channel()
    assert counts["closed"] > 0 and counts["frames"] >= examples(200)

    # Still serving: a fresh channel gets a valid RSA-PSS and a valid ECDSA signature.
    rng = random.Random(0)
    for op, key_id, payload in (
        (Op.SIGN_ECDSA, 1, rng.randbytes(32)),
        (Op.SIGN_RSA_RAW, 0, _pss_block(jailed.private[0], rng)),
    ):
        sock = jailed.holder.channel(1)
        sock.settimeout(10)
        try:
            sock.send(frame(op, key_id, 7, payload))
            resp = keyproto.decode_response_packet(sock.recv(RECV))
            assert resp.status == Status.OK and resp.request_id == 7
            verify(jailed.facts[key_id], op, payload, resp.payload)
        finally:
            sock.close()

    # Every channel is gone again: no fd was kept; the log says why each was closed.
    _wait(lambda: len(open_fds(pid)) <= baseline, 10, f"key holder fds back to {baseline}")
    lines = jailed.stderr.lines()
    assert sum("closed" in line for line in lines) >= counts["closed"], lines[-10:]
    assert not [line for line in lines if "Traceback" in line or ": error: " in line], lines
    assert _alive(jailed)


def _pss_block(key: object, rng: random.Random) -> bytes:
    bits = key.key_size  # type: ignore[attr-defined]
    return emsa_pss(rng.randbytes(32), bits, "sha256", rng.randbytes(32))


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
