"""sandbox/hugetext.py: which of a library's pages go into 2 MB pages, and that its code
still runs there, in the process and in a child forked after.

The range is computed from /proc/self/smaps rows: only whole 2 MB pages inside the
library's run of read-only mappings that are still the file's.  Moving a page that
held relocated data (an anonymous copy) or a writable one would break the library;
the real move is checked in a separate interpreter, since it changes the process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import _jail, dontfork, hugetext
from sandbox.dontfork import Mapping
from sandbox.hugetext import HUGE_PAGE

ROOT = Path(__file__).resolve().parents[3]
LIB = "/usr/lib/x86_64-linux-gnu/libcrypto.so.3"
BASE = 0x7F00_0000_0000  # 2 MB aligned


def crypto_like(base: int = BASE, relro_anon: int = 392) -> list[Mapping]:
    """libcrypto's layout on Debian 12: headers, text, read-only data, relocated
    data (anonymous once relocated), writable data; then another library."""
    rows = [(0, 0xC5000, "r--p", 0), (0xC5000, 0x342000, "r-xp", 0),
            (0x342000, 0x420000, "r--p", 0), (0x420000, 0x482000, "r--p", relro_anon),
            (0x482000, 0x485000, "rw-p", 12)]
    maps = [Mapping(base + a, base + b, perms, a, LIB, anon) for a, b, perms, anon in rows]
    maps.append(Mapping(base + 0x485000, base + 0x600000, "r--p", 0, "/usr/lib/other.so", 0))
    return maps


def test_the_whole_2mb_pages_of_the_read_only_run() -> None:
    assert hugetext.huge_range(crypto_like(), "libcrypto.so") == (BASE, 2 * HUGE_PAGE)


def test_relocated_data_is_never_moved() -> None:
    """Were the relocated data clean (not yet written), the run would go on into it; it
    stops at the first page no longer the file's, and at the first writable one."""
    maps = crypto_like(relro_anon=0)
    maps[4] = Mapping(BASE + 0x482000, BASE + 0x700000, "rw-p", 0x482000, LIB, 0)
    assert hugetext.huge_range(maps, "libcrypto.so") == (BASE, 2 * HUGE_PAGE)
    long_relro = crypto_like(relro_anon=4)
    long_relro[3] = Mapping(BASE + 0x420000, BASE + 0x620000, "r--p", 0x420000, LIB, 4)
    assert hugetext.huge_range(long_relro, "libcrypto.so") == (BASE, 2 * HUGE_PAGE)


def test_an_unaligned_or_small_library_has_no_whole_page() -> None:
    shifted = crypto_like(base=BASE + 0x1E000)  # as libc was mapped here
    assert hugetext.huge_range(shifted, "libcrypto.so") == (BASE + HUGE_PAGE, HUGE_PAGE)
    small = [Mapping(BASE, BASE + 0x1F0000, "r-xp", 0, LIB, 0)]
    assert hugetext.huge_range(small, "libcrypto.so") is None
    assert hugetext.huge_range(crypto_like(), "libssl.so") is None


def test_a_gap_or_another_file_ends_the_run() -> None:
    maps = crypto_like()
    maps[1] = Mapping(BASE + 0xC6000, BASE + 0x342000, "r-xp", 0xC5000, LIB, 0)  # a hole
    assert hugetext.huge_range(maps, "libcrypto.so") is None
    maps = crypto_like()
    maps[2] = Mapping(BASE + 0x342000, BASE + 0x420000, "r--p", 0, "/usr/lib/x.so", 0)
    # The run ends at 0x342000: the first 2 MB only.
    assert hugetext.huge_range(maps, "libcrypto.so") == (BASE, HUGE_PAGE)


def test_smaps_rows(tmp_path: Path) -> None:
    smaps = tmp_path / "smaps"
    smaps.write_text(
        "7f0000000000-7f00000c5000 r--p 00000000 fe:00 339406    /usr/lib/libcrypto.so.3\n"
        "Size:                788 kB\nAnonymous:             0 kB\nVmFlags: rd mr mw me\n"
        "7f0000420000-7f0000482000 r--p 0041f000 fe:00 339406    /usr/lib/libcrypto.so.3\n"
        "Size:                392 kB\nAnonymous:           392 kB\nVmFlags: rd mr mw me ac\n"
        "7f0000800000-7f0000a00000 r-xp 00000000 00:00 0 \n"
        "Size:               2048 kB\nAnonymous:          2048 kB\nAnonHugePages:      2048 kB\n"
        "7fff00000000-7fff00021000 rw-p 00000000 00:00 0                          [stack]\n"
        "Size:                132 kB\nAnonymous:            36 kB\nVmFlags: rd wr mr mw me gd\n")
    assert dontfork.mappings(str(smaps)) == [
        Mapping(0x7F0000000000, 0x7F00000C5000, "r--p", 0, "/usr/lib/libcrypto.so.3", 0),
        Mapping(0x7F0000420000, 0x7F0000482000, "r--p", 0x41F000, "/usr/lib/libcrypto.so.3",
                392),
        Mapping(0x7F0000800000, 0x7F0000A00000, "r-xp", 0, "", 2048, 2048),
        Mapping(0x7FFF00000000, 0x7FFF00021000, "rw-p", 0, "[stack]", 36)]


@pytest.mark.parametrize(("text", "allowed"), [("always [madvise] never\n", True),
                                               ("[always] madvise never\n", True),
                                               ("always madvise [never]\n", False)])
def test_the_hosts_thp_setting_is_obeyed(tmp_path: Path, text: str, allowed: bool) -> None:
    setting = tmp_path / "enabled"
    setting.write_text(text)
    assert hugetext.thp_allowed(str(setting)) is allowed
    assert hugetext.thp_allowed(str(tmp_path / "missing")) is False


@pytest.mark.parametrize(("start", "length"), [(BASE + 4096, HUGE_PAGE), (BASE, 4096),
                                               (BASE, 0)])
def test_the_executor_takes_only_whole_2mb_pages(start: int, length: int) -> None:
    with pytest.raises(ValueError, match="2 MB"):
        _jail.huge_text(start, length)


MOVE = """
import hashlib, os, ssl
from sandbox import dontfork, hugetext
found = hugetext.huge_range(dontfork.mappings(), "libcrypto.so")
moved = hugetext.remap(["libcrypto.so"])
now = next(m for m in dontfork.mappings() if m.start == found[0])
def works():
    # libcrypto's code, from its new pages: a digest and a whole TLS 1.3 handshake.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(os.environ["CERT"], os.environ["KEY"])
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    bios = [ssl.MemoryBIO() for _ in range(4)]
    s = server.wrap_bio(bios[0], bios[1], server_side=True)
    c = client.wrap_bio(bios[2], bios[3])
    for _ in range(10):
        for side, inp, out in ((c, bios[2], bios[3]), (s, bios[0], bios[1])):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        bios[0].write(bios[3].read())
        bios[2].write(bios[1].read())
    return hashlib.sha256(b"titus").hexdigest()[:8] + " " + c.version()
print(moved == found[1], now.perms, now.huge_kb, works(), flush=True)
pid = os.fork()
if pid == 0:
    print("child", works(), flush=True)
    os._exit(0)
print("child exit", os.waitpid(pid, 0)[1])
"""


def test_the_code_runs_from_huge_pages_in_the_process_and_its_children(tmp_path: Path) -> None:
    if not hugetext.thp_allowed():
        pytest.skip("this host turned transparent huge pages off")
    import ssl  # noqa: F401 (libcrypto must be loaded for the range to exist)

    if hugetext.huge_range(dontfork.mappings(), "libcrypto.so") is None:
        pytest.skip("libcrypto is not mapped at a 2 MB boundary here")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=t",
                    "-keyout", key, "-out", cert, "-days", "1"], check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-c", MOVE], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={"CERT": str(cert), "KEY": str(key),
                                          "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    digest = "a19d126e"  # sha256(b"titus")[:8]
    assert out.stdout.splitlines() == [f"True r-xp 4096 {digest} TLSv1.3",
                                       f"child {digest} TLSv1.3", "child exit 0"]
