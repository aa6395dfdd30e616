"""SIGHUP reloads the configuration and certificates: new connections get the new
ones, a connection in flight finishes undisturbed, a bad config changes nothing."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import urllib.request

import pytest

from tests.pki import CA
from tests.titus_harness import HTTPBackend, Titus, free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")


def config(leaf, port: int) -> str:
    return (f"listen 127.0.0.1:0\ncert {leaf.cert}\nkey {leaf.key}\nbackend 127.0.0.1\n"
            f"backend-port {port}\nmin-spare-children 2\n")


def request(tls: ssl.SSLSocket, path: str) -> bytes:
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(body) >= length:
                return body
        chunk = tls.recv(65536)
        assert chunk
        data += chunk


def connect(ca: CA, port: int) -> tuple[ssl.SSLSocket, str]:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = ctx.wrap_socket(raw, server_hostname="reload.test")
    cn = dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]
    return tls, cn


def test_sighup_reload(tmp_path):
    ca = CA(tmp_path / "pki")
    old_leaf = ca.issue("reload.test", "rsa2048", filename="old")
    new_leaf = ca.issue("reload.test", "p256", filename="new")
    with HTTPBackend("A") as a, HTTPBackend("B") as b:
        titus = Titus(tmp_path, config(old_leaf, a.port))
        with titus:
            held, _ = connect(ca, titus.port)
            assert request(held, "/1") == b"backend A path /1\n"
            titus.config_path.write_text(config(new_leaf, b.port))
            assert titus.proc is not None
            titus.proc.send_signal(signal.SIGHUP)
            titus.wait_event(lambda r: r.get("event") == "reloaded")
            fresh, _ = connect(ca, titus.port)
            assert request(fresh, "/2") == b"backend B path /2\n"
            assert fresh.getpeercert()["subject"]  # verified with the new certificate
            assert fresh.cipher()[0]  # and served by a worker of the new generation
            fresh.close()
            # The connection from before the reload still goes where it went.
            assert request(held, "/3") == b"backend A path /3\n"
            held.close()
            # A broken configuration is refused and the running one stays.
            titus.config_path.write_text("this-is-not-an-option 1\n")
            titus.proc.send_signal(signal.SIGHUP)
            refused = titus.wait_event(lambda r: r.get("event") == "reload-refused")
            assert "this-is-not-an-option" in refused["error"]
            again, _ = connect(ca, titus.port)
            assert request(again, "/4") == b"backend B path /4\n"
            again.close()
        assert titus.proc.returncode == 0


def test_what_a_reload_sizes_follows_it_or_is_refused(tmp_path):
    """metrics-listen moves with a reload; the jail uid range cannot (connections in flight
    hold uids of it): a reload changing it is refused, saying so."""
    ca = CA(tmp_path / "pki")
    leaf = ca.issue("reload.test")
    first, second = free_port(), free_port()
    with HTTPBackend("A") as a:
        base = config(leaf, a.port)
        titus = Titus(tmp_path, base + f"metrics-listen 127.0.0.1:{first}\n")
        with titus:
            urllib.request.urlopen(f"http://127.0.0.1:{first}/metrics", timeout=5).close()
            titus.config_path.write_text(base + f"metrics-listen 127.0.0.1:{second}\n")
            assert titus.proc is not None
            titus.proc.send_signal(signal.SIGHUP)
            titus.wait_event(lambda r: r.get("event") == "reloaded")
            text = urllib.request.urlopen(f"http://127.0.0.1:{second}/metrics",
                                          timeout=5).read().decode()
            assert "titus_config_generation 2.0" in text
            with pytest.raises(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{first}/metrics", timeout=5)
    # uid-count is a titus.toml [jail] setting
    toml = tmp_path / "t"
    toml.mkdir()
    text = (f'cert = "{leaf.cert}"\nkey = "{leaf.key}"\nbackend = "127.0.0.1"\n'
            f'backend-port = 9\nmin-spare-children = 1\n[[listen]]\naddress = "127.0.0.1"\n'
            'port = 0\n')
    titus = Titus(toml, text, suffix=".toml")
    with titus:
        titus.config_path.write_text(text + "[jail]\nuid-count = 4096\n")
        assert titus.proc is not None
        titus.proc.send_signal(signal.SIGHUP)
        refused = titus.wait_event(lambda r: r.get("event") == "reload-refused")
        assert "uid-first and uid-count cannot change on reload" in refused["error"]
