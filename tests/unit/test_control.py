"""The supervisor's parser for worker messages: hostile input gives ControlError, nothing else."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from titus.wire import control


def test_round_trip():
    hs = control.HandshakeDone(vhost=2, sni="a.test", version="TLSv1.3",
                               cipher="TLS_AES_128_GCM_SHA256", alpn="h2", handshake_ms=1.5)
    assert control.decode_from_worker(control.encode(hs)) == hs
    fin = control.Finished("ok", 10, 20, None, 1, 0)
    assert control.decode_from_worker(control.encode(fin)) == fin


@pytest.mark.parametrize("packet", [
    b"", b"H", b"Hnull", b"H[]", b'H{"vhost": "1"}', b"X{}", b"C{}",  # wrong type for a worker
    b'D{"outcome": "pwned", "bytes_in": 0, "bytes_out": 0}',
    b'D{"outcome": "ok", "bytes_in": -1, "bytes_out": 0}',
    b'D{"outcome": "ok", "bytes_in": true, "bytes_out": 0}',
    b'D{"outcome": "ok", "bytes_in": 0, "bytes_out": 0, "extra": 1}',
    b'H{"vhost": 0, "sni": "' + b"a" * 300 + b'", "version": "", "cipher": "", '
    b'"handshake_ms": 1}',
    b'H{"vhost": 0, "sni": null, "version": "", "cipher": "", "handshake_ms": NaN}',
    b"D" + b"[" * 5000,
    b"H" + b" " * control.MAX_PACKET,
])
def test_forged_messages_are_refused(packet):
    with pytest.raises(control.ControlError):
        control.decode_from_worker(packet)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=control.MAX_PACKET + 10))
def test_random_bytes(packet):
    with contextlib.suppress(control.ControlError):
        control.decode_from_worker(packet)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=10)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["H", "D"]), st.dictionaries(
    st.sampled_from(["vhost", "sni", "version", "cipher", "alpn", "handshake_ms", "outcome",
                     "bytes_in", "bytes_out", "detail", "signatures", "signature_failures"]),
    json_values, max_size=8))
def test_json_shaped_garbage(kind, body):
    packet = kind.encode() + json.dumps(body).encode()
    try:
        msg = control.decode_from_worker(packet)
    except control.ControlError:
        return
    # Whatever gets through is exactly the declared shape.
    if isinstance(msg, control.HandshakeDone):
        assert isinstance(msg.vhost, int) and not isinstance(msg.vhost, bool)
        assert isinstance(msg.version, str) and isinstance(msg.cipher, str)
    else:
        assert msg.outcome in control.OUTCOMES
        assert msg.bytes_in >= 0 and msg.bytes_out >= 0
