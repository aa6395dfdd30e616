"""titus/supervisor/ocsp.py: which OCSP responses may be stapled, how a file change is noticed, and
that the ctypes status callback staples a real response in a real handshake (Python's
ssl as the server, pyOpenSSL's own OpenSSL as the client, over memory BIOs)."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp as x509_ocsp
from OpenSSL import SSL

from tests.pki import CA, Leaf
from tests.unit.titus.test_config_support import basic_conf, write
from titus import logs
from titus.config.load import ConfigError, load_config
from titus.config.model import VHost
from titus.supervisor import ocsp
from titus.worker import _worker
from titus.worker.connection import build_table

HOUR, DAY = datetime.timedelta(hours=1), datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("ocsp-pki"))


@pytest.fixture(scope="module")
def leaf(ca: CA) -> Leaf:
    return ca.issue("a.test", "p256")


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict]]]:
    """The titus log events emitted during a test, as (name, fields)."""
    seen: list[tuple[str, dict]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), getattr(record, "fields", {})))

    handler = Collect()
    old_level = logs.logger.level
    logs.logger.addHandler(handler)
    logs.logger.setLevel(logging.INFO)
    try:
        yield seen
    finally:
        logs.logger.removeHandler(handler)
        logs.logger.setLevel(old_level)


def cert_of(leaf: Leaf) -> x509.Certificate:
    return x509.load_pem_x509_certificate(leaf.cert.read_bytes())


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def check(ca: CA, leaf: Leaf, der: bytes, issuer: x509.Certificate | None = None
          ) -> ocsp.Checked:
    return ocsp.check_response(der, cert_of(leaf), issuer, now())


# --- which responses are fit to staple ------------------------------------------------------


def test_good_response_is_accepted_with_its_expiry(ca: CA, leaf: Leaf) -> None:
    der = ca.ocsp_response(leaf.cert)
    checked = check(ca, leaf, der, ca.cert)
    assert checked.der == der and checked.status == "good"
    assert checked.expires is not None
    assert abs(checked.expires - (now() + DAY).timestamp()) < 60


def test_revoked_is_stapled_as_revoked_and_unknown_is_not(ca: CA, leaf: Leaf) -> None:
    assert check(ca, leaf, ca.ocsp_response(leaf.cert, "revoked")).status == "revoked"
    with pytest.raises(ocsp.OCSPError, match="status unknown"):
        check(ca, leaf, ca.ocsp_response(leaf.cert, "unknown"))


def test_no_next_update_never_expires(ca: CA, leaf: Leaf) -> None:
    assert check(ca, leaf, ca.ocsp_response(leaf.cert, next_update=None)).expires is None


@pytest.mark.parametrize(("this_update", "next_update", "message"), [
    (-2 * DAY, -DAY, "expired at"),
    (HOUR, DAY, "not valid before"),
])
def test_out_of_date_responses_are_refused(ca: CA, leaf: Leaf, this_update, next_update,
                                           message) -> None:
    der = ca.ocsp_response(leaf.cert, this_update=this_update, next_update=next_update)
    with pytest.raises(ocsp.OCSPError, match=message):
        check(ca, leaf, der)


def test_response_for_another_certificate_is_refused(ca: CA, leaf: Leaf) -> None:
    other = ca.issue("other.test", "p256")
    with pytest.raises(ocsp.OCSPError, match="another certificate"):
        check(ca, leaf, ca.ocsp_response(other.cert))


def test_response_from_another_issuer_is_refused(tmp_path: Path, ca: CA, leaf: Leaf) -> None:
    # Same serial, but an issuer of another name: the name hash differs.
    stranger = CA(tmp_path / "stranger", name="another CA")
    forged = _response_for(leaf, stranger)
    with pytest.raises(ocsp.OCSPError, match="another certificate"):
        check(ca, leaf, forged)
    # Same issuer name, another key: only the key hash tells, so only with the issuer known.
    twin = CA(tmp_path / "twin")
    assert twin.cert.subject == ca.cert.subject
    twin_der = _response_for(leaf, twin)
    assert check(ca, leaf, twin_der).status == "good"
    with pytest.raises(ocsp.OCSPError, match="another certificate"):
        check(ca, leaf, twin_der, ca.cert)


def _response_for(leaf: Leaf, signer: CA) -> bytes:
    """A good response from `signer` about a certificate it issued with `leaf`'s serial."""
    from cryptography.hazmat.primitives import serialization

    real = cert_of(leaf)
    same_serial = (x509.CertificateBuilder().subject_name(real.subject)
                   .issuer_name(signer.cert.subject).public_key(real.public_key())
                   .serial_number(real.serial_number).not_valid_before(now() - HOUR)
                   .not_valid_after(now() + DAY).sign(signer.key, hashes.SHA256()))
    builder = x509_ocsp.OCSPResponseBuilder().add_response(
        cert=same_serial, issuer=signer.cert, algorithm=hashes.SHA256(),
        cert_status=x509_ocsp.OCSPCertStatus.GOOD, this_update=now() - HOUR,
        next_update=now() + DAY, revocation_time=None, revocation_reason=None,
    ).responder_id(x509_ocsp.OCSPResponderEncoding.NAME, signer.cert)
    return builder.sign(signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_unsuccessful_and_garbage_are_refused(ca: CA, leaf: Leaf) -> None:
    from cryptography.hazmat.primitives import serialization

    try_later = x509_ocsp.OCSPResponseBuilder.build_unsuccessful(
        x509_ocsp.OCSPResponseStatus.TRY_LATER).public_bytes(serialization.Encoding.DER)
    with pytest.raises(ocsp.OCSPError, match="TRY_LATER, not SUCCESSFUL"):
        check(ca, leaf, try_later)
    with pytest.raises(ocsp.OCSPError, match="not a DER OCSP response"):
        check(ca, leaf, leaf.cert.read_bytes())


def test_reading_the_file(tmp_path: Path) -> None:
    with pytest.raises(ocsp.OCSPError, match="cannot read: No such file"):
        ocsp.read_response_file(tmp_path / "missing.der")
    with pytest.raises(ocsp.OCSPError, match="cannot read: Is a directory"):
        ocsp.read_response_file(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ocsp.OCSPError, match="not a regular file"):
        ocsp.read_response_file(tmp_path / "fifo")  # refused, without waiting for a writer
    with pytest.raises(ocsp.OCSPError, match="empty"):
        ocsp.read_response_file(write(tmp_path / "empty.der", ""))
    big = tmp_path / "big.der"
    big.write_bytes(b"\0" * (ocsp.MAX_RESPONSE_FILE + 1))
    with pytest.raises(ocsp.OCSPError, match="larger than"):
        ocsp.read_response_file(big)


def test_issuer_is_found_in_the_chain(ca: CA, leaf: Leaf) -> None:
    assert ocsp.issuer_of(cert_of(leaf), [cert_of(leaf), ca.cert]) == ca.cert
    assert ocsp.issuer_of(cert_of(leaf), [cert_of(leaf)]) is None


# --- the staple: loaded once per change, warned once ----------------------------------------


def staple_for(ca: CA, leaf: Leaf, path: Path, interval: float = 0.0) -> ocsp.Staple:
    return ocsp.Staple("a", path, cert_of(leaf), ca.cert, interval=interval)


def named(events: list[tuple[str, dict]], name: str) -> list[dict]:
    return [fields for event, fields in events if event == name]


def test_refresh_reloads_only_a_changed_file(tmp_path: Path, ca: CA, leaf: Leaf,
                                             events) -> None:
    path = tmp_path / "a.ocsp"
    first = ca.ocsp_response(leaf.cert)
    path.write_bytes(first)
    staple = staple_for(ca, leaf, path)
    staple.refresh()
    assert staple.current(now().timestamp()) == first
    staple.refresh()
    staple.refresh()
    assert len(named(events, "ocsp-response-loaded")) == 1  # unchanged: not read again

    # Rewritten in place with as many bytes (ECDSA signatures vary in length): the
    # inode and size stay, the change time tells.  File times advance with the
    # kernel's clock tick (a few ms): a rewrite within the tick of the last change
    # looks unchanged to stat (an updater should rename, below), so one tick passes.
    second = next(r for r in (ca.ocsp_response(leaf.cert, this_update=-2 * HOUR)
                              for _ in range(50)) if len(r) == len(first))
    time.sleep(0.05)
    path.write_bytes(second)
    staple.refresh()
    assert staple.current(now().timestamp()) == second
    # Replaced by a rename, as an updater should: a new inode.
    third = ca.ocsp_response(leaf.cert, this_update=-3 * HOUR)
    replacement = tmp_path / "a.ocsp.new"
    replacement.write_bytes(third)
    os.replace(replacement, path)
    staple.refresh()
    assert staple.current(now().timestamp()) == third
    assert len(named(events, "ocsp-response-loaded")) == 3


def test_refresh_is_rate_limited(tmp_path: Path, ca: CA, leaf: Leaf) -> None:
    path = tmp_path / "a.ocsp"
    path.write_bytes(ca.ocsp_response(leaf.cert))
    staple = staple_for(ca, leaf, path, interval=3600)
    staple.refresh()
    path.write_bytes(ca.ocsp_response(leaf.cert, "revoked"))
    staple.refresh()  # within the interval: the file is not even stat()ed
    assert staple.der is not None and check(ca, leaf, staple.der).status == "good"


def test_bad_files_are_not_stapled_and_warned_once(tmp_path: Path, ca: CA, leaf: Leaf,
                                                   events) -> None:
    path = tmp_path / "a.ocsp"
    path.write_bytes(ca.ocsp_response(leaf.cert, this_update=-2 * DAY, next_update=-DAY))
    staple = staple_for(ca, leaf, path)
    for _ in range(3):
        staple.refresh()
    assert staple.current(now().timestamp()) is None
    warnings = named(events, "ocsp-not-stapled")
    assert len(warnings) == 1 and "expired at" in warnings[0]["reason"]
    assert warnings[0]["vhost"] == "a" and warnings[0]["file"] == str(path)

    path.unlink()
    staple.refresh()
    staple.refresh()
    warnings = named(events, "ocsp-not-stapled")
    assert len(warnings) == 2 and "No such file" in warnings[1]["reason"]


def test_a_response_expiring_while_loaded_stops_being_stapled(tmp_path: Path, ca: CA,
                                                              leaf: Leaf, events) -> None:
    path = tmp_path / "a.ocsp"
    path.write_bytes(ca.ocsp_response(leaf.cert))
    staple = staple_for(ca, leaf, path)
    staple.refresh()
    assert staple.expires is not None
    # A worker forked earlier checks the clock itself, at handshake time.
    assert staple.current(staple.expires - 1) is not None
    assert staple.current(staple.expires + 1) is None
    staple.expires = now().timestamp() - 1  # as if a day had passed
    staple.refresh()
    staple.refresh()
    assert staple.der is None
    assert [w["reason"] for w in named(events, "ocsp-not-stapled")] == [
        "it has expired; the file has not been replaced"]


# --- the status callback in a real handshake ------------------------------------------------


def handshake(server_ctx: ssl.SSLContext, ask: bool, version: int
              ) -> tuple[list[bytes], bytes]:
    """(what pyOpenSSL's OCSP callback received, every byte the server sent)."""
    received: list[bytes] = []
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.set_min_proto_version(version)
    client_ctx.set_max_proto_version(version)
    client_ctx.set_ocsp_client_callback(lambda _conn, data, _arg: received.append(data) or True)
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"a.test")
    if ask:
        client.request_ocsp()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(incoming, outgoing, server_side=True)
    from_server = b""
    for _ in range(20):
        try:
            client.do_handshake()
            break
        except SSL.WantReadError:
            pass
        with contextlib.suppress(SSL.WantReadError):
            incoming.write(client.bio_read(1 << 16))
        with contextlib.suppress(ssl.SSLWantReadError):
            server.do_handshake()
        sent = outgoing.read()
        from_server += sent
        if sent:
            client.bio_write(sent)
    else:
        raise AssertionError("no handshake in 20 rounds")
    return received, from_server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, ca: CA, leaf: Leaf
           ) -> tuple[ssl.SSLContext, _worker.Table, ocsp.Staple, bytes]:
    """A context whose worker table staples `leaf`'s response (the C status callback,
    titus/worker/wk_ctx.c, which any handshake on the context runs)."""
    path = tmp_path_factory.mktemp("served") / "a.ocsp"
    der = ca.ocsp_response(leaf.cert)
    path.write_bytes(der)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf.cert, leaf.key)
    staple = staple_for(ca, leaf, path)
    staple.refresh()
    vhost = VHost("a", cert=leaf.cert, key=leaf.key, backend_host=None, backend_port=None)
    table = build_table([vhost], [ctx], 5.0, 2.0, [staple.value])
    return ctx, table, staple, der


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
def test_callback_staples_for_a_client_that_asks(served, version: int) -> None:
    ctx, _table, _staple, der = served
    received, from_server = handshake(ctx, ask=True, version=version)
    assert received == [der]
    if version == SSL.TLS1_2_VERSION:  # CertificateStatus travels in clear in TLS 1.2
        assert der in from_server


def test_a_client_that_does_not_ask_gets_nothing(served) -> None:
    ctx, _table, _staple, der = served
    received, from_server = handshake(ctx, ask=False, version=SSL.TLS1_2_VERSION)
    assert received == [] and der not in from_server


def test_nothing_stapled_once_expired_or_gone(served) -> None:
    ctx, table, staple, der = served
    try:
        table.update_staples([(der, now().timestamp() - 1)])  # the worker's clock decides
        assert handshake(ctx, ask=True, version=SSL.TLS1_3_VERSION)[0] == [b""]
        table.update_staples([(None, None)])  # refused by the supervisor: nothing to staple
        assert handshake(ctx, ask=True, version=SSL.TLS1_2_VERSION)[0] == [b""]
    finally:
        table.update_staples([staple.value])
    assert handshake(ctx, ask=True, version=SSL.TLS1_3_VERSION)[0] == [der]


# --- the option ------------------------------------------------------------------------------


def test_option_in_both_formats(tmp_path: Path, ca: CA, leaf: Leaf) -> None:
    path = tmp_path / "a.ocsp"
    path.write_bytes(ca.ocsp_response(leaf.cert))
    conf = load_config(basic_conf(tmp_path, "ocsp-response a.ocsp\n"))
    assert conf.vhosts[0].ocsp_response == path
    assert load_config(basic_conf(tmp_path)).vhosts[0].ocsp_response is None
    toml = write(tmp_path / "titus.toml", f"""port = 443
backend-port = 8080
cert = "{tmp_path}/certs/example.com.crt"
key = "{tmp_path}/certs/example.com.key"
ocsp-response = "a.ocsp"

[[vhost]]
name = "own"
ocsp-response = "{path}"

[[vhost]]
name = "inherits"
""")
    assert [v.ocsp_response for v in load_config(toml).vhosts] == [path, path]


def test_a_missing_or_foreign_file_is_a_one_line_config_error(tmp_path: Path) -> None:
    conf = basic_conf(tmp_path, "ocsp-response nowhere.der\n")
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    message = str(info.value)
    assert message.startswith(f"{conf}:6: ocsp-response {tmp_path}/nowhere.der: cannot read:")
    assert "\n" not in message
    conf = basic_conf(tmp_path, "ocsp-response certs/example.com.crt\n")
    with pytest.raises(ConfigError, match=r"titus.conf:6: .*not a DER OCSP response"):
        load_config(conf)
