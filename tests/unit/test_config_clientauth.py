"""client-crl and client-allow-*: what works, and what is refused naming its line."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from tests.pki import CA
from tests.unit.test_config_support import basic_conf
from titus.config.load import ConfigError, load_config
from titus.config.model import TLSSettings
from titus.supervisor.clientid import refusal
from titus.wire.control import HandshakeDone

LINE = 6  # basic_conf writes five lines


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path / "pki")


def auth(ca: CA, mode: str = "required") -> str:
    return f"client-auth {mode}\nclient-ca {ca.path}\n"


def error(tmp_path: Path, extra: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(basic_conf(tmp_path, extra))
    return str(info.value)


def test_allow_lists_and_crl_load(tmp_path: Path, ca: CA) -> None:
    crl = ca.crl([])
    config = load_config(basic_conf(tmp_path, auth(ca) + (
        f"client-crl {crl}\nclient-allow-cn Alice Smith\nclient-allow-cn bob\n"
        "client-allow-dns Svc.Example.COM\nclient-allow-uri spiffe://example.com/web\n"
        "vhost a\n\tsni-name a.example\n\tclient-allow-cn carol\nvhost b\n")))
    a, b = (v.tls for v in config.vhosts)
    assert a.client_allow_cn == ("carol",) and a.client_allow_dns == ("svc.example.com",)
    assert b.client_allow_cn == ("Alice Smith", "bob")  # a vhost's own list replaces it
    assert b.client_allow_uri == ("spiffe://example.com/web",) and b.client_crl == crl


def test_same_in_toml(tmp_path: Path, ca: CA) -> None:
    basic_conf(tmp_path)
    path = tmp_path / "titus.toml"
    path.write_text(
        'port = 443\ncert = "certs/example.com.crt"\nkey = "certs/example.com.key"\n'
        'backend-port = 80\n[tls]\nclient-auth = "required"\n'
        f'client-ca = "{ca.path}"\nclient-allow-cn = ["bob", "carol"]\n'
        '[[vhost]]\n[vhost.tls]\nclient-allow-uri = "spiffe://x/y"\n')
    tls = load_config(path).vhosts[0].tls
    assert (tls.client_allow_cn, tls.client_allow_uri) == (("bob", "carol"), ("spiffe://x/y",))


@pytest.mark.parametrize(("extra", "line", "message"), [
    ("client-allow-cn bob\n", LINE, "client-allow-cn needs client-auth required"),
    ("client-auth optional\nclient-ca {ca}\nclient-allow-uri spiffe://a/b\n", LINE + 2,
     "client-allow-uri needs client-auth required (with optional, a client could send no "
     "certificate at all)"),
    ("client-crl {crl}\n", LINE, "client-crl needs client-auth optional or required"),
    ("client-allow-uri not a uri\n", LINE, "expected a URI with a scheme"),
    ("client-allow-dns -bad-\n", LINE, "client-allow-dns -bad-:"),
    ("client-allow-cn bob\nclient-allow-cn bob\n", LINE + 1, "listed twice"),
])
def test_refused(tmp_path: Path, ca: CA, extra: str, line: int, message: str) -> None:
    crl = ca.crl([])
    text = error(tmp_path, extra.format(ca=ca.path, crl=crl))
    conf = tmp_path / "titus.conf"
    assert text.startswith(f"{conf}:{line}: "), text
    assert message in text, text


def test_crl_of_another_ca(tmp_path: Path, ca: CA) -> None:
    other = CA(tmp_path / "other", name="another CA")
    text = error(tmp_path, auth(ca) + f"client-crl {other.crl([])}\n")
    assert text.endswith("the CRL of CN=another CA is not signed by a client-ca certificate")
    assert f":{LINE + 2}: client-crl " in text


def test_crl_missing_for_a_client_ca_certificate(tmp_path: Path, ca: CA) -> None:
    other = CA(tmp_path / "other", name="second CA")
    both = tmp_path / "both.pem"
    both.write_bytes(ca.path.read_bytes() + other.path.read_bytes())
    text = error(tmp_path, f"client-auth required\nclient-ca {both}\nclient-crl {ca.crl([])}\n")
    assert "no CRL for the client-ca certificate CN=second CA: every client it signed would " \
           "be refused" in text


def test_not_a_crl(tmp_path: Path, ca: CA) -> None:
    text = error(tmp_path, auth(ca) + f"client-crl {ca.path}\n")
    assert f":{LINE + 2}: client-crl {ca.path}: no PEM CRL" in text


def test_stale_crl_is_a_notice(tmp_path: Path, ca: CA) -> None:
    crl = ca.crl([], next_update=-datetime.timedelta(hours=1) / 2)
    config = load_config(basic_conf(tmp_path, auth(ca) + f"client-crl {crl}\n"))
    assert any("is out of date (nextUpdate " in str(n) and "every client it covers is refused"
               in str(n) for n in config.notices), config.notices


def hs(cn: str | None, dns: tuple[str, ...] = (), uri: tuple[str, ...] = ()) -> HandshakeDone:
    return HandshakeDone(0, None, "TLSv1.3", "x", None, 1.0, client_cn=cn,
                         client_subject=f"CN={cn}" if cn else None, client_dns=dns,
                         client_uri=uri)


def test_refusal() -> None:
    tls = TLSSettings(client_auth="required", client_ca=Path("/ca"),
                      client_allow_cn=("alice",), client_allow_dns=("svc.example",),
                      client_allow_uri=("spiffe://x/y",))
    assert refusal(tls, hs("alice")) is None
    assert refusal(tls, hs("bob", dns=("SVC.example",))) is None
    assert refusal(tls, hs("bob", uri=("spiffe://x/y",))) is None
    assert refusal(tls, hs("bob", uri=("spiffe://x/Y",))) == (
        "client CN=bob is not on the vhost's allow-list (SANs: URI:spiffe://x/Y)")
    assert refusal(tls, hs(None)) == "no verified client certificate"
    assert refusal(TLSSettings(), hs(None)) is None  # no list: OpenSSL's verdict stands


def test_subject_as_rfc4514() -> None:
    from titus.worker.identity import rfc4514

    subject = ((("countryName", "DE"),), (("organizationName", "A, B"),),
               (("commonName", " alice"),))
    assert rfc4514(subject) == "CN=\\ alice,O=A\\, B,C=DE"
