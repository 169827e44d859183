"""Runs the C engine: binds the socket, starts the engine, waits for signals, stops.

Python owns the listening socket (so that --fd and socket activation can hand
one in) and gives only its fd to the engine. The main thread keeps the GIL and
waits in short ticks, so that signal handlers run promptly; the handlers only
record the signal, and this loop acts on it:

- SIGTERM/SIGINT: stop accepting, let open connections finish for --grace
  seconds, close the rest, exit 0; a second one closes everything at once.
- SIGHUP: reopen the log files (logrotate).

Start order: bind (or adopt) the listener, start the metrics endpoint, drop
privileges (--user), start the engine, report ready (stdout line, the
--daemon parent, systemd READY=1), then the access-log thread.
"""
from __future__ import annotations

import errno
import grp
import os
import pwd
import resource
import select
import signal
import socket
import sys
from collections.abc import Callable
from typing import TextIO

from fastecho import logs, systemd
from fastecho._core import Engine
from fastecho.addresses import format_address
from fastecho.config import ServeConfig
from fastecho.errors import ServeError
from fastecho.logs import log

TICK_SECONDS = 0.1
LINGER_SECONDS = 1.0  # after the drain deadline: time to flush, FIN, and see the peer close
# File descriptors the engine leaves free for this process (metrics scrapes,
# log files reopened on SIGHUP) when connections take all the others.
FD_RESERVE = 64
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RELOAD_SIGNALS = (signal.SIGHUP,)


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


def check_can_switch_user(user: str | None) -> None:
    """--user needs root; say so before anything is bound or forked."""
    if user is not None and os.geteuid() != 0:
        raise ServeError(f"--user {user} needs root (running as uid {os.geteuid()})")


def drop_privileges(user: str) -> None:
    """Become user (its gid and supplementary groups too), for good. ServeError if not."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ServeError(f"--user {user}: no such user") from None
    try:
        os.setgroups([])
        os.initgroups(entry.pw_name, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except OSError as e:
        raise ServeError(f"cannot switch to user {user}: {e.strerror or e}") from None
    if entry.pw_uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise ServeError(f"cannot switch to user {user}: root could be regained")
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)
    log.info("running as user %s (uid %d), group %s (gid %d)",
             entry.pw_name, entry.pw_uid, group, entry.pw_gid)


def create_engine(cfg: ServeConfig) -> Engine:
    """The C engine for cfg; a 0 or None setting leaves that feature off."""
    suffix = None if cfg.suffix is None else cfg.suffix.encode("utf-8", "surrogateescape")
    return Engine(
        cfg.threads,
        max_pending_output=cfg.max_pending_output,
        suffix=suffix,
        max_line=cfg.max_line,
        event_ring_size=cfg.access_log_ring if cfg.access_log else 0,
        max_connections=cfg.max_connections,
        max_connections_per_ip=cfg.max_connections_per_ip,
        idle_timeout=cfg.idle_timeout,
        allow=list(cfg.allow),
        max_memory=cfg.max_memory,
        fd_reserve=FD_RESERVE,
    )


class Server:
    def __init__(self, config: ServeConfig, out: TextIO | None = None,
                 listener: socket.socket | None = None,
                 on_ready: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.out = out or sys.stdout
        self.listener = listener  # inherited (--fd, socket activation); else bound in run()
        self.on_ready = on_ready
        self.engine: Engine | None = None
        self.metrics = None
        self.drainer = None
        self._signals: list[int] = []
        self._reopen_logs = False

    def _on_signal(self, signum: int, frame) -> None:
        if signum in RELOAD_SIGNALS:
            self._reopen_logs = True
        else:
            self._signals.append(signum)

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM, then drain and stop. Raises ServeError."""
        cfg = self.config
        check_can_switch_user(cfg.user)
        raise_fd_limit()
        listener = self.listener or bind_listener(cfg.host, cfg.port, cfg.backlog)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        handled = STOP_SIGNALS + RELOAD_SIGNALS
        previous = {s: signal.signal(s, self._on_signal) for s in handled}
        previous_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        try:
            if cfg.metrics_port is not None:
                from fastecho import metrics
                self.metrics = metrics.start(cfg.metrics_host, cfg.metrics_port, self._stats)
                log.info("metrics at %s", self.metrics.url)
            if cfg.user is not None:
                drop_privileges(cfg.user)
            self.engine = create_engine(cfg)
            try:
                self.engine.start(listener.fileno())
            except OSError as e:
                raise ServeError(f"cannot start the engine: {e.strerror or e}") from None
            host, port = listener.getsockname()[:2]
            where = format_address(host, port)
            line = f"fastecho listening on {where} ({cfg.threads} threads)"
            print(line, file=self.out, flush=True)
            self._announce(where)
            if self.on_ready is not None:
                self.on_ready(line)
            if cfg.access_log:
                from fastecho.accesslog import AccessLogDrainer
                self.drainer = AccessLogDrainer(self.engine)
                self.drainer.start()
            failure = self._serve_until_signal(wake_r)
            self._stop(listener, wake_r)
            if failure:
                raise ServeError(failure)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self.drainer is not None:
                self.drainer.stop()  # the engine has stopped (or never served): drain the rest
            if self.metrics is not None:
                self.metrics.stop()
            if self.engine is not None:
                self.engine.close()
            listener.close()
            wake_r.close()
            wake_w.close()

    def _stats(self) -> dict[str, int]:
        if self.engine is None:
            raise ValueError("engine not started")
        return self.engine.stats()

    def _announce(self, where: str) -> None:
        cfg = self.config
        mode = "byte-exact echo" if cfg.suffix is None else f"line mode, suffix {cfg.suffix!r}"
        log.info("listening on %s (%d threads, %s)", where, cfg.threads, mode)
        systemd.notify(f"READY=1\nSTATUS=listening on {where}\nMAINPID={os.getpid()}")

    def _tick(self, wake: socket.socket) -> None:
        select.select([wake], [], [], TICK_SECONDS)
        try:
            while wake.recv(512):
                pass
        except BlockingIOError:
            pass
        if self._reopen_logs:
            self._reopen_logs = False
            logs.reopen()

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
        systemd.notify("STOPPING=1\nSTATUS=draining connections")
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
            if self._reopen_logs:
                self._reopen_logs = False
                logs.reopen()
        log.info("stopped")
