"""--suffix: the original server's replies, computed in C, line by line."""
from __future__ import annotations

import socket
import time

import pytest

from helpers import recv_exactly, run_cli

pytestmark = pytest.mark.usefixtures("io_backend")  # each test runs on epoll and io_uring

ORIGINAL = " server[echo]"


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def send_in_two_reads(sock: socket.socket, first: bytes, second: bytes) -> None:
    """Send first and second so that the server reads them separately."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(first)
    time.sleep(0.05)  # the server reads first before second is sent
    sock.sendall(second)


def test_suffix_reproduces_the_original_servers_replies(serve):
    server = serve("--threads", "2", "--suffix", ORIGINAL)
    with server.connect() as sock:
        for line in (b"hello", b"", b"two words", "héllo".encode()):
            sock.sendall(line + b"\n")
            expected = line + ORIGINAL.encode() + b"\n"
            assert recv_exactly(sock, len(expected)) == expected


def test_lines_split_and_batched_across_packets_each_get_the_suffix(serve):
    server = serve("--threads", "1", "--suffix", "!")
    with server.connect() as sock:
        send_in_two_reads(sock, b"a\nb", b"c\n\nd\n")  # "b" and "c" in separate reads
        expected = b"a!\nbc!\n!\nd!\n"
        assert recv_exactly(sock, len(expected)) == expected


def test_crlf_lines_get_the_suffix_before_their_crlf(serve):
    # Telnet and `nc -C` end lines with "\r\n": the suffix goes before the
    # "\r", and each line keeps its own ending.
    server = serve("--threads", "1", "--suffix", " S")
    with server.connect() as sock:
        sock.sendall(b"abc\r\nlf\n\r\na\rb\r\n\rc\n")
        # CRLF, LF, "\r\n" alone, and a lone "\r", which is line content.
        expected = b"abc S\r\nlf S\n S\r\na\rb S\r\n\rc S\n"
        assert recv_exactly(sock, len(expected)) == expected
        # The "\r" ends one read and its "\n" is alone in the next.
        for first, reply in ((b"split\r", b"split S\r\n"), (b"\r", b" S\r\n")):
            send_in_two_reads(sock, first, b"\n")
            assert recv_exactly(sock, len(reply)) == reply


def test_max_line_excludes_the_crlf_even_when_the_cr_ends_a_read(serve):
    server = serve("--threads", "1", "--suffix", "!", "--max-line", "4")
    with server.connect() as sock:
        # 4 bytes and a "\r" wait for the next read: a "\n" may still follow.
        send_in_two_reads(sock, b"abcd\r", b"\n")
        assert recv_exactly(sock, 7) == b"abcd!\r\n"
        # It did not: the "\r" is content, and the line 5 bytes long.
        send_in_two_reads(sock, b"abcd\r", b"x\n")
        assert read_until_closed(sock) == b"error: line longer than 4 bytes\n"


def test_a_last_line_ending_in_cr_at_end_of_stream_comes_back_whole(serve):
    # No "\n" can follow after the client's FIN, so the "\r" is content; the
    # unterminated line gets the suffix appended, as any last line does.
    server = serve("--threads", "1", "--suffix", "!", "--max-line", "2")
    with server.connect() as sock:
        sock.sendall(b"ok\r\nab\r")
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b"ok!\r\nab\r!"


def test_line_longer_than_max_line_gets_an_error_line_then_close(serve):
    server = serve("--threads", "1", "--suffix", ORIGINAL, "--max-line", "32")
    with server.connect() as sock:
        sock.sendall(b"short\n")
        assert recv_exactly(sock, 19) == b"short server[echo]\n"
        sock.sendall(b"z" * 100 + b"\n")
        assert read_until_closed(sock) == b"error: line longer than 32 bytes\n"
    # Other connections are unaffected.
    with server.connect() as sock:
        sock.sendall(b"next\n")
        assert recv_exactly(sock, 18) == b"next server[echo]\n"
    assert server.stop() == 0


def test_default_max_line_is_64_kib(serve):
    server = serve("--threads", "1", "--suffix", "")
    with server.connect() as sock:
        line = b"k" * (64 * 1024 - 1) + b"\n"  # 64 KiB including its newline
        sock.sendall(line)
        assert recv_exactly(sock, len(line), timeout=20) == line
    with server.connect() as sock:
        sock.sendall(b"k" * (64 * 1024 + 10) + b"\n")
        assert read_until_closed(sock).startswith(b"error: line longer than 65536 bytes")


def test_without_suffix_the_echo_stays_byte_exact(serve):
    server = serve("--threads", "1")
    payload = b"no\nsuffix\r\nhere\n\x00\xff"
    with server.connect() as sock:
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload


def test_suffix_with_a_newline_is_refused():
    result = run_cli("serve", "--suffix", "a\nb")
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        'fastecho: error: suffix = "a\\nb" (from --suffix): must not contain a newline '
        "(it is inserted before each line's newline)"]
