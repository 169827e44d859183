# cython: language_level=3, boundscheck=False, wraparound=False
"""Python binding of loadgen.c, the C load generator.

Thin on purpose: it checks the types, releases the GIL around the whole run
and turns a failure into one exception, raised after the C call returns.
"""
import os

from libc.stdint cimport uint64_t
from cpython.mem cimport PyMem_Malloc, PyMem_Free

from fastecho.bench.errors import LoadError

MAX_MESSAGE_SIZE = LG_MAX_MESSAGE_SIZE
MAX_SERVER_PIDS = LG_MAX_SERVER_PIDS
UDP_MAX_DATAGRAM_SIZE = LG_UDP_MAX_DATAGRAM_SIZE
UDP_MAX_SOCKETS = LG_UDP_MAX_SOCKETS
UDP_DEFAULT_TIMEOUT = LG_UDP_DEFAULT_TIMEOUT_MS / 1000
# Whether this build's generator speaks TLS (FASTECHO_WITH_TLS at build time).
TLS_SUPPORTED = bool(lg_tls_supported())
# The TLS library it runs with ("OpenSSL 3.0.19 27 Jan 2026"); None without TLS.
TLS_LIBRARY = (<bytes>lg_tls_version_text()).decode("ascii", "replace") if TLS_SUPPORTED else None
# Whether it speaks WebSocket (it needs OpenSSL for SHA-1, like TLS).
WS_SUPPORTED = bool(lg_ws_supported())

_TLS_VERSIONS = {None: 0, "1.2": 12, "1.3": 13}


def run_load(str host, int port, int conns, Py_ssize_t size, int depth=1,
             double warmup=0.5, double duration=3.0, int server_pid=0,
             uint64_t seed=1, double connect_timeout=5.0,
             uint64_t max_messages=0, *, server_pids=(), bint tls=False,
             tls_version=None, tls_ca_file=None, bint handshakes=False, bint udp=False,
             double udp_timeout=0.0, bint ws=False, ws_path=None):
    """Load an echo server at host:port and measure it; see _loadgen.pyi."""
    cdef lg_config config
    cdef lg_result result
    cdef int status
    cdef int pids[LG_MAX_SERVER_PIDS]
    cdef const char *ca_file = NULL
    cdef const char *path = NULL
    pid_list = ([server_pid] if server_pid != 0 else []) + [int(p) for p in server_pids]
    if len(pid_list) > LG_MAX_SERVER_PIDS:
        raise ValueError(f"{len(pid_list)} server pids given; at most {LG_MAX_SERVER_PIDS}")
    for i, pid in enumerate(pid_list):
        pids[i] = pid
    if size < 0:
        raise ValueError(f"size {size} is negative")
    if tls_version not in _TLS_VERSIONS:
        raise ValueError(f"tls_version {tls_version!r} is not None (1.2 or 1.3), '1.2' or '1.3'")
    host_bytes = host.encode("ascii")
    ca_bytes = os.fsencode(tls_ca_file) if tls_ca_file is not None else None
    if ca_bytes is not None:
        ca_file = ca_bytes
    path_bytes = ws_path.encode("ascii") if ws_path is not None else None
    if path_bytes is not None:
        path = path_bytes
    config.host = host_bytes
    config.port = port
    config.conns = conns
    config.size = <size_t>size
    config.depth = depth
    config.warmup_s = warmup
    config.duration_s = duration
    config.connect_timeout_s = connect_timeout
    config.max_messages = max_messages
    config.server_pids = pids
    config.server_pid_count = len(pid_list)
    config.seed = seed
    config.tls = tls
    config.tls_version = _TLS_VERSIONS[tls_version]
    config.tls_ca_file = ca_file
    config.handshakes = handshakes
    config.udp = udp
    config.udp_timeout_s = udp_timeout
    config.ws = ws
    config.ws_path = path
    with nogil:
        status = lg_run(&config, &result)
    if status == LG_BAD_CONFIG:
        raise ValueError(result.error.decode("utf-8", "replace"))
    if status != LG_OK:
        raise LoadError(result.error.decode("utf-8", "replace"))
    has_server = len(pid_list) > 0
    return {
        "messages": result.messages,
        "handshakes": result.handshakes if handshakes else None,
        "elapsed_s": result.elapsed_s,
        "connect_s": result.connect_s,
        "msgs_per_s": result.messages / result.elapsed_s if result.elapsed_s > 0 else 0.0,
        "p50_ns": result.p50_ns,
        "p99_ns": result.p99_ns,
        "p999_ns": result.p999_ns,
        "max_ns": result.max_ns,
        "conns": conns,
        "starved_conns": result.starved_conns,
        "min_conn_messages": result.min_conn_messages,
        "max_conn_messages": result.max_conn_messages,
        "client_cpu_us": result.own_cpu_us,
        "server_user_us": result.server_utime_us if has_server else None,
        "server_sys_us": result.server_stime_us if has_server else None,
        "server_rss_kib": result.server_rss_kib if has_server else None,
        "tls": result.tls_description.decode("ascii", "replace") if tls else None,
        "sent": result.sent if udp else None,
        "lost": result.lost if udp else None,
        "late": result.late if udp else None,
        "duplicates": result.duplicates if udp else None,
        "reordered": result.reordered if udp else None,
    }


def histogram_quantiles(values, quantiles):
    """Record `values` (non-negative ints) in the C latency histogram and
    return its estimate at each of `quantiles`; exposed for tests."""
    cdef lg_histogram *hist = <lg_histogram *>PyMem_Malloc(sizeof(lg_histogram))
    if hist == NULL:
        raise MemoryError()
    try:
        lg_histogram_reset(hist)
        for value in values:
            if value < 0:
                raise ValueError("histogram values must be non-negative")
            lg_histogram_record(hist, <uint64_t>value)
        return [lg_histogram_quantile(hist, q) for q in quantiles]
    finally:
        PyMem_Free(hist)
