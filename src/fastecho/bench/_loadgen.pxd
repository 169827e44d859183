# Declarations of loadgen.h, the C load generator. The only place that
# spells out its C types; _loadgen.pyx uses them.
from libc.stdint cimport int64_t, uint64_t


cdef extern from "loadgen.h" nogil:
    enum:
        LG_MAX_MESSAGE_SIZE
        LG_ERROR_SIZE
        LG_TLS_DESCRIPTION_SIZE
        LG_MAX_SERVER_PIDS
        LG_UDP_MAX_DATAGRAM_SIZE
        LG_UDP_MAX_SOCKETS
        LG_UDP_DEFAULT_TIMEOUT_MS

    enum lg_status:
        LG_OK
        LG_FAILED
        LG_BAD_CONFIG

    ctypedef struct lg_histogram:
        uint64_t total
        uint64_t min
        uint64_t max

    ctypedef struct lg_config:
        const char *host
        int port
        int conns
        size_t size
        int depth
        double warmup_s
        double duration_s
        double connect_timeout_s
        uint64_t max_messages
        const int *server_pids
        int server_pid_count
        uint64_t seed
        int tls
        int tls_version
        const char *tls_ca_file
        int handshakes
        int udp
        double udp_timeout_s
        int ws
        const char *ws_path

    ctypedef struct lg_result:
        uint64_t messages
        uint64_t handshakes
        double elapsed_s
        double connect_s
        uint64_t p50_ns
        uint64_t p99_ns
        uint64_t p999_ns
        uint64_t max_ns
        int starved_conns
        uint64_t min_conn_messages
        uint64_t max_conn_messages
        int64_t own_cpu_us
        int64_t server_utime_us
        int64_t server_stime_us
        int64_t server_rss_kib
        uint64_t sent
        uint64_t lost
        uint64_t late
        uint64_t duplicates
        uint64_t reordered
        char tls_description[LG_TLS_DESCRIPTION_SIZE]
        char error[LG_ERROR_SIZE]

    int lg_run(const lg_config *config, lg_result *result)
    int lg_tls_supported()
    int lg_ws_supported()
    const char *lg_tls_version_text()
    void lg_histogram_reset(lg_histogram *hist)
    void lg_histogram_record(lg_histogram *hist, uint64_t value)
    uint64_t lg_histogram_quantile(const lg_histogram *hist, double q)
