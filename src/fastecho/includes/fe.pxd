# Declarations of the C core's public header (csrc/fe.h), and nothing else.
# Every C declaration the binding uses lives in this folder.
from libc.stdint cimport int64_t, uint64_t


cdef extern from "fe.h" nogil:
    ctypedef struct fe_server:
        pass

    ctypedef struct fe_config:
        int threads
        size_t max_pending_output
        size_t read_buffer_size
        size_t thread_stack_size
        size_t queue_capacity

    ctypedef struct fe_stats:
        uint64_t connections_accepted
        uint64_t connections_active
        uint64_t connections_closed
        uint64_t bytes_received
        uint64_t bytes_sent
        uint64_t accept_errors

    void fe_config_init(fe_config *cfg)
    int fe_server_create(const fe_config *cfg, fe_server **out, char *err, size_t errlen)
    int fe_server_start(fe_server *srv, int listen_fd, char *err, size_t errlen)
    void fe_server_shutdown(fe_server *srv, int64_t drain_ms, int64_t linger_ms)
    int fe_server_wait(fe_server *srv, int timeout_ms)
    void fe_server_stats(const fe_server *srv, fe_stats *out)
    int fe_server_acceptor_error(const fe_server *srv)
    void fe_server_destroy(fe_server *srv)
