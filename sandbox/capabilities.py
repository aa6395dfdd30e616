"""Which capabilities this process holds, read from /proc/self/status.

Root is not enough to know: a systemd unit's CapabilityBoundingSet or a
container's default set leaves uid 0 without some of them, and what needs one
must then do without instead of failing at its first use.  Only C modules are
imported (a cached `sandbox run` asks, sandbox/runcache.py).
"""

from __future__ import annotations

# linux/capability.h
CAP_SYS_PTRACE = 19
CAP_SYS_NICE = 23


def held(capability: int, status: str = "/proc/self/status") -> bool:
    """Whether `capability` is in this process's effective set (False if unreadable)."""
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> capability & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False
