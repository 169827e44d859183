"""Bulk echo through pipes (--splice): byte-exact whichever way the bytes go, memory and
fds within their limits, and half-close, reset and stop as with copying. Each test runs
on both I/O backends, and with splice on and with it off, where the same behaviour must
hold."""
from __future__ import annotations

import os
import random
import selectors
import signal
import socket
import threading
import time

import pytest

from fastecho._core import _defaults
from helpers import (SPLICE, assert_one_line_error, echo_roundtrip, fds_besides_pipes, metric, port_is_free,
                     proc_rss_kib, recv_exactly, reset, run_cli, stream, wait_until)

KIB = 1 << 10
MIB = 1 << 20
ENGINE = _defaults()

pytestmark = pytest.mark.usefixtures("io_backend")  # each test runs on epoll and io_uring


def start(serve, splice: str, *args: str, threads: int = 1):
    return serve("--threads", str(threads), "--splice", splice, "--metrics-port", "0", *args)


class BulkClients:
    """Connections that each send their own bytes (a slice of one random blob) and check
    every echoed byte, all driven from one thread with non-blocking sockets.

    Each sends `size` bytes and reads them back; with endless, it sends its slice round
    and round until the server closes it (a stop). Errors and byte mismatches are kept
    in `errors`; a reset or EOF counts as one only without endless."""

    def __init__(self, server, conns: int, size: int, endless: bool = False) -> None:
        self.blob = os.urandom(2 * size + conns)
        self.size, self.endless = size, endless
        self.socks = [server.connect() for _ in range(conns)]
        self.errors: list[str] = []
        self.done = 0  # connections whose whole echo came back (or that the server closed, endless)
        self.verified = 0  # echoed bytes checked
        self._stop = threading.Event()

    def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with selectors.DefaultSelector() as sel:
            for i, s in enumerate(self.socks):
                s.setblocking(False)
                # its own bytes, so that a byte reaching another connection fails the check
                sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, [self.blob[i:i + self.size], 0, 0])
            while sel.get_map() and not self._stop.is_set() and time.monotonic() < deadline:
                for key, events in sel.select(timeout=0.2):
                    self._serve(sel, key, events)

    def _serve(self, sel: selectors.BaseSelector, key: selectors.SelectorKey, events: int) -> None:
        sock, (payload, sent, received) = key.fileobj, key.data
        try:
            if events & selectors.EVENT_WRITE:
                at = sent % len(payload)
                sent += sock.send(payload[at:] if self.endless else payload[sent:])
                if not self.endless and sent == len(payload):
                    sel.modify(sock, selectors.EVENT_READ, key.data)
            data = sock.recv(256 * KIB) if events & selectors.EVENT_READ else b""
        except BlockingIOError:
            return
        except OSError as e:
            self._finish(sel, sock, None if self.endless else repr(e))
            return
        if events & selectors.EVENT_READ and not data:
            self._finish(sel, sock, None if self.endless else f"EOF after {received} bytes")
            return
        at = received % len(payload)
        expected = (payload[at:] + payload)[:len(data)]
        if data != expected:
            self._finish(sel, sock, f"echo differs at byte {received}")
            return
        received += len(data)
        self.verified += len(data)
        key.data[1:] = [sent, received]
        if not self.endless and received == len(payload):
            self._finish(sel, sock, None)

    def _finish(self, sel: selectors.BaseSelector, sock: socket.socket, error: str | None) -> None:
        sel.unregister(sock)
        if error:
            self.errors.append(error)
        else:
            self.done += 1

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        for s in self.socks:
            s.close()


# ---------------------------------------------------------------- echo

@SPLICE
@pytest.mark.parametrize("size", [1 * MIB, 64 * MIB])
def test_bulk_transfer_echoes_byte_exact(serve, splice, size):
    server = start(serve, splice)
    payload = os.urandom(size)
    with server.connect() as sock:
        assert stream(sock, [payload], timeout=60) == payload


@SPLICE
def test_bulk_and_small_messages_in_random_pieces_come_back_in_order(serve, splice):
    # Bursts of bulk (the connection takes a pipe) between runs of small pieces
    # (it gives the pipe back): every switch must keep the bytes in order.
    rng = random.Random(14)
    pieces = []
    for _ in range(12):
        pieces.append(os.urandom(rng.randrange(64 * KIB, 2 * MIB)))
        pieces += [os.urandom(rng.randrange(1, 2 * KIB)) for _ in range(rng.randrange(1, 40))]
    server = start(serve, splice)
    with server.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert stream(sock, pieces, timeout=60, pause=0.001) == b"".join(pieces)
    assert server.stop() == 0


@SPLICE
def test_splice_carries_bulk_only_and_only_when_on(serve, splice):
    server = start(serve, splice)
    with server.connect() as sock:
        for i in range(200):  # small messages keep copying
            assert echo_roundtrip(sock, b"%d" % i * 100) == b"%d" % i * 100
        assert metric(server, "fastecho_splice_bytes_total") == 0
        payload = os.urandom(8 * MIB)
        assert stream(sock, [payload], timeout=60) == payload
        spliced = metric(server, "fastecho_splice_bytes_total")
        assert (spliced > 0) if splice == "on" else (spliced == 0)
        assert spliced <= metric(server, "fastecho_bytes_sent_total")


def test_a_connection_gives_its_pipe_back_once_its_messages_are_small(serve):
    server = start(serve, "on")
    with server.connect() as sock:
        payload = os.urandom(4 * MIB)
        assert stream(sock, [payload], timeout=60) == payload
        assert metric(server, "fastecho_splice_bytes_total") > 0
        # (While it holds its pipe, the pipe is what it holds: the slow-reader tests.)
        for i in range(16):
            assert echo_roundtrip(sock, b"small %d" % i) == b"small %d" % i
        assert metric(server, "fastecho_memory_held_bytes") == 0  # given back, to the pool
        assert metric(server, "fastecho_splice_pipes") == 1
        assert echo_roundtrip(sock, b"still copying") == b"still copying"


# ---------------------------------------------------------------- limits

@SPLICE
def test_slow_reader_keeps_server_memory_within_the_cap(serve, splice):
    cap = 1 * MIB
    server = start(serve, splice, "--max-pending-output", str(cap))
    baseline_kib = proc_rss_kib(server.pid)
    payload = os.urandom(64 * MIB)
    peak_held = peak_growth_kib = 0
    with server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()
        sock.settimeout(30)
        echoed = bytearray()
        reads = 0
        deadline = time.monotonic() + 120
        while len(echoed) < len(payload) and time.monotonic() < deadline:
            data = sock.recv(256 * KIB)
            assert data, f"EOF after {len(echoed)} bytes"
            echoed += data
            reads += 1
            if reads % 64 == 0:  # now and then, while the server waits on us
                peak_held = max(peak_held, metric(server, "fastecho_memory_held_bytes"))
                peak_growth_kib = max(peak_growth_kib, proc_rss_kib(server.pid) - baseline_kib)
            time.sleep(0.001)
        sender.join(30)
    assert bytes(echoed) == payload
    assert peak_held <= cap
    # The cap, one read buffer, and room for allocator slack, as for a client that never reads.
    assert peak_growth_kib < 8 * 1024, f"server RSS grew by {peak_growth_kib} KiB"


@SPLICE
def test_a_thousand_concurrent_bulk_connections_are_all_echoed(serve, splice):
    server = start(serve, splice, threads=2)
    baseline_fds = fds_besides_pipes(server)
    clients = BulkClients(server, conns=1000, size=256 * KIB)
    try:
        clients.run(seconds=120)
    finally:
        clients.close()
    assert not clients.errors, clients.errors[:3]
    assert clients.done == 1000
    spliced = metric(server, "fastecho_splice_bytes_total")
    assert (spliced > 0) if splice == "on" else (spliced == 0)
    # Every connection's fd and pipe is released; a few empty pipes stay for reuse.
    assert wait_until(lambda: fds_besides_pipes(server) <= baseline_fds, timeout=20)
    assert metric(server, "fastecho_splice_pipes") <= 2 * ENGINE["splice_pool_pipes"]
    assert wait_until(lambda: metric(server, "fastecho_memory_held_bytes") == 0, timeout=10)


# ---------------------------------------------------------------- the ends of a stream

@SPLICE
@pytest.mark.parametrize("size", [300 * KIB, 4 * MIB])
def test_half_close_with_bytes_in_flight_echoes_them_all_then_fin(serve, splice, size):
    server = start(serve, splice)
    payload = os.urandom(size)
    with server.connect() as sock:
        def send_then_fin() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # FIN while most of the echo is still on its way

        sender = threading.Thread(target=send_then_fin, daemon=True)
        sender.start()
        time.sleep(0.2)  # let the server fill its pipe (or buffer) and wait on us
        echoed = recv_exactly(sock, size, timeout=30)
        sender.join(30)
        sock.settimeout(10)
        assert sock.recv(1) == b"", "the server should send FIN once everything was echoed"
    assert echoed == payload


@SPLICE
def test_reset_mid_bulk_stream_leaves_others_served_and_no_fd_behind(serve, splice):
    server = start(serve, splice)
    with server.connect() as bystander:
        assert echo_roundtrip(bystander, b"before") == b"before"
        baseline_fds = fds_besides_pipes(server)
        for _ in range(10):
            victim = server.connect()
            victim.sendall(os.urandom(1 * MIB))
            recv_exactly(victim, 256 * KIB, timeout=10)  # mid-stream: echoing, in bulk
            victim.setblocking(False)
            try:
                victim.send(os.urandom(1 * MIB))  # more on its way as it resets
            except BlockingIOError:
                pass
            reset(victim)
        assert echo_roundtrip(bystander, b"after") == b"after"
        assert wait_until(lambda: fds_besides_pipes(server) <= baseline_fds, timeout=10)
        assert metric(server, "fastecho_splice_pipes") <= ENGINE["splice_pool_pipes"]
        spliced = metric(server, "fastecho_splice_bytes_total")
        assert (spliced > 0) if splice == "on" else (spliced == 0)
    assert server.stop() == 0


@SPLICE
def test_sigterm_during_bulk_transfers_exits_0_and_frees_the_port(serve, splice):
    server = start(serve, splice, "--grace", "0.5", threads=2)
    clients = BulkClients(server, conns=16, size=1 * MIB, endless=True)
    runner = threading.Thread(target=clients.run, args=(60,), daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: clients.verified > 64 * MIB, timeout=30)
        if splice == "on":
            assert metric(server, "fastecho_splice_bytes_total") > 0
        assert server.stop(signal.SIGTERM, timeout=30) == 0
    finally:
        clients.stop()
        runner.join(30)
        clients.close()
    assert not clients.errors, clients.errors[:3]  # every byte echoed before the stop was right
    assert port_is_free(server.port)


# ---------------------------------------------------------------- the option

def test_splice_option_refuses_anything_but_on_or_off():
    assert_one_line_error(run_cli("serve", "--splice", "maybe"), 2, "splice", "on, off")
    assert_one_line_error(run_cli("serve", env={"FASTECHO_SPLICE": "yes"}), 2, "FASTECHO_SPLICE")


def test_print_config_shows_splice_from_each_source(tmp_path):
    assert 'splice = "on"' in run_cli("serve", "--print-config").stdout.decode()
    assert 'splice = "off"' in run_cli("serve", "--print-config", "--splice", "off").stdout.decode()
    assert 'splice = "off"' in run_cli("serve", "--print-config", env={"FASTECHO_SPLICE": "off"}).stdout.decode()
    config = tmp_path / "fastecho.toml"
    config.write_text('splice = "off"\n')
    assert 'splice = "off"' in run_cli("serve", "--print-config", "--config", str(config)).stdout.decode()
