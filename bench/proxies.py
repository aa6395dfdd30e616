"""The TLS terminators under test, each pinned to the proxy CPU with its children.

Common TLS settings (where each proxy lets us set them):
  * TLS 1.2 and 1.3, ECDHE key exchange only, AES-GCM/ChaCha20 (titus's default
    list, given verbatim to stunnel and hitch), X25519 first;
  * no resumption for titus (none exists) and stunnel (`sessionResume = no`,
    `options = NO_TICKET`); hitch cannot turn it off (the probe in RESULTS.md
    says what each one really does).  The connection-rate client never offers
    a session anyway, so every measured handshake is a full one.
  * one core: hitch `--workers=1`; stunnel is one process (threads); titus is
    one supervisor + key holder + one jailed worker per connection.
  * pyfork (pyfork.py) is titus's process model without the isolation: the
    floor under titus's costs, same settings, same Python and OpenSSL.
  * titus04 (optional: `--titus04 PATH` to a binary built from AGWA/titus 0.4, the
    C++ original) forks a process per connection from one parent, signs in a
    separate key server, RSA keys only; it binds the any-address, which is why
    the whole benchmark runs in a network namespace of its own (run.py).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
from certs import CertSet

from sandbox.uids import process_uid

ROOT = Path(__file__).resolve().parent.parent
PROXY_NAMES = ("titus", "titus04", "pyfork", "stunnel", "hitch")
# The titus 0.4 binary, when the run was given one (run.py --titus04).
TITUS04_BINARY: Path | None = None

# titus's default TLS <= 1.2 cipher list (titus/config/model.py DEFAULT_CIPHERS).
CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
           "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
           "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
# A uid range of its own, so the benchmark's jails never share uids with a titus
# that the test suite may be running on the same machine.
TITUS_UID_FIRST = 640_000
TITUS_UID_COUNT = 4096


@dataclass
class Proxy:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path
    notes: list[str] = field(default_factory=list)
    _log_offset: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset exec()s the proxy: same pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def new_log_records(self) -> list[dict[str, Any]]:
        """titus only: JSON records logged since the last call."""
        out: list[dict[str, Any]] = []
        try:
            with open(self.log, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except FileNotFoundError:
            return out
        end = data.rfind(b"\n") + 1
        self._log_offset += end
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if isinstance(rec, dict):
                    out.append(rec)
        return out


def titus_config(tmp: Path, certs: CertSet, port: int, backend_port: int) -> Path:
    conf = tmp / f"titus-{certs.kind}.conf"
    jail = tmp / f"titus-{certs.kind}-jail.toml"
    conf.write_text(
        f"listen 127.0.0.1:{port}\n"
        f"cert {certs.cert}\n"
        f"key {certs.key}\n"
        "backend 127.0.0.1\n"
        f"backend-port {backend_port}\n"
        "min-spare-children 16\n"
        "max-children 256\n"
        f"config {jail}\n")
    # uid-first/uid-count exist only in titus.toml ([jail]); titus.conf includes it.
    jail.write_text(f"[jail]\nuid-first = {TITUS_UID_FIRST}\nuid-count = {TITUS_UID_COUNT}\n")
    return conf


def start_titus(tmp: Path, certs: CertSet, backend_port: int) -> Proxy:
    port = common.free_port()
    conf = titus_config(tmp, certs, port, backend_port)
    log = tmp / f"titus-{certs.kind}.log"
    proc = common.start([sys.executable, "-m", "titus.cli", "--config", str(conf),
                         "--log-format", "json"], common.PROXY_CPU, log=log, cwd=ROOT)
    proxy = Proxy("titus", port, proc, log)
    deadline = time.monotonic() + 30
    started = False
    while time.monotonic() < deadline and not started:
        if proc.poll() is not None:
            raise common.BenchError(f"titus exited with {proc.returncode} at start-up: "
                                    f"{log.read_text(errors='replace')[-2000:]}")
        started = any(r.get("event") == "started" for r in proxy.new_log_records())
        time.sleep(0.05)
    if not started:
        raise common.BenchError("titus did not log 'started' within 30 s")
    wait_titus_spares(proxy, 16, timeout=30)
    return proxy


def titus_workers(proxy: Proxy) -> list[int]:
    """Live jailed children of the titus supervisor (workers and the key holder)."""
    return [p for p in common.tree(proxy.pid) if p != proxy.pid and process_uid(p) not in (0, None)]


def titus_zygotes(proxy: Proxy) -> list[int]:
    """The supervisor's unjailed children: the zygote that clones the workers."""
    return [p for p in common.tree(proxy.pid) if p != proxy.pid and process_uid(p) == 0]


def wait_titus_spares(proxy: Proxy, count: int, timeout: float) -> int:
    """Wait until titus has at least `count` + 1 (key holder) children; return how many."""
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n = len(titus_workers(proxy))
        if n >= count + 1:
            break
        time.sleep(0.05)
    return n


STUNNEL_CONFIG = """\
foreground = yes
syslog = no
pid =
[bench]
accept = 127.0.0.1:{port}
connect = 127.0.0.1:{backend}
cert = {cert}
key = {key}
sslVersionMin = TLSv1.2
sslVersionMax = TLSv1.3
ciphers = {ciphers}
curves = X25519:P-256:P-384
options = NO_TICKET
sessionResume = no
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
"""


def start_stunnel(tmp: Path, certs: CertSet, backend_port: int) -> Proxy:
    port = common.free_port()
    conf = tmp / f"stunnel-{certs.kind}.conf"
    conf.write_text(STUNNEL_CONFIG.format(port=port, backend=backend_port, cert=certs.cert,
                                          key=certs.key, ciphers=CIPHERS))
    log = tmp / f"stunnel-{certs.kind}.log"
    proc = common.start(["stunnel4", str(conf)], common.PROXY_CPU, log=log)
    common.wait_port(port, proc)
    return Proxy("stunnel", port, proc, log)


def start_hitch(tmp: Path, certs: CertSet, backend_port: int) -> Proxy:
    port = common.free_port()
    ocsp = tmp / "hitch-ocsp"
    ocsp.mkdir(exist_ok=True)
    log = tmp / f"hitch-{certs.kind}.log"
    proc = common.start(
        ["hitch", f"--frontend=[127.0.0.1]:{port}", f"--backend=[127.0.0.1]:{backend_port}",
         "--workers=1", "--backlog=1024", "--user=nobody", "--group=nogroup",
         "--tls-protos=TLSv1.2 TLSv1.3",
         f"--ciphers={CIPHERS}", f"--ocsp-dir={ocsp}", "--log-level=1", str(certs.combined)],
        common.PROXY_CPU, log=log)
    common.wait_port(port, proc)
    return Proxy("hitch", port, proc, log)


def start_pyfork(tmp: Path, certs: CertSet, backend_port: int) -> Proxy:
    port = common.free_port()
    log = tmp / f"pyfork-{certs.kind}.log"
    # -I -S: no site, no user paths: the smallest parent CPython allows.
    proc = common.start([sys.executable, "-I", "-S", str(ROOT / "bench" / "pyfork.py"), str(port),
                         str(backend_port), str(certs.cert), str(certs.key), CIPHERS],
                        common.PROXY_CPU, log=log)
    common.wait_port(port, proc)
    return Proxy("pyfork", port, proc, log)


TITUS04_CONFIG = """\
port {port}
network-user nobody
network-group nogroup
keyserver-user daemon
keyserver-group nogroup
chroot {chroot}
min-spare-children 16
max-children 256
ciphers {ciphers}
vhost
\tkey {key}
\tcert {cert}
\tbackend 127.0.0.1
\tbackend-port {backend}
"""


def start_titus04(tmp: Path, certs: CertSet, backend_port: int) -> Proxy:
    """titus 0.4 with titus's pool sizes: its own users (nobody for the network side,
    daemon for the key server) and an empty root-owned chroot directory."""
    if TITUS04_BINARY is None:
        raise common.BenchError("no titus 0.4 binary given (--titus04 PATH)")
    if certs.kind != "rsa2048":
        raise common.BenchError("titus 0.4 serves RSA keys only")
    port = common.free_port()
    chroot = tmp / "titus04-empty"
    chroot.mkdir(mode=0o755, exist_ok=True)
    conf = tmp / f"titus04-{certs.kind}.conf"
    conf.write_text(TITUS04_CONFIG.format(port=port, chroot=chroot, ciphers=CIPHERS,
                                          key=certs.key, cert=certs.cert,
                                          backend=backend_port))
    log = tmp / f"titus04-{certs.kind}.log"
    proc = common.start([str(TITUS04_BINARY), "--config", str(conf)], common.PROXY_CPU,
                        log=log)
    common.wait_port(port, proc)
    return Proxy("titus04", port, proc, log)


STARTERS = {"titus": start_titus, "titus04": start_titus04, "pyfork": start_pyfork,
            "stunnel": start_stunnel, "hitch": start_hitch}
