"""The zygote: the fork server (sandbox.forkserver) that clones titus's worker jails.

The supervisor execs one per configuration generation.  It imports only what a
worker needs, builds that generation's TLS contexts (public certificates, keys
held remotely) and clones every worker from itself: a small, quiet process
forks faster and leaves fewer copy-on-write faults to the worker than the
supervisor would, and a worker inherits nothing of the supervisor's memory
(other connections, logs, metrics).  The workers are the supervisor's
children (CLONE_PARENT): it reaps them and their uids are its to hand out.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.forkserver import Recipe
from sandbox.spec import JailSpec
from titus.config_model import VHost
from titus.remotekey import CertChain
from titus.tlsconfig import build_contexts
from titus.worker import WorkerTable, worker_main

WORKER = "worker"


@dataclass(frozen=True)
class ZygoteSetup:
    """Sent (pickled) by the supervisor: everything a generation's workers are made of."""

    worker_spec: JailSpec
    vhosts: tuple[VHost, ...]
    key_ids: tuple[int, ...]
    chains: tuple[CertChain, ...]  # by key id
    handshake_timeout: float
    keyholder_timeout: float
    staples: tuple[tuple[bytes | None, float | None] | None, ...]  # per vhost (OCSP)


def setup(arg: ZygoteSetup) -> dict[str, Recipe]:
    contexts = build_contexts(arg.vhosts, arg.key_ids, arg.chains)
    table = WorkerTable(vhosts=arg.vhosts, contexts=contexts,
                        handshake_timeout=arg.handshake_timeout,
                        keyholder_timeout=arg.keyholder_timeout,
                        staple_values=arg.staples)
    return {WORKER: Recipe(arg.worker_spec, worker_main, (table,),
                           update=table.update_staples)}
