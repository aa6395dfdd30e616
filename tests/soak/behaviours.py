"""Client behaviours for the churn soak, good and bad, each one real TCP + TLS
(Python's ssl) against a titus on 127.0.0.1.

Every connection comes from its own loopback source address (127.a.b.c), so
titus's connection record names the client that made it.  A behaviour raises
`Broken` when titus did something wrong from the client's side (a wrong reply,
no close, a hang); a behaviour that misbehaves on purpose may see errors,
which are expected.  Every wait is bounded by TIMEOUT.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.titus_harness import client_hello, pattern

TIMEOUT = 10.0
SNI_HTTP, SNI_BIG = "a.test", "big.test"
BIG_REPLY = 4 << 20  # what the big.test backend sends every client
LINGER_RESET = (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder)

# Outcomes no client behaviour may ever cause: titus's own failures.
NEVER = {"worker-died", "killed", "policy-violation", "timeout", "backend-failed", "no-vhost"}


class Broken(Exception):
    """titus misbehaved as this client sees it."""


@dataclass(frozen=True)
class Client:
    index: int
    addr: tuple[str, int]
    ctx: ssl.SSLContext
    rng: random.Random

    @property
    def source(self) -> str:
        return source_address(self.index)

    def tcp(self) -> socket.socket:
        return socket.create_connection(self.addr, timeout=TIMEOUT,
                                        source_address=(self.source, 0))

    def tls(self, sni: str = SNI_HTTP) -> ssl.SSLSocket:
        raw = self.tcp()
        try:
            return self.ctx.wrap_socket(raw, server_hostname=sni)
        except BaseException:
            raw.close()
            raise

    def request(self, close: bool = True) -> bytes:
        extra = "Connection: close\r\n" if close else ""
        return f"GET /soak/{self.index} HTTP/1.1\r\nHost: a.test\r\n{extra}\r\n".encode()

    def expected_body(self) -> bytes:
        return f"backend A path /soak/{self.index}\n".encode()


def source_address(index: int) -> str:
    """A loopback address of its own for connection `index` (up to 250**3)."""
    return f"127.{index // 62500 % 250 + 1}.{index // 250 % 250 + 1}.{index % 250 + 1}"


def read_all(tls: ssl.SSLSocket, size: int = 65536, pause: float = 0.0) -> bytes:
    """Everything until titus closes (close_notify or FIN), bounded in calls and time."""
    data, deadline = b"", time.monotonic() + TIMEOUT
    for _ in range(10_000):
        if time.monotonic() > deadline:
            raise Broken(f"no end of reply after {len(data)} bytes in {TIMEOUT}s")
        try:
            chunk = tls.recv(size)
        except ssl.SSLEOFError:  # FIN without close_notify
            return data
        if not chunk:
            return data
        data += chunk
        if pause:
            time.sleep(pause)
    raise Broken("reply never ended")


def check_reply(client: Client, data: bytes) -> None:
    if not (data.startswith(b"HTTP/1.") and data.endswith(client.expected_body())):
        raise Broken(f"wrong reply {data[-80:]!r}")


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    sock.close()


def wait_closed(sock: socket.socket) -> None:
    """titus must close (FIN or RST) this connection within TIMEOUT; data is dropped."""
    deadline = time.monotonic() + TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        try:
            if not sock.recv(65536):
                return
        except OSError:
            return
    raise Broken(f"titus did not close within {TIMEOUT}s")


# -- the behaviours --------------------------------------------------------------------


def full(client: Client) -> None:
    """A whole request and response, then titus's close."""
    with client.tls() as tls:
        tls.sendall(client.request())
        check_reply(client, read_all(tls))


def half_close(client: Client) -> None:
    """Request, TCP half-close (no close_notify), then read the whole reply."""
    with client.tls() as tls:
        tls.sendall(client.request(close=False))
        socket.socket.shutdown(tls, socket.SHUT_WR)  # SSLSocket.shutdown would drop TLS
        check_reply(client, read_all(tls))


def slow(client: Client) -> None:
    """The request in pieces, the reply a few bytes at a time."""
    with client.tls() as tls:
        request = client.request()
        for i in range(0, len(request), 16):
            tls.sendall(request[i:i + 16])
            time.sleep(0.02)
        check_reply(client, read_all(tls, size=16, pause=0.002))


def close_after_handshake(client: Client) -> None:
    client.tls().close()


def close_mid_handshake(client: Client) -> None:
    """The ClientHello, then FIN."""
    with client.tcp() as sock:
        sock.sendall(client_hello(client.ctx, SNI_HTTP))


def connect_and_close(client: Client) -> None:
    client.tcp().close()


def garbage(client: Client) -> None:
    """Bytes that are not TLS: titus must close.  The first byte is never a handshake
    record's, and there are at least the 5 bytes of a record header to judge by.  Nor
    may they start a record OpenSSL would wait for the rest of: a second byte of 3 is
    a TLS record's major version (the length that follows, up to 64 KiB, is never
    sent), a third byte of 1 after 0x80 an SSLv2 ClientHello's."""
    with client.tcp() as sock:
        rng = client.rng
        data = bytes([rng.choice(b"GPX\x00\x80\xff"), rng.randrange(4, 256),
                      rng.randrange(2, 256)]) + rng.randbytes(rng.randrange(5, 597))
        with contextlib.suppress(ConnectionError):
            sock.sendall(data)
        wait_closed(sock)


def reset_mid_request(client: Client) -> None:
    """Half a request, then RST (SO_LINGER 0)."""
    tls = client.tls()
    tls.sendall(client.request()[:20])
    reset(tls)


def reset_mid_stream(client: Client) -> None:
    """Part of a 4 MiB reply, then RST."""
    tls = client.tls(SNI_BIG)
    tls.sendall(b"give me everything\n")
    got = 0
    want = client.rng.randrange(1, BIG_REPLY // 2)
    while got < want:
        chunk = tls.recv(65536)
        if not chunk:
            raise Broken(f"the stream ended after {got} bytes")
        if got == 0 and chunk != pattern(len(chunk)):
            raise Broken("wrong bytes from the stream")
        got += len(chunk)
    reset(tls)


def never_reads(client: Client) -> None:
    """Asks for 4 MiB and never reads it; closes with it unread (the kernel sends RST)."""
    tls = client.tls(SNI_BIG)
    tls.sendall(b"give me everything\n")
    time.sleep(0.3)
    tls.close()


@dataclass(frozen=True)
class Behaviour:
    name: str
    run: Callable[[Client], None]
    weight: int
    outcomes: frozenset[str] | None  # the record's outcome; None: anything not in NEVER
    errors_expected: bool = False  # client-side errors (resets, alerts) are part of it


BEHAVIOURS = (
    Behaviour("full", full, 30, frozenset({"ok"})),
    Behaviour("half-close", half_close, 10, frozenset({"ok"})),
    Behaviour("slow", slow, 5, frozenset({"ok"})),
    Behaviour("close-after-handshake", close_after_handshake, 10,
              frozenset({"ok", "client-reset"})),
    Behaviour("close-mid-handshake", close_mid_handshake, 10,
              frozenset({"handshake-failed", "client-reset"}), errors_expected=True),
    Behaviour("connect-close", connect_and_close, 5, frozenset({"handshake-failed"})),
    Behaviour("garbage", garbage, 10, frozenset({"handshake-failed"})),
    Behaviour("reset-mid-request", reset_mid_request, 10, None, errors_expected=True),
    Behaviour("reset-mid-stream", reset_mid_stream, 5, None, errors_expected=True),
    Behaviour("never-reads", never_reads, 5, None, errors_expected=True),
)


def plan(count: int, seed: int) -> list[Behaviour]:
    rng = random.Random(seed)
    return rng.choices(BEHAVIOURS, weights=[b.weight for b in BEHAVIOURS], k=count)


def attempt(behaviour: Behaviour, client: Client) -> str | None:
    """Run one behaviour; None if titus behaved, else what went wrong."""
    try:
        behaviour.run(client)
    except Broken as e:
        return str(e)
    except TimeoutError as e:
        return f"hang: {e}"
    except (OSError, ssl.SSLError) as e:
        if not behaviour.errors_expected:
            return f"{type(e).__name__}: {e}"
    return None
