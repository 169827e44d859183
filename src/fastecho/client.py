"""`fastecho client HOST PORT`: the original's interactive line client.

It reads lines from stdin, sends each one, and prints each reply: the bytes
up to and including the first newline the server sends back, which is the
line itself from a byte-exact server and the line plus its suffix from a
--suffix server. Sending and reading overlap, so a line longer than the
socket buffers cannot deadlock against the server's backpressure. At EOF on
stdin it half-closes (over TLS: close_notify) and exits 0. A refused, reset or
closed connection, a failed TLS handshake, or a reply that does not come,
gives one line and exit 1 (ClientError).

With --tls it speaks TLS (the stdlib's ssl, on OpenSSL): the server's
certificate is checked against the system's CAs or --ca, and its name
against HOST, unless --insecure; --cert/--key present a client certificate
for mutual TLS.
"""
from __future__ import annotations

import errno
import selectors
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from typing import BinaryIO

from fastecho.addresses import format_address
from fastecho.errors import ClientError

PROMPT = "> "


@dataclass(frozen=True)
class TlsOptions:
    ca: str | None = None  # CA file to trust (None: the system's)
    insecure: bool = False  # check neither the certificate nor the name
    cert: str | None = None  # client certificate (PEM; may hold the key too)
    key: str | None = None

    def context(self) -> ssl.SSLContext:
        """The client-side context; ClientError if a file is unusable."""
        try:
            context = ssl.create_default_context(cafile=self.ca)
            if self.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if self.cert:
                context.load_cert_chain(self.cert, self.key)
        except FileNotFoundError as e:
            raise ClientError(f"{e.filename or self.ca or self.cert}: no such file") from None
        except (ssl.SSLError, OSError) as e:
            raise ClientError(f"cannot load the TLS files: {e.strerror or e.reason or e}") from None
        return context


def tls_failure(e: OSError) -> str:
    """Why a TLS handshake that raised e failed, in words (also fastecho probe's)."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed ({e.verify_message or e.reason})"
    if isinstance(e, ssl.SSLError):  # OpenSSL's reason as its own messages spell it: "wrong version number"
        return e.reason.lower().replace("_", " ") if e.reason else str(e)
    return e.strerror or "connection closed"


def start_tls(sock: socket.socket, host: str, where: str, tls: TlsOptions) -> ssl.SSLSocket:
    """The handshake over the connected (blocking, with a timeout) sock; ClientError if it fails."""
    try:
        return tls.context().wrap_socket(sock, server_hostname=host)
    except TimeoutError:
        raise ClientError(f"TLS handshake with {where} timed out") from None
    except OSError as e:
        raise ClientError(f"TLS handshake with {where} failed: {tls_failure(e)}") from None


def connect(host: str, port: int, timeout: float, tls: TlsOptions | None = None) -> socket.socket:
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
    if tls is not None:
        try:
            sock = start_tls(sock, host, where, tls)
        except BaseException:
            sock.close()
            raise
    sock.setblocking(False)
    return sock


def finish(sock: socket.socket) -> None:
    """End our direction: close_notify over TLS, else FIN; errors do not matter any more."""
    try:
        if isinstance(sock, ssl.SSLSocket):
            sock.unwrap()  # sends close_notify; the peer's need not be awaited
        else:
            sock.shutdown(socket.SHUT_WR)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, OSError):
        pass


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
                # Bytes TLS already decrypted are no longer in the socket: select would miss them.
                ready = [(None, selectors.EVENT_READ)] if self._tls_pending() else sel.select(left)
                for _, mask in ready:
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
                    except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        continue
                    except OSError as e:
                        raise self._lost(e) from None
        end = self.pending.index(b"\n") + 1
        reply = bytes(self.pending[:end])
        del self.pending[:end]
        return reply

    def _tls_pending(self) -> bool:
        return isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0

    def _closed_early(self) -> None:
        if self.pending:  # e.g. line mode's error line without a newline: show it
            self.stdout.write(bytes(self.pending) + b"\n")
            self.stdout.flush()
            self.pending.clear()
        raise ClientError(f"connection closed by {self.where}")


def run(host: str, port: int, timeout: float = 10.0,
        stdin: BinaryIO | None = None, stdout: BinaryIO | None = None,
        tls: TlsOptions | None = None) -> int:
    """Talk to host:port line by line until EOF on stdin; 0 at EOF, ClientError otherwise."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    sock = connect(host, port, timeout, tls)
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
        finish(sock)
    finally:
        sock.close()
    return 0


def run_udp(host: str, port: int, timeout: float = 10.0, retries: int = 2,
            stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> int:
    """Send each line of stdin (without its newline) as one datagram and print the reply.

    A reply that does not come within timeout is asked for again, up to
    retries more times, then ClientError. Replies that are not the current
    line (a late answer to an earlier try) are skipped.
    """
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    where = format_address(host, port)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
    except socket.gaierror as e:
        raise ClientError(f"cannot resolve {host!r}: {e.strerror}") from None
    with sock:
        try:
            sock.connect(address)  # only this server's datagrams come back
        except OSError as e:
            raise ClientError(f"cannot reach {where}: {e.strerror or e}") from None
        while line := stdin.readline():
            datagram = line.rstrip(b"\r\n")
            stdout.write(_udp_exchange(sock, datagram, where, timeout, retries) + b"\n")
            stdout.flush()
    return 0


def _udp_exchange(sock: socket.socket, datagram: bytes, where: str, timeout: float, retries: int) -> bytes:
    for _ in range(retries + 1):
        try:
            sock.send(datagram)
        except OSError as e:
            raise ClientError(f"cannot send to {where}: {e.strerror or e}") from None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                reply = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionRefusedError:
                raise ClientError(f"{where} refused the datagram (nothing listens there)") from None
            except OSError as e:
                raise ClientError(f"cannot receive from {where}: {e.strerror or e}") from None
            if reply == datagram:
                return reply
    raise ClientError(f"no reply from {where} after {retries + 1} tries of {timeout:g}s")

