"""Coverage-guided fuzzing of the key holder's request path: frame decoder, then the signer.

One input is one packet from a compromised worker.  It must decode to
exactly one frame or raise ProtocolError; a frame goes to a real Signer
(RSA-2048, RSA-2049, P-256, P-384 keys) with a budget of one, which must
sign exactly what the independent model in tests/fuzz/keymodel.py allows,
and every signature must verify.  Grants and responses are decoded too.
"""

from __future__ import annotations

import contextlib

import atheris
import runner

with atheris.instrument_imports(include=["titus"]):  # before anything imports them
    from tests.fuzz.keymodel import frame, refusals, shared, verify
    from titus.keyholder.signer import Budget, Refused
    from titus.wire import keyproto
    from titus.wire.keyproto import ProtocolError

KEYS = shared()


def one_input(data: bytes) -> None:
    for decode in (keyproto.decode_grant, keyproto.decode_response_packet):
        with contextlib.suppress(ProtocolError):
            decode(data)
    try:
        req = keyproto.decode_request_packet(data)
    except ProtocolError:
        return
    assert keyproto.encode_request(req) == data
    reasons = refusals(KEYS.facts, req.op, req.key_id, req.payload, 1)
    try:
        sig = KEYS.signer.sign(req.key_id, req.op, req.payload, Budget(1))
    except Refused as r:
        assert r.status in reasons, (r.status, reasons)
        return
    assert not reasons, f"signed what the rules refuse: {reasons}"
    verify(KEYS.facts[req.key_id], req.op, req.payload, sig)


def seeds() -> list[bytes]:
    import hashlib

    from tests.fuzz.keymodel import HASH_OIDS, P256, RSA2048, RSA2049, digest_info
    from tests.unit.titus.test_signer import emsa_pss
    from titus.wire.keyproto import Op

    digest = hashlib.sha256(b"seed").digest()
    out = [frame(Op.SIGN_ECDSA, P256, 1, digest),
           frame(Op.SIGN_RSA_PKCS1, RSA2048, 2, digest_info(HASH_OIDS["sha256"], digest))]
    for key_id in (RSA2048, RSA2049):
        bits = KEYS.facts[key_id].bits
        out.append(frame(Op.SIGN_RSA_RAW, key_id, 3, emsa_pss(digest, bits, "sha256", digest)))
    out.append(keyproto.encode_grant(keyproto.Grant(1, 1, (1, 2))))
    return out


if __name__ == "__main__":
    runner.fuzz(one_input, seeds)
