"""The binary protocol between a worker and the key holder, sans I/O.

Everything a compromised worker can say to the key holder passes through the
decoders here, so they accept only fixed-size headers with known values and
bounded payloads, and report anything else as ProtocolError (never another
exception, which is what lets the key holder survive any input).

Frames (all integers big-endian):

    request   version u8 | op u8     | key_id u16 | request_id u32 | length u32 | payload
    response  version u8 | status u8 | request_id u32 | length u32 | payload

The worker channel is an AF_UNIX SOCK_SEQPACKET socket: one frame per packet.
The decoders are incremental all the same, so a stream transport would work.

The supervisor hands a new channel to the key holder with a grant on the
control socket (also SOCK_SEQPACKET), one packet carrying exactly one fd as
SCM_RIGHTS:

    grant     version u8 | type u8 (1) | n_keys u16 | channel_id u32 | budget u32
              | n_keys x key_id u16
"""

from __future__ import annotations

import abc
import enum
import struct
from dataclasses import dataclass

VERSION = 1
MAX_PAYLOAD = 1024  # an RSA-8192 block; real traffic is <= 512 bytes (RSA-4096)
MAX_GRANT_KEYS = 64

REQUEST_HEADER = struct.Struct("!BBHII")
RESPONSE_HEADER = struct.Struct("!BBII")
GRANT_HEADER = struct.Struct("!BBHII")
_KEY_ID = struct.Struct("!H")

MAX_REQUEST = REQUEST_HEADER.size + MAX_PAYLOAD
MAX_RESPONSE = RESPONSE_HEADER.size + MAX_PAYLOAD
MAX_GRANT = GRANT_HEADER.size + MAX_GRANT_KEYS * _KEY_ID.size

GRANT_NEW_CHANNEL = 1

# The keys the key holder serves (and so the certificates a worker accepts).
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 4096
EC_CURVES = {"secp256r1": 256, "secp384r1": 384}  # cryptography's curve name -> bits


class ProtocolError(ValueError):
    """Malformed input on a key-holder channel; the channel must be closed."""


class Op(enum.IntEnum):
    SIGN_RSA_RAW = 1  # an RSA_NO_PADDING block, which must be EMSA-PSS shaped
    SIGN_RSA_PKCS1 = 2  # a DER DigestInfo, padded with PKCS#1 v1.5 type 1
    SIGN_ECDSA = 3  # a message digest


class Status(enum.IntEnum):
    OK = 0
    REFUSED_SHAPE = 1
    REFUSED_BUDGET = 2
    REFUSED_KEY = 3
    ERROR = 4


_OPS = frozenset(int(o) for o in Op)
_STATUSES = frozenset(int(s) for s in Status)


@dataclass(frozen=True)
class Request:
    op: Op
    key_id: int
    request_id: int
    payload: bytes


@dataclass(frozen=True)
class Response:
    status: Status
    request_id: int
    payload: bytes = b""


@dataclass(frozen=True)
class Grant:
    """What the supervisor allows one worker channel: which keys, how many signatures."""

    channel_id: int
    budget: int
    key_ids: tuple[int, ...]


def _check_payload(payload: bytes, max_payload: int) -> None:
    if len(payload) > max_payload:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {max_payload}")


def encode_request(req: Request, max_payload: int = MAX_PAYLOAD) -> bytes:
    _check_payload(req.payload, max_payload)
    if int(req.op) not in _OPS:
        raise ProtocolError(f"unknown op {req.op}")
    try:
        header = REQUEST_HEADER.pack(VERSION, req.op, req.key_id, req.request_id, len(req.payload))
    except struct.error as e:
        raise ProtocolError(f"unencodable request: {e}") from None
    return header + req.payload


def encode_response(resp: Response, max_payload: int = MAX_PAYLOAD) -> bytes:
    _check_payload(resp.payload, max_payload)
    if int(resp.status) not in _STATUSES:
        raise ProtocolError(f"unknown status {resp.status}")
    try:
        header = RESPONSE_HEADER.pack(VERSION, resp.status, resp.request_id, len(resp.payload))
    except struct.error as e:
        raise ProtocolError(f"unencodable response: {e}") from None
    return header + resp.payload


class _Decoder(abc.ABC):
    """Incremental frame decoder; poisoned by the first error, as the peer can't be trusted."""

    _header: struct.Struct

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._max = max_payload
        self._failed: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list:
        if self._failed is not None:
            raise self._failed
        self._buf += data
        out = []
        try:
            while len(self._buf) >= self._header.size:
                fields = self._header.unpack_from(self._buf)
                length = fields[-1]
                self._check(fields)
                if length > self._max:
                    raise ProtocolError(f"payload length {length} exceeds {self._max}")
                end = self._header.size + length
                if len(self._buf) < end:
                    break
                payload = bytes(self._buf[self._header.size : end])
                del self._buf[:end]
                out.append(self._build(fields, payload))
        except ProtocolError as e:
            self._failed = e
            self._buf.clear()
            raise
        return out

    def _check(self, fields: tuple) -> None:
        if fields[0] != VERSION:
            raise ProtocolError(f"bad version {fields[0]}")

    @abc.abstractmethod
    def _build(self, fields: tuple, payload: bytes) -> Request | Response:
        """The message a complete frame's header fields and payload make."""


class RequestDecoder(_Decoder):
    _header = REQUEST_HEADER

    def _check(self, fields: tuple) -> None:
        super()._check(fields)
        if fields[1] not in _OPS:
            raise ProtocolError(f"unknown op {fields[1]}")

    def _build(self, fields: tuple, payload: bytes) -> Request:
        _, op, key_id, request_id, _ = fields
        return Request(Op(op), key_id, request_id, payload)

    def feed(self, data: bytes) -> list[Request]:
        return super().feed(data)


class ResponseDecoder(_Decoder):
    _header = RESPONSE_HEADER

    def _check(self, fields: tuple) -> None:
        super()._check(fields)
        if fields[1] not in _STATUSES:
            raise ProtocolError(f"unknown status {fields[1]}")

    def _build(self, fields: tuple, payload: bytes) -> Response:
        _, status, request_id, _ = fields
        return Response(Status(status), request_id, payload)

    def feed(self, data: bytes) -> list[Response]:
        return super().feed(data)


def _exactly_one(decoder: _Decoder, packet: bytes) -> object:
    msgs = decoder.feed(packet)
    if len(msgs) != 1 or decoder.buffered:
        raise ProtocolError("a packet must hold exactly one frame")
    return msgs[0]


_OP_BY_VALUE = {int(o): o for o in Op}


def decode_request_packet(packet: bytes, max_payload: int = MAX_PAYLOAD) -> Request:
    """Decode one SOCK_SEQPACKET packet, which must be exactly one request frame.

    The key holder decodes one per signature: a packet that RequestDecoder would accept
    as exactly one frame (known version and op, length within bounds and equal to the
    rest of the packet) is decoded from its header at once; anything else goes through
    RequestDecoder itself, so every error is the decoder's.
    """
    if len(packet) >= REQUEST_HEADER.size:
        version, op, key_id, request_id, length = REQUEST_HEADER.unpack_from(packet)
        known = _OP_BY_VALUE.get(op)
        if (
            version == VERSION
            and known is not None
            and length <= max_payload
            and len(packet) == REQUEST_HEADER.size + length
        ):
            return Request(known, key_id, request_id, bytes(packet[REQUEST_HEADER.size :]))
    msg = _exactly_one(RequestDecoder(max_payload), packet)
    assert isinstance(msg, Request)
    return msg


def decode_response_packet(packet: bytes, max_payload: int = MAX_PAYLOAD) -> Response:
    """Decode one SOCK_SEQPACKET packet, which must be exactly one response frame."""
    msg = _exactly_one(ResponseDecoder(max_payload), packet)
    assert isinstance(msg, Response)
    return msg


def encode_grant(grant: Grant) -> bytes:
    keys = tuple(grant.key_ids)
    if not 0 < len(keys) <= MAX_GRANT_KEYS:
        raise ProtocolError(f"a grant names 1..{MAX_GRANT_KEYS} keys, not {len(keys)}")
    try:
        head = GRANT_HEADER.pack(
            VERSION, GRANT_NEW_CHANNEL, len(keys), grant.channel_id, grant.budget
        )
        return head + b"".join(_KEY_ID.pack(k) for k in keys)
    except struct.error as e:
        raise ProtocolError(f"unencodable grant: {e}") from None


def decode_grant(packet: bytes) -> Grant:
    if len(packet) < GRANT_HEADER.size:
        raise ProtocolError("short grant")
    version, kind, n_keys, channel_id, budget = GRANT_HEADER.unpack_from(packet)
    if version != VERSION:
        raise ProtocolError(f"bad grant version {version}")
    if kind != GRANT_NEW_CHANNEL:
        raise ProtocolError(f"unknown grant type {kind}")
    if not 0 < n_keys <= MAX_GRANT_KEYS:
        raise ProtocolError(f"grant names {n_keys} keys")
    if len(packet) != GRANT_HEADER.size + n_keys * _KEY_ID.size:
        raise ProtocolError("grant length does not match its key count")
    # n_keys x key_id u16, in one unpack (struct caches the format)
    keys = struct.unpack_from(f"!{n_keys}H", packet, GRANT_HEADER.size)
    return Grant(channel_id, budget, keys)
