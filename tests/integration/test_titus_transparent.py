"""Transparent mode end to end, in three network namespaces of the test's own.

    client ns                 proxy ns (titus)                      backend ns
    10.1.0.2/24      cl0 --- pc0 10.1.0.1/24     pb0 198.51.100.1/24 --- bk0 198.51.100.10, .11
    2001:db8:1::2/64            2001:db8:1::1/64     2001:db8:2::1/64        2001:db8:2::10/64

The proxy is the gateway of both hosts (it does not forward).  An nftables
TPROXY rule hands the client's connections to the backend network to titus's
transparent listener; a "socket transparent" rule marks packets of titus's
own transparent sockets, and the fwmark rule + `local` route in table 100
deliver them locally: that is how the backend's replies to the client's
address reach titus's backend socket.  The backends answer with the TCP peer
and local address they saw, so the client reads what the backend saw.

titus(8): `transparent yes` keeps the client's source and takes the backend
from the connection's original destination (address and port);
`backend-only` keeps the source only, the backend coming from the config.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sandbox import libc
from tests.pki import CA
from tests.titus_harness import TCPBackend, Titus
from titus.logs import endpoint

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and titus need root"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (make deps: nftables)"),
]

T = TypeVar("T")
PORT = 4430  # titus's listener inside the proxy namespace
MARK, TABLE = 1, 100
CLIENT4, PROXY4_C, PROXY4_B = "10.1.0.2", "10.1.0.1", "198.51.100.1"
BACKEND4_A, BACKEND4_B = "198.51.100.10", "198.51.100.11"
CLIENT6, PROXY6_C, PROXY6_B, BACKEND6 = ("2001:db8:1::2", "2001:db8:1::1", "2001:db8:2::1",
                                         "2001:db8:2::10")
IFA_F_NODAD = 0x02  # no duplicate address detection: IPv6 addresses usable at once

NFT_RULES = f"""
table inet titus_transparent_test {{
    chain prerouting {{
        type filter hook prerouting priority mangle; policy accept;
        meta l4proto tcp socket transparent 1 meta mark set {MARK} accept
        iifname "pc0" ip daddr 198.51.100.0/24 meta l4proto tcp \
            tproxy ip to :{PORT} meta mark set {MARK} accept
        iifname "pc0" ip6 daddr 2001:db8:2::/64 meta l4proto tcp \
            tproxy ip6 to :{PORT} meta mark set {MARK} accept
    }}
}}
"""


@dataclass
class Lab:
    client: str
    proxy: str
    backend: str

    def path(self, ns: str) -> str:
        return f"/run/netns/{ns}"

    @property
    def in_proxy(self) -> tuple[str, ...]:
        """The command prefix that runs titus in the proxy namespace."""
        return ("nsenter", f"--net={self.path(self.proxy)}")


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """fn() in a short-lived thread that joined the network namespace at `path`.

    setns(CLONE_NEWNET) changes only the calling thread, and a socket keeps the
    namespace it was created in: sockets made by fn work from any thread later.
    """
    out: dict[str, object] = {}

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc.setns(fd, libc.CLONE_NEWNET)
            finally:
                os.close(fd)
            out["value"] = fn()
        except BaseException as e:  # re-raised in the caller
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    if "value" not in out:
        raise TimeoutError("in_netns: no result within 30 s")
    return out["value"]  # type: ignore[return-value]


def _up(ns: Any, ifname: str, addresses: tuple[tuple[str, int], ...]) -> None:
    """Addresses on `ifname` (in pyroute2 NetNS `ns`), then the link up."""
    idx = ns.link_lookup(ifname=ifname)[0]
    for address, prefixlen in addresses:
        ns.addr("add", index=idx, address=address, prefixlen=prefixlen,
                flags=IFA_F_NODAD if ":" in address else 0)
    ns.link("set", index=idx, state="up")


def build_lab(lab: Lab) -> None:
    """Namespaces, veth pairs created inside the proxy namespace, addresses, routes, rules."""
    from pyroute2 import NetNS, netns

    for name in (lab.client, lab.proxy, lab.backend):
        netns.create(name)
        with NetNS(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
    with NetNS(lab.proxy) as proxy:
        for ours, theirs, peer_ns in (("pc0", "cl0", lab.client), ("pb0", "bk0", lab.backend)):
            proxy.link("add", ifname=ours, kind="veth", peer=theirs)
            proxy.link("set", index=proxy.link_lookup(ifname=theirs)[0], net_ns_fd=peer_ns)
        _up(proxy, "pc0", ((PROXY4_C, 24), (PROXY6_C, 64)))
        _up(proxy, "pb0", ((PROXY4_B, 24), (PROXY6_B, 64)))
        lo = proxy.link_lookup(ifname="lo")[0]
        for family, everything in ((socket.AF_INET, "0.0.0.0/0"), (socket.AF_INET6, "::/0")):
            proxy.rule("add", family=family, fwmark=MARK, table=TABLE, priority=100)
            proxy.route("add", family=family, dst=everything, type="local", scope="host",
                        oif=lo, table=TABLE)
    for name, ifname, addresses, gateways in (
        (lab.client, "cl0", ((CLIENT4, 24), (CLIENT6, 64)), (PROXY4_C, PROXY6_C)),
        (lab.backend, "bk0", ((BACKEND4_A, 24), (BACKEND4_B, 24), (BACKEND6, 64)),
         (PROXY4_B, PROXY6_B)),
    ):
        with NetNS(name) as ns:
            _up(ns, ifname, addresses)
            for gateway in gateways:
                ns.route("add", dst="::/0" if ":" in gateway else "0.0.0.0/0",
                         gateway=gateway)
    # A new namespace inherits the host's IPv4 settings: the proxy must not forward, so
    # that a connection titus did not intercept cannot reach a backend at all.
    in_netns(lab.path(lab.proxy), lambda: [
        Path(f"/proc/sys/net/{knob}").write_text("0\n")
        for knob in ("ipv4/ip_forward", "ipv6/conf/all/forwarding")])
    subprocess.run([*lab.in_proxy, "nft", "-f", "-"], input=NFT_RULES.encode(), check=True,
                   timeout=30)


def remove_lab(lab: Lab) -> None:
    """Removing a namespace destroys its veth ends, and with them their peers."""
    from pyroute2 import netns

    for name in (lab.client, lab.proxy, lab.backend):
        if os.path.exists(lab.path(name)):
            netns.remove(name)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    tag = f"titus-tp{os.getpid()}"
    lab = Lab(f"{tag}-client", f"{tag}-proxy", f"{tag}-backend")
    try:
        build_lab(lab)
        yield lab
    finally:
        remove_lab(lab)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("pki"))


# -- the backend and the client ------------------------------------------------------------


class WitnessBackend(TCPBackend):
    """Tells each connection what it saw: "PEER_HOST PEER_PORT LOCAL_HOST LOCAL_PORT"."""

    def _one(self, conn: socket.socket) -> None:
        with conn:
            peer, local = conn.getpeername(), conn.getsockname()
            conn.sendall(f"{peer[0]} {peer[1]} {local[0]} {local[1]}\n".encode())
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(10)
            while conn.recv(65536):
                pass


def backend_in(lab: Lab, host: str) -> WitnessBackend:
    """A WitnessBackend listening on `host` (a free port) in the backend namespace."""
    return in_netns(lab.path(lab.backend), lambda: WitnessBackend(host))


@dataclass
class Seen:
    """One connection through titus: the client's own address, and what the backend saw."""

    client: tuple[str, int]
    peer: tuple[str, int]
    local: tuple[str, int]


def fetch(lab: Lab, ca: CA, where: str, address: tuple[str, int]) -> Seen | None:
    """A TLS connection from a socket in namespace `where`; None if titus closed it after
    the handshake without a byte (no backend)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    raw = in_netns(lab.path(where), lambda: socket.socket(family))
    ctx = ssl.create_default_context(cafile=str(ca.path))
    with raw:
        raw.settimeout(15)
        raw.connect(address)
        client = raw.getsockname()[:2]
        with ctx.wrap_socket(raw, server_hostname="transparent.test") as tls:
            tls.sendall(b"hello\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    if not data:
        return None
    peer_host, peer_port, local_host, local_port = data.decode().split()
    return Seen(client, (peer_host, int(peer_port)), (local_host, int(local_port)))


def titus_config(ca: CA, extra: str) -> str:
    """titus on PORT in the proxy namespace, with a fresh certificate."""
    leaf = ca.issue("transparent.test")
    return (f"port {PORT}\ncert {leaf.cert}\nkey {leaf.key}\nmin-spare-children 1\n"
            f"backend-connect-timeout 5\n{extra}")


# -- the tests ------------------------------------------------------------------------------


def test_transparent_yes_keeps_source_and_destination(lab: Lab, ca: CA, tmp_path: Path
                                                      ) -> None:
    """Each backend sees the client's own address and port; titus connected to the address
    and port the client had asked for (two IPv4 backends on different ports, one IPv6)."""
    config = titus_config(ca, "transparent yes\n")
    with backend_in(lab, BACKEND4_A) as a, backend_in(lab, BACKEND4_B) as b, \
            backend_in(lab, BACKEND6) as six, \
            Titus(tmp_path, config, prefix=lab.in_proxy) as titus:
        targets = [((BACKEND4_A, a.port), CLIENT4), ((BACKEND4_B, b.port), CLIENT4),
                   ((BACKEND6, six.port), CLIENT6)]
        seen_pairs = []
        for destination, client_host in targets:
            seen = fetch(lab, ca, lab.client, destination)
            assert seen is not None, titus.log_tail()
            assert seen.client[0] == client_host
            assert seen.peer == seen.client, "the backend must see the client's own address"
            assert seen.local == destination, "the backend is the original destination"
            seen_pairs.append((seen.client, destination))
        records = titus.wait_connections(3)
        assert [r["outcome"] for r in records] == ["ok"] * 3
        logged = {(r["client"], r["local"]) for r in records}  # IPv4-mapped ones as IPv4
        assert logged == {(endpoint(c), endpoint(d)) for c, d in seen_pairs}
        assert (a.accepted, b.accepted, six.accepted) == (1, 1, 1)


def test_backend_only_keeps_source(lab: Lab, ca: CA, tmp_path: Path) -> None:
    """The client connects to titus's own address; the configured backend sees the client.

    A client on titus's own host cannot lend its port (it holds it): the backend sees its
    address with another port, as titus 0.2 did.  An IPv6 client cannot be the source of a
    connection to an IPv4 backend: a clean close and a one-line reason in the log.
    """
    with backend_in(lab, BACKEND4_A) as backend:
        config = titus_config(ca, f"transparent backend-only\nbackend {BACKEND4_A}\n"
                                  f"backend-port {backend.port}\n")
        with Titus(tmp_path, config, prefix=lab.in_proxy) as titus:
            seen = fetch(lab, ca, lab.client, (PROXY4_C, PORT))
            assert seen is not None, titus.log_tail()
            assert seen.client[0] == CLIENT4 and seen.peer == seen.client
            assert seen.local == (BACKEND4_A, backend.port)

            local = fetch(lab, ca, lab.proxy, (PROXY4_C, PORT))
            assert local is not None, titus.log_tail()
            assert local.peer[0] == PROXY4_C and local.peer != local.client

            assert fetch(lab, ca, lab.client, (PROXY6_C, PORT)) is None
            records = titus.wait_connections(3)
            failed = [r for r in records if r["client"].startswith(f"[{CLIENT6}]:")]
            assert failed and failed[0]["notes"] == (
                f"backend: {BACKEND4_A}: transparent: cannot connect as the IPv6 client "
                f"{CLIENT6} to an IPv4 backend"), failed
            assert backend.accepted == 2


def test_without_transparent_the_backend_sees_titus_until_a_reload(lab: Lab, ca: CA,
                                                                   tmp_path: Path) -> None:
    """The control: without transparent mode the backend's peer is titus's own address.

    A reload (SIGHUP) into `transparent yes` makes the listener it keeps transparent:
    a connection to the backend's address is then intercepted and keeps its source.
    """
    with backend_in(lab, BACKEND4_A) as backend:
        config = titus_config(ca, f"backend {BACKEND4_A}\nbackend-port {backend.port}\n")
        with Titus(tmp_path, config, prefix=lab.in_proxy) as titus:
            seen = fetch(lab, ca, lab.client, (PROXY4_C, PORT))
            assert seen is not None, titus.log_tail()
            assert seen.client[0] == CLIENT4 and seen.peer[0] == PROXY4_B

            titus.config_path.write_text(titus_config(ca, "transparent yes\n"))
            assert titus.proc is not None
            titus.proc.send_signal(signal.SIGHUP)
            titus.wait_event(lambda r: r.get("event") in ("reloaded", "reload-refused"))
            assert not [r for r in titus.records() if r.get("event") == "reload-refused"]
            seen = fetch(lab, ca, lab.client, (BACKEND4_A, backend.port))
            assert seen is not None, titus.log_tail()
            assert seen.peer == seen.client and seen.local == (BACKEND4_A, backend.port)
