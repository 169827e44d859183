"""`fastecho client HOST PORT`: the original's interactive line client.

It reads lines from stdin, sends each one, and prints each reply: the bytes
up to and including the first newline the server sends back, which is the
line itself from a byte-exact server and the line plus its suffix from a
--suffix server. Sending and reading overlap, so a line longer than the
socket buffers cannot deadlock against the server's backpressure. At EOF on
stdin it half-closes and exits 0. A refused, reset or closed connection, or a
reply that does not come, gives one line and exit 1 (ClientError).
"""
from __future__ import annotations

import errno
import selectors
import socket
import sys
import time
from typing import BinaryIO

from fastecho.addresses import format_address
from fastecho.errors import ClientError

PROMPT = "> "


def connect(host: str, port: int, timeout: float) -> socket.socket:
    where = format_address(host, port)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as e:
        raise ClientError(f"cannot resolve {host!r}: {e.strerror}") from None
    except ConnectionRefusedError:
        raise ClientError(f"cannot connect to {where}: connection refused") from None
    except TimeoutError:
        raise ClientError(f"cannot connect to {where}: timed out after {timeout:g}s") from None
    except OSError as e:
        raise ClientError(f"cannot connect to {where}: {e.strerror or e}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


class LineClient:
    def __init__(self, sock: socket.socket, where: str, timeout: float, stdout: BinaryIO) -> None:
        self.sock = sock
        self.stdout = stdout
        self.where = where
        self.timeout = timeout
        self.pending = bytearray()  # received bytes not yet printed

    def _lost(self, e: OSError) -> ClientError:
        if isinstance(e, ConnectionResetError) or e.errno == errno.ECONNRESET:
            return ClientError(f"connection to {self.where} reset by the server")
        if isinstance(e, BrokenPipeError):
            return ClientError(f"connection to {self.where} closed by the server")
        return ClientError(f"connection to {self.where} failed: {e.strerror or e}")

    def exchange(self, line: bytes) -> bytes:
        """Send line; return the reply through its newline. ClientError if it cannot."""
        out = memoryview(line)
        deadline = time.monotonic() + self.timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while b"\n" not in self.pending:
                if not out:
                    sel.modify(self.sock, selectors.EVENT_READ)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ClientError(f"no reply from {self.where} within {self.timeout:g}s")
                for _, mask in sel.select(left):
                    try:
                        if mask & selectors.EVENT_WRITE and out:
                            out = out[self.sock.send(out):]
                            deadline = time.monotonic() + self.timeout  # progress
                        if mask & selectors.EVENT_READ:
                            data = self.sock.recv(65536)
                            if not data:
                                self._closed_early()
                            self.pending += data
                            deadline = time.monotonic() + self.timeout
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as e:
                        raise self._lost(e) from None
        end = self.pending.index(b"\n") + 1
        reply = bytes(self.pending[:end])
        del self.pending[:end]
        return reply

    def _closed_early(self) -> None:
        if self.pending:  # e.g. line mode's error line without a newline: show it
            self.stdout.write(bytes(self.pending) + b"\n")
            self.stdout.flush()
            self.pending.clear()
        raise ClientError(f"connection closed by {self.where}")


def run(host: str, port: int, timeout: float = 10.0,
        stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> int:
    """Talk to host:port line by line until EOF on stdin; 0 at EOF, ClientError otherwise."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    sock = connect(host, port, timeout)
    client = LineClient(sock, format_address(host, port), timeout, stdout)
    try:
        while True:
            if interactive:
                sys.stderr.write(PROMPT)
                sys.stderr.flush()
            line = stdin.readline()
            if not line:
                break
            if not line.endswith(b"\n"):
                line += b"\n"  # the last line of a file without one
            stdout.write(client.exchange(line))
            stdout.flush()
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    finally:
        sock.close()
    return 0
