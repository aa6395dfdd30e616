"""The fork server's C loop (sandbox/_jail/serve.c) against mutated requests, sent with
fds through a real socket, and the caller's reply decoder against mutated replies.

The loop has no recipe here, so nothing is spawned: every packet must come back to
Python as a request (exactly the fds it says it carries, its name as sent) or as a
bad one with its fds closed, never a crash, and no fd may stay open either way.
Replies made by the loop's encoder (Server.reply) decode to what was sent; any
mutation decodes to a Reply or raises ValueError.  The libFuzzer harness of the
same decoder is tests/fuzz/c/fuzz_spawnreq.c; `make test-asan` runs this file
against the ASan+UBSan build.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox import _jail
from sandbox.forkserver import Reply, decode_reply, encode_request
from tests.fuzz.budget import fuzz_settings

SEEDS = [
    encode_request(_jail.REQ_SPAWN, 1, "worker", 640_001, 3),
    encode_request(_jail.REQ_UPDATE, 2, "worker", 0, 1),
    encode_request(_jail.REQ_SPAWN, 2**64 - 1, "w" * _jail.REQ_MAX_NAME, 0, 0),
]
_HEAD = struct.Struct("=IHHQIHH")


def own_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def serve_one(packet: bytes, nfds: int) -> tuple:
    """Send `packet` with `nfds` fds to a fresh loop; its event, every fd closed after."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    loop = _jail.Server(theirs.fileno(), 1.0)
    before = own_fds()
    pipes = [os.pipe() for _ in range((nfds + 1) // 2)]
    fds = [fd for pipe in pipes for fd in pipe][:nfds]
    try:
        socket.send_fds(ours, [packet], fds)
    finally:
        for pipe in pipes:
            for fd in pipe:
                os.close(fd)
    try:
        event = loop.serve()
        if event[0] == "request":
            for fd in event[5]:
                os.close(fd)
        assert own_fds() == before, "an fd of the request is still open"
        return event
    finally:
        ours.close()
        theirs.close()


def check(packet: bytes, nfds: int) -> None:
    event = serve_one(packet, nfds)
    if event[0] == "eof":
        assert packet == b""
        return
    if event[0] == "bad":
        assert isinstance(event[2], str) and event[2]
        return
    what, kind, request_id, name, uid, fds = event
    assert what == "request"
    magic, version, kind_, id_, uid_, said, name_len = _HEAD.unpack_from(packet)
    assert (kind, request_id, uid, len(fds)) == (kind_, id_, uid_, said) == (kind, id_, uid, nfds)
    assert name == packet[_HEAD.size:] and len(name) == name_len
    assert (magic, version) == (_jail.REQ_MAGIC, _jail.SERVE_VERSION)


@fuzz_settings(1500)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                        max_size=6), st.integers(0, 200), st.integers(0, 17))
def test_mutated_requests(seed: bytes, flips: list[tuple[int, int]], cut: int, nfds: int
                          ) -> None:
    packet = bytearray(seed)
    for offset, value in flips:
        packet[offset % len(packet)] = value
    check(bytes(packet), nfds)
    check(bytes(packet[: cut % (len(packet) + 1)]), nfds % 3)


@fuzz_settings(500)
@given(st.binary(max_size=200), st.integers(0, 4))
def test_random_bytes_after_a_valid_magic(tail: bytes, nfds: int) -> None:
    check(struct.pack("=IH", _jail.REQ_MAGIC, _jail.SERVE_VERSION) + tail, nfds)


def encoded_reply(request_id: int, pid: int, layer: str, err: int, message: str) -> bytes:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        _jail.Server(theirs.fileno(), 1.0).reply(request_id, pid, layer, err, message)
        return ours.recv(_jail.REPLY_MAX + 1)
    finally:
        ours.close()
        theirs.close()


def reply_with_listener(request_id: int, pid: int) -> tuple[bytes, list[int]]:
    """A ready reply that carries an fd (a pipe's end standing for the listener): the
    packet and the fds that arrived with it (ours to close)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        _jail.Server(theirs.fileno(), 1.0).reply(request_id, pid, listener=r)
        packet, fds, _, _ = socket.recv_fds(ours, _jail.REPLY_MAX + 1, 2)
        return packet, fds
    finally:
        for fd in (r, w):
            os.close(fd)
        ours.close()
        theirs.close()


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@fuzz_settings(500)
@given(st.integers(0, 2**64 - 1), st.integers(1, 2**31 - 1), st.booleans(),
       texts.filter(bool).map(lambda t: t[:16]), st.integers(0, 4095), texts)
def test_replies_round_trip(request_id: int, pid: int, failed: bool, layer: str, err: int,
                            message: str) -> None:
    if failed:
        reply = decode_reply(encoded_reply(request_id, pid, layer, err, message))
        assert (reply.request_id, reply.pid) == (request_id, pid)
        assert reply.error is not None
        assert (reply.error.layer, reply.error.errno, reply.error.message) == (layer, err, message)
    else:
        assert decode_reply(encoded_reply(request_id, pid, "", 0, "")) == Reply(request_id, pid,
                                                                                 None)


def test_a_listener_comes_with_a_ready_reply_only() -> None:
    before = own_fds()
    packet, fds = reply_with_listener(9, 4321)
    assert len(fds) == 1
    try:
        assert decode_reply(packet, fds[0]) == Reply(9, 4321, None, fds[0])
        with pytest.raises(ValueError):
            decode_reply(packet)  # its flag says an fd comes with it
        with pytest.raises(ValueError):  # and a reply without the flag carries none
            decode_reply(encoded_reply(9, 4321, "", 0, ""), fds[0])
    finally:
        os.close(fds[0])
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with pytest.raises(ValueError):  # a failed spawn has no listener to give
            _jail.Server(theirs.fileno(), 1.0).reply(1, 0, "spawn", 5, "x", listener=0)
    finally:
        ours.close()
        theirs.close()
    assert own_fds() == before


REPLY_SEEDS = [encoded_reply(3, 1234, "", 0, ""),
               encoded_reply(4, 0, "rootfs", 2, "No such file or directory: /x"),
               reply_with_listener(5, 99)[0]]


@fuzz_settings(1000)
@given(st.sampled_from(REPLY_SEEDS), st.lists(st.tuples(st.integers(0, 100),
                                                        st.integers(0, 255)), max_size=6),
       st.integers(0, 100))
def test_mutated_replies(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    packet = bytearray(seed)
    for offset, value in flips:
        packet[offset % len(packet)] = value
    for candidate in (bytes(packet), bytes(packet[: cut % (len(packet) + 1)])):
        for fd in (None, 1000):  # as if an fd had come with it (never used, never closed)
            try:
                reply = decode_reply(candidate, fd)
            except ValueError:
                continue
            assert isinstance(reply, Reply)
            assert (reply.error is None) == (reply.pid is not None and candidate[6] == 0)
            # The fd is taken only by a ready reply whose flag says it comes with it.
            assert reply.listener == fd and (fd is None or reply.error is None)
            assert struct.unpack_from("=I", candidate, 28)[0] == (fd is not None)
