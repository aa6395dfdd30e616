"""DH groups for DHE: titus 0.4's RFC 3526 groups 14/15/16, or a PEM parameter file.

The RFC 3526 primes are defined from the binary expansion of pi
(p = 2^N - 2^(N-64) - 1 + 2^64 * (floor(2^(N-130) * pi) + k)), so we derive
them instead of embedding kilobytes of hex; the unit test checks that each
result is a safe prime and matches OpenSSL's built-in copy.  DH parameters
are public, so reading a parameter file here is fine.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
import ssl
import stat
from pathlib import Path

from titus.config.model import DHGroup, one_line
from titus.config.values import BadValue

# group id -> (bits, k) from RFC 3526 sections 3-5.
RFC3526_GROUPS = {"14": (2048, 124476), "15": (3072, 1690314), "16": (4096, 240904)}
MIN_DH_BITS = 2048
_MAX_PARAM_FILE = 64 * 1024
_PEM_DH = re.compile(
    rb"-----BEGIN (X9\.42 )?DH PARAMETERS-----(.*?)-----END (?:X9\.42 )?DH PARAMETERS-----",
    re.DOTALL,
)


@functools.cache
def _pi_fixed(bits: int) -> int:
    """floor(pi * 2^bits), by Machin's formula with 64 guard bits."""
    guard = 64
    one = 1 << (bits + guard)

    def arctan_inv(x: int) -> int:
        total = term = one // x
        x2, n, sign = x * x, 1, -1
        while term:
            term //= x2
            total += sign * (term // (2 * n + 1))
            n, sign = n + 1, -sign
        return total

    return (16 * arctan_inv(5) - 4 * arctan_inv(239)) >> guard


@functools.cache
def rfc3526_prime(group: str) -> int:
    bits, k = RFC3526_GROUPS[group]
    return (1 << bits) - (1 << (bits - 64)) - 1 + ((_pi_fixed(bits - 130) + k) << 64)


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_integer(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")  # leading 0 keeps it positive
    return b"\x02" + _der_length(len(raw)) + raw


def pkcs3_pem(p: int, g: int) -> bytes:
    """PKCS#3 DHParameter ::= SEQUENCE { prime INTEGER, base INTEGER } as PEM."""
    body = _der_integer(p) + _der_integer(g)
    der = b"\x30" + _der_length(len(body)) + body
    b64 = base64.encodebytes(der).replace(b"\n", b"")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    body_lines = b"\n".join(lines)
    return b"-----BEGIN DH PARAMETERS-----\n" + body_lines + b"\n-----END DH PARAMETERS-----\n"


def _read_der(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at ``pos``."""
    if pos + 2 > len(data):
        raise BadValue("truncated DH parameters")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise BadValue("malformed DH parameters")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    else:
        length = first
    if pos + length > len(data):
        raise BadValue("truncated DH parameters")
    return tag, pos, pos + length


def _parse_dh_pem(data: bytes) -> tuple[int, int]:
    """(p, g) from "DH PARAMETERS" (PKCS#3) or "X9.42 DH PARAMETERS" (RFC 3279) PEM."""
    match = _PEM_DH.search(data)
    if match is None:
        raise BadValue("not a PEM file of DH parameters")
    try:
        der = base64.b64decode(b"".join(match.group(2).split()), validate=True)
    except (ValueError, binascii.Error):
        raise BadValue("not a PEM file of DH parameters") from None
    tag, start, end = _read_der(der, 0)
    if tag != 0x30:
        raise BadValue("malformed DH parameters")
    numbers = []
    pos = start
    while pos < end and len(numbers) < 2:
        tag, lo, hi = _read_der(der, pos)
        if tag != 0x02 or hi == lo:
            raise BadValue("malformed DH parameters")
        numbers.append(int.from_bytes(der[lo:hi], "big"))
        pos = hi
    if len(numbers) != 2:
        raise BadValue("malformed DH parameters")
    p, g = numbers  # X9.42 DomainParameters also start p, g (then q, ...)
    return p, g


@functools.cache
def named_group(group: str) -> DHGroup:
    pem = pkcs3_pem(rfc3526_prime(group), 2)
    return DHGroup(name=f"rfc3526-{group}", bits=RFC3526_GROUPS[group][0], pem=pem)


def _openssl_accepts(path: Path) -> str | None:
    """Let the OpenSSL the workers use load the file; returns its complaint or None."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_dh_params(os.fspath(path))
    except (ssl.SSLError, OSError, ValueError) as e:
        return one_line(str(e))
    return None


def load_dh_file(path: Path) -> DHGroup:
    """A PEM file of DH parameters ("openssl dhparam"), at least 2048 bits (Logjam)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block
            raise IsADirectoryError(0, "not a regular file")
        with open(path, "rb") as f:
            data = f.read(_MAX_PARAM_FILE + 1)
    except (OSError, ValueError) as e:
        raise BadValue(f"cannot read: {getattr(e, 'strerror', None) or e}") from None
    if len(data) > _MAX_PARAM_FILE:
        raise BadValue("too large for a DH parameter file")
    p, g = _parse_dh_pem(data)
    bits = p.bit_length()
    if bits < MIN_DH_BITS:
        raise BadValue(f"{bits}-bit DH is too weak (Logjam); use at least {MIN_DH_BITS} bits")
    if not 1 < g < p - 1:
        raise BadValue("malformed DH parameters (bad generator)")
    complaint = _openssl_accepts(path)
    if complaint is not None:
        raise BadValue(f"OpenSSL refuses these DH parameters: {complaint}")
    return DHGroup(name=os.fspath(path), bits=bits, pem=pkcs3_pem(p, g), path=path)


def resolve_dhgroup(value: str, path: Path | None) -> DHGroup:
    """``value`` is "14"/"15"/"16"; otherwise ``path`` is the parameter file it names."""
    if value in RFC3526_GROUPS:
        return named_group(value)
    if path is None:
        raise BadValue("expected 14, 15, 16 or the path of a DH parameter file")
    return load_dh_file(path)
