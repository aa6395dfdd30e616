"""Churn soak: many connections with random client behaviours, several clients at
once, through one titus; afterwards titus and the machine are as they were.

TITUS_SOAK_CONNECTIONS connections (600 in `make test`, 10,000 in `make soak`),
bounded by TITUS_SOAK_SECONDS (default 0.12 s a connection, at least 60 s);
TITUS_SOAK_SEED replays a run.  The behaviours are in behaviours.py, from a full
request/response to a client that resets mid-stream or never reads.

After a warm-up (half of the connections) the footprint is taken once titus is
idle again; after the rest, again.  Between the two nothing may have leaked: no
process beyond the zygote, key holder and idle pool (by session and jail uid),
the supervisor's and the zygote's fds as they were, the supervisor's memory
within MEMORY_GROWTH_KIB, no jail mount, network namespace, cgroup or temporary
file left, and every connection logged exactly once with an outcome its
behaviour explains.
"""

from __future__ import annotations

import os
import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.pki import CA
from tests.soak import behaviours as bh
from tests.soak.footprint import (
    Footprint,
    jail_mounts,
    memory_kib,
    settled,
    temp_entries,
    titus_cgroups,
)
from tests.titus_harness import HTTPBackend, StreamBackend, Titus, jailed_children, keyholder_pid

CONNECTIONS = int(os.environ.get("TITUS_SOAK_CONNECTIONS") or 600)
TIME_LIMIT = float(os.environ.get("TITUS_SOAK_SECONDS") or max(60.0, CONNECTIONS * 0.12))
SEED = int(os.environ.get("TITUS_SOAK_SEED") or random.SystemRandom().randrange(1 << 32))
THREADS = 8
# The supervisor's RSS grows for the first few thousand connections, then levels
# off (pymalloc's arenas): after 1k/3k/5k/7k/9k connections 50.1/51.4/52.0/52.0/52.0
# MB.  So the first half of the run warms up and the second half must be flat.
# (Before f8b1fef it was 52/58/61/61/66, +6 MB in the second half: every
# connection's worker was cyclic garbage through its handshake timer, freed only
# by a rare full collection; tracemalloc's snapshots, taken between collections,
# had not shown it, gc.DEBUG_SAVEALL did.)
WARMUP = max(50, CONNECTIONS // 2)
MIN_SPARE, MAX_CHILDREN = 4, 64
UID_COUNT = 4096
UID_FIRST = 100_000_000 + (os.getpid() % 8192) * UID_COUNT  # no other test's jail uids
MEMORY_GROWTH_KIB = 5 * 1024
SETTLE = 60.0  # seconds for titus to log the last connections and top up its pool

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root"),
              pytest.mark.timeout(TIME_LIMIT + 2 * SETTLE + 120)]


@dataclass
class Env:
    titus: Titus
    ca: CA
    big: StreamBackend
    tmpdir: Path

    @property
    def pid(self) -> int:
        assert self.titus.proc is not None
        return self.titus.proc.pid

    def footprint(self) -> Footprint:
        zygotes = self.titus.zygote_pids()
        helpers = {"key holder": keyholder_pid(self.titus),
                   **{f"zygote {p}": p for p in zygotes}}
        return Footprint.take(self.pid, zygotes, UID_FIRST, UID_COUNT, helpers)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    ca = CA(tmp_path / "pki")
    leaf = ca.issue(bh.SNI_HTTP, "p256", extra_names=(bh.SNI_BIG,))
    tmpdir = tmp_path / "titus-tmp"  # titus's TMPDIR: whatever it leaves there is a leak
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    with HTTPBackend("A") as http, StreamBackend(bh.BIG_REPLY) as big:
        vhosts = "".join(f"""
[[vhost]]
sni-name = "{sni}"
key = "{leaf.key}"
cert = "{leaf.cert}"
backend = "127.0.0.1"
backend-port = {port}
""" for sni, port in ((bh.SNI_HTTP, http.port), (bh.SNI_BIG, big.port)))
        config = f"""min-spare-children = {MIN_SPARE}
max-children = {MAX_CHILDREN}
max-handshake-time = 5

[[listen]]
address = "127.0.0.1"
port = 0
{vhosts}
[jail]
uid-first = {UID_FIRST}
uid-count = {UID_COUNT}
"""
        with Titus(tmp_path, config, suffix=".toml") as titus:
            yield Env(titus, ca, big, tmpdir)


def contexts(ca: CA) -> list[ssl.SSLContext]:
    out = []
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = ssl.create_default_context(cafile=str(ca.path))
        ctx.maximum_version = version
        out.append(ctx)
    return out


def index_of(client: str) -> int:
    """The connection index from a record's "client" (127.a.b.c:port)."""
    a, b, c = (int(x) for x in client.rsplit(":", 1)[0].split(".")[1:])
    return (a - 1) * 62500 + (b - 1) * 250 + (c - 1)


def drive(env: Env, indices: range, plan: list[bh.Behaviour], deadline: float,
          progress: list[int] | None = None) -> list[tuple[int, str, str]]:
    """Run the connections `indices` from THREADS client threads; what went wrong.
    `progress[0]` counts the connections done."""
    progress = progress if progress is not None else [0]
    ctxs = contexts(env.ca)
    addr = ("127.0.0.1", env.titus.port)
    todo = iter(indices)
    lock = threading.Lock()
    problems: list[tuple[int, str, str]] = []

    def client_thread() -> None:
        while time.monotonic() < deadline:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            rng = random.Random(SEED * 1_000_003 + i)
            client = bh.Client(i, addr, rng.choice(ctxs), rng)
            problem = bh.attempt(plan[i], client)
            with lock:
                progress[0] += 1
                if problem is not None:
                    problems.append((i, plan[i].name, problem))

    threads = [threading.Thread(target=client_thread, daemon=True) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 2 * bh.TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a client thread hangs"
    with lock:
        assert next(todo, None) is None, f"not all {len(indices)} connections within the limit"
    return problems


def wait_idle(env: Env, records: int) -> list[dict]:
    """Wait until titus has logged `records` connections and is back to key holder +
    idle pool, every backend connection released; its connection records."""
    deadline = time.monotonic() + SETTLE
    while True:
        conns = env.titus.connections()
        children = jailed_children(env.titus)
        streams_done = all(s["done"] for s in list(env.big.conns))
        if len(conns) >= records and len(children) == 1 + MIN_SPARE and streams_done:
            time.sleep(0.5)  # the pool's last top-up, the last reap
            if len(jailed_children(env.titus)) == 1 + MIN_SPARE:
                return env.titus.connections()
        assert time.monotonic() < deadline, (
            f"not idle within {SETTLE}s: {len(conns)}/{records} records, "
            f"{len(children)} jailed children, backend streams done: {streams_done}")
        time.sleep(0.5)


class MemorySampler:
    """The supervisor's RSS while the soak runs, at every tenth of the connections:
    a leak grows with them, an allocator warming up levels off."""

    def __init__(self, pid: int, total: int) -> None:
        self.pid = pid
        self.total = total
        self.progress = [0]
        self.samples: list[tuple[int, int]] = []  # (connections done, RSS KiB)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        step = max(1, self.total // 10)
        while not self.stop.wait(0.2):
            done = self.progress[0]
            if done >= (len(self.samples) + 1) * step:
                try:
                    self.samples.append((done, memory_kib(self.pid)[0]))
                except OSError:
                    return

    def timeline(self) -> str:
        return ", ".join(f"{n}: {kib / 1024:.1f}" for n, kib in self.samples)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def check_records(records: list[dict], plan: list[bh.Behaviour]) -> Counter[str]:
    """Exactly one record per connection, each with an outcome its behaviour explains."""
    per_index = Counter(index_of(r["client"]) for r in records)
    twice = [i for i, n in per_index.items() if n > 1]
    assert not twice, f"connections logged more than once: {twice[:10]}"
    missing = sorted(set(range(len(plan))) - set(per_index))
    assert not missing, f"{len(missing)} connections never logged, e.g. {missing[:10]}"
    assert len(records) == len(plan)
    assert sorted(r["conn_id"] for r in records) == list(range(1, len(plan) + 1))
    wrong = []
    for r in records:
        b = plan[index_of(r["client"])]
        allowed = r["outcome"] in b.outcomes if b.outcomes else r["outcome"] not in bh.NEVER
        if not allowed or r["worker_exit"] != 0 or r["violation"] is not None:
            wrong.append((b.name, r["outcome"], r["detail"], r["worker_exit"], r["violation"]))
    assert not wrong, f"{len(wrong)} records not explained by their behaviour: {wrong[:5]}"
    return Counter(f"{plan[index_of(r['client'])].name}:{r['outcome']}" for r in records)


def test_churn_leaves_nothing_behind(env: Env) -> None:
    plan = bh.plan(CONNECTIONS, SEED)
    started = time.monotonic()
    deadline = started + TIME_LIMIT
    sampler = MemorySampler(env.pid, CONNECTIONS)
    try:
        problems = drive(env, range(WARMUP), plan, deadline, sampler.progress)
        wait_idle(env, WARMUP)
        before = env.footprint()
        problems += drive(env, range(WARMUP, CONNECTIONS), plan, deadline, sampler.progress)
        elapsed = time.monotonic() - started
    finally:
        sampler.close()
    records = wait_idle(env, CONNECTIONS)
    after = env.footprint()

    outcomes = check_records(records, plan)
    print(f"\nsoak: {CONNECTIONS} connections (seed {SEED}) in {elapsed:.1f}s "
          f"({CONNECTIONS / elapsed:.0f}/s), {THREADS} clients at once, {WARMUP} warm-up")
    print(f"behaviour:outcome {dict(sorted(outcomes.items()))}")
    print(f"after warm-up: {before.summary()}")
    print(f"at the end:    {after.summary()}")
    print(f"supervisor RSS (MiB) after N connections: {sampler.timeline()}")
    print(f"supervisor growth after warm-up: RSS {after.rss_kib - before.rss_kib:+d} KiB, "
          f"PSS {after.pss_kib - before.pss_kib:+d} KiB (limit {MEMORY_GROWTH_KIB} KiB)")
    print("their growth after warm-up, KiB: " + ", ".join(
        f"{name} {kib - before.helper_rss_kib.get(name, kib):+d}"
        for name, kib in after.helper_rss_kib.items()))
    assert not problems, f"{len(problems)} clients saw titus misbehave: {problems[:5]}"
    assert elapsed < TIME_LIMIT

    # Processes: titus, its zygote, its key holder and its idle pool, nothing else.
    jails, zygotes = set(jailed_children(env.titus)), set(env.titus.zygote_pids())
    assert len(jails) == 1 + MIN_SPARE and len(zygotes) == 1
    assert after.session == {env.pid} | zygotes | jails, after.session - jails
    assert after.jail_uid_pids == jails, "a process runs as a jail uid outside the pool"
    # The supervisor: the same fds, memory flat.
    assert after.supervisor_fds == before.supervisor_fds, \
        (after.supervisor_fds - before.supervisor_fds, before.supervisor_fds - after.supervisor_fds)
    assert after.zygote_fds == before.zygote_fds, \
        (after.zygote_fds - before.zygote_fds, before.zygote_fds - after.zygote_fds)
    assert after.rss_kib - before.rss_kib < MEMORY_GROWTH_KIB
    assert after.pss_kib - before.pss_kib < MEMORY_GROWTH_KIB
    # The key holder (a signature per connection) and the zygote (a clone per
    # connection) live as long as titus: flat too.
    assert after.helper_rss_kib.keys() == before.helper_rss_kib.keys()
    grown = {name: kib - before.helper_rss_kib[name] for name, kib in after.helper_rss_kib.items()}
    assert all(g < MEMORY_GROWTH_KIB for g in grown.values()), grown
    # Mounts: none a jail makes is visible here, none appeared.
    assert not jail_mounts(after.mounts)
    new_mounts = settled(lambda: jail_mounts(env.footprint()
                                             .mounts - before.mounts), lambda m: not m)
    assert not new_mounts, new_mounts
    # Network namespaces: titus's processes are where they were; none bind-mounted.
    assert after.session_netns == before.session_netns
    assert after.run_netns == before.run_netns or settled(
        lambda: env.footprint().run_netns,
        lambda v: v == before.run_netns) == before.run_netns
    # cgroups: titus makes none, and none of its processes moved.
    assert after.session_cgroups == before.session_cgroups
    assert not titus_cgroups(after.cgroups - before.cgroups, after.session)
    # Temporary files: nothing in titus's TMPDIR, nothing of titus's in the shared ones.
    assert not list(env.tmpdir.iterdir())
    new_temp = settled(lambda: {d: {n for n in names - before.temp.get(d, set())
                                    if d == "/dev/shm" or n.startswith("titus")}
                                for d, names in temp_entries().items()},
                       lambda found: not any(found.values()))
    assert not any(new_temp.values()), new_temp
