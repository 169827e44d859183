"""Prometheus metrics: a real HTTP scrape, and counters that equal the traffic exactly."""
from __future__ import annotations

import os
import socket
import threading

import pytest

from helpers import echo_roundtrip, listeners, recv_exactly, run_cli, scrape, start_server, wait_until

pytestmark = pytest.mark.usefixtures("io_backend")  # each test runs on epoll and io_uring

METRICS_URL = r"metrics at (http://(\S+?):(\d+)/metrics)"


def metrics_url(server) -> str:
    return server.wait_for_stderr(METRICS_URL)[1]


def test_scrape_counts_every_connection_and_byte_exactly(serve):
    server = serve("--threads", "2", "--metrics-port", "0")
    url = metrics_url(server)
    before = scrape(url)
    assert before["fastecho_connections_total"] == 0
    assert before["fastecho_bytes_received_total"] == 0
    payloads = [b"x", os.urandom(1000), os.urandom(70_000), os.urandom(1 << 20)]
    for payload in payloads:
        with server.connect() as sock:
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            assert recv_exactly(sock, len(payload), timeout=20) == payload
            sender.join(20)
    total = sum(map(len, payloads))
    assert wait_until(lambda: scrape(url)["fastecho_connections_active"] == 0, 10)
    after = scrape(url)
    assert after["fastecho_connections_total"] == len(payloads)
    assert after["fastecho_connections_closed_total"] == len(payloads)
    assert after["fastecho_bytes_received_total"] == total
    assert after["fastecho_bytes_sent_total"] == total
    assert after["fastecho_accept_errors_total"] == 0
    assert after["fastecho_log_events_dropped_total"] == 0
    assert after['fastecho_connections_rejected_total{reason="max_connections"}'] == 0
    assert "process_open_fds" in after
    assert server.stop() == 0


def test_active_connections_gauge_follows_open_connections(serve):
    server = serve("--threads", "2", "--metrics-port", "0")
    url = metrics_url(server)
    socks = [server.connect() for _ in range(5)]
    try:
        for sock in socks:
            assert echo_roundtrip(sock, b"hi") == b"hi"
        assert scrape(url)["fastecho_connections_active"] == 5
    finally:
        for sock in socks:
            sock.close()
    assert wait_until(lambda: scrape(url)["fastecho_connections_active"] == 0, 10)
    assert server.stop() == 0


def test_metrics_listen_on_loopback_unless_told_otherwise(serve):
    server = serve("--threads", "1", "--metrics-port", "0")
    match = server.wait_for_stderr(METRICS_URL)
    assert match[2] == "127.0.0.1"
    with socket.create_connection(("127.0.0.1", int(match[3])), timeout=5):
        pass
    assert server.stop() == 0


def _ipv6_loopback() -> bool:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_metrics_host_option_moves_the_endpoint(serve):
    server = serve("--threads", "1", "--metrics-port", "0", "--metrics-host", "::1")
    match = server.wait_for_stderr(r"metrics at (http://\[(\S+?)\]:(\d+)/metrics)")
    assert match[2] == "::1"
    assert scrape(match[1])["fastecho_connections_total"] == 0
    assert server.stop() == 0


def test_metrics_port_in_use_is_one_line_exit_1():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run_cli("serve", "--port", "0", "--metrics-port", str(port))
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines() == [
        f"fastecho: error: cannot serve metrics on 127.0.0.1:{port}: address already in use"]


def test_lines_too_long_are_exported(serve):
    server = serve("--threads", "1", "--metrics-port", "0", "--suffix", "!", "--max-line", "16")
    url = metrics_url(server)
    with server.connect() as sock:
        sock.sendall(b"y" * 100 + b"\n")
        sock.settimeout(10)
        try:
            while sock.recv(4096):  # the error line, then the server closes
                pass
        except ConnectionResetError:
            pass
    assert wait_until(lambda: scrape(url)["fastecho_lines_too_long_total"] == 1, 10)
    assert server.stop() == 0


def test_listener_label_counts_each_listeners_connections(tmp_path):
    server = start_server(tmp_path, "--threads", "2", "--metrics-port", "0", "--listen", "tcp://127.0.0.1:0",
                          "--listen", "tcp+proxy://127.0.0.1:0", port=None)
    try:
        url = metrics_url(server)
        (_, host, plain), (_, _, proxied) = listeners(server)
        plain_url, proxy_url = f"tcp://{host}:{plain}", f"tcp+proxy://{host}:{proxied}"
        held = socket.create_connection((host, plain), timeout=5)
        with socket.create_connection((host, plain), timeout=5) as s:
            assert echo_roundtrip(s, b"one") == b"one"
        with socket.create_connection((host, proxied), timeout=5) as s:
            s.sendall(b"PROXY UNKNOWN\r\n")
            assert echo_roundtrip(s, b"two") == b"two"
        assert wait_until(lambda: scrape(url)["fastecho_connections_active"] == 1, 10)
        metrics = scrape(url)
        assert metrics[f'fastecho_listener_connections_total{{listener="{plain_url}"}}'] == 2
        assert metrics[f'fastecho_listener_connections_total{{listener="{proxy_url}"}}'] == 1
        assert metrics[f'fastecho_listener_connections_active{{listener="{plain_url}"}}'] == 1
        assert metrics[f'fastecho_listener_connections_active{{listener="{proxy_url}"}}'] == 0
        held.close()
    finally:
        assert server.stop() == 0
