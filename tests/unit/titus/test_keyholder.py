"""The key holder's loop against a hostile worker and a sloppy supervisor.

The loop runs in a thread here, over real AF_UNIX sockets; every refusal must
close the channel, and nothing a worker sends may stop the loop.
"""

from __future__ import annotations

import array
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.titus.test_signer import pem_cert, pem_key
from titus.keyholder import serve as keyholder
from titus.keyholder.signer import KeyStore, Signer
from titus.supervisor.keyholder import new_channel
from titus.wire import keyproto
from titus.wire.keyproto import Grant, Op, Request, Status

EC_KEY, RSA_KEY = 1, 2


class Holder:
    def __init__(self, signer: Signer, max_channels: int = 4096) -> None:
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.lines: list[str] = []
        self.thread = threading.Thread(
            target=keyholder.serve,
            args=(theirs, signer),
            kwargs={"log": self.lines.append, "max_channels": max_channels},
        )
        self.thread.start()
        self._theirs = theirs
        self._next = 0

    def channel(self, keys: tuple[int, ...] = (EC_KEY,), budget: int = 1) -> socket.socket:
        self._next += 1
        sock = new_channel(self.control, Grant(self._next, budget, keys))
        sock.settimeout(5)
        return sock

    def ask(self, sock: socket.socket, op: Op, payload: bytes, key: int = EC_KEY, rid: int = 1):
        sock.send(keyproto.encode_request(Request(op, key, rid, payload)))
        return keyproto.decode_response_packet(sock.recv(keyproto.MAX_RESPONSE))

    def wait_log(self, text: str) -> str:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for line in self.lines:
                if text in line:
                    return line
            time.sleep(0.01)
        raise AssertionError(f"no log line with {text!r} in {self.lines}")

    def alive(self) -> None:
        """The loop still serves: a fresh channel gets a signature."""
        sock = self.channel()
        resp = self.ask(sock, Op.SIGN_ECDSA, bytes(32))
        assert resp.status == Status.OK
        sock.close()

    def stop(self) -> None:
        self.control.close()
        self.thread.join(5)
        assert not self.thread.is_alive(), "serve() did not return on control EOF"
        self._theirs.close()


@pytest.fixture(scope="module")
def signer() -> Signer:
    store = KeyStore()
    e = ec.generate_private_key(ec.SECP256R1())
    r = rsa.generate_private_key(65537, 2048)
    store.add(EC_KEY, pem_key(e), pem_cert(e))
    store.add(RSA_KEY, pem_key(r), pem_cert(r))
    return Signer(store)


@pytest.fixture
def holder(signer: Signer) -> Iterator[Holder]:
    h = Holder(signer)
    yield h
    h.stop()


def closed(sock: socket.socket) -> bool:
    return sock.recv(keyproto.MAX_RESPONSE) == b""


def test_signs_within_budget_then_refuses_and_closes(holder: Holder) -> None:
    sock = holder.channel(budget=2)
    for rid in (1, 2):
        resp = holder.ask(sock, Op.SIGN_ECDSA, bytes(32), rid=rid)
        assert (resp.status, resp.request_id) == (Status.OK, rid)
        assert 8 < len(resp.payload) <= 72
    resp = holder.ask(sock, Op.SIGN_ECDSA, bytes(32), rid=3)
    assert resp.status == Status.REFUSED_BUDGET
    assert closed(sock)
    assert "refused REFUSED_BUDGET" in holder.wait_log("channel 1:")
    holder.alive()


def test_key_not_granted_is_refused(holder: Holder) -> None:
    sock = holder.channel(keys=(RSA_KEY,))
    resp = holder.ask(sock, Op.SIGN_ECDSA, bytes(32), key=EC_KEY)
    assert resp.status == Status.REFUSED_KEY
    assert closed(sock)
    holder.wait_log("key not granted")


def test_bad_shape_is_refused_and_closes(holder: Holder) -> None:
    sock = holder.channel(keys=(RSA_KEY,))
    resp = holder.ask(sock, Op.SIGN_RSA_RAW, os.urandom(256), key=RSA_KEY)
    assert resp.status == Status.REFUSED_SHAPE
    assert closed(sock)
    holder.wait_log("not EMSA-PSS shaped")


@pytest.mark.parametrize(
    ("packet", "log"),
    [
        (b"\x07" * 20, "bad version"),
        (b"", None),  # an empty packet reads as EOF: closed, nothing to say
        (keyproto.encode_request(Request(Op.SIGN_ECDSA, 1, 1, bytes(32))) * 2, "exactly one"),
        (keyproto.REQUEST_HEADER.pack(1, 3, 1, 1, 40) + bytes(32), "exactly one"),
        (keyproto.REQUEST_HEADER.pack(1, 3, 1, 1, 5000), "exceeds"),
        (b"\x01" * (keyproto.MAX_REQUEST + 100), "oversize packet"),
    ],
)
def test_protocol_errors_close_the_channel(holder: Holder, packet: bytes, log: str | None) -> None:
    sock = holder.channel()
    sock.send(packet)
    assert closed(sock)
    if log:
        holder.wait_log(log)
    holder.alive()


def test_fds_from_a_worker_are_dropped_and_the_channel_closed(holder: Holder) -> None:
    sock = holder.channel()
    r, w = os.pipe()
    frame = keyproto.encode_request(Request(Op.SIGN_ECDSA, 1, 1, bytes(32)))
    sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]).tobytes())])
    assert closed(sock)
    holder.wait_log("worker passed fds")
    os.close(r)
    os.close(w)


@pytest.mark.timeout(30)
def test_a_worker_that_does_not_read_cannot_block_the_holder(holder: Holder) -> None:
    hog = holder.channel(budget=100000)
    hog.setblocking(False)
    frame = keyproto.encode_request(Request(Op.SIGN_ECDSA, 1, 1, bytes(32)))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # never read the answers
        try:
            hog.send(frame)
        except BlockingIOError:
            time.sleep(0.005)
        except (BrokenPipeError, ConnectionResetError):
            break  # the key holder gave up on us, as it should
    holder.wait_log("could not answer")
    holder.alive()


@pytest.mark.parametrize("case", ["no fd", "two fds", "stream socket", "bad header", "unknown key"])
def test_bad_grants_are_rejected_and_their_fds_closed(holder: Holder, case: str) -> None:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    extra_mine, extra = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    grant = keyproto.encode_grant(Grant(9, 1, (EC_KEY,)))
    fds = [theirs.fileno()]
    if case == "no fd":
        fds = []
    elif case == "two fds":
        fds.append(extra.fileno())
    elif case == "stream socket":
        mine.close()
        mine, stream = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [stream.fileno()]
    elif case == "bad header":
        grant = b"\x09" + grant[1:]
    elif case == "unknown key":
        grant = keyproto.encode_grant(Grant(9, 1, (EC_KEY, 4242)))
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    holder.control.sendmsg([grant], anc)
    if case == "stream socket":
        stream.close()
    theirs.close()
    extra.close()
    holder.wait_log("rejected grant")
    mine.settimeout(5)
    extra_mine.settimeout(5)
    assert mine.recv(10) == b""  # the key holder closed its copy: no one serves this end
    assert extra_mine.recv(10) == b""
    holder.alive()


def test_grants_beyond_max_channels_are_rejected_until_one_closes(signer: Signer) -> None:
    h = Holder(signer, max_channels=2)
    try:
        first, second = h.channel(), h.channel()
        third = h.channel()
        assert closed(third)  # rejected: the key holder closed its end
        h.wait_log("control: rejected grant: already serving 2 channels")
        assert h.ask(second, Op.SIGN_ECDSA, bytes(32)).status == Status.OK
        first.close()
        assert h.ask(second, Op.SIGN_ECDSA, bytes(32), rid=2).status == Status.REFUSED_BUDGET
        assert closed(second)  # refused: closed too, so both places are free again
        deadline = time.monotonic() + 5
        while True:  # the key holder sees the two closes when it gets to them
            sock = h.channel()
            sock.send(keyproto.encode_request(Request(Op.SIGN_ECDSA, EC_KEY, 1, bytes(32))))
            reply = sock.recv(keyproto.MAX_RESPONSE)
            if reply or time.monotonic() > deadline:
                break
        assert keyproto.decode_response_packet(reply).status == Status.OK
        h.alive()
    finally:
        h.stop()


def test_an_oversize_grant_is_rejected_as_truncated(holder: Holder) -> None:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    grant = keyproto.encode_grant(Grant(9, 1, (EC_KEY,))) + bytes(keyproto.MAX_GRANT)
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]).tobytes())]
    holder.control.sendmsg([grant], anc)
    theirs.close()
    holder.wait_log("control: rejected grant: truncated grant")
    mine.settimeout(5)
    assert mine.recv(10) == b""
    holder.alive()


def test_control_eof_ends_serve_and_closes_channels(signer: Signer) -> None:
    h = Holder(signer)
    sock = h.channel()
    h.stop()
    assert closed(sock)


def test_serve_wants_a_seqpacket_control_socket(signer: Signer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(ValueError, match="SEQPACKET"):
        keyholder.serve(a, signer)
    a.close()
    b.close()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.one_of(
        st.binary(min_size=1, max_size=1100),
        st.builds(
            lambda op, key, n, tail: keyproto.REQUEST_HEADER.pack(1, op, key, 1, n) + tail,
            st.integers(0, 5),
            st.integers(0, 3),
            st.integers(0, 2000),
            st.binary(max_size=600),
        ),
    )
)
def test_fuzzed_packets_never_crash_or_get_an_unearned_signature(
    holder: Holder, packet: bytes
) -> None:
    sock = holder.channel(keys=(EC_KEY, RSA_KEY))
    sock.send(packet)
    reply = sock.recv(keyproto.MAX_RESPONSE)
    if reply:
        resp = keyproto.decode_response_packet(reply)
        if resp.status == Status.OK:
            req = keyproto.decode_request_packet(packet)
            assert req.op == Op.SIGN_ECDSA and req.key_id == EC_KEY
            assert len(req.payload) in (32, 48, 64)
    sock.close()
    assert holder.thread.is_alive()


def test_load_keys_from_fds_reads_and_closes(tmp_path) -> None:
    paths = []
    for i in range(2):
        p = tmp_path / f"k{i}.pem"
        p.write_bytes(f"key {i}".encode() * 1000)
        paths.append(p)
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    assert keyholder.load_keys_from_fds(fds) == [p.read_bytes() for p in paths]
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_load_keys_from_fds_refuses_directories_and_huge_files(tmp_path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    with pytest.raises(ValueError, match="not a regular file"):
        keyholder.load_keys_from_fds([fd])
    big = tmp_path / "big"
    big.write_bytes(b"x" * 5000)
    fd = os.open(big, os.O_RDONLY)
    with pytest.raises(ValueError, match="more than 4096"):
        keyholder.load_keys_from_fds([fd], max_size=4096)
    with pytest.raises(OSError):
        os.fstat(fd)


def test_check_reads_keys_with_the_key_holder_s_loader(tmp_path) -> None:
    """`titus --check` and the key holder (main.load_store) refuse the same key alike,
    naming the key setting's FILE:LINE."""
    from tests.unit.titus.test_config_support import basic_conf, make_cert
    from titus.config.load import load_config
    from titus.keyholder.checks import check_keys
    from titus.keyholder.main import key_slots, load_store
    from titus.keyholder.signer import KeyStoreError

    conf = basic_conf(tmp_path)
    assert check_keys(load_config(conf)) is None
    _, other_key = make_cert(tmp_path / "other", "other.example", kind="ec")
    (tmp_path / "certs" / "example.com.key").write_bytes(other_key.read_bytes())
    config = load_config(conf)
    problem = check_keys(config)
    assert problem is not None and problem.startswith(f"{conf}:3: ")
    assert "does not match" in problem
    slots, _ = key_slots(config)
    with pytest.raises(KeyStoreError) as refused:
        load_store(slots, [os.open(s.key_path, os.O_RDONLY) for s in slots])
    assert str(refused.value) == problem
