"""titus/worker/pump.py: a half-close crosses the proxy in both directions, on socketpairs.

The worker's pump runs in a thread between two socketpairs: one to a TLS client
that drives its own memory BIOs (so it decides every TCP call and can half-close),
one to a plain "backend".  Only the root integration tests cover this with real
jails; here it takes milliseconds.  (The C worker brings its own tests.)
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.titus.test_config_support import make_cert
from titus.worker.pump import Counters, TLSPump, handshake, relay

TIMEOUT = 10.0


class Client:
    """A TLS client on memory BIOs over one end of a socketpair."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="example.com")

    def _flush(self) -> None:
        if self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())

    def _feed(self) -> None:
        data = self.sock.recv(65536)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                self._feed()

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def close_notify(self) -> None:
        """TLS half-close: close_notify, the socket stays open both ways."""
        with contextlib.suppress(ssl.SSLWantReadError):  # ours is sent; the peer's may follow
            self.tls.unwrap()
        self._flush()

    def tcp_half_close(self) -> None:
        """A FIN without close_notify, as many clients send."""
        self.sock.shutdown(socket.SHUT_WR)

    def read_to_end(self) -> bytes:
        """Everything until the server's close_notify (or its FIN)."""
        data = b""
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._feed()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return data
            if not chunk:
                return data
            data += chunk


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


class Worker(threading.Thread):
    """The worker's side: handshake, then relay between the client and the backend."""

    def __init__(self, client: socket.socket, backend: socket.socket,
                 ctx: ssl.SSLContext) -> None:
        super().__init__(daemon=True)
        self.client, self.backend, self.ctx = client, backend, ctx
        self.counters = Counters()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.client.setblocking(False)
            self.backend.setblocking(False)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = self.ctx.wrap_bio(incoming, outgoing, server_side=True)
            pump = TLSPump(self.client, tls, incoming, outgoing)
            handshake(pump, TIMEOUT)
            relay(pump, self.backend, self.counters)
        except BaseException as e:
            self.error = e

    def finish(self) -> Counters:
        self.join(TIMEOUT)
        assert not self.is_alive(), "relay did not return after both half-closes"
        assert self.error is None, repr(self.error)
        return self.counters


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = make_cert(Path(tmp_path_factory.mktemp("pump")))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)  # the test's own throwaway key
    server.options |= ssl.OP_IGNORE_UNEXPECTED_EOF  # as titus's contexts: a FIN is a half-close
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    return server, client


@pytest.fixture
def proxied(contexts: tuple[ssl.SSLContext, ssl.SSLContext]
            ) -> Iterator[tuple[Client, socket.socket, Worker]]:
    """(the TLS client, the backend's socket, the worker's thread), handshake done."""
    server_ctx, client_ctx = contexts
    client_end, worker_client = socket.socketpair()
    worker_backend, backend = socket.socketpair()
    for sock in (client_end, backend):
        sock.settimeout(TIMEOUT)
    worker = Worker(worker_client, worker_backend, server_ctx)
    worker.start()
    client = Client(client_end, client_ctx)
    client.handshake()
    yield client, backend, worker
    for sock in (client_end, worker_client, worker_backend, backend):
        sock.close()


@pytest.mark.parametrize("half_close", ["close_notify", "tcp_fin"])
def test_client_half_close_reaches_the_backend_and_the_reply_still_flows(
        proxied: tuple[Client, socket.socket, Worker], half_close: str) -> None:
    client, backend, worker = proxied
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    if half_close == "close_notify":
        client.close_notify()
    else:
        client.tcp_half_close()
    assert read_to_eof(backend) == b"GET / HTTP/1.0\r\n\r\n"  # then the backend sees EOF
    backend.sendall(b"HTTP/1.0 200 OK\r\n\r\nbody")
    backend.shutdown(socket.SHUT_WR)
    assert client.read_to_end() == b"HTTP/1.0 200 OK\r\n\r\nbody"
    counters = worker.finish()
    assert (counters.bytes_in, counters.bytes_out) == (18, 23)


def test_backend_half_close_reaches_the_client_which_may_still_send(
        proxied: tuple[Client, socket.socket, Worker]) -> None:
    client, backend, worker = proxied
    backend.sendall(b"220 banner\r\n")
    backend.shutdown(socket.SHUT_WR)
    assert client.read_to_end() == b"220 banner\r\n"  # close_notify after the banner
    client.send(b"QUIT\r\n")  # TLS 1.3: the other direction is still open
    client.tcp_half_close()
    assert read_to_eof(backend) == b"QUIT\r\n"
    counters = worker.finish()
    assert (counters.bytes_in, counters.bytes_out) == (6, 12)


def test_bytes_sent_before_a_half_close_all_arrive(
        proxied: tuple[Client, socket.socket, Worker]) -> None:
    """Nothing queued is lost: a half-close waits until the queue before it is delivered."""
    client, backend, worker = proxied
    payload = bytes(range(256)) * 4096  # 1 MiB: more than one read, up to the high water
    received = bytearray()
    reader = threading.Thread(target=lambda: received.extend(read_to_eof(backend)))
    reader.start()
    client.send(payload)
    client.tcp_half_close()
    reader.join(TIMEOUT)
    assert bytes(received) == payload
    backend.shutdown(socket.SHUT_WR)
    assert client.read_to_end() == b""
    assert worker.finish().bytes_in == len(payload)
