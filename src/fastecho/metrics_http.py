"""A small HTTP/1.x server for a few fixed pages, with every resource bounded.

It serves the metrics endpoint. One selectors loop on one daemon thread
handles every connection, nonblocking, so what a client can hold is counted
and timed:

- at most MAX_CONNECTIONS sockets; when a new one arrives at the cap, the
  oldest connection that is not being answered gives way (it has sent no
  complete request yet, or it has its whole answer already), else the new one
  is closed. A flood of idle connections therefore cannot keep a scraper out;
- HEADER_TIMEOUT for the whole request head from accept, not per byte, so a
  client trickling bytes is cut off too; MAX_HEADER_BYTES for its size (431);
- WRITE_TIMEOUT for the whole answer, so a client that never reads cannot
  keep a slot; after it, a LINGER_TIMEOUT of reading and discarding before
  the close, so that unread request bytes do not turn the close into a reset
  that loses the answer;
- accept() failing for want of fds or memory pauses accepting (doubling from
  10 ms to 500 ms, as the C acceptor does) instead of spinning on a listener
  that stays readable.

Each connection gets one answer and `Connection: close`: scrapers open one
connection per scrape anyway, and no keep-alive means no idle connections.

Why not a library server: prometheus_client's start_http_server (wsgiref on
socketserver.ThreadingMixIn) starts a thread per connection with no request
timeout and a listen backlog of 5, so 300 half-sent requests hold 300
threads and stall every scrape. socketserver's own timeout is per recv(),
which a client sending a byte at a time never trips, and it has no cap on
connections. asyncio could give these bounds, but its accept loop logs every
EMFILE and needs a task per connection; one selectors loop is as short and
keeps every limit in one place.
"""
from __future__ import annotations

import enum
import errno
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import urlsplit

from fastecho.logs import log

MAX_CONNECTIONS = 16  # well below server.FD_RESERVE, so scrapes never use up the fds kept for them
LISTEN_BACKLOG = 128
HEADER_TIMEOUT = 5.0  # seconds from accept to the end of the request head
WRITE_TIMEOUT = 5.0  # seconds to send the whole answer
LINGER_TIMEOUT = 1.0  # seconds to wait for the client's close after the answer
MAX_HEADER_BYTES = 8192
# Accepts per loop turn. At most half the cap, so that a new connection sees
# one more turn (its request read, if it has arrived) before a flood of newer
# ones can make it give way.
ACCEPT_BATCH = MAX_CONNECTIONS // 2
BACKOFF_MIN = 0.01  # first pause after accept() runs out of fds or memory
BACKOFF_MAX = 0.5
RECV_SIZE = 4096
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
METHODS = (b"GET", b"HEAD")
# A bare LF ends lines too (RFC 9112 2.2 allows it), for `printf ... | nc` by hand.
END_OF_HEAD = re.compile(rb"\r?\n\r?\n")

# A page: called per request, returns (Content-Type, body).
Page = Callable[[], tuple[str, bytes]]


class Phase(enum.Enum):
    READING = "reading the request head"
    WRITING = "sending the answer"
    LINGERING = "answer sent, waiting for the client to close"


@dataclass(eq=False)
class Connection:
    sock: socket.socket
    deadline: float  # monotonic; the connection is closed when its phase outlasts it
    phase: Phase = Phase.READING
    received: bytearray = field(default_factory=bytearray)  # the request head so far
    unsent: memoryview = memoryview(b"")  # the rest of the answer


def response(status: HTTPStatus, content_type: str, body: bytes, *,
             head_only: bool = False, extra: str = "") -> bytes:
    """A complete HTTP/1.1 answer that ends the connection."""
    head = (f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            f"Date: {formatdate(usegmt=True)}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{extra}"
            "Connection: close\r\n\r\n")
    return head.encode("latin-1") + (b"" if head_only else body)


def error_response(status: HTTPStatus, extra: str = "") -> bytes:
    return response(status, "text/plain; charset=utf-8",
                    f"{status.value} {status.phrase}\n".encode(), extra=extra)


class HttpServer:
    """Serves pages ({path: Page}) on a listening socket, from its own thread."""

    def __init__(self, listener: socket.socket, pages: dict[str, Page]) -> None:
        self._listener = listener
        self._pages = pages
        self._connections: dict[int, Connection] = {}  # by fd, oldest first
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._backoff = 0.0
        self._resume_accepting_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="fastecho-metrics", daemon=True)
        for sock in (listener, self._wake_r, self._wake_w):
            sock.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._selector.register(listener, selectors.EVENT_READ)

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and close every socket, the listener included. Once only."""
        if self._stopping:
            return
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except BlockingIOError:  # a wakeup is already pending
            pass
        self._thread.join(timeout)
        self._wake_w.close()

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._run_once()
        finally:
            for conn in list(self._connections.values()):
                self._close(conn)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()

    def _run_once(self) -> None:
        now = time.monotonic()
        deadlines = [conn.deadline for conn in self._connections.values()]
        if self._resume_accepting_at is not None:
            deadlines.append(self._resume_accepting_at)
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        listener_ready = False
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self._listener:
                listener_ready = True
            elif key.fileobj is self._wake_r:
                self._wake_r.recv(64)
            else:
                self._serve(key.data)
        now = time.monotonic()
        for conn in [c for c in self._connections.values() if c.deadline <= now]:
            self._close(conn)
        # After the open connections: a request that has arrived gets its
        # answer started before new arrivals can make it give way.
        if listener_ready:
            self._accept()
        if self._resume_accepting_at is not None and self._resume_accepting_at <= now:
            self._resume_accepting_at = None
            self._selector.register(self._listener, selectors.EVENT_READ)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in OUT_OF_RESOURCES:
                    self._pause_accepting()
                    return
                continue  # the client gave up (ECONNABORTED) or the like: next one
            self._backoff = 0.0
            if len(self._connections) >= MAX_CONNECTIONS and not self._make_room():
                sock.close()  # every slot is busy answering; this client can retry
                continue
            sock.setblocking(False)
            conn = Connection(sock, time.monotonic() + HEADER_TIMEOUT)
            self._connections[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _make_room(self) -> bool:
        """Close the oldest connection that is not being answered; False if all are."""
        # A lingering one has its answer already, so it goes first; then the
        # one that has kept its request unfinished longest.
        for phase in (Phase.LINGERING, Phase.READING):
            for conn in self._connections.values():
                if conn.phase is phase:
                    self._close(conn)
                    return True
        return False

    def _pause_accepting(self) -> None:
        # The listener stays readable while clients wait in the backlog, so
        # polling it now would spin; look again after a pause.
        self._backoff = min(BACKOFF_MAX, self._backoff * 2 or BACKOFF_MIN)
        self._resume_accepting_at = time.monotonic() + self._backoff
        self._selector.unregister(self._listener)

    def _serve(self, conn: Connection) -> None:
        try:
            if conn.phase is Phase.READING:
                self._read_request(conn)
            elif conn.phase is Phase.WRITING:
                self._write(conn)
            else:
                self._discard_until_eof(conn)
        except BlockingIOError:  # a spurious wakeup: nothing to read after all
            pass
        except OSError:  # reset by the peer, or the like: nothing left to answer
            self._close(conn)

    def _read_request(self, conn: Connection) -> None:
        # Never read more than one byte past the limit: enough to know it is exceeded.
        data = conn.sock.recv(min(RECV_SIZE, MAX_HEADER_BYTES + 1 - len(conn.received)))
        if not data:
            self._close(conn)
            return
        search_from = max(0, len(conn.received) - 3)
        conn.received += data
        end = END_OF_HEAD.search(conn.received, search_from)
        if end is not None:
            self._answer(conn, self._response_to(bytes(conn.received[:end.start()])))
        elif len(conn.received) > MAX_HEADER_BYTES:
            self._answer(conn, error_response(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE))

    def _response_to(self, head: bytes) -> bytes:
        request_line = head.split(b"\n", 1)[0].rstrip(b"\r")
        parts = request_line.split()
        if len(parts) != 3 or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
            return error_response(HTTPStatus.BAD_REQUEST)
        method, target, _ = parts
        try:
            path = urlsplit(target.decode("latin-1")).path
        except ValueError:  # e.g. an absolute URL with a broken [IPv6] host
            return error_response(HTTPStatus.BAD_REQUEST)
        page = self._pages.get(path)
        if page is None:
            return error_response(HTTPStatus.NOT_FOUND)
        if method not in METHODS:
            return error_response(HTTPStatus.METHOD_NOT_ALLOWED, extra="Allow: GET, HEAD\r\n")
        try:
            content_type, body = page()
        except Exception:  # a broken page must not end the loop that serves the others
            log.exception("metrics endpoint: %s failed", target.decode("latin-1"))
            return error_response(HTTPStatus.INTERNAL_SERVER_ERROR)
        return response(HTTPStatus.OK, content_type, body, head_only=method == b"HEAD")

    def _answer(self, conn: Connection, data: bytes) -> None:
        conn.phase = Phase.WRITING
        conn.received = bytearray()
        conn.unsent = memoryview(data)
        conn.deadline = time.monotonic() + WRITE_TIMEOUT
        self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)  # it usually all fits in the socket buffer at once

    def _write(self, conn: Connection) -> None:
        while conn.unsent:
            try:
                sent = conn.sock.send(conn.unsent)
            except BlockingIOError:
                return  # wait for EVENT_WRITE
            conn.unsent = conn.unsent[sent:]
        conn.sock.shutdown(socket.SHUT_WR)
        conn.phase = Phase.LINGERING
        conn.deadline = time.monotonic() + LINGER_TIMEOUT
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _discard_until_eof(self, conn: Connection) -> None:
        if not conn.sock.recv(RECV_SIZE):
            self._close(conn)

    def _close(self, conn: Connection) -> None:
        del self._connections[conn.sock.fileno()]
        self._selector.unregister(conn.sock)
        conn.sock.close()
