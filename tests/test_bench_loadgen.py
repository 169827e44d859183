"""The C load generator: it verifies every echoed byte, fails loudly on a
wrong byte, an early close or a reset, and reports starved connections
without failing. Servers here are real sockets on 127.0.0.1: small faulty
echo servers in threads of this process, and the bench servers as
subprocesses. Nothing here asserts on timing."""
from __future__ import annotations

import contextlib
import math
import re
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastecho.bench import LoadError, run_load
from fastecho.bench._loadgen import MAX_MESSAGE_SIZE, TLS_SUPPORTED, histogram_quantiles
from fastecho.bench.servers import HOST, SERVERS, running_server

SHORT = {"warmup": 0.05, "duration": 0.3}  # keep each run short; nothing is timed
JOIN_TIMEOUT = 5.0


@contextlib.contextmanager
def failing_on_an_exited_pid() -> Iterator[int]:
    """Yields the pid of a process that has exited and been reaped, so that
    /proc has no entry for it; the body, a run given that pid as a server
    pid, must fail with the LoadError that names /proc/<pid>/stat."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(LoadError, match=rf"cannot read /proc/{gone.pid}/stat"):
        yield gone.pid


def recv_exactly_or_eof(conn: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


@contextlib.contextmanager
def thread_server(handle: Callable[[socket.socket], None], backlog: int = 64) -> Iterator[int]:
    """Serve each connection with handle(conn) in its own thread; yields the
    port. Every socket and thread is closed and joined on the way out."""
    listener = socket.create_server((HOST, 0), backlog=backlog)
    listener.settimeout(0.05)
    stop = threading.Event()
    conns: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def serve_one(conn: socket.socket) -> None:
        try:
            handle(conn)
        except OSError:
            pass  # the test closed it, or the client went away

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(JOIN_TIMEOUT)  # no handler blocks beyond this
            conns.append(conn)
            t = threading.Thread(target=serve_one, args=(conn,), daemon=True)
            threads.append(t)
            t.start()

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join(JOIN_TIMEOUT)
        listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for t in threads:
            t.join(JOIN_TIMEOUT)


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def echo_then(after_bytes: int, fault: Callable[[socket.socket, bytes], bool]) -> Callable[[socket.socket], None]:
    """Echo the first `after_bytes` faithfully, hand the rest of that chunk to
    fault(conn, rest), and carry on echoing if it returns True."""

    def handle(conn: socket.socket) -> None:
        echoed = 0
        while data := conn.recv(65536):
            if echoed + len(data) <= after_bytes:
                conn.sendall(data)
                echoed += len(data)
                continue
            keep = after_bytes - echoed
            conn.sendall(data[:keep])
            if fault(conn, data[keep:]):
                echo(conn)
            return

    return handle


def flip_first_byte(conn: socket.socket, rest: bytes) -> bool:
    conn.sendall(bytes([rest[0] ^ 0x01]) + rest[1:])
    return True


def close_now(conn: socket.socket, _rest: bytes) -> bool:
    conn.close()
    return False


def reset_now(conn: socket.socket, _rest: bytes) -> bool:
    # SO_LINGER with a zero timeout makes close() send RST instead of FIN
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    return False


def add_a_byte(conn: socket.socket, rest: bytes) -> bool:
    conn.sendall(rest + b"!")
    return True


# --- correct servers ------------------------------------------------------


@pytest.fixture(scope="module")
def reference_server():
    with running_server(SERVERS["reference"], threads=1, baseline_threads=1) as server:
        yield server


@pytest.mark.parametrize(
    "conns, size, depth",
    [
        (1, 1, 1),  # one byte ping-pong
        (16, 1024, 4),  # several messages coalesced per send
        (3, 300_000, 2),  # messages larger than the 256 KiB receive buffer
    ],
)
def test_correct_echo_is_verified_and_measured(reference_server, conns, size, depth):
    result = run_load(HOST, reference_server.port, conns, size, depth, server_pid=reference_server.pid, **SHORT)
    assert result["messages"] > 0
    assert result["starved_conns"] == 0
    assert 0 < result["min_conn_messages"] <= result["max_conn_messages"]
    assert 0 < result["p50_ns"] <= result["p99_ns"] <= result["p999_ns"] <= result["max_ns"]
    assert result["server_user_us"] >= 0 and result["server_sys_us"] >= 0
    assert result["server_user_us"] + result["server_sys_us"] > 0  # echoing costs the server something
    assert result["server_rss_kib"] > 0
    assert result["client_cpu_us"] > 0


def test_without_a_server_pid_no_server_figures_are_reported(reference_server):
    result = run_load(HOST, reference_server.port, 2, 64, **SHORT)
    assert result["messages"] > 0
    assert result["server_user_us"] is None and result["server_sys_us"] is None and result["server_rss_kib"] is None


def test_max_messages_ends_the_window_early(reference_server):
    result = run_load(HOST, reference_server.port, 4, 64, warmup=0, duration=60, max_messages=500)
    assert 500 <= result["messages"] < 500 + 4  # each connection finishes at most one more in the last batch
    assert result["elapsed_s"] < 60


def test_depth_many_small_messages_all_verified(reference_server):
    result = run_load(HOST, reference_server.port, 2, 7, depth=100, **SHORT)
    assert result["messages"] > 0 and result["starved_conns"] == 0


# --- faulty servers: each must fail the run with a message that says why ----


def test_a_flipped_byte_is_reported_with_connection_offset_and_both_values():
    with thread_server(echo_then(100, flip_first_byte)) as port:
        with pytest.raises(LoadError) as caught:
            run_load(HOST, port, 1, 64, **SHORT)
    message = str(caught.value)
    match = re.fullmatch(r"connection 0: echoed byte 100 of the stream \(message 1, byte 36 of 64\) "
                         r"is 0x([0-9a-f]{2}), expected 0x([0-9a-f]{2})", message)
    assert match, message
    got, expected = (int(h, 16) for h in match.groups())
    assert got == expected ^ 0x01


def test_a_server_that_closes_early_fails_the_run_with_eof():
    with thread_server(echo_then(64 * 3 + 10, close_now)) as port:
        with pytest.raises(LoadError, match=r"connection 0: server closed the connection \(EOF\) "
                                            r"after echoing 202 of \d+ bytes sent"):
            run_load(HOST, port, 1, 64, **SHORT)


def test_a_server_that_resets_fails_the_run_naming_the_reset():
    with thread_server(echo_then(640, reset_now)) as port:
        with pytest.raises(LoadError, match=r"connection 0: (receive|send) failed: Connection reset by peer"):
            run_load(HOST, port, 1, 64, **SHORT)


def test_a_server_that_sends_more_than_it_received_fails_the_run():
    with thread_server(echo_then(64, add_a_byte)) as port:
        with pytest.raises(LoadError, match=r"connection 0: server echoed 1 more bytes than it was sent"):
            run_load(HOST, port, 1, 64, **SHORT)


def test_a_fault_on_one_of_many_connections_names_that_connection():
    served = []
    lock = threading.Lock()

    def handle(conn: socket.socket) -> None:
        with lock:
            served.append(conn)
            faulty = len(served) == 3  # the third accepted, whichever client that is
        (echo_then(1000, flip_first_byte) if faulty else echo)(conn)

    with thread_server(handle) as port:
        with pytest.raises(LoadError,
                           match=r"^connection \d+: echoed byte 1000 of the stream \(message 4, byte 0 of 250\)"):
            run_load(HOST, port, 8, 250, **SHORT)


def test_refused_connections_fail_the_run():
    with socket.socket() as placeholder:  # bound but not listening: connect is refused
        placeholder.bind((HOST, 0))
        port = placeholder.getsockname()[1]
        with pytest.raises(LoadError, match=r"connection 0: connect to 127\.0\.0\.1:\d+ failed: Connection refused"):
            run_load(HOST, port, 4, 64, **SHORT)


def test_connections_never_established_fail_the_run_after_the_connect_timeout():
    # A listener that never accepts, with the smallest backlog: once its
    # accept queue is full the kernel drops further SYNs, so those connects
    # stay in progress until the generator gives up.
    with socket.create_server((HOST, 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        with pytest.raises(LoadError, match=r"only \d+ of 20 connections to 127\.0\.0\.1:\d+ were established "
                                            r"within 0\.3 s"):
            run_load(HOST, port, 20, 64, connect_timeout=0.3, **SHORT)


def test_an_unreadable_server_pid_fails_the_run(reference_server):
    with failing_on_an_exited_pid() as gone_pid:
        run_load(HOST, reference_server.port, 1, 64, server_pid=gone_pid, **SHORT)


# --- starvation is measured, not an error ------------------------------------


def test_a_server_that_never_answers_starves_every_connection_without_failing():
    # accepted, kept open until the end, never read: nothing ever comes back
    with thread_server(lambda conn: None) as port:
        result = run_load(HOST, port, 5, 64, **SHORT)
    assert result["messages"] == 0
    assert result["starved_conns"] == 5
    assert result["min_conn_messages"] == result["max_conn_messages"] == 0


def test_python_baseline_with_fewer_threads_than_clients_reports_the_starved_ones():
    threads, conns = 2, 6
    with running_server(SERVERS["python"], threads=1, baseline_threads=threads) as server:
        result = run_load(HOST, server.port, conns, 64, server_pid=server.pid, **SHORT)
    assert result["starved_conns"] == conns - threads
    assert result["min_conn_messages"] == 0
    assert result["max_conn_messages"] > 0


# --- arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"conns": 0}, "conns 0"),
        ({"size": 0}, "size 0"),
        ({"size": MAX_MESSAGE_SIZE + 1}, f"size {MAX_MESSAGE_SIZE + 1}"),
        ({"depth": 0}, "depth 0"),
        ({"duration": 0}, "duration 0"),
        ({"warmup": -1}, "warmup -1"),
        ({"port": 0}, "port 0"),
        ({"host": "localhost"}, "host localhost is not an IPv4 address"),
        ({"connect_timeout": 0}, "connect timeout 0"),
    ],
)
def test_out_of_range_arguments_raise_value_error(overrides, fragment):
    args = {"host": HOST, "port": 9, "conns": 1, "size": 64, "depth": 1, "warmup": 0, "duration": 1,
            "connect_timeout": 1} | overrides
    with pytest.raises(ValueError, match=re.escape(fragment)):
        run_load(**args)


@pytest.mark.skipif(TLS_SUPPORTED, reason="this build has TLS (tests/test_bench_tls.py covers it)")
def test_tls_in_a_build_without_it_is_refused_as_a_bad_argument():
    with pytest.raises(ValueError, match=r"built without it \(FASTECHO_WITH_TLS=OFF"):
        run_load(HOST, 9, 1, 64, tls=True, warmup=0, duration=1)


# --- latency histogram -------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(0, 10**13), min_size=1, max_size=300),
       q=st.sampled_from([0.0, 0.5, 0.9, 0.99, 0.999, 1.0]))
def test_histogram_quantile_is_within_one_percent_of_the_exact_value(values, q):
    exact = sorted(values)[max(1, math.ceil(q * len(values))) - 1]
    (estimate,) = histogram_quantiles(values, [q])
    assert abs(estimate - exact) <= exact / 100
    assert min(values) <= estimate <= max(values)


def test_histogram_is_exact_below_128_and_empty_reads_zero():
    assert histogram_quantiles(range(1, 101), [0.5, 0.99, 1.0]) == [50, 99, 100]
    assert histogram_quantiles([], [0.5]) == [0]
