"""What every I/O backend must get right, run on each (the io_backend fixture):
byte-exact echo under pipelining, bulk transfers, slow readers and many
connections. Half-close, resets, random splits, 1 MiB and stopping under load
are in test_close.py, test_echo.py and test_stop.py, which run on each too.
"""
from __future__ import annotations

import itertools
import platform
import re
import os
import random
import resource
import selectors
import socket
import threading
import time

import pytest

from helpers import SPLICE, metric, proc_rss_kib, recv_exactly, stream

pytestmark = pytest.mark.usefixtures("io_backend")  # each test runs on epoll and io_uring

MIB = 1 << 20


def pipelined(sock: socket.socket, messages: list[bytes], depth: int, timeout: float = 30.0) -> bytes:
    """Keeps `depth` messages in flight (sent before their echo is read); returns every
    byte echoed, in order."""
    ends = list(itertools.accumulate(len(m) for m in messages))  # where each message's echo ends
    got = bytearray()
    sent = done = 0  # messages sent; messages whose echo is all back
    deadline = time.monotonic() + timeout
    sock.setblocking(False)
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        while done < len(messages) and time.monotonic() < deadline:
            while sent < len(messages) and sent - done < depth:
                _send_all(sock, messages[sent], deadline)
                sent += 1
            for _ in sel.select(timeout=0.5):
                try:
                    got += sock.recv(65536)
                except BlockingIOError:
                    pass
            while done < len(messages) and ends[done] <= len(got):
                done += 1
    return bytes(got)


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view and time.monotonic() < deadline:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            time.sleep(0.001)


@SPLICE
@pytest.mark.parametrize("size, depth, count", [(64, 16, 2000), (1, 64, 5000)], ids=["64Bx16", "1Bx64"])
def test_pipelined_messages_come_back_byte_exact_and_in_order(serve, size, depth, count, splice):
    server = serve("--threads", "2", "--splice", splice)
    rng = random.Random(size * depth)
    messages = [rng.randbytes(size) for _ in range(count)]
    with server.connect() as sock:
        assert pipelined(sock, messages, depth) == b"".join(messages)


@SPLICE
def test_random_splits_of_a_stream_come_back_byte_exact(serve, splice):
    server = serve("--threads", "1", "--splice", splice)
    rng = random.Random(7)
    payload = rng.randbytes(3 * MIB)
    cuts = sorted(rng.sample(range(1, len(payload)), 2000))
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]
    with server.connect() as sock:
        assert pipelined(sock, pieces, depth=32, timeout=60) == payload


@SPLICE
@pytest.mark.parametrize("size", [1 * MIB, 64 * MIB], ids=["1MiB", "64MiB"])
def test_bulk_transfer_comes_back_byte_exact(serve, size, splice):
    server = serve("--threads", "2", "--splice", splice)
    payload = os.urandom(size)
    with server.connect() as sock:
        assert stream(sock, [payload], timeout=120) == payload


def kernel_limits_multishot_receives() -> bool:
    """Linux 6.17 ends a multishot receive after a byte limit, which keeps io_uring
    within the output cap; before it, one batch may pass the cap by the buffer pool."""
    major, minor = (int(part) for part in re.match(r"(\d+)\.(\d+)", platform.release()).groups())
    return (major, minor) >= (6, 17)


@SPLICE
def test_slow_reader_gets_every_byte_and_the_server_holds_at_most_its_cap(serve, io_backend, splice):
    cap = 256 * 1024
    server = serve("--threads", "1", "--max-pending-output", str(cap), "--splice", splice,
                   "--metrics-port", "0")
    rss_before = proc_rss_kib(server.pid)
    payload = os.urandom(16 * MIB)
    peak_held = 0
    with server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()
        got = bytearray()
        peak_growth = 0
        deadline = time.monotonic() + 120
        while len(got) < len(payload) and time.monotonic() < deadline:
            got += sock.recv(16 * 1024)  # a slow reader: small reads, with pauses
            if len(got) % (1 * MIB) < 16 * 1024:
                time.sleep(0.05)
                peak_growth = max(peak_growth, proc_rss_kib(server.pid) - rss_before)
                peak_held = max(peak_held, metric(server, "fastecho_memory_held_bytes"))
        sender.join(30)
    assert bytes(got) == payload
    assert peak_held > 0, "the reader never made the server hold anything: no backpressure was tested"
    # What the connection holds (its buffers, or its pipe) is within the cap:
    # exactly, except under io_uring on a kernel without multishot limits.
    pool = 1 * MIB if io_backend == "io_uring" and not kernel_limits_multishot_receives() else 0
    assert peak_held <= cap + pool, peak_held
    # The cap, one read, and the worker's 1 MiB receive pool (io_uring: its
    # pages are touched as it fills); plus allocator slack.
    assert peak_growth * 1024 < cap + 64 * 1024 + 2 * MIB + 4 * MIB, peak_growth


def test_ten_thousand_connections_each_echo_once_then_close(serve):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 10_000 + 200
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    try:
        server = serve("--threads", "2", "--backlog", "4096")
        socks: list[socket.socket] = []
        try:
            for i in range(10_000):
                s = socket.create_connection((server.host, server.port), timeout=20)
                s.sendall(i.to_bytes(4, "big"))
                socks.append(s)
            for i, s in enumerate(socks):
                assert recv_exactly(s, 4, timeout=20) == i.to_bytes(4, "big")
        finally:
            for s in socks:
                s.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
