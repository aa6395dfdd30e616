"""PROXY protocol v1 and v2 headers (sans-IO), written by the supervisor's broker.

The addresses come from the supervisor's own accept(): a worker cannot forge
them.  The TLS facts in v2's TLVs (SNI, version, cipher, ALPN, client
certificate) are what the worker reported after its handshake.
Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_PROXY = 0x21  # version 2, command PROXY
_V2_LOCAL = 0x20
_TCP4, _TCP6, _UNSPEC = 0x11, 0x21, 0x00

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

_MAX_TLV_VALUE = 0xFFFF  # a TLV's length and the v2 header's length are u16


class EncodeError(ValueError):
    """A value that cannot go into a PROXY header: refused, never truncated."""


@dataclass(frozen=True)
class TLSFacts:
    sni: str | None = None
    version: str | None = None
    cipher: str | None = None
    alpn: str | None = None
    client_cn: str | None = None  # only when the client certificate was verified


def _unmapped(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _pair(src: tuple[str, int], dst: tuple[str, int]):
    s, d = _unmapped(src[0]), _unmapped(dst[0])
    if s.version != d.version:  # e.g. IPv4 client, IPv6 backend side: show both as IPv6
        s = s if s.version == 6 else ipaddress.IPv6Address(f"::ffff:{s}")
        d = d if d.version == 6 else ipaddress.IPv6Address(f"::ffff:{d}")
    return s, d


def _ports(src: tuple[str, int], dst: tuple[str, int]) -> None:
    for port in (src[1], dst[1]):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise EncodeError(f"port {port!r} is not in 0..65535")


def _text(what: str, value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise EncodeError(f"{what} is not valid Unicode text") from None


def v1(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    _ports(src, dst)
    s, d = _pair(src, dst)
    proto = "TCP4" if s.version == 4 else "TCP6"
    return f"PROXY {proto} {s} {d} {src[1]} {dst[1]}\r\n".encode()


def _tlv(kind: int, value: bytes) -> bytes:
    if len(value) > _MAX_TLV_VALUE:
        raise EncodeError(f"TLV {kind:#04x}: {len(value)} bytes, at most {_MAX_TLV_VALUE}")
    return struct.pack("!BH", kind, len(value)) + value


def v2(src: tuple[str, int], dst: tuple[str, int], tls: TLSFacts | None = None) -> bytes:
    _ports(src, dst)
    s, d = _pair(src, dst)
    if s.version == 4:
        family, addrs = _TCP4, s.packed + d.packed + struct.pack("!HH", src[1], dst[1])
    else:
        family, addrs = _TCP6, s.packed + d.packed + struct.pack("!HH", src[1], dst[1])
    tlvs = b""
    if tls is not None:
        if tls.alpn:
            tlvs += _tlv(PP2_TYPE_ALPN, _text("alpn", tls.alpn))
        if tls.sni:
            tlvs += _tlv(PP2_TYPE_AUTHORITY, _text("sni", tls.sni))
        sub = b""
        if tls.version:
            sub += _tlv(PP2_SUBTYPE_SSL_VERSION, _text("version", tls.version))
        if tls.cipher:
            sub += _tlv(PP2_SUBTYPE_SSL_CIPHER, _text("cipher", tls.cipher))
        client = PP2_CLIENT_SSL
        if tls.client_cn is not None:
            client |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
            sub += _tlv(PP2_SUBTYPE_SSL_CN, _text("client_cn", tls.client_cn))
        # verify = 0: the client certificate, if any, was verified.
        tlvs += _tlv(PP2_TYPE_SSL, struct.pack("!BI", client, 0) + sub)
    body = addrs + tlvs
    if len(body) > _MAX_TLV_VALUE:
        raise EncodeError(f"a v2 header of {len(body)} bytes after the fixed part, "
                          f"at most {_MAX_TLV_VALUE}")
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(body)) + body


@dataclass(frozen=True)
class Parsed:
    """What a backend learns from a header (used by tests and the demo backend)."""

    src: tuple[str, int] | None
    dst: tuple[str, int] | None
    tlvs: dict[int, bytes]
    ssl_tlvs: dict[int, bytes]
    length: int  # bytes of the header


class ParseError(ValueError):
    pass


def parse(data: bytes) -> Parsed | None:
    """Parse a v1 or v2 header at the start of `data`; None if more bytes are needed."""
    if data.startswith(V2_SIGNATURE[: len(data)]) and len(data) < 16:
        return None
    if data.startswith(V2_SIGNATURE):
        ver_cmd, family, length = struct.unpack_from("!BBH", data, 12)
        if len(data) < 16 + length:
            return None
        if ver_cmd not in (_V2_PROXY, _V2_LOCAL):
            raise ParseError(f"bad version/command {ver_cmd:#x}")
        body = data[16:16 + length]
        if family == _TCP4:
            src = (str(ipaddress.IPv4Address(body[0:4])), struct.unpack_from("!H", body, 8)[0])
            dst = (str(ipaddress.IPv4Address(body[4:8])), struct.unpack_from("!H", body, 10)[0])
            rest = body[12:]
        elif family == _TCP6:
            src = (str(ipaddress.IPv6Address(body[0:16])), struct.unpack_from("!H", body, 32)[0])
            dst = (str(ipaddress.IPv6Address(body[16:32])), struct.unpack_from("!H", body, 34)[0])
            rest = body[36:]
        else:
            src = dst = None
            rest = b""
        tlvs = _parse_tlvs(rest)
        ssl_tlvs = _parse_tlvs(tlvs[PP2_TYPE_SSL][5:]) if PP2_TYPE_SSL in tlvs else {}
        return Parsed(src, dst, tlvs, ssl_tlvs, 16 + length)
    if data.startswith(b"PROXY "[: len(data)]):
        end = data.find(b"\r\n")
        if end < 0:
            if len(data) > 107:
                raise ParseError("v1 header too long")
            return None
        words = data[:end].decode("ascii").split(" ")
        if words[1] == "UNKNOWN":
            return Parsed(None, None, {}, {}, end + 2)
        if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
            raise ParseError(f"bad v1 header {data[:end]!r}")
        return Parsed((words[2], int(words[4])), (words[3], int(words[5])), {}, {}, end + 2)
    raise ParseError("no PROXY header")


def _parse_tlvs(data: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 3 <= len(data):
        kind, length = struct.unpack_from("!BH", data, pos)
        out[kind] = data[pos + 3:pos + 3 + length]
        pos += 3 + length
    return out
