"""titus/worker/zygote.py's warm-up: a handshake per TLS version, up to the remote signature,
in the zygote, and no trace of it in what workers report."""

from __future__ import annotations

import ssl

import pytest

from tests.pki import CA
from titus.worker import _worker, remotekey
from titus.worker.zygote import warm_up


@pytest.mark.parametrize(("low", "high", "reached"), [
    (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3, 2),
    (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3, 1),
    (ssl.TLSVersion.MINIMUM_SUPPORTED, ssl.TLSVersion.MAXIMUM_SUPPORTED, 2),
])
def test_warm_up_reaches_the_signature_per_version_and_leaves_no_trace(
        tmp_path, monkeypatch, low, high, reached):
    leaf = CA(tmp_path / "pki").issue("a.test")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version, ctx.maximum_version = low, high
    remotekey.install(ctx, leaf.cert, 0)
    _worker.reset_stats()  # as in the zygote: no key holder to ask
    seen = []
    real_reset = _worker.reset_stats

    def reset() -> None:
        seen.append(_worker.stats())
        real_reset()

    monkeypatch.setattr(_worker, "reset_stats", reset)
    warm_up([ctx])
    # Each handshake ran its key exchange and stopped at the signature it cannot get.
    assert [stats[:2] for stats in seen] == [(0, reached)]
    assert _worker.stats()[:2] == (0, 0)
