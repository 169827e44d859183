"""fastecho's pytest plugin (fastecho/pytest_plugin.py, the pytest11 entry point), tested with
pytester: each test writes a test file that uses the fixtures, runs pytest on it in a
subprocess, and checks the outcome. Nothing in those files imports the plugin: the installed
entry point must provide it.
"""
from __future__ import annotations

import pytest

from fastecho import _core


def run(pytester: pytest.Pytester, source: str, **outcomes: int) -> pytest.RunResult:
    pytester.makepyfile(source)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(**outcomes)
    return result


def test_echo_server_serves_tcp_on_an_ephemeral_loopback_port(pytester):
    run(pytester, """
        import socket

        def test_echo(echo_server):
            host, port = echo_server.address()
            assert host == "127.0.0.1" and port > 0
            with socket.create_connection((host, port), timeout=10) as sock:
                sock.sendall(b"hello")
                assert sock.recv(5) == b"hello"

        def test_each_test_gets_its_own(echo_server):
            assert echo_server.running and echo_server.stats()["connections_accepted"] == 0
    """, passed=2)


def test_the_factory_takes_any_serve_option(pytester):
    run(pytester, """
        import socket

        def test_line_mode_and_udp(echo_server_factory):
            server = echo_server_factory(listen=["tcp://127.0.0.1:0", "udp://127.0.0.1:0"],
                                         suffix=" [echo]")
            with socket.create_connection(server.address("tcp"), timeout=10) as sock:
                sock.sendall(b"line\\n")
                assert sock.recv(100) == b"line [echo]\\n"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.settimeout(10)
                udp.sendto(b"dgram", server.address("udp"))
                assert udp.recv(100) == b"dgram"

        def test_limits(echo_server_factory):
            server = echo_server_factory(max_connections=1)
            first = socket.create_connection(server.address(), timeout=10)
            first.sendall(b"a"); assert first.recv(1) == b"a"
            with socket.create_connection(server.address(), timeout=10) as second:
                assert second.recv(1) == b""  # over the limit: closed at once
            first.close()

        def test_a_bad_option_is_the_cli_s_error(echo_server_factory):
            import pytest
            from fastecho.errors import ConfigError
            with pytest.raises(ConfigError, match="threads = 0: must be between 1 and 4096"):
                echo_server_factory(threads=0)
    """, passed=3)


@pytest.mark.skipif(not _core.TLS_AVAILABLE, reason="this build has no TLS")
def test_tls_trustme_gives_a_client_context_that_trusts_the_server(pytester):
    run(pytester, """
        import socket

        def test_tls(echo_server_factory):
            server = echo_server_factory(listen=["tls://127.0.0.1:0"], tls="trustme")
            context = server.client_ssl_context
            raw = socket.create_connection(server.address("tls"), timeout=10)
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"over TLS")
                assert tls.recv(100) == b"over TLS"
    """, passed=1)


def test_servers_are_stopped_after_each_test_and_leave_nothing(pytester):
    run(pytester, """
        import os
        import time

        BASE = {}

        def counts():
            return len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task"))

        def test_1_baseline():
            BASE["before"] = counts()

        def test_2_uses_three(echo_server, echo_server_factory):
            echo_server_factory(threads=2)
            echo_server_factory(listen=["udp://127.0.0.1:0"])
            assert counts()[1] > BASE["before"][1]

        def test_3_all_gone():
            # A joined thread may linger in /proc/self/task until the kernel reaps it.
            deadline = time.monotonic() + 10
            while counts() != BASE["before"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert counts() == BASE["before"]
    """, passed=3)


def test_the_plugin_costs_nothing_until_a_fixture_is_used(pytester):
    run(pytester, """
        import sys

        def test_nothing_loaded():
            assert "fastecho.pytest_plugin" in sys.modules  # registered by the entry point
            for heavy in ("fastecho._core", "fastecho.api", "fastecho.server", "trustme"):
                assert heavy not in sys.modules, heavy
    """, passed=1)
