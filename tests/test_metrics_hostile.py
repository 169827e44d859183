"""The metrics endpoint against clients that hang, trickle, flood or misspeak, and at the fd limit."""
from __future__ import annotations

import socket
import time
from contextlib import ExitStack
from urllib.parse import urlsplit

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from fastecho.metrics_http import HEADER_TIMEOUT, MAX_HEADER_BYTES
from fastecho.server import FD_RESERVE
from helpers import (closed_by_server, proc_fd_count, proc_thread_count, scrape, start_server,
                     wait_until)
from test_metrics import metrics_url

HALF_REQUEST = b"GET /metrics HTTP/1.1\r\n"  # a request head that never ends
SLACK = 5.0  # on top of a deadline, for a loaded test machine


def metrics_address(server) -> tuple[str, int]:
    url = urlsplit(metrics_url(server))
    return url.hostname, url.port


def exchange(address: tuple[str, int], request: bytes,
             timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send a raw request and read the answer up to the server's close: (status, headers, body)."""
    answer = bytearray()
    deadline = time.monotonic() + timeout
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(request)
        while chunk := sock.recv(65536):
            answer += chunk
            assert time.monotonic() < deadline, "the server never closed the connection"
    head, _, body = bytes(answer).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory):
    """One server for the tests that only talk HTTP to its endpoint."""
    server = start_server(tmp_path_factory.mktemp("metrics"), "--threads", "1", "--metrics-port", "0")
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.stderr()


def test_hanging_requests_hold_no_threads_and_do_not_stall_scrapes(serve):
    server = serve("--threads", "2", "--metrics-port", "0")
    address = metrics_address(server)
    with ExitStack() as stack:
        hanging = []
        for _ in range(300):
            sock = stack.enter_context(socket.create_connection(address, timeout=10))
            sock.sendall(HALF_REQUEST)
            hanging.append(sock)
        # prometheus_client's server held a thread for each: 300 and more.
        assert proc_thread_count(server.pid) < 20
        assert "fastecho_connections_total" in scrape(metrics_url(server), timeout=2)
        assert proc_thread_count(server.pid) < 20
        # The newest ones were not pushed out by later arrivals: the header
        # deadline ends them. (The older ones made room, closed at once.)
        for sock in hanging[:3] + hanging[-3:]:
            assert closed_by_server(sock, HEADER_TIMEOUT + SLACK)


def test_a_request_trickled_a_byte_at_a_time_is_cut_off_at_the_header_deadline(metrics_server):
    with socket.create_connection(metrics_address(metrics_server), timeout=10) as sock:
        sock.sendall(HALF_REQUEST + b"X-Slow: ")
        # A byte every quarter second would reset a per-read timeout forever.
        sock.settimeout(0.25)
        deadline = time.monotonic() + HEADER_TIMEOUT + SLACK
        while time.monotonic() < deadline:
            try:
                sock.send(b"a")
                if sock.recv(1) == b"":
                    break
            except TimeoutError:
                continue  # still open
            except (ConnectionResetError, BrokenPipeError):
                break
        else:
            pytest.fail(f"still open {HEADER_TIMEOUT + SLACK}s after the request began")


def test_an_oversized_request_head_is_refused_and_closed(metrics_server):
    request = HALF_REQUEST + b"X-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n"
    status, headers, _ = exchange(metrics_address(metrics_server), request)
    assert status == 431
    assert headers["connection"] == "close"


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    (b"GET /metrics?name=x HTTP/1.0\r\n\r\n", 200),
    (b"GET /metrics HTTP/1.0\n\n", 200),  # bare LFs, as typed into nc
    (b"GET / HTTP/1.1\r\n\r\n", 200),
    (b"GET /nope HTTP/1.1\r\n\r\n", 404),
    (b"GET /favicon.ico HTTP/1.1\r\n\r\n", 404),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 405),
    (b"DELETE /metrics HTTP/1.1\r\n\r\n", 405),
    (b"GET /metrics\r\n\r\n", 400),  # HTTP/0.9
    (b"GET /metrics HTTP/2.0\r\n\r\n", 400),
    (b"GET http://[::1/metrics HTTP/1.1\r\n\r\n", 400),  # not even a URL
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS by mistake
])
def test_answers_by_method_path_and_version(metrics_server, request_bytes, status):
    got, headers, body = exchange(metrics_address(metrics_server), request_bytes)
    assert got == status
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    if status == 405:
        assert headers["allow"] == "GET, HEAD"


def test_metrics_page_has_the_latest_content_type_and_head_has_no_body(metrics_server):
    address = metrics_address(metrics_server)
    status, headers, body = exchange(address, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE_LATEST
    assert b"fastecho_connections_total" in body
    status, headers, body = exchange(address, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status == 200
    assert int(headers["content-length"]) > 0
    assert body == b""


def test_scrape_works_while_the_echo_side_is_at_its_fd_limit(serve):
    limit = 256
    server = serve("--threads", "2", "--metrics-port", "0",
                   prefix=["prlimit", f"--nofile={limit}:{limit}"])
    url = metrics_url(server)
    with ExitStack() as stack:
        for _ in range(limit + 50):  # more than the server has fds for
            stack.enter_context(socket.create_connection((server.host, server.port), timeout=10))
        # The acceptor stops where only the reserve kept for this process is left.
        reserve = min(FD_RESERVE, limit // 4)
        assert wait_until(lambda: proc_fd_count(server.pid) >= limit - reserve, 10), \
            f"the server never reached its fd limit: {proc_fd_count(server.pid)} fds open"
        samples = scrape(url, timeout=10)
        assert samples["fastecho_accept_fd_exhausted_total"] > 0
        assert samples["fastecho_connections_active"] <= limit - reserve
    assert server.stop() == 0


def test_endpoint_survives_running_out_of_fds_itself_and_recovers(serve):
    # At 48 fds the reserve is 12, fewer than the endpoint's connection cap,
    # so hanging scrapes take the process to the hard limit: accept() fails
    # with EMFILE in the endpoint's own loop.
    limit = 48
    server = serve("--threads", "1", "--metrics-port", "0",
                   prefix=["prlimit", f"--nofile={limit}:{limit}"])
    address = metrics_address(server)
    with ExitStack() as echo_side:
        for _ in range(limit):
            echo_side.enter_context(socket.create_connection((server.host, server.port), timeout=10))
        # The engine takes connections up to the reserve, and no further.
        assert wait_until(lambda: proc_fd_count(server.pid) == limit - limit // 4, 10), \
            f"the engine stopped short of the reserve: {proc_fd_count(server.pid)} open"
        with ExitStack() as metrics_side:
            for _ in range(30):
                sock = metrics_side.enter_context(socket.create_connection(address, timeout=10))
                sock.sendall(HALF_REQUEST)
            assert wait_until(lambda: proc_fd_count(server.pid) == limit, 10), \
                f"the process never ran out of fds: {proc_fd_count(server.pid)} open"
        # The hanging clients are gone; the endpoint serves again.
        assert "fastecho_connections_total" in scrape(metrics_url(server), timeout=10)
    assert server.proc.poll() is None
    assert "Traceback" not in server.stderr()
    assert server.stop() == 0
