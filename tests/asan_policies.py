"""The titus jail profiles as `make test-asan` needs them: ASan's runtime in every jail.

With the C extensions built with ASan and libasan preloaded into every titus
process, a jail runs ASan's runtime too: it reserves terabytes of address space
(no `as` limit) and calls sigaltstack and gettid, and write and tgkill to report an
error (a report it cannot write is a report lost).
This writes policies/titus-worker.toml and titus-keyholder.toml with exactly
those allowances into a directory for SANDBOX_POLICY_PATH; the hardened build's
tests use the real files unchanged.

    python -m tests.asan_policies OUT_DIR
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASAN_SYSCALLS = ("sigaltstack", "gettid", "write", "tgkill")  # write: its report
NOTE = "# ASan's runtime, in `make test-asan` only (tests/asan_policies.py)"


def for_asan(text: str) -> str:
    """A profile with ASan's allowances: its syscalls allowed, no address-space limit."""
    text = re.sub(r"^as = .*$", f"# as: no limit {NOTE}", text, flags=re.M)
    tail_at = text.index("\n[seccomp]\n") + 1
    head, tail = text[:tail_at], text[tail_at:]
    names = ", ".join(f'"{s}"' for s in ASAN_SYSCALLS)
    # Out of the deny guard first (a syscall may not be both denied and allowed).
    for name in ASAN_SYSCALLS:
        tail = re.sub(rf'"{name}",\s*', "", tail)
    if re.search(r"^allow = \[", tail, flags=re.M):
        tail = re.sub(r"^allow = \[", f"allow = [\n    {names},  {NOTE}", tail, count=1,
                      flags=re.M)
    else:
        tail = tail.replace("[seccomp]\n", f"[seccomp]\nallow = [{names}]  {NOTE}\n", 1)
    return head + tail


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name in ("titus-worker.toml", "titus-keyholder.toml"):
        (out / name).write_text(for_asan((ROOT / "policies" / name).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
