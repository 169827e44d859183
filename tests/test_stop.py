"""Stopping: graceful drain on SIGTERM/SIGINT, and nothing left behind."""
from __future__ import annotations

import os
import selectors
import signal
import socket
import threading
import time

import pytest

from fastecho._core import Engine
from helpers import echo_roundtrip, port_is_free, proc_fd_count, proc_thread_count, recv_exactly, wait_until

pytestmark = pytest.mark.usefixtures("io_backend")  # each test runs on epoll and io_uring


class PingPongLoad:
    """Keeps `conns` connections doing 1 KiB ping-pong in a background thread."""

    def __init__(self, host: str, port: int, conns: int, seconds: float = 30.0) -> None:
        self.socks = [socket.create_connection((host, port), timeout=10) for _ in range(conns)]
        self.errors: list[str] = []
        self.roundtrips = 0
        self._stop = threading.Event()
        self._deadline = time.monotonic() + seconds
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        payload = b"p" * 1024
        with selectors.DefaultSelector() as sel:
            for s in self.socks:
                s.setblocking(False)
                s.send(payload)
                sel.register(s, selectors.EVENT_READ, [0])
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                for key, _ in sel.select(timeout=0.2):
                    try:
                        data = key.fileobj.recv(65536)
                    except (ConnectionError, BlockingIOError) as e:
                        if not isinstance(e, BlockingIOError):
                            self.errors.append(repr(e))
                            sel.unregister(key.fileobj)
                        continue
                    if not data:  # the server closed: expected only while stopping
                        sel.unregister(key.fileobj)
                        continue
                    key.data[0] += len(data)
                    if key.data[0] >= len(payload):
                        key.data[0] -= len(payload)
                        self.roundtrips += 1
                        try:
                            key.fileobj.send(payload)
                        except OSError as e:
                            self.errors.append(repr(e))
                            sel.unregister(key.fileobj)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for s in self.socks:
            s.close()


def test_sigterm_under_load_exits_zero_and_frees_the_port(serve):
    server = serve("--threads", "4", "--grace", "2")
    load = PingPongLoad(server.host, server.port, conns=200)
    try:
        time.sleep(0.5)
        assert load.roundtrips > 0
        assert server.stop(signal.SIGTERM, timeout=20) == 0
    finally:
        load.stop()
    assert not load.errors, load.errors[:3]
    assert port_is_free(server.port)


def test_drain_keeps_serving_open_connections_until_they_close(serve):
    server = serve("--threads", "2", "--grace", "30")
    with server.connect() as sock:
        assert echo_roundtrip(sock, b"one") == b"one"
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # Still echoing during the drain, but no longer accepting.
        assert echo_roundtrip(sock, b"two") == b"two"
        with pytest.raises(OSError):
            socket.create_connection((server.host, server.port), timeout=2).close()
    # The last connection closed, so the server need not wait out its grace.
    assert server.proc.wait(10) == 0


def test_connection_still_open_at_grace_deadline_is_closed_with_fin(serve):
    server = serve("--threads", "1", "--grace", "0.5")
    with server.connect() as sock:
        assert echo_roundtrip(sock, b"hi") == b"hi"
        server.proc.send_signal(signal.SIGTERM)
        sock.settimeout(10)
        assert sock.recv(10) == b""  # an orderly FIN, not a reset
    assert server.proc.wait(10) == 0


def test_second_sigint_stops_at_once(serve):
    server = serve("--threads", "1", "--grace", "60")
    with server.connect() as sock:
        assert echo_roundtrip(sock, b"hi") == b"hi"
        server.proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert server.proc.poll() is None  # draining for up to 60 s
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(10) == 0


def _threads() -> int:
    return proc_thread_count(os.getpid())


def _fds() -> int:
    return proc_fd_count(os.getpid())


def test_engine_stop_under_load_releases_every_thread_and_fd():
    threads_before, fds_before = _threads(), _fds()
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)
    engine = Engine(8)
    engine.start(listener.fileno())
    assert _threads() == threads_before + 9  # 8 workers + the acceptor
    load = PingPongLoad("127.0.0.1", listener.getsockname()[1], conns=100)
    try:
        time.sleep(0.5)
        assert engine.stats()["connections_active"] == 100
        engine.shutdown(0.2, 0.5)
        listener.close()
        assert engine.wait(10)
        stats = engine.stats()
        engine.close()
    finally:
        load.stop()
    assert stats["connections_active"] == 0
    assert stats["connections_closed"] == stats["connections_accepted"] == 100
    # A joined thread can still be listed in /proc for a moment: pthread_join (and
    # Python's Thread.join) return when the thread has cleared its tid, before the
    # kernel reaps the task. So "every thread is gone" is waited for, not sampled.
    assert wait_until(lambda: (_threads(), _fds()) == (threads_before, fds_before), 10), \
        (_threads(), threads_before, _fds(), fds_before)


def test_engine_counters_match_the_traffic_exactly():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        engine = Engine(2)
        engine.start(listener.fileno())
        try:
            payloads = [os.urandom(n) for n in (1, 1000, 70_000, 3 << 20)]
            for p in payloads:
                with socket.create_connection(listener.getsockname()) as s:
                    t = threading.Thread(target=s.sendall, args=(p,))
                    t.start()
                    assert recv_exactly(s, len(p), timeout=20) == p
                    t.join(10)
            engine.shutdown(5)
            assert engine.wait(10)
            stats = engine.stats()
        finally:
            engine.close()
    total = sum(map(len, payloads))
    assert stats["bytes_received"] == stats["bytes_sent"] == total
    assert stats["connections_accepted"] == stats["connections_closed"] == len(payloads)
    assert stats["accept_errors"] == 0
