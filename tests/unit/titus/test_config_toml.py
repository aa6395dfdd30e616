"""The native titus.toml format: the annotated example, tables, types, line numbers."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import pytest

from sandbox.tomlsource import KeyLines
from tests.unit.titus.test_config_support import REPO, basic_conf, chosen, make_cert, write
from titus.config.load import ConfigError, load_config

HEAD = """\
port = 443
cert = "certs/example.com.crt"
key = "certs/example.com.key"
backend = "127.0.0.1"
backend-port = 8080
"""


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    make_cert(tmp_path / "certs")
    make_cert(tmp_path / "certs", "www.example.com", kind="ec")
    return tmp_path


def toml(directory: Path, text: str) -> Path:
    return write(directory / "titus.toml", HEAD + text)


def error_of(path: Path, overrides: list[tuple[str, str]] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides or [])
    message = str(info.value)
    assert "\n" not in message
    return message


def test_annotated_example_loads(tmp_path: Path) -> None:
    text = (REPO / "titus.toml.example").read_text().replace("/etc/titus/", f"{tmp_path}/")
    example = write(tmp_path / "titus.toml", text)
    for stem in ("example.com", "www.example.com", "wildcard.example.com"):
        cert, key = make_cert(tmp_path / "certs", stem)
        cert.rename(tmp_path / "certs" / f"{stem}.chained.crt")
        (tmp_path / "private").mkdir(exist_ok=True)
        key.rename(tmp_path / "private" / key.name)
    config = load_config(example)

    assert [(str(x.address), x.port, x.dual_stack) for x in config.listeners] == [
        ("0.0.0.0", 443, False), ("::", 443, False), ("127.0.0.1", 8443, False)
    ]
    www, internal, wildcard, fallback = config.vhosts
    assert [v.name for v in config.vhosts] == ["www", "internal", "wildcard", "fallback"]
    assert www.sni_names == ("www.example.com", "example.com")
    assert www.tls.min_version == ssl.TLSVersion.TLSv1_3
    assert www.tls.alpn == ("http/1.1",)  # inherited from [tls]; h2 only with backend-h2
    assert (www.backend_host, www.backend_port) == ("127.0.0.1", 7443)
    assert internal.local_address == ipaddress.ip_address("127.0.0.1")
    assert (internal.local_port, internal.proxy_protocol) == (8443, "v1")
    assert (internal.backend_host, internal.backend_port) == ("localhost", 9443)
    assert internal.tls.min_version == ssl.TLSVersion.TLSv1_2
    assert wildcard.cert.name == "wildcard.example.com.chained.crt"
    assert fallback.cert.name == "example.com.chained.crt" and fallback.backend_port == 8080
    assert config.metrics_listen is not None and config.metrics_listen.port == 9100
    assert (config.log_format, config.uid_first, config.uid_count) == ("auto", 200000, 65536)
    assert (config.keyholder_budget, config.keyholder_timeout) == (1, 2.0)
    assert chosen(config, "127.0.0.1", 8443, "x.example.com") is internal
    assert chosen(config, "192.0.2.1", 443, "x.example.com") is wildcard
    assert chosen(config, "192.0.2.1", 443, "a.x.example.com") is fallback


def test_both_formats_give_the_same_model(certs: Path) -> None:
    conf = basic_conf(
        certs,
        "max-children 50\nmin-spare-children 5\nmax-handshake-time 4\ndaemon yes\n"
        "transparent backend-only\nproxy-protocol v2\n"
        "ciphers ECDHE-RSA-AES128-GCM-SHA256\necdhcurve X25519\ndhgroup 14\n"
        "honor-client-cipher-order yes\nalpn h2\nbackend-h2 yes\n"
        "ciphersuites TLS_AES_128_GCM_SHA256\n"
        "log-format json\nmetrics-listen 127.0.0.1:9100\nkeyholder-budget 2\n"
        "vhost www\n\tsni-name www.example.com\n\tsni-name *.www.example.com\n"
        "\tcert certs/www.example.com.crt\n\tkey certs/www.example.com.key\n\ttlsv1.2 no\n"
        "\tlocal-address 192.0.2.5\n\tlocal-port 443\n\tbackend ::1\n"
        "vhost rest\n",
    )
    native = toml(
        certs,
        'max-children = 50\nmin-spare-children = 5\nmax-handshake-time = 4.0\ndaemon = true\n'
        'transparent = "backend-only"\nproxy-protocol = "v2"\nbackend-h2 = true\n'
        '[tls]\nciphers = ["ECDHE-RSA-AES128-GCM-SHA256"]\ncurves = ["X25519"]\ndhgroup = 14\n'
        'honor-client-cipher-order = true\nalpn = ["h2"]\n'
        'ciphersuites = "TLS_AES_128_GCM_SHA256"\n'
        '[log]\nformat = "json"\n[metrics]\nlisten = "127.0.0.1:9100"\n'
        '[keyholder]\nbudget = 2\n'
        '[[vhost]]\nname = "www"\nsni-name = ["www.example.com", "*.www.example.com"]\n'
        'cert = "certs/www.example.com.crt"\nkey = "certs/www.example.com.key"\n'
        'local-address = "192.0.2.5"\nlocal-port = 443\nbackend = "::1"\n'
        '[vhost.tls]\nmin-version = "1.3"\n'
        '[[vhost]]\nname = "rest"\n',
    )
    a, b = load_config(conf), load_config(native)
    assert a.vhosts == b.vhosts
    assert a.listeners == b.listeners
    for field in ("min_spare_children", "max_children", "max_handshake_time", "transparent",
                  "daemon", "log_format", "metrics_listen", "keyholder_budget"):
        assert getattr(a, field) == getattr(b, field), field


def test_vhost_tls_inherits_field_by_field(certs: Path) -> None:
    config = load_config(toml(
        certs,
        '[tls]\nalpn = ["http/1.1"]\ncurves = ["secp384r1"]\n'
        '[[vhost]]\n[vhost.tls]\ncurves = "X25519"\n'
        '[[vhost]]\n',
    ))
    first, second = config.vhosts
    assert (first.tls.alpn, first.tls.curves) == (("http/1.1",), ("X25519",))
    assert (second.tls.alpn, second.tls.curves) == (("http/1.1",), ("secp384r1",))


def test_empty_sni_name_in_toml(certs: Path) -> None:
    config = load_config(toml(certs, '[[vhost]]\nsni-name = ["", "a.example"]\n'))
    assert config.vhosts[0].sni_names == ("", "a.example")
    assert chosen(config, "::1", 443, None) is config.vhosts[0]


def test_listen_tables(certs: Path) -> None:
    config = load_config(toml(
        certs,
        '[[listen]]\n[[listen]]\naddress = "127.0.0.1"\nport = 8443\n'
        '[[listen]]\naddress = "fe80::1"\nport = 9443\n',
    ))
    assert [str(x) for x in config.listeners] == ["[::]:443", "127.0.0.1:8443", "[fe80::1]:9443"]
    assert [x.dual_stack for x in config.listeners] == [True, False, False]


def test_jail_range(certs: Path) -> None:
    config = load_config(toml(certs, "[jail]\nuid-first = 300000\nuid-count = 1000\n"))
    assert (config.uid_first, config.uid_count) == (300000, 1000)
    # the default max-children (1000) is capped by a smaller range; one set is not
    assert config.max_children == 999


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("[jail]\nuid-first = 60000\nuid-count = 10000\n", 7,
         "jail uid range 60000..69999 contains user nobody (uid 65534); jails need uids that "
         "nothing else uses"),
        ("max-children = 100\n[jail]\nuid-count = 50\n", 8,
         "uid-count 50 is too small: max-children 100 workers and the key holder each need "
         "their own uid"),
        ("max-children = 70000\n", 6,
         "uid-count 65536 is too small: max-children 70000 workers"),
        ("[jail]\nuid-first = 4294967200\nuid-count = 1000\n", 8,
         "jail uid range 4294967200+1000 goes past 4294967294"),
        ("[jail]\nuid-first = 0\n", 7, "uid-first 0: must be between 1 and 4294967294"),
    ],
)
def test_jail_range_errors(certs: Path, text: str, line: int, message: str) -> None:
    path = toml(certs, text)
    result = error_of(path)
    assert result.startswith(f"{path}:{line}: "), result
    assert message in result


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("daemon = \"yes\"\n", 6, "daemon: expected true or false, got str"),
        ("max-children = true\n", 6, "max-children: expected an integer, got bool"),
        ("max-handshake-time = \"10\"\n", 6, "max-handshake-time: expected a number of seconds"),
        ("max-handshake-time = nan\n", 6, "max-handshake-time: expected a finite number"),
        ("max-handshake-time = 0.0\n", 6, "max-handshake-time 0: must be more than 0"),
        ("max-childern = 5\n", 6, "unknown key 'max-childern'; did you mean 'max-children'?"),
        ("ciphers = \"x\"\n", 6, "'ciphers' belongs in [tls] or [vhost.tls], not the top level"),
        ("sni-name = \"a.example\"\n", 6, "'sni-name' belongs in [[vhost]], not the top level"),
        ("[[vhost]]\nciphers = \"x\"\n", 7,
         "'ciphers' belongs in [vhost.tls] or [tls], not [[vhost]]"),
        ("[[vhost]]\n[vhost.tls]\nbackend = \"x\"\n", 8,
         "'backend' belongs in [[vhost]] or the top level, not [vhost.tls]"),
        ("[tls]\nmin-tls-version = \"1.3\"\n", 7,
         "'min-tls-version' is written 'min-version' in [tls]"),
        ("log-format = \"json\"\n", 6, "'log-format' is written 'format' in [log]"),
        ("[log]\nlisten = \"127.0.0.1:9100\"\n", 7, "'listen' is a table of its own"),
        ("[metrics]\nformat = \"json\"\n", 7, "'format' belongs in [log], not [metrics]"),
        ("[[listen]]\nsni-name = \"a\"\n", 7, "'sni-name' belongs in [[vhost]], not [[listen]]"),
        ("[[vhost]]\n[vhost.tls]\nciphres = \"x\"\n", 8,
         "unknown key in [vhost.tls] 'ciphres'; did you mean 'ciphers'?"),
        ("sslv3 = false\n", 6, "unknown key 'sslv3'"),
        ("network-user = \"titus\"\n", 6, "unknown key 'network-user'"),
        ("\n[tls]\nmin-version = \"1.0\"\n", 8,
         "min-version 1.0: versions below TLS 1.2 are insecure and not supported"),
        ("[tls]\nciphres = \"x\"\n", 7, "unknown key in [tls] 'ciphres'; did you mean 'ciphers'?"),
        ("[tls]\nalpn = []\n", 7, "alpn: empty list; leave the key out instead"),
        ("[tls]\nalpn = [\"a,b\"]\n", 7, "alpn: an item contains ','"),
        ("[tls]\ncurves = [\"X25519\", 3]\n", 7, "curves: expected a string or a list of strings"),
        ("[tlss]\n", 6, "unknown key 'tlss'; did you mean 'tls'?"),
        ("tls = 3\n", 6, "[tls] must be a table"),
        ("vhost = 3\n", 6, "vhost must be written as [[vhost]]"),
        ("[[vhost]]\nsni = \"a\"\n", 7, "unknown key in [[vhost]] 'sni'"),
        ("[[vhost]]\n[[vhost]]\ncert = \"nope.crt\"\n", 8,
         "nope.crt: cannot read certificate: No such file"),
        ("[[vhost]]\n[[vhost]]\nlocal-port = 70000\n", 8,
         "local-port 70000: must be between 1 and 65535"),
        ("[[listen]]\nadress = \"::\"\n", 7, "unknown key in [[listen]] 'adress'"),
        ("[[listen]]\naddress = \"localhost\"\n", 7, "listen localhost: expected an IP address"),
        ("[[listen]]\nport = true\n", 7, "port: expected an integer"),
        ("[log]\nformat = \"xml\"\n", 7, "format xml: expected json, text or auto"),
        ("[[vhost]]\n[vhost.tls]\ndhgroup = 2\n", 8, "dhgroup 2: unknown DH group"),
        ("[[vhost]]\nname = \"x\"\n[[vhost]]\nname = \"x\"\n", 9,
         "vhost name x is already used by the vhost at"),
        ("config = \"missing.conf\"\n", 6, "missing.conf: cannot read: No such file"),
    ],
)
def test_errors_name_file_and_line(certs: Path, text: str, line: int, message: str) -> None:
    path = toml(certs, text)
    result = error_of(path)
    assert result.startswith(f"{path}:{line}: "), result
    assert message in result


def test_syntax_error_keeps_line_and_column(certs: Path) -> None:
    path = toml(certs, "\n\nport = = 4\n")
    result = error_of(path)
    assert result.startswith(f"{path}:8: TOML syntax error: ")
    assert "(at line 8, column" in result
    path = write(certs / "eof.toml", 'a = "unterminated')
    assert error_of(path).startswith(f"{path}:1: TOML syntax error: ")


def test_duplicate_key_is_a_syntax_error(certs: Path) -> None:
    path = toml(certs, "port = 444\n")
    assert error_of(path).startswith(f"{path}:6: TOML syntax error: ")


def test_missing_cert_in_vhost_names_the_vhost_header(certs: Path) -> None:
    path = write(certs / "t.toml", 'port = 443\nbackend-port = 80\n\n[[vhost]]\nname = "a"\n')
    assert error_of(path) == f"{path}:4: vhost a: no cert; set `cert` in this vhost or globally"


def test_missing_port(certs: Path) -> None:
    path = write(certs / "t.toml", "[tls]\n")
    assert error_of(path) == f"{path}: no port to listen on; set `port` (e.g. 443)"


def test_command_line_overrides_apply_to_toml(certs: Path) -> None:
    path = toml(certs, "max-children = 10\n[[vhost]]\nsni-name = \"a.example\"\n")
    config = load_config(path, [("max-children", "11"), ("backend-port", "99"),
                                ("ecdhcurve", "secp384r1")])
    assert config.max_children == 11
    assert config.vhosts[0].backend_port == 99
    assert config.vhosts[0].tls.curves == ("secp384r1",)


def test_toml_includes_conf_and_toml(certs: Path) -> None:
    write(certs / "more.conf", "vhost from-conf\n\tsni-name c.example\n")
    write(certs / "d" / "10.toml", '[[vhost]]\nname = "from-dir"\n')
    path = toml(
        certs,
        'config = "more.conf"\nconfig-directory = "d"\n[[vhost]]\nname = "own"\n',
    )
    config = load_config(path)
    assert [v.name for v in config.vhosts] == ["from-conf", "from-dir", "own"]
    assert config.sources == (path, certs / "more.conf", certs / "d" / "10.toml")


def test_key_lines_locator() -> None:
    text = (
        'port = 1\n"quoted" = 2\n[tls]\nciphers = """\nnot = a key\n"""\nalpn = ["h2"]\n'
        "[[vhost]]\nname = 'a'\n[vhost.tls]\ncurves = 'X'\n[[vhost]]\ntls.alpn = 'x'\n"
        "[[listen]]\ninline = { port = 3 }\n"
    )
    lines = KeyLines(text)
    assert lines.line((), "port") == 1
    assert lines.line((), "quoted") == 2
    assert lines.line(("tls",), "ciphers") == 4
    assert lines.line(("tls",), "not") == 3  # inside a multi-line string: falls back to [tls]
    assert lines.line(("tls",), "alpn") == 7
    assert lines.line(("vhost", 0)) == 8
    assert lines.line(("vhost", 0), "name") == 9
    assert lines.line(("vhost", 0, "tls"), "curves") == 11
    assert lines.line(("vhost", 1, "tls"), "alpn") == 13
    assert lines.line(("listen", 0, "inline"), "port") == 15
    assert lines.line(("nowhere",), "x") == 1
