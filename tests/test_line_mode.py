"""--suffix: the original server's replies, computed in C, line by line."""
from __future__ import annotations

import socket
import time

from helpers import recv_exactly, run_cli

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
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"a\nb")
        time.sleep(0.05)  # so that "b" and "c" arrive in separate reads
        sock.sendall(b"c\n\nd\n")
        expected = b"a!\nbc!\n!\nd!\n"
        assert recv_exactly(sock, len(expected)) == expected


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
