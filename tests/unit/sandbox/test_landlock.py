"""Landlock on this kernel: only the allowed trees stay reachable, the rest is EACCES."""

from __future__ import annotations

import os
import socket

import pytest

from sandbox import landlock


def in_child(fn) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(fn())
        except BaseException:
            os._exit(99)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


needs_landlock = pytest.mark.skipif(landlock.abi_version() < 1, reason="no Landlock")


@needs_landlock
def test_only_allowed_trees_are_reachable(tmp_path):
    ro, rw, other = tmp_path / "ro", tmp_path / "rw", tmp_path / "other"
    for d in (ro, rw, other):
        d.mkdir()
        (d / "f").write_text("x")

    def probe() -> int:
        os.setpgid(0, 0)
        import ctypes

        ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # no_new_privs
        landlock.restrict([ro], [rw])
        results = []
        for path, mode in ((ro / "f", "r"), (ro / "g", "w"), (rw / "g", "w"), (other / "f", "r")):
            try:
                open(path, mode).close()
                results.append(True)
            except PermissionError:
                results.append(False)
        return 0 if results == [True, False, True, False] else 1

    assert in_child(probe) == 0
    # Control: without the ruleset the same accesses all succeed.
    assert (other / "f").read_text() == "x"


@needs_landlock
def test_abstract_unix_sockets_are_scoped(tmp_path):
    if landlock.abi_version() < 6:
        pytest.skip("scoping needs Landlock ABI 6")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(b"\0titus-landlock-test-%d" % os.getpid())
    server.listen()

    def probe(restricted: bool) -> int:
        import ctypes

        ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)
        if restricted:
            landlock.restrict([], [])
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(b"\0titus-landlock-test-%d" % os.getppid())
        except PermissionError:
            return 13
        return 0

    assert in_child(lambda: probe(True)) == 13
    assert in_child(lambda: probe(False)) == 0
    server.close()
