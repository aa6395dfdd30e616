"""Limits as profiles and the command line write them: rlimits, cgroup limits, a timeout.

One parser for both, so `--rlimit nofile=64` and `nofile = 64` in [jail.rlimits]
mean the same, and `--memory 256M` and `memory = "256M"` too.
"""

from __future__ import annotations

import re
import resource
from pathlib import Path

from sandbox.spec import NOFILE_KEPT, RLIMIT_NAMES

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# [jail] keys of this module, with the JailSpec field each sets.
JAIL_KEYS = {"memory": "memory_limit", "pids_limit": "pids_limit", "cpus": "cpus",
             "timeout": "timeout", "uid": "uid", "gid": "gid", "ids": "ids"}


def parse_size(value: object) -> int:
    """Bytes from an int or a ``"16M"``-style string (K, M, G, T are powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _UNITS[m.group(2).upper()]
    raise ValueError(f"expected a size like 16M or a number of bytes, not {value!r}")


def rlimit_value(name: str, value: object) -> int:
    """The limit for `name` from a number, a size, "unlimited" or (nofile) "kept"."""
    if name not in RLIMIT_NAMES:
        raise ValueError(f"unknown rlimit {name!r}; one of {', '.join(RLIMIT_NAMES)}")
    if value == "kept":
        if name != "nofile":
            raise ValueError("'kept' is only for nofile (the number of fds passed in)")
        return NOFILE_KEPT
    if value == "unlimited":
        return resource.RLIM_INFINITY
    if isinstance(value, str) and value.isdigit():
        return int(value)
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ValueError(f"rlimit {name}: {exc}") from None


def parse_rlimit(text: str) -> tuple[str, int]:
    """`NAME=VALUE` (the command line's --rlimit) as (name, limit)."""
    name, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"expected NAME=VALUE (e.g. nofile=256), not {text!r}")
    return name, rlimit_value(name, value)


def parse_limit(key: str, value: object) -> int | float:
    """A [jail] limit (memory, pids_limit, cpus, timeout; uid, gid, ids) as its JailSpec value."""
    if key in ("uid", "gid"):
        return parse_id(key, value)
    if key == "ids":
        return parse_ids(value)
    if isinstance(value, bool):
        raise ValueError(f"{key} must be a number, not {value!r}")
    if key == "memory":
        size = parse_size(value)
        if size < 1 << 20:
            raise ValueError(f"memory {value!r} is less than 1M: nothing would start")
        return size
    if key == "pids_limit":
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"pids_limit must be a whole number of at least 1, not {value!r}")
        return value
    number = float(value) if isinstance(value, (int, float, str)) else -1.0
    if not number > 0:
        raise ValueError(f"{key} must be a positive number, not {value!r}")
    return number


def parse_tmpfs(text: str, default_size: int = 16 << 20) -> tuple[Path, int]:
    """`PATH[:SIZE]` (--tmpfs, and the profile's tmpfs list) as (path, bytes)."""
    path, _, size = text.partition(":")
    if not path.startswith("/"):
        raise ValueError(f"a tmpfs path must be absolute, not {path!r}")
    return Path(path), parse_size(size) if size else default_size


def parse_ids(value: object) -> int:
    """How many ids the jail maps (0..N-1 inside; 1: only its uid and gid)."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**32 - 1:
        raise ValueError(f"ids must be a whole number of at least 1, not {value!r}")
    return value


def parse_id(key: str, value: object) -> int:
    """A uid or gid inside the jail."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32 - 1:
        raise ValueError(f"{key} must be a number from 0 to 4294967294, not {value!r}")
    return value
