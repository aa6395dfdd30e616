"""Which keys titus serves: RSA of 2048 to 4096 bits, ECDSA on P-256 or P-384.

One rule for the three places that look at a key: the configuration check (the
certificate a vhost names, refused with the setting's FILE:LINE), `read_chain`
(the chain the zygote installs) and the key holder's store (the private key) --
so they always agree, and say so in the same words.  The limits are the key
holder protocol's (titus.wire.keyproto).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from titus.wire.keyproto import EC_CURVES, RSA_MAX_BITS, RSA_MIN_BITS


class UnsupportedKey(ValueError):
    """A key titus cannot serve; the message says which keys it can."""


@dataclass(frozen=True)
class KeyKind:
    kind: str  # "rsa" or "ec"
    bits: int  # RSA modulus bits, or the curve's field size
    curve: str | None  # cryptography's curve name ("secp256r1"), for EC keys


def key_kind(key: Any) -> KeyKind:
    """The kind of a `cryptography` public or private key, or UnsupportedKey saying why not."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
            raise UnsupportedKey(f"RSA-{key.key_size} is not supported "
                                 f"(RSA keys must have {RSA_MIN_BITS} to {RSA_MAX_BITS} bits)")
        return KeyKind("rsa", key.key_size, None)
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.name not in EC_CURVES:
            raise UnsupportedKey(f"EC curve {key.curve.name} is not supported (use P-256 or P-384)")
        return KeyKind("ec", EC_CURVES[key.curve.name], key.curve.name)
    algorithm = type(key).__name__.removesuffix("PublicKey").removesuffix("PrivateKey")
    raise UnsupportedKey(f"{algorithm} keys are not supported "
                         f"(use RSA {RSA_MIN_BITS}-{RSA_MAX_BITS} or ECDSA P-256/P-384)")
