"""Debian packages that tests run for real (nginx, redis-server, busybox-static, ...).

Installed by the Makefile's `deps` target (which `make test` runs on a fresh
machine); a test that is run on its own installs what is missing the same way,
so nothing is ever installed by hand.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def require(package: str, program: str) -> str:
    """The path of `program`, installing Debian's `package` first if it is missing."""
    found = shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        subprocess.run(["make", "-s", "--no-print-directory", "deps", f"PACKAGES={package}"],
                       cwd=REPO, check=True, timeout=900)
        found = shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin")
    assert found is not None, f"Debian package {package} did not install {program}"
    return found
