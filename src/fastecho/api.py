"""fastecho in another program: the same C engine as `fastecho serve`, in this process.

    from fastecho import EchoServer

    with EchoServer(listen=["tcp://127.0.0.1:0", "udp://127.0.0.1:0"], threads=2) as server:
        host, port = server.address("tcp")
        ...
        server.stats()

Every `serve` option is a keyword argument with its long name (`max_line=4096`,
`tls_cert="server.pem"`, `listen=[...]`), checked exactly as the command line's
are: one table (fastecho.config.OPTIONS), and the same ConfigError with one
line. What belongs to a whole process (daemon mode, pid file, user switch,
inherited sockets, log files, the metrics endpoint and the access log) is the
embedding program's business and is refused here.

The engine's threads are C threads that never take the GIL: the caller's
threads and event loop run freely while it serves. start() and stop() wait
for the engine with the GIL released. Several servers may run in one process,
started and stopped in any order; a stopped server holds no thread and no fd.
"""
from __future__ import annotations

import asyncio
import difflib
import socket
import ssl
import threading
from types import TracebackType
from typing import Any

from fastecho import iobackend, tls
from fastecho._core import Engine, TlsContext
from fastecho.config import OPTION_BY_NAME, ServeConfig
from fastecho.errors import ConfigError, ServeError
from fastecho.listeners import Listener
from fastecho.server import LINGER_SECONDS, close_all, open_listeners, start_engine

# serve options that act on the whole process, not on one server in it.
PROCESS_OPTIONS = {
    "daemon": "daemon mode", "workdir": "daemon mode", "pidfile": "a pid file", "user": "switching user",
    "fd": "an inherited socket", "fd_scheme": "an inherited socket",
    "log_dir": "fastecho's log files", "log_level": "fastecho's log", "log_time": "fastecho's log",
    "access_log": "the access log", "access_log_ring": "the access log",
    "metrics_port": "the metrics endpoint", "metrics_host": "the metrics endpoint",
}
DEFAULT_LISTEN = ("tcp://127.0.0.1:0",)
# How long stop() waits for the engine's threads per look (the GIL is released meanwhile).
WAIT_STEP_SECONDS = 0.5


def _config(options: dict[str, Any]) -> ServeConfig:
    """A ServeConfig from keyword arguments, checked as `serve` checks its own."""
    for name in options:
        if name in PROCESS_OPTIONS:
            raise ConfigError(f"{name}: {PROCESS_OPTIONS[name]} belongs to the fastecho command, "
                              f"not to an EchoServer in another program")
        if name not in OPTION_BY_NAME:
            hint = difflib.get_close_matches(name, OPTION_BY_NAME, n=1)
            raise ConfigError(f"unknown option {name!r}" + (f" (did you mean {hint[0]}?)" if hint else ""))
    return ServeConfig(**options)


class EchoServer:
    """An echo server on fastecho's C engine, in this process. See the module's doc."""

    # Set by the pytest plugin's echo_server_factory(tls="trustme"): a client
    # context that trusts the server's throwaway certificate.
    client_ssl_context: ssl.SSLContext | None = None

    def __init__(self, listen: list[str] | tuple[str, ...] | str = DEFAULT_LISTEN, **options: Any) -> None:
        self.config = _config({"listen": listen, **options})
        self._lock = threading.Lock()  # start and stop, from any thread
        self._engine: Engine | None = None
        self._tls: TlsContext | None = None
        self._bound: list[tuple[Listener, socket.socket]] = []
        self._stopped = False
        self.io_backend: str | None = None  # the backend in effect, once started

    # ------------------------------------------------------------ life

    def start(self) -> EchoServer:
        """Bind every listener and start serving; returns self. ConfigError for a bad setting
        (a certificate, say), ServeError when something cannot be bound or started."""
        with self._lock:
            if self._engine is not None or self._stopped:
                raise ServeError("an EchoServer starts once (make a new one to serve again)")
            cfg = self.config
            self._tls = tls.load_context(cfg) if cfg.serves_tls() else None
            bound = open_listeners(cfg, None)
            try:
                self.io_backend = iobackend.choose(cfg.io_backend)
                engine = start_engine(cfg, bound, self._tls, self.io_backend)
            except BaseException:
                close_all([sock for _, sock in bound])
                raise
            self._engine, self._bound = engine, bound
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting at once, let open connections finish for grace seconds (default: the
        `grace` option), flush, close; returns once every engine thread has exited and every
        fd is closed. Idempotent; safe from any thread."""
        with self._lock:
            engine, self._engine = self._engine, None
            self._stopped = True
            if engine is None:
                return
            engine.shutdown(self.config.grace if grace is None else max(grace, 0.0), LINGER_SECONDS)
            close_all([sock for _, sock in self._bound])  # the acceptor is joined: nobody uses them
            while not engine.wait(WAIT_STEP_SECONDS):
                pass
            engine.close()

    def reload_tls(self) -> None:
        """Read the TLS certificate, key and client CAs again (what SIGHUP does for `serve`):
        new handshakes use them; ConfigError, and the old ones kept, if they are bad."""
        engine = self._live()
        if self.config.serves_tls():
            self._tls = tls.load_context(self.config)
            engine.set_tls(self._tls)

    def __enter__(self) -> EchoServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> EchoServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await asyncio.to_thread(self.stop)  # a drain must not hold up the event loop

    # ------------------------------------------------------------ what it serves

    @property
    def listeners(self) -> list[Listener]:
        """Every listener, with its real port (port 0 asked for one), in the order given."""
        return [listener for listener, _ in self._bound]  # open_listeners filled in the real ports

    def _first(self, scheme: str) -> Listener:
        for listener in self.listeners:
            if listener.scheme == scheme:
                return listener
        served = ", ".join(listener.url for listener in self.listeners) or "nothing (not started)"
        raise LookupError(f"no {scheme} listener: this server serves {served}")

    def address(self, scheme: str = "tcp") -> tuple[str, int]:
        """(host, port) of the first listener with this scheme (tcp, udp, tls, ws, ...)."""
        listener = self._first(scheme)
        return listener.host, listener.port

    def url(self, scheme: str = "tcp") -> str:
        """The first listener with this scheme as a URL (ws and wss with a trailing /)."""
        listener = self._first(scheme)
        return listener.url + "/" if listener.ws else listener.url

    def stats(self) -> dict[str, Any]:
        """The engine's counters (as `fastecho_*` metrics show them), a lock-free snapshot."""
        return self._live().stats()

    @property
    def running(self) -> bool:
        return self._engine is not None

    def _live(self) -> Engine:
        engine = self._engine
        if engine is None:
            raise ServeError("this EchoServer is not running (call start(), or use `with`)")
        return engine

    def __repr__(self) -> str:
        state = ", ".join(l.url for l in self.listeners) if self.running else "stopped" if self._stopped else "new"
        return f"<EchoServer {state}>"
