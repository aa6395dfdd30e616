"""Moving bytes between the TLS client and the plain backend, both directions.

TLS runs over memory BIOs so the worker decides every socket call: this is
what lets a half-close cross the proxy in both directions (client EOF ->
backend SHUT_WR while the backend's reply still flows back; backend EOF ->
close_notify + SHUT_WR to the client while the client may still send), and
what bounds memory: a side is not read while the other side's queue is full.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from dataclasses import dataclass

CHUNK = 256 * 1024
HIGH_WATER = 1024 * 1024  # per direction: a client that never reads costs at most this
INTERACTIVE = 64 * 1024  # a read smaller than this is forwarded without waiting for poll


class Reset(Exception):
    """One side reset the connection; `side` says which."""

    def __init__(self, side: str) -> None:
        super().__init__(side)
        self.side = side


@dataclass
class Counters:
    bytes_in: int = 0  # plaintext client -> backend
    bytes_out: int = 0  # plaintext backend -> client


class TLSPump:
    """A TLS server connection on memory BIOs over a non-blocking client socket."""

    def __init__(
        self,
        client: socket.socket,
        tls: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
    ) -> None:
        self.client = client
        self.tls = tls
        self.incoming = incoming
        self.outgoing = outgoing
        self.to_client = bytearray()

    def collect_output(self) -> None:
        if self.outgoing.pending:
            self.to_client += self.outgoing.read()

    def flush(self) -> bool:
        """Send what is queued for the client; True when the queue is empty."""
        while self.to_client:
            try:
                sent = self.client.send(self.to_client)
            except BlockingIOError:
                return False
            except (ConnectionResetError, BrokenPipeError):
                raise Reset("client") from None
            del self.to_client[:sent]
        return True

    def receive(self) -> bool:
        """Feed the TLS layer from the socket; False on TCP EOF."""
        try:
            data = self.client.recv(CHUNK)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            raise Reset("client") from None
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True


def handshake(pump: TLSPump, deadline_s: float) -> None:
    """Complete the server handshake, waiting at most `deadline_s` seconds of silence."""
    poller = select.poll()
    fd = pump.client.fileno()
    while True:
        try:
            pump.tls.do_handshake()
            pump.collect_output()
            _flush_blocking(pump, poller, fd, deadline_s)
            return
        except ssl.SSLWantReadError:
            pump.collect_output()
            _flush_blocking(pump, poller, fd, deadline_s)
            poller.register(fd, select.POLLIN)
            if not poller.poll(deadline_s * 1000):
                raise TimeoutError("handshake timed out") from None
            if not pump.receive():
                raise ssl.SSLEOFError("client closed during the handshake") from None
        except ssl.SSLError:
            # Send the alert OpenSSL queued before giving up.
            pump.collect_output()
            with contextlib.suppress(Reset, TimeoutError):
                _flush_blocking(pump, poller, fd, 1.0)
            raise


def _flush_blocking(pump: TLSPump, poller: select.poll, fd: int, timeout_s: float) -> None:
    while not pump.flush():
        poller.register(fd, select.POLLOUT)
        if not poller.poll(timeout_s * 1000):
            raise TimeoutError("client does not read")
    poller.register(fd, select.POLLIN)


def relay(pump: TLSPump, backend: socket.socket, counters: Counters) -> None:
    """Pump until both directions are closed; raises Reset if a side resets."""
    client, tls = pump.client, pump.tls
    to_backend = bytearray()
    client_open = True  # client may still send
    backend_open = True  # backend may still send
    backend_write_shut = False
    client_write_shut = False
    notify_sent = False
    poller = select.poll()
    cfd, bfd = client.fileno(), backend.fileno()
    # A TLS 1.3 client sends its first request with its Finished: those bytes
    # are already in the BIO and will never make the socket readable again.
    client_open = _decrypt(pump, to_backend, counters)

    while True:
        # Propagate half-closes once everything before them has been delivered.
        if not client_open and not to_backend and not backend_write_shut:
            _shutdown(backend, "backend")
            backend_write_shut = True
        if not backend_open and not notify_sent:
            _close_notify(pump)
            notify_sent = True
        if notify_sent and not client_write_shut and not pump.to_client and pump.flush():
            _shutdown(client, "client")
            client_write_shut = True
        if client_write_shut and backend_write_shut:
            return

        cev = bev = 0
        if client_open and len(to_backend) < HIGH_WATER:
            cev |= select.POLLIN
        if pump.to_client:
            cev |= select.POLLOUT
        if backend_open and len(pump.to_client) < HIGH_WATER:
            bev |= select.POLLIN
        if to_backend:
            bev |= select.POLLOUT
        poller.register(cfd, cev)
        poller.register(bfd, bev)
        ready = dict(poller.poll())
        cr, br = ready.get(cfd, 0), ready.get(bfd, 0)

        # A small read (a request, an answer) is sent at once, without waiting for
        # the next poll to say the other socket is writable: one poll per request
        # and per answer instead of two.  Bulk reads wait for that poll, which lets
        # the next read join them: fewer, larger sends.
        if cr & (select.POLLIN | select.POLLHUP | select.POLLERR) and cev & select.POLLIN:
            queued = len(to_backend)
            still_open = pump.receive()
            client_open = _decrypt(pump, to_backend, counters) and still_open
            if len(to_backend) - queued < INTERACTIVE:
                br |= select.POLLOUT
        if br & (select.POLLIN | select.POLLHUP | select.POLLERR) and bev & select.POLLIN:
            queued = len(pump.to_client)
            backend_open = _read_backend(backend, tls, counters)
            pump.collect_output()
            if len(pump.to_client) - queued < INTERACTIVE:
                cr |= select.POLLOUT
        if to_backend and br & (select.POLLOUT | select.POLLERR):
            _send_backend(backend, to_backend)
        if pump.to_client and cr & (select.POLLOUT | select.POLLERR):
            pump.flush()


def _decrypt(pump: TLSPump, to_backend: bytearray, counters: Counters) -> bool:
    """Move decrypted client bytes to the backend queue; False at close_notify/EOF."""
    while True:
        try:
            data = pump.tls.read(CHUNK)
        except ssl.SSLWantReadError:
            pump.collect_output()  # e.g. a TLS 1.3 KeyUpdate answer
            return not pump.incoming.eof
        except ssl.SSLZeroReturnError:
            return False
        except ssl.SSLEOFError:  # TCP FIN without close_notify: treat as a half-close
            return False
        except ssl.SSLError:
            raise Reset("client") from None
        if not data:
            return False
        to_backend += data
        counters.bytes_in += len(data)


def _read_backend(backend: socket.socket, tls: ssl.SSLObject, counters: Counters) -> bool:
    try:
        data = backend.recv(CHUNK)
    except BlockingIOError:
        return True
    except ConnectionResetError:
        raise Reset("backend") from None
    if not data:
        return False
    try:
        tls.write(data)
    except ssl.SSLError:  # the client's TLS session failed (alert sent or received)
        raise Reset("client") from None
    counters.bytes_out += len(data)
    return True


def _send_backend(backend: socket.socket, queue: bytearray) -> None:
    try:
        sent = backend.send(queue)
    except BlockingIOError:
        return
    except (ConnectionResetError, BrokenPipeError):
        raise Reset("backend") from None
    del queue[:sent]


def _close_notify(pump: TLSPump) -> None:
    try:
        pump.tls.unwrap()
    except ssl.SSLWantReadError:
        pass  # close_notify sent; the client's may come later, and data with it
    except ssl.SSLError:
        pass
    pump.collect_output()


def _shutdown(sock: socket.socket, side: str) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError as e:
        if isinstance(e, ConnectionResetError):
            raise Reset(side) from None
