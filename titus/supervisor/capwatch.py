"""The connection cap made visible: every one of max-children workers busy, new clients
waiting in the kernel's listen backlog.

Each time accept finds no worker and no room for one, the cap was hit: a counter
(titus_connection_cap_hits_total) and a WARNING record, at most one every
LOG_INTERVAL seconds, which says how many hits it stands for and how many
connections wait.  The waiting count is the listen sockets' accept queues
(backlog.py), also a gauge (titus_connections_waiting).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from titus import logs

if TYPE_CHECKING:
    from titus.supervisor.connections import Connections

LOG_INTERVAL = 10.0


class CapWatch:
    def __init__(self, connections: Connections) -> None:
        self.connections = connections
        self.unlogged = 0  # hits since the last record
        self.logged_at: float | None = None

    def hit(self) -> None:
        sup = self.connections.sup
        sup.metrics.cap_hits.inc()
        self.unlogged += 1
        now = time.monotonic()
        if self.logged_at is not None and now - self.logged_at < LOG_INTERVAL:
            return
        pool = sup.pool
        logs.event("connection-cap", logging.WARNING, max_children=sup.config.max_children,
                   busy=len(pool.workers) - len(pool.idle), hits=self.unlogged,
                   waiting=sup.listeners.waiting())
        self.unlogged, self.logged_at = 0, now
