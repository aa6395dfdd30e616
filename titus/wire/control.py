"""Messages between the supervisor and a worker (sans-IO: bytes in, objects out).

One message is one SOCK_SEQPACKET packet: a type byte and a JSON object, at
most MAX_PACKET bytes; file descriptors travel beside it as SCM_RIGHTS.  The
supervisor treats everything a worker sends as hostile: `decode_from_worker`
accepts only the exact shapes below and raises ControlError on anything else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from titus.wire.outcome import WORKER_OUTCOMES, Outcome

MAX_PACKET = 4096
MAX_SANS = 16  # DNS or URI SANs in one HandshakeDone (a worker sends those that fit)


class ControlError(ValueError):
    """A malformed or forged control message."""


# -- supervisor -> worker -----------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """A client connection handed to an idle worker (the client socket rides along)."""

    conn_id: int
    peer: tuple[str, int]
    local: tuple[str, int]


@dataclass(frozen=True)
class BackendReady:
    """The broker connected the vhost's backend (the socket rides along)."""


@dataclass(frozen=True)
class BackendFailed:
    reason: str


# -- worker -> supervisor -----------------------------------------------------------


@dataclass(frozen=True)
class HandshakeDone:
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


@dataclass(frozen=True)
class Finished:
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


_TO_WORKER = {"C": Connection, "B": BackendReady, "F": BackendFailed}
_TO_SUPERVISOR = {"H": HandshakeDone, "D": Finished}
_TYPE_OF = {cls: code for code, cls in (_TO_WORKER | _TO_SUPERVISOR).items()}

OUTCOMES = frozenset(WORKER_OUTCOMES)  # what a Finished message may say


def encode(msg: object) -> bytes:
    body = vars(msg)  # flat messages: asdict's recursive deep copy is not needed
    data = _TYPE_OF[type(msg)].encode() + json.dumps(body, separators=(",", ":")).encode()
    if len(data) > MAX_PACKET:
        raise ControlError(f"{type(msg).__name__} message too large ({len(data)} bytes)")
    return data


def _body(packet: bytes, types: dict[str, type]) -> tuple[type, dict[str, Any]]:
    if not packet or len(packet) > MAX_PACKET:
        raise ControlError(f"bad packet length {len(packet)}")
    code = chr(packet[0])
    if code not in types:
        raise ControlError(f"unknown message type {packet[:1]!r}")
    try:
        body = json.loads(packet[1:])
    except (ValueError, RecursionError) as e:
        raise ControlError(f"message body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise ControlError("message body is not an object")
    return types[code], body


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _field(
    body: dict[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    optional: bool = False,
    limit: int = 256,
) -> Any:
    value = body.get(name)
    if value is None and optional:
        return None
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ControlError(f"field {name!r} has the wrong type")
    if isinstance(value, str) and len(value) > limit:
        raise ControlError(f"field {name!r} is too long")
    if isinstance(value, str) and not _is_unicode(value):
        # JSON's "\ud800" (and json.loads' surrogatepass on raw bytes) give lone
        # surrogates, which no header or log can encode.
        raise ControlError(f"field {name!r} is not valid Unicode")
    if isinstance(value, float) and not math.isfinite(value):
        raise ControlError(f"field {name!r} is not finite")
    if isinstance(value, int) and not 0 <= value < 2**63:
        raise ControlError(f"field {name!r} is out of range")
    return value


def _strings(body: dict[str, Any], name: str, limit: int) -> tuple[str, ...]:
    """An optional list of at most MAX_SANS strings, each checked as _field checks one."""
    value = body.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_SANS:
        raise ControlError(f"field {name!r} is not a list of at most {MAX_SANS} strings")
    return tuple(_field({name: item}, name, str, limit=limit) for item in value)


def decode_from_worker(packet: bytes) -> HandshakeDone | Finished:
    cls, body = _body(packet, _TO_SUPERVISOR)
    if set(body) - {f for f in cls.__dataclass_fields__}:
        raise ControlError("unexpected fields")
    if cls is HandshakeDone:
        return HandshakeDone(
            vhost=_field(body, "vhost", int),
            sni=_field(body, "sni", str, optional=True),
            version=_field(body, "version", str, limit=32),
            cipher=_field(body, "cipher", str, limit=64),
            alpn=_field(body, "alpn", str, optional=True, limit=64),
            handshake_ms=float(_field(body, "handshake_ms", (int, float))),
            client_cn=_field(body, "client_cn", str, optional=True, limit=256),
            client_subject=_field(body, "client_subject", str, optional=True, limit=1024),
            client_dns=_strings(body, "client_dns", limit=253),
            client_uri=_strings(body, "client_uri", limit=1024),
        )
    outcome = _field(body, "outcome", str, limit=32)
    if outcome not in OUTCOMES:
        raise ControlError(f"unknown outcome {outcome!r}")
    return Finished(
        outcome=Outcome(outcome),
        bytes_in=_field(body, "bytes_in", int),
        bytes_out=_field(body, "bytes_out", int),
        detail=_field(body, "detail", str, optional=True, limit=512),
        signatures=_field(body, "signatures", int, optional=True) or 0,
        signature_failures=_field(body, "signature_failures", int, optional=True) or 0,
        sni=_field(body, "sni", str, optional=True),
        vhost=_field(body, "vhost", int, optional=True),
    )


def decode_from_supervisor(packet: bytes) -> Connection | BackendReady | BackendFailed:
    cls, body = _body(packet, _TO_WORKER)
    if cls is Connection:
        return Connection(
            conn_id=body["conn_id"],
            peer=tuple(body["peer"]),  # type: ignore[arg-type]
            local=tuple(body["local"]),
        )  # type: ignore[arg-type]
    if cls is BackendFailed:
        return BackendFailed(reason=str(body["reason"]))
    return BackendReady()
