"""PROXY protocol encoder: every header parses back to the same values, or is refused.

The parser here is written from the specification
(https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt, sections 2.1
and 2.2), independently of titus.wire.proxyproto.parse, and it is strict: exact
lengths, every TLV consumed, nothing after the header.  A value that cannot
go into a header (a TLV over 65535 bytes, a v2 body over 65535 bytes, a port
outside 0..65535, text that is not UTF-8) must raise proxyproto.EncodeError,
never be truncated and never escape as another exception.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.fuzz.budget import fuzz_settings
from titus.wire import proxyproto as pp

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SIGNATURE = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
V1_MAX = 107  # spec 2.1: the longest v1 line, CRLF included
U16 = 0xFFFF


class Malformed(AssertionError):
    """The encoder wrote something the specification does not allow."""


@dataclass
class Header:
    src: tuple[IPAddress, int]
    dst: tuple[IPAddress, int]
    tlvs: dict[int, bytes] = field(default_factory=dict)
    client: int | None = None  # PP2_TYPE_SSL's client bits
    verify: int | None = None
    ssl: dict[int, bytes] = field(default_factory=dict)


def _tlvs(data: bytes) -> dict[int, bytes]:
    """Type-length-value triples that must exactly fill `data`, each type at most once."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        if pos + 3 > len(data):
            raise Malformed(f"truncated TLV header at {pos}")
        kind, length = struct.unpack_from("!BH", data, pos)
        if pos + 3 + length > len(data):
            raise Malformed(f"TLV {kind:#x} of {length} bytes overruns its container")
        if kind in out:
            raise Malformed(f"TLV {kind:#x} twice")
        out[kind] = data[pos + 3 : pos + 3 + length]
        pos += 3 + length
    return out


def parse_v1(data: bytes) -> Header:
    if len(data) > V1_MAX or not data.endswith(b"\r\n") or data.count(b"\r\n") != 1:
        raise Malformed(f"not one v1 line of at most {V1_MAX} bytes: {data!r}")
    words = data[:-2].decode("ascii").split(" ")
    if len(words) != 6 or words[0] != "PROXY" or words[1] not in ("TCP4", "TCP6"):
        raise Malformed(f"bad v1 line {data!r}")
    kind = ipaddress.IPv4Address if words[1] == "TCP4" else ipaddress.IPv6Address
    ports = []
    for word in words[4:]:
        if not word.isdigit() or (len(word) > 1 and word[0] == "0") or int(word) > U16:
            raise Malformed(f"bad v1 port {word!r}")
        ports.append(int(word))
    return Header((kind(words[2]), ports[0]), (kind(words[3]), ports[1]))


def parse_v2(data: bytes) -> Header:
    if len(data) < 16 or data[:12] != SIGNATURE:
        raise Malformed("no v2 signature")
    ver_cmd, family, length = struct.unpack_from("!BBH", data, 12)
    if ver_cmd != 0x21:
        raise Malformed(f"version/command {ver_cmd:#x}, wanted v2 PROXY")
    if len(data) != 16 + length:
        raise Malformed(f"length field {length} but {len(data) - 16} bytes follow")
    body = data[16:]
    if family == 0x11:
        size, kind = 4, ipaddress.IPv4Address
    elif family == 0x21:
        size, kind = 16, ipaddress.IPv6Address
    else:
        raise Malformed(f"family {family:#x}, wanted TCP over IPv4 or IPv6")
    if len(body) < 2 * size + 4:
        raise Malformed("address block truncated")
    sport, dport = struct.unpack_from("!HH", body, 2 * size)
    header = Header((kind(body[:size]), sport), (kind(body[size : 2 * size]), dport),
                    _tlvs(body[2 * size + 4 :]))
    ssl = header.tlvs.get(pp.PP2_TYPE_SSL)
    if ssl is not None:
        if len(ssl) < 5:
            raise Malformed("PP2_TYPE_SSL shorter than client + verify")
        header.client, header.verify = struct.unpack_from("!BI", ssl)
        header.ssl = _tlvs(ssl[5:])
    return header


# --- what the header should say ----------------------------------------------------------------


def unmapped(host: str) -> IPAddress:
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def expected_pair(src: str, dst: str) -> tuple[IPAddress, IPAddress]:
    """Both as IPv4 when both are IPv4 (mapped or not), else both as IPv6."""
    s, d = unmapped(src), unmapped(dst)
    if s.version == d.version:
        return s, d
    six = [a if a.version == 6 else ipaddress.IPv6Address(f"::ffff:{a}") for a in (s, d)]
    return six[0], six[1]


def utf8(text: str | None) -> bytes | None:
    """The UTF-8 of `text`, or None if it has none (a lone surrogate)."""
    if text is None:
        return None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None


def encodable(facts: pp.TLSFacts, address_bytes: int) -> bool:
    """Whether the header fits the format: every TLV and the body at most 65535 bytes."""
    texts = [facts.alpn or None, facts.sni or None, facts.version or None,
             facts.cipher or None, facts.client_cn]
    raw = [utf8(t) for t in texts]
    if any(t is not None and r is None for t, r in zip(texts, raw, strict=True)):
        return False
    alpn, sni, version, cipher, cn = raw
    sub = sum(3 + len(v) for v in (version, cipher, cn) if v is not None)
    ssl_value = 5 + sub
    outer = [v for v in (alpn, sni) if v is not None]
    if any(len(v) > U16 for v in outer + [v for v in (version, cipher, cn) if v is not None]):
        return False
    if ssl_value > U16:
        return False
    return address_bytes + sum(3 + len(v) for v in outer) + 3 + ssl_value <= U16


# --- strategies --------------------------------------------------------------------------------

SCOPES = st.sampled_from(["", "", "", "%eth0", "%1", "%lo"])
V4 = st.ip_addresses(v=4).map(str)
V6 = st.builds(lambda a, scope: f"{a}{scope}" if a.is_link_local else str(a),
               st.ip_addresses(v=6), SCOPES)
MAPPED = st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}")
ADDRESS = st.one_of(V4, V6, MAPPED)
PORT = st.integers(0, U16)
SURROGATES = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF,
                                   exclude_categories=()), min_size=1, max_size=3)
ANY_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=40),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=5), SURROGATES, st.text(max_size=5)),
)


@st.composite
def near_limit(draw: st.DrawFn) -> str:
    """A string whose UTF-8 length is close to a PROXY v2 limit (1-4 byte characters)."""
    char = draw(st.sampled_from(["a", "\x00", "é", "€", "😀"]))
    target = draw(st.sampled_from([U16 - 200, U16 - 60, U16 - 40, U16 - 23, U16 - 8, U16 - 5,
                                   U16 - 3, U16, U16 + 1, U16 + 2]))
    target += draw(st.integers(-4, 4))
    return char * max(0, target // len(char.encode()))


OPTIONAL_TEXT = st.one_of(st.none(), ANY_TEXT)
FACTS = st.builds(pp.TLSFacts, sni=OPTIONAL_TEXT, version=OPTIONAL_TEXT, cipher=OPTIONAL_TEXT,
                  alpn=OPTIONAL_TEXT, client_cn=OPTIONAL_TEXT)


@st.composite
def big_facts(draw: st.DrawFn) -> pp.TLSFacts:
    """One or two values near the limits, the rest small or absent."""
    values = {name: draw(st.one_of(st.none(), st.text(max_size=10)))
              for name in ("sni", "version", "cipher", "alpn", "client_cn")}
    for name in draw(st.lists(st.sampled_from(sorted(values)), min_size=1, max_size=2,
                              unique=True)):
        values[name] = draw(near_limit())
    return pp.TLSFacts(**values)


# --- properties --------------------------------------------------------------------------------


@fuzz_settings(600)
@given(ADDRESS, ADDRESS, PORT, PORT)
def test_v1_parses_back_to_the_same_values(src: str, dst: str, sport: int, dport: int) -> None:
    header = parse_v1(pp.v1((src, sport), (dst, dport)))
    assert (header.src[0], header.dst[0]) == expected_pair(src, dst)
    assert (header.src[1], header.dst[1]) == (sport, dport)


def _check_v2(data: bytes, src: str, dst: str, sport: int, dport: int,
              facts: pp.TLSFacts | None) -> None:
    header = parse_v2(data)
    assert (header.src[0], header.dst[0]) == expected_pair(src, dst)
    assert (header.src[1], header.dst[1]) == (sport, dport)
    if facts is None:
        assert header.tlvs == {}
        return
    want_outer = {}
    if facts.alpn:
        want_outer[pp.PP2_TYPE_ALPN] = facts.alpn.encode()
    if facts.sni:
        want_outer[pp.PP2_TYPE_AUTHORITY] = facts.sni.encode()
    assert {k: v for k, v in header.tlvs.items() if k != pp.PP2_TYPE_SSL} == want_outer
    want_ssl = {}
    if facts.version:
        want_ssl[pp.PP2_SUBTYPE_SSL_VERSION] = facts.version.encode()
    if facts.cipher:
        want_ssl[pp.PP2_SUBTYPE_SSL_CIPHER] = facts.cipher.encode()
    if facts.client_cn is not None:
        want_ssl[pp.PP2_SUBTYPE_SSL_CN] = facts.client_cn.encode()
    assert header.ssl == want_ssl
    certified = pp.PP2_CLIENT_CERT_CONN | pp.PP2_CLIENT_CERT_SESS
    assert header.client == pp.PP2_CLIENT_SSL | (certified if facts.client_cn is not None else 0)
    assert header.verify == 0


def _encode_v2(src: str, dst: str, sport: int, dport: int,
               facts: pp.TLSFacts | None) -> None:
    s, _ = expected_pair(src, dst)
    address_bytes = 12 if s.version == 4 else 36
    if facts is None or encodable(facts, address_bytes):
        event("written")
        _check_v2(pp.v2((src, sport), (dst, dport), facts), src, dst, sport, dport, facts)
    else:
        event("refused")
        with pytest.raises(pp.EncodeError):
            pp.v2((src, sport), (dst, dport), facts)


@fuzz_settings(600)
@given(ADDRESS, ADDRESS, PORT, PORT, st.one_of(st.none(), FACTS))
def test_v2_parses_back_or_is_refused(src: str, dst: str, sport: int, dport: int,
                                      facts: pp.TLSFacts | None) -> None:
    _encode_v2(src, dst, sport, dport, facts)


@fuzz_settings(150)
@given(ADDRESS, ADDRESS, PORT, PORT, big_facts())
def test_v2_at_the_length_limits(src: str, dst: str, sport: int, dport: int,
                                 facts: pp.TLSFacts) -> None:
    _encode_v2(src, dst, sport, dport, facts)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_the_exact_limit(address: str) -> None:
    """A body of exactly 65535 bytes is written; one byte more is refused, not truncated."""
    address_bytes = 12 if ":" not in address else 36
    fixed = address_bytes + 3 + 3 + 5  # addresses, AUTHORITY and SSL headers, client + verify
    for extra, ok in ((0, True), (1, False)):
        facts = pp.TLSFacts(sni="s" * (U16 - fixed + extra))
        if ok:
            data = pp.v2((address, 1), (address, 2), facts)
            assert len(data) == 16 + U16
            assert parse_v2(data).tlvs[pp.PP2_TYPE_AUTHORITY] == facts.sni.encode()
        else:
            with pytest.raises(pp.EncodeError, match="65535"):
                pp.v2((address, 1), (address, 2), facts)


@fuzz_settings(300)
@given(ADDRESS, ADDRESS, st.one_of(st.integers(max_value=-1), st.integers(min_value=U16 + 1)),
       PORT, st.booleans())
def test_ports_out_of_range_are_refused(src: str, dst: str, bad: int, good: int,
                                        first: bool) -> None:
    sport, dport = (bad, good) if first else (good, bad)
    for encode in (pp.v1, pp.v2):
        with pytest.raises(pp.EncodeError, match="port"):
            encode((src, sport), (dst, dport))


@fuzz_settings(300)
@given(st.text(max_size=50), ADDRESS)
def test_non_addresses_are_refused_with_a_value_error(text: str, other: str) -> None:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        for encode in (pp.v1, pp.v2):
            with pytest.raises(ValueError):
                encode((text, 1), (other, 2))
            with pytest.raises(ValueError):
                encode((other, 1), (text, 2))
