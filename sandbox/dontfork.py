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
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

PAGE = os.sysconf("SC_PAGE_SIZE")
_COPY_RELOC = {62: 5, 183: 1024}  # e_machine -> R_*_COPY: x86_64, aarch64
_SHT_RELA, _SHT_DYNSYM = 4, 11


def shared_with_libraries(exe: bytes) -> list[tuple[int, int]]:
    """(address, size), at link-time addresses, of what in an ELF64 executable's
    writable data the shared libraries use too: the variables it took over by copy
    relocation (the C library reads `environ` there), and its GOT (a function whose
    address the executable takes, `free` say, is called through the executable's
    PLT by every library)."""
    if exe[:4] != b"\x7fELF" or exe[4] != 2 or exe[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    machine = struct.unpack_from("<H", exe, 18)[0]
    copy = _COPY_RELOC.get(machine)
    if copy is None:
        raise ValueError(f"unsupported ELF machine {machine}")
    shoff, = struct.unpack_from("<Q", exe, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", exe, 58)
    sections = [struct.unpack_from("<IIQQQQIIQQ", exe, shoff + i * shentsize)
                for i in range(shnum)]
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
