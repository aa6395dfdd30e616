"""Keeping a fork server's Python out of its native jails (MADV_DONTFORK).

A jail entered through a native entry point runs C only from the clone on
(docs/sandbox-executor.md).  It needs none of the server's Python objects nor the
interpreter's own state, yet a clone copies the page tables of all of it, the
jail's exit tears them down, and every such page the server writes afterwards (a
refcount, its request loop) is copied on write: by the server, and into each
older jail's private memory.  So when every recipe of a fork server is native,
the server marks that memory MADV_DONTFORK and its clones are born without it:

- pymalloc's arenas, which the server tracks from before the interpreter's
  first one (sandbox/_jail/arenas.c, preloaded: forkserver.py `_server_env`),
  and the regions of the raw allocator the preload installs, where Python's
  blocks over 512 bytes live instead of malloc's heap;
- the interpreter's writable data and bss, except the pages the shared libraries
  use too: the C library's variables the executable took over by copy relocation
  (``environ``, ``stdin``, ``stdout``, ``stderr``), and its GOT (a non-PIE
  executable that takes `free`'s address makes its PLT entry `free` for everyone).

A native entry must not read Python objects; titus's worker table lives in
malloc's heap for that reason (titus/worker/_worker.c).

When every recipe also names the shared objects its jails run (`Recipe.runs`), the
server leaves every other one out too (`keep_libraries_out`): the modules and
libraries only its Python loaded (ctypes and libffi, _ssl, libexpat, libz...).
Each is five mappings, two of them written by the loader (relocations), that a
clone copies and an exit tears down for nothing: measured on titus's worker,
~0.03-0.05 ms of the clone and the exit per jail.  The executor's own object, the
C library and the dynamic loader are always kept, and so is the object that holds
each entry's main function, with every object these and the named ones need
(DT_NEEDED: a sanitizer build's runtime too); code an entry reaches only by a
pointer (a wrapper that calls another module's entry, a callback some library
installed) must be named.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from typing import NamedTuple

PAGE = os.sysconf("SC_PAGE_SIZE")
_COPY_RELOC = {62: 5, 183: 1024}  # e_machine -> R_*_COPY: x86_64, aarch64
_SHT_RELA, _SHT_DYNSYM = 4, 11


def _sections(image: bytes) -> list[tuple[int, ...]]:
    """An ELF64 file's section headers: (name, type, flags, addr, offset, size, link,
    info, align, entsize) each."""
    if image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", image, 40)
    shentsize, shnum = struct.unpack_from("<HH", image, 58)
    return [struct.unpack_from("<IIQQQQIIQQ", image, shoff + i * shentsize)
            for i in range(shnum)]


def shared_with_libraries(exe: bytes) -> list[tuple[int, int]]:
    """(address, size), at link-time addresses, of what in an ELF64 executable's
    writable data the shared libraries use too: the variables it took over by copy
    relocation (the C library reads `environ` there), and its GOT (a function whose
    address the executable takes, `free` say, is called through the executable's
    PLT by every library)."""
    sections = _sections(exe)
    machine = struct.unpack_from("<H", exe, 18)[0]
    copy = _COPY_RELOC.get(machine)
    if copy is None:
        raise ValueError(f"unsupported ELF machine {machine}")
    shnum, shstrndx = len(sections), struct.unpack_from("<H", exe, 62)[0]
    names = sections[shstrndx][4]
    found = []
    for name_at, _kind, _flags, addr, _offset, size, *_rest in sections:
        name = exe[names + name_at:exe.index(b"\0", names + name_at)]
        if name in (b".got", b".got.plt") and size:
            found.append((addr, size))
    for _name, kind, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if kind != _SHT_RELA or entsize != 24 or link >= shnum:
            continue
        symtab = sections[link]
        if symtab[1] != _SHT_DYNSYM:
            continue
        for at in range(offset, offset + size, 24):
            r_offset, r_info, _addend = struct.unpack_from("<QQq", exe, at)
            if r_info & 0xFFFFFFFF != copy:
                continue
            sym_at = symtab[4] + (r_info >> 32) * 24
            sym_size, = struct.unpack_from("<Q", exe, sym_at + 16)
            found.append((r_offset, max(sym_size, 1)))
    return found


class Mapping(NamedTuple):
    """One mapping of a process, as /proc/PID/smaps gives it."""

    start: int
    end: int
    perms: str
    offset: int
    path: str
    anonymous_kb: int  # of its pages, those no longer the file's (copied on write)
    huge_kb: int = 0  # of its anonymous memory, what transparent huge pages back


def mappings(smaps: str = "/proc/self/smaps") -> list[Mapping]:
    """Each mapping of a process (this one by default), in address order."""
    out: list[Mapping] = []
    with open(smaps) as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                out.append(Mapping(start, end, fields[1], int(fields[2], 16),
                                   " ".join(fields[5:]), 0))
            elif fields[0] == "Anonymous:" and out:
                out[-1] = out[-1]._replace(anonymous_kb=int(fields[1]))
            elif fields[0] == "AnonHugePages:" and out:
                out[-1] = out[-1]._replace(huge_kb=int(fields[1]))
    return out


def load_base(image: bytes, maps: list[Mapping], exe: str) -> int:
    """What to add to the executable's link-time addresses (0 unless it is PIE)."""
    phoff, = struct.unpack_from("<Q", image, 32)
    phentsize, phnum = struct.unpack_from("<HH", image, 54)
    loads = [struct.unpack_from("<IIQQQQQQ", image, phoff + i * phentsize)
             for i in range(phnum)]
    first_vaddr = min(p[3] for p in loads if p[0] == 1)  # PT_LOAD
    return min(m.start for m in maps if m.path == exe and m.offset == 0) - \
        (first_vaddr & ~(PAGE - 1))


def interpreter_data() -> list[tuple[int, int]]:
    """(start, length) ranges of the interpreter's writable data and bss, less the pages
    the shared libraries use too."""
    exe = os.path.realpath("/proc/self/exe")
    maps = mappings()
    if not any(m.path == exe for m in maps):
        return []
    with open(exe, "rb") as f:
        image = f.read()
    base = load_base(image, maps, exe)
    keep = set()
    for addr, size in shared_with_libraries(image):
        for page in range((base + addr) & ~(PAGE - 1), base + addr + size, PAGE):
            keep.add(page)
    ranges: list[tuple[int, int]] = []
    for start, end, perms, _off, path, *_sizes in maps:
        data = path == exe and perms.startswith("rw")
        bss = not path and ranges and ranges[-1][1] == start  # past the file's last page
        if data or bss:
            ranges.append((start, end))
    out = []
    for start, end in ranges:
        page = start
        while page < end:
            if page in keep:
                page += PAGE
                continue
            run = page
            while page < end and page not in keep:
                page += PAGE
            out.append((run, page - run))
    return out


def keep_python_out(targets: list[object]) -> bool:
    """Mark the server's Python memory MADV_DONTFORK if every target is a native entry;
    whether it did."""
    from sandbox import _jail

    if not targets or not all(_jail.is_entry(t) for t in targets):
        return False
    _jail.arenas_dontfork()
    for start, length in interpreter_data():
        _jail.dontfork(start, length)
    return True


_SHT_DYNAMIC, _DT_NEEDED = 6, 1


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def needed(image: bytes) -> list[str]:
    """The sonames an ELF64 object names DT_NEEDED (the libraries the loader mapped for
    it: the C library, and in a sanitizer build libasan, which its code calls)."""
    sections = _sections(image)
    out = []
    for _name, kind, _flags, _addr, offset, size, link, *_rest in sections:
        if kind != _SHT_DYNAMIC or link >= len(sections):
            continue
        strings = sections[link][4]
        for at in range(offset, offset + size, 16):
            tag, value = struct.unpack_from("<qQ", image, at)
            if tag == 0:
                break
            if tag == _DT_NEEDED:
                start = strings + value
                out.append(image[start:image.index(b"\0", start)].decode())
    return out


def with_needed(maps: list[Mapping], paths: set[str]) -> set[str]:
    """`paths` and every mapped object they need, and those need, by soname."""
    by_name = {m.path.rsplit("/", 1)[-1]: m.path for m in maps if m.path.startswith("/")}
    todo, seen = list(paths), set(paths)
    while todo:
        try:
            with open(todo.pop(), "rb") as f:
                sonames = needed(f.read())
        except (OSError, ValueError, struct.error, IndexError):
            continue
        for soname in sonames:
            for name, path in by_name.items():
                if (name == soname or name.startswith(soname + ".")) and path not in seen:
                    seen.add(path)
                    todo.append(path)
    return seen


def unused_objects(maps: list[Mapping], kept: Iterable[str], exe: str) -> list[Mapping]:
    """The mappings of each shared object that is not one of the `kept` paths; never
    the executable's, nor a mapped file that is no ELF object (a locale)."""
    paths = set(kept) | {exe}
    return [m for m in maps if m.path.startswith("/") and m.path not in paths and
            _is_elf(m.path)]


def keep_libraries_out(targets: list[object], runs: Iterable[str]) -> list[str]:
    """Mark MADV_DONTFORK every shared object no jail runs (see the module's docstring),
    if every target is a native entry; the paths left out."""
    from sandbox import _jail

    if not targets or not all(_jail.is_entry(t) for t in targets):
        return []
    maps = mappings()
    code = [_jail.entry_code(t) for t in targets]
    names = tuple(runs)
    kept = {os.path.realpath(_jail.__file__)}
    kept.update(m.path for m in maps if any(m.start <= a < m.end for a in code) or
                (m.path.rsplit("/", 1)[-1].startswith(names) and m.path.startswith("/")))
    out = unused_objects(maps, with_needed(maps, kept), os.path.realpath("/proc/self/exe"))
    for m in out:
        _jail.dontfork(m.start, m.end - m.start)
    return sorted({m.path for m in out})
