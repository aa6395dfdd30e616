"""Every titus(8) option and every extension: what it does, or why it is refused."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.titus.test_config_support import basic_conf, write
from titus.config.load import Config, ConfigError, load_config
from titus.config.model import DEFAULT_CIPHERS, DEFAULT_DHE_CIPHERS, TLSSettings
from titus.config.options import OPTIONS

EXTRA_LINE = 6  # basic_conf writes five lines; extra lines start here

V12, V13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


def tls(config: Config) -> TLSSettings:
    return config.vhosts[0].tls


def versions(config: Config) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    return tls(config).min_version, tls(config).max_version


def notices(config: Config) -> list[str]:
    return [n.message for n in config.notices]


# (extra lines, check on the loaded config).  Lines are global unless they follow "vhost".
WORKS: dict[str, tuple[str, Callable[[Config], object]]] = {
    "daemon yes": ("daemon yes\n", lambda c: c.daemon is True),
    "daemon on": ("daemon ON\n", lambda c: c.daemon is True),
    "daemon 1": ("daemon 1\n", lambda c: c.daemon is True),
    "daemon no": ("daemon no\n", lambda c: c.daemon is False),
    "daemon false": ("daemon false\n", lambda c: c.daemon is False),
    "pid-file": ("pid-file titus.pid\n", lambda c: c.pid_file and c.pid_file.name == "titus.pid"),
    "port": ("port 8443\n", lambda c: [x.port for x in c.listeners] == [8443]),
    "port 0": ("port 0\n", lambda c: c.listeners[0].port == 0),
    "port service": ("port https\n", lambda c: c.listeners[0].port == 443),
    "transparent no": ("transparent off\n", lambda c: c.transparent == "no"),
    "transparent backend-only": (
        "transparent Backend-Only\n", lambda c: c.transparent == "backend-only"
    ),
    "backend ipv6": ("backend [::1]\n", lambda c: c.vhosts[0].backend_host == "::1"),
    "backend name": (
        "backend Backend.Example.\n", lambda c: c.vhosts[0].backend_host == "backend.example"
    ),
    "backend idna": (
        "backend bücher.example\n", lambda c: c.vhosts[0].backend_host == "xn--bcher-kva.example"
    ),
    "backend-port": ("backend-port 9000\n", lambda c: c.vhosts[0].backend_port == 9000),
    "min-spare-children": ("min-spare-children 0\n", lambda c: c.min_spare_children == 0),
    "max-children": ("max-children 7\n", lambda c: c.max_children == 7),
    "max-children caps default spare": (
        "max-children 2\n", lambda c: (c.min_spare_children, c.max_children) == (2, 2)
    ),
    "max-handshake-time": ("max-handshake-time 2.5\n", lambda c: c.max_handshake_time == 2.5),
    "network-user": (
        "network-user nosuchuser\n",
        lambda c: "network-user nosuchuser: superseded and ignored" in notices(c)[0],
    ),
    "network-group": (
        "network-group nogroup\n", lambda c: notices(c)[0].startswith("network-group nogroup:")
    ),
    "keyserver-user": (
        "keyserver-user titus-keys\n", lambda c: "key holder" in notices(c)[0]
    ),
    "keyserver-group": (
        "keyserver-group x\n", lambda c: notices(c)[0].startswith("keyserver-group x: superseded")
    ),
    "chroot": (
        "chroot /nonexistent/empty\n", lambda c: "empty read-only root" in notices(c)[0]
    ),
    "ciphers": (
        "ciphers ECDHE-RSA-AES256-GCM-SHA384:AES128-SHA\n",
        lambda c: tls(c).ciphers.startswith("ECDHE-RSA-AES256-GCM-SHA384:AES128-SHA:!aNULL")
        and "!kRSA" in tls(c).ciphers
        and "!kDHE" in tls(c).ciphers
        and "1 suite(s) removed" in notices(c)[0]
        and "AES128-SHA" in notices(c)[0],
    ),
    "ciphers default": ("", lambda c: tls(c).ciphers == DEFAULT_CIPHERS),
    "honor-client-cipher-order yes": (
        "honor-client-cipher-order yes\n", lambda c: tls(c).honor_client_cipher_order is True
    ),
    "honor-client-cipher-order default": (
        "", lambda c: tls(c).honor_client_cipher_order is False
    ),
    "dhgroup 14": (
        "dhgroup 14\n",
        lambda c: tls(c).dhgroup.bits == 2048
        and tls(c).ciphers == DEFAULT_CIPHERS + ":" + DEFAULT_DHE_CIPHERS,
    ),
    "dhgroup 16": ("dhgroup 16\n", lambda c: tls(c).dhgroup.name == "rfc3526-16"),
    "dhgroup keeps DHE in ciphers": (
        "dhgroup 15\nciphers DHE-RSA-AES128-GCM-SHA256\n",
        lambda c: "!kDHE" not in tls(c).ciphers and not c.notices,
    ),
    "ecdhcurve": ("ecdhcurve secp521r1\n", lambda c: tls(c).curves == ("secp521r1",)),
    "ecdhcurve alias": ("ecdhcurve secp256r1\n", lambda c: tls(c).curves == ("prime256v1",)),
    "ecdhcurve list": (
        "ecdhcurve X25519:P-384\n", lambda c: tls(c).curves == ("X25519", "secp384r1")
    ),
    "compression no": ("compression no\n", lambda c: tls(c) == TLSSettings()),
    "sslv3 no": ("sslv3 no\n", lambda c: tls(c) == TLSSettings()),
    "tlsv1 no": ("tlsv1 no\n", lambda c: tls(c) == TLSSettings()),
    "tlsv1.1 no": ("tlsv1.1 no\n", lambda c: tls(c) == TLSSettings()),
    "tlsv1.2 yes": ("tlsv1.2 yes\n", lambda c: versions(c) == (V12, V13)),
    "tlsv1.2 no": ("tlsv1.2 no\n", lambda c: versions(c) == (V13, V13)),
    "local-address": (
        "vhost\n\tlocal-address 192.0.2.5\n",
        lambda c: c.vhosts[0].local_address == ipaddress.ip_address("192.0.2.5"),
    ),
    "local-address mapped": (
        "vhost\n\tlocal-address ::ffff:192.0.2.5\n",
        lambda c: c.vhosts[0].local_address == ipaddress.ip_address("192.0.2.5"),
    ),
    "local-address wildcard": (
        "vhost\n\tlocal-address ::\n", lambda c: c.vhosts[0].local_address is None
    ),
    "local-port": ("vhost\n\tlocal-port 443\n", lambda c: c.vhosts[0].local_port == 443),
    "sni-name": (
        "vhost\n\tsni-name WWW.Example.COM.\n",
        lambda c: c.vhosts[0].sni_names == ("www.example.com",),
    ),
    "sni-name wildcard": (
        "vhost\n\tsni-name *.example.com\n", lambda c: c.vhosts[0].sni_names == ("*.example.com",)
    ),
    "sni-name repeated": (
        "vhost\n\tsni-name a.example\n\tsni-name b.example\n",
        lambda c: c.vhosts[0].sni_names == ("a.example", "b.example"),
    ),
    # extensions
    "vhost NAME": ("vhost api\n", lambda c: c.vhosts[0].name == "api"),
    "name": ("vhost\n\tname api\n", lambda c: c.vhosts[0].name == "api"),
    "listen": (
        "listen 127.0.0.1\nlisten [::1]:8443\nlisten *:9443\n",
        lambda c: [(str(x.address), x.port, x.dual_stack) for x in c.listeners]
        == [("127.0.0.1", 443, False), ("::1", 8443, False), ("::", 9443, True)],
    ),
    "listen both wildcards": (
        "listen 0.0.0.0\nlisten ::\n",
        lambda c: [x.dual_stack for x in c.listeners] == [False, False],
    ),
    "tlsv1.3 no": ("tlsv1.3 no\n", lambda c: versions(c) == (V12, V12)),
    "min-tls-version": ("min-tls-version TLSv1.3\n", lambda c: tls(c).min_version == V13),
    "max-tls-version": ("max-tls-version 1.2\n", lambda c: tls(c).max_version == V12),
    "ciphersuites": (
        "ciphersuites TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256\n",
        lambda c: tls(c).ciphersuites == "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
    ),
    "alpn": ("alpn http/1.1\n", lambda c: tls(c).alpn == ("http/1.1",)),
    "alpn h2": ("alpn h2, http/1.1\nbackend-h2 yes\n",
                lambda c: tls(c).alpn == ("h2", "http/1.1") and c.vhosts[0].backend_h2),
    "backend-h2 per vhost": (
        "alpn h2\nvhost\n\tbackend-h2 yes\n\tsni-name a.example\nvhost\n\talpn http/1.1\n",
        lambda c: [(v.backend_h2, v.tls.alpn) for v in c.vhosts] == [(True, ("h2",)),
                                                                    (False, ("http/1.1",))],
    ),
    "proxy-protocol": ("proxy-protocol V2\n", lambda c: c.vhosts[0].proxy_protocol == "v2"),
    "proxy-protocol per vhost": (
        "proxy-protocol v1\nvhost\n\tproxy-protocol no\nvhost\n",
        lambda c: [v.proxy_protocol for v in c.vhosts] == [None, "v1"],
    ),
    "backend-connect-timeout": (
        "backend-connect-timeout 3\n", lambda c: c.backend_connect_timeout == 3.0
    ),
    "dns-timeout": ("dns-timeout 0.5\n", lambda c: c.dns_timeout == 0.5),
    "log-format": ("log-format JSON\n", lambda c: c.log_format == "json"),
    "metrics-listen": (
        "metrics-listen [::1]:9100\n",
        lambda c: (str(c.metrics_listen.address), c.metrics_listen.port) == ("::1", 9100),
    ),
    "keyholder-budget": ("keyholder-budget 2\n", lambda c: c.keyholder_budget == 2),
    "keyholder-timeout": ("keyholder-timeout 0.25\n", lambda c: c.keyholder_timeout == 0.25),
}


@pytest.mark.parametrize("name", list(WORKS))
def test_option_works(tmp_path: Path, name: str) -> None:
    extra, check = WORKS[name]
    config = load_config(basic_conf(tmp_path, extra))
    assert check(config), config


# (extra lines, the message after "FILE:LINE: ", the line it must name)
REFUSED: dict[str, tuple[str, str, int]] = {
    "sslv3 yes": (
        "sslv3 yes\n",
        "sslv3 yes: SSLv3 is broken (POODLE) and is not supported; remove the line",
        EXTRA_LINE,
    ),
    "tlsv1 yes": (
        "tlsv1 yes\n",
        "tlsv1 yes: TLS 1.0 is below the TLS 1.2 minimum and is not supported; remove the line",
        EXTRA_LINE,
    ),
    "tlsv1.1 yes": (
        "tlsv1.1 on\n",
        "tlsv1.1 on: TLS 1.1 is below the TLS 1.2 minimum and is not supported; remove the line",
        EXTRA_LINE,
    ),
    "compression yes": (
        "vhost\n\tcompression yes\n",
        "compression yes: TLS compression leaks secrets (CRIME) and is refused; remove the line",
        EXTRA_LINE + 1,
    ),
    "sslv3 garbage": ("sslv3 maybe\n", "sslv3 maybe: expected yes or no", EXTRA_LINE),
    "daemon garbage": ("daemon sure\n", "daemon sure: expected yes or no", EXTRA_LINE),
    "port range": ("port 65536\n", "port 65536: must be between 0 and 65535", EXTRA_LINE),
    "port negative": ("port -1\n", "port -1: expected a port number (1-65535)", EXTRA_LINE),
    "port trailing junk": ("port 44x\n", "port 44x: expected a port number (1-65535)",
                           EXTRA_LINE),
    "port unknown service": ("port nosuchservice\n", "port nosuchservice: not a port number or "
                             "a known TCP service name", EXTRA_LINE),
    "backend-port zero": (
        "backend-port 0\n", "backend-port 0: must be between 1 and 65535", EXTRA_LINE
    ),
    "backend bad": ("backend -bad-.example\n", "backend -bad-.example: not a valid host name",
                    EXTRA_LINE),
    "backend bad ipv6": ("backend [::1\n", "backend [::1: not a valid IP address", EXTRA_LINE),
    "max-children zero": (
        "max-children 0\n", "max-children 0: must be between 1 and 100000", EXTRA_LINE
    ),
    "min-spare negative": (
        "min-spare-children -3\n", "min-spare-children -3: expected a whole number", EXTRA_LINE
    ),
    "min-spare above max": (
        "min-spare-children 5\nmax-children 4\n",
        "min-spare-children 5 is more than max-children 4",
        EXTRA_LINE,
    ),
    "max-handshake-time zero": (
        "max-handshake-time 0\n",
        "max-handshake-time 0: must be more than 0 and at most 3600 seconds",
        EXTRA_LINE,
    ),
    "transparent garbage": (
        "transparent sometimes\n", "transparent sometimes: expected yes, no or backend-only",
        EXTRA_LINE,
    ),
    "transparent yes with backend": (
        "transparent yes\n",
        "backend and backend-port cannot be set with `transparent yes`: the backend is the "
        "client's original destination",
        4,
    ),
    "network-user with space": (
        "network-user a b\n", "network-user a b: expected a name without spaces", EXTRA_LINE
    ),
    "ecdhcurve unknown": (
        "ecdhcurve brainpoolP256r1\n",
        "ecdhcurve brainpoolP256r1: unsupported curve brainpoolP256r1; use one of X25519, X448, "
        "prime256v1, secp384r1, secp521r1",
        EXTRA_LINE,
    ),
    "ecdhcurve twice": (
        "ecdhcurve X25519:x25519\n", "ecdhcurve X25519:x25519: a curve is listed twice",
        EXTRA_LINE,
    ),
    "dhgroup unknown": (
        "dhgroup 5\n",
        "dhgroup 5: unknown DH group; use 14, 15, 16 or the path of a DH parameter file",
        EXTRA_LINE,
    ),
    "ciphers RSA kx only": (
        "ciphers AES128-SHA:AES256-GCM-SHA384\n",
        "ciphers AES128-SHA:AES256-GCM-SHA384: leaves no usable TLS 1.2 suite: RSA key exchange,"
        " static DH, null and broken ciphers are always removed, DHE too unless a dhgroup is "
        "set; use ECDHE suites",
        EXTRA_LINE,
    ),
    "ciphers DHE without dhgroup": (
        "vhost\n\tciphers DHE-RSA-AES128-GCM-SHA256\n",
        "ciphers DHE-RSA-AES128-GCM-SHA256: leaves no usable TLS 1.2 suite",
        EXTRA_LINE + 1,
    ),
    "ciphers nonsense": (
        "ciphers NONSENSE\n", "ciphers NONSENSE: selects no cipher suite this OpenSSL knows",
        EXTRA_LINE,
    ),
    "no TLS version left": (
        "tlsv1.2 no\ntlsv1.3 no\n",
        "no TLS version left: the minimum (TLSv1_3) is above the maximum (TLSv1_2)",
        EXTRA_LINE + 1,
    ),
    "min-tls-version old": (
        "min-tls-version 1.1\n",
        "min-tls-version 1.1: versions below TLS 1.2 are insecure and not supported",
        EXTRA_LINE,
    ),
    "ciphersuites unknown": (
        "ciphersuites TLS_FOO\n", "ciphersuites TLS_FOO: unknown TLS 1.3 suite TLS_FOO", EXTRA_LINE
    ),
    "alpn empty item": ("alpn h2,,x\n", "alpn h2,,x: empty item in the list", EXTRA_LINE),
    "alpn h2 without backend-h2": (
        "alpn h2,http/1.1\n",
        "alpn offers h2, but the backend is not declared to speak HTTP/2: clients that choose "
        "h2 would get empty replies from an HTTP/1.1 backend; leave h2 out, or set "
        "`backend-h2 yes` if the backend speaks cleartext HTTP/2", EXTRA_LINE,
    ),
    "alpn h2 inherited by a vhost whose backend is not h2": (
        "alpn h2\nbackend-h2 yes\nvhost a\n\tbackend-h2 no\n",
        "vhost a: alpn offers h2, but the backend is not declared", EXTRA_LINE,
    ),
    "proxy-protocol yes": (
        "proxy-protocol yes\n", "proxy-protocol yes: expected v1, v2 or no", EXTRA_LINE
    ),
    "local-address global": (
        "local-address 192.0.2.5\n", "local-address is only valid inside a vhost block",
        EXTRA_LINE,
    ),
    "local-address hostname": (
        "vhost\n\tlocal-address www.example.com\n",
        "local-address www.example.com: expected an IP address (host names are not accepted "
        "here)",
        EXTRA_LINE + 1,
    ),
    "local-port global": ("local-port 443\n", "local-port is only valid inside a vhost block",
                          EXTRA_LINE),
    "sni-name global": ("sni-name a.example\n", "sni-name is only valid inside a vhost block",
                        EXTRA_LINE),
    "sni-name ip": (
        "vhost\n\tsni-name 192.0.2.1\n",
        "sni-name 192.0.2.1: clients never send an IP address as SNI; use local-address instead",
        EXTRA_LINE + 1,
    ),
    "sni-name bad wildcard": (
        "vhost\n\tsni-name www.*.example\n",
        'sni-name www.*.example: a wildcard must be a whole first label, as in "*.example.com"',
        EXTRA_LINE + 1,
    ),
    "port in vhost": (
        "vhost\n\tport 443\n",
        "port is a global option and cannot be set inside a vhost block",
        EXTRA_LINE + 1,
    ),
    "config in vhost": (
        "vhost\n\tconfig x.conf\n",
        "config is a global option and cannot be set inside a vhost block",
        EXTRA_LINE + 1,
    ),
    "unknown option": ("prot 443\n", "unknown option 'prot'; did you mean 'port'?", EXTRA_LINE),
    "unknown option no suggestion": ("zzz 1\n", "unknown option 'zzz'", EXTRA_LINE),
    "unknown in vhost": (
        "vhost\n\tsni-nmae a.example\n", "unknown option 'sni-nmae'; did you mean 'sni-name'?",
        EXTRA_LINE + 1,
    ),
    "jail options are toml-only": (
        "uid-first 5\n", "uid-first can only be set in titus.toml (section [jail])", EXTRA_LINE
    ),
    "listen bad": ("listen 1.2.3\n", "listen 1.2.3: expected an IP address (host names are not "
                   "accepted here)", EXTRA_LINE),
    "listen twice": ("listen ::1\nlisten [::1]:443\n", "listen ::1 port 443: listed twice",
                     EXTRA_LINE + 1),
    "metrics-listen without port": (
        "metrics-listen 127.0.0.1\n", "metrics-listen 127.0.0.1: expected ADDRESS:PORT", EXTRA_LINE
    ),
    "log-format unknown": (
        "log-format xml\n", "log-format xml: expected json, text or auto", EXTRA_LINE
    ),
    "keyholder-budget zero": (
        "keyholder-budget 0\n", "keyholder-budget 0: must be between 1 and 16", EXTRA_LINE
    ),
    "pid-file directory missing": (
        "pid-file /nonexistent-dir/titus.pid\n",
        "pid-file /nonexistent-dir/titus.pid: no directory /nonexistent-dir",
        EXTRA_LINE,
    ),
    "huge number": ("max-children " + "9" * 5000 + "\n", "expected a whole number", EXTRA_LINE),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_option_refused(tmp_path: Path, name: str) -> None:
    extra, message, line = REFUSED[name]
    conf = basic_conf(tmp_path, extra)
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    text = str(info.value)
    assert text.startswith(f"{conf}:{line}: "), text
    assert message in text
    assert "\n" not in text
    assert info.value.source.line == line


TITUS_8_OPTIONS = [
    "config", "config-directory", "daemon", "pid-file", "port", "transparent", "backend",
    "backend-port", "min-spare-children", "max-children", "max-handshake-time", "network-user",
    "network-group", "keyserver-user", "keyserver-group", "chroot", "key", "cert", "ciphers",
    "honor-client-cipher-order", "dhgroup", "ecdhcurve", "compression", "sslv3", "tlsv1",
    "tlsv1.1", "tlsv1.2", "local-address", "local-port", "sni-name",
]


def test_every_titus_8_option_is_known_and_covered() -> None:
    assert set(TITUS_8_OPTIONS) <= set(OPTIONS)
    covered = {case.split()[0] for case in (*WORKS, *REFUSED)}
    # config/config-directory/key/cert are covered by the include and file tests
    missing = set(TITUS_8_OPTIONS) - covered - {"config", "config-directory", "key", "cert"}
    assert not missing


def test_transparent_yes_without_backend(tmp_path: Path) -> None:
    write(tmp_path / "t.conf", "")
    conf = basic_conf(tmp_path, "")
    text = conf.read_text().replace("backend 127.0.0.1\nbackend-port 8080\n", "")
    write(conf, text + "transparent yes\n")
    config = load_config(conf)
    assert config.transparent == "yes"
    assert (config.vhosts[0].backend_host, config.vhosts[0].backend_port) == (None, None)


def test_backend_defaults_to_the_local_address(tmp_path: Path) -> None:
    """titus 0.4: without `backend`, connect to the address the client connected to."""
    conf = basic_conf(tmp_path)
    write(conf, conf.read_text().replace("backend 127.0.0.1\n", ""))
    vhost = load_config(conf).vhosts[0]
    assert (vhost.backend_host, vhost.backend_port) == (None, 8080)


def test_last_setting_wins(tmp_path: Path) -> None:
    conf = basic_conf(tmp_path, "max-children 5\nmax-children 6\nvhost\n\tbackend-port 1\n"
                      "\tbackend-port 2\n")
    config = load_config(conf)
    assert config.max_children == 6 and config.vhosts[0].backend_port == 2


def test_dhgroup_file(tmp_path: Path) -> None:
    from titus.config.dh import named_group

    write(tmp_path / "dh.pem", named_group("15").pem.decode())
    config = load_config(basic_conf(tmp_path, "dhgroup dh.pem\n"))
    dh = tls(config).dhgroup
    assert dh is not None and dh.bits == 3072 and dh.path == tmp_path / "dh.pem"


def test_local_port_and_address_not_listened_on_are_reported(tmp_path: Path) -> None:
    conf = basic_conf(
        tmp_path, "listen 127.0.0.1\nvhost\n\tlocal-port 8443\nvhost\n\tlocal-address ::1\n"
    )
    found = notices(load_config(conf))
    assert any("local-port 8443 is not a port titus listens on" in n for n in found)
    assert any("local-address ::1 is not an address titus listens on" in n for n in found)


def test_every_option_has_help_in_titus_help():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "titus.cli", "--help"], capture_output=True,
                         text=True, timeout=30).stdout
    for name, option in OPTIONS.items():
        if option.conf:
            assert f"--{name} " in out and option.help[:30] in out, name


def test_client_auth_options(tmp_path):
    conf = basic_conf(tmp_path, "client-auth required\nclient-ca certs/example.com.crt\n")
    tls = load_config(conf).vhosts[0].tls
    assert tls.client_auth == "required" and tls.client_ca == tmp_path / "certs/example.com.crt"
    assert load_config(basic_conf(tmp_path, "")).vhosts[0].tls.client_auth == "none"
    with pytest.raises(ConfigError, match=r"titus.conf:\d+: client-auth optional needs client-ca"):
        load_config(basic_conf(tmp_path, "client-auth optional\n"))
    with pytest.raises(ConfigError, match="none, optional or required"):
        load_config(basic_conf(tmp_path, "client-auth maybe\nclient-ca certs/example.com.crt\n"))
    with pytest.raises(ConfigError, match="client-ca"):
        load_config(basic_conf(tmp_path, "client-auth required\nclient-ca nowhere.pem\n"))


def test_the_curve_check_asks_openssl_for_groups_not_ec_curves() -> None:
    """ecdhcurve is checked as it is applied (the groups list): X25519 and X448 are
    groups, not EC curves, which Python 3.11.2's set_ecdh_curve (Debian 12) refuses."""
    from titus.worker.contexts import openssl_knows_groups

    assert openssl_knows_groups("X25519") and openssl_knows_groups("X448")
    assert openssl_knows_groups("X25519:prime256v1:secp384r1")
    assert not openssl_knows_groups("no-such-group")
