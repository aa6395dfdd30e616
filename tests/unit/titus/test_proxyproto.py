"""PROXY protocol headers: byte-exact v1/v2 layouts and a round trip through the parser."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from titus.wire import proxyproto as pp


def test_v1_ipv4_and_mapped():
    assert pp.v1(("192.0.2.1", 5000), ("198.51.100.2", 443)) == \
        b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 443\r\n"
    # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d: sent as TCP4.
    assert pp.v1(("::ffff:127.0.0.1", 1), ("::ffff:127.0.0.2", 2)) == \
        b"PROXY TCP4 127.0.0.1 127.0.0.2 1 2\r\n"
    assert pp.v1(("::1", 1), ("::1", 2)) == b"PROXY TCP6 ::1 ::1 1 2\r\n"


def test_v2_layout():
    header = pp.v2(("10.0.0.1", 1234), ("10.0.0.2", 443))
    assert header[:12] == pp.V2_SIGNATURE
    assert header[12] == 0x21 and header[13] == 0x11
    assert struct.unpack("!H", header[14:16])[0] == 12
    assert header[16:20] == bytes([10, 0, 0, 1]) and header[24:26] == struct.pack("!H", 1234)


def test_v2_tlvs_round_trip():
    facts = pp.TLSFacts(sni="a.test", version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256",
                        alpn="h2", client_cn="alice")
    parsed = pp.parse(pp.v2(("2001:db8::1", 40000), ("2001:db8::2", 443), facts) + b"GET")
    assert parsed is not None
    assert parsed.src == ("2001:db8::1", 40000) and parsed.dst == ("2001:db8::2", 443)
    assert parsed.tlvs[pp.PP2_TYPE_AUTHORITY] == b"a.test"
    assert parsed.tlvs[pp.PP2_TYPE_ALPN] == b"h2"
    assert parsed.ssl_tlvs[pp.PP2_SUBTYPE_SSL_VERSION] == b"TLSv1.3"
    assert parsed.ssl_tlvs[pp.PP2_SUBTYPE_SSL_CN] == b"alice"
    client_flags = parsed.tlvs[pp.PP2_TYPE_SSL][0]
    assert client_flags & pp.PP2_CLIENT_CERT_CONN


def test_partial_headers_ask_for_more():
    header = pp.v2(("10.0.0.1", 1), ("10.0.0.2", 2))
    for cut in range(len(header)):
        assert pp.parse(header[:cut]) is None
    line = pp.v1(("10.0.0.1", 1), ("10.0.0.2", 2))
    assert pp.parse(line[:-2]) is None


addresses = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str))


@given(addresses, addresses, st.integers(0, 65535), st.integers(0, 65535),
       st.text(min_size=1, max_size=40).filter(lambda s: "\0" not in s))
def test_v2_round_trip_any_address(src, dst, sport, dport, sni):
    parsed = pp.parse(pp.v2((src, sport), (dst, dport), pp.TLSFacts(sni=sni)))
    assert parsed is not None
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == d.version:
        assert ipaddress.ip_address(parsed.src[0]) == s
        assert ipaddress.ip_address(parsed.dst[0]) == d
    assert (parsed.src[1], parsed.dst[1]) == (sport, dport)
    assert parsed.tlvs[pp.PP2_TYPE_AUTHORITY] == sni.encode()


@given(addresses, addresses, st.integers(0, 65535), st.integers(0, 65535))
def test_v1_round_trip(src, dst, sport, dport):
    parsed = pp.parse(pp.v1((src, sport), (dst, dport)))
    assert parsed is not None and (parsed.src[1], parsed.dst[1]) == (sport, dport)
