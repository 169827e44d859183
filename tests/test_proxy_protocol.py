"""PROXY protocol on tcp+proxy:// listeners: a real HAProxy in front, hand-made v1 and v2
headers, every malformed header, trust (--proxy-from), --proxy-timeout, and the allow list and
per-IP limit applied to the header's source address.

Every socket is closed, every process (fastecho, haproxy) stopped and reaped, every wait bounded.
"""
from __future__ import annotations

import os
import re
import select
import socket
import threading
import time

import pytest

from helpers import (PROXY_V2_LOCAL, needs_haproxy, PROXY_V2_SIGNATURE, assert_one_line_error, closed_by_server,
                     connect_from, echo_roundtrip, ipv6_loopback, listeners, proxy_v1, proxy_v2, proxy_v2_tlv,
                     recv_exactly, run_cli, scrape, start_server, wait_until, with_crc32c)

pytestmark = pytest.mark.usefixtures("io_backend")  # each test runs on epoll and io_uring


METRICS_URL = r"metrics at (http://\S+/metrics)"
DURATION = r"duration=\d+\.\d{3}s"
PROXY = "tcp+proxy://127.0.0.1:0"
PLAIN = "tcp://127.0.0.1:0"
# A header source and destination for the cases where the address itself does not matter.
SOURCE, DEST = ("203.0.113.7", 51000), ("198.51.100.1", 7000)


# ---------------------------------------------------------------- helpers

def metrics_url(server) -> str:
    return server.wait_for_stderr(METRICS_URL)[1]


def closes(url: str, reason: str) -> float:
    return scrape(url).get(f'fastecho_closes_total{{reason="{reason}"}}', 0)


def rejected(url: str, reason: str) -> float:
    return scrape(url).get(f'fastecho_connections_rejected_total{{reason="{reason}"}}', 0)


def wait_for_count(read, expected: float, timeout: float = 5.0) -> None:
    seen = []
    ok = wait_until(lambda: seen.append(read()) or seen[-1] == expected, timeout)
    assert ok, f"expected {expected}, last saw {seen[-1] if seen else None}"


def proxy_address(server, scheme: str = "tcp+proxy") -> tuple[str, int]:
    """The (host, port) of the server's first listener of this scheme."""
    for listener_scheme, host, port in listeners(server):
        if listener_scheme == scheme:
            return host, port
    raise AssertionError(f"no {scheme} listener in {server.listening_line!r}")


def echo_big(sock: socket.socket, payload: bytes, prefix: bytes = b"", timeout: float = 30.0) -> bytes:
    """Send prefix + payload from a thread (so neither side blocks) and read len(payload) back."""
    errors: list[BaseException] = []

    def send() -> None:
        try:
            sock.sendall(prefix + payload)
        except BaseException as e:  # reported by the caller
            errors.append(e)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        return recv_exactly(sock, len(payload), timeout=timeout)
    finally:
        sender.join(timeout)
        assert not sender.is_alive(), "sender still blocked"
        assert not errors, errors


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """sendall that tolerates the server having closed already (it may refuse mid-send)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def send_slowly(sock: socket.socket, data: bytes, pause: float = 0.004) -> None:
    """One byte per send (and per segment), with a pause after each."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(data)):
        sock.sendall(data[i:i + 1])
        time.sleep(pause)


def close_cleanly(sock: socket.socket) -> None:
    """Half-close, and wait for the server's EOF: its close is logged with reason=eof."""
    sock.shutdown(socket.SHUT_WR)
    assert closed_by_server(sock, timeout=5)


def own_address_pattern(port: int) -> str:
    """An open line with the socket's own address (a `via` of itself, if any, is tolerated)."""
    return rf"\] open 127\.0\.0\.1:{port}(?: via 127\.0\.0\.1:{port})?$"


def proxied_open_pattern(address: str, via_port: int) -> str:
    return rf"\] open {re.escape(address)} via 127\.0\.0\.1:{via_port}$"


def proxied_close_pattern(address: str, via_port: int, reason: str = "eof") -> str:
    return (rf"\] close {re.escape(address)} via 127\.0\.0\.1:{via_port} "
            rf"in=(\d+) out=(\d+) {DURATION} reason={reason}$")


def unproxied_close_pattern(port: int, reason: str) -> str:
    """The close of a connection that never completed its header: socket address, no via."""
    return rf"\] close 127\.0\.0\.1:{port} in=(\d+) out=(\d+) {DURATION} reason={reason}$"


@pytest.fixture(scope="module")
def proxy_server(tmp_path_factory, io_backend):
    """One server with a tcp+proxy and a tcp listener, for the cases that need nothing else.

    --proxy-timeout 30: a connection closed within a few seconds was closed for its header,
    not for taking too long.
    """
    server = start_server(tmp_path_factory.mktemp("proxy"), "--listen", PROXY, "--listen", PLAIN,
                          "--threads", "2", "--proxy-timeout", "30", "--access-log",
                          "--metrics-port", "0", port=None)
    try:
        yield server
    finally:
        assert server.stop() == 0


# ---------------------------------------------------------------- listeners

def test_startup_line_names_every_listener_in_order_with_its_real_port(serve):
    server = serve("--listen", PROXY, "--listen", PLAIN, "--threads", "3", port=None)
    match = re.fullmatch(r"fastecho listening on 127\.0\.0\.1:(\d+) \(tcp\+proxy\), "
                         r"127\.0\.0\.1:(\d+) \(tcp\) \(3 threads, (?:epoll|io_uring)\)", server.listening_line)
    assert match, server.listening_line
    proxy_port, plain_port = int(match[1]), int(match[2])
    assert 0 not in (proxy_port, plain_port) and proxy_port != plain_port
    assert listeners(server) == [("tcp+proxy", "127.0.0.1", proxy_port), ("tcp", "127.0.0.1", plain_port)]
    with socket.create_connection(("127.0.0.1", plain_port), timeout=5) as plain:
        assert echo_roundtrip(plain, b"plain") == b"plain"
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as proxied:
        proxied.sendall(proxy_v1(SOURCE, DEST) + b"proxied")
        assert recv_exactly(proxied, 7) == b"proxied"  # the header is consumed, not echoed
    assert server.stop() == 0


def test_listeners_keep_the_order_given(serve):
    server = serve("--listen", PLAIN, "--listen", PROXY, "--threads", "1", port=None)
    assert [scheme for scheme, _, _ in listeners(server)] == ["tcp", "tcp+proxy"], server.listening_line
    assert re.search(r"\(1 threads, (epoll|io_uring)\)$", server.listening_line), server.listening_line


def test_a_single_plain_tcp_listener_keeps_the_old_startup_line(serve):
    server = serve("--listen", PLAIN, "--threads", "1", port=None)
    assert re.fullmatch(r"fastecho listening on 127\.0\.0\.1:\d+ \(1 threads, (epoll|io_uring)\)", server.listening_line), \
        server.listening_line
    with server.connect() as s:
        assert echo_roundtrip(s, b"old") == b"old"


def test_plain_listener_serves_plain_echo_while_the_proxy_listener_refuses_plain_data(proxy_server):
    url = metrics_url(proxy_server)
    invalid = closes(url, "proxy-invalid")
    header = proxy_v1(SOURCE, DEST)
    with socket.create_connection(proxy_address(proxy_server, "tcp"), timeout=5) as plain:
        assert echo_roundtrip(plain, b"hello\n") == b"hello\n"
        # On a plain listener a PROXY header is only data: echoed as it came.
        assert echo_roundtrip(plain, header + b"after") == header + b"after"
    with socket.create_connection(proxy_address(proxy_server), timeout=5) as refused:
        refused.sendall(b"hello\n")
        assert closed_by_server(refused)
    wait_for_count(lambda: closes(url, "proxy-invalid"), invalid + 1)


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_proxy_listener_trusts_ipv6_loopback_by_default(serve):
    server = serve("--listen", "tcp+proxy://[::1]:0", "--threads", "1", "--access-log", port=None)
    assert listeners(server)[0][:2] == ("tcp+proxy", "::1"), server.listening_line
    with socket.create_connection(("::1", listeners(server)[0][2]), timeout=5) as s:
        s.sendall(proxy_v2(("2001:db8::5", 4000), ("2001:db8::6", 7000)))
        assert echo_roundtrip(s, b"six") == b"six"
        via = s.getsockname()[1]
        close_cleanly(s)
    server.wait_for_stderr(rf"\] open \[2001:db8::5\]:4000 via \[::1\]:{via}$")


# ---------------------------------------------------------------- hand-made headers, served

def _v2_tlvs() -> bytes:
    ssl = bytes([0x07]) + (0).to_bytes(4, "big") + proxy_v2_tlv(0x21, b"TLSv1.3")  # client, verify, version
    return (proxy_v2_tlv(0x01, b"h2")                   # ALPN
            + proxy_v2_tlv(0x02, b"echo.example")       # AUTHORITY
            + proxy_v2_tlv(0x04, b"\x00" * 5)           # NOOP
            + proxy_v2_tlv(0x05, b"unique-id-1")        # UNIQUE_ID
            + proxy_v2_tlv(0x20, ssl)                   # SSL, with a sub-TLV
            + proxy_v2_tlv(0xE0, os.urandom(40))        # unknown (custom range): skipped
            + proxy_v2_tlv(0xE1, b""))                  # unknown, empty


def _padded_v2(total: int) -> bytes:
    """A v2 IPv4 header of exactly `total` bytes, padded with an unknown TLV."""
    bare = proxy_v2(("203.0.113.12", 40012), DEST)
    return proxy_v2(("203.0.113.12", 40012), DEST, tlvs=proxy_v2_tlv(0xE0, b"p" * (total - len(bare) - 3)))


def _v1_unknown(total: int) -> bytes:
    """`PROXY UNKNOWN ...\\r\\n` of exactly `total` bytes: what follows UNKNOWN is ignored."""
    line = b"PROXY UNKNOWN " + b"f" * (total - len(b"PROXY UNKNOWN ") - 2) + b"\r\n"
    assert len(line) == total
    return line


FFFF = ":".join(["ffff"] * 8)
ZERO_CRC = proxy_v2_tlv(0x03, bytes(4))
# id -> (header, the access log's address for the connection; None: the socket's own)
SERVED = {
    "v1-tcp4": (proxy_v1(("203.0.113.7", 51000), DEST), "203.0.113.7:51000"),
    "v1-tcp6": (proxy_v1(("2001:db8::1", 51001), ("2001:db8::2", 7000)), "[2001:db8::1]:51001"),
    "v1-tcp6-longest": (proxy_v1((FFFF, 65535), (FFFF, 65535)), f"[{FFFF}]:65535"),  # 104 bytes
    "v1-unknown": (b"PROXY UNKNOWN\r\n", None),
    "v1-unknown-107-bytes": (_v1_unknown(107), None),
    "v2-ipv4": (proxy_v2(("203.0.113.9", 40000), DEST), "203.0.113.9:40000"),
    "v2-ipv6": (proxy_v2(("2001:db8::7", 40001), ("2001:db8::8", 7000)), "[2001:db8::7]:40001"),
    "v2-tlvs": (proxy_v2(("203.0.113.10", 40002), DEST, tlvs=_v2_tlvs()), "203.0.113.10:40002"),
    "v2-local": (proxy_v2(command=PROXY_V2_LOCAL), None),
    # LOCAL: the address block is to be ignored, the socket's endpoints used.
    "v2-local-with-addresses": (proxy_v2(("203.0.113.11", 40011), DEST, command=PROXY_V2_LOCAL), None),
    "v2-unspec": (proxy_v2(), None),
    "v2-4096-bytes": (_padded_v2(4096), "203.0.113.12:40012"),
    "v2-crc32c": (with_crc32c(proxy_v2(("203.0.113.14", 40014), DEST, tlvs=ZERO_CRC + _v2_tlvs())),
                  "203.0.113.14:40014"),
    # Beyond the brief, from HAProxy's spec (and fe_proxy.h): what the parser accepts.
    "v1-tcp6-ipv4-mapped": (proxy_v1(("::ffff:203.0.113.15", 40015), ("::ffff:198.51.100.1", 7000)),
                            "203.0.113.15:40015"),
    "v2-udp4": (proxy_v2(("203.0.113.16", 40016), DEST, protocol=0x2), "203.0.113.16:40016"),
    "v2-unix": (proxy_v2(family=0x3, addresses=b"/run/client".ljust(108, b"\0") + b"/run/fe".ljust(108, b"\0")),
                None),
    "v2-local-any-family": (proxy_v2(command=PROXY_V2_LOCAL, family=0xF, protocol=0xF), None),
}


def _check_served(server, sock: socket.socket, address: str | None, payload: bytes) -> None:
    """After an echo of payload: a clean close, and the access log's open and close lines."""
    via = sock.getsockname()[1]
    close_cleanly(sock)
    if address is None:
        server.wait_for_stderr(own_address_pattern(via))
        server.wait_for_stderr(rf"\] close 127\.0\.0\.1:{via} (?:via 127\.0\.0\.1:{via} )?in=\d+ "
                               rf"out={len(payload)} {DURATION} reason=eof$")
        return
    server.wait_for_stderr(proxied_open_pattern(address, via))
    match = server.wait_for_stderr(proxied_close_pattern(address, via))
    assert int(match[2]) == len(payload), match[0]
    assert int(match[1]) >= len(payload), match[0]  # whether the header counts is not specified


@pytest.mark.parametrize("delivery", ["same-send", "header-then-data"])
@pytest.mark.parametrize("case", list(SERVED))
def test_hand_made_header_is_consumed_and_the_rest_echoed_byte_exact(proxy_server, case, delivery):
    header, address = SERVED[case]
    # What follows the header is data, even when it looks like another header.
    payload = proxy_v1(("192.0.2.1", 1), ("192.0.2.2", 2)) + PROXY_V2_SIGNATURE + os.urandom(3000)
    with socket.create_connection(proxy_address(proxy_server), timeout=5) as s:
        if delivery == "same-send":
            s.sendall(header + payload)
        else:
            s.sendall(header)
            time.sleep(0.05)
            s.sendall(payload)
        assert recv_exactly(s, len(payload)) == payload
        assert echo_roundtrip(s, b"and more") == b"and more"
        _check_served(proxy_server, s, address, payload + b"and more")


@pytest.mark.parametrize("case", ["v1-tcp4", "v1-tcp6", "v2-ipv6", "v2-tlvs", "v2-local"])
def test_header_split_byte_by_byte_is_assembled(proxy_server, case):
    header, address = SERVED[case]
    payload = os.urandom(500)
    with socket.create_connection(proxy_address(proxy_server), timeout=5) as s:
        send_slowly(s, header)
        assert echo_roundtrip(s, payload) == payload
        _check_served(proxy_server, s, address, payload)


def test_one_mebibyte_right_behind_the_header_in_the_same_send(proxy_server):
    payload = os.urandom(1 << 20)
    with socket.create_connection(proxy_address(proxy_server), timeout=5) as s:
        assert echo_big(s, payload, prefix=proxy_v2(("203.0.113.13", 40013), DEST)) == payload
        _check_served(proxy_server, s, "203.0.113.13:40013", payload)


# ---------------------------------------------------------------- malformed headers

def _v2_over_4096() -> bytes:
    header = _padded_v2(4097)
    assert len(header) == 4097
    return header


V1_OK = proxy_v1(SOURCE, DEST)
V2_OK = proxy_v2(SOURCE, DEST)
MALFORMED = {
    "plain-data": b"hello\n",
    "v1-bad-signature": V1_OK.replace(b"PROXY", b"PROXZ"),
    "v1-lowercase-signature": V1_OK.replace(b"PROXY", b"proxy"),
    "v1-lf-without-cr": V1_OK[:-2] + b"\n",
    "v1-108-bytes": _v1_unknown(108),
    "v1-200-bytes-no-crlf": b"PROXY UNKNOWN " + b"f" * 186,
    "v1-bad-family": proxy_v1(SOURCE, DEST, family="TCP5"),
    "v1-source-not-an-address": b"PROXY TCP4 203.0.113.x 198.51.100.1 51000 7000\r\n",
    "v1-port-out-of-range": b"PROXY TCP4 203.0.113.7 198.51.100.1 65536 7000\r\n",
    "v1-missing-field": b"PROXY TCP4 203.0.113.7 198.51.100.1 51000\r\n",
    "v2-bad-signature": proxy_v2(SOURCE, DEST, signature=PROXY_V2_SIGNATURE[:-1] + b"X"),
    "v2-version-1": proxy_v2(SOURCE, DEST, version=1),
    "v2-version-3": proxy_v2(SOURCE, DEST, version=3),
    "v2-bad-command": proxy_v2(SOURCE, DEST, command=0x2),
    "v2-bad-family": proxy_v2(SOURCE, DEST, family=0x4),
    "v2-bad-transport": proxy_v2(SOURCE, DEST, protocol=0x3),
    "v2-ipv4-length-short-of-addresses": proxy_v2(SOURCE, DEST, addresses=bytes(8)),
    "v2-ipv6-length-short-of-addresses": proxy_v2(SOURCE, DEST, family=0x2),  # 12 of 36 bytes
    "v2-over-4096-bytes": _v2_over_4096(),
    "v2-tlv-past-the-end": proxy_v2(SOURCE, DEST, tlvs=b"\xe0\x00\x0aab"),
    "v2-truncated-tlv-header": proxy_v2(SOURCE, DEST, tlvs=b"\xe0\x00"),
    "v2-wrong-crc32c": proxy_v2(SOURCE, DEST, tlvs=proxy_v2_tlv(0x03, b"\x12\x34\x56\x78")),
    "v2-crc32c-of-3-bytes": proxy_v2(SOURCE, DEST, tlvs=proxy_v2_tlv(0x03, b"\x00\x00\x00")),
    "v2-two-crc32c": with_crc32c(proxy_v2(SOURCE, DEST, tlvs=ZERO_CRC + ZERO_CRC)),
    # More of HAProxy's spec (and fe_proxy.h): each field's syntax.
    "v1-double-space": V1_OK.replace(b"PROXY ", b"PROXY  "),
    "v1-leading-zero-port": b"PROXY TCP4 203.0.113.7 198.51.100.1 051000 7000\r\n",
    "v1-leading-zero-octet": b"PROXY TCP4 203.0.113.07 198.51.100.1 51000 7000\r\n",
    "v1-tcp4-with-ipv6": b"PROXY TCP4 2001:db8::1 2001:db8::2 51000 7000\r\n",
    "v1-cr-then-not-lf": V1_OK[:-1] + b"X\n",
}
assert MALFORMED["v2-ipv4-length-short-of-addresses"][14:16] == b"\x00\x08"


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_header_is_closed_and_counted_proxy_invalid(proxy_server, case):
    url = metrics_url(proxy_server)
    invalid = closes(url, "proxy-invalid")
    with socket.create_connection(proxy_address(proxy_server), timeout=5) as s:
        port = s.getsockname()[1]
        send_quietly(s, MALFORMED[case] + b"data that must not come back")
        assert closed_by_server(s, timeout=5), "not closed"
    wait_for_count(lambda: closes(url, "proxy-invalid"), invalid + 1)
    match = proxy_server.wait_for_stderr(unproxied_close_pattern(port, "proxy-invalid"))
    assert match[2] == "0", match[0]
    assert not re.search(rf"\] open \S+ via 127\.0\.0\.1:{port}$|\] open 127\.0\.0\.1:{port}$",
                         proxy_server.stderr(), re.MULTILINE)


@pytest.mark.parametrize("part", [
    b"PROXY TCP4 203.0.113.7",
    b"PROXY TCP4 203.0.113.7 198.51.100.1 51000 7000\r",
    V2_OK[:5],
    V2_OK[:16],                 # the fixed part, no addresses
    V2_OK[:-3],
], ids=["v1-half-line", "v1-all-but-lf", "v2-signature-part", "v2-fixed-part", "v2-addresses-part"])
def test_part_of_a_header_then_fin_is_proxy_invalid(proxy_server, part):
    url = metrics_url(proxy_server)
    invalid = closes(url, "proxy-invalid")
    with socket.create_connection(proxy_address(proxy_server), timeout=5) as s:
        port = s.getsockname()[1]
        s.sendall(part)
        time.sleep(0.05)
        s.shutdown(socket.SHUT_WR)
        assert closed_by_server(s, timeout=5)
    wait_for_count(lambda: closes(url, "proxy-invalid"), invalid + 1)
    proxy_server.wait_for_stderr(unproxied_close_pattern(port, "proxy-invalid"))


# ---------------------------------------------------------------- --proxy-timeout

def test_no_complete_header_within_proxy_timeout_is_closed_and_counted(serve):
    server = serve("--listen", PROXY, "--threads", "2", "--proxy-timeout", "0.5", "--access-log",
                   "--metrics-port", "0", port=None)
    url = metrics_url(server)
    address = proxy_address(server)
    start = time.monotonic()
    with socket.create_connection(address, timeout=5) as silent, \
            socket.create_connection(address, timeout=5) as half_v1, \
            socket.create_connection(address, timeout=5) as half_v2, \
            socket.create_connection(address, timeout=5) as trickle, \
            socket.create_connection(address, timeout=5) as done:
        silent_port = silent.getsockname()[1]
        half_v1.sendall(b"PROXY TCP4 203.0.113.7 ")
        half_v2.sendall(V2_OK[:20])
        done.sendall(proxy_v1(("203.0.113.20", 5000), DEST))
        assert echo_roundtrip(done, b"before") == b"before"
        # A header trickled one byte per 0.1 s would take 4+ s: the deadline is for the whole
        # header, not between its bytes.
        trickle.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        trickled_until = None
        for i, byte in enumerate(V1_OK):
            if select.select([trickle], [], [], 0.1)[0]:
                trickled_until = time.monotonic()
                break
            try:
                trickle.send(V1_OK[i:i + 1])
            except OSError:
                trickled_until = time.monotonic()
                break
        assert trickled_until is not None, "a trickled header outlived --proxy-timeout"
        assert trickled_until - start < 3.0
        assert closed_by_server(trickle, timeout=2)
        for sock in (silent, half_v1, half_v2):
            assert closed_by_server(sock, timeout=3)
        assert time.monotonic() - start >= 0.45
        # The timeout is for the header only: a completed one may then stay silent.
        assert echo_roundtrip(done, b"after") == b"after"
    wait_for_count(lambda: closes(url, "proxy-timeout"), 4)
    assert closes(url, "proxy-invalid") == 0
    match = server.wait_for_stderr(rf"\] close 127\.0\.0\.1:{silent_port} in=0 out=0 "
                                   rf"duration=(\d+\.\d{{3}})s reason=proxy-timeout$")
    assert 0.4 <= float(match[1]) < 3.0, match[0]


def test_proxy_timeout_is_kept_after_the_worker_slept_without_timers(serve):
    # One worker; a proxied connection completes its header and then stays silent for 0.9 s,
    # so the worker sleeps with no timer due. A silent connection that arrives next must still
    # be closed --proxy-timeout (0.3 s) after it was accepted, not later.
    server = serve("--listen", PROXY, "--threads", "1", "--proxy-timeout", "0.3", port=None)
    address = proxy_address(server)
    with socket.create_connection(address, timeout=5) as earlier:
        earlier.sendall(proxy_v1(SOURCE, DEST) + b"x")
        assert recv_exactly(earlier, 1) == b"x"
        time.sleep(0.9)
        with socket.create_connection(address, timeout=5) as silent:
            accepted = time.monotonic()
            assert closed_by_server(silent, timeout=5)
            waited = time.monotonic() - accepted
    assert 0.25 <= waited < 0.7, f"closed {waited:.3f}s after connecting, with --proxy-timeout 0.3"


# ---------------------------------------------------------------- trust: --proxy-from

def test_untrusted_peer_is_closed_at_once_and_counted(serve):
    server = serve("--listen", PROXY, "--listen", PLAIN, "--threads", "2",
                   "--proxy-from", "127.0.0.2/32", "--proxy-from", "127.0.0.3/32",
                   "--proxy-timeout", "30", "--metrics-port", "0", port=None)
    url = metrics_url(server)
    address = proxy_address(server)
    with socket.create_connection(address, timeout=5) as silent:  # from 127.0.0.1: untrusted
        assert closed_by_server(silent, timeout=3)  # at once, not after --proxy-timeout
    wait_for_count(lambda: rejected(url, "proxy_untrusted"), 1)
    with socket.create_connection(address, timeout=5) as eager:
        send_quietly(eager, proxy_v1(SOURCE, DEST) + b"data")
        assert closed_by_server(eager, timeout=3)
    wait_for_count(lambda: rejected(url, "proxy_untrusted"), 2)
    for trusted in ("127.0.0.2", "127.0.0.3"):
        with connect_from(trusted, address) as s:
            s.sendall(proxy_v2(SOURCE, DEST))
            assert echo_roundtrip(s, trusted.encode()) == trusted.encode()
    # --proxy-from is only about tcp+proxy listeners.
    with socket.create_connection(proxy_address(server, "tcp"), timeout=5) as plain:
        assert echo_roundtrip(plain, b"plain") == b"plain"
    assert rejected(url, "proxy_untrusted") == 2
    assert server.stop() == 0


# ---------------------------------------------------------------- limits on the header's source

def _proxied(server, source: tuple[str, int], version: int = 1) -> socket.socket:
    dest = ("2001:db8::2", 7000) if ":" in source[0] else DEST
    header = proxy_v1(source, dest) if version == 1 else proxy_v2(source, dest)
    s = socket.create_connection(proxy_address(server), timeout=5)
    try:
        s.sendall(header)
    except BaseException:
        s.close()
        raise
    return s


def test_allow_list_applies_to_the_header_source(serve):
    # 127.0.0.1, the real peer, is not allowed: only the header's source counts.
    server = serve("--listen", PROXY, "--threads", "2", "--allow", "203.0.113.0/24",
                   "--access-log", "--metrics-port", "0", port=None)
    url = metrics_url(server)
    with _proxied(server, ("198.51.100.77", 1234)) as outside:
        assert closed_by_server(outside)
    wait_for_count(lambda: closes(url, "not-allowed"), 1)
    with _proxied(server, ("203.0.113.7", 1235), version=2) as inside:
        assert echo_roundtrip(inside, b"allowed") == b"allowed"
    # LOCAL: the socket's own address, 127.0.0.1, which is not allowed.
    with socket.create_connection(proxy_address(server), timeout=5) as local:
        local.sendall(proxy_v2(command=PROXY_V2_LOCAL))
        assert closed_by_server(local)
    wait_for_count(lambda: closes(url, "not-allowed"), 2)
    assert server.stop() == 0


def test_per_ip_limit_counts_the_header_source(serve):
    server = serve("--listen", PROXY, "--threads", "2", "--max-connections-per-ip", "1",
                   "--access-log", "--metrics-port", "0", port=None)
    url = metrics_url(server)
    with _proxied(server, ("203.0.113.7", 1001)) as first:
        assert echo_roundtrip(first, b"first") == b"first"
        first_via = first.getsockname()[1]
        with _proxied(server, ("203.0.113.7", 1002), version=2) as second:
            assert closed_by_server(second)
        wait_for_count(lambda: closes(url, "per-ip-limit"), 1)
        with _proxied(server, ("203.0.113.8", 1003)) as other, \
                _proxied(server, ("2001:db8::8", 1004), version=2) as other6:
            assert echo_roundtrip(other, b"other") == b"other"
            assert echo_roundtrip(other6, b"other6") == b"other6"
            # Every connection came from 127.0.0.1: the socket's address was never counted.
            with socket.create_connection(proxy_address(server), timeout=5) as local:
                local.sendall(proxy_v2(command=PROXY_V2_LOCAL))
                assert echo_roundtrip(local, b"local") == b"local"
        assert echo_roundtrip(first, b"still") == b"still"
        close_cleanly(first)
    # Closing the first frees 203.0.113.7.
    server.wait_for_stderr(proxied_close_pattern("203.0.113.7:1001", first_via))
    with _proxied(server, ("203.0.113.7", 1005)) as again:
        assert echo_roundtrip(again, b"again") == b"again"
    assert closes(url, "per-ip-limit") == 1
    assert server.stop() == 0


# ---------------------------------------------------------------- a real HAProxy in front

HAPROXY_MODES = ["send-proxy", "send-proxy-v2", "send-proxy-v2 proxy-v2-options crc32c,unique-id"]


@needs_haproxy
@pytest.mark.parametrize("mode", HAPROXY_MODES, ids=["v1", "v2", "v2-tlvs"])
def test_haproxy_in_front_echoes_byte_exact_and_logs_the_client_address(serve, haproxy, mode):
    server = serve("--listen", PROXY, "--threads", "2", "--access-log", "--metrics-port", "0", port=None)
    url = metrics_url(server)
    front = haproxy(proxy_address(server)[1], mode)
    client_ports = []
    for size in (1, 1000, 70_000, 1 << 20):
        payload = os.urandom(size)
        with connect_from("127.0.0.5", ("127.0.0.1", front), timeout=10) as s:
            client_ports.append(s.getsockname()[1])
            assert echo_big(s, payload) == payload
            close_cleanly(s)
    for port in client_ports:
        server.wait_for_stderr(rf"\] open 127\.0\.0\.5:{port} via 127\.0\.0\.1:\d+$")
        server.wait_for_stderr(rf"\] close 127\.0\.0\.5:{port} via 127\.0\.0\.1:\d+ in=\d+ out=\d+ "
                               rf"{DURATION} reason=eof$")
    assert closes(url, "proxy-invalid") == 0
    assert rejected(url, "proxy_untrusted") == 0
    assert server.stop() == 0


@needs_haproxy
@pytest.mark.parametrize("mode", HAPROXY_MODES[:2], ids=["v1", "v2"])
def test_haproxy_in_front_per_ip_limit_counts_the_original_client(serve, haproxy, mode):
    server = serve("--listen", PROXY, "--threads", "2", "--max-connections-per-ip", "1",
                   "--access-log", "--metrics-port", "0", port=None)
    url = metrics_url(server)
    front = ("127.0.0.1", haproxy(proxy_address(server)[1], mode))
    with connect_from("127.0.0.5", front) as first:
        assert echo_roundtrip(first, b"first") == b"first"
        with connect_from("127.0.0.5", front) as second:
            send_quietly(second, b"second")
            assert closed_by_server(second)
        wait_for_count(lambda: closes(url, "per-ip-limit"), 1)
        with connect_from("127.0.0.6", front) as other:
            assert echo_roundtrip(other, b"other") == b"other"
        assert echo_roundtrip(first, b"first again") == b"first again"
    assert closes(url, "per-ip-limit") == 1
    assert server.stop() == 0


# ---------------------------------------------------------------- configuration errors

@pytest.mark.parametrize("args, fragments", [
    (("--listen", "tls://127.0.0.1:7000"), ("tls",)),
    (("--listen", "sctp://127.0.0.1:7000"), ("sctp", "unknown scheme")),
    (("--listen", "tcp://127.0.0.1:7000", "--listen", "tcp+proxy://127.0.0.1:7000"), ("127.0.0.1:7000",)),
    (("--listen", "tcp://127.0.0.1:7000", "--listen", "tcp://127.0.0.1:7000"), ("127.0.0.1:7000",)),
    (("--listen", "127.0.0.1:7000"), ()),
    (("--listen", "tcp://127.0.0.1"), ()),
    (("--listen", "tcp://127.0.0.1:70000"), ()),
    (("--listen", "tcp://127.0.0.1:port"), ()),
    (("--listen", "tcp://:7000"), ()),
    (("--listen", "tcp://127.0.0.1:7000/echo"), ()),
    (("--listen", "tcp+proxy://127.0.0.1:0", "--port", "7001"), ("--listen", "--port")),
    (("--listen", PROXY, "--proxy-from", "not-a-network"), ("not-a-network",)),
    (("--listen", PROXY, "--proxy-from", "10.0.0.0/33"), ("10.0.0.0/33",)),
    (("--listen", PROXY, "--proxy-timeout", "soon"), ("soon",)),
    (("--listen", PROXY, "--proxy-timeout", "-1"), ("-1",)),
], ids=["tls-without-certificate", "unknown-scheme", "duplicate-address", "duplicate-url", "no-scheme", "no-port",
        "port-out-of-range", "port-not-a-number", "no-host", "path", "with-port",
        "proxy-from-not-a-network", "proxy-from-bad-prefix", "proxy-timeout-not-a-number",
        "proxy-timeout-negative"])
def test_listen_config_errors_are_one_line_exit_2(args, fragments):
    assert_one_line_error(run_cli("serve", *args, timeout=20), 2, *fragments)
