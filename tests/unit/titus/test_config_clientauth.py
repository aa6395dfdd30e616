"""client-crl and client-allow-*: what works, and what is refused naming its line."""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path

import pytest

from tests.pki import CA
from tests.unit.titus.test_config_support import basic_conf
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


def _certificate(subject: list[tuple[object, str]], sans: list[object] = ()) -> bytes:
    """A self-signed DER certificate with these subject attributes (one RDN each)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    with warnings.catch_warnings():  # long ones too: cryptography warns, the worker cuts
        warnings.simplefilter("ignore")
        name = x509.Name([x509.NameAttribute(oid, value, _validate=False)
                          for oid, value in subject])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(1).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=1)))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_subject_as_rfc4514() -> None:
    """The C worker's report (titus/worker/wk_identity.c), RDNs last first, RFC 4514
    escapes, short names where they exist."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from titus.worker import _worker

    der = _certificate([(NameOID.COUNTRY_NAME, "DE"), (NameOID.ORGANIZATION_NAME, "A, B"),
                        (NameOID.COMMON_NAME, " alice"), (NameOID.EMAIL_ADDRESS, "a@b")],
                       [x509.DNSName("a.test"), x509.UniformResourceIdentifier("spiffe://x/a"),
                        x509.RFC822Name("a@b"), x509.DNSName("b.test")])
    assert _worker.client_identity(der) == (
        " alice", "emailAddress=a@b,CN=\\ alice,O=A\\, B,C=DE", ("a.test", "b.test"),
        ("spiffe://x/a",))
    der = _certificate([(NameOID.COMMON_NAME, "é" * 300), (NameOID.ORGANIZATION_NAME, "#x ")],
                       [x509.DNSName(f"n{i}.test") for i in range(20)])
    cn, subject, dns, uri = _worker.client_identity(der)
    assert cn == "é" * 256 and subject == "O=\\#x\\ ,CN=" + "é" * 300
    assert dns == tuple(f"n{i}.test" for i in range(16)) and uri == ()
