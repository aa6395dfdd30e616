"""`titus status --config FILE`: the metrics endpoint, for a person.

It reads the same Prometheus text that monitoring scrapes (one source of
truth) and prints what an operator asks first: is it up, how many workers,
what happened to the connections.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from titus.config.model import Config


class StatusError(RuntimeError):
    pass


def fetch(config: Config, timeout: float = 5.0) -> str:
    if config.metrics_listen is None:
        raise StatusError("no metrics-listen in the configuration: nothing to ask")
    listener = config.metrics_listen
    host = f"[{listener.address}]" if listener.address.version == 6 else str(listener.address)
    url = f"http://{host}:{listener.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError) as e:
        raise StatusError(f"titus is not answering on {url}: {e}") from None


def summarize(text: str) -> str:
    values: dict[str, dict[tuple, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name][tuple(sorted(sample.labels.items()))] = sample.value

    def get(name: str, **labels: str) -> float:
        return values.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    lines = ["titus is running"]
    lines.append(f"workers: {get('titus_workers', state='busy'):.0f} busy, "
                 f"{get('titus_workers', state='idle'):.0f} idle, "
                 f"at most {get('titus_max_children'):.0f} (max-children)")
    hits = get("titus_connection_cap_hits_total")
    if hits:
        lines.append(f"connection cap: hit {hits:.0f} times, "
                     f"{get('titus_connections_waiting'):.0f} connections waiting now")
    failed = get("titus_config_reloads_total", result="failure")
    lines.append(f"configuration: generation {get('titus_config_generation'):.0f}, "
                 f"{get('titus_config_reloads_total', result='success'):.0f} reloads, "
                 f"{failed:.0f} refused"
                 + ("" if get("titus_config_last_reload_successful") else
                    " (the last reload was refused)"))
    outcomes: dict[str, float] = defaultdict(float)
    vhosts: dict[str, float] = defaultdict(float)
    for labels, value in values.get("titus_connections_total", {}).items():
        d = dict(labels)
        outcomes[d.get("outcome", "?")] += value
        vhosts[d.get("vhost") or "-"] += value
    total = sum(outcomes.values())
    lines.append(f"connections: {total:.0f}" + (" (" + ", ".join(
        f"{k} {v:.0f}" for k, v in sorted(outcomes.items(), key=lambda x: -x[1])) + ")"
        if total else ""))
    if vhosts and total:
        lines.append("by vhost: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(vhosts.items())))
    count = get("titus_handshake_seconds_count")
    if count:
        mean = get("titus_handshake_seconds_sum") / count * 1000
        lines.append(f"handshakes: {count:.0f}, mean {mean:.1f} ms")
    spawns = get("titus_jail_spawn_seconds_count")
    if spawns:
        mean = get("titus_jail_spawn_seconds_sum") / spawns * 1000
        lines.append(f"jails spawned: {spawns:.0f}, mean {mean:.1f} ms, "
                     f"failed {get('titus_jail_spawn_failures_total'):.0f}")
    lines.append(f"bytes relayed: in {get('titus_relayed_bytes_total', direction='in'):.0f}, "
                 f"out {get('titus_relayed_bytes_total', direction='out'):.0f}")
    violations = values.get("titus_seccomp_violations_total", {})
    if violations:
        lines.append("seccomp violations: " + ", ".join(
            f"{dict(k).get('syscall')} {v:.0f}" for k, v in violations.items()))
    restarts = get("titus_keyholder_restarts_total")
    lines.append(f"key holder: {get('titus_keyholder_operations_total', result='ok'):.0f} "
                 f"signatures, {get('titus_keyholder_operations_total', result='failed'):.0f} "
                 f"failed, {restarts:.0f} restarts")
    return "\n".join(lines)
