"""`make run`'s demo: it starts, prints a curl line, and that line works."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tests.titus_harness import ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")


def test_demo_curl_line_works(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "titus.demo"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            if "curl " in line or not line:
                break
        assert "curl " in line, "the demo printed no curl line"
        command = shlex.split(line.split("try", 1)[1])
        body = b""
        for _ in range(50):  # the pool may still be filling: retry briefly
            out = subprocess.run([*command, "-sS", "--max-time", "5"], cwd=tmp_path,
                                 capture_output=True, timeout=10)
            if out.returncode == 0:
                body = out.stdout
                break
            time.sleep(0.1)
        assert b"terminated by titus" in body
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
