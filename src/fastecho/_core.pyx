# cython: language_level=3, boundscheck=False, wraparound=False
"""The binding: the only module that touches both the C core and Python.

It converts the core's error codes to exceptions in one place (_raise_error)
and releases the GIL around every call that can block. C threads never call
back into Python.
"""
from libc.errno cimport errno, EINVAL
from libc.stdint cimport int64_t

from fastecho.includes.fe cimport (
    fe_config, fe_server, fe_config_init, fe_server_acceptor_error, fe_server_create,
    fe_server_destroy, fe_server_shutdown, fe_server_start, fe_server_stats,
    fe_server_wait, fe_stats,
)

from fastecho.errors import ConfigError

cdef enum:
    ERRLEN = 256


cdef int _raise_error(int errnum, const char *message) except -1:
    text = message.decode("utf-8", "replace")
    if errnum == EINVAL:
        raise ConfigError(text)
    raise OSError(errnum, text)  # OSError picks the subclass from errnum


def _defaults():
    """The C core's default tuning, as a dict (for config and docs)."""
    cdef fe_config cfg
    fe_config_init(&cfg)
    return {
        "max_pending_output": cfg.max_pending_output,
        "read_buffer_size": cfg.read_buffer_size,
        "thread_stack_size": cfg.thread_stack_size,
        "queue_capacity": cfg.queue_capacity,
    }


cdef class Engine:
    """A C echo engine: an acceptor thread plus `threads` epoll workers."""

    def __cinit__(self, int threads, size_t max_pending_output=0,
                  size_t read_buffer_size=0, size_t queue_capacity=0):
        cdef fe_config cfg
        cdef char err[ERRLEN]
        cdef int rc
        fe_config_init(&cfg)
        cfg.threads = threads
        if max_pending_output:
            cfg.max_pending_output = max_pending_output
        if read_buffer_size:
            cfg.read_buffer_size = read_buffer_size
        if queue_capacity:
            cfg.queue_capacity = queue_capacity
        err[0] = 0
        with nogil:
            rc = fe_server_create(&cfg, &self._server, err, ERRLEN)
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

    def start(self, int listen_fd):
        """Serve the listening socket `listen_fd` (which the caller keeps open)."""
        cdef fe_server *server = self._live()
        cdef char err[ERRLEN]
        cdef int rc
        err[0] = 0
        with nogil:
            rc = fe_server_start(server, listen_fd, err, ERRLEN)
        if rc != 0:
            _raise_error(errno, err)
        self._started = True

    def shutdown(self, double drain_seconds, double linger_seconds=1.0):
        """Stop accepting (done when this returns), then drain; see fe.h."""
        cdef fe_server *server = self._live()
        cdef int64_t drain_ms = <int64_t>(max(drain_seconds, 0.0) * 1000)
        cdef int64_t linger_ms = <int64_t>(max(linger_seconds, 0.0) * 1000)
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
        }

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
