"""sandbox/dontfork.py: which of the interpreter's memory a native jail goes without.

What a shared library uses in the executable's data must stay: the variables the
executable took over by copy relocation (the C library's `environ`, read by
getenv), and its GOT (a non-PIE executable's PLT entry can be `free` for every
library).  Getting either wrong kills every native jail at its first getenv or
free, which the fork server's integration tests would show; here it is checked
against the running interpreter directly."""

from __future__ import annotations

import ctypes
import os

import pytest

from sandbox import dontfork


def _page(address: int) -> int:
    return address & ~(dontfork.PAGE - 1)


def _covered(ranges: list[tuple[int, int]], address: int) -> bool:
    return any(start <= address < start + length for start, length in ranges)


def test_the_c_librarys_environ_stays_where_the_library_reads_it() -> None:
    environ = ctypes.addressof(ctypes.c_void_p.in_dll(ctypes.CDLL(None), "environ"))
    ranges = dontfork.interpreter_data()
    assert not _covered(ranges, environ)
    assert not _covered(ranges, _page(environ))


def test_the_executables_got_stays() -> None:
    with open("/proc/self/exe", "rb") as f:
        image = f.read()
    shared = dontfork.shared_with_libraries(image)
    assert shared, "an executable with no GOT?"
    exe = os.path.realpath("/proc/self/exe")
    base = dontfork.load_base(image, dontfork.mappings(), exe)
    ranges = dontfork.interpreter_data()
    for addr, size in shared:
        for page in range(_page(base + addr), base + addr + size, dontfork.PAGE):
            assert not _covered(ranges, page), hex(page)


def test_not_an_elf_file_is_refused() -> None:
    with pytest.raises(ValueError, match="ELF64"):
        dontfork.shared_with_libraries(b"#!/bin/sh\n")


def test_unused_objects_are_the_shared_objects_not_kept() -> None:
    """By this interpreter's own map: libc and ctypes' module kept, the executable never
    left out; libffi is."""
    import _ctypes

    maps = dontfork.mappings()
    exe = os.path.realpath("/proc/self/exe")
    kept = [os.path.realpath(_ctypes.__file__),
            next(m.path for m in maps if m.path.rsplit("/", 1)[-1].startswith("libc.so"))]
    paths = {m.path for m in dontfork.unused_objects(maps, kept, exe)}
    names = {p.rsplit("/", 1)[-1].split(".")[0] for p in paths}
    assert "libffi" in names, names
    assert not names & {"libc", "_ctypes", exe.rsplit("/", 1)[-1].split(".")[0]}, names
    # A mapped file that is not an ELF object (a locale archive, a cache) stays.
    data = dontfork.Mapping(0x1000, 0x2000, "r--p", 0, os.path.realpath(__file__), 0)
    assert dontfork.unused_objects([data], [], exe) == []
    # Every mapping of an object left out goes, not only its code.
    ffi = [m for m in maps if "/libffi.so" in m.path]
    assert len([m for m in dontfork.unused_objects(maps, [], exe)
                if "/libffi.so" in m.path]) == len(ffi) >= 4


def test_what_an_object_needs_is_kept_with_it() -> None:
    """DT_NEEDED, read from the file: _ssl needs libssl, which needs libcrypto and libc,
    which needs the loader; all of them come with _ssl, and nothing it does not need."""
    import _ssl

    maps = dontfork.mappings()
    ssl_module = os.path.realpath(_ssl.__file__)
    with open(ssl_module, "rb") as f:
        assert any(name.startswith("libssl.so") for name in dontfork.needed(f.read()))
    names = {p.rsplit("/", 1)[-1].split(".")[0]
             for p in dontfork.with_needed(maps, {ssl_module})}
    assert {"_ssl", "libssl", "libcrypto", "libc", "ld-linux-x86-64"} <= names, names
    assert "libffi" not in names
    with pytest.raises(ValueError):
        dontfork.needed(b"not an ELF file")
