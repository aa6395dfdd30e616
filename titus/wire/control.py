"""Messages between the supervisor and a worker (sans-IO: bytes in, tuples out).

One message is one SOCK_SEQPACKET packet of at most MAX_PACKET bytes; file
descriptors travel beside it as SCM_RIGHTS.  The format is binary and fixed,
so that the worker (C: titus/worker/wk_control.c) decodes it with a few length
checks and the supervisor pays microseconds, not a JSON parse, per message:
a type byte, then fixed fields, integers big-endian; a string is its length
(u8, or u16 where noted) and its bytes.

  supervisor -> worker
    0x01 Connection     family u8 (4|6) | local ip (4|16) | local port u16   + client fd
    0x02 BackendReady                                                         + backend fd
    0x03 BackendFailed  reason str8 (printable ASCII)
  worker -> supervisor
    0x81 HandshakeDone  vhost u16 | handshake us u32 | flags u8 (1 alpn, 2 sni, 4 cn,
                        8 client certificate) | version str8 | cipher str8 | [alpn str8]
                        | [sni str8] | [cn str16] | [subject str16 | n u8 | n x dns str16
                        | m u8 | m x uri str16]
    0x82 Finished       outcome u8 | vhost u16 (0xffff none) | bytes in u64 | bytes out u64
                        | signatures u32 | failed u32 | flags u8 (1 sni, 2 detail)
                        | [sni str8] | [detail str16]

The supervisor treats everything a worker sends as hostile: `decode_from_worker`
accepts only these exact shapes (every length checked, the packet consumed
exactly, its own text printable ASCII, a client certificate's names valid UTF-8
within their limits) and raises ControlError on anything else.  Messages are
NamedTuples: cheap to build on the hot path.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

from titus.wire.outcome import WORKER_OUTCOMES, Outcome

MAX_PACKET = 8192
MAX_SANS = 16  # DNS or URI SANs in one HandshakeDone (a worker sends those that fit)

CONNECTION, BACKEND_READY, BACKEND_FAILED = 0x01, 0x02, 0x03
HANDSHAKE_DONE, FINISHED = 0x81, 0x82
NO_VHOST = 0xFFFF

# A worker's outcomes: on the wire, their index in WORKER_OUTCOMES.
OUTCOMES = frozenset(WORKER_OUTCOMES)  # what a Finished message may say
_OUTCOME_CODE: dict[str, int] = {name: code for code, name in enumerate(WORKER_OUTCOMES)}

_HANDSHAKE = struct.Struct("!BHIB")
_FINISHED = struct.Struct("!BBHQQIIB")
_PORT = struct.Struct("!H")
_U16 = struct.Struct("!H")

MAX_VERSION, MAX_CIPHER, MAX_ALPN, MAX_SNI = 32, 64, 255, 255
MAX_CN_CHARS, MAX_SUBJECT_CHARS, MAX_DNS_CHARS, MAX_URI_CHARS = 256, 1024, 253, 1024
MAX_DETAIL, MAX_REASON = 512, 255


class ControlError(ValueError):
    """A malformed or forged control message."""


# -- supervisor -> worker -----------------------------------------------------------


class Connection(NamedTuple):
    """A client connection handed to an idle worker (the client socket rides along)."""

    local: tuple[str, int]  # the address the client connected to: the vhost choice needs it


class BackendReady(NamedTuple):
    """The broker connected the vhost's backend (the socket rides along)."""


class BackendFailed(NamedTuple):
    reason: str


# -- worker -> supervisor -----------------------------------------------------------


class HandshakeDone(NamedTuple):
    """The worker asks for the backend of `vhost` and reports what it negotiated."""

    vhost: int
    sni: str | None
    version: str
    cipher: str
    alpn: str | None
    handshake_ms: float
    # The client certificate OpenSSL verified (all None/empty without one): what the
    # supervisor's allow-list (client-allow-*) and the log see.
    client_cn: str | None = None  # its subject CN
    client_subject: str | None = None  # its subject, RFC 4514 ("CN=alice,O=Example")
    client_dns: tuple[str, ...] = ()  # its DNS name SANs
    client_uri: tuple[str, ...] = ()  # its URI SANs (e.g. spiffe://...)


class Finished(NamedTuple):
    """The worker's last word: what happened to the connection."""

    outcome: Outcome
    bytes_in: int
    bytes_out: int
    detail: str | None = None
    signatures: int = 0  # key-holder signatures that succeeded / failed (for metrics)
    signature_failures: int = 0
    # What the worker knew when it ended, for a handshake that failed before HandshakeDone:
    # the client's SNI and the vhost it chose (None when not known).
    sni: str | None = None
    vhost: int | None = None


# -- encoding -----------------------------------------------------------------------


def _str8(text: str, limit: int) -> bytes:
    data = text.encode()
    if len(data) > limit:
        raise ControlError(f"{text[:20]!r}... is too long")
    return bytes((len(data),)) + data


def _utf8(text: str, chars: int) -> bytes:
    if len(text) > chars:
        raise ControlError(f"{text[:20]!r}... is too long")
    data = text.encode()
    return _U16.pack(len(data)) + data


def _encode_address(addr: tuple[str, int]) -> bytes:
    host, port = addr
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    packed = socket.inet_pton(family, host)
    return bytes((4 if family == socket.AF_INET else 6,)) + packed + _PORT.pack(port)


def encode(msg: object) -> bytes:
    """One packet for `msg`; ControlError if it cannot be encoded within the limits."""
    try:
        data = _encode(msg)
    except (struct.error, OSError, UnicodeEncodeError, KeyError) as e:
        raise ControlError(f"cannot encode {type(msg).__name__}: {e}") from None
    if len(data) > MAX_PACKET:
        raise ControlError(f"{type(msg).__name__} message too large ({len(data)} bytes)")
    return data


def _encode(msg: object) -> bytes:
    if isinstance(msg, Connection):
        return bytes((CONNECTION,)) + _encode_address(msg.local)
    if isinstance(msg, BackendReady):
        return bytes((BACKEND_READY,))
    if isinstance(msg, BackendFailed):
        reason = "".join(c if c.isascii() and c.isprintable() else "?" for c in msg.reason)
        return bytes((BACKEND_FAILED,)) + _str8(reason[:MAX_REASON], MAX_REASON)
    if isinstance(msg, HandshakeDone):
        cert = msg.client_subject is not None
        flags = ((msg.alpn is not None) | (msg.sni is not None) << 1
                 | (msg.client_cn is not None) << 2 | cert << 3)
        out = [_HANDSHAKE.pack(HANDSHAKE_DONE, msg.vhost, round(msg.handshake_ms * 1000), flags),
               _str8(msg.version, MAX_VERSION), _str8(msg.cipher, MAX_CIPHER)]
        if msg.alpn is not None:
            out.append(_str8(msg.alpn, MAX_ALPN))
        if msg.sni is not None:
            out.append(_str8(msg.sni, MAX_SNI))
        if msg.client_cn is not None:
            out.append(_utf8(msg.client_cn, MAX_CN_CHARS))
        if cert:
            if len(msg.client_dns) > MAX_SANS or len(msg.client_uri) > MAX_SANS:
                raise ControlError("too many SANs")
            out.append(_utf8(msg.client_subject, MAX_SUBJECT_CHARS))
            out.append(bytes((len(msg.client_dns),)))
            out += [_utf8(name, MAX_DNS_CHARS) for name in msg.client_dns]
            out.append(bytes((len(msg.client_uri),)))
            out += [_utf8(uri, MAX_URI_CHARS) for uri in msg.client_uri]
        elif msg.client_dns or msg.client_uri:
            raise ControlError("SANs without a certificate subject")
        return b"".join(out)
    if isinstance(msg, Finished):
        flags = (msg.sni is not None) | (msg.detail is not None) << 1
        vhost = NO_VHOST if msg.vhost is None else msg.vhost
        if vhost == NO_VHOST and msg.vhost is not None:
            raise ControlError("vhost out of range")
        code = _OUTCOME_CODE.get(msg.outcome)
        if code is None:  # the supervisor's verdicts are not a worker's to report
            raise ControlError(f"unknown outcome {msg.outcome!r}")
        out = [_FINISHED.pack(FINISHED, code, vhost, msg.bytes_in,
                              msg.bytes_out, msg.signatures, msg.signature_failures, flags)]
        if msg.sni is not None:
            out.append(_str8(msg.sni, MAX_SNI))
        if msg.detail is not None:
            data = msg.detail.encode()
            if len(data) > MAX_DETAIL:
                raise ControlError("detail is too long")
            out.append(_U16.pack(len(data)) + data)
        return b"".join(out)
    raise ControlError(f"not a control message: {type(msg).__name__}")


# -- decoding -----------------------------------------------------------------------


def _text(packet: bytes, pos: int, lenbytes: int, limit: int, empty: bool = True
          ) -> tuple[str, int]:
    """A printable-ASCII string field at `pos`; the position after it."""
    if lenbytes == 1:
        if pos >= len(packet):
            raise ControlError("truncated message")
        n, pos = packet[pos], pos + 1
    else:
        if pos + 2 > len(packet):
            raise ControlError("truncated message")
        n, pos = _U16.unpack_from(packet, pos)[0], pos + 2
    end = pos + n
    if n > limit or end > len(packet) or (n == 0 and not empty):
        raise ControlError("bad string length")
    raw = packet[pos:end]
    if not raw.isascii():
        raise ControlError("text that is not ASCII")
    text = raw.decode("ascii")
    if not text.isprintable():
        raise ControlError("text that is not printable")
    return text, end


def _name(packet: bytes, pos: int, chars: int) -> tuple[str, int]:
    """A name from a client certificate: valid UTF-8 of at most `chars` characters."""
    if pos + 2 > len(packet):
        raise ControlError("truncated message")
    n = _U16.unpack_from(packet, pos)[0]
    end = pos + 2 + n
    if n > 4 * chars or end > len(packet):
        raise ControlError("bad name length")
    try:
        text = packet[pos + 2:end].decode("utf-8")  # strict: no lone surrogates
    except UnicodeDecodeError:
        raise ControlError("a client certificate name that is not UTF-8") from None
    if len(text) > chars:
        raise ControlError("a client certificate name that is too long")
    return text, end


def _names(packet: bytes, pos: int, chars: int) -> tuple[tuple[str, ...], int]:
    if pos >= len(packet):
        raise ControlError("truncated message")
    count, pos = packet[pos], pos + 1
    if count > MAX_SANS:
        raise ControlError("too many SANs")
    out = []
    for _ in range(count):
        name, pos = _name(packet, pos, chars)
        out.append(name)
    return tuple(out), pos


def decode_from_worker(packet: bytes) -> HandshakeDone | Finished:
    n = len(packet)
    if not 0 < n <= MAX_PACKET:
        raise ControlError(f"bad packet length {n}")
    kind = packet[0]
    if kind == HANDSHAKE_DONE:
        if n < _HANDSHAKE.size:
            raise ControlError("truncated message")
        _, vhost, micros, flags = _HANDSHAKE.unpack_from(packet)
        if flags & ~15 or vhost == NO_VHOST:
            raise ControlError("bad handshake report")
        version, pos = _text(packet, _HANDSHAKE.size, 1, MAX_VERSION)
        cipher, pos = _text(packet, pos, 1, MAX_CIPHER)
        alpn = sni = cn = subject = None
        dns: tuple[str, ...] = ()
        uri: tuple[str, ...] = ()
        if flags & 1:
            alpn, pos = _text(packet, pos, 1, MAX_ALPN, empty=False)
        if flags & 2:
            sni, pos = _text(packet, pos, 1, MAX_SNI)
        if flags & 4:
            cn, pos = _name(packet, pos, MAX_CN_CHARS)
        if flags & 8:
            subject, pos = _name(packet, pos, MAX_SUBJECT_CHARS)
            dns, pos = _names(packet, pos, MAX_DNS_CHARS)
            uri, pos = _names(packet, pos, MAX_URI_CHARS)
        if pos != n:
            raise ControlError("trailing bytes")
        return HandshakeDone(vhost, sni, version, cipher, alpn, micros / 1000, cn, subject,
                             dns, uri)
    if kind == FINISHED:
        if n < _FINISHED.size:
            raise ControlError("truncated message")
        _, code, vhost, bytes_in, bytes_out, signs, failed, flags = _FINISHED.unpack_from(packet)
        if code >= len(WORKER_OUTCOMES) or flags & ~3:
            raise ControlError("bad finished report")
        if bytes_in >= 2**63 or bytes_out >= 2**63:
            raise ControlError("byte count out of range")
        pos, sni, detail = _FINISHED.size, None, None
        if flags & 1:
            sni, pos = _text(packet, pos, 1, MAX_SNI)
        if flags & 2:
            detail, pos = _text(packet, pos, 2, MAX_DETAIL)
        if pos != n:
            raise ControlError("trailing bytes")
        return Finished(WORKER_OUTCOMES[code], bytes_in, bytes_out, detail, signs, failed, sni,
                        None if vhost == NO_VHOST else vhost)
    raise ControlError(f"unknown message type {packet[:1]!r}")


def decode_from_supervisor(packet: bytes) -> Connection | BackendReady | BackendFailed:
    """The worker's side (in C); here for the tests and the rogue workers they script."""
    n = len(packet)
    if not 0 < n <= MAX_PACKET:
        raise ControlError(f"bad packet length {n}")
    kind = packet[0]
    if kind == CONNECTION and n in (8, 20) and packet[1] == (4 if n == 8 else 6):
        family = socket.AF_INET if n == 8 else socket.AF_INET6
        host = socket.inet_ntop(family, packet[2:n - 2])
        return Connection((host, _PORT.unpack_from(packet, n - 2)[0]))
    if kind == BACKEND_READY and n == 1:
        return BackendReady()
    if kind == BACKEND_FAILED:
        reason, pos = _text(packet, 1, 1, MAX_REASON)
        if pos == n:
            return BackendFailed(reason)
    raise ControlError(f"malformed message of type {packet[:1]!r}")
