"""pyseccomp, imported with its two libraries named directly.

pyseccomp finds them with ctypes.util.find_library, which runs `ldconfig -p`
(about 10 ms each, twice, in every process that compiles a policy).  Here the
lookups are answered instead: libseccomp by its soname, and libc as the
process's own symbols (CDLL(None)), so that the `free` pyseccomp calls on
libseccomp's strings is the malloc the process really uses (ASan's under
`make test-asan`, where libc's own `free` would crash on them).
"""

from __future__ import annotations

import ctypes.util
from types import ModuleType

_NAMES: dict[str, str | None] = {"c": None, "seccomp": "libseccomp.so.2"}


def _import() -> ModuleType:
    from sandbox.entry import site_packages

    site_packages()  # a cached `sandbox run` started without site: naming a call needs it
    real = ctypes.util.find_library
    ctypes.util.find_library = lambda name: _NAMES[name] if name in _NAMES else real(name)
    try:
        import pyseccomp
    finally:
        ctypes.util.find_library = real
    return pyseccomp


pyseccomp = _import()
