"""pyfork: the floor under titus's design, measured as a fourth proxy.

A TLS terminator with titus's process model and nothing else: one fresh
CPython process per connection (forked from a small, warmed-up parent),
Python's ssl for TLS, and a plain pump.  No jail, no key holder (the key is
loaded in-process), no supervisor protocol, no logging, no metrics.  Whatever
pyfork costs per connection, titus cannot cost less; titus/pyfork is the price
of the isolation itself, pyfork/stunnel the price of a Python process per
connection.  It is a benchmark instrument, never a product: it holds the key
in every worker.

It imports nothing from titus (titus.worker.zygote has its own warm-up): its parent
stays as small as CPython with ssl can be.

Usage (run.py does this, pinned to the proxy CPU):
    python -I -S bench/pyfork.py PORT BACKEND_PORT CERT KEY CIPHERS
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import ssl
import sys

CHUNK = 256 * 1024


def context(cert: str, key: str, ciphers: str) -> ssl.SSLContext:
    """titus's defaults: TLS 1.2-1.3, its cipher list, no tickets, no compression."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(cert, key)
    return ctx


def warm_up(ctx: ssl.SSLContext) -> None:
    """One handshake in memory, as titus's zygote does, so children inherit OpenSSL's caches."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out)
    server = ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side, out, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
            peer_in.write(out.read())
    if server.version() is None:
        raise SystemExit("pyfork: warm-up handshake did not complete")


def pump(tls: ssl.SSLSocket, backend: socket.socket) -> None:
    """Both directions until the backend closes (client EOF half-closes the backend)."""
    client_open = True
    while True:
        want = [backend] + ([tls] if client_open else [])
        readable = [tls] if client_open and tls.pending() else select.select(want, [], [])[0]
        if tls in readable:
            data = tls.recv(CHUNK)
            if data:
                backend.sendall(data)
            else:
                client_open = False
                backend.shutdown(socket.SHUT_WR)
        if backend in readable:
            data = backend.recv(CHUNK)
            if not data:
                return
            tls.sendall(data)


def serve(conn: socket.socket, ctx: ssl.SSLContext, backend_port: int) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.settimeout(10)
    tls = ctx.wrap_socket(conn, server_side=True)
    backend = socket.create_connection(("127.0.0.1", backend_port), timeout=10)
    backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        pump(tls, backend)
    finally:
        backend.close()
        tls.close()


def reap(_signum: int, _frame: object) -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def main(argv: list[str]) -> None:
    port, backend_port, cert, key, ciphers = int(argv[0]), int(argv[1]), argv[2], argv[3], argv[4]
    ctx = context(cert, key, ciphers)
    warm_up(ctx)
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    # Reaped with waitpid, not left to SIG_IGN: only a waited-for child's CPU time
    # reaches the parent's cutime/cstime, where the benchmark reads it.
    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    gc.collect()
    gc.freeze()
    while True:
        try:
            conn, _ = listener.accept()
        except InterruptedError:
            continue
        pid = os.fork()
        if pid == 0:
            listener.close()
            code = 0
            try:
                serve(conn, ctx, backend_port)
            except (OSError, ValueError):
                code = 1
            os._exit(code)
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1:])
