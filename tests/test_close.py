"""End of stream and errors: half-close, resets, and the server keeps serving."""
from __future__ import annotations

import os
import socket

import pytest

from helpers import echo_roundtrip, fds_besides_pipes, recv_exactly, reset, wait_until

pytestmark = pytest.mark.usefixtures("io_backend")  # each test runs on epoll and io_uring


def test_half_close_still_echoes_everything_then_server_closes(shared_server):
    payload = os.urandom(300_000)
    with shared_server.connect() as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # FIN before reading anything back
        echoed = recv_exactly(sock, len(payload), timeout=10)
        assert sock.recv(1) == b"", "server should close its side after echoing"
    assert echoed == payload


@pytest.mark.parametrize("splice", ["on", "off"])
def test_reset_mid_stream_closes_only_that_connection(serve, splice):
    server = serve("--threads", "1", "--splice", splice, "--metrics-port", "0")
    with server.connect() as bystander:
        assert echo_roundtrip(bystander, b"before") == b"before"
        baseline_fds = fds_besides_pipes(server)
        for _ in range(20):
            victim = server.connect()
            victim.sendall(os.urandom(2 * 1024 * 1024))  # more than we will read
            reset(victim)
        # Every reset connection's fd is released (a pipe, if any, was closed
        # or kept for reuse); the bystander is unaffected.
        assert wait_until(lambda: fds_besides_pipes(server) <= baseline_fds, timeout=10)
        assert echo_roundtrip(bystander, b"after") == b"after"


def test_client_that_closes_without_reading_its_echo_does_not_hurt_others(serve):
    server = serve("--threads", "1")
    with server.connect() as bystander:
        for _ in range(50):
            with server.connect() as quitter:
                quitter.sendall(b"y" * 100_000)
        assert echo_roundtrip(bystander, b"ok") == b"ok"
    assert server.stop() == 0
