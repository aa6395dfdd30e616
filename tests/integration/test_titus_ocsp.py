"""OCSP stapling through a real titus: the jailed worker staples each vhost's response
file (a real response signed by the test CA) for clients that ask, `openssl s_client
-status` and pyOpenSSL see it, a replaced file reaches new connections without a
SIGHUP, and a response that is expired or for another certificate is not stapled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from OpenSSL import SSL

from tests.pki import CA, Leaf
from tests.titus_harness import HTTPBackend, Titus, run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")

REQUEST = b"GET /ocsp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
NAMES = ("good.test", "fresh.test", "expired.test", "other.test")


@dataclass
class Setup:
    titus: Titus
    ca: CA
    leaves: dict[str, Leaf]
    files: dict[str, Path]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("ocsp")
    ca = CA(tmp / "pki")
    leaves = {name: ca.issue(name, "p256") for name in NAMES}
    files = {name: tmp / f"{name}.ocsp" for name in NAMES}
    files["good.test"].write_bytes(ca.ocsp_response(leaves["good.test"].cert))
    files["fresh.test"].write_bytes(ca.ocsp_response(leaves["fresh.test"].cert))
    files["expired.test"].write_bytes(ca.ocsp_response(
        leaves["expired.test"].cert, this_update=-_days(3), next_update=-_days(1)))
    # A valid response, but about good.test's certificate.
    files["other.test"].write_bytes(ca.ocsp_response(leaves["good.test"].cert))
    vhosts = "".join(f"""
vhost
\tsni-name {name}
\tkey {leaves[name].key}
\tcert {leaves[name].cert}
\tocsp-response {files[name]}
""" for name in NAMES)
    with HTTPBackend("A") as backend:
        config = f"""listen 127.0.0.1:0
min-spare-children 1
max-children 8
backend 127.0.0.1
backend-port {backend.port}
{vhosts}"""
        with Titus(tmp, config) as titus:
            yield Setup(titus, ca, leaves, files)


def _days(n: int):
    import datetime

    return datetime.timedelta(days=n)


def pyopenssl_fetch(setup: Setup, sni: str, ask: bool = True, tls12: bool = False
                    ) -> tuple[bytes | None, bytes, bytes]:
    """One HTTPS request with pyOpenSSL (its own OpenSSL) on a memory BIO pumped to a
    socket: (the stapled response, None if the callback never ran; every byte the
    server sent, encrypted or not; the decrypted answer)."""
    stapled: list[bytes] = []
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.load_verify_locations(str(setup.ca.path))
    ctx.set_verify(SSL.VERIFY_PEER, lambda *_args: bool(_args[-1]))
    if tls12:
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_ocsp_client_callback(lambda _conn, data, _arg: stapled.append(data) or True)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    conn.set_tlsext_host_name(sni.encode())
    if ask:
        conn.request_ocsp()
    raw, answer, handshaken, closed = b"", b"", False, False

    def read_plaintext() -> bool:
        """Decrypt what has arrived; True once the server's close_notify is in."""
        nonlocal answer
        while True:
            try:
                answer += conn.recv(65536)
            except SSL.WantReadError:
                return False
            except SSL.ZeroReturnError:
                return True

    with socket.create_connection(("127.0.0.1", setup.titus.port), timeout=10) as sock:
        for _ in range(200):
            if not handshaken:
                try:
                    conn.do_handshake()
                    handshaken = True
                    conn.send(REQUEST)
                except SSL.WantReadError:
                    pass
            closed = handshaken and read_plaintext()
            while True:
                try:
                    sock.sendall(conn.bio_read(65536))
                except SSL.WantReadError:
                    break
            data = b"" if closed else sock.recv(65536)
            if not data:
                break
            raw += data
            conn.bio_write(data)
        else:
            raise AssertionError("no answer in 200 rounds")
    if handshaken and not closed:
        read_plaintext()
    return (stapled[0] if stapled else None), raw, answer


def s_client(setup: Setup, sni: str, *extra: str) -> str:
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{setup.titus.port}", "-servername",
         sni, "-CAfile", str(setup.ca.path), "-verify_return_error", "-ign_eof", *extra],
        input=REQUEST, capture_output=True, timeout=20)
    text = out.stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in text, text + out.stderr.decode(errors="replace")
    assert "backend A path /ocsp" in text
    return text


def serial_of(leaf: Leaf) -> str:
    from cryptography import x509

    serial = x509.load_pem_x509_certificate(leaf.cert.read_bytes()).serial_number
    return serial.to_bytes((serial.bit_length() + 7) // 8).hex().upper()  # as OpenSSL prints it


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_s_client_status_shows_the_stapled_response(setup: Setup, version: str) -> None:
    text = s_client(setup, "good.test", "-status", version)
    assert "OCSP Response Status: successful" in text
    assert "Cert Status: good" in text
    assert f"Serial Number: {serial_of(setup.leaves['good.test'])}" in text


@pytest.mark.parametrize("tls12", [True, False], ids=["tls1.2", "tls1.3"])
def test_pyopenssl_receives_the_file_bytes(setup: Setup, tls12: bool) -> None:
    stapled, raw, answer = pyopenssl_fetch(setup, "good.test", tls12=tls12)
    assert stapled == setup.files["good.test"].read_bytes()
    assert b"backend A path /ocsp" in answer
    if tls12:  # TLS 1.2 sends CertificateStatus in clear: the bytes are on the wire
        assert stapled in raw


def test_a_client_that_does_not_ask_gets_none(setup: Setup) -> None:
    stapled, raw, answer = pyopenssl_fetch(setup, "good.test", ask=False, tls12=True)
    assert stapled is None  # the client-side callback only runs for a request
    assert setup.files["good.test"].read_bytes() not in raw
    assert b"backend A path /ocsp" in answer
    assert "OCSP response" not in s_client(setup, "good.test", "-tls1_2")


@pytest.mark.parametrize(("sni", "reason"), [
    ("expired.test", "expired at"),
    ("other.test", "it is for another certificate"),
])
def test_expired_or_mismatching_is_not_stapled_and_warned_once(setup: Setup, sni: str,
                                                                reason: str) -> None:
    for _ in range(3):  # each connection spawns a worker: the file is not re-judged
        stapled, _raw, answer = pyopenssl_fetch(setup, sni)
        assert stapled == b"" and b"backend A path /ocsp" in answer
    assert "OCSP response: no response sent" in s_client(setup, sni, "-status")
    warnings = [r for r in setup.titus.records()
                if r.get("event") == "ocsp-not-stapled" and r.get("vhost") == sni]
    assert len(warnings) == 1, warnings
    assert warnings[0]["level"] == "WARNING" and reason in warnings[0]["reason"]
    assert warnings[0]["file"] == str(setup.files[sni])


def test_a_replaced_file_reaches_new_connections_without_sighup(setup: Setup) -> None:
    path, leaf = setup.files["fresh.test"], setup.leaves["fresh.test"]
    old = path.read_bytes()
    assert pyopenssl_fetch(setup, "fresh.test")[0] == old
    new = setup.ca.ocsp_response(leaf.cert, "revoked")
    staging = path.with_suffix(".new")
    staging.write_bytes(new)
    os.replace(staging, path)
    time.sleep(1.2)  # the supervisor looks at a file at most once a second
    # Workers forked before the change (the idle spare) still hold the old bytes;
    # every worker forked after it staples the new ones.
    seen = [pyopenssl_fetch(setup, "fresh.test")[0] for _ in range(4)]
    assert new in seen, "the new response never arrived"
    first_new = seen.index(new)
    assert first_new <= 2 and set(seen[first_new:]) == {new}, seen
    assert set(seen[:first_new]) <= {old}
    assert "Cert Status: revoked" in s_client(setup, "fresh.test", "-status")
    records = setup.titus.records()
    assert not any(r.get("event") in ("reloaded", "reload-refused") for r in records)
    loaded = [r for r in records
              if r.get("event") == "ocsp-response-loaded" and r.get("vhost") == "fresh.test"]
    assert [r["status"] for r in loaded] == ["good", "revoked"]
    assert loaded[1]["level"] == "WARNING"  # a revoked certificate is worth a warning


def test_stapling_workers_stay_inside_their_policy(setup: Setup) -> None:
    assert pyopenssl_fetch(setup, "good.test")[0]
    records = setup.titus.wait_connections(1)
    assert records and all(r["outcome"] == "ok" for r in records), \
        [(r["outcome"], r.get("violation")) for r in records if r["outcome"] != "ok"]


def test_a_reload_keeps_stapling(setup: Setup) -> None:
    assert setup.titus.proc is not None
    setup.titus.proc.send_signal(signal.SIGHUP)
    setup.titus.wait_event(lambda r: r.get("event") == "reloaded", 20)
    # The reload killed the idle workers of the old generation; every new one staples.
    for _ in range(2):
        assert pyopenssl_fetch(setup, "good.test")[0] == setup.files["good.test"].read_bytes()
    loaded = [r for r in setup.titus.records()
              if r.get("event") == "ocsp-response-loaded" and r.get("vhost") == "good.test"]
    assert len(loaded) == 2  # once per generation


def test_a_missing_file_is_a_one_line_config_error(tmp_path: Path, setup: Setup) -> None:
    leaf = setup.leaves["good.test"]
    config = tmp_path / "titus.conf"
    config.write_text(f"listen 127.0.0.1:0\nkey {leaf.key}\ncert {leaf.cert}\n"
                      f"backend 127.0.0.1\nbackend-port 9\nocsp-response {tmp_path}/none.der\n")
    code, out, err = run_cli(config)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"titus: {config}:6: ocsp-response {tmp_path}/none.der: cannot read: "
        "No such file or directory"]
