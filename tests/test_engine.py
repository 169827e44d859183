"""The engine's optional behaviours, driven in-process through the binding:
line mode, access events, limits, the allow list and the idle timeout."""
from __future__ import annotations

import contextlib
import os
import socket
import struct
import time

import pytest

from fastecho._core import Engine
from fastecho.errors import ConfigError
from helpers import closed_by_server, connect_from, echo_roundtrip, recv_exactly, wait_until

pytestmark = pytest.mark.usefixtures("io_backend")  # each test runs on epoll and io_uring


@contextlib.contextmanager
def running_engine(threads: int = 2, host: str = "127.0.0.1", **options):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, 0), family=family, backlog=256)
    with serving(listener, threads, **options) as engine:
        yield engine, listener.getsockname()[:2]


@contextlib.contextmanager
def serving(listener: socket.socket, threads: int = 2, proxy: bool = False, **options):
    """An engine serving listener; stopped, and listener closed, on the way out."""
    engine = Engine(threads, **options)
    engine.start(listener.fileno(), proxy=[proxy])
    try:
        yield engine
    finally:
        engine.shutdown(0, 0)
        listener.close()
        assert engine.wait(10)
        engine.close()


def test_line_mode_inserts_suffix_before_each_newline_across_reads():
    with running_engine(suffix=b" server[echo]") as (_, addr):
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall(b"hello\nwor")
            time.sleep(0.05)  # the second line arrives in a later read
            s.sendall(b"ld\n\n")
            expected = b"hello server[echo]\nworld server[echo]\n server[echo]\n"
            assert recv_exactly(s, len(expected)) == expected


def test_line_too_long_gets_an_error_line_then_close_and_is_counted():
    with running_engine(suffix=b"!", max_line=16) as (engine, addr):
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall(b"short\n" + b"x" * 40)
            assert recv_exactly(s, 7) == b"short!\n"
            error = s.recv(100)
            assert error == b"error: line longer than 16 bytes\n"
            assert closed_by_server(s)
        assert wait_until(lambda: engine.stats()["lines_too_long"] == 1, timeout=5)


def test_without_suffix_newlines_are_echoed_byte_exact():
    with running_engine() as (_, addr):
        with socket.create_connection(addr, timeout=5) as s:
            assert echo_roundtrip(s, b"a\nb\r\n\n") == b"a\nb\r\n\n"


def test_access_events_report_open_and_close_with_peer_and_byte_counts():
    with running_engine(event_ring_size=64) as (engine, addr):
        with socket.create_connection(addr, timeout=5) as s:
            port = s.getsockname()[1]
            assert echo_roundtrip(s, b"x" * 1000) == b"x" * 1000
        events: list = []
        assert wait_until(lambda: events.extend(engine.drain_events()) or len(events) >= 2, timeout=5)
    opened, closed = events[:2]
    assert opened[:3] == ("open", "127.0.0.1", port)
    kind, host, peer_port, bytes_in, bytes_out, duration, reason, via, subject = closed
    assert (kind, host, peer_port, bytes_in, bytes_out, reason) == ("close", "127.0.0.1", port, 1000, 1000, "eof")
    assert via is None  # no proxy in between
    assert subject is None and opened[8] is None  # no TLS client certificate
    assert duration > 0


def test_full_event_ring_drops_and_counts_instead_of_blocking():
    with running_engine(threads=1, event_ring_size=4) as (engine, addr):
        for _ in range(10):  # 20 events into a ring of 4, nobody draining
            with socket.create_connection(addr, timeout=5) as s:
                assert echo_roundtrip(s, b"hi") == b"hi"
        assert wait_until(lambda: engine.stats()["connections_closed"] == 10, timeout=5)
        assert len(engine.drain_events()) == 4
        assert engine.stats()["events_dropped"] == 16


def test_max_connections_closes_the_extra_one_and_spares_the_others():
    with running_engine(max_connections=3) as (engine, addr):
        kept = [socket.create_connection(addr, timeout=5) for _ in range(3)]
        try:
            for s in kept:
                assert echo_roundtrip(s, b"in") == b"in"
            with socket.create_connection(addr, timeout=5) as extra:
                assert closed_by_server(extra)
            assert engine.stats()["rejected_max_connections"] == 1
            for s in kept:
                assert echo_roundtrip(s, b"still in") == b"still in"
        finally:
            for s in kept:
                s.close()
        # Once they leave, there is room again.
        assert wait_until(lambda: engine.stats()["connections_active"] == 0, timeout=5)
        with socket.create_connection(addr, timeout=5) as again:
            assert echo_roundtrip(again, b"room") == b"room"


def test_max_connections_per_ip_limits_each_address_separately():
    with running_engine(max_connections_per_ip=2) as (engine, addr):
        first = [socket.create_connection(addr, timeout=5) for _ in range(2)]
        try:
            with socket.create_connection(addr, timeout=5) as third:
                assert closed_by_server(third)
            # Another loopback address is another client.
            with connect_from("127.0.0.2", addr) as other:
                assert echo_roundtrip(other, b"other ip") == b"other ip"
            assert engine.stats()["rejected_per_ip"] == 1
        finally:
            for s in first:
                s.close()


def test_allow_list_closes_clients_outside_it():
    with running_engine(allow=["127.0.0.2/32", "10.0.0.0/8"]) as (engine, addr):
        with socket.create_connection(addr, timeout=5) as denied:  # from 127.0.0.1
            assert closed_by_server(denied)
        with connect_from("127.0.0.2", addr) as allowed:
            assert echo_roundtrip(allowed, b"welcome") == b"welcome"
        assert engine.stats()["rejected_not_allowed"] == 1


def test_idle_timeout_closes_silent_clients_only():
    with running_engine(idle_timeout=0.5) as (engine, addr):
        with socket.create_connection(addr, timeout=5) as silent, \
                socket.create_connection(addr, timeout=5) as chatty:
            assert echo_roundtrip(silent, b"once") == b"once"
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:  # chatty keeps talking
                assert echo_roundtrip(chatty, b"tick") == b"tick"
                time.sleep(0.1)
            assert closed_by_server(silent, timeout=1)
            assert echo_roundtrip(chatty, b"alive") == b"alive"
        assert engine.stats()["idle_timeouts"] >= 1


def test_ipv6_loopback_is_served():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        ctx = running_engine(host="::1", event_ring_size=8)
        engine_addr = ctx.__enter__()
    except OSError as e:
        pytest.skip(f"::1 unavailable: {e}")
    try:
        engine, addr = engine_addr
        with socket.create_connection(addr, timeout=5) as s:
            assert echo_roundtrip(s, b"v6") == b"v6"
        events: list = []
        assert wait_until(lambda: events.extend(engine.drain_events()) or len(events) >= 1, timeout=5)
        assert events[0][1] == "::1"
    finally:
        ctx.__exit__(None, None, None)


@pytest.mark.parametrize("options", [
    {"suffix": b"bad\nsuffix"},
    {"threads_override": 0},
    {"allow": ["not a network"]},
])
def test_bad_engine_options_raise_config_errors(options):
    options = dict(options)  # the parameter is shared by every backend's run
    threads = options.pop("threads_override", 1)
    with pytest.raises((ConfigError, ValueError)):
        Engine(threads, **options)


def test_overlong_line_client_that_keeps_sending_is_closed_after_the_abort_linger():
    with running_engine(threads=1, suffix=b"!", max_line=8) as (engine, addr):
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall(b"y" * 20)
            assert s.recv(100) == b"error: line longer than 8 bytes\n"
            # Keep sending junk; the server must still close us (about 2 s).
            closed = False
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not closed:
                try:
                    s.sendall(b"junk")
                    s.settimeout(0.2)
                    closed = s.recv(100) == b""
                except socket.timeout:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
            assert closed
        assert wait_until(lambda: engine.stats()["connections_active"] == 0, timeout=5)
        assert engine.stats()["lines_too_long"] == 1


def test_unterminated_last_line_comes_back_with_the_suffix_at_eof():
    with running_engine(suffix=b" S") as (_, addr):
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall(b"one\ntwo-no-newline")
            s.shutdown(socket.SHUT_WR)
            expected = b"one S\ntwo-no-newline S"
            assert recv_exactly(s, len(expected)) == expected
            assert s.recv(1) == b""


def test_line_mode_rejects_an_output_cap_too_small_for_the_suffix():
    with pytest.raises(ConfigError):
        Engine(1, max_pending_output=4096, suffix=b"s" * 4096)


def _server_side_socket(client: socket.socket) -> socket.socket:
    """The engine's accepted socket for client, found among this process's fds (dup'ed)."""
    want = client.getsockname()
    for name in os.listdir("/proc/self/fd"):
        try:
            candidate = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if candidate.type == socket.SOCK_STREAM and candidate.getpeername() == want:
                return candidate
        except OSError:
            pass
        candidate.close()
    raise AssertionError(f"no server-side socket for {want}")


def test_accepted_sockets_drop_a_so_linger_inherited_from_the_listener():
    # A lingering close() blocks even on a non-blocking socket, so a listener
    # handed in with SO_LINGER would let one client stall a whole worker.
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 3))
    engine = Engine(1)
    engine.start(listener.fileno())
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as client:
            assert echo_roundtrip(client, b"hi") == b"hi"  # accepted and adopted
            with _server_side_socket(client) as accepted:
                onoff, _ = struct.unpack("ii", accepted.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
                assert onoff == 0
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        engine.shutdown(0, 0)
        listener.close()
        assert engine.wait(10)
        engine.close()


def test_a_listener_shut_down_under_the_acceptor_is_reported_not_spun_on():
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    with serving(listener, threads=1) as engine:
        before = time.process_time()
        listener.shutdown(socket.SHUT_RDWR)  # poll() now reports POLLHUP for it, forever
        assert wait_until(lambda: engine.acceptor_error != 0, timeout=5)
        time.sleep(0.5)
        # A poll loop that ignored POLLHUP would burn a whole CPU here.
        assert time.process_time() - before < 0.3


def test_client_bytes_after_a_proxy_header_meet_the_output_cap():
    # One send: a header, then 4000 newlines, each of which line mode turns
    # into a 4 KiB reply. Read past the header in one go, they would queue
    # 16 MiB at once; left to the normal reads, the 64 KiB cap holds.
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    address = listener.getsockname()[:2]
    with serving(listener, threads=1, proxy=True, max_pending_output=64 * 1024,
                 suffix=b"x" * 4096, max_memory=64 << 20) as engine:
        with socket.create_connection(address, timeout=5) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\n" + b"\n" * 4000)
            assert wait_until(lambda: engine.stats()["bytes_received"] > 0, timeout=5)
            time.sleep(0.3)
            # The cap, plus one read's worth of replies, plus buffer rounding.
            assert engine.stats()["memory_held"] <= 4 << 20
