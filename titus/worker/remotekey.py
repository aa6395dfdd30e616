"""Remote keys: the worker signs through the key holder, never holding a private key.

Into the SSL_CTX behind each vhost's ssl.SSLContext the zygote installs the
certificate chain and a "foreign" private key that holds only the public half:
an RSA with an RSA_METHOD whose priv_enc, or an EC_KEY with an EC_KEY_METHOD
whose sign, sends the operation to the key holder.  Those methods are C, in
titus.worker._worker (wk_remotekey.c), so a worker never re-enters Python; this
module parses the chain (with `cryptography`, in the supervisor), checks what
the key holder can serve, and hands the rest to C.  The extension module links
the very libssl/libcrypto that _ssl runs and proves it finds an SSLContext's
SSL_CTX where it looks (flipping an option both ways); otherwise it refuses.
RSA key exchange is switched off: it would need a decryption, which a foreign
key cannot (and the key holder will not) do.

`read_chain` and `CertChain` are what the supervisor uses: importing them does
not load the extension module.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from types import ModuleType


class RemoteKeyError(RuntimeError):
    """The remote key cannot be installed or used safely; refuse to run."""


def _native() -> ModuleType:
    """The C extension, loaded only where contexts are built (the zygote, tests)."""
    from titus.worker import _worker

    return _worker


def check_runtime() -> str:
    """Refuse early (RemoteKeyError) if this process can't use remote keys; returns the version."""
    try:
        return str(_native().check_runtime())
    except RuntimeError as e:
        raise RemoteKeyError(str(e)) from None


def ssl_ctx_pointer(ctx: ssl.SSLContext) -> int:
    """The SSL_CTX* behind ``ctx``, after proving it is one by flipping an option both ways."""
    try:
        return int(_native().ctx_pointer(ctx))
    except RuntimeError as e:
        raise RemoteKeyError(str(e)) from None


# --- installing a key -------------------------------------------------------------------------


@dataclass(frozen=True)
class CertChain:
    """A certificate chain, parsed (with `cryptography`) by `read_chain`.

    Picklable and free of `cryptography` objects, so a process that must stay
    small (the zygote that forks workers) can install it without importing that
    library: what OpenSSL needs is the DER of each certificate and the leaf's
    public key."""

    name: str  # file name, for messages
    ders: tuple[bytes, ...]  # leaf first
    subjects: tuple[str, ...]
    kind: str  # "rsa" or "ec"
    bits: int
    curve: str | None
    public: bytes  # RSA: the modulus, big-endian; EC: the X9.62 uncompressed point
    exponent: int = 0  # RSA's public exponent


@dataclass(frozen=True)
class RemoteKey:
    """A certificate's public key, served by the key holder as ``key_id``."""

    key_id: int
    kind: str  # "rsa" or "ec"
    bits: int
    curve: str | None
    signature_size: int  # RSA_size, or ECDSA_size (the longest DER signature)
    chain: CertChain = field(repr=False)

    @property
    def chain_length(self) -> int:
        return len(self.chain.ders)


def read_chain(chain: bytes | str | os.PathLike[str], name: str | None = None) -> CertChain:
    """Parse a PEM chain (leaf first) from bytes or a file; checks the leaf's key type."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from titus.keyholder.keyrules import UnsupportedKey, key_kind

    if isinstance(chain, bytes):
        pem, name = chain, name or "<certificate chain>"
    else:
        name = os.fspath(chain)
        with open(name, "rb") as f:
            pem = f.read()
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise RemoteKeyError(f"{name}: not a PEM certificate chain: {e}") from None
    ders = tuple(c.public_bytes(serialization.Encoding.DER) for c in certs)
    subjects = tuple(c.subject.rfc4514_string() for c in certs)
    pub = certs[0].public_key()
    try:
        kind = key_kind(pub)
    except UnsupportedKey as e:
        raise RemoteKeyError(f"{name}: {e}") from None
    if kind.kind == "rsa":
        numbers = pub.public_numbers()  # type: ignore[union-attr]
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        return CertChain(name, ders, subjects, "rsa", kind.bits, None, n, numbers.e)
    point = pub.public_bytes(serialization.Encoding.X962,
                             serialization.PublicFormat.UncompressedPoint)
    return CertChain(name, ders, subjects, "ec", kind.bits, kind.curve, point)


def restrict_to_ecdhe(ctx: ssl.SSLContext, allow_dhe: bool = False) -> list[str]:
    """Keep only ECDHE suites below TLS 1.3 (and DHE ones with `allow_dhe`, for a
    context given DH parameters): RSA key exchange needs a decryption, an
    ephemeral key exchange only a signature."""
    kx = ("kx-ecdhe", "kx-dhe") if allow_dhe else ("kx-ecdhe",)
    keep = [
        c["name"]
        for c in ctx.get_ciphers()
        if c["protocol"] != "TLSv1.3"
        and c["kea"] in kx
        and c["auth"] in ("auth-rsa", "auth-ecdsa")
    ]
    if keep:
        ctx.set_ciphers(":".join(keep))
    elif ctx.minimum_version != ssl.TLSVersion.TLSv1_3:
        raise RemoteKeyError("no ECDHE cipher suite is enabled for TLS 1.2")
    left = [
        c["name"]
        for c in ctx.get_ciphers()
        if c["protocol"] != "TLSv1.3" and c["kea"] not in kx
    ]
    if left:
        raise RemoteKeyError(f"non-ECDHE suites still enabled: {left}")
    return keep


def install(ctx: ssl.SSLContext, chain: CertChain | bytes | str | os.PathLike[str],
            key_id: int, *, allow_dhe: bool = False) -> RemoteKey:
    """Serve ``ctx``'s certificate ``chain`` (leaf first) with key ``key_id`` of the key holder.

    Call it before the jail: a path is read here, and libssl copies what it needs.
    ``allow_dhe`` keeps DHE suites (only for a context that has DH parameters).
    """
    if not 0 <= key_id <= 0xFFFF:
        raise ValueError(f"key id {key_id} is not a u16")
    if not isinstance(chain, CertChain):
        chain = read_chain(chain)
    try:
        size = _native().install_key(ctx, chain.ders, chain.kind, chain.public, chain.exponent,
                                     chain.curve, key_id)
    except RuntimeError as e:
        raise RemoteKeyError(f"{chain.name}: {e}") from None
    restrict_to_ecdhe(ctx, allow_dhe)
    return RemoteKey(key_id, chain.kind, chain.bits, chain.curve, size, chain)
