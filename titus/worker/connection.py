"""The per-connection worker: runs jailed, serves exactly one connection, exits.

Inside the jail it has three fds and nothing else: 0 the control channel to
the supervisor, 1 its channel to the key holder, 2 stderr.  It receives the
client socket, reads the ClientHello to choose the vhost, does the TLS
handshake (signatures by the key holder), asks the supervisor for the
backend, pumps bytes both ways, reports, and leaves with os._exit.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from titus.config.model import VHost
from titus.wire import control
from titus.wire.outcome import Outcome
from titus.worker import remotekey, stapling
from titus.worker.clienthello import NotTLS, parse_sni
from titus.worker.identity import client_identity
from titus.worker.pump import Counters, Reset, TLSPump, handshake, relay

CONTROL_FD = 0
KEYHOLDER_FD = 1


@dataclass
class WorkerTable:
    """What every worker inherits from the supervisor: built once, before forking.

    ``staples`` (one (response, expiry) per vhost, None without ``ocsp-response``)
    are installed into the contexts here; ``update_staples`` gives the workers
    forked from then on the new responses, since a worker can read no file.
    """

    vhosts: Sequence[VHost]
    contexts: Sequence[ssl.SSLContext]
    handshake_timeout: float
    keyholder_timeout: float = 2.0
    staple_values: Sequence[tuple[bytes | None, float | None] | None] = ()
    staples: list[stapling.Stapled | None] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        for ctx, value in zip(self.contexts, self.staple_values or [None] * len(self.contexts),
                              strict=True):
            staple = None if value is None else stapling.Stapled(*value)
            if staple is not None:
                stapling.enable(ctx, staple)
            self.staples.append(staple)

    def update_staples(self, values: Sequence[tuple[bytes | None, float | None] | None]
                       ) -> None:
        for staple, value in zip(self.staples, values, strict=True):
            if staple is not None and value is not None:
                staple.der, staple.expires = value


@dataclass
class Seen:
    """What this worker learned of its connection before it could fail: the SNI, the vhost
    chosen.  Reported in Finished, so a failed handshake's record keeps them.  (Module
    state: a worker serves one connection in its life.)"""

    sni: str | None = None
    vhost: int | None = None


SEEN = Seen()


class Finish(Exception):
    def __init__(self, outcome: Outcome, detail: str | None = None) -> None:
        super().__init__(detail or outcome)
        self.outcome = outcome
        self.detail = detail


def worker_main(table: WorkerTable) -> None:
    """Entry point inside the jail."""
    ctl = socket.socket(fileno=CONTROL_FD)
    remotekey.set_channel(socket.socket(fileno=KEYHOLDER_FD), table.keyholder_timeout)
    data, fds, _flags, _addr = socket.recv_fds(ctl, control.MAX_PACKET, 1)
    if not data or not fds:
        return  # the supervisor retired this idle worker
    conn = control.decode_from_supervisor(data)
    if not isinstance(conn, control.Connection):
        return
    client = socket.socket(fileno=fds[0])
    counters = Counters()
    outcome, detail = Outcome.OK, None
    try:
        serve(table, ctl, client, conn, counters)
    except Finish as e:
        outcome, detail = e.outcome, e.detail
    except Reset as e:
        outcome = Outcome(f"{e.side}-reset")
    except TimeoutError as e:
        outcome, detail = Outcome.TIMEOUT, str(e)
    signs = remotekey.stats()
    result = control.Finished(outcome, counters.bytes_in, counters.bytes_out, detail,
                              sum(signs.ok.values()), sum(signs.failed.values()),
                              sni=SEEN.sni, vhost=SEEN.vhost)
    ctl.send(control.encode(result))


def read_client_hello(client: socket.socket, timeout: float) -> tuple[bytes, str | None]:
    """Bytes of the ClientHello (to feed to TLS afterwards) and its server name."""
    data = b""
    poller = select.poll()
    poller.register(client.fileno(), select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        try:
            complete, sni = parse_sni(data)
        except NotTLS as e:
            raise Finish(Outcome.HANDSHAKE_FAILED, str(e)) from None
        if complete:
            return data, sni
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise TimeoutError("no ClientHello in time")
        try:
            chunk = client.recv(16384)
        except ConnectionResetError:
            raise Reset("client") from None
        except BlockingIOError:
            continue
        if not chunk:
            raise Finish(Outcome.HANDSHAKE_FAILED, "client closed before its ClientHello")
        data += chunk


def choose_vhost(vhosts: Sequence[VHost], local: tuple[str, int], sni: str | None
                 ) -> int | None:
    """Local address and port first, then SNI; the first match wins (titus 0.4)."""
    for i, vhost in enumerate(vhosts):
        if vhost.matches_local(local[0], local[1]) and vhost.matches_sni(sni):
            return i
    return None


def serve(
    table: WorkerTable,
    ctl: socket.socket,
    client: socket.socket,
    conn: control.Connection,
    counters: Counters,
) -> None:
    started = time.monotonic()
    client.setblocking(False)
    hello, sni = read_client_hello(client, table.handshake_timeout)
    SEEN.sni = sni
    index = SEEN.vhost = choose_vhost(table.vhosts, conn.local, sni)
    if index is None:
        raise Finish(Outcome.NO_VHOST, f"no vhost for {conn.local[0]}:{conn.local[1]} sni={sni}")

    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = table.contexts[index].wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(hello)
    pump = TLSPump(client, tls, incoming, outgoing)
    left = max(0.001, table.handshake_timeout - (time.monotonic() - started))
    try:
        handshake(pump, left)
    except ssl.SSLError as e:
        # OpenSSL's errors carry .reason; one raised by titus itself has its text alone
        # (str() of an SSLError made from one string shows the args tuple).
        text = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
        if isinstance(e, ssl.SSLCertVerificationError) and e.verify_message:
            text = f"client certificate: {e.verify_message}"  # e.g. "certificate revoked"
            raise Finish(Outcome.HANDSHAKE_FAILED, text) from None
        raise Finish(Outcome.HANDSHAKE_FAILED, getattr(e, "reason", None) or text) from None
    except Reset:
        # e.g. the client sent its ClientHello and closed: our answer drew a reset.
        raise Finish(Outcome.HANDSHAKE_FAILED, "the client reset the connection") from None
    cipher = tls.cipher()
    ctl.send(
        control.encode(
            control.HandshakeDone(
                vhost=index,
                sni=sni,
                version=tls.version() or "",
                cipher=cipher[0] if cipher else "",
                alpn=tls.selected_alpn_protocol(),
                handshake_ms=round((time.monotonic() - started) * 1000, 3),
                **client_identity(tls),
            )
        )
    )

    data, fds, _flags, _addr = socket.recv_fds(ctl, control.MAX_PACKET, 1)
    reply = control.decode_from_supervisor(data) if data else control.BackendFailed("supervisor")
    if not isinstance(reply, control.BackendReady) or not fds:
        _goodbye(pump)
        reason = reply.reason if isinstance(reply, control.BackendFailed) else "no backend"
        raise Finish(Outcome.BACKEND_FAILED, reason)
    backend = socket.socket(fileno=fds[0])
    backend.setblocking(False)
    try:
        relay(pump, backend, counters)
    finally:
        backend.close()


def _goodbye(pump: TLSPump) -> None:
    """Close the TLS session cleanly (close_notify) when there is no backend."""
    with contextlib.suppress(ssl.SSLError):
        pump.tls.unwrap()
    pump.collect_output()
    with contextlib.suppress(Reset):
        pump.flush()
