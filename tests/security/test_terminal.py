"""A jail cannot push input into the terminal it was started from (sandbox/ttyguard.py).

`sandbox run` leaves the jail on the caller's terminal: its stdin, and its controlling
terminal. TIOCSTI on it would queue a command for the caller's shell to run once the
jail exits (bubblewrap's CVE-2017-5226).  The profile here is the worst a user can
write, ioctl allowed outright, and the jail still cannot; without the guard it can
(checked: both TIOCSTI lines say "pushed" and the bytes wait in the terminal's input;
TIOCLINUX then says ENOTTY, a pty being no virtual console).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tests.native import FLAGS

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")

SOURCE = Path(__file__).resolve().parents[1] / "native" / "tiocsti.c"
PROFILE = """
[profile]
description = "a static program with ioctl allowed outright"
[jail]
network = "shared-empty"
empty_root = true
binds = [{{ source = "{program}", target = "/tiocsti" }}]
no_new_privs = true
[seccomp]
default = "kill-process"
groups = ["@basic-io", "@process-exit", "@memory"]
allow = ["execve", "ioctl", "arch_prctl", "set_tid_address", "set_robust_list", "rseq",
         "newfstatat", "fstat", "prlimit64", "readlink", "readlinkat", "getrandom"]
"""


def build(tmp_path: Path) -> Path:
    program = tmp_path / "tiocsti"
    flags = [f for f in FLAGS if f not in ("-fPIC", "-shared")]
    subprocess.run(["gcc", *flags, "-static", str(SOURCE), "-o", str(program)],
                   check=True, capture_output=True, text=True)
    return program


def test_a_jail_cannot_push_input_into_its_terminal(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    profile = tmp_path / "tty.toml"
    profile.write_text(PROFILE.format(program=build(tmp_path)))
    master, slave = os.openpty()

    def own_terminal() -> None:  # the pty becomes the controlling terminal, as a shell's
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sandbox", "run", "--profile", str(profile), "--",
             "/tiocsti"],
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            preexec_fn=own_terminal, timeout=60, check=False)
        os.set_blocking(master, False)
        said = os.read(master, 4096).decode()
        os.set_blocking(slave, False)
        try:
            queued = os.read(slave, 4096)  # what a shell would read next from the terminal
        except BlockingIOError:
            queued = b""
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 0, said
    assert said.splitlines() == ["0x5412: Operation not permitted",
                                 "0x100005412: Operation not permitted",
                                 "TIOCLINUX: Operation not permitted"], said
    assert queued == b""
