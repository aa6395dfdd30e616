"""titus's CPU per connection by process, and its PSS per idle connection, alone.

The same measurements `make bench` makes of titus (run.py's titus_breakdown
"in vivo" part and idle_memory), without the other proxies: for working on
titus's costs between full runs.  CPU time, not wall, so a shared machine
skews it less.  As root; nginx (the backend) and openssl s_time must be
installed (`make bench` installs them).

    python bench/breakdown.py [--kind rsa2048] [--seconds 10] [--idle 100] [--costs]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import backend  # bench/ is this script's directory
import certs
import common
import load
import proxies
import run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="rsa2048", choices=certs.KEY_TYPES)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--idle", type=int, default=100, help="connections for PSS (0: skip)")
    parser.add_argument("--costs", action="store_true", help="also run titus_costs.py")
    args = parser.parse_args()
    common.private_network()
    os.sched_setaffinity(0, {common.LOAD_CPU})
    tmp = Path(tempfile.mkdtemp(prefix="titus-breakdown-"))
    be = None
    try:
        be = backend.start(tmp)
        cs = certs.make(args.kind, tmp / "certs")
        proxy = proxies.start_titus(tmp, cs, be.port)
        target = load.Target(proxy.port, cs.ca)
        conf = tmp / f"titus-{args.kind}.conf"
        out = run.titus_breakdown(proxy, target, conf, tmp, args.seconds, quick=True,
                                  costs=args.costs)
        if args.idle:
            out["idle_memory"] = run.idle_memory(proxy, target, args.idle)
        out["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
        print(json.dumps(out, indent=1, default=str))
    finally:
        common.stop_all()
        backend.cleanup(be)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
