"""Prometheus metrics (prometheus_client) and a tiny endpoint served by the supervisor's loop.

The endpoint runs inside the event loop rather than prometheus_client's own
HTTP thread: the supervisor forks a jail per connection, and a forked child
must never inherit a lock held by another thread.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from titus.supervisor.loop import Loop

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600)
MAX_REQUEST = 8192
CLIENT_TIMEOUT = 5.0


NO_VHOST = "(none)"  # the vhost label of a connection no vhost took


class Metrics:
    """titus's metrics.  Names follow Prometheus's conventions (base units, _total for
    counters; tests run promtool's linter on them); no label value is empty."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The supervisor's own process: CPU, memory, open fds against its limit.
        ProcessCollector(registry=r)
        self.connections = Counter("titus_connections", "Connections, by outcome and vhost "
                                   f"(vhost {NO_VHOST}: no vhost took it)",
                                   ["outcome", "vhost"], registry=r)
        self.handshake = Histogram("titus_handshake_seconds", "TLS handshake time in the worker",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.duration = Histogram("titus_connection_seconds", "Accept to worker exit",
                                  buckets=_DURATION_BUCKETS, registry=r)
        self.bytes = Counter("titus_relayed_bytes", "Plaintext bytes relayed, by direction",
                             ["direction"], registry=r)
        self.workers = Gauge("titus_workers", "Worker processes, by state", ["state"],
                             registry=r)
        self.spawn = Histogram("titus_jail_spawn_seconds", "Time to build one worker jail",
                               buckets=_LATENCY_BUCKETS, registry=r)
        self.spawn_failures = Counter("titus_jail_spawn_failures", "Worker jails that failed",
                                      registry=r)
        self.violations = Counter("titus_seccomp_violations",
                                  "Jails killed by seccomp, by syscall", ["syscall"], registry=r)
        self.keyholder_restarts = Counter("titus_keyholder_restarts",
                                          "Times the key holder was restarted", registry=r)
        self.keyholder_ops = Counter("titus_keyholder_operations",
                                     "Signatures asked of the key holder, as workers report "
                                     "them, by result", ["result"], registry=r)
        self.forged = Counter("titus_forged_control_messages",
                              "Malformed or forbidden messages from workers", registry=r)
        self.reloads = Counter("titus_config_reloads", "Reloads (SIGHUP), by result",
                               ["result"], registry=r)
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self.reload_ok = Gauge("titus_config_last_reload_successful",
                               "1 if the last reload succeeded (or none was tried)", registry=r)
        self.reload_ok.set(1)
        self.reload_time = Gauge("titus_config_last_reload_success_timestamp_seconds",
                                 "When the configuration in use was loaded (start-up or reload)",
                                 registry=r)
        self.reload_time.set_to_current_time()
        self.generation = Gauge("titus_config_generation",
                                "Configurations loaded since start-up (1: the first)", registry=r)
        self.generation.set(1)
        self.max_children = Gauge("titus_max_children", "max-children of the configuration in "
                                  "use: workers at most", registry=r)
        self.cap_hits = Counter("titus_connection_cap_hits",
                                "Times every one of max-children workers was busy and new "
                                "connections had to wait in the listen backlog", registry=r)
        self.dns_refreshes = Counter("titus_backend_dns_refreshes",
                                     "Background re-resolutions of backend names (dns-refresh),"
                                     " by result", ["result"], registry=r)
        for result in ("changed", "unchanged", "failed"):
            self.dns_refreshes.labels(result)
        self.waiting = Gauge("titus_connections_waiting",
                             "Connections accepted by the kernel that titus has not taken "
                             "yet (the listen sockets' accept queues)", registry=r)
        # The labelled children a connection updates, looked up once (labels() is most
        # of the cost of an update).
        self.bytes_in, self.bytes_out = self.bytes.labels("in"), self.bytes.labels("out")
        self.keyholder_ok = self.keyholder_ops.labels("ok")
        self.keyholder_failed = self.keyholder_ops.labels("failed")
        self._connections: dict[tuple[str, str], Any] = {}

    def reloaded(self, ok: bool) -> None:
        """Count a reload; a successful one is the new generation."""
        self.reloads.labels("success" if ok else "failure").inc()
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_time.set_to_current_time()
            self.generation.inc()

    def connection(self, outcome: str, vhost: str) -> Any:
        """The counter of connections with this outcome and vhost."""
        child = self._connections.get((outcome, vhost))
        if child is None:
            child = self._connections[(outcome, vhost)] = self.connections.labels(outcome, vhost)
        return child

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsEndpoint:
    """GET /metrics on a listening socket, answered from the event loop, one request each."""

    def __init__(self, loop: Loop, sock: socket.socket, metrics: Metrics) -> None:
        self.loop = loop
        self.sock = sock
        self.metrics = metrics
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        state = {"buf": b"", "deadline": time.monotonic() + CLIENT_TIMEOUT}
        timer = self.loop.call_later(CLIENT_TIMEOUT, lambda: self._close(conn))
        state["timer"] = timer
        self.loop.add_reader(conn.fileno(), lambda: self._read(conn, state))

    def _read(self, conn: socket.socket, state: dict) -> None:
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        state["buf"] += data
        if not data or len(state["buf"]) > MAX_REQUEST:
            self._close(conn)
            return
        if b"\r\n\r\n" not in state["buf"]:
            return
        state["timer"].cancel()
        line = state["buf"].split(b"\r\n", 1)[0].split()
        if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] in (b"/metrics",
                                                                                 b"/"):
            body, status, ctype = self.metrics.render(), b"200 OK", CONTENT_TYPE_LATEST.encode()
        else:
            body, status, ctype = b"not found\n", b"404 Not Found", b"text/plain"
        head = (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype +
                b"\r\nContent-Length: " + str(len(body)).encode() +
                b"\r\nConnection: close\r\n\r\n")
        self.loop.forget(conn.fileno())
        try:
            conn.setblocking(True)
            conn.settimeout(1.0)
            conn.sendall(head + body)
        except OSError:
            pass
        conn.close()

    def _close(self, conn: socket.socket) -> None:
        if conn.fileno() >= 0:
            self.loop.forget(conn.fileno())
            conn.close()

    def close(self) -> None:
        self.loop.forget(self.sock.fileno())
        self.sock.close()
