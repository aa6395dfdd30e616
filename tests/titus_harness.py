"""Running a real titus (a subprocess, as root) in front of real backends for the tests.

`Titus` writes a config, starts `python -m titus.cli`, waits for its "started"
event and reads its JSON log.  Backends are small threaded servers in the test
process: `HTTPBackend` (for curl and friends) and `SinkBackend`, which
checksums what it receives and answers with a deterministic stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class Titus:
    def __init__(self, tmp: Path, config: str, suffix: str = ".conf",
                 args: tuple[str, ...] = ()) -> None:
        self.config_path = tmp / f"titus{suffix}"
        self.config_path.write_text(config)
        self.log_path = tmp / "titus.log"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: list[tuple[str, int]] = []

    def start(self, timeout: float = 20) -> Titus:
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "titus.cli", "--config", str(self.config_path),
             "--log-format", "json", *self.args],
            stdout=log, stderr=log, cwd=ROOT, start_new_session=True)
        log.close()
        started = self.wait_event(lambda r: r.get("event") == "started", timeout)
        self.addresses = [_parse_addr(a) for a in started["listeners"]]
        self.wait_idle_workers()
        return self

    def wait_idle_workers(self, timeout: float = 10) -> None:
        """Wait until the pool has spawned its first spare workers (or the log says why not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.worker_pids()) > 0:
                return
            time.sleep(0.02)

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                children = [int(p) for p in f.read().split()]
        except FileNotFoundError:
            return []
        return [p for p in children if _cmd_uid(p) not in (None, 0)]

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    def records(self) -> list[dict[str, Any]]:
        out = []
        with contextlib.suppress(FileNotFoundError), open(self.log_path, "rb") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def connections(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("event") == "connection"]

    def wait_event(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10
                   ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.records():
                if pred(record):
                    return record
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"titus exited ({self.proc.returncode}): {self.log_tail()}")
            time.sleep(0.02)
        raise TimeoutError(f"no such log event within {timeout}s: {self.log_tail()}")

    def wait_connections(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            conns = self.connections()
            if len(conns) >= count:
                return conns
            time.sleep(0.02)
        raise TimeoutError(f"only {len(self.connections())} of {count} connection records")

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(FileNotFoundError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def stop(self, timeout: float = 15) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> Titus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _parse_addr(text: str) -> tuple[str, int]:
    host, port = text.strip("()").replace("'", "").split(", ")
    return host, int(port)


def _cmd_uid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


# -- backends -------------------------------------------------------------------------


class HTTPBackend:
    """Answers every GET with "backend NAME path PATH"."""

    def __init__(self, name: str = "A", host: str = "127.0.0.1") -> None:
        backend_name = name

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                body = f"backend {backend_name} path {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        self.server = Server((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HTTPBackend:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def pattern(n: int, seed: int = 7) -> bytes:
    """Deterministic, incompressible-enough bytes."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    reps, rest = divmod(n, len(block))
    return block * reps + block[:rest]


class SinkBackend:
    """Per connection: read to EOF (sha256 + count), then send `reply_bytes` and close.

    With `reply_first` it sends its reply before reading, then reads to EOF:
    the backend-closes-first direction of a half-close.
    """

    def __init__(self, reply_bytes: int = 0, reply_first: bool = False) -> None:
        self.reply_bytes = reply_bytes
        self.reply_first = reply_first
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.results: list[dict[str, Any]] = []
        self.done = threading.Condition()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.closing = False

    def _serve(self) -> None:
        while not self.closing:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        digest, count, error = hashlib.sha256(), 0, None
        try:
            if self.reply_first:
                conn.sendall(pattern(self.reply_bytes))
                conn.shutdown(socket.SHUT_WR)
            while data := conn.recv(1 << 20):
                digest.update(data)
                count += len(data)
            if not self.reply_first:
                conn.sendall(pattern(self.reply_bytes))
                conn.shutdown(socket.SHUT_WR)
        except OSError as e:
            error = repr(e)
        finally:
            conn.close()
        with self.done:
            self.results.append({"sha256": digest.hexdigest(), "bytes": count, "error": error})
            self.done.notify_all()

    def wait(self, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        with self.done:
            self.done.wait_for(lambda: len(self.results) >= count, timeout)
        return self.results

    def __enter__(self) -> SinkBackend:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing = True
        self.srv.close()
