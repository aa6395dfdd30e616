"""The worker <-> key holder wire format: exact frames, and nothing but ProtocolError on junk."""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from titus.wire import keyproto
from titus.wire.keyproto import (
    MAX_PAYLOAD,
    Grant,
    Op,
    ProtocolError,
    Request,
    RequestDecoder,
    Response,
    ResponseDecoder,
    Status,
)

requests = st.builds(
    Request,
    op=st.sampled_from(Op),
    key_id=st.integers(0, 0xFFFF),
    request_id=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=MAX_PAYLOAD),
)
responses = st.builds(
    Response,
    status=st.sampled_from(Status),
    request_id=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=MAX_PAYLOAD),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(requests, max_size=5), st.lists(st.integers(0, 10_000), max_size=8))
def test_requests_roundtrip_in_any_chunking(reqs: list[Request], cuts: list[int]) -> None:
    stream = b"".join(keyproto.encode_request(r) for r in reqs)
    dec = RequestDecoder()
    out: list[Request] = []
    for piece in chunked(stream, cuts):
        out += dec.feed(piece)
    assert out == reqs
    assert dec.buffered == 0


@given(st.lists(responses, max_size=5), st.lists(st.integers(0, 10_000), max_size=8))
def test_responses_roundtrip_in_any_chunking(resps: list[Response], cuts: list[int]) -> None:
    stream = b"".join(keyproto.encode_response(r) for r in resps)
    dec = ResponseDecoder()
    out: list[Response] = []
    for piece in chunked(stream, cuts):
        out += dec.feed(piece)
    assert out == resps


@given(requests)
def test_one_packet_one_request(req: Request) -> None:
    assert keyproto.decode_request_packet(keyproto.encode_request(req)) == req


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_bytes_raise_only_protocol_error(pieces: list[bytes]) -> None:
    for dec in (RequestDecoder(), ResponseDecoder()):
        try:
            for piece in pieces:
                for msg in dec.feed(piece):
                    assert len(msg.payload) <= MAX_PAYLOAD
        except ProtocolError:
            pass
    for fn in (keyproto.decode_request_packet, keyproto.decode_response_packet):
        with contextlib.suppress(ProtocolError):
            fn(b"".join(pieces))
    with contextlib.suppress(ProtocolError):
        keyproto.decode_grant(b"".join(pieces))


@settings(max_examples=300)
@given(
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=40),
)
def test_structured_junk_headers(version, op, key_id, rid, length, tail) -> None:
    """Headers with every field arbitrary: only ProtocolError, and only valid frames pass."""
    data = struct.pack("!BBHII", version, op, key_id, rid, length) + tail
    first_ok = version == keyproto.VERSION and op in {1, 2, 3} and length <= MAX_PAYLOAD
    try:
        msgs = RequestDecoder().feed(data)
    except ProtocolError:
        # The first header is bad, or the tail holds a whole second one that is.
        assert not first_ok or len(tail) >= length + keyproto.REQUEST_HEADER.size
        return
    assert first_ok
    assert all(m.key_id == key_id and m.request_id == rid for m in msgs)


@given(
    st.integers(0, 3),
    st.integers(0, 4),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, MAX_PAYLOAD + 2),
    st.binary(max_size=MAX_PAYLOAD + 40),
    st.sampled_from([None, 0, 1, 5, keyproto.REQUEST_HEADER.size]),
    st.booleans(),
)
def test_decode_request_packet_is_the_decoder_s_verdict(
    version, op, key_id, rid, length, tail, cut, exact
) -> None:
    """decode_request_packet's header fast path accepts exactly what RequestDecoder accepts
    as one frame, with the same result, and leaves every error to it."""
    if exact:  # the length field names the rest of the packet, as a real request's does
        length = len(tail)
    packet = struct.pack("!BBHII", version, op, key_id, rid, length) + tail
    if cut is not None:
        packet = packet[:cut]
    for max_payload in (MAX_PAYLOAD, 64):
        try:
            expected: Request | str = keyproto._exactly_one(RequestDecoder(max_payload), packet)
        except ProtocolError as e:
            expected = str(e)
        try:
            got: Request | str = keyproto.decode_request_packet(packet, max_payload)
        except ProtocolError as e:
            got = str(e)
        assert got == expected
        if isinstance(got, Request):
            assert type(got.op) is Op and type(got.payload) is bytes


def header(version=keyproto.VERSION, op=1, key_id=0, rid=0, length=0) -> bytes:
    return keyproto.REQUEST_HEADER.pack(version, op, key_id, rid, length)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (header(version=2), "bad version"),
        (header(version=0), "bad version"),
        (header(op=0), "unknown op"),
        (header(op=4), "unknown op"),
        (header(length=MAX_PAYLOAD + 1), "exceeds"),
        (header(length=0xFFFFFFFF), "exceeds"),
    ],
)
def test_bad_request_headers_fail_on_the_header_alone(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        RequestDecoder().feed(data)


def test_max_payload_is_accepted_and_one_more_byte_is_not() -> None:
    req = Request(Op.SIGN_RSA_RAW, 1, 2, b"\x01" * MAX_PAYLOAD)
    assert RequestDecoder().feed(keyproto.encode_request(req)) == [req]
    with pytest.raises(ProtocolError):
        keyproto.encode_request(Request(Op.SIGN_RSA_RAW, 1, 2, b"\x01" * (MAX_PAYLOAD + 1)))
    small = RequestDecoder(max_payload=16)
    with pytest.raises(ProtocolError):
        small.feed(keyproto.encode_request(Request(Op.SIGN_ECDSA, 1, 2, b"\x00" * 17)))


def test_a_failed_decoder_stays_failed() -> None:
    dec = RequestDecoder()
    with pytest.raises(ProtocolError):
        dec.feed(header(version=9))
    good = keyproto.encode_request(Request(Op.SIGN_ECDSA, 1, 1, b"x" * 32))
    with pytest.raises(ProtocolError):
        dec.feed(good)


def test_partial_frames_wait_for_the_rest() -> None:
    frame = keyproto.encode_request(Request(Op.SIGN_ECDSA, 7, 9, b"d" * 32))
    dec = RequestDecoder()
    assert dec.feed(frame[:5]) == []
    assert dec.feed(frame[5:20]) == []
    assert dec.buffered == 20
    assert dec.feed(frame[20:]) == [Request(Op.SIGN_ECDSA, 7, 9, b"d" * 32)]


@pytest.mark.parametrize("extra", [b"", b"\x01", None])
def test_a_packet_must_be_exactly_one_frame(extra: bytes | None) -> None:
    frame = keyproto.encode_request(Request(Op.SIGN_ECDSA, 1, 1, b"x" * 32))
    packet = frame[:-1] if extra == b"" else frame + (frame if extra is None else extra)
    with pytest.raises(ProtocolError, match="exactly one"):
        keyproto.decode_request_packet(packet)


def test_responses_reject_unknown_status() -> None:
    bad = keyproto.RESPONSE_HEADER.pack(keyproto.VERSION, 5, 1, 0)
    with pytest.raises(ProtocolError, match="unknown status"):
        keyproto.decode_response_packet(bad)
    with pytest.raises(ProtocolError):
        keyproto.encode_response(Response(7, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "req",
    [
        Request(Op.SIGN_ECDSA, 0x10000, 1, b""),
        Request(Op.SIGN_ECDSA, 1, 1 << 32, b""),
        Request(9, 1, 1, b""),  # type: ignore[arg-type]
    ],
)
def test_unencodable_requests(req: Request) -> None:
    with pytest.raises(ProtocolError):
        keyproto.encode_request(req)


@given(
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=keyproto.MAX_GRANT_KEYS),
)
def test_grant_roundtrip(channel_id: int, budget: int, keys: list[int]) -> None:
    grant = Grant(channel_id, budget, tuple(keys))
    packet = keyproto.encode_grant(grant)
    assert len(packet) <= keyproto.MAX_GRANT
    assert keyproto.decode_grant(packet) == grant


def test_malformed_grants() -> None:
    good = keyproto.encode_grant(Grant(1, 1, (1, 2)))
    assert keyproto.decode_grant(good) == Grant(1, 1, (1, 2))
    for bad, message in [
        (good[:-1], "length"),
        (good + b"\0", "length"),
        (b"\x02" + good[1:], "version"),
        (good[:1] + b"\x02" + good[2:], "type"),
        (keyproto.GRANT_HEADER.pack(1, 1, 0, 1, 1), "0 keys"),
        (good[:5], "short"),
    ]:
        with pytest.raises(ProtocolError, match=message):
            keyproto.decode_grant(bad)
    with pytest.raises(ProtocolError):
        keyproto.encode_grant(Grant(1, 1, ()))
    with pytest.raises(ProtocolError):
        keyproto.encode_grant(Grant(1, 1, tuple(range(keyproto.MAX_GRANT_KEYS + 1))))
