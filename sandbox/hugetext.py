"""A fork server's libraries' text in 2 MB pages, so its native jails fault on none of it.

fork copies the page table entries of anonymous memory only: a jail cloned from
the server maps each page of library code it runs by a fault of its own (the
kernel maps 16 pages around it), and its exit unmaps them all again.  For
titus's worker, libcrypto alone was ~40 faults and ~600 entries per connection.
Copied into anonymous memory that transparent huge pages back, at the same
address (sandbox/_jail/hugetext.c), a library's code is two PMD entries that a
clone inherits as they are: measured with a fork per in-memory TLS handshake,
41 faults fewer per child and 0.10-0.13 ms less CPU (user time too: two TLB
entries instead of hundreds).

What is moved: the whole 2 MB pages inside a library's leading run of
read-only file mappings whose pages are still the file's (no anonymous copy:
its relocated data stays where it is).  Such a page holds the ELF headers,
code and read-only data together and becomes read+execute as one: read-only
data turns executable (never writable: W^X holds).  Nothing is moved where the
host turned THP off (`never`), where the kernel cannot back the copy with huge
pages, or where no whole 2 MB page fits (a library smaller than 2 MB, or not
mapped at a 2 MB boundary).  Tools that name code by its file (perf, gdb) see
anonymous memory there.
"""

from __future__ import annotations

from collections.abc import Iterable

from sandbox.dontfork import Mapping, mappings

HUGE_PAGE = 2 << 20
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_range(maps: list[Mapping], library: str) -> tuple[int, int] | None:
    """(start, length) of the whole 2 MB pages that `library` (a file name, or its
    start: "libcrypto.so") can give up: inside the run of its mappings from its
    first page on, contiguous, read-only and exactly the file's."""
    first = next((m for m in maps if m.offset == 0 and m.path.startswith("/") and
                  m.path.rsplit("/", 1)[-1].startswith(library)), None)
    if first is None:
        return None
    end = first.start
    for m in maps[maps.index(first):]:
        if m.path != first.path or m.start != end or "w" in m.perms or m.anonymous_kb:
            break
        end = m.end
    start = -(-first.start // HUGE_PAGE) * HUGE_PAGE
    stop = end // HUGE_PAGE * HUGE_PAGE
    return (start, stop - start) if stop > start else None


def thp_allowed(setting: str = THP_SETTING) -> bool:
    """Whether the host lets a process ask for huge pages (`always` or `madvise`)."""
    try:
        with open(setting) as f:
            text = f.read()
    except OSError:
        return False
    return "[never]" not in text and "[" in text


def remap(libraries: Iterable[str]) -> int:
    """Move each library's whole 2 MB pages of text into huge pages; bytes moved.  A
    library that cannot keeps its pages as they are (see the module's docstring)."""
    from sandbox import _jail

    if not thp_allowed():
        return 0
    moved = 0
    for library in libraries:
        found = huge_range(mappings(), library)
        if found is None:
            continue
        try:
            _jail.huge_text(*found)
        except OSError:
            continue  # no huge page for it now: the library stays as it was
        moved += found[1]
    return moved
