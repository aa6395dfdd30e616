"""The C extensions, built by the package's own build (pip install, pip install -e).

Every extension is made by `hardened_extension`: one list of flags (DESIGN.md §8)
for the sandbox executor and the titus worker alike.  SANITIZE=1 in the environment
builds them with ASan and UBSan instead of _FORTIFY_SOURCE (`make test-asan`).
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

HARDENED_CFLAGS = [
    "-std=c11", "-O2", "-U_FORTIFY_SOURCE", "-D_FORTIFY_SOURCE=3",
    "-fstack-protector-strong", "-fstack-clash-protection", "-fcf-protection",
    "-Wall", "-Wextra", "-Werror",
]
HARDENED_LDFLAGS = ["-Wl,-z,relro,-z,now"]
# ASan and _FORTIFY_SOURCE check the same accesses and get in each other's way.
SANITIZE_CFLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                   "-fno-omit-frame-pointer", "-O1", "-U_FORTIFY_SOURCE"]
SANITIZE_LDFLAGS = ["-fsanitize=address,undefined"]


def hardened_extension(name: str, sources: list[str], **kwargs: object) -> Extension:
    """An Extension with the project's flags (and the sanitizers when SANITIZE=1)."""
    cflags = list(HARDENED_CFLAGS)
    ldflags = list(HARDENED_LDFLAGS)
    if os.environ.get("SANITIZE") == "1":
        cflags = [f for f in cflags if not f.startswith("-D_FORTIFY_SOURCE")] + SANITIZE_CFLAGS
        ldflags += SANITIZE_LDFLAGS
    return Extension(name, sources=sources, extra_compile_args=cflags,
                     extra_link_args=ldflags, **kwargs)  # type: ignore[arg-type]


JAIL_SOURCES = [f"sandbox/_jail/{name}.c"
                for name in ("plan", "steps", "confine", "spawn", "module", "pyspawn", "entries",
                             "arenas", "hugetext", "request", "serve", "server")]
WORKER_SOURCES = [f"titus/worker/{name}.c" for name in (
    "_worker", "wk_table", "wk_conn", "wk_probe", "wk_bio", "wk_choose", "wk_identity",
    "wk_pump", "wk_ctx", "wk_remotekey", "wk_keyproto", "wk_control")]

setup(
    ext_modules=[
        hardened_extension("sandbox._jail", JAIL_SOURCES,
                           depends=["sandbox/_jail/jail.h", "sandbox/_jail/pyjail.h",
                                    "sandbox/_jail/serve.h",
                                    "sandbox/jail_entry.h"]),
        # The per-connection worker: links the system's libssl/libcrypto, the ones
        # Python's _ssl runs (titus.worker._worker checks it at start-up).
        hardened_extension("titus.worker._worker", WORKER_SOURCES, libraries=["ssl", "crypto"],
                           define_macros=[("_GNU_SOURCE", None)],
                           depends=["titus/worker/wk.h", "titus/worker/wk_ssl.h",
                                    "titus/worker/wk_glue.h",
                                    "titus/worker/wk_entry.h", "sandbox/jail_entry.h"]),
    ],
)
