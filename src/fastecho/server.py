"""Runs the C engine: binds the socket, starts the engine, waits for signals, stops.

Python owns the listening socket (so that --fd and socket activation can hand
one in) and gives only its fd to the engine. The main thread keeps the GIL and
waits in short ticks, so that signal handlers run promptly; the handlers only
record the signal, and this loop acts on it.
"""
from __future__ import annotations

import errno
import resource
import select
import signal
import socket
import sys
from typing import TextIO

from fastecho._core import Engine
from fastecho.config import ServeConfig
from fastecho.errors import ServeError
from fastecho.logs import log

TICK_SECONDS = 0.1
LINGER_SECONDS = 1.0  # after the drain deadline: time to flush, FIN, and see the peer close
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket on host:port; ServeError with one clear line if not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ServeError(f"cannot resolve host {host!r}: {e.strerror}") from None
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        where = format_address(host, port)
        if e.errno == errno.EADDRINUSE:
            raise ServeError(f"cannot listen on {where}: address already in use") from None
        raise ServeError(f"cannot listen on {where}: {e.strerror or e}") from None
    return sock


def raise_fd_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit and return it.

    Every connection is an fd, and the soft limit is often 1024 while the hard
    one is far higher; an operator who wants fewer sets the hard limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            pass
    return soft


class Server:
    def __init__(self, config: ServeConfig, out: TextIO | None = None) -> None:
        self.config = config
        self.out = out or sys.stdout
        self.engine: Engine | None = None
        self._signals: list[int] = []

    def _on_signal(self, signum: int, frame) -> None:
        self._signals.append(signum)

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM, then drain and stop. Raises ServeError."""
        cfg = self.config
        raise_fd_limit()
        listener = bind_listener(cfg.host, cfg.port, cfg.backlog)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        previous_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        try:
            self.engine = Engine(cfg.threads, max_pending_output=cfg.max_pending_output)
            try:
                self.engine.start(listener.fileno())
            except OSError as e:
                raise ServeError(f"cannot start the engine: {e.strerror or e}") from None
            host, port = listener.getsockname()[:2]
            print(f"fastecho listening on {format_address(host, port)} ({cfg.threads} threads)",
                  file=self.out, flush=True)
            failure = self._serve_until_signal(wake_r)
            self._stop(listener, wake_r)
            if failure:
                raise ServeError(failure)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self.engine is not None:
                self.engine.close()
            listener.close()
            wake_r.close()
            wake_w.close()

    def _tick(self, wake: socket.socket) -> None:
        select.select([wake], [], [], TICK_SECONDS)
        try:
            while wake.recv(512):
                pass
        except BlockingIOError:
            pass

    def _serve_until_signal(self, wake: socket.socket) -> str | None:
        """Returns None after a stop signal, or a message if the engine failed."""
        assert self.engine is not None
        while not self._signals:
            self._tick(wake)
            err = self.engine.acceptor_error
            if err:
                return f"the listener failed: {errno.errorcode.get(err, err)}"
        return None

    def _stop(self, listener: socket.socket, wake: socket.socket) -> None:
        assert self.engine is not None
        grace = self.config.grace
        active = self.engine.stats()["connections_active"]
        log.info("stopping: no new connections; %d open connection(s) get up to %gs to finish",
                 active, grace)
        self.engine.shutdown(grace, LINGER_SECONDS)
        listener.close()  # the acceptor is joined: nobody uses the fd any more
        handled = len(self._signals)
        while not self.engine.wait(TICK_SECONDS):
            if len(self._signals) > handled:
                log.warning("second stop signal: closing every connection now")
                self.engine.shutdown(0, 0)
                handled = len(self._signals)
        log.info("stopped")
