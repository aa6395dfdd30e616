"""Run inside the titus container by contrib/test-container.sh: are the jails real?

The supervisor is PID 1 of the container; its jailed children (the key holder
and the spare workers, the only children not running as root) must each have
titus's seccomp filter (the privileged container itself has none, so a filter
seen here is titus's own), no_new_privs, no capabilities, be PID 1 of their own
PID namespace, have their own user, network and mount namespaces, and a uid of
their own.  Prints one line per process; exits nonzero naming what failed.
"""

from __future__ import annotations

import os
import sys


def status(pid: int) -> dict[str, str] | None:
    """/proc/PID/status as a dict, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except (FileNotFoundError, ProcessLookupError):
        return None


def ns(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def jail_checks(pid: int, st: dict[str, str]) -> dict[str, bool]:
    nspid = st["NSpid"].split()
    return {
        "Seccomp 2": st["Seccomp"] == "2",
        "NoNewPrivs 1": st["NoNewPrivs"] == "1",
        "no caps": int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0,
        "PID 1 in own PID ns": len(nspid) == 2 and nspid[-1] == "1",
        **{f"own {k} ns": ns(pid, k) != ns(1, k) for k in ("user", "net", "mnt")},
    }


def main() -> int:
    with open("/proc/1/cmdline", "rb") as f:
        cmdline = f.read().replace(b"\0", b" ").decode().strip()
    supervisor = status(1)
    if "titus" not in cmdline or supervisor is None:
        print(f"PID 1 is not titus: {cmdline}")
        return 1
    if supervisor["Seccomp"] != "0":
        print(f"PID 1 ({cmdline}) has a seccomp filter: the container's own, so a filter seen "
              "in a jail would not prove titus's")
        return 1
    print(f"PID 1: {cmdline} (Seccomp 0: any filter below is titus's own)")
    with open("/proc/1/task/1/children") as f:
        children = [int(p) for p in f.read().split()]
    jailed = {}
    for pid in children:
        st = status(pid)
        if st is not None and st["Uid"].split()[0] != "0":
            jailed[pid] = st
    if len(jailed) < 3:
        print(f"expected the key holder and 2 spare workers, found {sorted(jailed)} of {children}")
        return 1
    failures = []
    for pid, st in sorted(jailed.items()):
        checks = jail_checks(pid, st)
        failed = [name for name, ok in checks.items() if not ok]
        verdict = "FAILED " + ", ".join(failed) if failed else "ok: " + ", ".join(checks)
        print(f"pid {pid} uid {st['Uid'].split()[0]}: {verdict}")
        failures += [f"pid {pid}: {name}" for name in failed]
    uids = [st["Uid"].split()[0] for st in jailed.values()]
    if len(set(uids)) != len(uids):
        failures.append(f"jails share a uid: {uids}")
    if failures:
        print("jail checks failed: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
