"""The key holder's policy: exactly the signatures a TLS handshake needs, nothing else.

PSS and PKCS#1 blocks are captured from OpenSSL (via `cryptography`): sign,
then undo the signature with the public key (s^e mod n) to get the very block
OpenSSL padded.  Raw-signing that block again must give the same signature.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from titus.keyholder.signer import (
    _RSA_NO_PADDING,
    DIGESTINFO_PREFIXES,
    Budget,
    KeyStore,
    KeyStoreError,
    Refused,
    Signer,
    SigningError,
    pss_hash,
)
from titus.wire.keyproto import Op, Status

HASHES = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}


def pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pem_cert(key, cn: str = "test") -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _probable_prime(lo: int, hi: int) -> int:
    small = [p for p in range(3, 2000, 2) if all(p % f for f in range(3, int(p**0.5) + 1, 2))]
    while True:
        n = secrets.randbelow(hi - lo) + lo | 1
        if any(n % p == 0 for p in small):
            continue
        d, r = n - 1, 0
        while d % 2 == 0:
            d, r = d // 2, r + 1
        for _ in range(32):
            x = pow(secrets.randbelow(n - 3) + 2, d, n)
            if x in (1, n - 1):
                continue
            for _ in range(r - 1):
                x = pow(x, 2, n)
                if x == n - 1:
                    break
            else:
                break
        else:
            return n


def rsa_2049() -> rsa.RSAPrivateKey:
    """OpenSSL rounds key sizes to whole bytes, so build a 2049-bit key by hand."""
    lo, hi = 1 << 1024, (1 << 1024) * 1414 // 1000  # p * q then has exactly 2049 bits
    e = 65537
    while True:
        p, q = _probable_prime(lo, hi), _probable_prime(lo, hi)
        phi = (p - 1) * (q - 1)
        if p != q and math.gcd(e, phi) == 1:
            break
    d = pow(e, -1, phi)
    numbers = rsa.RSAPrivateNumbers(
        p,
        q,
        d,
        rsa.rsa_crt_dmp1(d, p),
        rsa.rsa_crt_dmq1(d, q),
        rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, p * q),
    )
    key = numbers.private_key()
    assert key.key_size == 2049
    return key


@dataclass
class Keys:
    store: KeyStore
    signer: Signer
    private: dict[int, object]


RSA2048, RSA4096, P256, P384, RSA2049 = 1, 2, 3, 4, 5


@pytest.fixture(scope="module")
def keys() -> Keys:
    private = {
        RSA2048: rsa.generate_private_key(65537, 2048),
        RSA4096: rsa.generate_private_key(65537, 4096),
        P256: ec.generate_private_key(ec.SECP256R1()),
        P384: ec.generate_private_key(ec.SECP384R1()),
        RSA2049: rsa_2049(),  # modBits = 8j+1: EM is one byte shorter than the modulus
    }
    store = KeyStore()
    for key_id, key in private.items():
        store.add(key_id, pem_key(key), pem_cert(key))
    return Keys(store, Signer(store), private)


def openssl_block(key: rsa.RSAPrivateKey, sig: bytes) -> bytes:
    """The padded block OpenSSL raised to d: sig^e mod n."""
    pub = key.public_key().public_numbers()
    k = (key.key_size + 7) // 8
    return pow(int.from_bytes(sig, "big"), pub.e, pub.n).to_bytes(k, "big")


def pss_sig(key: rsa.RSAPrivateKey, msg: bytes, h: str, salt=padding.PSS.DIGEST_LENGTH) -> bytes:
    return key.sign(msg, padding.PSS(padding.MGF1(HASHES[h]), salt), HASHES[h])


def emsa_pss(msg_hash: bytes, mod_bits: int, h: str, salt: bytes) -> bytes:
    """EMSA-PSS-ENCODE (RFC 8017 §9.1.1), written independently of titus.keyholder.signer."""
    em_bits = mod_bits - 1
    em_len = (em_bits + 7) // 8
    m_prime = b"\0" * 8 + msg_hash + salt
    hh = hashlib.new(h, m_prime).digest()
    db = b"\0" * (em_len - len(salt) - len(hh) - 2) + b"\x01" + salt
    mask = bytearray()
    counter = 0
    while len(mask) < len(db):
        mask += hashlib.new(h, hh + counter.to_bytes(4, "big")).digest()
        counter += 1
    masked = bytearray(a ^ b for a, b in zip(db, mask, strict=False))
    masked[0] &= 0xFF >> (8 * em_len - em_bits)
    em = bytes(masked) + hh + b"\xbc"
    return em.rjust((mod_bits + 7) // 8, b"\0")


# --- KeyStore ---------------------------------------------------------------------------------


def test_keystore_describes_each_key(keys: Keys) -> None:
    assert keys.store.ids() == [1, 2, 3, 4, 5]
    assert (keys.store.info(RSA2048).kind, keys.store.info(RSA2048).signature_size) == ("rsa", 256)
    assert keys.store.info(RSA4096).signature_size == 512
    assert keys.store.info(RSA2049).signature_size == 257
    assert keys.store.info(P256).curve == "secp256r1"
    assert keys.store.info(P256).signature_size == 72
    assert keys.store.info(P384).signature_size == 104
    assert keys.store.info(99) is None


def test_certificate_mismatch_names_the_certificate(tmp_path: Path) -> None:
    a = ec.generate_private_key(ec.SECP256R1())
    b = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(KeyStoreError, match=r"/etc/titus/b\.pem.*does not match.*a\.key"):
        KeyStore().add(1, pem_key(a), pem_cert(b), key_name="a.key", cert_name="/etc/titus/b.pem")


def test_first_certificate_of_a_chain_must_match() -> None:
    leaf = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    store = KeyStore()
    store.add(1, pem_key(leaf), pem_cert(leaf) + pem_cert(other))
    with pytest.raises(KeyStoreError, match="does not match"):
        store.add(2, pem_key(leaf), pem_cert(other) + pem_cert(leaf))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: rsa.generate_private_key(65537, 1024), "RSA-1024 is not supported"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "EC curve secp521r1 is not supported"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "EC curve secp256k1 is not supported"),
        (ed25519.Ed25519PrivateKey.generate, "Ed25519 keys are not supported"),
    ],
)
def test_unsupported_keys_are_refused_clearly(make, message: str) -> None:
    key = make()
    with pytest.raises(KeyStoreError, match=rf"k\.pem: {message}"):
        KeyStore().add(1, pem_key(key), pem_cert(key), key_name="k.pem")


def test_rsa_above_4096_is_refused() -> None:
    key = rsa.generate_private_key(65537, 4104)
    with pytest.raises(KeyStoreError, match="RSA-4104"):
        KeyStore().add(1, pem_key(key), pem_cert(key))


def test_bad_inputs_name_the_file() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(KeyStoreError, match=r"enc\.pem: not a usable unencrypted"):
        KeyStore().add(1, encrypted, pem_cert(key), key_name="enc.pem")
    with pytest.raises(KeyStoreError, match=r"c\.pem: not a PEM certificate"):
        KeyStore().add(1, pem_key(key), b"junk", cert_name="c.pem")
    store = KeyStore()
    store.add(1, pem_key(key), pem_cert(key))
    with pytest.raises(KeyStoreError, match="already in use"):
        store.add(1, pem_key(key), pem_cert(key))
    with pytest.raises(KeyStoreError, match="u16"):
        store.add(70000, pem_key(key), pem_cert(key))


# --- SIGN_RSA_RAW: PSS-shaped blocks only -----------------------------------------------------


@pytest.mark.parametrize("key_id", [RSA2048, RSA4096, RSA2049])
@pytest.mark.parametrize("h", ["sha256", "sha384", "sha512"])
def test_pss_blocks_from_openssl_are_signed_exactly(keys: Keys, key_id: int, h: str) -> None:
    key = keys.private[key_id]
    msg = os.urandom(40)
    sig = pss_sig(key, msg, h)
    block = openssl_block(key, sig)
    assert pss_hash(block, key.key_size) == h
    got = keys.signer.sign(key_id, Op.SIGN_RSA_RAW, block)
    assert got == sig
    key.public_key().verify(
        got, msg, padding.PSS(padding.MGF1(HASHES[h]), HASHES[h].digest_size), HASHES[h]
    )


@pytest.mark.parametrize("key_id", [RSA2048, RSA2049])
def test_our_own_pss_encoding_verifies(keys: Keys, key_id: int) -> None:
    key = keys.private[key_id]
    msg = b"a TLS 1.3 CertificateVerify, more or less"
    block = emsa_pss(hashlib.sha384(msg).digest(), key.key_size, "sha384", os.urandom(48))
    sig = keys.signer.sign(key_id, Op.SIGN_RSA_RAW, block)
    key.public_key().verify(
        sig, msg, padding.PSS(padding.MGF1(hashes.SHA384()), 48), hashes.SHA384()
    )


def refused(
    keys: Keys, key_id: int, op: Op, payload: bytes, budget: Budget | None = None
) -> Status:
    with pytest.raises(Refused) as info:
        keys.signer.sign(key_id, op, payload, budget)
    return info.value.status


@pytest.mark.parametrize("salt", [0, 20, 222])
def test_pss_with_another_salt_length_is_refused(keys: Keys, salt: int) -> None:
    """TLS always uses sLen = hLen; anything else did not come from our handshake."""
    key = keys.private[RSA2048]
    block = openssl_block(key, pss_sig(key, b"m", "sha256", salt))
    assert refused(keys, RSA2048, Op.SIGN_RSA_RAW, block) == Status.REFUSED_SHAPE


def test_pss_with_sha1_mgf_is_refused(keys: Keys) -> None:
    key = keys.private[RSA2048]
    sig = key.sign(b"m", padding.PSS(padding.MGF1(hashes.SHA1()), 20), hashes.SHA1())
    assert refused(keys, RSA2048, Op.SIGN_RSA_RAW, openssl_block(key, sig)) == Status.REFUSED_SHAPE


def test_each_pss_field_matters(keys: Keys) -> None:
    key = keys.private[RSA2048]
    good = bytearray(openssl_block(key, pss_sig(key, b"m", "sha256")))
    assert keys.signer.sign(RSA2048, Op.SIGN_RSA_RAW, bytes(good))

    def variant(i: int, value: int) -> bytes:
        b = bytearray(good)
        b[i] = value
        return bytes(b)

    bad = {
        "top bit set": variant(0, good[0] | 0x80),
        "trailer": variant(-1, 0xBD),
        "PS byte": variant(10, good[10] ^ 0x01),  # unmasks to a non-zero padding byte
        "separator": variant(256 - 32 - 32 - 2, good[256 - 32 - 32 - 2] ^ 0x01),
        "short": bytes(good[1:]),
        "long": b"\0" + bytes(good),
        "zeros": bytes(256),
    }
    for name, block in bad.items():
        assert refused(keys, RSA2048, Op.SIGN_RSA_RAW, block) == Status.REFUSED_SHAPE, name


def test_leading_byte_of_a_2049_bit_block_must_be_zero(keys: Keys) -> None:
    key = keys.private[RSA2049]
    block = openssl_block(key, pss_sig(key, b"m", "sha256"))
    assert block[0] == 0 and len(block) == 257
    assert keys.signer.sign(RSA2049, Op.SIGN_RSA_RAW, block)
    assert refused(keys, RSA2049, Op.SIGN_RSA_RAW, b"\x01" + block[1:]) == Status.REFUSED_SHAPE


@pytest.mark.parametrize("enc", ["pkcs1v15", "oaep"])
def test_decrypting_a_ciphertext_is_refused(keys: Keys, enc: str) -> None:
    """The attack a raw-RSA oracle enables: m = c^d.  No RSA ciphertext is PSS-shaped."""
    pub = keys.private[RSA2048].public_key()
    pad = (
        padding.PKCS1v15()
        if enc == "pkcs1v15"
        else padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    )
    ciphertext = pub.encrypt(os.urandom(48), pad)  # an RSA-kx premaster secret
    for op in (Op.SIGN_RSA_RAW, Op.SIGN_RSA_PKCS1):
        assert refused(keys, RSA2048, op, ciphertext) == Status.REFUSED_SHAPE


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=256, max_size=256))
def test_random_blocks_are_refused(keys: Keys, block: bytes) -> None:
    assert refused(keys, RSA2048, Op.SIGN_RSA_RAW, block) == Status.REFUSED_SHAPE


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=255, max_size=255))
def test_blocks_passing_the_cheap_checks_are_still_refused(keys: Keys, body: bytes) -> None:
    """Trailer 0xbc and a clear top bit are not enough: DB must unmask to PS || 01 || salt."""
    block = bytes([body[0] & 0x7F]) + body[1:] + b"\xbc"
    assert len(block) == 256
    assert refused(keys, RSA2048, Op.SIGN_RSA_RAW, block) == Status.REFUSED_SHAPE


# --- SIGN_RSA_PKCS1: exact DigestInfos of SHA-2 ------------------------------------------------


def digestinfo_from_openssl(key: rsa.RSAPrivateKey, sig: bytes) -> bytes:
    block = openssl_block(key, sig)
    assert block[:2] == b"\x00\x01"
    return block[block.index(b"\x00", 2) + 1 :]


@pytest.mark.parametrize("key_id", [RSA2048, RSA4096])
@pytest.mark.parametrize("h", ["sha256", "sha384", "sha512"])
def test_pkcs1_digestinfo_from_openssl_is_signed_exactly(keys: Keys, key_id: int, h: str) -> None:
    key = keys.private[key_id]
    sig = key.sign(b"tls 1.2 params", padding.PKCS1v15(), HASHES[h])
    info = digestinfo_from_openssl(key, sig)
    assert info.startswith(DIGESTINFO_PREFIXES[h])
    assert keys.signer.sign(key_id, Op.SIGN_RSA_PKCS1, info) == sig


def test_pkcs1_refuses_everything_but_sha2_digestinfo(keys: Keys) -> None:
    key = keys.private[RSA2048]
    good = digestinfo_from_openssl(key, key.sign(b"x", padding.PKCS1v15(), hashes.SHA256()))
    sha1 = digestinfo_from_openssl(key, key.sign(b"x", padding.PKCS1v15(), hashes.SHA1()))
    no_null = bytes.fromhex("302f300b06096086480165030402010420") + good[-32:]
    bad = {
        "sha1": sha1,
        "md5-sha1": hashlib.md5(b"x").digest() + hashlib.sha1(b"x").digest(),
        "bare digest": good[-32:],
        "missing NULL": no_null,
        "trailing byte": good + b"\0",
        "short digest": good[:-1],
        "sha256 prefix, 48-byte digest": good[:19] + bytes(48),
        "empty": b"",
    }
    for name, payload in bad.items():
        assert refused(keys, RSA2048, Op.SIGN_RSA_PKCS1, payload) == Status.REFUSED_SHAPE, name


# --- SIGN_ECDSA -------------------------------------------------------------------------------


@pytest.mark.parametrize("key_id", [P256, P384])
@pytest.mark.parametrize("h", ["sha256", "sha384", "sha512"])
def test_ecdsa_signs_digests_that_verify(keys: Keys, key_id: int, h: str) -> None:
    digest = hashlib.new(h, b"server key exchange").digest()
    sig = keys.signer.sign(key_id, Op.SIGN_ECDSA, digest)
    assert len(sig) <= keys.store.info(key_id).signature_size
    keys.private[key_id].public_key().verify(sig, digest, ec.ECDSA(utils.Prehashed(HASHES[h])))


@pytest.mark.parametrize("size", [0, 1, 20, 31, 33, 47, 63, 65, 128])
def test_ecdsa_refuses_other_digest_sizes(keys: Keys, size: int) -> None:
    assert refused(keys, P256, Op.SIGN_ECDSA, bytes(size)) == Status.REFUSED_SHAPE


def test_ops_only_for_their_key_type(keys: Keys) -> None:
    rsa_key = keys.private[RSA2048]
    block = openssl_block(rsa_key, pss_sig(rsa_key, b"m", "sha256"))
    assert refused(keys, P256, Op.SIGN_RSA_RAW, block) == Status.REFUSED_KEY
    assert refused(keys, P256, Op.SIGN_RSA_PKCS1, DIGESTINFO_PREFIXES["sha256"] + bytes(32)) == (
        Status.REFUSED_KEY
    )
    assert refused(keys, RSA2048, Op.SIGN_ECDSA, bytes(32)) == Status.REFUSED_KEY
    assert refused(keys, 77, Op.SIGN_ECDSA, bytes(32)) == Status.REFUSED_KEY


# --- budget -----------------------------------------------------------------------------------


def test_budget_allows_one_handshake_by_default(keys: Keys) -> None:
    budget = Budget()
    assert budget.remaining == 1
    keys.signer.sign(P256, Op.SIGN_ECDSA, bytes(32), budget)
    assert budget.exhausted
    assert refused(keys, P256, Op.SIGN_ECDSA, bytes(32), budget) == Status.REFUSED_BUDGET


def test_refusals_do_not_spend_the_budget(keys: Keys) -> None:
    budget = Budget(2)
    assert refused(keys, P256, Op.SIGN_ECDSA, bytes(20), budget) == Status.REFUSED_SHAPE
    assert refused(keys, RSA2048, Op.SIGN_RSA_RAW, bytes(256), budget) == Status.REFUSED_SHAPE
    assert budget.remaining == 2
    keys.signer.sign(P256, Op.SIGN_ECDSA, bytes(32), budget)
    keys.signer.sign(P384, Op.SIGN_ECDSA, bytes(48), budget)
    assert refused(keys, P256, Op.SIGN_ECDSA, bytes(32), budget) == Status.REFUSED_BUDGET


def test_zero_budget_signs_nothing_and_negative_is_an_error(keys: Keys) -> None:
    assert refused(keys, P256, Op.SIGN_ECDSA, bytes(32), Budget(0)) == Status.REFUSED_BUDGET
    with pytest.raises(ValueError):
        Budget(-1)


# --- libcrypto contexts -----------------------------------------------------------------------


def test_a_failed_signature_does_not_poison_the_next(keys: Keys) -> None:
    """A key signs on one EVP_PKEY_CTX per padding, reused; a libcrypto failure drops it."""
    key = keys.private[RSA2048]
    evp = keys.store._get(RSA2048)[1]
    sig = pss_sig(key, b"m", "sha256")
    block = openssl_block(key, sig)
    digestinfo = DIGESTINFO_PREFIXES["sha256"] + hashlib.sha256(b"m").digest()
    pkcs1 = keys.signer.sign(RSA2048, Op.SIGN_RSA_PKCS1, digestinfo)
    assert evp.sign(block, _RSA_NO_PADDING) == sig
    with pytest.raises(SigningError, match="EVP_PKEY_sign"):
        evp.sign(block[:-1], _RSA_NO_PADDING)  # no padding: the input must be the modulus size
    # OpenSSL 3.0 happens to sign again on a context a failure left; nothing promises it,
    # so the failed one is dropped and the next request gets a new one.
    assert _RSA_NO_PADDING not in evp._ctxs
    assert keys.signer.sign(RSA2048, Op.SIGN_RSA_RAW, block) == sig
    assert _RSA_NO_PADDING in evp._ctxs
    for _ in range(2):  # both contexts still sign right, each with its own padding
        assert keys.signer.sign(RSA2048, Op.SIGN_RSA_RAW, block) == sig
        assert keys.signer.sign(RSA2048, Op.SIGN_RSA_PKCS1, digestinfo) == pkcs1


def test_threads_sharing_a_signer_each_get_their_own_signature(keys: Keys) -> None:
    """The key holder is single-threaded, but a Signer stays safe to share: a thread that
    finds a key's context in use signs on a context of its own."""
    key = keys.private[RSA2048]
    evp = keys.store._get(RSA2048)[1]
    blocks = {}
    for i in range(4):
        sig = pss_sig(key, bytes([i]), "sha256")
        blocks[openssl_block(key, sig)] = sig
    with evp._lock:  # as if another thread were signing with this key right now
        for block, sig in blocks.items():
            assert keys.signer.sign(RSA2048, Op.SIGN_RSA_RAW, block) == sig
    wrong: list[bytes] = []

    def sign_all() -> None:
        for _ in range(10):
            for block, sig in blocks.items():
                if keys.signer.sign(RSA2048, Op.SIGN_RSA_RAW, block) != sig:
                    wrong.append(block)

    threads = [threading.Thread(target=sign_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
