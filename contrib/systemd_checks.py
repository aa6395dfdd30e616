"""Run inside the systemd container by contrib/test-systemd.sh: contrib/titus.service and
contrib/titus.socket, driven by a real systemd (PID 1) as an operator drives them.

  1. `systemctl start titus` returns once titus said READY=1 (sd_notify); its STATUS=
     reached systemd; a TLS request goes through titus to a backend.
  2. `systemctl reload titus` reloads (a "reloaded" record; the same main process); with
     a broken configuration it fails (ExecReload's --check) and titus serves on.
  3. `systemctl stop titus` drains: a connection in flight keeps working until it
     closes, new ones are refused, then titus exits cleanly with its byte counts logged.
  4. A crash (SIGKILL to the main process) restarts it (Restart=on-failure).
  5. Socket activation: with titus.socket listening and titus.service stopped, a
     client's connection starts titus, which serves it on systemd's socket; and a
     connection made while titus is stopped again waits and is served.

Python's ssl is the client; the backend is an echo server in this process.  Every
wait is bounded.  Prints one line per check; exits nonzero naming what failed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

PORT = 443  # titus.socket's ListenStream; titus.conf says `port 443`
BACKEND = 8080
CA = "/etc/titus/cert.pem"
CONF = "/etc/titus/titus.conf"


class Failed(Exception):
    pass


def run(*cmd: str, timeout: float = 60, check: bool = True) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise Failed(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def show(unit: str) -> dict[str, str]:
    out = run("systemctl", "show", unit, "-p",
              "ActiveState,SubState,MainPID,NRestarts,Result,ExecMainStatus,StatusText")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_until(what: str, pred: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise Failed(f"not within {timeout:g} s: {what}")


def records(since: str) -> list[dict[str, Any]]:
    """titus's JSON records in the journal since the cursor `since`."""
    out = run("journalctl", "-u", "titus.service", "-o", "cat", "--no-pager",
              f"--after-cursor={since}" if since else "--since=-10min")
    found = []
    for line in out.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def cursor() -> str:
    out = run("journalctl", "-n", "1", "-o", "json", "--no-pager")
    return json.loads(out.splitlines()[-1])["__CURSOR"] if out.strip() else ""


def event(since: str, name: str, timeout: float = 30, **match: Any) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((r for r in records(since) if r.get("event") == name
                     and all(r.get(k) == v for k, v in match.items())), None)
    return wait_until(f"a {name!r} record {match or ''}", find, timeout)


class Echo(threading.Thread):
    """The backend: echoes every byte; on EOF, half-closes."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", BACKEND))

    def run(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self.one, args=(conn,), daemon=True).start()

    @staticmethod
    def one(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)


def connect(timeout: float = 10) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=CA)
    raw = socket.create_connection(("127.0.0.1", PORT), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def echo(tls: ssl.SSLSocket, data: bytes) -> None:
    tls.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = tls.recv(65536)
        if not chunk:
            raise Failed(f"connection closed after {got!r}, wanted {data!r}")
        got += chunk
    if got != data:
        raise Failed(f"echoed {got!r}, wanted {data!r}")


def round_trip(data: bytes = b"hello through titus\n") -> None:
    with connect() as tls:
        echo(tls, data)


def start() -> None:
    since = cursor()
    t0 = time.monotonic()
    run("systemctl", "start", "titus.service", timeout=90)
    state = show("titus.service")
    if state["ActiveState"] != "active" or not state["StatusText"].startswith("serving"):
        raise Failed(f"after systemctl start: {state}")
    started = event(since, "started")
    print(f"start: active after {time.monotonic() - t0:.1f} s (Type=notify, READY=1 via "
          f"sd_notify; STATUS={state['StatusText']!r}; listeners {started['listeners']})")
    round_trip()
    print("start: a TLS request went through titus to the backend")


def reload() -> None:
    before = show("titus.service")["MainPID"]
    since = cursor()
    run("systemctl", "reload", "titus.service")
    event(since, "reloaded")
    wait_until("active again after RELOADING=1",
               lambda: show("titus.service")["ActiveState"] == "active")
    if show("titus.service")["MainPID"] != before:
        raise Failed("reload replaced the main process")
    round_trip()
    print(f"reload: 'reloaded' logged, same main process {before}, still serving")
    with open(CONF) as f:
        good = f.read()
    try:
        with open(CONF, "a") as f:
            f.write("no-such-option 1\n")
        proc = subprocess.run(["systemctl", "reload", "titus.service"], capture_output=True,
                              text=True, timeout=60)
        if proc.returncode == 0:
            raise Failed("systemctl reload of a broken configuration succeeded")
    finally:
        with open(CONF, "w") as f:
            f.write(good)
    state = show("titus.service")
    if state["ActiveState"] != "active" or state["MainPID"] != before:
        raise Failed(f"after a refused reload: {state}")
    round_trip()
    print("reload: a broken configuration makes `systemctl reload` fail (ExecReload's "
          "--check); titus keeps serving the old one")


def priority() -> None:
    main = int(show("titus.service")["MainPID"])
    with open(f"/proc/{main}/task/{main}/children") as f:
        children = [int(p) for p in f.read().split()]
    ours = os.getpriority(os.PRIO_PROCESS, main)
    nice = {pid: os.getpriority(os.PRIO_PROCESS, pid) for pid in children}
    if ours != 10 or set(nice.values()) != {0}:
        raise Failed(f"the supervisor's nice value {ours}, its children's {nice}")
    print(f"priority: the supervisor at nice 10 (CAP_SYS_NICE in the unit), its "
          f"{len(children)} children (zygote, key holder, workers) at the unit's 0")


def stop_drains() -> None:
    since = cursor()
    held = connect()
    echo(held, b"a")
    run("systemctl", "stop", "--no-block", "titus.service")
    wait_until("titus deactivating", lambda: show("titus.service")["ActiveState"]
               == "deactivating")
    event(since, "stopping")
    echo(held, b"bb")  # still served while it drains
    try:
        connect(timeout=3).close()
        raise Failed("a new connection was accepted during the drain")
    except (ConnectionRefusedError, ssl.SSLError, OSError) as e:
        if isinstance(e, Failed):
            raise
    held.close()
    wait_until("titus inactive", lambda: show("titus.service")["ActiveState"] == "inactive")
    state = show("titus.service")
    if state["Result"] != "success" or state["ExecMainStatus"] != "0":
        raise Failed(f"after the drain: {state}")
    conn = event(since, "connection", bytes_in=3)
    event(since, "stopped")
    print(f"stop: drained (the held connection kept working: {conn['bytes_in']} bytes in, "
          f"{conn['bytes_out']} out, outcome {conn['outcome']}); new ones refused; "
          f"exit 0, Result=success")


def crash_restarts() -> None:
    start()
    state = show("titus.service")
    pid, restarts = int(state["MainPID"]), int(state["NRestarts"])
    os.kill(pid, signal.SIGKILL)
    after = wait_until("restarted after SIGKILL", lambda: (
        (s := show("titus.service"))["ActiveState"] == "active"
        and int(s["NRestarts"]) == restarts + 1 and int(s["MainPID"]) not in (0, pid)
        and s), timeout=60)
    round_trip()
    print(f"crash: SIGKILL to {pid} -> restarted as {after['MainPID']} "
          f"(NRestarts={after['NRestarts']}), serving")


def socket_activation() -> None:
    run("systemctl", "stop", "titus.service", timeout=90)
    run("systemctl", "start", "titus.socket")
    if show("titus.service")["ActiveState"] != "inactive":
        raise Failed("titus.service started with its socket, not by a connection")
    since = cursor()
    round_trip(b"the first connection starts titus\n")
    started = event(since, "started")
    state = show("titus.service")
    pid = int(state["MainPID"])
    fd3 = os.readlink(f"/proc/{pid}/fd/3")
    with open(f"/proc/{pid}/environ", "rb") as f:
        passed = b"LISTEN_FDS=1" in f.read()
    if not (passed and fd3.startswith("socket:")):
        raise Failed(f"titus did not get systemd's socket (fd 3: {fd3}, LISTEN_FDS: {passed})")
    print(f"socket activation: a connection started titus (pid {pid}), which serves "
          f"systemd's socket {started['listeners']} (fd 3)")
    run("systemctl", "stop", "titus.service", timeout=90)
    round_trip(b"served after a restart by the socket\n")
    if show("titus.service")["ActiveState"] != "active":
        raise Failed("the connection did not start titus again")
    print("socket activation: with titus stopped, the next connection waited and was served")


def main() -> int:
    Echo().start()
    run("systemctl", "is-system-running", "--wait", timeout=120, check=False)
    checks = [start, reload, priority, stop_drains, crash_restarts, socket_activation]
    try:
        for check in checks:
            check()
    except (Failed, OSError, subprocess.TimeoutExpired, KeyError, ValueError) as e:
        print(f"FAILED in {check.__name__}: {e}", file=sys.stderr)
        print(run("journalctl", "-u", "titus.service", "-u", "titus.socket", "-n", "40",
                  "--no-pager", check=False), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
