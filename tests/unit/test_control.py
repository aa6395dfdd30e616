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


def test_finished_keeps_sni_and_vhost_of_a_failed_handshake():
    fin = control.Finished("handshake-failed", 0, 0, "x", sni="a.test", vhost=1)
    assert control.decode_from_worker(control.encode(fin)) == fin
    with pytest.raises(control.ControlError):
        control.decode_from_worker(b'D{"outcome": "ok", "bytes_in": 0, "bytes_out": 0, '
                                   b'"vhost": "1"}')


def test_client_identity_round_trip():
    hs = control.HandshakeDone(vhost=0, sni=None, version="TLSv1.3", cipher="x", alpn=None,
                               handshake_ms=1.0, client_cn="alice", client_subject="CN=alice",
                               client_dns=("alice.internal",),
                               client_uri=("spiffe://test/alice", "urn:x"))
    assert control.decode_from_worker(control.encode(hs)) == hs
    # the C worker may leave them out: no certificate
    bare = b'H{"vhost": 0, "sni": null, "version": "", "cipher": "", "handshake_ms": 1}'
    decoded = control.decode_from_worker(bare)
    assert (decoded.client_subject, decoded.client_dns, decoded.client_uri) == (None, (), ())


HS = b'H{"vhost": 0, "sni": null, "version": "", "cipher": "", "handshake_ms": 1, '


@pytest.mark.parametrize("field", [
    b'"client_dns": "a.test"}', b'"client_dns": [1]}', b'"client_uri": [null]}',
    b'"client_dns": ["' + b"a" * 254 + b'"]}',
    b'"client_dns": [' + b",".join([b'"a"'] * (control.MAX_SANS + 1)) + b"]}",
    b'"client_uri": ["\\ud800"]}', b'"client_subject": ["CN=a"]}',
])
def test_forged_identities_are_refused(field):
    with pytest.raises(control.ControlError):
        control.decode_from_worker(HS + field)


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
                     "bytes_in", "bytes_out", "detail", "signatures", "signature_failures",
                     "client_cn", "client_subject", "client_dns", "client_uri"]),
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
