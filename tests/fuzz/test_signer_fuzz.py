"""The key holder's rules and wire format against a compromised worker, in process.

Every request is judged twice: by titus.keyholder.signer and by the independent model
in tests/fuzz/keymodel.py.  The signer must sign exactly what the model
allows (and the signature must verify under the public key: never a
decryption, never a block that is not PSS-shaped, never a bad DigestInfo),
refuse everything else with a reason the model gives, and charge the budget
only for what it signs.  The decoders must give back exactly the frame they
were sent, or ProtocolError.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.fuzz.budget import fuzz_settings
from tests.fuzz.keymodel import (
    HEADER,
    RSA2048,
    RSA2049,
    Material,
    is_digest_info,
    is_pss_shaped,
    packets,
    parse_frame,
    probes,
    refusals,
    shared,
    verify,
)
from titus.keyholder.signer import Budget, Refused, digestinfo_hash, pss_hash
from titus.wire import keyproto
from titus.wire.keyproto import Op, ProtocolError

UNKNOWN = (0, 5, 0xFFFF)


@st.composite
def requests(draw: st.DrawFn) -> tuple[Op, int, bytes, int, int]:
    """(op, key id, payload, budget limit, budget used): mostly as the probe intends,
    sometimes with another op or key (a payload sent where it does not belong)."""
    keys = shared()
    probe = draw(probes(keys.private))
    op, key_id = probe.op, probe.key_id
    if draw(st.integers(0, 3)) == 0:
        op = draw(st.sampled_from(list(Op)))
        key_id = draw(st.one_of(st.sampled_from(sorted(keys.private)),
                                st.sampled_from(UNKNOWN)))
    limit = draw(st.integers(0, 3))
    used = draw(st.sampled_from([0, 0, limit // 2, max(0, limit - 1), limit]))
    return op, key_id, probe.payload, limit, used


def judge(keys: Material, op: Op, key_id: int, payload: bytes, budget: Budget) -> None:
    """One request: the signer's answer must be the model's, and its signature genuine."""
    reasons = refusals(keys.facts, op, key_id, payload, budget.remaining)
    used = budget.used
    try:
        sig = keys.signer.sign(key_id, op, payload, budget)
    except Refused as r:
        event(f"refused {r.status.name}")
        assert reasons, f"refused {r.status.name} a request the rules allow"
        assert r.status in reasons, f"refused {r.status.name}, rules say {reasons}"
        assert budget.used == used, "a refusal was charged to the budget"
        return
    event(f"signed {op.name}")
    assert not reasons, f"signed a request the rules refuse ({reasons}): {op.name} {key_id}"
    assert budget.used == used + 1
    verify(keys.facts[key_id], op, payload, sig)


@fuzz_settings(900)
@given(requests())
def test_the_signer_signs_exactly_what_the_rules_allow(request_: tuple) -> None:
    op, key_id, payload, limit, used = request_
    budget = Budget(limit)
    budget.used = used
    judge(shared(), op, key_id, payload, budget)


@fuzz_settings(150)
@given(st.lists(requests(), min_size=1, max_size=8), st.integers(0, 4))
def test_a_budget_is_never_overdrawn(batch: list[tuple], limit: int) -> None:
    """One channel's budget across a series of requests: at most `limit` signatures."""
    budget = Budget(limit)
    signed = 0
    for op, key_id, payload, _, _ in batch:
        before = budget.used
        judge(shared(), op, key_id, payload, budget)
        signed += budget.used - before
    assert signed <= limit and budget.used == signed


@fuzz_settings(400)
@given(st.sampled_from([RSA2048, RSA2049]), st.data())
def test_the_shape_checks_agree_with_the_rfc(key_id: int, data: st.DataObject) -> None:
    """keyholder.signer's pss_hash / digestinfo_hash against the model, on probing payloads."""
    keys = shared()
    payload = data.draw(probes(keys.private)).payload
    bits = keys.facts[key_id].bits
    assert (pss_hash(payload, bits) is not None) == is_pss_shaped(payload, bits)
    assert (digestinfo_hash(payload) is not None) == is_digest_info(payload)


# --- frames --------------------------------------------------------------------------------


@fuzz_settings(800)
@given(packets())
def test_a_packet_is_exactly_one_valid_frame_or_a_protocol_error(packet: bytes) -> None:
    wanted = parse_frame(packet)
    try:
        req = keyproto.decode_request_packet(packet)
    except ProtocolError as e:
        assert wanted is None, f"refused a valid frame: {e}"
        assert "\n" not in str(e)
        return
    assert wanted == (req.op, req.key_id, req.request_id, req.payload)
    assert keyproto.encode_request(req) == packet


@fuzz_settings(400)
@given(st.lists(packets(), max_size=6), st.lists(st.integers(0, 5000), max_size=6))
def test_the_stream_decoder_stops_at_the_first_bad_frame(pieces: list[bytes],
                                                          cuts: list[int]) -> None:
    """Concatenated packets fed in arbitrary chunks: the leading valid frames come out, then
    ProtocolError at the first bad header (and the decoder stays poisoned), or a wait for
    more bytes.  Frames decoded in the call that fails are dropped with it."""
    stream = b"".join(pieces)
    expected, pos, bad = [], 0, False
    while pos + HEADER.size <= len(stream):
        version, op, _, _, length = HEADER.unpack_from(stream, pos)
        if version != 1 or op not in (1, 2, 3) or length > 1024:
            bad = True
            break
        end = pos + HEADER.size + length
        if end > len(stream):
            break
        expected.append(parse_frame(stream[pos:end]))
        pos = end
    decoder = keyproto.RequestDecoder()
    got: list[tuple] = []
    failed = False
    for a, b in itertools.pairwise(sorted({c % (len(stream) + 1) for c in cuts}
                                          | {0, len(stream)})):
        try:
            got += [(r.op, r.key_id, r.request_id, r.payload) for r in decoder.feed(stream[a:b])]
        except ProtocolError:
            failed = True
            with pytest.raises(ProtocolError):
                decoder.feed(b"")
            break
    assert failed == bad
    assert got == expected[: len(got)] and (failed or got == expected)


@fuzz_settings(500)
@given(st.binary(max_size=200), st.integers(0, 3))
def test_grants_decode_exactly_or_not_at_all(packet: bytes, prefix: int) -> None:
    if prefix:  # a real grant header with junk after it
        packet = struct.pack("!BBHII", 1, 1, prefix, 7, 1) + packet
    try:
        grant = keyproto.decode_grant(packet)
    except ProtocolError:
        return
    assert keyproto.encode_grant(grant) == packet
    assert 0 < len(grant.key_ids) <= keyproto.MAX_GRANT_KEYS
