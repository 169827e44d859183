# Declarations of the C core's public header (csrc/fe.h), and nothing else.
# Every C declaration the binding uses lives in this folder.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "fe.h" nogil:
    ctypedef struct fe_server:
        pass

    enum:
        FE_FDS_PER_SERVER
        FE_FDS_PER_WORKER
        FE_FDS_PER_PIPE
        FE_SPLICE_POOL_PIPES
        FE_MAX_LISTENERS

    enum fe_framing:
        FE_FRAMING_RAW
        FE_FRAMING_LINE

    enum fe_io_backend:
        FE_IO_EPOLL
        FE_IO_URING

    int fe_io_uring_check(char *why, size_t whylen)

    ctypedef struct fe_listener:
        int fd
        bint proxy
        bint tls
        bint udp
        bint ws

    ctypedef struct fe_peer:
        uint8_t family
        uint16_t port
        uint8_t addr[16]

    ctypedef struct fe_cidr:
        uint8_t family
        uint8_t prefix_len
        uint8_t addr[16]

    enum fe_event_kind:
        FE_EVENT_OPEN
        FE_EVENT_CLOSE
        FE_EVENT_UDP

    enum fe_close_reason:
        FE_CLOSE_NONE
        FE_CLOSE_EOF
        FE_CLOSE_RESET
        FE_CLOSE_IDLE
        FE_CLOSE_LINE_TOO_LONG
        FE_CLOSE_SHUTDOWN
        FE_CLOSE_NO_MEMORY
        FE_CLOSE_PROXY_INVALID
        FE_CLOSE_PROXY_TIMEOUT
        FE_CLOSE_NOT_ALLOWED
        FE_CLOSE_PER_IP_LIMIT
        FE_CLOSE_TLS_HANDSHAKE
        FE_CLOSE_TLS_TIMEOUT
        FE_CLOSE_TLS_ERROR
        FE_CLOSE_HTTP
        FE_CLOSE_WS_TIMEOUT
        FE_CLOSE_WS_CLOSE
        FE_CLOSE_WS_PROTOCOL
        FE_CLOSE_REASON_COUNT

    const char *fe_close_reason_name(int reason)

    enum:
        FE_UDP_DROP_COUNT

    const char *fe_udp_drop_name(int reason)

    enum:
        FE_WS_HTTP_COUNT
        FE_WS_CLOSE_APPLICATION
        FE_WS_CLOSE_NONE
        FE_WS_CLOSE_SLOTS

    int fe_ws_http_status(int kind)
    bint fe_ws_available()

    ctypedef struct fe_event:
        uint8_t kind
        uint8_t reason
        fe_peer peer
        fe_peer via
        uint64_t bytes_in
        uint64_t bytes_out
        uint64_t duration_ns
        char subject[160]
        uint64_t datagrams_in
        uint64_t datagrams_out
        uint64_t sources

    ctypedef struct fe_config:
        int threads
        size_t max_pending_output
        size_t read_buffer_size
        size_t thread_stack_size
        size_t queue_capacity
        fe_framing framing
        const char *suffix
        size_t suffix_len
        size_t max_line
        size_t event_ring_size
        uint64_t max_connections
        uint64_t max_connections_per_ip
        int64_t idle_timeout_ms
        const fe_cidr *allow
        size_t allow_count
        size_t max_memory
        size_t fd_reserve
        bint splice
        const fe_cidr *proxy_from
        size_t proxy_from_count
        int64_t proxy_timeout_ms
        int64_t tls_handshake_timeout_ms
        bint udp_allow_low_ports
        uint32_t udp_rate
        size_t udp_max_datagram
        const char *ws_path
        size_t ws_path_len
        const char *const *ws_origins
        const size_t *ws_origin_lens
        size_t ws_origin_count
        uint64_t ws_max_message
        size_t ws_max_header
        int64_t ws_handshake_timeout_ms
        fe_io_backend io_backend

    ctypedef struct fe_stats:
        uint64_t connections_accepted
        uint64_t connections_active
        uint64_t connections_closed
        uint64_t bytes_received
        uint64_t bytes_sent
        uint64_t accept_errors
        uint64_t rejected_max_connections
        uint64_t rejected_per_ip
        uint64_t rejected_not_allowed
        uint64_t rejected_proxy_untrusted
        uint64_t idle_timeouts
        uint64_t lines_too_long
        uint64_t events_dropped
        uint64_t accept_fd_exhausted
        uint64_t memory_held
        uint64_t memory_budget_waits
        uint64_t tls_handshakes
        uint64_t tls_resumed
        uint64_t splice_bytes
        uint64_t splice_pipes
        uint64_t closes[FE_CLOSE_REASON_COUNT]
        size_t listener_count
        uint64_t listener_accepted[FE_MAX_LISTENERS]
        uint64_t listener_closed[FE_MAX_LISTENERS]
        uint64_t udp_in[FE_MAX_LISTENERS]
        uint64_t udp_out[FE_MAX_LISTENERS]
        uint64_t udp_bytes_in[FE_MAX_LISTENERS]
        uint64_t udp_bytes_out[FE_MAX_LISTENERS]
        uint64_t udp_dropped[FE_MAX_LISTENERS][FE_UDP_DROP_COUNT]
        uint64_t ws_http[FE_WS_HTTP_COUNT]
        uint64_t ws_messages
        uint64_t ws_pings
        uint64_t ws_closes[FE_WS_CLOSE_SLOTS]

    void fe_config_init(fe_config *cfg)
    int fe_server_create(const fe_config *cfg, fe_server **out, char *err, size_t errlen)
    int fe_server_start(fe_server *srv, const fe_listener *listeners, size_t count, char *err,
                        size_t errlen)
    void fe_server_shutdown(fe_server *srv, int64_t drain_ms, int64_t linger_ms)
    int fe_server_wait(fe_server *srv, int timeout_ms)
    void fe_server_stats(const fe_server *srv, fe_stats *out)
    size_t fe_server_drain_events(fe_server *srv, fe_event *out, size_t max)
    int fe_server_acceptor_error(const fe_server *srv)
    void fe_server_destroy(fe_server *srv)

    ctypedef struct fe_tls_settings:
        const char *cert_pem
        size_t cert_len
        const char *key_pem
        size_t key_len
        const char *client_ca_pem
        size_t client_ca_len
        int min_version

    ctypedef struct fe_tls:
        pass

    bint fe_tls_available()
    const char *fe_tls_library()
    int fe_tls_create(const fe_tls_settings *settings, fe_tls **out, char *err, size_t errlen)
    void fe_tls_describe(const fe_tls *tls, char *out, size_t outlen)
    void fe_tls_free(fe_tls *tls)
    void fe_server_set_tls(fe_server *srv, fe_tls *tls)
