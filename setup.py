"""The C extensions, built with one shared list of hardened flags (DESIGN §8).

`pip install -e .` (what `make` runs) builds them in place.  TITUS_SANITIZE=1
builds them with ASan+UBSan instead of _FORTIFY_SOURCE (`make test-asan`).
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

HARDENED_CFLAGS = [
    "-std=c11", "-O2", "-D_FORTIFY_SOURCE=3", "-fstack-protector-strong",
    "-fstack-clash-protection", "-fcf-protection", "-Wall", "-Wextra", "-Werror",
    "-D_GNU_SOURCE",
]
HARDENED_LDFLAGS = ["-Wl,-z,relro,-z,now"]
SANITIZE_CFLAGS = ["-std=c11", "-O1", "-g", "-fno-omit-frame-pointer",
                   "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                   "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE"]
SANITIZE_LDFLAGS = ["-fsanitize=address,undefined", "-Wl,-z,relro,-z,now"]

sanitize = os.environ.get("TITUS_SANITIZE") == "1"
cflags = SANITIZE_CFLAGS if sanitize else HARDENED_CFLAGS
ldflags = SANITIZE_LDFLAGS if sanitize else HARDENED_LDFLAGS

WORKER_SOURCES = [f"titus/worker/{name}.c" for name in (
    "_worker", "wk_conn", "wk_choose", "wk_identity", "wk_pump", "wk_ctx", "wk_remotekey",
    "wk_keyproto", "wk_control")]

setup(ext_modules=[
    Extension("titus.worker._worker", sources=WORKER_SOURCES,
              depends=["titus/worker/wk.h", "titus/worker/wk_ssl.h", "titus/worker/wk_entry.h"],
              libraries=["ssl", "crypto"], extra_compile_args=cflags,
              extra_link_args=ldflags),
])
