"""Runs the C engine: binds the socket, starts the engine, waits for signals, stops.

Python owns the listening socket (so that --fd and socket activation can hand
one in) and gives only its fd to the engine. The main thread keeps the GIL and
waits in short ticks, so that signal handlers run promptly; the handlers only
record the signal, and this loop acts on it:

- SIGTERM/SIGINT: stop accepting, let open connections finish for --grace
  seconds, close the rest, exit 0; a second one closes everything at once.
- SIGHUP: reopen the log files (logrotate), and read the TLS certificate and
  key again (rotation): new handshakes use the new pair; a bad one is logged
  and the old one kept.

Each tick also watches the engine's count of accepts put off for want of fds,
and logs one warning when the server runs out and one when it recovers.

Start order: load the TLS certificate (before anything binds, so a bad one is
one line and exit 2), bind (or adopt) the listener, start the metrics endpoint, drop
privileges (--user, handing the log files to the user first), check that the
fd limit leaves room for the engine, create and start the engine, report
ready (stdout line, the --daemon parent, systemd READY=1), then the
access-log thread. Every failure on the way is a ServeError with one line.
"""
from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import resource
import select
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple, TextIO

from fastecho import _core, iobackend, logs, systemd, tls
from fastecho._core import Engine
from fastecho.addresses import format_address
from fastecho.config import ServeConfig
from fastecho.listeners import Listener
from fastecho.errors import ConfigError, ServeError
from fastecho.logs import log

if TYPE_CHECKING:
    from fastecho.daemon import PidFile

TICK_SECONDS = 0.1
LINGER_SECONDS = 1.0  # after the drain deadline: time to flush, FIN, and see the peer close
# File descriptors the engine leaves free for this process (metrics scrapes,
# log files reopened on SIGHUP) when connections take all the others.
FD_RESERVE = 64
# Connections the fd check insists there is room for, beyond the reserve: a
# limit that leaves fewer is a misconfiguration to refuse at start, not load.
MIN_CONNECTION_FDS = 16
# No new accept put off for want of fds in this long: the shortage is over.
# Longer than the acceptor's longest back-off (500 ms), which is how often it
# retries, and so counts, while the shortage lasts.
FD_SHORTAGE_QUIET_SECONDS = 1.0
UDP_BUFFER_BYTES = 4 * 1024 * 1024  # each UDP socket's kernel buffers, if the system allows
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RELOAD_SIGNALS = (signal.SIGHUP,)


def _resolve(host: str, port: int, kind: int) -> tuple[int, int, int, tuple]:
    """getaddrinfo's first answer for a passive socket: (family, type, proto, address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ServeError(f"cannot resolve host {host!r}: {e.strerror}") from None
    family, type_, proto, _, address = infos[0]
    return family, type_, proto, address


def bind_listener(host: str, port: int, backlog: int, udp: bool = False,
                  reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on host:port, or with udp a bound UDP socket that each
    worker joins with a socket of its own (SO_REUSEPORT); ServeError with one clear line if not.

    reuse_port: other processes (of the same user) may bind host:port too
    (SO_REUSEPORT on the TCP listener as well), see fastecho.reuseport."""
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    family, type_, proto, address = _resolve(host, port, kind)
    where = format_address(host, port)
    try:
        sock = socket.socket(family, type_, proto)
    except OSError as e:
        raise ServeError(f"cannot listen on {where}: {e.strerror or e}") from None
    try:
        if udp:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            # Room for bursts: a datagram that finds the buffer full is lost.
            # The kernel caps these at net.core.rmem_max/wmem_max; each
            # worker's socket copies them.
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER_BYTES)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if not udp:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ServeError(f"cannot listen on {where}: address already in use") from None
        raise ServeError(f"cannot listen on {where}: {e.strerror or e}") from None
    return sock


def check_udp_port_free(host: str, port: int) -> None:
    """ServeError if host:port (UDP) is bound already, by anyone.

    The workers share a UDP listener through SO_REUSEPORT, which the kernel
    would let any other process of the same user join: a second fastecho
    would silently take a share of the datagrams. Without --reuse-port a
    plain bind (no SO_REUSEPORT) is tried first, which fails if the port is
    taken. Run before this server binds any UDP listener of its own."""
    if port == 0:
        return
    family, type_, proto, address = _resolve(host, port, socket.SOCK_DGRAM)
    try:
        with socket.socket(family, type_, proto) as probe:
            probe.bind(address)
    except OSError as e:
        where = format_address(host, port)
        if e.errno == errno.EADDRINUSE:
            raise ServeError(f"cannot listen on {where}: address already in use") from None
        raise ServeError(f"cannot listen on {where}: {e.strerror or e}") from None


def enable_migration(sockets: list[socket.socket]) -> None:
    """--reuse-port: have the kernel move the connections queued on these TCP listeners to
    another fastecho on the address when this one closes them (fastecho.reuseport), and log
    how; a warning if it cannot, for then a restart resets those connections."""
    from fastecho import reuseport

    if not sockets:
        return
    failures = [why for why in map(reuseport.attach_migration, sockets) if why is not None]
    if not failures:
        log.info("--reuse-port: connections queued here when this server stops move to another "
                 "server on the same address (request migration, BPF program)")
        return
    sysctl = reuseport.migrate_sysctl()
    if sysctl:
        log.info("--reuse-port: connections queued here when this server stops move to another "
                 "server on the same address (request migration, net.ipv4.tcp_migrate_req = 1)")
    else:
        setting = "is 0" if sysctl is False else "is missing (Linux 5.14 or later has it)"
        log.warning("--reuse-port: connections queued here when this server stops will be reset, "
                    "not moved to the server that takes over: net.ipv4.tcp_migrate_req %s and %s; "
                    "set it to 1 (see docs/operations.md)", setting, failures[0])


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


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


def lookup_user(user: str) -> pwd.struct_passwd:
    """The passwd entry for a name or numeric uid; ServeError if there is none."""
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ServeError(f"--user {user}: no such user") from None


def give_files(entry: pwd.struct_passwd, files: Iterable[tuple[str, int]]) -> None:
    """chown each open (path, fd) to the user, so that it can reopen the file by name.

    Only a regular file that path names directly is given away: a symbolic link
    or a second hard link could have been planted to make root hand over some
    other file (/etc/shadow). Devices and pipes are left as they are.
    """
    for path, fd in files:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_uid, st.st_gid) == (entry.pw_uid, entry.pw_gid):
            continue
        try:
            named = os.path.samestat(st, os.lstat(path))
        except OSError:
            named = False
        if not named or st.st_nlink != 1:
            raise ServeError(f"will not give {path} to user {entry.pw_name}: "
                             "it is a symbolic link, has other hard links, or was replaced")
        try:
            os.fchown(fd, entry.pw_uid, entry.pw_gid)
        except OSError as e:
            raise ServeError(f"cannot give {path} to user {entry.pw_name}: {e.strerror or e}") from None


def drop_privileges(user: str, files: Iterable[tuple[str, int]] = ()) -> None:
    """Become user (its gid and supplementary groups too), for good. ServeError if not.

    files (open (path, fd) pairs: the log files) are first given to the user,
    who must reopen them by name after SIGHUP.
    """
    entry = lookup_user(user)
    give_files(entry, files)
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


def open_fd_count() -> int:
    """How many fds this process has open; 3 (stdio) if /proc cannot tell."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the fd listdir itself holds
    except OSError:
        return 3


def fd_reserve_at(limit: int) -> int:
    """The fds the engine keeps free under RLIMIT_NOFILE limit (at most a quarter of it)."""
    return min(FD_RESERVE, limit // 4)


def fds_per_worker(udp_listeners: int) -> int:
    """The fds the engine opens for each worker: its own, and a socket on each UDP listener."""
    return _core._defaults()["fds_per_worker"] + udp_listeners


def fds_needed(threads: int, open_now: int, udp_listeners: int = 0) -> int:
    """The smallest RLIMIT_NOFILE that fits the engine for threads workers.

    That is: the fds open now, the engine's own (per server and per worker),
    MIN_CONNECTION_FDS connections, and the reserve the engine keeps free at
    that limit (which grows with the limit, up to FD_RESERVE).
    """
    defaults = _core._defaults()
    base = (open_now + defaults["fds_per_server"] + threads * fds_per_worker(udp_listeners)
            + MIN_CONNECTION_FDS)
    limit = base
    while limit - fd_reserve_at(limit) < base:  # at most FD_RESERVE steps
        limit += 1
    return limit


def threads_that_fit(limit: int, open_now: int, udp_listeners: int = 0) -> int:
    """The most worker threads that fds_needed() fits in limit (0 if none)."""
    defaults = _core._defaults()
    room = (limit - fd_reserve_at(limit) - open_now - defaults["fds_per_server"]
            - MIN_CONNECTION_FDS)
    return max(0, room // fds_per_worker(udp_listeners))


def check_fd_limit(threads: int, udp_listeners: int = 0) -> None:
    """ServeError, before the engine tries, if RLIMIT_NOFILE cannot fit it.

    Run just before the engine is created, after raise_fd_limit() and with
    every other fd the server needs already open, so that the count is exact.
    """
    limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limit == resource.RLIM_INFINITY:
        return
    open_now = open_fd_count()
    needed = fds_needed(threads, open_now, udp_listeners)
    if needed <= limit:
        return
    fit = threads_that_fit(limit, open_now, udp_listeners)
    instead = f" or use at most {fit} thread{'s' if fit > 1 else ''}" if fit else ""
    raise ServeError(f"--threads {threads} needs at least {needed} file descriptors but the "
                     f"limit (RLIMIT_NOFILE) is {limit}; raise it (ulimit -n){instead}")


@contextlib.contextmanager
def failing_as(what: str) -> Iterator[None]:
    """Turn an OSError or MemoryError in the block into a one-line ServeError 'what: why'."""
    try:
        yield
    except MemoryError:
        raise ServeError(f"{what}: out of memory") from None
    except OSError as e:
        why = e.strerror or str(e)
        if e.errno in (errno.EMFILE, errno.ENFILE):
            limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            why += f" (RLIMIT_NOFILE is {limit}; {open_fd_count()} open)"
        raise ServeError(f"{what}: {why}") from None


def create_engine(cfg: ServeConfig, io_backend: str = "epoll") -> Engine:
    """The C engine for cfg, with io_backend (iobackend.choose's answer); a 0 or None
    setting leaves that feature off."""
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
        splice=cfg.splice == "on",
        fd_reserve=FD_RESERVE,
        proxy_from=list(cfg.proxy_from),
        proxy_timeout=cfg.proxy_timeout,
        tls_handshake_timeout=cfg.tls_handshake_timeout,
        udp_allow_low_ports=cfg.udp_allow_low_ports,
        udp_rate=cfg.udp_rate,
        udp_max_datagram=cfg.udp_max_datagram,
        ws_path=None if cfg.ws_path is None else cfg.ws_path.encode("ascii"),
        ws_allow_origins=[origin.encode("ascii") for origin in cfg.ws_allow_origin],
        ws_max_message=cfg.max_message,
        ws_max_header=cfg.max_header,
        ws_handshake_timeout=cfg.ws_handshake_timeout,
        io_backend=io_backend,
    )


def start_engine(cfg: ServeConfig, bound: list[tuple[Listener, socket.socket]],
                 tls_context: _core.TlsContext | None, io_backend: str) -> Engine:
    """Checks the fd limit, then creates the engine for cfg (its workers running
    io_backend, iobackend.choose's answer) and starts it on the bound listeners (the
    caller keeps the sockets open until it has stopped). ServeError with one line if
    it cannot."""
    check_fd_limit(cfg.threads, sum(listener.udp for listener, _ in bound))
    with failing_as("cannot create the engine"):
        engine = create_engine(cfg, io_backend)
    if tls_context is not None:
        engine.set_tls(tls_context)
    with failing_as("cannot start the engine"):
        engine.start(*(sock.fileno() for _, sock in bound),
                     proxy=[listener.proxy for listener, _ in bound],
                     tls=[listener.tls for listener, _ in bound],
                     udp=[listener.udp for listener, _ in bound],
                     ws=[listener.ws for listener, _ in bound])
    return engine


def open_listeners(cfg: ServeConfig, inherited: socket.socket | None) -> list[tuple[Listener, socket.socket]]:
    """The listening sockets to serve, each with its listener: the inherited
    one (--fd, socket activation; it speaks --fd-scheme), or every listener
    in cfg, bound here. ServeError with one line if one cannot be bound (the
    others are closed again)."""
    if inherited is not None:
        if cfg.reuse_port:
            log.warning("--reuse-port does not apply to an inherited socket (--fd, socket "
                        "activation): whoever bound it chose (ReusePort= in a .socket unit)")
        host, port = inherited.getsockname()[:2]
        return [(Listener(cfg.fd_scheme, host, port), inherited)]
    if not cfg.reuse_port:
        for listener in cfg.listeners():
            if listener.udp:
                check_udp_port_free(listener.host, listener.port)
    opened: list[tuple[Listener, socket.socket]] = []
    try:
        for listener in cfg.listeners():
            sock = bind_listener(listener.host, listener.port, cfg.backlog, listener.udp,
                                 reuse_port=cfg.reuse_port)
            host, port = sock.getsockname()[:2]  # the real port, when 0 was asked for
            opened.append((Listener(listener.scheme, host, port), sock))
        if cfg.reuse_port:
            enable_migration([sock for listener, sock in opened if not listener.udp])
    except BaseException:
        close_all([sock for _, sock in opened])
        raise
    return opened


def describe_listeners(listeners: list[Listener]) -> str:
    """host:port for the plain single listener (the line scripts parse); else each with its scheme."""
    if len(listeners) == 1 and listeners[0].scheme == "tcp":
        return format_address(listeners[0].host, listeners[0].port)
    return ", ".join(f"{format_address(l.host, l.port)} ({l.scheme})" for l in listeners)


class FdShortageEvent(NamedTuple):
    started: bool  # True: the shortage began; False: it ended
    seconds: float  # ended: how long accepts were being put off
    put_off: int  # ended: accept attempts put off during the shortage


class FdShortage:
    """Turns samples of the engine's accept_fd_exhausted counter into start and end events.

    Pure logic, fed (time, counter) pairs on each tick: the first increase
    starts a shortage; FD_SHORTAGE_QUIET_SECONDS without one ends it. So
    however long it lasts, it gives exactly two events.
    """

    def __init__(self, quiet_seconds: float = FD_SHORTAGE_QUIET_SECONDS, count: int = 0) -> None:
        self.quiet_seconds = quiet_seconds
        self.count = count  # the counter at the last sample
        self.started_at: float | None = None  # None: no shortage now
        self.count_at_start = 0
        self.last_increase = 0.0

    def update(self, now: float, count: int) -> FdShortageEvent | None:
        """The event this sample makes, if any."""
        previous, self.count = self.count, count
        if count > previous:
            self.last_increase = now
            if self.started_at is None:
                self.started_at = now
                self.count_at_start = previous
                return FdShortageEvent(True, 0.0, 0)
            return None
        if self.started_at is not None and now - self.last_increase >= self.quiet_seconds:
            event = FdShortageEvent(False, self.last_increase - self.started_at,
                                    count - self.count_at_start)
            self.started_at = None
            return event
        return None


class Server:
    def __init__(self, config: ServeConfig, out: TextIO | None = None,
                 listener: socket.socket | None = None,
                 on_ready: Callable[[str], None] | None = None,
                 pidfile: PidFile | None = None,
                 interrupted: Callable[[], bool] | None = None) -> None:
        self.config = config
        self.out = out or sys.stdout
        self.listener = listener  # inherited (--fd, socket activation); else bound in run()
        self.on_ready = on_ready
        self.pidfile = pidfile  # held by the caller; checked here once --user has dropped root
        # Whether a SIGINT came before run() installed its handlers, and its
        # KeyboardInterrupt was lost (see cli._StartupSigint).
        self.interrupted = interrupted
        self.engine: Engine | None = None
        self.io_backend = "epoll"  # iobackend.choose's answer, once run() has started
        self.metrics = None
        self.drainer = None
        self._signals: list[int] = []
        self._reload = False  # SIGHUP: reopen the logs, reload the TLS certificate
        self._fd_shortage = FdShortage()

    def _on_signal(self, signum: int, frame) -> None:
        if signum in RELOAD_SIGNALS:
            self._reload = True
        else:
            self._signals.append(signum)

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM, then drain and stop. Raises ServeError."""
        cfg = self.config
        check_can_switch_user(cfg.user)
        tls_context = tls.load_context(cfg) if cfg.serves_tls() else None
        raise_fd_limit()
        bound = open_listeners(cfg, self.listener)
        sockets = [sock for _, sock in bound]
        try:
            wake_r, wake_w = socket.socketpair()
        except OSError as e:
            close_all(sockets)
            raise ServeError(f"cannot create the signal wake-up sockets: {e.strerror or e}") from None
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        handled = STOP_SIGNALS + RELOAD_SIGNALS
        previous = {s: signal.signal(s, self._on_signal) for s in handled}
        previous_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        try:
            if self.interrupted is not None and self.interrupted():
                raise KeyboardInterrupt  # before the handlers: the start-up is abandoned, not served
            self.io_backend = iobackend.choose(cfg.io_backend)
            if cfg.metrics_port is not None:
                from fastecho import metrics
                self.metrics = metrics.start(cfg.metrics_host, cfg.metrics_port, self._stats,
                                             [listener.url for listener, _ in bound], self.io_backend)
                log.info("metrics at %s", self.metrics.url)
            if cfg.user is not None:
                drop_privileges(cfg.user, logs.open_files())
                if self.pidfile is not None:
                    self.pidfile.check_removable(cfg.user)
            self.engine = start_engine(cfg, bound, tls_context, self.io_backend)
            if tls_context is not None:
                log.info("TLS certificate: %s (%s)", tls_context.describe(), _core.TLS_LIBRARY)
            where = describe_listeners([listener for listener, _ in bound])
            line = f"fastecho listening on {where} ({cfg.threads} threads, {self.io_backend})"
            print(line, file=self.out, flush=True)
            self._announce(where)
            if self.on_ready is not None:
                self.on_ready(line)
            if cfg.access_log:
                from fastecho.accesslog import AccessLogDrainer
                self.drainer = AccessLogDrainer(self.engine)
                self.drainer.start()
            failure = self._serve_until_signal(wake_r)
            self._stop(sockets, wake_r)
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
            close_all(sockets)
            wake_r.close()
            wake_w.close()

    def _stats(self) -> dict[str, int]:
        if self.engine is None:
            raise ValueError("engine not started")
        return self.engine.stats()

    def _announce(self, where: str) -> None:
        cfg = self.config
        mode = "byte-exact echo" if cfg.suffix is None else f"line mode, suffix {cfg.suffix!r}"
        log.info("listening on %s (%d threads, %s, %s)", where, cfg.threads, self.io_backend, mode)
        systemd.notify(f"READY=1\nSTATUS=listening on {where}\nMAINPID={os.getpid()}")

    def _tick(self, wake: socket.socket) -> None:
        select.select([wake], [], [], TICK_SECONDS)
        try:
            while wake.recv(512):
                pass
        except BlockingIOError:
            pass
        if self._reload:
            self._reload = False
            self._on_reload()

    def _on_reload(self) -> None:
        """SIGHUP: reopen the logs; on a TLS server, load the certificate and key again."""
        logs.reopen()
        if self.engine is None or not self.config.serves_tls():
            return
        try:
            context = tls.load_context(self.config)
        except ConfigError as e:
            log.error("SIGHUP: keeping the TLS certificate in use: %s", e)
            return
        self.engine.set_tls(context)
        log.info("SIGHUP: TLS certificate reloaded: %s", context.describe())

    def _serve_until_signal(self, wake: socket.socket) -> str | None:
        """Returns None after a stop signal, or a message if the engine failed."""
        assert self.engine is not None
        while not self._signals:
            self._tick(wake)
            err = self.engine.acceptor_error
            if err:
                return f"the listener failed: {errno.errorcode.get(err, err)}"
            self._watch_fds()
        return None

    def _watch_fds(self) -> None:
        """Log when accepting stops for want of fds, and when it starts again (once each)."""
        assert self.engine is not None
        stats = self.engine.stats()
        event = self._fd_shortage.update(time.monotonic(), stats["accept_fd_exhausted"])
        if event is None:
            return
        # Both at WARNING, so that a log kept at --log-level warning shows the end too.
        if event.started:
            limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.warning("out of file descriptors: accepting paused (limit %d; %d connections open, "
                        "%d fds kept free for logs and metrics); new clients wait in the listen "
                        "backlog until connections close", limit, stats["connections_active"],
                        fd_reserve_at(limit))
        else:
            log.warning("file descriptors available again: accepting resumed after %.1fs; "
                        "%d accept attempts put off", event.seconds, event.put_off)

    def _stop(self, sockets: list[socket.socket], wake: socket.socket) -> None:
        assert self.engine is not None
        grace = self.config.grace
        systemd.notify("STOPPING=1\nSTATUS=draining connections")
        active = self.engine.stats()["connections_active"]
        log.info("stopping: no new connections; %d open connection(s) get up to %gs to finish",
                 active, grace)
        self.engine.shutdown(grace, LINGER_SECONDS)
        close_all(sockets)  # the acceptor is joined: nobody uses the fds any more
        handled = len(self._signals)
        while not self.engine.wait(TICK_SECONDS):
            if len(self._signals) > handled:
                log.warning("second stop signal: closing every connection now")
                self.engine.shutdown(0, 0)
                handled = len(self._signals)
            if self._reload:
                self._reload = False
                self._on_reload()
        log.info("stopped")
