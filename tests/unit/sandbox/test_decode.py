"""Forbidden calls in words, as `sandbox run` and `learn` print them."""

from __future__ import annotations

import os

from sandbox.decode import describe

AT_FDCWD = 0xFFFFFF9C


def test_socket_names_family_type_flags_and_protocol() -> None:
    assert describe("socket", (16, 3 | 0o2000000, 0, 0, 0, 0)) == \
        "socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, NETLINK_ROUTE)"
    assert describe("socket", (2, 1 | 0o4000, 6, 0, 0, 0)) == \
        "socket(AF_INET, SOCK_STREAM|SOCK_NONBLOCK, IPPROTO_TCP)"
    assert describe("socket", (17, 3, 768, 0, 0, 0)) == "socket(AF_PACKET, SOCK_RAW, 768)"


def test_paths_are_read_from_the_caller() -> None:
    memory = {0x1000: b"/etc/shadow\0junk"}
    read = lambda address, size: memory.get(address)  # noqa: E731
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    assert describe("openat", (AT_FDCWD, 0x1000, flags, 0o600, 0, 0), read) == \
        'openat(AT_FDCWD, "/etc/shadow", O_WRONLY|O_CREAT|O_CLOEXEC, 0600)'
    # Unreadable memory: the address, not a guess.
    assert describe("chdir", (0x2000, 0, 0, 0, 0, 0), read) == "chdir(0x2000)"


def test_addresses_flags_signals_and_unknown_shapes() -> None:
    unix = b"\x01\x00/run/nscd/socket\0"
    assert describe("connect", (3, 0x10, 110, 0, 0, 0), lambda a, n: unix) == \
        'connect(3, {AF_UNIX, "/run/nscd/socket"}, 110)'
    inet = b"\x02\x00\x00\x35\x7f\x00\x00\x01" + bytes(8)
    assert describe("connect", (3, 0x10, 16, 0, 0, 0), lambda a, n: inet) == \
        "connect(3, {AF_INET, 127.0.0.1:53}, 16)"
    assert describe("unshare", (0x10000000 | 0x20000, 0, 0, 0, 0, 0)) == \
        "unshare(CLONE_NEWNS|CLONE_NEWUSER)"
    assert describe("kill", (1, 15, 0, 0, 0, 0)) == "kill(1, SIGTERM)"
    assert describe("mmap", (0, 4096, 7, 0x22, 2**64 - 1, 0)) == \
        "mmap(NULL, 4096, PROT_READ|PROT_WRITE|PROT_EXEC, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0x0)"
    assert describe("getppid", (5, 6, 7, 8, 9, 10)) == "getppid()"  # registers are not args
    assert describe("fsopen", (1, 2, 3, 4, 5, 6)) == "fsopen(...)"
