"""When spare workers keep failing to start, the supervisor backs off and says so."""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sandbox.forkserver import ForkServer
from sandbox.spec import BindMount
from tests.pki import CA
from titus import logs
from titus.config.load import load_config
from titus.supervisor import Supervisor

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")


def test_failing_spawns_back_off(tmp_path):
    leaf = CA(tmp_path / "pki").issue("a.test")
    conf = tmp_path / "titus.conf"
    conf.write_text(f"listen 127.0.0.1:0\ncert {leaf.cert}\nkey {leaf.key}\n"
                    "backend 127.0.0.1\nbackend-port 9\nmin-spare-children 2\n")
    stream = io.StringIO()
    logs.setup("json", stream=stream)
    sup = Supervisor(load_config(conf))
    # Every worker jail now fails at its rootfs layer.
    sup.worker_spec = replace(sup.worker_spec,
                              binds=(BindMount(Path("/nonexistent-titus-test"), Path("/x")),))
    attempts = []
    real_request = ForkServer.request

    def counting_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        attempts.append(time.monotonic())
        return real_request(self, *args, **kwargs)

    ForkServer.request = counting_request  # type: ignore[method-assign]
    try:
        sup.start()
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            sup.loop.run_once(0.05)
    finally:
        ForkServer.request = real_request  # type: ignore[method-assign]
        sup.close()
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    backoffs = [e for e in events if e["event"] == "spawn-backoff"]
    assert backoffs, events
    assert "rootfs" in backoffs[0]["reason"]
    # Without the back-off the loop would retry hundreds of times in 1.5 s
    # (each failed spawn costs ~1 ms); with it: a handful (0.1, 0.2, 0.4, 0.8 s).
    assert 3 <= len(attempts) <= 10, len(attempts)
    assert not sup.pool.workers
