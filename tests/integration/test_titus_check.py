"""`titus --check` refuses what start-up refuses: a port in use, a backend name that does not
resolve; it warns about a certificate clients will refuse; no message cites a line 0."""

from __future__ import annotations

import datetime
import os
import re
import socket
from pathlib import Path

import pytest

from tests.pki import CA
from tests.titus_harness import Titus, free_port, run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="titus needs root")

DAY = datetime.timedelta(days=1)


@pytest.fixture
def leaf(tmp_path: Path):
    return CA(tmp_path / "pki").issue("check.test")


def conf(leaf, listen: str, backend: str = "backend 127.0.0.1\n") -> str:
    return (f"listen {listen}\ncert {leaf.cert}\nkey {leaf.key}\n{backend}"
            f"backend-port 9\nmin-spare-children 1\n")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "titus.conf"
    path.write_text(text)
    return path


def test_port_in_use_is_refused_by_check_as_by_start_up(tmp_path: Path, leaf) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        config = write(tmp_path, conf(leaf, f"127.0.0.1:{port}"))
        code, out, err = run_cli(config, "--check")
        assert code == 2, (out, err)
        assert err.startswith(f"titus: {config}:1: listen 127.0.0.1:{port}: address already "
                              f"in use by "), err
        assert f"(pid {os.getpid()})" in err  # the process that holds it
        code, _out, start_err = run_cli(config)
        assert code == 1 and "Address already in use" in start_err, start_err
    code, out, err = run_cli(config, "--check")
    assert code == 0, err


def test_ipv6_port_in_use(tmp_path: Path, leaf) -> None:
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as other:
        port = other.getsockname()[1]
        config = write(tmp_path, conf(leaf, f"[::1]:{port}"))
        code, _out, err = run_cli(config, "--check")
        assert code == 2 and f"{config}:1: listen [::1]:{port}: address already in use" in err


def test_metrics_port_in_use(tmp_path: Path, leaf) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        config = write(tmp_path, conf(leaf, "127.0.0.1:0") + f"metrics-listen 127.0.0.1:{port}\n")
        code, _out, err = run_cli(config, "--check")
        assert code == 2, err
        assert f"{config}:7: metrics-listen 127.0.0.1:{port}: address already" in err, err


def test_a_port_shared_for_socket_activation_passes(tmp_path: Path, leaf) -> None:
    """What a systemd socket unit with ReusePort=yes holds is titus's to take over."""
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        config = write(tmp_path, conf(leaf, f"127.0.0.1:{held.getsockname()[1]}"))
        code, _out, err = run_cli(config, "--check")
        assert code == 0, err


def test_check_while_titus_runs_names_it(tmp_path: Path, leaf) -> None:
    """Checking a changed configuration before a reload: the running titus holds the port."""
    port = free_port()
    titus = Titus(tmp_path, conf(leaf, f"127.0.0.1:{port}"))
    with titus:
        code, _out, err = run_cli(titus.config_path, "--check")
        assert code == 0, err
        assert titus.proc is not None
        assert (f"note: {titus.config_path}:1: listen 127.0.0.1:{port}: in use by titus "
                f"(pid {titus.proc.pid})") in err, err


def test_unresolvable_backend(tmp_path: Path, leaf) -> None:
    config = write(tmp_path, conf(leaf, "127.0.0.1:0", "backend no-such-host.invalid\n")
                   + "dns-timeout 2\n")
    code, _out, err = run_cli(config, "--check")
    assert code == 2
    assert err.startswith(f"titus: {config}:4: cannot resolve backend no-such-host.invalid: ")
    code, _out, start_err = run_cli(config)
    assert code == 1 and f"{config}:4: cannot resolve backend" in start_err, start_err


def test_unresolvable_backend_of_a_vhost_block_names_its_line(tmp_path: Path, leaf) -> None:
    text = (f"listen 127.0.0.1:0\ncert {leaf.cert}\nkey {leaf.key}\nbackend-port 9\n"
            "dns-timeout 2\nvhost a\n  sni-name a.test\n  backend 127.0.0.1\n"
            "vhost b\n  backend no-such-host.invalid\n")
    config = write(tmp_path, text)
    code, _out, err = run_cli(config, "--check")
    assert code == 2 and err.startswith(f"titus: {config}:10: cannot resolve backend "), err


@pytest.mark.parametrize(("valid", "word", "field"), [
    ((-30 * DAY, -DAY), "expired", "notAfter"),
    ((DAY, 30 * DAY), "not valid yet", "notBefore"),
])
def test_certificate_out_of_date_warns_naming_the_date(tmp_path: Path, valid, word: str,
                                                        field: str) -> None:
    ca = CA(tmp_path / "pki")
    stale = ca.issue("check.test", valid=valid)
    config = write(tmp_path, conf(stale, "127.0.0.1:0"))
    code, _out, err = run_cli(config, "--check")
    assert code == 0, err
    when = (datetime.datetime.now(datetime.UTC) + valid[1 if field == "notAfter" else 0])
    match = re.search(rf"note: {re.escape(str(config))}:2: cert \S+: {word}: {field} "
                      rf"(\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ)", err)
    assert match, err
    stated = datetime.datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
    assert abs(stated - when) < datetime.timedelta(minutes=5)
    # start-up says it too, as a warning in the log
    titus = Titus(tmp_path, conf(stale, "127.0.0.1:0"))
    with titus:
        record = titus.wait_event(lambda r: r.get("event") == "config-notice")
        assert record["level"] == "WARNING" and f"{word}: {field}" in record["notice"]


def test_no_message_cites_line_zero(tmp_path: Path, leaf) -> None:
    """A setting missing from the whole file is cited by the file's name alone."""
    config = write(tmp_path, f"cert {leaf.cert}\nkey {leaf.key}\nbackend-port 9\n")
    code, _out, err = run_cli(config, "--check")
    assert code == 2 and err == f"titus: {config}: no port to listen on; set `port` " \
                                "(e.g. 443)\n", err
    config = write(tmp_path, f"port 0\ncert {leaf.cert}\nkey {leaf.key}\n")
    code, _out, err = run_cli(config, "--check")
    assert code == 2 and err == (f"titus: {config}: no backend-port; set `backend-port` "
                                 "globally\n"), err
