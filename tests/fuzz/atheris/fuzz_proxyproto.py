"""Coverage-guided fuzzing of the PROXY protocol encoder (titus.wire.proxyproto).

The input chooses addresses (IPv4, IPv6, IPv4-mapped), ports and the TLS
facts (any Unicode, lone surrogates included, lengths up to the limits).
v1 and v2 must parse back, with the independent parser of
tests/fuzz/test_proxyproto_fuzz.py, to the same values, or be refused with
EncodeError exactly when the values cannot fit.
"""

from __future__ import annotations

import ipaddress

import atheris
import runner

with atheris.instrument_imports(include=["titus"]):  # before anything imports them
    from tests.fuzz.test_proxyproto_fuzz import _check_v2, encodable, expected_pair, parse_v1
    from titus.wire import proxyproto as pp


def _address(fdp: atheris.FuzzedDataProvider) -> str:
    kind = fdp.ConsumeIntInRange(0, 2)
    if kind == 1:
        return str(ipaddress.IPv6Address(fdp.ConsumeBytes(16).ljust(16, b"\0")))
    v4 = ipaddress.IPv4Address(fdp.ConsumeBytes(4).ljust(4, b"\0"))
    return str(v4) if kind == 0 else f"::ffff:{v4}"


def _text(fdp: atheris.FuzzedDataProvider) -> str | None:
    if fdp.ConsumeBool():
        return None
    if fdp.ConsumeIntInRange(0, 15) == 0:  # near the 65535-byte limits
        return fdp.PickValueInList(["a", "é", "€", "😀"]) * fdp.ConsumeIntInRange(16000, 66000)
    return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 64))


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    src, dst = _address(fdp), _address(fdp)
    sport, dport = fdp.ConsumeIntInRange(0, 0xFFFF), fdp.ConsumeIntInRange(0, 0xFFFF)
    parsed = parse_v1(pp.v1((src, sport), (dst, dport)))
    assert (parsed.src[0], parsed.dst[0]) == expected_pair(src, dst)
    facts = None
    if fdp.ConsumeBool():
        facts = pp.TLSFacts(sni=_text(fdp), version=_text(fdp), cipher=_text(fdp),
                            alpn=_text(fdp), client_cn=_text(fdp))
    address_bytes = 12 if expected_pair(src, dst)[0].version == 4 else 36
    if facts is None or encodable(facts, address_bytes):
        _check_v2(pp.v2((src, sport), (dst, dport), facts), src, dst, sport, dport, facts)
    else:
        try:
            pp.v2((src, sport), (dst, dport), facts)
        except pp.EncodeError:
            return
        raise AssertionError("an unencodable header was written")


def seeds() -> list[bytes]:
    return [bytes(range(64)), b"\x01" * 80, b"\x02" + bytes(200)]


if __name__ == "__main__":
    runner.fuzz(one_input, seeds)
