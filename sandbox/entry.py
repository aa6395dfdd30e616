"""The `sandbox` command's first step: a `run` whose plan is cached goes straight
to the jail (sandbox/runcache.py); everything else loads the full CLI.

Imports nothing but `sys` until it knows which: the full CLI (argparse, the
policy compiler, libseccomp) costs tens of milliseconds that a cached run
does not need.  The installed `sandbox` starts Python without site (the
Makefile says why), so the full CLI runs site first: it needs site-packages.
"""

from __future__ import annotations

import posix  # not os: importing os costs a cached run 2.5 ms (its _collections_abc)
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `sandbox` and `python -m sandbox`; returns the exit status."""
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["run"] and "--" in raw:
        split = raw.index("--")
        if raw[split + 1:]:
            from sandbox import runcache

            entry = runcache.load(raw[1:split])
            if entry is not None:
                status = runcache.run(entry, raw[split + 1:])
                # Nothing is left to clean up: skip the interpreter's teardown (a few
                # ms of garbage collection and module clearing).
                sys.stdout.flush()
                sys.stderr.flush()
                posix._exit(status)
    site_packages()
    from sandbox.cli import main as cli_main

    return cli_main(raw)


def site_packages() -> None:
    """Run what `python -S` skipped (the launcher does, see the Makefile): the full CLI,
    and a cached run that names a forbidden call, import pyseccomp from site-packages."""
    if sys.flags.no_site and "site" not in sys.modules:
        import site

        site.main()
