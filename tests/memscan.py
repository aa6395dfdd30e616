"""Look for secret byte strings in another process's memory (/proc/PID/maps + /proc/PID/mem).

Run it as a separate process (``python -m tests.memscan PID NEEDLES.json``) when
the process to scan must not hold the needles itself, which is the case for a
test that scans its own process: the needles would be found in the scanner.
NEEDLES.json maps names to hex strings; the names found are printed as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping

CHUNK = 1 << 20
_SKIP = ("[vvar]", "[vsyscall]", "[vvar_vclock]")


def readable_regions(pid: int) -> Iterator[tuple[int, int, str]]:
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) < 5 or parts[1][0] != "r":
                continue
            name = parts[5].strip() if len(parts) > 5 else ""
            if name in _SKIP:
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            yield start, end, name


def find_secrets(pid: int, needles: Mapping[str, bytes]) -> set[str]:
    """Names of the needles found anywhere in the readable memory of ``pid``."""
    return set(locate_secrets(pid, needles))


def locate_secrets(pid: int, needles: Mapping[str, bytes]) -> dict[str, tuple[int, str]]:
    """For each needle found in ``pid``: (address of its first hit, its mapping's name).

    The same scan as ``find_secrets``, for failure messages that say where a
    secret sits ("[heap]", a library, an anonymous mapping...).
    """
    wanted = {name: n for name, n in needles.items() if n}
    if not wanted:
        return {}
    overlap = max(len(n) for n in wanted.values()) - 1
    found: dict[str, tuple[int, str]] = {}
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for start, end, region in readable_regions(pid):
            tail = b""
            pos = start
            while pos < end and len(found) < len(wanted):
                try:
                    chunk = os.pread(fd, min(CHUNK, end - pos), pos)
                except OSError:
                    chunk = b""
                if not chunk:
                    tail = b""
                    pos += min(CHUNK, end - pos)  # unreadable page(s): skip them
                    continue
                window = tail + chunk
                for name, needle in wanted.items():
                    if name not in found:
                        at = window.find(needle)
                        if at >= 0:
                            found[name] = (pos - len(tail) + at, region or "[anon]")
                tail = window[-overlap:] if overlap else b""
                pos += len(chunk)
    finally:
        os.close(fd)
    return found


def main(argv: list[str]) -> int:
    pid = int(argv[1])
    with open(argv[2]) as f:
        needles = {name: bytes.fromhex(h) for name, h in json.load(f).items()}
    print(json.dumps(sorted(find_secrets(pid, needles))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
