"""TLS grading of titus's DEFAULT configuration by independent scanners.

Two scanners that share no code with titus or with Python's ssl module look at
a real titus from outside, as an auditor would: testssl.sh (its own raw
ClientHellos over bash sockets, plus the system openssl) and sslscan (the
system OpenSSL, driven from C).  The configuration sets no TLS option at all,
so every finding is about titus's defaults, for an RSA-2048 certificate (the
vhost a client without SNI gets) and an ECDSA P-256 one (chosen by SNI).

Mozilla has no checker of its own and testssl.sh has no Mozilla check, so the
Mozilla "intermediate" profile is asserted from the scanners' data against the
lists below, copied from Mozilla's machine-readable guidelines, version 6.0:
https://ssl-config.mozilla.org/guidelines/6.0.json (configurations.intermediate).
6.0 dropped the DHE suites of 5.7 and lists X25519MLKEM768 first among the
curves (OpenSSL 3.0 has no ML-KEM, so it cannot be offered here).  Mozilla's
"server_preferred_order: false" is a permission, not a requirement: titus's
server-side cipher order is not graded.

On top of Mozilla: no session resumption at all (SECURITY.md: a ticket key in
every worker would let one compromised worker decrypt others' sessions).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.pki import CA
from tests.titus_harness import HTTPBackend, Titus

TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")
SSLSCAN = shutil.which("sslscan")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root"),
    pytest.mark.skipif(TESTSSL is None or SSLSCAN is None,
                       reason="needs testssl.sh and sslscan (Makefile SYSTEM_PACKAGES)"),
]

# Mozilla intermediate, guidelines 6.0 (URL above): OpenSSL names.
MOZILLA_TLS12_CIPHERS = frozenset({
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
})
MOZILLA_TLS13_SUITES = frozenset({
    "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
})
MOZILLA_CURVES = frozenset({"X25519MLKEM768", "X25519", "prime256v1", "secp384r1"})
MOZILLA_VERSIONS = ("TLS1_2", "TLS1_3")

SNI_EC = "ec.test"
SCAN_TIMEOUT = 150  # seconds per scanner run; an idle 2-core machine needs ~25 s
# -p protocols, -E ciphers per protocol, -f forward secrecy and curves, -S server
# defaults (resumption, certificate), -R renegotiation, -C compression (CRIME).
TESTSSL_CHECKS = ("-p", "-E", "-f", "-S", "-R", "-C")
# sslscan's names for the groups testssl.sh and OpenSSL call otherwise.
SSLSCAN_GROUPS = {"x25519": "X25519", "secp256r1 (NIST P-256)": "prime256v1",
                  "secp384r1 (NIST P-384)": "secp384r1", "secp521r1 (NIST P-521)": "secp521r1"}


@dataclass(frozen=True)
class Cipher:
    protocol: str  # testssl.sh's id: ssl2 ssl3 tls1 tls1_1 tls1_2 tls1_3
    name: str  # OpenSSL name
    kex: str  # e.g. "ECDH 253", "DH 2048", "RSA"
    encryption: str  # e.g. "AESGCM", "ChaCha20", "AES", "3DES"


@dataclass(frozen=True)
class Scan:
    findings: dict[str, str]  # testssl.sh id -> finding
    ciphers: list[Cipher]  # testssl.sh -E
    sslscan_protocols: dict[str, bool]  # "TLSv1.1" -> enabled
    sslscan_ciphers: set[tuple[str, str]]  # (protocol "TLSv1.2", OpenSSL name)
    sslscan_groups: set[str]


def run_testssl(target: list[str], out: Path) -> list[dict[str, str]]:
    cmd = [TESTSSL, "--quiet", "--color", "0", "--warnings", "batch", "--nodns", "none",
           "--openssl", shutil.which("openssl") or "openssl", "--connect-timeout", "10",
           *TESTSSL_CHECKS, "--jsonfile", str(out), *target]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=SCAN_TIMEOUT,
                          env={**os.environ, "TMPDIR": str(out.parent)})
    assert out.exists(), f"testssl.sh wrote no JSON ({done.returncode}): {done.stdout[-2000:]}"
    return json.loads(out.read_text())


def parse_testssl(records: list[dict[str, str]]) -> tuple[dict[str, str], list[Cipher]]:
    findings = {r["id"]: r["finding"] for r in records}
    ciphers = []
    for r in records:
        m = re.fullmatch(r"cipher-(\w+?)_x[0-9a-f]+", r["id"])
        if m is None:
            continue
        # "TLS 1.2   xc030   ECDHE-RSA-AES256-GCM-SHA384   ECDH 253   AESGCM   256   IANA name"
        fields = r["finding"].split()
        at = next(i for i, f in enumerate(fields) if re.fullmatch(r"x[0-9a-f]+", f))
        name, rest = fields[at + 1], fields[at + 2:]
        kex_len = 2 if len(rest) > 1 and rest[1].isdigit() else 1
        ciphers.append(Cipher(m.group(1), name, " ".join(rest[:kex_len]), rest[kex_len]))
    return findings, ciphers


def run_sslscan(host_port: str, sni: str | None, out: Path) -> ET.Element:
    cmd = [SSLSCAN, "--no-colour", f"--xml={out}", *([f"--sni-name={sni}"] if sni else []),
           host_port]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=SCAN_TIMEOUT)
    assert done.returncode == 0, f"sslscan failed: {done.stdout[-1000:]} {done.stderr[-1000:]}"
    return ET.parse(out).getroot()


def scan(port: int, sni: str | None, tmp: Path) -> Scan:
    tmp.mkdir()
    target = ["--ip", "127.0.0.1", f"{sni}:{port}"] if sni else [f"127.0.0.1:{port}"]
    findings, ciphers = parse_testssl(run_testssl(target, tmp / "testssl.json"))
    xml = run_sslscan(f"127.0.0.1:{port}", sni, tmp / "sslscan.xml")
    protocols = {f"{'SSLv' if p.get('type') == 'ssl' else 'TLSv'}{p.get('version')}":
                 p.get("enabled") == "1" for p in xml.iter("protocol")}
    return Scan(findings, ciphers, protocols,
                {(c.get("sslversion"), c.get("cipher")) for c in xml.iter("cipher")},
                {SSLSCAN_GROUPS.get(g.get("name"), g.get("name")) for g in xml.iter("group")})


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Scan]:
    tmp = tmp_path_factory.mktemp("grading")
    ca = CA(tmp / "pki")
    ec, rsa = ca.issue(SNI_EC, "p256"), ca.issue("rsa.test", "rsa2048")
    with HTTPBackend("grading") as backend:
        # Nothing about TLS: every TLS setting is titus's default.
        config = f"""
listen 127.0.0.1:0
min-spare-children 4
max-children 64
backend 127.0.0.1
backend-port {backend.port}

vhost
\tsni-name {SNI_EC}
\tkey {ec.key}
\tcert {ec.cert}

vhost
\tkey {rsa.key}
\tcert {rsa.cert}
"""
        with Titus(tmp, config) as titus, ThreadPoolExecutor(2) as pool:
            jobs = {"rsa": pool.submit(scan, titus.port, None, tmp / "rsa"),
                    "ec": pool.submit(scan, titus.port, SNI_EC, tmp / "ec")}
            return {kind: job.result() for kind, job in jobs.items()}


KINDS = ["rsa", "ec"]
KEY_SIZE = {"rsa": "RSA 2048 bits", "ec": "EC 256 bits"}
AUTH = {"rsa": "-RSA-", "ec": "-ECDSA-"}


@pytest.mark.parametrize("kind", KINDS)
def test_the_scanners_reached_the_intended_vhost(scans, kind):
    assert scans[kind].findings["cert_keySize"] == KEY_SIZE[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_protocols_are_exactly_tls12_and_tls13(scans, kind):
    f = scans[kind].findings
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert f[old] == "not offered", (old, f[old])
    for version in MOZILLA_VERSIONS:
        assert f[version].startswith("offered"), (version, f[version])
    assert {c.protocol for c in scans[kind].ciphers} == {"tls1_2", "tls1_3"}
    # sslscan agrees (it cannot speak SSLv2/3 through OpenSSL 3: they read as disabled).
    enabled = {p for p, on in scans[kind].sslscan_protocols.items() if on}
    assert enabled == {"TLSv1.2", "TLSv1.3"}, scans[kind].sslscan_protocols


@pytest.mark.parametrize("kind", KINDS)
def test_every_cipher_is_in_mozilla_intermediate(scans, kind):
    offered = {(c.protocol, c.name) for c in scans[kind].ciphers}
    tls12 = {name for proto, name in offered if proto == "tls1_2"}
    tls13 = {name for proto, name in offered if proto == "tls1_3"}
    assert tls12 <= MOZILLA_TLS12_CIPHERS, sorted(tls12 - MOZILLA_TLS12_CIPHERS)
    assert tls13 <= MOZILLA_TLS13_SUITES, sorted(tls13 - MOZILLA_TLS13_SUITES)
    # ... and all of the list that this certificate can authenticate.
    assert tls12 == {c for c in MOZILLA_TLS12_CIPHERS if AUTH[kind] in c}
    assert tls13 == MOZILLA_TLS13_SUITES
    # sslscan sees the same suites.
    seen = {(proto.lower().replace("v", "").replace(".", "_"), name)
            for proto, name in scans[kind].sslscan_ciphers}
    assert seen == offered, (seen, offered)


@pytest.mark.parametrize("kind", KINDS)
def test_only_ephemeral_ecdhe_or_dhe_key_exchange(scans, kind):
    scan = scans[kind]
    for c in scan.ciphers:
        assert c.kex.startswith(("ECDH ", "DH ")), f"{c.name}: key exchange {c.kex}"
        if c.protocol == "tls1_2":
            assert c.name.startswith(("ECDHE-", "DHE-")), f"{c.name}: not ECDHE/DHE"
    assert scan.findings["PFS"] == "offered"
    assert set(scan.findings["PFS_ciphers"].split()) == {c.name for c in scan.ciphers}
    curves = set(scan.findings["PFS_ECDHE_curves"].split())
    assert curves and curves <= MOZILLA_CURVES, curves
    assert scan.sslscan_groups == curves, (scan.sslscan_groups, curves)


@pytest.mark.parametrize("kind", KINDS)
def test_only_aead_ciphers(scans, kind):
    """No CBC, RC4, 3DES, NULL or export: Mozilla intermediate lists only AES-GCM and
    ChaCha20-Poly1305."""
    for c in scans[kind].ciphers:
        assert c.encryption in ("AESGCM", "ChaCha20"), f"{c.name}: {c.encryption}"


@pytest.mark.parametrize("kind", KINDS)
def test_no_compression_and_no_insecure_renegotiation(scans, kind):
    f = scans[kind].findings
    assert f["CRIME_TLS"] == "not vulnerable", f["CRIME_TLS"]
    assert f["secure_renego"] == "supported", f["secure_renego"]  # RFC 5746
    assert f["secure_client_renego"] == "not vulnerable", f["secure_client_renego"]


@pytest.mark.parametrize("kind", KINDS)
def test_no_session_resumption(scans, kind):
    f = scans[kind].findings
    assert f["sessionresumption_ticket"] == "not supported", f["sessionresumption_ticket"]
    assert f["sessionresumption_ID"].startswith("No Session ID"), f["sessionresumption_ID"]
    assert f["TLS_session_ticket"].startswith("no"), f["TLS_session_ticket"]
