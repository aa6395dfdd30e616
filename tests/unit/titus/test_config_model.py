"""The model on its own: matching rules, immutability, error formatting."""

from __future__ import annotations

import dataclasses
import ipaddress
import ssl
from pathlib import Path

import pytest

from tests.unit.titus.test_config_support import chosen
from titus.config.model import (
    DEFAULT_CIPHERS,
    Config,
    ConfigError,
    Listener,
    Notice,
    Source,
    TLSSettings,
    VHost,
    normalize_server_name,
    sni_matches,
)


def vhost(name: str, **kw: object) -> VHost:
    return VHost(name=name, cert=Path("/c"), key=Path("/k"), backend_host=None,
                 backend_port=1, **kw)  # type: ignore[arg-type]


def test_tls_defaults() -> None:
    tls = TLSSettings()
    assert (tls.min_version, tls.max_version) == (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
    assert tls.ciphers == DEFAULT_CIPHERS
    assert all(suite.startswith("ECDHE-") for suite in tls.ciphers.split(":"))
    assert tls.curves == ("X25519", "prime256v1", "secp384r1")
    assert (tls.ciphersuites, tls.dhgroup, tls.honor_client_cipher_order, tls.alpn) == (
        None, None, False, ()
    )


def test_default_ciphers_are_all_known_to_openssl() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers(DEFAULT_CIPHERS)
    names = {c["name"] for c in context.get_ciphers()}
    assert set(DEFAULT_CIPHERS.split(":")) <= names


def test_tls_settings_refuse_old_versions() -> None:
    with pytest.raises(ValueError, match=r"below 1\.2"):
        TLSSettings(min_version=ssl.TLSVersion.TLSv1_1)
    with pytest.raises(ValueError, match="below min_version"):
        TLSSettings(min_version=ssl.TLSVersion.TLSv1_3, max_version=ssl.TLSVersion.TLSv1_2)


def test_everything_is_frozen() -> None:
    config = Config(listeners=(), vhosts=(vhost("a"),))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_children = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.vhosts[0].tls.ciphers = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("www.example.com", "www.example.com", True),
        ("www.example.com", "example.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", ".example.com", False),
        ("", "", True),
        ("", "a.example", False),
    ],
)
def test_sni_matches(pattern: str, name: str, expected: bool) -> None:
    assert sni_matches(pattern, name) is expected


def test_client_names_are_normalised() -> None:
    assert normalize_server_name("WWW.Example.COM.") == "www.example.com"
    assert normalize_server_name(None) == normalize_server_name("") == ""


def test_matches_local_address_and_port() -> None:
    v4 = vhost("v4", local_address=ipaddress.ip_address("192.0.2.5"), local_port=443)
    assert v4.matches_local("192.0.2.5", 443)
    assert v4.matches_local("::ffff:192.0.2.5", 443)  # as a dual-stack socket reports it
    assert not v4.matches_local("192.0.2.6", 443)
    assert not v4.matches_local("192.0.2.5", 8443)
    v6 = vhost("v6", local_address=ipaddress.ip_address("2001:db8::1"))
    assert v6.matches_local(ipaddress.ip_address("2001:db8::1"), 1)
    assert not v6.matches_local("2001:db8::2", 1)
    assert vhost("any").matches_local("203.0.113.9", 9)


def test_the_chooser_takes_the_first_match_in_order() -> None:
    a = vhost("a", sni_names=("a.example",))
    wild = vhost("wild", sni_names=("*.example",))
    local = vhost("local", local_address=ipaddress.ip_address("10.0.0.1"))
    nosni = vhost("nosni", sni_names=("",))
    config = Config(listeners=(), vhosts=(a, wild, local, nosni))
    assert chosen(config, "10.0.0.1", 443, "A.Example") is a
    assert chosen(config, "10.0.0.1", 443, "b.example") is wild
    assert chosen(config, "10.0.0.1", 443, "other.org") is local
    assert chosen(config, "10.0.0.2", 443, "other.org") is None
    assert chosen(config, "10.0.0.2", 443, None) is nosni


def test_listener_sockaddr() -> None:
    v6 = Listener(ipaddress.ip_address("::"), 443, dual_stack=True)
    v4 = Listener(ipaddress.ip_address("127.0.0.1"), 0)
    assert (v6.sockaddr, str(v6)) == (("::", 443, 0, 0), "[::]:443")
    assert (v4.sockaddr, str(v4)) == (("127.0.0.1", 0), "127.0.0.1:0")
    import socket

    assert (v6.family, v4.family) == (socket.AF_INET6, socket.AF_INET)


def test_config_error_is_one_line() -> None:
    error = ConfigError(Source("a\nb.conf", 3), "bad\nthing\u2028here\x85")
    assert str(error) == "a\\nb.conf:3: bad\\nthing\\u2028here\\x85"
    assert isinstance(error, ValueError) and error.source.line == 3
    assert str(Notice(Source("f", 1), "x\ny")) == "f:1: x\\ny"
