"""The control messages (titus/wire/control.py): every message round-trips, and the
supervisor's parser refuses hostile input with ControlError and nothing else."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from titus.wire import control

ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=32)
NAMES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64)
CN = st.text(st.characters(exclude_categories=("Cs",)), max_size=256)

UTF8 = st.text(st.characters(exclude_categories=("Cs",)), max_size=64)
IDENTITY = st.none() | st.tuples(UTF8, st.lists(UTF8, max_size=16).map(tuple),
                                 st.lists(UTF8, max_size=16).map(tuple))
HANDSHAKES = st.builds(
    lambda identity, **kw: control.HandshakeDone(
        **kw, client_subject=identity[0] if identity else None,
        client_dns=identity[1] if identity else (), client_uri=identity[2] if identity else ()),
    identity=IDENTITY,
    vhost=st.integers(0, 0xFFFE), sni=st.none() | NAMES, version=ASCII, cipher=ASCII,
    alpn=st.none() | NAMES, handshake_ms=st.integers(0, 2**32 - 1).map(lambda us: us / 1000),
    client_cn=st.none() | CN)
FINISHED = st.builds(
    control.Finished,
    outcome=st.sampled_from(control.WORKER_OUTCOMES), bytes_in=st.integers(0, 2**63 - 1),
    bytes_out=st.integers(0, 2**63 - 1), detail=st.none() | ASCII,
    signatures=st.integers(0, 2**32 - 1), signature_failures=st.integers(0, 2**32 - 1),
    vhost=st.none() | st.integers(0, 0xFFFE), sni=st.none() | NAMES)
TO_WORKER = st.one_of(
    st.builds(control.Connection, st.tuples(st.sampled_from(["127.0.0.1", "::1", "2001:db8::7",
                                                              "192.0.2.200"]),
                                            st.integers(0, 65535))),
    st.just(control.BackendReady()), st.builds(control.BackendFailed, ASCII))


@settings(max_examples=300, deadline=None)
@given(HANDSHAKES | FINISHED)
def test_worker_messages_round_trip(msg) -> None:
    assert control.decode_from_worker(control.encode(msg)) == msg


@settings(max_examples=100, deadline=None)
@given(TO_WORKER)
def test_supervisor_messages_round_trip(msg) -> None:
    assert control.decode_from_supervisor(control.encode(msg)) == msg


def test_the_wire_format_is_what_the_c_worker_speaks() -> None:
    """The layouts titus/worker/wk_control.c writes and reads, byte for byte."""
    assert control.encode(control.Connection(("127.0.0.1", 443))) == \
        b"\x01\x04\x7f\x00\x00\x01\x01\xbb"
    assert control.encode(control.BackendFailed("no")) == b"\x03\x02no"
    assert control.encode(control.BackendReady()) == b"\x02"
    hs = control.HandshakeDone(3, "a.test", "TLSv1.3", "C", None, 1.5, "é")
    assert control.encode(hs) == (b"\x81\x00\x03\x00\x00\x05\xdc\x06" + b"\x07TLSv1.3\x01C"
                                  + b"\x06a.test" + b"\x00\x02\xc3\xa9")
    fin = control.Finished("no-vhost", 1, 2, "d", 3, 4, "x", None)
    assert control.encode(fin) == (b"\x82\x02\xff\xff" + struct.pack("!QQII", 1, 2, 3, 4)
                                   + b"\x03\x01x\x00\x01d")


def test_what_cannot_be_encoded_is_refused() -> None:
    for msg in [control.HandshakeDone(0, "x" * 256, "v", "c", None, 1.0),
                control.HandshakeDone(0x10000, None, "v", "c", None, 1.0),
                control.Finished("pwned", 0, 0), control.Finished("ok", -1, 0),
                control.Connection(("not an address", 1)), object()]:
        with pytest.raises(control.ControlError):
            control.encode(msg)
    # A reason for the worker is made printable ASCII, never refused.
    assert control.encode(control.BackendFailed("é\n" * 200))[:2] == b"\x03\xff"


REAL = [control.encode(control.HandshakeDone(0, "a.test", "TLSv1.3", "TLS_AES_128_GCM_SHA256",
                                             "h2", 2.5, "alice", "CN=alice", ("a.test",),
                                             ("spiffe://x/a",))),
        control.encode(control.Finished("ok", 10, 20, "detail", 1, 0, "a.test", 0))]


def test_client_identity_layout() -> None:
    """A certificate's names: subject, then the DNS SANs, then the URI SANs."""
    hs = control.HandshakeDone(0, None, "v", "c", None, 0.0, None, "CN=a", ("d",), ("u", "w"))
    assert control.encode(hs) == (b"\x81\x00\x00\x00\x00\x00\x00\x08\x01v\x01c"
                                  + b"\x00\x04CN=a" + b"\x01\x00\x01d"
                                  + b"\x02\x00\x01u\x00\x01w")
    with pytest.raises(control.ControlError):  # SANs without a certificate
        control.encode(hs._replace(client_subject=None))
    with pytest.raises(control.ControlError):
        control.encode(hs._replace(client_dns=("d",) * 17))


@pytest.mark.parametrize("packet", [
    b"", b"\x81", b"\x82", b"\x01\x04\x7f\x00\x00\x01\x01\xbb",  # a supervisor's message
    b"\x81" + b"\x00" * 7,  # truncated strings
    REAL[0] + b"\x00", REAL[1] + b"\x00", REAL[0][:-1], REAL[1][:-1],  # not exactly consumed
    REAL[0][:7] + b"\x08" + REAL[0][8:],  # an unknown flag
    b"\x81\xff\xff" + REAL[0][3:],  # vhost "none" in a handshake
    b"\x82\x08" + REAL[1][2:],  # an unknown outcome
    b"\x82\x00\x00\x00" + b"\xff" * 8 + REAL[1][12:],  # 2**64 - 1 bytes
    REAL[0].replace(b"a.test", b"a\x00test"), REAL[0].replace(b"a.test", b"a\xc3\xa9est"),
    REAL[0].replace(b"alice", b"\xed\xa0\x80ab"),  # a lone surrogate, CESU-style
    REAL[0].replace(b"\x01\x00\x0cspiffe", b"\x11\x00\x0cspiffe"),  # 17 URIs
    REAL[0].replace(b"\x00\x06a.test", b"\x00\xffa.test"),  # a name longer than it is
    b"\x81" + b" " * control.MAX_PACKET,
])
def test_forged_messages_are_refused(packet: bytes) -> None:
    with pytest.raises(control.ControlError):
        control.decode_from_worker(packet)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=control.MAX_PACKET + 10))
def test_random_bytes(packet: bytes) -> None:
    with contextlib.suppress(control.ControlError):
        control.decode_from_worker(packet)
    with contextlib.suppress(control.ControlError):
        control.decode_from_supervisor(packet)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(REAL), st.integers(0, 60), st.binary(min_size=1, max_size=4))
def test_real_messages_with_bytes_overwritten(packet: bytes, at: int, junk: bytes) -> None:
    forged = packet[:at] + junk + packet[at + len(junk):]
    try:
        msg = control.decode_from_worker(forged)
    except control.ControlError:
        return
    assert msg.__class__ in (control.HandshakeDone, control.Finished)
