"""The key holder's signing policy: which requests get a signature, independent of I/O.

A worker is assumed compromised, so the key holder signs only what a TLS
handshake legitimately needs and nothing that could turn it into an oracle:

* SIGN_RSA_RAW: m^d mod n on a block that already is an EMSA-PSS encoding
  (RFC 8017 §9.1.1) with MGF1 over SHA-256/384/512 and a salt as long as the
  hash, which is what TLS 1.3 and TLS 1.2 rsa_pss_rsae_* use (RFC 8446 §4.2.3).
  A ciphertext is not PSS-shaped, so no decryption can be smuggled through.
* SIGN_RSA_PKCS1: PKCS#1 v1.5 type-1 padding over an exact DER DigestInfo of
  SHA-256/384/512.  SHA-1 and MD5-SHA1 are refused: OpenSSL 3 at security
  level >= 1 no longer negotiates them in TLS 1.2 (and TLS <= 1.1 is off), so
  no handshake of ours asks for them and only an attacker would.
* SIGN_ECDSA: a 32, 48 or 64 byte digest, EC keys only.
* Never a decryption, and at most ``Budget`` signatures per channel.

All signing goes through the system libcrypto (titus.openssl, EVP_PKEY_sign) because
`cryptography` cannot do raw RSA; one code path for every operation.  A Signer
is only ever constructed inside the key holder: it holds the private keys.
"""

from __future__ import annotations

import ctypes
import hashlib
from _thread import allocate_lock  # threading's Lock, without threading's after-fork hook
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from titus import openssl
from titus.keyholder.keyrules import UnsupportedKey, key_kind
from titus.wire.keyproto import Op, Status

DEFAULT_BUDGET = 1  # one full TLS handshake needs exactly one server signature
ECDSA_DIGEST_SIZES = frozenset({32, 48, 64})

_RSA_PKCS1_PADDING = 1
_RSA_NO_PADDING = 3

# RFC 8017 §9.2 note 1: the DER DigestInfo prefixes (with the NULL parameters).
DIGESTINFO_PREFIXES: dict[str, bytes] = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
# Tried in this order: TLS 1.3's rsa_pss_rsae_sha256 first, as every client offers it first.
PSS_HASHES: dict[str, int] = {"sha256": 32, "sha384": 48, "sha512": 64}


class KeyStoreError(ValueError):
    """A key or certificate cannot be used; the message names the file."""


class SigningError(RuntimeError):
    """libcrypto failed on a request that passed the policy (answered with ERROR)."""


class Refused(Exception):
    """The policy refuses the request; the channel that asked must be closed."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(f"{status.name}: {reason}")
        self.status = status
        self.reason = reason


# --- libcrypto (titus.openssl) ---------------------------------------------------------------

_c = ctypes
_PROTOTYPES: openssl.Prototypes = {
    "d2i_AutoPrivateKey": ([_c.c_void_p, _c.POINTER(_c.c_void_p), _c.c_long], _c.c_void_p),
    "EVP_PKEY_free": ([_c.c_void_p], None),
    "EVP_PKEY_get_size": ([_c.c_void_p], _c.c_int),
    "EVP_PKEY_CTX_new": ([_c.c_void_p, _c.c_void_p], _c.c_void_p),
    "EVP_PKEY_CTX_free": ([_c.c_void_p], None),
    "EVP_PKEY_sign_init": ([_c.c_void_p], _c.c_int),
    "EVP_PKEY_CTX_set_rsa_padding": ([_c.c_void_p, _c.c_int], _c.c_int),
    # tbs is the request's bytes object itself (libcrypto only reads it): c_char_p, no copy.
    "EVP_PKEY_sign": (
        [_c.c_void_p, _c.c_void_p, _c.POINTER(_c.c_size_t), _c.c_char_p, _c.c_size_t],
        _c.c_int,
    ),
    "ERR_get_error": ([], _c.c_ulong),
    "ERR_error_string_n": ([_c.c_ulong, _c.c_void_p, _c.c_size_t], None),
    "ERR_clear_error": ([], None),
}
_lib = openssl.bind_libcrypto(_PROTOTYPES)


def _openssl_error(what: str) -> str:
    code = _lib.ERR_get_error()
    buf = ctypes.create_string_buffer(256)
    if code:
        _lib.ERR_error_string_n(code, ctypes.cast(buf, ctypes.c_void_p), len(buf))
    _lib.ERR_clear_error()
    return f"{what}: {buf.value.decode(errors='replace') or 'unknown OpenSSL error'}"


class _EvpKey:
    """An EVP_PKEY in libcrypto, made from PKCS#8 DER; freed with this object.

    Each padding mode keeps one EVP_PKEY_CTX, initialised once and reused for every
    signature (OpenSSL 3 signs any number of times on an initialised context; making one
    costs a provider fetch per signature), and the output buffer is made once too.  The key
    holder is single-threaded; a second thread that finds them in use signs on its own
    context, so sharing a Signer is still safe.  A failed signature drops the context.
    """

    def __init__(self, der: bytes) -> None:
        self._lock = allocate_lock()
        self._ctxs: dict[int | None, int] = {}
        buf = ctypes.create_string_buffer(der, len(der))
        p = ctypes.c_void_p(ctypes.addressof(buf))
        try:
            self.ptr = _lib.d2i_AutoPrivateKey(None, ctypes.byref(p), len(der))
        finally:
            ctypes.memset(buf, 0, len(der))
        if not self.ptr:
            raise KeyStoreError(_openssl_error("libcrypto cannot load the key"))
        self.size = _lib.EVP_PKEY_get_size(self.ptr)
        self._sig = ctypes.create_string_buffer(self.size)
        self._siglen = ctypes.c_size_t()

    def _new_ctx(self, padding: int | None) -> int:
        """An EVP_PKEY_CTX ready to sign with ``padding``; the caller frees it."""
        ctx = _lib.EVP_PKEY_CTX_new(self.ptr, None)
        if not ctx:
            raise SigningError(_openssl_error("EVP_PKEY_CTX_new"))
        try:
            if _lib.EVP_PKEY_sign_init(ctx) <= 0:
                raise SigningError(_openssl_error("EVP_PKEY_sign_init"))
            if padding is not None and _lib.EVP_PKEY_CTX_set_rsa_padding(ctx, padding) <= 0:
                raise SigningError(_openssl_error("EVP_PKEY_CTX_set_rsa_padding"))
        except SigningError:
            _lib.EVP_PKEY_CTX_free(ctx)
            raise
        return ctx

    def _sign_on(self, ctx: int, data: bytes, sig: ctypes.Array, siglen: ctypes.c_size_t) -> bytes:
        siglen.value = self.size
        if _lib.EVP_PKEY_sign(ctx, sig, siglen, data, len(data)) <= 0:
            raise SigningError(_openssl_error("EVP_PKEY_sign"))
        return sig.raw[: siglen.value]

    def sign(self, data: bytes, padding: int | None) -> bytes:
        if not self._lock.acquire(False):  # another thread signs with this key right now
            ctx = self._new_ctx(padding)
            try:
                return self._sign_on(
                    ctx, data, ctypes.create_string_buffer(self.size), ctypes.c_size_t()
                )
            finally:
                _lib.EVP_PKEY_CTX_free(ctx)
        try:
            ctx = self._ctxs.get(padding)
            if ctx is None:
                ctx = self._ctxs[padding] = self._new_ctx(padding)
            try:
                return self._sign_on(ctx, data, self._sig, self._siglen)
            except SigningError:
                # never sign on a context left by a failure: the next request gets a new one
                del self._ctxs[padding]
                _lib.EVP_PKEY_CTX_free(ctx)
                raise
        finally:
            self._lock.release()

    def __del__(self) -> None:
        for ctx in getattr(self, "_ctxs", {}).values():
            _lib.EVP_PKEY_CTX_free(ctx)
        ptr, self.ptr = getattr(self, "ptr", None), None
        if ptr:
            _lib.EVP_PKEY_free(ptr)


# --- keys -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    """The public facts about a key, safe to log or hand to a worker."""

    key_id: int
    kind: str  # "rsa" or "ec"
    bits: int  # RSA modulus bits, or the curve's field size
    curve: str | None  # "secp256r1" / "secp384r1" for EC keys
    signature_size: int  # RSA: the modulus length; EC: the longest DER signature
    public_key_der: bytes = field(repr=False)  # SubjectPublicKeyInfo


def _spki(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class KeyStore:
    """Private keys by key id, each checked against its certificate before use."""

    def __init__(self) -> None:
        self._keys: dict[int, tuple[KeyInfo, _EvpKey]] = {}

    def add(
        self,
        key_id: int,
        key_pem: bytes,
        cert_pem: bytes,
        *,
        key_name: str = "<private key>",
        cert_name: str = "<certificate>",
    ) -> KeyInfo:
        """Load one key; ``cert_pem`` may be a chain, whose first certificate must match."""
        if not 0 <= key_id <= 0xFFFF:
            raise KeyStoreError(f"{key_name}: key id {key_id} is not a u16")
        if key_id in self._keys:
            raise KeyStoreError(f"{key_name}: key id {key_id} is already in use")
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as e:
            raise KeyStoreError(
                f"{key_name}: not a usable unencrypted PEM private key: {e}"
            ) from None
        try:
            certs = x509.load_pem_x509_certificates(cert_pem)
        except ValueError as e:
            raise KeyStoreError(f"{cert_name}: not a PEM certificate: {e}") from None
        try:
            kind = key_kind(key)
        except UnsupportedKey as e:
            raise KeyStoreError(f"{key_name}: {e}") from None
        # RSA: the modulus length; EC: the longest DER signature, from libcrypto below.
        sigsize = (kind.bits + 7) // 8 if kind.kind == "rsa" else 0
        pub = _spki(key.public_key())  # type: ignore[union-attr]
        if _spki(certs[0].public_key()) != pub:  # type: ignore[arg-type]
            raise KeyStoreError(f"{cert_name}: certificate does not match private key {key_name}")
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        evp = _EvpKey(der)
        del der, key
        info = KeyInfo(key_id, kind.kind, kind.bits, kind.curve, sigsize or evp.size, pub)
        self._keys[key_id] = (info, evp)
        return info

    def info(self, key_id: int) -> KeyInfo | None:
        entry = self._keys.get(key_id)
        return entry[0] if entry else None

    def ids(self) -> list[int]:
        return sorted(self._keys)

    def _get(self, key_id: int) -> tuple[KeyInfo, _EvpKey] | None:
        return self._keys.get(key_id)


# --- policy -----------------------------------------------------------------------------------


class Budget:
    """How many signatures one channel may still get: a handshake needs one."""

    def __init__(self, limit: int = DEFAULT_BUDGET) -> None:
        if limit < 0:
            raise ValueError("a budget cannot be negative")
        self.limit = limit
        self.used = 0

    @property
    def remaining(self) -> int:
        return self.limit - self.used

    @property
    def exhausted(self) -> bool:
        return self.used >= self.limit

    def check(self) -> None:
        if self.exhausted:
            raise Refused(Status.REFUSED_BUDGET, f"budget of {self.limit} signature(s) spent")

    def charge(self) -> None:
        self.check()
        self.used += 1


_HASH_NEW: dict[str, Callable[[bytes], Any]] = {
    "sha256": hashlib.sha256,  # the named constructors: hashlib.new costs a lookup per block
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
_PSS = tuple((name, h_len, _HASH_NEW[name]) for name, h_len in PSS_HASHES.items())


def mgf1(seed: bytes, first: int, count: int, new: Callable[[bytes], Any]) -> bytes:
    """Hash blocks ``first`` .. ``first + count - 1`` of MGF1(seed) (RFC 8017 §B.2.1)."""
    return b"".join(
        [new(seed + c.to_bytes(4, "big")).digest() for c in range(first, first + count)]
    )


def _is_pss_db(
    masked_db: bytes, h: bytes, ps_len: int, zero_bits: int, new: Callable[[bytes], Any]
) -> bool:
    """Whether maskedDB xor MGF1(H), its top ``zero_bits`` bits cleared, is PS || 0x01 || salt
    with PS ``ps_len`` zero bytes: bytes 1..ps_len-1 of maskedDB equal the mask, byte 0
    (less its cleared bits) too, and byte ps_len is the mask's xor 1.  The first hash block
    is checked alone: a block of another hash fails there, without the rest."""
    h_len = len(h)
    mask = mgf1(h, 0, 1, new)
    end = min(h_len, ps_len)
    if masked_db[1:end] != mask[1:end]:
        return False
    if ps_len >= h_len:  # the mask must reach byte ps_len
        mask += mgf1(h, 1, ps_len // h_len, new)
        if masked_db[h_len:ps_len] != mask[h_len:ps_len]:
            return False
    first = (masked_db[0] ^ mask[0]) & (0xFF >> zero_bits)
    if ps_len == 0:
        return first == 1
    return first == 0 and masked_db[ps_len] ^ mask[ps_len] == 1


def pss_hash(block: bytes, mod_bits: int) -> str | None:
    """The hash under which ``block`` is an EMSA-PSS encoding with sLen = hLen, else None.

    This is EMSA-PSS-VERIFY (RFC 8017 §9.1.2) steps 3-10, everything but the
    final hash comparison, which needs the message the key holder never sees.
    """
    k = (mod_bits + 7) // 8
    if len(block) != k:
        return None
    em_bits = mod_bits - 1
    em_len = (em_bits + 7) // 8
    if em_len < k:  # modBits = 8j + 1: the block starts with a zero byte
        if block[0] != 0:
            return None
        block = block[1:]
    if block[-1] != 0xBC:
        return None
    zero_bits = 8 * em_len - em_bits
    if block[0] & (0xFF << (8 - zero_bits)) & 0xFF:
        return None
    for name, h_len, new in _PSS:
        s_len = h_len
        if em_len < h_len + s_len + 2:
            continue
        db_len = em_len - h_len - 1
        # DB = PS (zeros) || 0x01 || salt
        if _is_pss_db(block, block[db_len : db_len + h_len], db_len - s_len - 1, zero_bits, new):
            return name
    return None


def digestinfo_hash(payload: bytes) -> str | None:
    """The hash of an exact DER DigestInfo of SHA-256/384/512, else None."""
    for name, prefix in DIGESTINFO_PREFIXES.items():
        if payload.startswith(prefix) and len(payload) == len(prefix) + PSS_HASHES[name]:
            return name
    return None


class Signer:
    """Applies the policy to one request at a time; built only inside the key holder."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys

    def sign(self, key_id: int, op: Op, payload: bytes, budget: Budget | None = None) -> bytes:
        """Sign ``payload`` or raise Refused (policy) / SigningError (libcrypto)."""
        entry = self.keys._get(key_id)
        if entry is None:
            raise Refused(Status.REFUSED_KEY, f"no key {key_id}")
        info, evp = entry
        if budget is not None:
            budget.check()
        if op == Op.SIGN_RSA_RAW:
            if info.kind != "rsa":
                raise Refused(Status.REFUSED_KEY, f"key {key_id} is not RSA")
            if pss_hash(payload, info.bits) is None:
                raise Refused(Status.REFUSED_SHAPE, "raw RSA block is not EMSA-PSS shaped")
            padding: int | None = _RSA_NO_PADDING
        elif op == Op.SIGN_RSA_PKCS1:
            if info.kind != "rsa":
                raise Refused(Status.REFUSED_KEY, f"key {key_id} is not RSA")
            if digestinfo_hash(payload) is None:
                raise Refused(Status.REFUSED_SHAPE, "not a SHA-256/384/512 DigestInfo")
            padding = _RSA_PKCS1_PADDING
        elif op == Op.SIGN_ECDSA:
            if info.kind != "ec":
                raise Refused(Status.REFUSED_KEY, f"key {key_id} is not EC")
            if len(payload) not in ECDSA_DIGEST_SIZES:
                raise Refused(Status.REFUSED_SHAPE, f"{len(payload)}-byte digest")
            padding = None
        else:
            raise Refused(Status.REFUSED_SHAPE, f"unknown op {op!r}")
        if budget is not None:
            budget.charge()
        sig = evp.sign(payload, padding)
        if info.kind == "rsa" and len(sig) != info.signature_size:
            raise SigningError(f"libcrypto returned {len(sig)} bytes for key {key_id}")
        return sig
