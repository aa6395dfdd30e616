"""A real nginx (Debian's) as a backend for the tests, with its own config in a temporary
directory: plain HTTP/1.1, cleartext HTTP/2 (h2c, prior knowledge), or behind PROXY."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

CONF = """\
daemon off;
master_process off;
worker_processes 1;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {tmp}/access.log combined;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port}{listen_flags};
        root {tmp}/www;
        location / {{ {location} }}
    }}
}}
"""


class Nginx:
    """`with Nginx(tmp, "hello") as n:` serves "hello\\n" at / on 127.0.0.1:n.port.

    `http2` makes it speak cleartext HTTP/2 with prior knowledge; `location` replaces
    the body of `location / { }` (e.g. a `return` naming $proxy_protocol_addr).
    """

    def __init__(self, tmp: Path, body: str = "hello from nginx", http2: bool = False,
                 proxy_protocol: bool = False, location: str = "") -> None:
        if shutil.which("nginx") is None:
            raise RuntimeError("nginx is not installed (make installs nginx-light)")
        self.dir = tmp
        (tmp / "www").mkdir(parents=True, exist_ok=True)
        (tmp / "www" / "index.html").write_text(body + "\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        flags = (" http2" if http2 else "") + (" proxy_protocol" if proxy_protocol else "")
        self.conf = tmp / "nginx.conf"
        self.conf.write_text(CONF.format(tmp=tmp, port=self.port, listen_flags=flags,
                                         location=location))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        self.proc = subprocess.Popen(["nginx", "-c", str(self.conf), "-p", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("nginx did not listen within 10 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def access_log(self) -> str:
        path = self.dir / "access.log"
        return path.read_text() if path.exists() else ""
