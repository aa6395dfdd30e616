"""Reading the server name from a TLS ClientHello before TLS starts.

The worker picks the vhost (and so the whole SSLContext: versions, ciphers,
certificate) from the SNI *before* creating its TLS object: OpenSSL chooses
the protocol version before its own SNI callback runs, so switching contexts
there could not apply a vhost's version or cipher settings.  This parser
runs only in the jailed worker, on bytes the worker then feeds to OpenSSL.
"""

from __future__ import annotations

import struct

MAX_HELLO = 64 * 1024  # a ClientHello larger than this is refused


class NotTLS(ValueError):
    """The bytes cannot be the start of a TLS ClientHello."""


def _handshake_bytes(data: bytes) -> bytes:
    """Concatenate the payload of the leading handshake records."""
    out = bytearray()
    pos = 0
    while pos + 5 <= len(data):
        ctype, major, _minor, length = struct.unpack_from("!BBBH", data, pos)
        if ctype != 22 or major != 3:
            raise NotTLS("not a TLS handshake record")
        out += data[pos + 5 : pos + 5 + length]
        if pos + 5 + length > len(data):
            break
        pos += 5 + length
    return bytes(out)


def parse_sni(data: bytes) -> tuple[bool, str | None]:
    """(complete, server name) from the bytes received so far.

    `complete` is False while more bytes are needed.  A ClientHello without
    the server_name extension gives (True, None).
    """
    if len(data) > MAX_HELLO:
        raise NotTLS("ClientHello too large")
    hs = _handshake_bytes(data)
    if len(hs) < 4:
        return False, None
    if hs[0] != 1:
        raise NotTLS("first handshake message is not a ClientHello")
    length = int.from_bytes(hs[1:4], "big")
    if len(hs) < 4 + length:
        return False, None
    body = memoryview(hs)[4 : 4 + length]
    try:
        return True, _sni_from_body(body)
    except (IndexError, struct.error, UnicodeDecodeError) as e:
        raise NotTLS(f"malformed ClientHello: {e}") from None


def _sni_from_body(body: memoryview) -> str | None:
    pos = 2 + 32  # client_version, random
    pos += 1 + body[pos]  # session id
    pos += 2 + struct.unpack_from("!H", body, pos)[0]  # cipher suites
    pos += 1 + body[pos]  # compression methods
    if pos == len(body):
        return None  # no extensions at all
    end = pos + 2 + struct.unpack_from("!H", body, pos)[0]
    pos += 2
    if end > len(body):
        raise IndexError("extensions overrun the ClientHello")
    while pos + 4 <= end:
        ext_type, ext_len = struct.unpack_from("!HH", body, pos)
        pos += 4
        if ext_type == 0:  # server_name
            return _host_name(body[pos : pos + ext_len])
        pos += ext_len
    return None


def _host_name(ext: memoryview) -> str | None:
    list_len = struct.unpack_from("!H", ext, 0)[0]
    pos, end = 2, 2 + list_len
    while pos + 3 <= end:
        name_type, name_len = struct.unpack_from("!BH", ext, pos)
        pos += 3
        if name_type == 0:
            name = bytes(ext[pos : pos + name_len])
            if len(name) != name_len:
                raise IndexError("server name overruns the extension")
            return name.decode("ascii").lower().rstrip(".")
        pos += name_len
    return None
