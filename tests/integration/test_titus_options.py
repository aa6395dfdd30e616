"""titus.conf options have their effect: real handshakes against a real titus.

The config loader's unit tests cover parsing; here each option is proved by
what a client sees.  One titus serves most cases, one vhost per option,
chosen by SNI (the worker picks the vhost before TLS starts, so each vhost's
TLS settings apply whole).  Covered elsewhere: min-spare-children and
max-children (tests/integration/test_titus_pool.py), max-handshake-time
(tests/faults/test_titus_faults.py: silent client and slowloris), most of
local-address and sni-name (tests/integration/test_titus_tls.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pki import CA
from tests.titus_harness import (
    ROOT,
    HTTPBackend,
    Titus,
    free_port,
    is_running,
    run_cli,
    session_processes,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")

REQUEST = b"GET /opt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
AES128 = "ECDHE-ECDSA-AES128-GCM-SHA256"
AES256 = "ECDHE-ECDSA-AES256-GCM-SHA384"
DHE = "DHE-RSA-AES128-GCM-SHA256"
NAMES = ("restricted.test", "server-order.test", "client-order.test", "p384.test",
         "tls13only.test", "ownport.test", "plain.test")


class Setup:
    def __init__(self, titus: Titus, ca: CA, local_port: int) -> None:
        self.titus, self.ca, self.local_port = titus, ca, local_port

    @property
    def main(self) -> tuple[str, int]:
        return ("127.0.0.1", self.titus.addresses[0][1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("options")
    ca = CA(tmp / "pki")
    ec = ca.issue("ec.test", "p256", extra_names=NAMES)
    local_port = free_port()
    with HTTPBackend("A") as a, HTTPBackend("B") as b, HTTPBackend("C") as c, \
            HTTPBackend("D") as d:
        config = f"""
listen 127.0.0.1:0
listen 127.0.0.2:0
listen 127.0.0.1:{local_port}
min-spare-children 2
max-children 20
key {ec.key}
cert {ec.cert}
backend 127.0.0.1
backend-port {a.port}

vhost
	local-port {local_port}
	backend-port {c.port}

vhost
	local-address 127.0.0.2
	backend-port {d.port}

vhost
	sni-name restricted.test
	ciphers {AES256}

vhost
	sni-name server-order.test
	ciphers {AES256}:{AES128}
	honor-client-cipher-order no

vhost
	sni-name client-order.test
	ciphers {AES256}:{AES128}
	honor-client-cipher-order yes

vhost
	sni-name p384.test
	ecdhcurve secp384r1

vhost
	sni-name tls13only.test
	tlsv1.2 no

vhost
	sni-name ownport.test
	backend-port {b.port}

vhost
	sni-name plain.test
"""
        with Titus(tmp, config) as titus:
            yield Setup(titus, ca, local_port)


def python_get(setup: Setup, sni: str, *, version: ssl.TLSVersion | None = None,
               ciphers: str | None = None, addr: tuple[str, int] | None = None
               ) -> tuple[bytes, str, str]:
    """(response, negotiated version, negotiated cipher)."""
    ctx = ssl.create_default_context(cafile=str(setup.ca.path))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    with socket.create_connection(addr or setup.main, timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as tls:
        tls.sendall(REQUEST)
        data = b""
        for _ in range(100):
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
        return data, tls.version() or "", tls.cipher()[0]


def s_client(setup: Setup, sni: str, *args: str) -> tuple[int, str]:
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"{setup.main[0]}:{setup.main[1]}",
         "-servername", sni, "-CAfile", str(setup.ca.path), "-verify_return_error",
         "-ign_eof", *args],
        input=REQUEST, capture_output=True, timeout=20)
    return out.returncode, out.stdout.decode(errors="replace") + out.stderr.decode(
        errors="replace")


def served_by(data: bytes, backend: str) -> bool:
    return data.endswith(f"backend {backend} path /opt\n".encode())


# -- TLS options ----------------------------------------------------------------------


def test_ciphers_restricts_the_suites(setup):
    data, version, cipher = python_get(setup, "restricted.test", version=TLS12)
    assert served_by(data, "A") and version == "TLSv1.2" and cipher == AES256
    # The default vhost (Mozilla intermediate) negotiates what the client prefers
    # among its ECDSA suites; the restricted one only ever AES256.
    data, _, cipher = python_get(setup, "plain.test", version=TLS12, ciphers=AES128)
    assert served_by(data, "A") and cipher == AES128
    with pytest.raises(ssl.SSLError):
        python_get(setup, "restricted.test", version=TLS12, ciphers=AES128)


@pytest.mark.parametrize("sni,expected", [("server-order.test", AES256),
                                          ("client-order.test", AES128)])
def test_honor_client_cipher_order(setup, sni, expected):
    # The client prefers AES128, the server's list puts AES256 first.
    _, version, cipher = python_get(setup, sni, version=TLS12, ciphers=f"{AES128}:{AES256}")
    assert version == "TLSv1.2" and cipher == expected
    # Reversing the client's order flips only the vhost that honours it.
    _, _, cipher = python_get(setup, sni, version=TLS12, ciphers=f"{AES256}:{AES128}")
    assert cipher == AES256


# A TLS 1.2 client must also list its server certificate's curve (P-256 here)
# among its groups, or no ECDSA suite is usable whatever the key exchange;
# TLS 1.3 separates the two, so there the client offers one group only.
@pytest.mark.parametrize("version,without,with_p384", [
    ("-tls1_3", "X25519", "P-384"),
    ("-tls1_2", "X25519:P-256", "P-384:P-256"),
])
def test_ecdhcurve(setup, version, without, with_p384):
    code, text = s_client(setup, "p384.test", version, "-groups", with_p384)
    assert code == 0 and "backend A path /opt" in text, text[-1500:]
    assert "Server Temp Key: ECDH, secp384r1" in text
    code, text = s_client(setup, "p384.test", version, "-groups", without)
    assert code != 0 and "backend A" not in text
    # Without the option, the same client is fine, and gets X25519.
    code, text = s_client(setup, "plain.test", version, "-groups", without)
    assert code == 0 and "Server Temp Key: X25519" in text, text[-1500:]


def test_tlsv12_no(setup):
    with pytest.raises(ssl.SSLError):
        python_get(setup, "tls13only.test", version=TLS12)
    data, version, _ = python_get(setup, "tls13only.test", version=TLS13)
    assert served_by(data, "A") and version == "TLSv1.3"
    _, version, _ = python_get(setup, "plain.test", version=TLS12)
    assert version == "TLSv1.2"


def test_dhgroup_14_with_a_dhe_suite(tmp_path):
    """dhgroup 14 enables the DHE suites of `ciphers`: a DHE-only TLS 1.2 client works.

    DHE-RSA needs only a signature from the key holder, like ECDHE-RSA (no RSA
    decryption), so nothing in the design stands against it.
    """
    ca = CA(tmp_path / "pki")
    rsa = ca.issue("dhe.test", "rsa2048")
    with HTTPBackend("A") as backend, Titus(tmp_path, f"""
listen 127.0.0.1:0
min-spare-children 1
key {rsa.key}
cert {rsa.cert}
backend 127.0.0.1
backend-port {backend.port}
dhgroup 14
ciphers ECDHE-RSA-AES128-GCM-SHA256:{DHE}
""") as titus:
        setup = Setup(titus, ca, 0)
        # ECDHE still works: the client offers only the ECDHE suite.
        data, _, cipher = python_get(setup, "dhe.test", version=TLS12,
                                     ciphers="ECDHE-RSA-AES128-GCM-SHA256")
        assert served_by(data, "A") and cipher == "ECDHE-RSA-AES128-GCM-SHA256"
        data, version, cipher = python_get(setup, "dhe.test", version=TLS12, ciphers=DHE)
        assert served_by(data, "A") and version == "TLSv1.2" and cipher == DHE
        code, text = s_client(setup, "dhe.test", "-tls1_2", "-cipher", DHE)
        assert code == 0 and "Server Temp Key: DH, 2048 bits" in text, text[-1500:]


def test_no_dhe_without_a_dhgroup(setup):
    with pytest.raises(ssl.SSLError):
        python_get(setup, "plain.test", version=TLS12, ciphers="DHE-ECDSA-AES128-GCM-SHA256:"
                   + DHE)


# -- routing options ------------------------------------------------------------------


def test_backend_and_backend_port(setup):
    data, _, _ = python_get(setup, "plain.test")
    assert served_by(data, "A")  # the global backend and backend-port
    data, _, _ = python_get(setup, "ownport.test")
    assert served_by(data, "B")  # its own backend-port


def test_local_port_and_local_address(setup):
    data, _, _ = python_get(setup, "plain.test", addr=("127.0.0.1", setup.local_port))
    assert served_by(data, "C")  # local-port: first vhost, whatever the SNI
    port2 = setup.titus.addresses[1][1]
    data, _, _ = python_get(setup, "plain.test", addr=("127.0.0.2", port2))
    assert served_by(data, "D")
    data, _, _ = python_get(setup, "restricted.test")
    assert served_by(data, "A")  # sni-name on the main listener


def test_backend_omitted_means_the_local_address(tmp_path):
    """titus 0.4: with no `backend`, the backend is the address the client connected to."""
    ca = CA(tmp_path / "pki")
    leaf = ca.issue("x.test", "p256")
    with HTTPBackend("L", host="127.0.0.3") as backend, Titus(tmp_path, f"""
listen 127.0.0.3:0
min-spare-children 1
key {leaf.key}
cert {leaf.cert}
backend-port {backend.port}
""") as titus:
        setup = Setup(titus, ca, 0)
        data, _, _ = python_get(setup, "x.test", addr=("127.0.0.3", titus.port))
        assert served_by(data, "L")


# -- refused, superseded and daemon options ----------------------------------------------


def minimal(tmp: Path) -> tuple[CA, str]:
    ca = CA(tmp / "pki")
    leaf = ca.issue("x.test", "p256")
    return ca, f"key {leaf.key}\ncert {leaf.cert}\nbackend 127.0.0.1\nbackend-port 9\n"


@pytest.mark.parametrize("line", ["sslv3 yes", "tlsv1 yes", "tlsv1.1 yes", "compression yes"])
def test_refused_options(tmp_path, line):
    _, base = minimal(tmp_path)
    config = tmp_path / "titus.conf"
    config.write_text(f"listen 127.0.0.1:0\n{base}{line}\n")
    number = len(config.read_text().splitlines())
    code, out, err = run_cli(config)
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"titus: {config}:{number}: {line}:"), err


def test_superseded_options_start_with_a_notice(tmp_path):
    _, base = minimal(tmp_path)
    with HTTPBackend("A") as backend, Titus(tmp_path, f"""listen 127.0.0.1:0
network-user titus
chroot /var/lib/titus/empty
{base.replace("backend-port 9", f"backend-port {backend.port}")}""") as titus:
        notices = [r["notice"] for r in titus.records() if r.get("event") == "config-notice"]
        path = titus.config_path
        assert any(n.startswith(f"{path}:2: network-user titus: superseded") for n in notices)
        assert any(n.startswith(f"{path}:3: chroot /var/lib/titus/empty: superseded")
                   for n in notices), notices
        ctx = ssl.create_default_context(cafile=str(tmp_path / "pki" / "ca.pem"))
        with socket.create_connection(("127.0.0.1", titus.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="x.test") as tls:
            tls.sendall(REQUEST)
            assert tls.recv(65536).startswith(b"HTTP/1.1 200")


def test_daemon_and_pid_file(tmp_path):
    ca, base = minimal(tmp_path)
    port = free_port()
    pid_file = tmp_path / "run" / "titus.pid"
    pid_file.parent.mkdir()
    log = tmp_path / "titus.log"
    with HTTPBackend("A") as backend:
        config = tmp_path / "titus.conf"
        config.write_text(f"""daemon yes
pid-file {pid_file}
listen 127.0.0.1:{port}
min-spare-children 1
{base.replace("backend-port 9", f"backend-port {backend.port}")}""")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "titus.cli", "--config", str(config),
                 "--log-format", "json"], cwd=ROOT, stdout=out, stderr=out,
                stdin=subprocess.DEVNULL, start_new_session=True)
        daemon = None
        try:
            try:
                code = proc.wait(10)
            except subprocess.TimeoutExpired:
                pytest.fail("`daemon yes`: titus did not fork to the background "
                            f"(still in the foreground after 10 s): {log.read_text()[-500:]}")
            assert code == 0, log.read_text()[-1000:]
            assert pid_file.exists(), "no pid file"
            daemon = int(pid_file.read_text().strip())
            assert daemon != proc.pid and is_running(daemon)

            ctx = ssl.create_default_context(cafile=str(ca.path))
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    ctx.wrap_socket(raw, server_hostname="x.test") as tls:
                tls.sendall(REQUEST)
                assert tls.recv(65536).startswith(b"HTTP/1.1 200")

            os.kill(daemon, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while is_running(daemon) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not is_running(daemon), "SIGTERM did not stop the daemon"
            assert not pid_file.exists(), "the daemon left its pid file behind"
        finally:
            for pid in {proc.pid, daemon} - {None}:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        deadline = time.monotonic() + 2
        while session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)


# -- titus 0.4's own example ------------------------------------------------------------


def test_titus_04_example_config_checks(tmp_path):
    config = tmp_path / "titus.conf"
    shutil.copy(ROOT / "tests" / "data" / "titus.conf.example", config)
    ca = CA(tmp_path / "certs")
    for name in ("example.com", "www.example.com", "wildcard.example.com"):
        leaf = ca.issue(name, "rsa2048", filename=name)  # titus 0.4 served RSA keys only
        (tmp_path / "certs" / f"{name}.chained.crt").write_bytes(
            leaf.cert.read_bytes() + ca.path.read_bytes())
    code, out, err = run_cli(config, "--check")
    assert code == 0, err
    assert out == f"titus: {config}: OK (3 vhosts, 1 listeners)\n"
    text = config.read_text().splitlines()
    for option in ("network-user", "network-group", "keyserver-user", "keyserver-group",
                   "chroot"):
        line = next(i for i, t in enumerate(text, 1) if t.startswith(option))
        assert f"titus: note: {config}:{line}: {option} " in err, (option, err)
