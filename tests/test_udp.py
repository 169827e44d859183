"""UDP listeners (udp://): every datagram back to its sender unchanged, 0 to 65,507 bytes, IPv4 and
IPv6, alongside TCP on the same port; the low-port drop, the allow list, the per-source rate,
truncation; counters that match what was sent; SIGTERM under load; fastecho client --udp.

Every socket is closed, every server stopped and reaped, every wait bounded.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import assert_one_line_error, free_port, ipv6_loopback, listeners, run_cli, scrape, start_server, wait_until

UDP = "udp://127.0.0.1:0"
METRICS_URL = r"metrics at (http://\S+/metrics)"
MAX_V4 = 65_507  # the largest UDP payload over IPv4


def address(server, scheme: str = "udp") -> tuple[str, int]:
    for listener_scheme, host, port in listeners(server):
        if listener_scheme == scheme:
            return host, port
    raise AssertionError(f"no {scheme} listener in {server.listening_line!r}")


def client(addr: tuple[str, int], timeout: float = 5.0, bind_port: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    if bind_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr[0], bind_port))
    s.settimeout(timeout)
    s.connect(addr)
    return s


def exchange(s: socket.socket, payload: bytes) -> bytes:
    s.send(payload)
    return s.recv(70_000)


def no_reply(s: socket.socket, payload: bytes, wait: float = 0.3) -> bool:
    s.send(payload)
    s.settimeout(wait)
    try:
        s.recv(70_000)
        return False
    except TimeoutError:
        return True


def udp_metrics(server, url_host: str = "127.0.0.1") -> dict[str, float]:
    listener = "udp://" + (f"[{url_host}]" if ":" in url_host else url_host) + f":{address(server)[1]}"
    metrics = scrape(server.wait_for_stderr(METRICS_URL)[1])
    return {name.replace(f'listener="{listener}",', "").replace(f',listener="{listener}"', ""): value
            for name, value in metrics.items() if name.startswith("fastecho_udp_") and listener in name}


def wait_for(server, name: str, expected: float) -> None:
    seen: list[float] = []
    ok = wait_until(lambda: seen.append(udp_metrics(server).get(name, 0)) or seen[-1] == expected, 10)
    assert ok, f"{name}: expected {expected}, last saw {seen[-1] if seen else None}"


pytestmark = pytest.mark.usefixtures("io_backend")  # each test runs on epoll and io_uring


@pytest.fixture(scope="module")
def udp_server(tmp_path_factory, io_backend):
    server = start_server(tmp_path_factory.mktemp("udp"), "--listen", UDP, "--threads", "2", port=None)
    yield server
    assert server.stop() == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.one_of(st.integers(0, 2000), st.integers(0, MAX_V4), st.sampled_from([0, 1, MAX_V4])))
def test_any_datagram_from_0_to_65507_bytes_comes_back_unchanged(udp_server, size):
    payload = os.urandom(size)
    with client(address(udp_server)) as s:
        assert exchange(s, payload) == payload


def test_a_thousand_datagrams_in_flight_all_come_back(udp_server):
    sockets = [client(address(udp_server)) for _ in range(20)]
    try:
        sent = {}
        for i in range(1000):  # 50 on each socket before any is read
            s = sockets[i % len(sockets)]
            payload = f"datagram {i} ".encode() * (1 + i % 7)
            s.send(payload)
            sent.setdefault(s, []).append(payload)
        for s, payloads in sent.items():
            got = sorted(s.recv(70_000) for _ in payloads)
            assert got == sorted(payloads)
    finally:
        for s in sockets:
            s.close()


def test_a_burst_to_one_peer_comes_back_datagram_by_datagram(serve):
    # Replies to one peer go out as UDP_SEGMENT sends where they can: runs of
    # one size, a shorter one ending a run, empty ones alone, runs longer
    # than a send's 64 segments or 65,507 bytes. Each must still come back as
    # its own datagram, in order, unchanged.
    server = serve("--listen", UDP, "--metrics-port", "0", port=None)
    sizes = [1000] * 30 + [400] + [1000] * 5 + [0] + [2000] * 3 + [3000] + [500] * 70 + [9000] * 10 + [1]
    payloads = [i.to_bytes(2, "big") * (size // 2) + b"!" * (size % 2) for i, size in enumerate(sizes)]
    with client(address(server)) as s:
        for payload in payloads:
            s.send(payload)
        got = [s.recv(70_000) for _ in payloads]
    assert [len(g) for g in got] == sizes
    assert got == payloads
    wait_for(server, 'fastecho_udp_datagrams_total{direction="out"}', len(sizes))
    m = udp_metrics(server)
    assert m['fastecho_udp_datagrams_total{direction="in"}'] == len(sizes)
    assert m['fastecho_udp_bytes_total{direction="out"}'] == sum(sizes)


def test_ipv6_and_tcp_on_the_same_port(serve):
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    for _ in range(5):  # a free port can be taken by someone else before the server binds it
        port = free_port()
        try:
            server = serve("--listen", f"udp://[::1]:{port}", "--listen", f"udp://127.0.0.1:{port}",
                           "--listen", f"tcp://127.0.0.1:{port}", port=None)
            break
        except AssertionError as e:
            if "already in use" not in str(e):
                raise
    else:
        pytest.fail("no port was free for all three listeners in 5 tries")
    with client(("::1", port)) as s6:
        assert exchange(s6, b"over IPv6") == b"over IPv6"
    with client(("127.0.0.1", port)) as s4, socket.create_connection(("127.0.0.1", port), 5) as t:
        assert exchange(s4, b"udp") == b"udp"
        t.sendall(b"tcp")
        assert t.recv(10) == b"tcp"
    assert server.stop() == 0


def test_counters_match_what_was_sent_exactly(serve):
    server = serve("--listen", UDP, "--metrics-port", "0", port=None)
    sizes = [0, 1, 100, 1400, 9000, MAX_V4]
    with client(address(server)) as s:
        for size in sizes:
            assert len(exchange(s, b"z" * size)) == size
    wait_for(server, 'fastecho_udp_datagrams_total{direction="out"}', len(sizes))
    m = udp_metrics(server)
    assert m['fastecho_udp_datagrams_total{direction="in"}'] == len(sizes)
    assert m['fastecho_udp_bytes_total{direction="in"}'] == sum(sizes)
    assert m['fastecho_udp_bytes_total{direction="out"}'] == sum(sizes)
    assert sum(v for k, v in m.items() if k.startswith("fastecho_udp_dropped_total")) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="binding a source port below 1024 needs root")
def test_datagrams_from_low_source_ports_are_dropped_unless_allowed(serve):
    server = serve("--listen", UDP, "--metrics-port", "0", port=None)
    with client(address(server), bind_port=7) as s:  # port 7: another echo service
        assert no_reply(s, b"ping-pong forever?")
    wait_for(server, 'fastecho_udp_dropped_total{reason="low-port"}', 1)
    allowed = serve("--listen", UDP, "--udp-allow-low-ports", port=None)
    with client(address(allowed), bind_port=19) as s:  # chargen's port
        assert exchange(s, b"allowed") == b"allowed"


def test_the_allow_list_applies_to_every_datagram(serve):
    server = serve("--listen", UDP, "--allow", "10.0.0.0/8", "--metrics-port", "0", port=None)
    with client(address(server)) as s:
        assert no_reply(s, b"not from 10/8")
    wait_for(server, 'fastecho_udp_dropped_total{reason="not-allowed"}', 1)


def test_the_rate_limit_answers_a_burst_within_it_and_counts_the_rest(serve):
    server = serve("--listen", UDP, "--udp-rate", "20", "--metrics-port", "0", port=None)
    with client(address(server), timeout=0.5) as s:
        for i in range(60):  # well inside one second: the bucket holds 20
            s.send(b"%d" % i)
        answered = 0
        try:
            for _ in range(60):
                s.recv(100)
                answered += 1
        except TimeoutError:
            pass
    # 20 in the bucket, plus what refilled while the burst was sent (20/s).
    assert 20 <= answered < 40, answered
    wait_for(server, 'fastecho_udp_dropped_total{reason="rate"}', 60 - answered)


def test_a_flood_from_many_source_ports_of_one_address_shares_one_bucket(serve):
    server = serve("--listen", UDP, "--udp-rate", "10", "--metrics-port", "0", port=None)
    socks = [client(address(server), timeout=0.3) for _ in range(100)]
    try:
        for s in socks:
            s.send(b"x")
        answered = 0
        for s in socks:
            try:
                s.recv(10)
                answered += 1
            except TimeoutError:
                pass
    finally:
        for s in socks:
            s.close()
    assert 10 <= answered < 30, answered  # one source address: one bucket of 10
    wait_for(server, 'fastecho_udp_dropped_total{reason="rate"}', 100 - answered)


def test_a_datagram_larger_than_the_buffer_is_dropped_never_echoed_short(serve):
    server = serve("--listen", UDP, "--udp-max-datagram", "1000", "--metrics-port", "0", port=None)
    with client(address(server)) as s:
        assert exchange(s, b"a" * 1000) == b"a" * 1000
        assert no_reply(s, b"b" * 1001)
    wait_for(server, 'fastecho_udp_dropped_total{reason="truncated"}', 1)


def test_sigterm_under_udp_load_stops_at_once_and_exits_0(serve):
    server = serve("--listen", UDP, "--threads", "2", "--grace", "5", port=None)
    stop = threading.Event()

    def flood() -> None:
        with client(address(server), timeout=0.01) as s:
            while not stop.is_set():
                try:
                    s.send(os.urandom(512))
                    s.recv(1000)
                except (TimeoutError, ConnectionRefusedError):
                    pass

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        # Waited for, not signalled again: a second SIGTERM could land after the
        # server restored the default handlers on its way out.
        assert server.proc.wait(20) == 0
        # No connection holds a UDP listener open: the grace does not apply.
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        for t in threads:
            t.join(10)


def test_client_udp_sends_each_line_as_a_datagram(udp_server):
    host, port = address(udp_server)
    result = run_cli("client", "--udp", host, str(port), input=b"one\ntwo\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"one\ntwo\n"


def test_client_udp_gives_up_after_its_retries_with_one_line():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        result = run_cli("client", "--udp", "--timeout", "0.2", "--retries", "1", "127.0.0.1", str(port),
                         input=b"anyone?\n")
    assert_one_line_error(result, 1, "no reply from 127.0.0.1", "2 tries")


@pytest.mark.parametrize("args, fragment", [
    (["--listen", "udp://127.0.0.1:0", "--udp-max-datagram", "70000"], "udp_max_datagram"),
    (["--listen", "udp://127.0.0.1:0", "--udp-rate", "-1"], "udp_rate"),
    (["--fd", "3", "--fd-scheme", "udp"], "fd_scheme"),
])
def test_udp_option_errors_are_one_line(args, fragment):
    result = run_cli("serve", *args, "--print-config")
    assert_one_line_error(result, 2, fragment)


def test_access_log_has_one_line_per_source_with_its_totals(serve):
    server = serve("--listen", UDP, "--access-log", port=None)
    with client(address(server)) as s:
        for payload in (b"a", b"bb", b"ccc"):
            assert exchange(s, payload) == payload
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.0.0.2", 0))
        other.settimeout(5)
        other.sendto(b"from .2", address(server))
        assert other.recv(100) == b"from .2"
    assert server.stop() == 0  # the stop writes the window's lines
    log = server.stderr()
    assert "udp 127.0.0.1 in=3 out=3 bytes_in=6 bytes_out=6 over=" in log
    assert "udp 127.0.0.2 in=1 out=1 bytes_in=7 bytes_out=7 over=" in log


def test_access_log_sums_the_sources_a_worker_cannot_tell_apart(serve):
    # One worker tallies 4096 sources a window; the rest share one line, so
    # spoofed sources cannot grow its memory.
    server = serve("--listen", UDP, "--threads", "1", "--access-log", "--access-log-ring", "8192",
                   "--metrics-port", "0", port=None)
    sources = 4096 + 300
    for i in range(sources):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((f"127.1.{i // 250}.{i % 250 + 1}", 0))
            s.sendto(b"!", address(server))
    wait_for(server, 'fastecho_udp_datagrams_total{direction="in"}', sources)
    assert server.stop() == 0
    lines = [line for line in server.stderr().splitlines() if "] udp " in line]
    assert sum("other sources" not in line for line in lines) == 4096
    assert [line.split("] ", 1)[1].split(" in=")[0] for line in lines if "other sources" in line] == \
        ["udp (300 other sources)"]
