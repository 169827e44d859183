"""Faults a server on a network meets: churn, clients killed mid-write, peers
that stop responding, and a stop under heavy load. Nothing accepted is lost."""
from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time

from fastecho._core import Engine
import pytest

from helpers import echo_roundtrip, fds_besides_pipes, proc_fd_count, proc_rss_kib, reap, wait_until

pytestmark = pytest.mark.usefixtures("io_backend")  # each test runs on epoll and io_uring

# "Forever" is 60 s at most, in case the test that should kill it never does.
CLIENT_THAT_SENDS_FOREVER = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print("connected", flush=True)
chunk = b"k" * 65536
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    s.sendall(chunk)
    s.recv(65536)
"""


def _cycles(host: str, port: int, count: int) -> None:
    for i in range(count):
        with socket.create_connection((host, port), timeout=5) as s:
            msg = i.to_bytes(4, "big") * 8
            assert echo_roundtrip(s, msg) == msg


def test_20000_connect_echo_close_cycles_leave_fds_and_rss_at_baseline(serve):
    server = serve("--threads", "2")
    _cycles(server.host, server.port, 1000)  # warm the allocator and the caches
    # The server may not have seen the last client's close yet: the baseline
    # is the count once it has stopped changing.
    seen: list[int] = []
    assert wait_until(lambda: seen.append(proc_fd_count(server.pid)) or seen[-5:] == [seen[-1]] * 5, 10)
    fds_before, rss_before = seen[-1], proc_rss_kib(server.pid)
    _cycles(server.host, server.port, 20_000)
    assert wait_until(lambda: proc_fd_count(server.pid) == fds_before, timeout=10), \
        f"fds {fds_before} -> {proc_fd_count(server.pid)}"
    growth = proc_rss_kib(server.pid) - rss_before
    assert growth < 1024, f"RSS grew by {growth} KiB over 20,000 connections"


def test_client_killed_mid_write_is_cleaned_up_and_others_are_served(serve):
    server = serve("--threads", "1", "--metrics-port", "0")
    with server.connect() as bystander:
        assert echo_roundtrip(bystander, b"hello") == b"hello"
        baseline = fds_besides_pipes(server)
        for _ in range(5):
            client = subprocess.Popen([sys.executable, "-c", CLIENT_THAT_SENDS_FOREVER, str(server.port)],
                                      stdout=subprocess.PIPE)
            try:
                assert client.stdout.readline() == b"connected\n"
                time.sleep(0.2)  # mid-stream
            finally:
                reap(client)
        # Each killed client's fd is closed (its pipe too, or kept empty for reuse).
        assert wait_until(lambda: fds_besides_pipes(server) == baseline, timeout=10)
        assert echo_roundtrip(bystander, b"still served") == b"still served"


def test_frozen_peer_that_stops_reading_does_not_block_the_worker(serve):
    # One worker: if it ever blocked on the frozen client, the bystander would hang.
    server = serve("--threads", "1")
    client = subprocess.Popen([sys.executable, "-c", CLIENT_THAT_SENDS_FOREVER, str(server.port)],
                              stdout=subprocess.PIPE)
    try:
        assert client.stdout.readline() == b"connected\n"
        time.sleep(0.3)
        client.send_signal(signal.SIGSTOP)  # a half-open-like peer: no reads, no FIN
        rss = proc_rss_kib(server.pid)
        with server.connect() as bystander:
            for i in range(50):
                msg = f"ping {i}".encode()
                assert echo_roundtrip(bystander, msg) == msg
        assert proc_rss_kib(server.pid) - rss < 4096
    finally:
        reap(client)


def test_stop_during_1000_connection_load_echoes_everything_received_then_fin():
    """Every byte the server read before its drain deadline goes back to its
    client, and each connection ends with FIN (an orderly EOF), not a reset."""
    conns = 1000
    listener = socket.create_server(("127.0.0.1", 0), backlog=conns)
    engine = Engine(4)
    engine.start(listener.fileno())
    socks, sent, received = [], {}, {}
    resets = mismatches = 0
    stopping = False
    try:
        for _ in range(conns):
            s = socket.create_connection(listener.getsockname(), timeout=10)
            s.setblocking(False)
            socks.append(s)
        streams = {s.fileno(): os.urandom(256) * 64 for s in socks}  # 16 KiB each, sent in pieces
        with selectors.DefaultSelector() as sel:
            for s in socks:
                sent[s.fileno()] = 0
                received[s.fileno()] = bytearray()
                sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
            stop_at = time.monotonic() + 0.5
            open_socks = len(socks)
            deadline = time.monotonic() + 30
            while open_socks and time.monotonic() < deadline:
                if not stopping and time.monotonic() >= stop_at:
                    engine.shutdown(0.5, 2.0)  # drain 0.5 s, then flush + FIN
                    listener.close()
                    stopping = True
                for key, mask in sel.select(timeout=0.2):
                    s, fd = key.fileobj, key.fd
                    if mask & selectors.EVENT_WRITE and sent[fd] < len(streams[fd]):
                        try:
                            sent[fd] += s.send(streams[fd][sent[fd]:sent[fd] + 1000])
                        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                            pass
                    if mask & selectors.EVENT_READ:
                        try:
                            data = s.recv(65536)
                        except BlockingIOError:
                            continue
                        except ConnectionResetError:
                            resets += 1
                            data = b""
                        if data:
                            received[fd] += data
                        else:
                            sel.unregister(s)
                            open_socks -= 1
                    if sent[fd] >= len(streams[fd]) and key.events & selectors.EVENT_WRITE:
                        sel.modify(s, selectors.EVENT_READ)
            assert open_socks == 0, f"{open_socks} connections never closed"
        assert engine.wait(10)
        stats = engine.stats()
    finally:
        for s in socks:
            s.close()
        engine.close()
        if not stopping:
            listener.close()
    for fd, data in received.items():
        if bytes(data) != streams[fd][:len(data)]:
            mismatches += 1
    assert mismatches == 0
    assert resets == 0
    # What the server read, it wrote back; what it wrote, the clients got.
    assert stats["bytes_received"] == stats["bytes_sent"] == sum(map(len, received.values()))
    assert stats["connections_active"] == 0
