"""The backend socket's bind to the client's address (tests/integration/test_titus_transparent.py
runs the whole of transparent mode between network namespaces)."""

from __future__ import annotations

import os
import socket

import pytest

from titus.supervisor.transparent import IP_TRANSPARENT, bind_as_client, client_source

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="IP_TRANSPARENT needs CAP_NET_ADMIN")


def test_a_dual_stack_listeners_ipv4_client_binds_its_plain_address() -> None:
    assert client_source(socket.AF_INET, ("::ffff:10.1.0.2", 4000)) == ("10.1.0.2", 4000)
    assert client_source(socket.AF_INET6, ("2001:db8::2", 4000)) == ("2001:db8::2", 4000, 0, 0)


@pytest.mark.parametrize(("family", "peer", "message"), [
    (socket.AF_INET, ("2001:db8::2", 1), "cannot connect as the IPv6 client 2001:db8::2 to an "
                                         "IPv4 backend"),
    (socket.AF_INET6, ("::ffff:10.1.0.2", 1), "cannot connect as the IPv4 client 10.1.0.2 to "
                                              "an IPv6 backend"),
])
def test_the_client_and_the_backend_must_share_a_family(family: int, peer: tuple,
                                                        message: str) -> None:
    with pytest.raises(OSError) as raised:
        client_source(family, peer)
    assert raised.value.strerror == f"transparent: {message}"


@root_only
def test_bind_is_transparent_and_keeps_address_and_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    with socket.socket() as sock:
        bind_as_client(sock, ("::ffff:127.0.0.1", free))
        assert sock.getsockname() == ("127.0.0.1", free)
        assert sock.getsockopt(socket.IPPROTO_IP, IP_TRANSPARENT) == 1


@root_only
def test_a_client_on_this_host_keeps_its_address_but_not_its_port() -> None:
    """titus 0.2: the client holds its own port, so the kernel picks another."""
    with socket.create_server(("127.0.0.1", 0)) as client_side:
        port = client_side.getsockname()[1]
        with socket.socket() as sock:
            bind_as_client(sock, ("127.0.0.1", port))
            host, bound = sock.getsockname()
            assert host == "127.0.0.1" and bound not in (0, port)
