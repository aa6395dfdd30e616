"""systemd socket activation, as systemd does it: the listening socket is fd 3, LISTEN_FDS=1,
LISTEN_PID=titus's pid (a shell puts the fd in place and execs titus, keeping its pid).
The systemd of contrib/test-systemd.sh does the same for real."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pki import CA
from tests.titus_harness import ROOT, HTTPBackend, Titus, run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")


def activated(sock: socket.socket, pid: str = "$$") -> tuple[str, ...]:
    """A prefix that makes `sock` fd 3 and sets LISTEN_* as systemd would, then execs
    (bash: dash takes no fd number above 9)."""
    fd = sock.fileno()
    return ("bash", "-c", f"exec 3<&{fd} {fd}<&-; LISTEN_PID={pid} LISTEN_FDS=1 "
                          'LISTEN_FDNAMES=titus.socket exec "$@"', "bash")


def conf(leaf, listen: str, port: int) -> str:
    return (f"listen {listen}\ncert {leaf.cert}\nkey {leaf.key}\nbackend 127.0.0.1\n"
            f"backend-port {port}\nmin-spare-children 1\n")


def test_titus_takes_the_passed_socket(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    leaf = ca.issue("act.test")
    held = socket.create_server(("127.0.0.1", 0), reuse_port=False)  # no SO_REUSEADDR
    port = held.getsockname()[1]
    # a client connects before titus runs: systemd's socket keeps it in the backlog
    early = socket.create_connection(("127.0.0.1", port), timeout=10)
    ctx = ssl.create_default_context(cafile=str(ca.path))
    with HTTPBackend("A") as backend:
        titus = Titus(tmp_path, conf(leaf, f"127.0.0.1:{port}", backend.port),
                      prefix=activated(held), pass_fds=(held.fileno(),))
        with titus:
            assert titus.addresses == [("127.0.0.1", port)]
            assert titus.proc is not None
            with open(f"/proc/{titus.proc.pid}/environ", "rb") as f:
                assert b"LISTEN_FDS=1" in f.read()  # as systemd started it ...
            with ctx.wrap_socket(early, server_hostname="act.test") as tls:
                tls.sendall(b"GET /early HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
            assert data.endswith(b"backend A path /early\n")
            zygotes = titus.zygote_pids()  # ... but not what it execs (its zygote)
            assert zygotes
            for pid in zygotes:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    assert b"LISTEN_FDS" not in f.read()
                assert not [fd for fd in os.listdir(f"/proc/{pid}/fd")
                            if os.readlink(f"/proc/{pid}/fd/{fd}") ==
                            os.readlink(f"/proc/{titus.proc.pid}/fd/3")]
    held.close()


def test_a_passed_socket_no_listen_line_names_is_refused(tmp_path: Path) -> None:
    leaf = CA(tmp_path / "pki").issue("act.test")
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        config = tmp_path / "titus.conf"
        config.write_text(conf(leaf, "127.0.0.1:0", 9))
        proc = subprocess.run(
            [*activated(held), sys.executable, "-m", "titus.cli", "--config", str(config)],
            capture_output=True, text=True, timeout=60, cwd=ROOT, pass_fds=(held.fileno(),))
        assert proc.returncode == 1
        assert proc.stderr == (f"titus: systemd passed a socket on 127.0.0.1:{port}, but no "
                               f"`listen` line names it; add `listen 127.0.0.1:{port}` to the "
                               "configuration\n")


def test_sockets_for_another_pid_are_not_taken(tmp_path: Path) -> None:
    """LISTEN_PID names another process: the variables are not for titus."""
    leaf = CA(tmp_path / "pki").issue("act.test")
    with socket.create_server(("127.0.0.1", 0)) as held:
        config = tmp_path / "titus.conf"
        config.write_text(conf(leaf, "127.0.0.1:0", 9))
        code, _out, err = run_cli(config, "--check")
        assert code == 0, err
        titus = Titus(tmp_path, conf(leaf, "127.0.0.1:0", 9), prefix=activated(held, "1"),
                      pass_fds=(held.fileno(),))
        with titus:
            assert titus.port != held.getsockname()[1]
