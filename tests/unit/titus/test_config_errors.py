"""File checks (cert, key, dhgroup), the never-read-the-key rule, and fuzzing for ConfigError."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.titus.test_config_support import basic_conf, make_cert, write
from titus.config import files as config_files
from titus.config.load import ConfigError, load_config
from titus.config.options import OPTIONS

# FILE:LINE: message, or FILE: message for a setting missing from the whole file (never :0).
ERROR_FORMAT = re.compile(r"^[^\n]+?(:[1-9][0-9]*)?: [^\n]+$")
LINE_ZERO = re.compile(r":0: ")


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert ERROR_FORMAT.match(message) and not LINE_ZERO.search(message), message
    return message


def with_files(tmp_path: Path, cert: str, key: str, extra: str = "") -> Path:
    basic_conf(tmp_path)
    return write(tmp_path / "t.conf", f"port 443\nbackend-port 80\ncert {cert}\nkey {key}\n{extra}")


# --- missing settings after inheritance --------------------------------------------------


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("port 443\nkey k\nbackend-port 1\n", 0, "no cert; set `cert` globally"),
        ("port 443\ncert c\nbackend-port 1\n", 0, "no key; set `key` globally"),
        ("port 443\ncert certs/example.com.crt\nkey certs/example.com.key\n", 0,
         "no backend-port; set `backend-port` globally"),
        ("port 443\nkey k\nbackend-port 1\n\nvhost a\n\tsni-name a.example\n", 5,
         "vhost a: no cert; set `cert` in this vhost or globally"),
        ("port 443\ncert certs/example.com.crt\nkey certs/example.com.key\nvhost\n", 4,
         "vhost vhost1: no backend-port; set `backend-port` in this vhost or globally"),
    ],
)
def test_missing_after_inheritance(tmp_path: Path, body: str, line: int, message: str) -> None:
    basic_conf(tmp_path)
    conf = write(tmp_path / "t.conf", body)
    assert error_of(conf) == (f"{conf}:{line}: {message}" if line else f"{conf}: {message}")


# --- key files: checked, never opened ----------------------------------------------------


def test_key_file_problems(tmp_path: Path) -> None:
    cert = "certs/example.com.crt"
    conf = with_files(tmp_path, cert, "certs/missing.key")
    assert error_of(conf) == (
        f"{conf}:4: key {tmp_path}/certs/missing.key: cannot use key file: "
        "No such file or directory"
    )
    conf = with_files(tmp_path, cert, "certs")
    assert error_of(conf).endswith(": the key is not a regular file")
    write(tmp_path / "empty.key", "")
    conf = with_files(tmp_path, cert, "empty.key")
    assert error_of(conf).endswith(": the key file is empty")


def test_unreadable_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # root may read anything, so access() is faked to answer as for an unprivileged user
    conf = with_files(tmp_path, "certs/example.com.crt", "certs/example.com.key")
    key = str(tmp_path / "certs/example.com.key")
    real_access = os.access
    monkeypatch.setattr(
        config_files.os, "access", lambda p, mode: False if str(p) == key else real_access(p, mode)
    )
    assert error_of(conf).endswith(": the key file is not readable")


_opened: list[str] | None = None


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        _opened.append(os.fsdecode(args[0]))


@pytest.fixture
def opened() -> Iterator[list[str]]:
    global _opened
    if not getattr(sys, "_titus_config_audit", False):
        sys.addaudithook(_audit)
        sys._titus_config_audit = True  # type: ignore[attr-defined]
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


def test_the_private_key_is_never_opened(tmp_path: Path, opened: list[str]) -> None:
    conf = basic_conf(tmp_path, "vhost\n\tsni-name a.example\nvhost\n")
    opened.clear()  # the set-up wrote the files
    config = load_config(conf)
    key = str(tmp_path / "certs" / "example.com.key")
    assert all(vhost.key == Path(key) for vhost in config.vhosts)
    assert str(conf) in opened and str(tmp_path / "certs" / "example.com.crt") in opened
    assert key not in opened


def test_cert_containing_a_key_is_refused_without_keeping_it(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path / "certs")
    write(tmp_path / "both.pem", cert.read_text() + key.read_text())
    conf = with_files(tmp_path, "both.pem", "certs/example.com.key")
    assert error_of(conf) == (
        f"{conf}:3: cert {tmp_path}/both.pem: the certificate file contains a private key; keep "
        "the key in its own file (only the key holder may read it)"
    )


def test_cert_and_key_the_same_file(tmp_path: Path, opened: list[str]) -> None:
    cert, key = make_cert(tmp_path / "certs")
    both = write(tmp_path / "both.pem", cert.read_text() + key.read_text())
    conf = with_files(tmp_path, "both.pem", "both.pem")
    opened.clear()
    assert error_of(conf).endswith(
        ": cert and key are the same file; keep the key in its own file"
    )
    assert str(both) not in opened  # refused before reading it


# --- certificates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "bits", "message"),
    [
        ("ed25519", 0, "Ed25519 keys are not supported (use RSA 2048-4096 or ECDSA P-256/P-384)"),
        ("ec-k256", 0, "EC curve secp256k1 is not supported (use P-256 or P-384)"),
        ("ec-p521", 0, "EC curve secp521r1 is not supported (use P-256 or P-384)"),
        ("rsa", 1024, "RSA-1024 is not supported (RSA keys must have 2048 to 4096 bits)"),
    ],
)
def test_unsupported_certificates(tmp_path: Path, kind: str, bits: int, message: str) -> None:
    make_cert(tmp_path / "odd", "odd", kind=kind, bits=bits or 2048)
    conf = with_files(tmp_path, "odd/odd.crt", "odd/odd.key")
    assert error_of(conf) == f"{conf}:3: cert {tmp_path}/odd/odd.crt: {message}"


def test_ec_certificate_and_chain_are_accepted(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path / "ec", "ec", kind="ec")
    other, _ = make_cert(tmp_path / "ca", "ca")
    write(cert, cert.read_text() + other.read_text())
    conf = with_files(tmp_path, "ec/ec.crt", "ec/ec.key")
    assert load_config(conf).vhosts[0].cert == cert


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not a certificate\n", "t.crt: not a PEM certificate"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
         "t.crt: not a PEM certificate"),
        ("", "t.crt: not a PEM certificate"),
    ],
)
def test_bad_certificate_files(tmp_path: Path, content: str, message: str) -> None:
    write(tmp_path / "t.crt", content)
    conf = with_files(tmp_path, "t.crt", "certs/example.com.key")
    assert error_of(conf) == f"{conf}:3: cert {tmp_path}/t.crt: {message}"


def test_cert_missing_or_directory(tmp_path: Path) -> None:
    conf = with_files(tmp_path, "nope.crt", "certs/example.com.key")
    assert error_of(conf).endswith("nope.crt: cannot read certificate: No such file or directory")
    conf = with_files(tmp_path, "certs", "certs/example.com.key")
    assert error_of(conf).endswith(": the certificate is not a regular file")


def test_overridden_missing_file_is_not_checked(tmp_path: Path) -> None:
    """Only the values in effect are checked, as titus 0.4 did."""
    conf = basic_conf(tmp_path, "vhost\n\tcert certs/example.com.crt\n")
    write(conf, conf.read_text().replace("cert certs/example.com.crt\n", "cert /missing.crt\n", 1))
    assert load_config(conf).vhosts[0].cert == tmp_path / "certs/example.com.crt"


# --- DH parameter files ---------------------------------------------------------------------


def test_dhgroup_file_problems(tmp_path: Path) -> None:
    weak = subprocess.run(
        ["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:modp_1536"],
        check=True, capture_output=True,
    ).stdout
    (tmp_path / "weak.pem").write_bytes(weak)
    conf = basic_conf(tmp_path, "dhgroup weak.pem\n")
    assert error_of(conf) == (
        f"{conf}:6: dhgroup weak.pem: 1536-bit DH is too weak (Logjam); use at least 2048 bits"
    )
    write(tmp_path / "junk.pem", "junk\n")
    conf = basic_conf(tmp_path, "dhgroup junk.pem\n")
    assert error_of(conf).endswith("dhgroup junk.pem: not a PEM file of DH parameters")
    conf = basic_conf(tmp_path, "dhgroup missing.pem\n")
    assert error_of(conf).endswith("dhgroup missing.pem: cannot read: No such file or directory")


# --- every message is one line naming file and line ------------------------------------------


@pytest.mark.parametrize("option", ["config", "config-directory", "cert", "key", "dhgroup",
                                    "pid-file"])
def test_nul_in_paths(tmp_path: Path, option: str) -> None:
    conf = basic_conf(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(conf, [(option, "a\x00b")])
    assert str(info.value) == (
        f"<command line>:2: {option} a\\x00b: a path cannot contain a NUL character"
    )


def test_fifo_is_never_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    for option in ("config", "cert", "key", "dhgroup"):
        conf = basic_conf(tmp_path, f"{option} fifo\n")
        assert "not a regular file" in error_of(conf)


def test_control_characters_are_escaped(tmp_path: Path) -> None:
    conf = basic_conf(tmp_path, "backend a\x0bb\x1cc\n")
    message = error_of(conf)
    assert "\\x0b" in message and "\\x1c" in message and len(message.splitlines()) == 1


# --- fuzzing: nothing but ConfigError escapes ----------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        make_cert(directory / "certs")
        write(directory / "inc.conf", "vhost inc\n")
        os.mkfifo(directory / "fifo")
        yield directory


def _load(path: Path) -> None:
    try:
        load_config(path)
    except ConfigError as e:
        assert ERROR_FORMAT.match(str(e)) and not LINE_ZERO.search(str(e)), str(e)
        assert len(str(e).splitlines()) == 1


NAMES = [*sorted(OPTIONS), "vhost", "prot", "", "#"]
VALUES = st.one_of(
    st.sampled_from([
        "yes", "no", "0", "1", "443", "65536", "-1", "14", "15", "99", '""', "::", "::1",
        "127.0.0.1", "[::1]:80", "*.example.com", "a..b", "certs/example.com.crt",
        "certs/example.com.key", "certs", "inc.conf", ".", "v1", "1.3", "1.1", "X25519",
        "ECDHE-RSA-AES128-GCM-SHA256", "AES128-SHA", "h2,http/1.1", "backend-only", "json",
        "a\x00b", "/nonexistent/x", "fifo",
    ]),
    st.text(max_size=20),
)
LINE = st.builds(
    lambda indent, name, value: f"{indent}{name} {value}",
    st.sampled_from(["", "", "\t", "  "]),
    st.sampled_from(NAMES),
    VALUES,
)
SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(st.binary(max_size=300))
def test_fuzz_conf_random_bytes(fuzz_dir: Path, data: bytes) -> None:
    path = fuzz_dir / "fuzz.conf"
    path.write_bytes(data)
    _load(path)


@SETTINGS
@given(st.lists(LINE, max_size=15))
def test_fuzz_conf_option_lines(fuzz_dir: Path, lines: list[str]) -> None:
    path = fuzz_dir / "fuzz.conf"
    path.write_text(
        "port 443\ncert certs/example.com.crt\nkey certs/example.com.key\nbackend-port 1\n"
        + "\n".join(lines) + "\n", errors="surrogateescape",
    )
    _load(path)


TOML_TOKENS = st.sampled_from([
    "[tls]", "[[vhost]]", "[vhost.tls]", "[[listen]]", "[log]", "[jail]", "[metrics]",
    "[keyholder]", "=", " = ", '"', "'", "[", "]", "{", "}", ",", ".", "\n", "#", "true",
    "1", "443", "1.5", "nan", '"yes"', '"::1"', '"1.3"', "port", "cert", "key",
    "backend-port", "sni-name", "ciphers", "curves", "uid-first", "uid-count", "address",
    "min-version", "alpn", "name", '"a.example"', '["h2"]', '"X25519"', "max-children",
    '"""', "config", '"inc.conf"', "tls", "vhost", "listen",
])


@SETTINGS
@given(st.lists(TOML_TOKENS, max_size=40))
def test_fuzz_toml_tokens(fuzz_dir: Path, tokens: list[str]) -> None:
    path = fuzz_dir / "fuzz.toml"
    path.write_text(
        'port = 443\ncert = "certs/example.com.crt"\nkey = "certs/example.com.key"\n'
        "backend-port = 1\n" + "".join(tokens) + "\n"
    )
    _load(path)


@SETTINGS
@given(st.text(max_size=200))
def test_fuzz_toml_random_text(fuzz_dir: Path, text: str) -> None:
    path = fuzz_dir / "fuzz.toml"
    path.write_text(text, errors="surrogateescape")
    _load(path)
