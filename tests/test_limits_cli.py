"""Limits, access control and exposure, as an operator sets them on `fastecho serve`."""
from __future__ import annotations

import os
import socket

import pytest

from helpers import closed_by_server, connect_from, echo_roundtrip, ipv6_loopback

pytestmark = pytest.mark.usefixtures("io_backend")  # each test runs on epoll and io_uring


def test_max_connections_refuses_only_the_extra_connection(serve):
    server = serve("--threads", "2", "--max-connections", "2")
    with server.connect() as a, server.connect() as b:
        assert echo_roundtrip(a, b"a") == b"a"
        assert echo_roundtrip(b, b"b") == b"b"
        with server.connect() as extra:
            assert closed_by_server(extra)
        assert echo_roundtrip(a, b"a again") == b"a again"


def test_max_connections_per_ip_counts_each_address(serve):
    server = serve("--threads", "2", "--max-connections-per-ip", "1")
    with server.connect() as first:
        assert echo_roundtrip(first, b"one") == b"one"
        with server.connect() as second:
            assert closed_by_server(second)
        with connect_from("127.0.0.2", (server.host, server.port)) as other:
            assert echo_roundtrip(other, b"other") == b"other"


def test_allow_serves_only_listed_networks(serve):
    server = serve("--threads", "1", "--allow", "127.0.0.2/32", "--allow", "192.0.2.0/24")
    with server.connect() as denied:
        assert closed_by_server(denied)
    with connect_from("127.0.0.2", (server.host, server.port)) as allowed:
        assert echo_roundtrip(allowed, b"ok") == b"ok"


def test_idle_timeout_closes_a_silent_client(serve):
    server = serve("--threads", "1", "--idle-timeout", "0.3")
    with server.connect() as silent:
        assert echo_roundtrip(silent, b"hi") == b"hi"
        assert closed_by_server(silent, timeout=5)


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_loopback_host(serve):
    server = serve("--threads", "1", "--host", "::1")
    assert server.host == "::1"
    with socket.create_connection(("::1", server.port), timeout=5) as s:
        assert echo_roundtrip(s, b"six") == b"six"


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_dual_stack_host_applies_ipv4_rules_to_mapped_clients(serve):
    # On "::" IPv4 clients arrive as ::ffff:127.0.0.1 and must match IPv4 ranges.
    server = serve("--threads", "1", "--host", "::", "--allow", "127.0.0.1/32", "--allow", "::1/128")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as v4:
        assert echo_roundtrip(v4, b"four") == b"four"
    with socket.create_connection(("::1", server.port), timeout=5) as v6:
        assert echo_roundtrip(v6, b"six") == b"six"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_user_drops_root_privileges_on_every_thread(serve):
    # The engine's threads start after the drop, so none of them may keep root.
    server = serve("--threads", "2", "--user", "nobody")
    with server.connect() as s:
        assert echo_roundtrip(s, b"unprivileged") == b"unprivileged"
    for task in os.listdir(f"/proc/{server.pid}/task"):
        with open(f"/proc/{server.pid}/task/{task}/status") as f:
            ids = {line.split(":")[0]: line.split()[1:] for line in f if line.startswith(("Uid:", "Gid:"))}
        assert "0" not in ids["Uid"] and "0" not in ids["Gid"], (task, ids)
