"""The plain-HTTP backend: nginx with its own minimal config in a temporary directory.

It serves /small (100 bytes) and /big (100 MB) with keep-alive, and accepts
uploads with `PUT /upload/blob` through the DAV module: nginx reads the WHOLE
request body into a temporary file on tmpfs (/dev/shm) and then renames it
over the previous upload before it answers 201/204, so an upload is only
answered once every byte went through the proxy (a plain `return 204` could
answer before reading the body).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import common

SMALL_SIZE = 100
BIG_SIZE = 100 * 1000 * 1000


@dataclass
class Backend:
    port: int
    root: Path
    upload_dir: Path
    proc: subprocess.Popen

    @property
    def upload_file(self) -> Path:
        return self.upload_dir / "upload" / "blob"


CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    default_type application/octet-stream;
    client_body_temp_path {shm}/body;
    proxy_temp_path {tmp}/proxy;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {tmp}/www;
        location = /small {{ }}
        location = /big {{ }}
        location /upload/ {{
            root {shm};
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 200m;
            client_body_buffer_size 1m;
        }}
    }}
}}
"""


def start(tmp: Path) -> Backend:
    """Write the files and the config, start nginx on the load CPU, wait until it listens."""
    www = tmp / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "small").write_bytes(b"x" * (SMALL_SIZE - 1) + b"\n")
    with open(www / "big", "wb") as f:
        block = os.urandom(1 << 20)
        written = 0
        while written < BIG_SIZE:
            n = min(len(block), BIG_SIZE - written)
            f.write(block[:n])
            written += n
    shm = Path(tempfile.mkdtemp(prefix="titus-bench-", dir="/dev/shm"))
    (shm / "body").mkdir()
    (shm / "upload").mkdir()
    port = common.free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(CONFIG.format(tmp=tmp, shm=shm, port=port))
    proc = common.start(["nginx", "-p", str(tmp), "-c", str(conf), "-e",
                         str(tmp / "nginx-error.log")], common.LOAD_CPU,
                        log=tmp / "nginx.stderr")
    common.wait_port(port, proc)
    return Backend(port, www, shm, proc)


def cleanup(backend: Backend | None) -> None:
    if backend is not None:
        shutil.rmtree(backend.upload_dir, ignore_errors=True)
