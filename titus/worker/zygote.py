"""The zygote: the fork server (sandbox.forkserver) that clones titus's worker jails.

The supervisor execs one per configuration generation, with a ZygoteSetup
(titus/wire/zygote.py).  It imports only what a
worker needs, builds that generation's TLS contexts (public certificates, keys
held remotely) and clones every worker from itself: a small, quiet process
forks faster and leaves fewer copy-on-write faults to the worker than the
supervisor would, and a worker inherits nothing of the supervisor's memory
(other connections, logs, metrics).  The workers are the supervisor's
children (CLONE_PARENT): it reaps them and their uids are its to hand out.
"""

from __future__ import annotations

import ssl

from sandbox.forkserver import Recipe
from titus.wire.zygote import WORKER, ZygoteSetup
from titus.worker import _worker
from titus.worker.connection import build_table, local_address
from titus.worker.contexts import build_contexts

_tables: list[_worker.Table] = []  # the zygote's tables live as long as it does


def setup(arg: ZygoteSetup) -> dict[str, Recipe]:
    contexts = build_contexts(arg.vhosts, arg.key_ids, arg.chains)
    table = build_table(arg.vhosts, contexts, arg.handshake_timeout, arg.keyholder_timeout,
                        arg.staples)
    _tables.append(table)
    warm_up(contexts, table)
    # The jail's last layer, then C only: sandbox's executor calls the table's entry point.
    # Most of a worker's code is libcrypto's: in 2 MB pages, a worker faults on none of it.
    # A worker runs _worker's code and OpenSSL's, nothing else the zygote loaded.
    return {WORKER: Recipe(arg.worker_spec, table.jail_entry, update=table.update_staples,
                           huge_text=("libcrypto.so",),
                           runs=("_worker.", "libssl.so", "libcrypto.so"))}


def warm_up(contexts: list[ssl.SSLContext], table: _worker.Table | None = None) -> None:
    """One handshake in memory per context and protocol version, here, once.

    OpenSSL 3 fetches and caches each algorithm implementation (ciphers,
    digests, key exchange groups) on first use; done in the zygote, every
    worker inherits the caches instead of building them again (measured: the
    first handshake in a fresh worker cost 2.6 ms of CPU, a warm one 0.3).  No
    key holder is reachable here, so each handshake stops at the signature,
    after the key exchange and the traffic keys; that failure is not counted.
    """
    hello = b""
    for ctx in contexts:
        low, high = ctx.minimum_version, ctx.maximum_version
        if low == ssl.TLSVersion.MINIMUM_SUPPORTED:
            low = ssl.TLSVersion.TLSv1_2
        if high == ssl.TLSVersion.MAXIMUM_SUPPORTED:
            high = ssl.TLSVersion.TLSv1_3
        for version in (v for v in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2)
                        if low <= v <= high):
            client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client_ctx.check_hostname = False
            client_ctx.verify_mode = ssl.CERT_NONE
            client_ctx.minimum_version = client_ctx.maximum_version = version
            hello = _handshake_in_memory(client_ctx, ctx) or hello
    if table is not None and hello:  # the vhost choice's probe, once
        table.probe(hello, local_address("127.0.0.1", 443))
    _worker.reset_stats()


def _handshake_in_memory(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> bytes:
    """Returns the client's first flight (a ClientHello), for the probe's warm-up."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="warm-up.invalid")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    hello = b""
    for _ in range(8):
        for side, out, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return hello  # the signature: no key holder here
            if out.pending:
                data = out.read()
                hello = hello or data
                peer_in.write(data)
    return hello
