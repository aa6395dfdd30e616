"""Running a real titus (a subprocess, as root) in front of real backends for the tests.

`Titus` writes a config, starts `python -m titus.cli`, waits for its "started"
event and reads its JSON log.  Backends are small threaded servers in the test
process: `HTTPBackend` (for curl and friends) and `SinkBackend`, which
checksums what it receives and answers with a deterministic stream.
"""

from __future__ import annotations

import contextlib
import functools
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
from typing import Any, Self

from sandbox.uids import process_uid

ROOT = Path(__file__).resolve().parent.parent
STARTED: list[Titus] = []  # every titus started, for the log-schema check (conftest.py)
EVERY: list[Titus] = []  # every titus of the session: none may outlive it (conftest.py)


class Titus:
    def __init__(self, tmp: Path, config: str, suffix: str = ".conf",
                 args: tuple[str, ...] = (), prefix: tuple[str, ...] = (),
                 pass_fds: tuple[int, ...] = ()) -> None:
        """`prefix` runs titus through an exec-ing wrapper, e.g. `nsenter --net=PATH`;
        `pass_fds` are inherited by it (e.g. sockets for socket activation)."""
        self.pass_fds = pass_fds
        self.config_path = tmp / f"titus{suffix}"
        self.config_path.write_text(config)
        self.log_path = tmp / "titus.log"
        self.args = args
        self.prefix = prefix
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: list[tuple[str, int]] = []

    def start(self, timeout: float = 20) -> Titus:
        # A second start would orphan the first titus (`with Titus(...).start() as t`
        # starts twice: __enter__ starts too), and nothing would stop it.
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"titus {self.proc.pid} is already running")
        STARTED.append(self)
        EVERY.append(self)
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "titus.cli", "--config", str(self.config_path),
             "--log-format", "json", *self.args],
            stdout=log, stderr=log, cwd=ROOT, start_new_session=True, pass_fds=self.pass_fds)
        log.close()
        try:
            started = self.wait_event(lambda r: r.get("event") == "started", timeout)
            self.addresses = [_parse_addr(a) for a in started["listeners"]]
            self.wait_idle_workers()
        except BaseException:  # never leave a titus running behind a failed start
            self.stop()
            raise
        return self

    def wait_idle_workers(self, timeout: float = 10) -> None:
        """Wait until the pool has spawned its first spare workers (or the log says why not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.worker_pids()) > 0:
                return
            time.sleep(0.02)

    def children(self) -> list[int]:
        """The supervisor's live children (it has one thread)."""
        assert self.proc is not None
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except FileNotFoundError:
            return []

    def worker_pids(self) -> list[int]:
        """The jailed children: workers and the key holder (never uid 0)."""
        return [p for p in self.children() if process_uid(p) not in (None, 0)]

    def zygote_pids(self) -> list[int]:
        """titus's zygotes: the unjailed fork servers that clone its workers."""
        out = []
        for pid in (p for p in self.children() if process_uid(p) == 0):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"sandbox.forkserver" in f.read():
                    out.append(pid)
        return out

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

    def assert_records_valid(self) -> None:
        """Every record this titus wrote matches docs/logging.schema.json (tests/conftest.py
        checks it after every test that passed)."""
        bad = invalid_records(self.records())
        assert not bad, "records that do not match docs/logging.schema.json:\n" + \
            "\n".join(bad[:10])


@functools.cache
def _log_validators() -> dict[str, Any]:
    from jsonschema import Draft202012Validator

    schema = json.loads((ROOT / "docs" / "logging.schema.json").read_text())
    return {name: Draft202012Validator({**schema, "oneOf": [{"$ref": f"#/$defs/{name}"}]})
            for name in schema["$defs"]}


def invalid_records(records: list[dict[str, Any]]) -> list[str]:
    """One line per record that the log schema refuses: its event and the first reason."""
    validators = _log_validators()
    bad = []
    for record in records:
        validator = validators.get(record.get("event"))  # type: ignore[arg-type]
        if validator is None:
            bad.append(f"undocumented event: {record}")
            continue
        error = next(iter(validator.iter_errors(record)), None)
        if error is not None:
            path = "/".join(map(str, error.absolute_path))
            bad.append(f"{record.get('event')}: {path}: {error.message}")
    return bad


def _parse_addr(text: str) -> tuple[str, int]:
    """"127.0.0.1:443" or "[::1]:443", as titus's records write addresses."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


# -- backends -------------------------------------------------------------------------


class HTTPBackend:
    """Answers every GET with "backend NAME path PATH"."""

    def __init__(self, name: str = "A", host: str = "127.0.0.1", port: int = 0) -> None:
        backend_name = name

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
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
            request_queue_size = 1024  # bursts must not cost a 1 s SYN retransmit

        self.server = Server((host, port), Handler)  # a fixed port: a backend back up
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


class TCPBackend:
    """A loopback listener whose every connection gets a thread running `_one`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.srv = socket.create_server((host, 0), family=family, backlog=1024)
        self.port = self.srv.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.closing = False
        self.accepted = 0

    def _serve(self) -> None:
        while not self.closing:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.close()

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing = True
        # Wake the thread blocked in accept() (shutdown makes it fail) and wait for it
        # before the fd is closed: a thread that calls accept() on a closed fd number
        # would accept from whatever socket gets that number next, e.g. a later test's
        # backend (and echo its connection).
        with contextlib.suppress(OSError):
            self.srv.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=5)
        self.srv.close()


class SinkBackend(TCPBackend):
    """Per connection: read to EOF (sha256 + count), then send `reply_bytes` and close.

    With `reply_first` it sends its reply before reading, then reads to EOF:
    the backend-closes-first direction of a half-close.  With `read_after` it
    waits that long before its first read, so that what the client sends piles up
    in front of the proxy.
    """

    def __init__(self, reply_bytes: int = 0, reply_first: bool = False,
                 read_after: float = 0.0) -> None:
        super().__init__()
        self.reply_bytes = reply_bytes
        self.reply_first = reply_first
        self.read_after = read_after
        self.results: list[dict[str, Any]] = []
        self.done = threading.Condition()

    def _one(self, conn: socket.socket) -> None:
        digest, count, error = hashlib.sha256(), 0, None
        try:
            if self.reply_first:
                conn.sendall(pattern(self.reply_bytes))
                conn.shutdown(socket.SHUT_WR)
            time.sleep(self.read_after)
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



# -- helpers for the fault, pool and option tests ---------------------------------------
#
# What the tests see of titus from outside: its jailed children (uid != 0) as
# /proc lists them, the sockets they hold, and its session (titus is started
# with start_new_session, and jails never call setsid, so every process titus
# ever started carries titus's pid as its session id, even after titus dies).


def proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (index 0 = state), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def is_running(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie holds no fd, socket or memory)."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def start_time(pid: int) -> int:
    fields = proc_stat(pid)
    return int(fields[19]) if fields else 0


def open_fds(pid: int) -> dict[int, str]:
    """fd -> link target (root can read them although jails are not dumpable)."""
    out = {}
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return out


# Where the kernel notifies, a worker keeps the seccomp listener the executor left
# open for the supervisor (sandbox/_jail/confine.c) at fd 4: after its three kept fds
# (control, key-holder channel, stderr) and the sync socket (3, closed when it is ready).
LISTENER_FD = 4


def is_listener(target: str) -> bool:
    """An fd's link target is a seccomp notification listener."""
    return target == "anon_inode:seccomp notify"


def idle_worker_fds(fds: dict[int, str]) -> bool:
    """A worker's fds (open_fds) are an idle worker's: 0-2 and, if any, the listener."""
    rest = {fd: t for fd, t in fds.items() if not (fd == LISTENER_FD and is_listener(t))}
    return sorted(rest) == [0, 1, 2]


def nofile_limit(pid: int) -> int | None:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError), \
            open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None


def jailed_children(titus: Titus) -> list[int]:
    """titus's live jailed children: the key holder and every worker, idle or busy."""
    return [p for p in titus.worker_pids() if is_running(p)]


def keyholder_pid(titus: Titus) -> int:
    """The key holder's pid.

    After a restart the log names it ("keyholder-restarted", pid).  Before any
    restart it is the OLDEST jailed child: the supervisor starts it in
    start(), before the pool spawns its first worker, and it lives as long as
    titus.  Cross-check: its RLIMIT_NOFILE is max-children + 64 (one channel
    per worker), a worker's is the profile's 7, and it holds one channel socket
    per live worker besides its control socket.
    """
    restarted = [r for r in titus.records() if r.get("event") == "keyholder-restarted"]
    if restarted and is_running(restarted[-1]["pid"]):
        return int(restarted[-1]["pid"])
    # A worker that exits between the listing and its stat reads as start time 0: it
    # is gone, not the oldest.
    started = {p: start_time(p) for p in jailed_children(titus)}
    started = {p: t for p, t in started.items() if t}
    if not started:
        raise RuntimeError(f"titus has no jailed child: {titus.log_tail()}")
    return min(started, key=lambda p: started[p])


def session_processes(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is `sid`, wherever they were reparented."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = proc_stat(int(name))
            if fields and fields[0] not in ("Z", "X") and int(fields[3]) == sid:
                out.append(int(name))
    return out


def tcp_inodes(local: tuple[str, int], remote: tuple[str, int]) -> list[str]:
    def hexaddr(addr: tuple[str, int]) -> str:
        packed = socket.inet_aton(addr[0])
        return f"{int.from_bytes(packed, 'little'):08X}:{addr[1]:04X}"

    want_local, want_remote = hexaddr(local), hexaddr(remote)
    inodes = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[1] == want_local and parts[2] == want_remote:
                inodes.append(parts[9])
    return inodes


def worker_of(titus: Titus, client: socket.socket) -> int | None:
    """The pid of the worker serving `client` (an IPv4 socket connected to titus).

    The supervisor closes its copy of an accepted socket once it has handed it
    over, so the only process holding titus's end of the TCP connection is the
    worker: find the socket's inode in /proc/net/tcp, then the child holding it.
    """
    inodes = {f"socket:[{i}]" for i in tcp_inodes(client.getpeername()[:2],
                                                 client.getsockname()[:2])}
    for pid in jailed_children(titus):
        if inodes & set(open_fds(pid).values()):
            return pid
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for configs that need a fixed port)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def client_hello(ctx: Any, server_hostname: str | None) -> bytes:
    """The bytes of the ClientHello that `ctx` (an ssl.SSLContext) sends, built in memory."""
    import ssl

    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


class EchoBackend(TCPBackend):
    """Echoes every byte back; on EOF from the proxy, half-closes and closes."""

    def _one(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)



# -- streaming backends (appended for tests/integration/test_titus_data.py) ---------------


_LINGER_RESET = (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder)  # linger {1, 0}


def pattern_stream(n: int, seed: int = 7, piece: int = 1 << 20):
    """`pattern(n, seed)` in pieces of `piece` bytes, never all of it in memory at once."""
    if piece % 65536:
        raise ValueError("piece must be a multiple of the 64 KiB pattern block")
    block = pattern(piece, seed)
    full, rest = divmod(n, piece)
    for _ in range(full):
        yield block
    if rest:
        yield block[:rest]


class StreamBackend(TCPBackend):
    """Per connection, both directions at once.

    A sender thread sends `pattern(reply_bytes, seed)` and then shuts down
    writing, while the connection's own thread reads to EOF (sha256 + count),
    so nothing waits for the other direction.  With `reset_after` it instead
    sends that many bytes, reads nothing, and resets the connection
    (SO_LINGER 1,0 + close): the backend-resets direction.

    `conns` holds one dict per connection, updated live: `sent` (bytes whose
    send completed), `bytes`/`sha256` (received), `recv_error`/`send_error`
    (repr of the OSError, or None), `eof_at` (time.monotonic() when reading
    ended, by EOF or error) and `done`.
    """

    def __init__(self, reply_bytes: int, seed: int = 7, reset_after: int | None = None) -> None:
        super().__init__()
        self.reply_bytes = reply_bytes
        self.seed = seed
        self.reset_after = reset_after
        self.conns: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def _update(self, state: dict[str, Any], **changes: Any) -> None:
        with self.cond:
            state.update(changes)
            self.cond.notify_all()

    def _send(self, conn: socket.socket, state: dict[str, Any], total: int) -> None:
        try:
            for piece in pattern_stream(total, self.seed):
                conn.sendall(piece)
                self._update(state, sent=state["sent"] + len(piece))
            if self.reset_after is None:
                conn.shutdown(socket.SHUT_WR)
        except OSError as e:
            self._update(state, send_error=repr(e))

    def _one(self, conn: socket.socket) -> None:
        state: dict[str, Any] = {"sent": 0, "bytes": 0, "sha256": None, "recv_error": None,
                                 "send_error": None, "eof_at": None, "done": False}
        with self.cond:
            self.conns.append(state)
            self.cond.notify_all()
        if self.reset_after is not None:
            self._send(conn, state, self.reset_after)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            conn.close()
            self._update(state, done=True)
            return
        sender = threading.Thread(target=self._send, args=(conn, state, self.reply_bytes),
                                  daemon=True)
        sender.start()
        digest, count, error = hashlib.sha256(), 0, None
        try:
            while data := conn.recv(1 << 20):
                digest.update(data)
                count += len(data)
                self._update(state, bytes=count)
        except OSError as e:
            error = repr(e)
        self._update(state, sha256=digest.hexdigest(), recv_error=error,
                     eof_at=time.monotonic())
        sender.join(60)
        conn.close()
        self._update(state, done=True)

    def wait_conn(self, index: int, pred: Callable[[dict[str, Any]], bool] = lambda s: True,
                  timeout: float = 10) -> dict[str, Any] | None:
        """The `index`th connection's state once `pred` holds, or None after `timeout`."""
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.conns) > index and pred(self.conns[index]),
                                    timeout)
            return self.conns[index] if ok else None



def run_cli(config: Path, *args: str, timeout: float = 30) -> tuple[int, str, str]:
    """`titus --config FILE ARGS` to completion, in its own session: (exit code, stdout,
    stderr).  Fails if anything titus started is still running 2 s after it exited."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "titus.cli", "--config", str(config), "--log-format", "json",
         *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + 2
    while (left := session_processes(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left, f"still running after titus exited ({proc.returncode}): {left}"
    return proc.returncode, out, err


# -- a supervisor forked from the test, with workers from a rogue zygote ----------------------


def _forked_supervisor(config_path: Path, log_path: Path, zygote_setup: str | None) -> None:
    """Body of the forked child: the real supervisor; never returns (os._exit)."""
    code = 1
    try:
        os.setsid()
        from titus import logs
        from titus.config.load import load_config
        from titus.supervisor import Supervisor

        with open(log_path, "a") as stream:
            logs.setup("json", stream=stream)
            supervisor = Supervisor(load_config(config_path))
            if zygote_setup is not None:
                supervisor.zygote_setup = zygote_setup
            supervisor.start()
            supervisor.serve_forever()
        code = 0
    except BaseException:
        import traceback

        with contextlib.suppress(Exception), open(log_path, "a") as f:
            f.write(traceback.format_exc())
    finally:
        os._exit(code)


class ForkedTitus(Titus):
    """A real supervisor forked from the test, whose zygote runs `zygote_setup`
    (module:function, e.g. tests.native:setup, which wraps each worker in attacker code):
    the workers are real ones, cloned into real jails, running what the test says."""

    def __init__(self, tmp: Path, config: str, zygote_setup: str | None = None) -> None:
        super().__init__(tmp, config)
        self.zygote_setup = zygote_setup
        self.pid = 0

    def start_forked(self) -> Self:
        STARTED.append(self)
        self.log_path.write_bytes(b"")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child ends in os._exit
            _forked_supervisor(self.config_path, self.log_path, self.zygote_setup)
        self.pid = pid
        started = self.wait_forked(lambda r: r.get("event") == "started")
        self.addresses = [_parse_addr(a) for a in started["listeners"]]
        return self

    def children(self) -> list[int]:
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except FileNotFoundError:
            return []

    def alive(self) -> bool:
        """True while the forked supervisor runs; reaps it (pid 0) once it has exited."""
        if self.pid and os.waitpid(self.pid, os.WNOHANG)[0]:
            self.pid = 0
        return bool(self.pid)

    def wait_forked(self, pred: Callable[[dict], bool], timeout: float = 15) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.records():
                if pred(record):
                    return record
            if not self.alive():
                raise RuntimeError(f"forked supervisor exited: {self.log_tail()}")
            time.sleep(0.02)
        raise TimeoutError(f"no such log event: {self.log_tail()}")

    def stop_forked(self, timeout: float = 15) -> int | None:
        if not self.pid:
            return None
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.pid = 0
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.02)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.pid = 0
        return None


def kill_leftovers() -> list[int]:
    """Kill every titus the session started that is still running; their pids."""
    left = []
    for t in EVERY:
        if t.proc is not None and t.proc.poll() is None:
            left.append(t.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(t.proc.pid, signal.SIGKILL)
            t.proc.wait()
    return left
