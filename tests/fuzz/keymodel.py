"""An independent model of the key holder's rules, and payloads that probe them.

The oracle here is written from the RFCs, not from titus.keyholder.signer: EMSA-PSS
shape (RFC 8017 §9.1.2, byte by byte), DigestInfo built from the hash OIDs
with a small DER encoder (RFC 8017 §9.2), ECDSA digest sizes, the budget,
and the frame layout of titus.wire.keyproto's docstring.  A fuzz test compares
what the key holder does with what the model says it must do, and checks
every signature it hands out with the public key.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from hypothesis import strategies as st

from tests.unit.titus.test_signer import (
    emsa_pss,
    openssl_block,
    pem_cert,
    pem_key,
    pss_sig,
    rsa_2049,
)
from titus.keyholder.signer import KeyStore, Signer
from titus.wire.keyproto import Op, Status

HASH_SIZES = {"sha256": 32, "sha384": 48, "sha512": 64}
HASH_OIDS = {
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}
REFUSED_OIDS = {"sha1": ("1.3.14.3.2.26", 20), "sha224": ("2.16.840.1.101.3.4.2.4", 28),
                "md5": ("1.2.840.113549.2.5", 16), "sha512-256": ("2.16.840.1.101.3.4.2.6", 32)}
PRIME_HASHES = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}
ECDSA_SIZES = frozenset(HASH_SIZES.values())


# --- DER, just enough for a DigestInfo ---------------------------------------------------------


def der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return der(0x06, bytes(body))


def digest_info(oid: str, digest: bytes, with_null: bool = True) -> bytes:
    algorithm = der(0x30, der_oid(oid) + (b"\x05\x00" if with_null else b""))
    return der(0x30, algorithm + der(0x04, digest))


def is_digest_info(payload: bytes) -> bool:
    """An exact DER DigestInfo (with NULL parameters) of SHA-256/384/512."""
    return any(payload == digest_info(HASH_OIDS[h], payload[-size:])
               for h, size in HASH_SIZES.items() if len(payload) > size)


# --- EMSA-PSS shape ----------------------------------------------------------------------------


def _mgf1(seed: bytes, length: int, h: str) -> bytes:
    blocks = (length + HASH_SIZES[h] - 1) // HASH_SIZES[h]
    return b"".join(hashlib.new(h, seed + i.to_bytes(4, "big")).digest()
                    for i in range(blocks))[:length]


def is_pss_shaped(block: bytes, mod_bits: int) -> bool:
    """EMSA-PSS-VERIFY steps 3-10 with sLen = hLen for some SHA-2 hash."""
    k = (mod_bits + 7) // 8
    em_bits = mod_bits - 1
    em_len = (em_bits + 7) // 8
    if len(block) != k or (k > em_len and block[0] != 0):
        return False
    em = block[k - em_len :]
    unused = 8 * em_len - em_bits
    if em[-1] != 0xBC or (unused and em[0] >> (8 - unused)):
        return False
    for h, h_len in HASH_SIZES.items():
        if em_len < 2 * h_len + 2:
            continue
        masked_db, digest = em[: em_len - h_len - 1], em[em_len - h_len - 1 : -1]
        db = bytearray(a ^ b for a, b in zip(masked_db, _mgf1(digest, len(masked_db), h),
                                             strict=True))
        db[0] &= 0xFF >> unused
        ps_len = em_len - 2 * h_len - 2
        if not any(db[:ps_len]) and db[ps_len] == 0x01:
            return True
    return False


# --- the rules -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyFacts:
    kind: str  # "rsa" or "ec"
    bits: int  # RSA modulus bits
    public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def refusals(keys: dict[int, KeyFacts], op: Op, key_id: int, payload: bytes,
             budget_left: int) -> set[Status]:
    """Every reason the rules give to refuse; empty means the request must be signed."""
    facts = keys.get(key_id)
    if facts is None:
        return {Status.REFUSED_KEY}
    reasons = set()
    if budget_left <= 0:
        reasons.add(Status.REFUSED_BUDGET)
    wanted = "ec" if op == Op.SIGN_ECDSA else "rsa"
    if facts.kind != wanted:
        reasons.add(Status.REFUSED_KEY)
        return reasons
    shaped = {
        Op.SIGN_RSA_RAW: lambda: is_pss_shaped(payload, facts.bits),
        Op.SIGN_RSA_PKCS1: lambda: is_digest_info(payload),
        Op.SIGN_ECDSA: lambda: len(payload) in ECDSA_SIZES,
    }[op]
    if not shaped():
        reasons.add(Status.REFUSED_SHAPE)
    return reasons


def verify(facts: KeyFacts, op: Op, payload: bytes, sig: bytes) -> None:
    """Raise unless `sig` is the signature the request asked for, under that public key."""
    if op == Op.SIGN_RSA_RAW:
        assert isinstance(facts.public, rsa.RSAPublicKey)
        numbers = facts.public.public_numbers()
        assert len(sig) == (facts.bits + 7) // 8
        recovered = pow(int.from_bytes(sig, "big"), numbers.e, numbers.n)
        assert recovered == int.from_bytes(payload, "big"), "not payload^d mod n"
    elif op == Op.SIGN_RSA_PKCS1:
        assert isinstance(facts.public, rsa.RSAPublicKey)
        h = next(h for h, size in HASH_SIZES.items() if len(payload) > size
                 and payload == digest_info(HASH_OIDS[h], payload[-size:]))
        facts.public.verify(sig, payload[-HASH_SIZES[h]:], padding.PKCS1v15(),
                            utils.Prehashed(PRIME_HASHES[h]))
    else:
        assert isinstance(facts.public, ec.EllipticCurvePublicKey)
        h = next(h for h, size in HASH_SIZES.items() if size == len(payload))
        facts.public.verify(sig, payload, ec.ECDSA(utils.Prehashed(PRIME_HASHES[h])))


# --- frames ----------------------------------------------------------------------------------

HEADER = struct.Struct("!BBHII")  # version, op, key id, request id, payload length
MAX_PAYLOAD = 1024


def parse_frame(packet: bytes) -> tuple[Op, int, int, bytes] | None:
    """(op, key id, request id, payload) of a packet that is exactly one valid frame."""
    if len(packet) < HEADER.size:
        return None
    version, op, key_id, request_id, length = HEADER.unpack_from(packet)
    if version != 1 or op not in (1, 2, 3) or length > MAX_PAYLOAD:
        return None
    if len(packet) != HEADER.size + length:
        return None
    return Op(op), key_id, request_id, packet[HEADER.size :]


def frame(op: int, key_id: int, request_id: int, payload: bytes) -> bytes:
    return HEADER.pack(1, op, key_id, request_id, len(payload)) + payload


# --- payloads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A payload and the request it was made for (which the fuzzer may not send it as)."""

    payload: bytes
    op: Op
    key_id: int


@st.composite
def probes(draw: st.DrawFn, private: dict[int, object]) -> Probe:
    """A payload aimed at one of the rules: valid, nearly valid, or plainly hostile."""
    rsa_ids = sorted(i for i, k in private.items() if isinstance(k, rsa.RSAPrivateKey))
    ec_ids = sorted(i for i, k in private.items() if isinstance(k, ec.EllipticCurvePrivateKey))
    kind = draw(st.sampled_from(["pss", "pss", "pss-openssl", "pss-other-salt", "digestinfo",
                                 "digestinfo", "digestinfo-other", "ecdsa", "ecdsa",
                                 "random", "ciphertext"]))
    h = draw(st.sampled_from(sorted(HASH_SIZES)))
    key_id = draw(st.sampled_from(rsa_ids))
    key = private[key_id]
    assert isinstance(key, rsa.RSAPrivateKey)
    if kind.startswith("pss"):
        if kind == "pss-openssl":
            block = openssl_block(key, pss_sig(key, draw(st.binary(max_size=64)), h))
        else:
            size = HASH_SIZES[h]
            if kind == "pss-other-salt":
                size = draw(st.sampled_from([0, 1, size - 1, size + 1, 2 * size]))
            block = emsa_pss(draw(st.binary(min_size=HASH_SIZES[h], max_size=HASH_SIZES[h])),
                             key.key_size, h, draw(st.binary(min_size=size, max_size=size)))
        return Probe(draw(mutated(block)), Op.SIGN_RSA_RAW, key_id)
    if kind.startswith("digestinfo"):
        oid, size = HASH_OIDS[h], HASH_SIZES[h]
        if kind == "digestinfo-other":
            oid, size = REFUSED_OIDS[draw(st.sampled_from(sorted(REFUSED_OIDS)))]
        digest = draw(st.binary(min_size=size, max_size=size))
        info = digest_info(oid, digest, with_null=draw(st.booleans()) or kind == "digestinfo")
        return Probe(draw(mutated(info)), Op.SIGN_RSA_PKCS1, key_id)
    if kind == "ecdsa":
        size = draw(st.sampled_from([32, 48, 64, 32, 48, 64, 0, 1, 20, 28, 31, 33, 47, 49, 63,
                                     65, 128]))
        digest = draw(st.binary(min_size=size, max_size=size))
        return Probe(digest, Op.SIGN_ECDSA, draw(st.sampled_from(ec_ids)))
    if kind == "ciphertext":  # what a decryption oracle would be asked
        pad = draw(st.sampled_from([padding.PKCS1v15(), padding.OAEP(
            padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)]))
        secret = draw(st.binary(min_size=1, max_size=48))
        return Probe(key.public_key().encrypt(secret, pad), Op.SIGN_RSA_RAW, key_id)
    size = draw(st.sampled_from([0, 32, 64, 255, 256, 257, 384, 512, 1024]))
    return Probe(draw(st.binary(min_size=size, max_size=size)), Op.SIGN_RSA_RAW, key_id)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` as is (often), or with one small change."""
    how = draw(st.sampled_from(["none", "none", "none", "flip", "byte", "cut", "extend"]))
    out = bytearray(data)
    if how == "flip" and out:
        bit = draw(st.integers(0, 8 * len(out) - 1))
        out[bit // 8] ^= 0x80 >> (bit % 8)
    elif how == "byte" and out:
        out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    elif how == "cut" and out:
        index = draw(st.integers(0, len(out) - 1))
        del out[index : index + 1]
    elif how == "extend":
        out.insert(draw(st.integers(0, len(out))), draw(st.integers(0, 255)))
    return bytes(out)


FRAME_PARTS = st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFF),
                        st.integers(0, 0xFFFFFFFF), st.integers(0, 2000))


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    """Frames with any header fields, payloads of the stated length or not, junk."""
    version, op, key_id, rid, length = draw(FRAME_PARTS)
    if draw(st.booleans()):
        version, op = 1, draw(st.integers(1, 3))
    real = draw(st.sampled_from([length, length, length - 1, length + 1, 0, 1024, 1025]))
    real = max(0, min(real, 2000))
    body = draw(st.binary(min_size=min(real, 64), max_size=min(real, 64)))
    body = (body * (real // max(1, len(body)) + 1))[:real] if body else bytes(real)
    packet = struct.pack("!BBHII", version, op, key_id, rid, length) + body
    return draw(st.sampled_from([packet, packet, packet[: draw(st.integers(0, len(packet)))],
                                 packet + packet, draw(st.binary(max_size=40))]))


# --- keys ------------------------------------------------------------------------------------

P256, RSA2048, RSA2049, P384 = 1, 2, 3, 4  # key 1 is EC, 2 RSA, as tests/unit/test_keyholder


class Material:
    """Private keys, what the model knows of them, and a Signer holding them."""

    def __init__(self) -> None:
        self.private: dict[int, object] = {
            P256: ec.generate_private_key(ec.SECP256R1()),
            RSA2048: rsa.generate_private_key(65537, 2048),
            RSA2049: rsa_2049(),  # EM one byte shorter than the modulus
            P384: ec.generate_private_key(ec.SECP384R1()),
        }
        store = KeyStore()
        self.facts = {key_id: facts_of(key.public_key())  # type: ignore[attr-defined]
                      for key_id, key in self.private.items()}
        for key_id, key in self.private.items():
            store.add(key_id, pem_key(key), pem_cert(key))
        self.signer = Signer(store)


def facts_of(public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> KeyFacts:
    if isinstance(public, rsa.RSAPublicKey):
        return KeyFacts("rsa", public.key_size, public)
    return KeyFacts("ec", 0, public)


_SHARED: list[Material] = []


def shared() -> Material:
    """One Material per process, made on first use (strategies need it, so not a fixture;
    RSA key generation is slow)."""
    if not _SHARED:
        _SHARED.append(Material())
    return _SHARED[0]
