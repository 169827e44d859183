# cython: language_level=3, boundscheck=False, wraparound=False
"""The binding: the only module that touches both the C core and Python.

It converts the core's error codes to exceptions in one place (_raise_error)
and releases the GIL around every call that can block. C threads never call
back into Python.
"""
from libc.errno cimport errno, EINVAL
from libc.math cimport llround
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

import ipaddress

from fastecho.includes.fe cimport (
    FE_CLOSE_REASON_COUNT, FE_CLOSE_TLS_HANDSHAKE, FE_EVENT_OPEN, FE_EVENT_UDP, FE_UDP_DROP_COUNT, fe_udp_drop_name, FE_FDS_PER_SERVER, FE_FDS_PER_WORKER, FE_FDS_PER_PIPE, FE_SPLICE_POOL_PIPES, FE_FRAMING_LINE,
    FE_IO_EPOLL, FE_IO_URING, fe_io_uring_check,
    FE_MAX_LISTENERS, fe_cidr, fe_close_reason_name, fe_listener, fe_config, fe_config_init, fe_event, fe_peer, fe_server,
    fe_server_acceptor_error, fe_server_create, fe_server_destroy,
    fe_server_drain_events, fe_server_shutdown, fe_server_start, fe_server_stats,
    fe_server_wait, fe_stats, fe_server_set_tls, fe_tls, fe_tls_available, fe_tls_create,
    fe_tls_describe, fe_tls_free, fe_tls_library, fe_tls_settings,
    FE_WS_HTTP_COUNT, FE_WS_CLOSE_APPLICATION, FE_WS_CLOSE_SLOTS, fe_ws_available,
    fe_ws_http_status,
)

from fastecho.errors import ConfigError

cdef enum:
    ERRLEN = 256
    EVENT_BATCH = 256

# Index = enum fe_close_reason; the names are the core's (fe_close_reason_name).
CLOSE_REASONS = tuple(fe_close_reason_name(i).decode() for i in range(FE_CLOSE_REASON_COUNT))
# Why a datagram was not echoed: the core's table (fe_udp_drop_name).
UDP_DROP_REASONS = tuple(fe_udp_drop_name(i).decode() for i in range(FE_UDP_DROP_COUNT))
# The HTTP statuses a ws listener answers with, by the core's slot (fe_ws_http_status).
WS_HTTP_STATUSES = tuple(fe_ws_http_status(i) for i in range(FE_WS_HTTP_COUNT))
# The close frames' codes, by the core's slot: 1000-1015, then the
# application range (3000-4999) and a close without a code.
WS_CLOSE_CODES = tuple([str(1000 + i) for i in range(FE_WS_CLOSE_APPLICATION)] + ["3000-4999", "none"])


cdef int _raise_error(int errnum, const char *message) except -1:
    text = message.decode("utf-8", "replace")
    if errnum == EINVAL:
        raise ConfigError(text)
    raise OSError(errnum, text)  # OSError picks the subclass from errnum


cdef inline int64_t _milliseconds(double seconds):
    # Nearest, not truncated: config hands over whole milliseconds (k / 1000),
    # and 1.001 * 1000 is 1000.9999999999999 in binary floating point.
    # Far past the core's limits it saturates (the core then refuses it).
    if not seconds < 9e15:
        return 9000000000000000000
    return <int64_t>llround(seconds * 1000)


# PROXY headers are trusted from loopback unless the caller says otherwise.
LOOPBACK = ("127.0.0.0/8", "::1/128")


cdef fe_cidr *_ranges(networks, size_t *count) except? NULL:
    """A malloc'd fe_cidr array of networks (CIDR strings or ip_network objects); NULL if none."""
    cdef fe_cidr *ranges
    parsed = [ipaddress.ip_network(n) for n in (networks or ())]
    count[0] = len(parsed)
    if not parsed:
        return NULL
    ranges = <fe_cidr *>malloc(len(parsed) * sizeof(fe_cidr))
    if ranges == NULL:
        raise MemoryError()
    for i, net in enumerate(parsed):
        packed = net.network_address.packed
        ranges[i].family = 4 if net.version == 4 else 6
        ranges[i].prefix_len = net.prefixlen
        memcpy(ranges[i].addr, <const char *>packed, len(packed))
    return ranges


cdef object _peer_host(const fe_peer *peer):
    if peer.family == 4:
        return str(ipaddress.IPv4Address(bytes(peer.addr[:4])))
    if peer.family == 6:
        return str(ipaddress.IPv6Address(bytes(peer.addr[:16])))
    return "?"


cdef tuple _event_tuple(const fe_event *ev):
    if ev.kind == FE_EVENT_UDP:
        # (kind, source host or None for "other sources", sources, bytes_in, bytes_out,
        #  window_s, datagrams_in, datagrams_out)
        return ("udp", _peer_host(&ev.peer) if ev.peer.family else None, ev.sources, ev.bytes_in,
                ev.bytes_out, ev.duration_ns / 1e9, ev.datagrams_in, ev.datagrams_out)
    return (
        "open" if ev.kind == FE_EVENT_OPEN else "close",
        _peer_host(&ev.peer),
        ev.peer.port,
        ev.bytes_in,
        ev.bytes_out,
        ev.duration_ns / 1e9,
        fe_close_reason_name(ev.reason).decode(),
        (_peer_host(&ev.via), ev.via.port) if ev.via.family else None,
        # The core escapes it to printable ASCII; "replace" only guards a cut.
        ev.subject.decode("ascii", "replace") if ev.kind == FE_EVENT_OPEN and ev.subject[0] else None,
    )


def _defaults():
    """The C core's default tuning, as a dict (for config and docs)."""
    cdef fe_config cfg
    fe_config_init(&cfg)
    return {
        "max_pending_output": cfg.max_pending_output,
        "read_buffer_size": cfg.read_buffer_size,
        "thread_stack_size": cfg.thread_stack_size,
        "queue_capacity": cfg.queue_capacity,
        "max_line": cfg.max_line,
        "proxy_timeout": cfg.proxy_timeout_ms / 1000,  # seconds
        "tls_handshake_timeout": cfg.tls_handshake_timeout_ms / 1000,
        "udp_max_datagram": cfg.udp_max_datagram,
        "ws_max_message": cfg.ws_max_message,
        "ws_max_header": cfg.ws_max_header,
        "ws_handshake_timeout": cfg.ws_handshake_timeout_ms / 1000,
        "fds_per_server": FE_FDS_PER_SERVER,
        "fds_per_worker": FE_FDS_PER_WORKER,
        "splice": cfg.splice,
        "fds_per_pipe": FE_FDS_PER_PIPE,
        "splice_pool_pipes": FE_SPLICE_POOL_PIPES,
    }


# The I/O backends a worker can run (fe_config.io_backend).
IO_BACKENDS = ("epoll", "io_uring")


def io_uring_unavailable():
    """None when this build and kernel can run the io_uring backend, else why not (one line)."""
    cdef char why[ERRLEN]
    cdef int rc
    why[0] = 0
    with nogil:
        rc = fe_io_uring_check(why, ERRLEN)
    return None if rc == 0 else why.decode("utf-8", "replace")


TLS_AVAILABLE = bool(fe_tls_available())
# Whether ws listeners are served (they need libcrypto's SHA-1).
WS_AVAILABLE = bool(fe_ws_available())
# The OpenSSL this module runs on ("" in a build without TLS).
TLS_LIBRARY = fe_tls_library().decode()


cdef class TlsContext:
    """A certificate, its key and the TLS policy, loaded and checked (OpenSSL).

    PEM texts are bytes (the caller reads the files). ConfigError with one
    line if they are unusable; OSError(ENOTSUP) in a build without TLS.
    """
    cdef fe_tls *_tls

    def __cinit__(self, bytes cert_pem not None, bytes key_pem not None, bytes client_ca_pem=None,
                  int min_version=12):
        cdef fe_tls_settings settings
        cdef char err[ERRLEN]
        cdef int rc
        settings.cert_pem = cert_pem
        settings.cert_len = len(cert_pem)
        settings.key_pem = key_pem
        settings.key_len = len(key_pem)
        settings.client_ca_pem = NULL
        settings.client_ca_len = 0
        if client_ca_pem is not None:
            settings.client_ca_pem = client_ca_pem
            settings.client_ca_len = len(client_ca_pem)
        settings.min_version = min_version
        err[0] = 0
        rc = fe_tls_create(&settings, &self._tls, err, ERRLEN)
        if rc != 0:
            self._tls = NULL
            _raise_error(errno, err)

    def __dealloc__(self):
        fe_tls_free(self._tls)

    def describe(self):
        """The certificate's subject and expiry, in one line."""
        cdef char out[ERRLEN]
        fe_tls_describe(self._tls, out, ERRLEN)
        return out.decode("ascii", "replace")


cdef class Engine:
    """A C echo engine: an acceptor thread plus `threads` workers (epoll or io_uring)."""

    def __cinit__(self, int threads, size_t max_pending_output=0,
                  size_t read_buffer_size=0, size_t queue_capacity=0, *,
                  bytes suffix=None, size_t max_line=0, size_t event_ring_size=0,
                  unsigned long long max_connections=0,
                  unsigned long long max_connections_per_ip=0,
                  double idle_timeout=0.0, allow=None, size_t max_memory=0,
                  size_t fd_reserve=0, proxy_from=LOOPBACK, double proxy_timeout=0.0,
                  double tls_handshake_timeout=0.0, bint udp_allow_low_ports=False,
                  unsigned int udp_rate=0, size_t udp_max_datagram=0,
                  bytes ws_path=None, ws_allow_origins=(), unsigned long long ws_max_message=0,
                  size_t ws_max_header=0, double ws_handshake_timeout=0.0, str io_backend="epoll",
                  splice=None):
        cdef fe_config cfg
        cdef char err[ERRLEN]
        cdef int rc
        cdef fe_cidr *allowed = NULL
        cdef fe_cidr *trusted = NULL
        fe_config_init(&cfg)
        cfg.threads = threads
        if max_pending_output:
            cfg.max_pending_output = max_pending_output
        if read_buffer_size:
            cfg.read_buffer_size = read_buffer_size
        if queue_capacity:
            cfg.queue_capacity = queue_capacity
        if suffix is not None:  # line mode
            cfg.framing = FE_FRAMING_LINE
            cfg.suffix = suffix
            cfg.suffix_len = len(suffix)
        if max_line:
            cfg.max_line = max_line
        if idle_timeout < 0:
            raise ConfigError("the idle timeout must not be negative")
        cfg.event_ring_size = event_ring_size
        cfg.max_connections = max_connections
        cfg.max_connections_per_ip = max_connections_per_ip
        cfg.idle_timeout_ms = _milliseconds(idle_timeout)
        if idle_timeout > 0 and cfg.idle_timeout_ms == 0:
            cfg.idle_timeout_ms = 1  # shorter than the core's 1 ms tick, but never 0 ("off")
        cfg.max_memory = max_memory
        cfg.fd_reserve = fd_reserve
        if splice is not None:  # None: the core's default
            cfg.splice = bool(splice)
        if proxy_timeout:  # 0: the core's default
            cfg.proxy_timeout_ms = max(_milliseconds(proxy_timeout), 1)
        if tls_handshake_timeout:
            cfg.tls_handshake_timeout_ms = max(_milliseconds(tls_handshake_timeout), 1)
        cfg.udp_allow_low_ports = udp_allow_low_ports
        cfg.udp_rate = udp_rate
        if udp_max_datagram:
            cfg.udp_max_datagram = udp_max_datagram
        if ws_path is not None:
            cfg.ws_path = ws_path
            cfg.ws_path_len = len(ws_path)
        origins = [bytes(o) for o in ws_allow_origins]
        cdef const char **origin_ptrs = NULL
        cdef size_t *origin_lens = NULL
        if ws_max_message:
            cfg.ws_max_message = ws_max_message
        if ws_max_header:
            cfg.ws_max_header = ws_max_header
        if ws_handshake_timeout:
            cfg.ws_handshake_timeout_ms = max(_milliseconds(ws_handshake_timeout), 1)
        if io_backend not in IO_BACKENDS:
            raise ConfigError(f"unknown io backend {io_backend!r} (one of: {', '.join(IO_BACKENDS)})")
        cfg.io_backend = FE_IO_URING if io_backend == "io_uring" else FE_IO_EPOLL
        err[0] = 0
        try:
            if origins:
                origin_ptrs = <const char **>malloc(len(origins) * sizeof(char *))
                origin_lens = <size_t *>malloc(len(origins) * sizeof(size_t))
                if origin_ptrs == NULL or origin_lens == NULL:
                    raise MemoryError()
                for i, origin in enumerate(origins):
                    origin_ptrs[i] = origin
                    origin_lens[i] = len(origin)
                cfg.ws_origins = origin_ptrs
                cfg.ws_origin_lens = origin_lens
                cfg.ws_origin_count = len(origins)
            allowed = _ranges(allow, &cfg.allow_count)
            cfg.allow = allowed
            trusted = _ranges(proxy_from, &cfg.proxy_from_count)
            cfg.proxy_from = trusted
            with nogil:
                rc = fe_server_create(&cfg, &self._server, err, ERRLEN)
        finally:
            free(allowed)  # the core keeps its own copies
            free(trusted)
            free(origin_ptrs)
            free(origin_lens)
        if rc != 0:
            self._server = NULL
            _raise_error(errno, err)

    def __dealloc__(self):
        if self._server != NULL:
            with nogil:
                fe_server_destroy(self._server)
            self._server = NULL

    cdef fe_server *_live(self) except NULL:
        if self._server == NULL:
            raise ValueError("engine is closed")
        return self._server

    def set_tls(self, TlsContext context not None):
        """Use context for every TLS handshake from now on (before start, or to rotate)."""
        fe_server_set_tls(self._live(), context._tls)

    def start(self, *listen_fds, proxy=(), tls=(), udp=(), ws=()):
        """Serve the listening sockets listen_fds (which the caller keeps open).

        proxy, tls, udp, ws: for each fd in turn, whether its connections
        start with a PROXY protocol header, whether they speak TLS (then
        set_tls must have been called), whether it is a UDP socket (bound,
        with SO_REUSEPORT set), and whether they speak WebSocket (after TLS
        and the header); missing entries: no.
        """
        cdef fe_server *server = self._live()
        cdef char err[ERRLEN]
        cdef int rc
        cdef fe_listener listeners[FE_MAX_LISTENERS]
        cdef size_t count = len(listen_fds)
        if not 1 <= count <= FE_MAX_LISTENERS:
            raise ConfigError(f"between 1 and {FE_MAX_LISTENERS} listeners are served, not {count}")
        proxy_flags, tls_flags, udp_flags, ws_flags = list(proxy), list(tls), list(udp), list(ws)
        for i, fd in enumerate(listen_fds):
            listeners[i].fd = fd
            listeners[i].proxy = i < len(proxy_flags) and bool(proxy_flags[i])
            listeners[i].tls = i < len(tls_flags) and bool(tls_flags[i])
            listeners[i].udp = i < len(udp_flags) and bool(udp_flags[i])
            listeners[i].ws = i < len(ws_flags) and bool(ws_flags[i])
        err[0] = 0
        with nogil:
            rc = fe_server_start(server, listeners, count, err, ERRLEN)
        if rc != 0:
            _raise_error(errno, err)
        self._started = True

    def shutdown(self, double drain_seconds, double linger_seconds=1.0):
        """Stop accepting (done when this returns), then drain; see fe.h."""
        cdef fe_server *server = self._live()
        cdef int64_t drain_ms = _milliseconds(max(drain_seconds, 0.0))
        cdef int64_t linger_ms = _milliseconds(max(linger_seconds, 0.0))
        with nogil:
            fe_server_shutdown(server, drain_ms, linger_ms)

    def wait(self, double timeout):
        """Wait up to `timeout` seconds for every thread to stop; True if they have."""
        cdef fe_server *server = self._live()
        cdef int timeout_ms = <int>(max(timeout, 0.0) * 1000)
        cdef int done
        with nogil:
            done = fe_server_wait(server, timeout_ms)
        return bool(done)

    def stats(self):
        """A lock-free snapshot of the counters, as a dict of ints."""
        cdef fe_stats s
        fe_server_stats(self._live(), &s)
        return {
            "connections_accepted": s.connections_accepted,
            "connections_active": s.connections_active,
            "connections_closed": s.connections_closed,
            "bytes_received": s.bytes_received,
            "bytes_sent": s.bytes_sent,
            "accept_errors": s.accept_errors,
            "rejected_max_connections": s.rejected_max_connections,
            "rejected_per_ip": s.rejected_per_ip,
            "rejected_not_allowed": s.rejected_not_allowed,
            "rejected_proxy_untrusted": s.rejected_proxy_untrusted,
            "idle_timeouts": s.idle_timeouts,
            "lines_too_long": s.lines_too_long,
            "events_dropped": s.events_dropped,
            "accept_fd_exhausted": s.accept_fd_exhausted,
            "memory_held": s.memory_held,
            "memory_budget_waits": s.memory_budget_waits,
            "tls_handshakes": s.tls_handshakes,
            "tls_resumed": s.tls_resumed,
            "splice_bytes": s.splice_bytes,
            "splice_pipes": s.splice_pipes,
            "tls_handshake_failures": s.closes[<int>FE_CLOSE_TLS_HANDSHAKE],
            "closes": {CLOSE_REASONS[i]: s.closes[i] for i in range(1, FE_CLOSE_REASON_COUNT)},
            # Per listener, in start()'s order: (accepted, closed).
            "listeners": [(s.listener_accepted[i], s.listener_closed[i])
                          for i in range(s.listener_count)],
            # Per listener, in start()'s order (zeros for stream listeners).
            "udp": [{"in": s.udp_in[i], "out": s.udp_out[i], "bytes_in": s.udp_bytes_in[i],
                     "bytes_out": s.udp_bytes_out[i],
                     "dropped": {UDP_DROP_REASONS[r]: s.udp_dropped[i][r] for r in range(FE_UDP_DROP_COUNT)}}
                    for i in range(s.listener_count)],
            # WebSocket: HTTP answers by status, messages echoed, pings
            # answered, close frames sent by code.
            "ws": {"http": {WS_HTTP_STATUSES[k]: s.ws_http[k] for k in range(FE_WS_HTTP_COUNT)},
                   "messages": s.ws_messages, "pings": s.ws_pings,
                   "closes": {WS_CLOSE_CODES[k]: s.ws_closes[k] for k in range(FE_WS_CLOSE_SLOTS)}},
        }

    def drain_events(self, int max_events=4096):
        """Take up to max_events pending access events without waiting.

        Each is (kind, peer_host, peer_port, bytes_in, bytes_out, duration_s,
        reason, via, subject): kind is "open" or "close", reason is "" for
        open events, via is the proxy's (host, port) or None, and subject is
        the TLS client certificate's subject (open events) or None. A UDP
        source's totals over about a minute are ("udp", source_host, 1,
        bytes_in, bytes_out, window_s, datagrams_in, datagrams_out), with
        source_host None and the count of sources for those that did not fit
        the worker's table.
        """
        cdef fe_server *server = self._live()
        cdef fe_event batch[EVENT_BATCH]
        cdef size_t n, i, want
        events = []
        while len(events) < max_events:
            want = min(<size_t>EVENT_BATCH, <size_t>(max_events - len(events)))
            with nogil:
                n = fe_server_drain_events(server, batch, want)
            for i in range(n):
                events.append(_event_tuple(&batch[i]))
            if n < EVENT_BATCH:
                break
        return events

    @property
    def acceptor_error(self):
        """errno of the error that stopped the acceptor by itself, else 0."""
        return fe_server_acceptor_error(self._live())

    def close(self):
        """Stop at once if still running, join every thread and free everything."""
        cdef fe_server *server = self._server
        if server != NULL:
            self._server = NULL
            with nogil:
                fe_server_destroy(server)
