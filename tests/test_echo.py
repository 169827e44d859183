"""Echo correctness: every byte comes back unchanged and in order (RFC 862)."""
from __future__ import annotations

import os
import selectors
import socket
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pytest

from helpers import echo_roundtrip, recv_exactly

pytestmark = pytest.mark.usefixtures("io_backend")  # each test runs on epoll and io_uring


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(min_size=1, max_size=256 * 1024), cuts=st.lists(st.integers(0, 256 * 1024), max_size=20))
def test_random_payload_split_into_random_chunks_echoes_byte_exact(shared_server, payload, cuts):
    points = sorted({c % len(payload) for c in cuts} | {0, len(payload)})
    chunks = [payload[a:b] for a, b in zip(points, points[1:])]
    with shared_server.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        received = bytearray()
        for chunk in chunks:
            sock.sendall(chunk)
        received += recv_exactly(sock, len(payload))
    assert bytes(received) == payload


def test_one_mebibyte_payload_echoes_byte_exact(shared_server):
    payload = os.urandom(1 << 20)
    with shared_server.connect() as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        echoed = recv_exactly(sock, len(payload), timeout=20)
        sender.join(20)
    assert echoed == payload


def test_thousand_concurrent_clients_on_32_threads_are_all_answered(serve):
    server = serve("--threads", "32")
    clients = 1000
    socks = []
    try:
        for _ in range(clients):
            socks.append(server.connect())
        # Every client holds its connection open while all of them talk, so a
        # thread-per-client server with 32 threads would answer only 32.
        expected = {}
        with selectors.DefaultSelector() as sel:
            for i, s in enumerate(socks):
                msg = f"client {i:04d} says hello\n".encode()
                expected[s.fileno()] = msg
                s.sendall(msg)
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, bytearray())
            answered = 0
            deadline = time.monotonic() + 30
            while answered < clients and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=1):
                    buf = key.data
                    buf += key.fileobj.recv(4096)
                    if len(buf) >= len(expected[key.fd]):
                        assert bytes(buf) == expected[key.fd]
                        sel.unregister(key.fileobj)
                        answered += 1
        assert answered == clients
    finally:
        for s in socks:
            s.close()


def test_echo_works_for_many_sequential_small_messages(shared_server):
    with shared_server.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(500):
            msg = f"ping {i}".encode()
            assert echo_roundtrip(sock, msg) == msg
