"""Real clients through a real titus to real backends: curl, openssl s_client,
Python's ssl and pyOpenSSL (its own bundled OpenSSL), TLS 1.2 and 1.3, RSA-2048
and ECDSA P-256, vhosts chosen by SNI and by local address.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess

import pytest
from OpenSSL import SSL

from tests.pki import CA
from tests.titus_harness import HTTPBackend, Titus

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
REQUEST = b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    ca = CA(tmp / "pki")
    rsa_leaf = ca.issue("a.test", "rsa2048")
    ec_leaf = ca.issue("b.test", "p256", extra_names=("*.b.test",))
    local_leaf = ca.issue("local.test", "p256", extra_names=("127.0.0.2",))
    with HTTPBackend("A") as a, HTTPBackend("B") as b, HTTPBackend("C") as c:
        config = f"""
listen 127.0.0.1:0
listen 127.0.0.2:0
min-spare-children 2
max-children 16
max-handshake-time 5

vhost
	local-address 127.0.0.2
	key {local_leaf.key}
	cert {local_leaf.cert}
	backend 127.0.0.1
	backend-port {c.port}

vhost
	sni-name a.test
	key {rsa_leaf.key}
	cert {rsa_leaf.cert}
	backend 127.0.0.1
	backend-port {a.port}

vhost
	sni-name b.test
	sni-name *.b.test
	key {ec_leaf.key}
	cert {ec_leaf.cert}
	backend localhost
	backend-port {b.port}
"""
        with Titus(tmp, config) as titus:
            yield titus, ca


def python_get(ca: CA, addr: tuple[str, int], sni: str | None, version: str
               ) -> tuple[bytes, dict]:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    ctx.minimum_version = ctx.maximum_version = VERSIONS[version]
    if sni is None:
        ctx.check_hostname = False
    with socket.create_connection(addr, timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as tls:
        tls.sendall(REQUEST)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        info = {"version": tls.version(), "cipher": tls.cipher()[0],
                "cn": dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]}
        return data, info


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("sni,backend,kx", [("a.test", "A", "ECDHE-RSA"),
                                            ("b.test", "B", "ECDHE-ECDSA"),
                                            ("x.b.test", "B", "ECDHE-ECDSA")])
def test_python_ssl(setup, version, sni, backend, kx):
    titus, ca = setup
    body, info = python_get(ca, ("127.0.0.1", titus.addresses[0][1]), sni, version)
    assert body.endswith(f"backend {backend} path /hello\n".encode())
    assert info["version"] == f"TLSv{version}"
    assert info["cn"] == sni.removeprefix("x.")
    if version == "1.2":
        assert info["cipher"].startswith(kx)


def test_local_address_picks_vhost(setup):
    titus, ca = setup
    addr = titus.addresses[1]
    assert addr[0] == "127.0.0.2"
    body, info = python_get(ca, addr, "local.test", "1.3")
    assert body.endswith(b"backend C path /hello\n")
    # The local-address vhost comes first and has no sni-name: it wins
    # whatever name the client sends.
    body, info = python_get(ca, addr, None, "1.2")
    assert body.endswith(b"backend C path /hello\n") and info["cn"] == "local.test"


def test_no_matching_vhost_is_closed(setup):
    titus, ca = setup
    port = titus.addresses[0][1]
    with pytest.raises((ssl.SSLError, ConnectionError)):
        python_get(ca, ("127.0.0.1", port), "nobody.test", "1.3")
    record = titus.wait_event(lambda r: r.get("event") == "connection"
                              and r.get("outcome") == "no-vhost")
    assert "nobody.test" in record["detail"]


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("sni,backend,kx", [("a.test", "A", b"ECDHE-RSA"),
                                            ("b.test", "B", b"ECDHE-ECDSA")])
def test_pyopenssl(setup, version, sni, backend, kx):
    titus, ca = setup
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    v = SSL.TLS1_2_VERSION if version == "1.2" else SSL.TLS1_3_VERSION
    ctx.set_min_proto_version(v)
    ctx.set_max_proto_version(v)
    ctx.load_verify_locations(str(ca.path))
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: args[-1])
    sock = socket.create_connection(("127.0.0.1", titus.addresses[0][1]), timeout=10)
    sock.settimeout(None)  # pyOpenSSL wants a blocking socket
    conn = SSL.Connection(ctx, sock)
    conn.set_tlsext_host_name(sni.encode())
    conn.set_connect_state()
    conn.do_handshake()
    conn.sendall(REQUEST)
    data = b""
    try:
        while True:
            data += conn.recv(65536)
    except SSL.ZeroReturnError:
        pass
    assert data.endswith(f"backend {backend} path /hello\n".encode())
    assert conn.get_protocol_version_name() == f"TLSv{version}"
    if version == "1.2":
        assert conn.get_cipher_name().encode().startswith(kx)
    conn.close()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("sni,backend", [("a.test", "A"), ("b.test", "B")])
def test_curl(setup, version, sni, backend):
    titus, ca = setup
    port = titus.addresses[0][1]
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(ca.path),
         "--resolve", f"{sni}:{port}:127.0.0.1", f"--tlsv{version}", "--tls-max", version,
         "-w", "%{http_code}", f"https://{sni}:{port}/curl"],
        capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == f"backend {backend} path /curl\n200"


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("sni,backend", [("a.test", "A"), ("b.test", "B")])
def test_openssl_s_client(setup, version, sni, backend):
    titus, ca = setup
    port = titus.addresses[0][1]
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", sni,
         "-CAfile", str(ca.path), "-verify_return_error", "-ign_eof",
         f"-tls{version.replace('.', '_')}"],
        input=REQUEST, capture_output=True, timeout=20)
    text = out.stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in text
    assert f"TLSv{version}" in text
    assert f"backend {backend} path /hello" in text


def test_connection_records(setup):
    titus, ca = setup
    python_get(ca, ("127.0.0.1", titus.addresses[0][1]), "a.test", "1.3")
    record = titus.wait_event(lambda r: r.get("event") == "connection" and r.get("sni") ==
                              "a.test" and r.get("outcome") == "ok")
    for field in ("client", "local", "vhost", "tls_version", "cipher", "bytes_in", "bytes_out",
                  "handshake_ms", "duration_ms", "worker_exit"):
        assert record[field] is not None, field
    assert record["bytes_in"] == len(REQUEST)
    assert record["worker_exit"] == 0 and record["violation"] is None
    # The backend connection handed to the worker: from the broker's own port to A's.
    local, _, peer = record["backend"].partition("->")
    a_block = titus.config_path.read_text().split("sni-name a.test")[1]
    a_port = int(a_block.split("backend-port")[1].split()[0])
    assert peer == f"127.0.0.1:{a_port}" and local.startswith("127.0.0.1:") and local != peer
