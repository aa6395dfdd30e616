"""Backend resolution: literals skip DNS; A and AAAA are independent; timeouts hold."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from titus.supervisor.resolve import ResolveError, resolve_backend

V4 = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("192.0.2.10", 80))
V6 = (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("2001:db8::10", 80, 0, 0))


def fake_resolver(
    *, v4: Any = None, v6: Any = None, v4_delay: float = 0.0, v6_delay: float = 0.0,
    calls: list[int] | None = None, release: threading.Event | None = None,
):  # type: ignore[no-untyped-def]
    """A getaddrinfo that answers per family: a list of infos, an exception, or a hang."""

    def getaddrinfo(host: str, port: int, family: int, *args: Any) -> list[Any]:
        if calls is not None:
            calls.append(family)
        answer, delay = (v4, v4_delay) if family == socket.AF_INET else (v6, v6_delay)
        if delay:
            if release is not None:
                release.wait(delay)
            else:
                time.sleep(delay)
        if isinstance(answer, BaseException):
            raise answer
        return answer or []

    return getaddrinfo


def no_dns(*args: Any) -> list[Any]:
    raise AssertionError("a literal must not be looked up")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", [("127.0.0.1", 8080)]),
        ("::1", [("::1", 8080, 0, 0)]),
        ("[::1]", [("::1", 8080, 0, 0)]),
        ("2001:db8::1", [("2001:db8::1", 8080, 0, 0)]),
    ],
)
def test_ip_literals_never_use_dns(host: str, expected: list[Any]) -> None:
    assert resolve_backend(host, 8080, 1.0, getaddrinfo=no_dns) == expected


def test_localhost_with_the_real_resolver() -> None:
    addresses = resolve_backend("localhost", 443, 5.0)
    assert ("127.0.0.1", 443) in addresses
    assert all(a[1] == 443 for a in addresses)


def test_families_are_asked_separately_and_interleaved_v6_first() -> None:
    calls: list[int] = []
    v6b = (*V6[:4], ("2001:db8::11", 80, 0, 0))
    result = resolve_backend(
        "backend.example", 80, 2.0, getaddrinfo=fake_resolver(v4=[V4], v6=[V6, v6b], calls=calls)
    )
    assert sorted(calls) == sorted([socket.AF_INET, socket.AF_INET6])
    assert result == [V6[4], V4[4], v6b[4]]


def test_hanging_aaaa_does_not_block_ipv4() -> None:
    release = threading.Event()
    try:
        resolver = fake_resolver(v4=[V4], v6=[V6], v6_delay=30.0, release=release)
        start = time.monotonic()
        result = resolve_backend("backend.example", 80, 5.0, getaddrinfo=resolver)
        elapsed = time.monotonic() - start
    finally:
        release.set()
    assert result == [V4[4]]
    assert elapsed < 1.0  # the 50 ms resolution delay, not the 5 s timeout


def test_hanging_a_does_not_block_ipv6() -> None:
    release = threading.Event()
    try:
        resolver = fake_resolver(v4=[V4], v6=[V6], v4_delay=30.0, release=release)
        start = time.monotonic()
        result = resolve_backend("backend.example", 80, 5.0, getaddrinfo=resolver)
    finally:
        release.set()
    assert result == [V6[4]] and time.monotonic() - start < 1.0


def test_failing_aaaa_leaves_ipv4() -> None:
    resolver = fake_resolver(v4=[V4], v6=socket.gaierror(socket.EAI_NONAME, "no AAAA"))
    assert resolve_backend("backend.example", 80, 2.0, getaddrinfo=resolver) == [V4[4]]


def test_slow_second_family_within_grace_is_kept() -> None:
    resolver = fake_resolver(v4=[V4], v6=[V6], v6_delay=0.02)
    result = resolve_backend(
        "backend.example", 80, 2.0, getaddrinfo=resolver, resolution_delay=0.5
    )
    assert result == [V6[4], V4[4]]


def test_both_hanging_times_out_within_the_timeout() -> None:
    release = threading.Event()
    try:
        resolver = fake_resolver(v4=[V4], v6=[V6], v4_delay=30.0, v6_delay=30.0, release=release)
        start = time.monotonic()
        with pytest.raises(ResolveError) as info:
            resolve_backend("backend.example", 80, 0.3, getaddrinfo=resolver)
        elapsed = time.monotonic() - start
    finally:
        release.set()
    assert 0.25 <= elapsed < 1.5
    assert str(info.value) == (
        "cannot resolve backend backend.example: IPv6: timed out; IPv4: timed out"
    )


def test_neither_family_resolves() -> None:
    resolver = fake_resolver(
        v4=socket.gaierror(socket.EAI_NONAME, "Name or service not known"), v6=[]
    )
    with pytest.raises(ResolveError) as info:
        resolve_backend("nothing.example", 80, 1.0, getaddrinfo=resolver)
    assert str(info.value) == (
        "cannot resolve backend nothing.example: IPv6: no address; "
        "IPv4: [Errno -2] Name or service not known"
    )
    assert isinstance(info.value, OSError)


def test_argument_checks() -> None:
    with pytest.raises(ValueError):
        resolve_backend("localhost", 70000, 1.0)
    with pytest.raises(ValueError):
        resolve_backend("localhost", 80, 0)
    with pytest.raises(ResolveError):
        resolve_backend("", 80, 1.0)
