/*
 * fe.h - the public API of the fastecho C core.
 *
 * The core is pure POSIX C11 (Linux: epoll or io_uring, eventfd, accept4)
 * and knows nothing about Python. One fe_server owns an acceptor thread and
 * a pool of worker threads; each worker runs its own event loop (epoll, or
 * an io_uring ring: fe_config.io_backend) and keeps every connection it is
 * handed for that connection's whole life.
 *
 * Lifecycle: fe_config_init -> fe_server_create -> fe_server_start ->
 * (fe_server_stats at any time) -> fe_server_shutdown -> fe_server_wait
 * until it returns 1 -> fe_server_destroy.
 *
 * Functions that can fail return 0 on success and -1 on failure, with errno
 * set and a one-line message in the caller's error buffer.
 */
#ifndef FE_H
#define FE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fe_server fe_server;

/* File descriptors the core opens: FE_FDS_PER_SERVER for the server plus
 * FE_FDS_PER_WORKER for each worker, all in fe_server_create, and at
 * fe_server_start one socket per worker for each UDP listener. Every
 * connection then costs one more, and FE_FDS_PER_PIPE more while it echoes
 * through a pipe (fe_config.splice); each worker also keeps up to
 * FE_SPLICE_POOL_PIPES empty pipes for its next bulk connection (a new one
 * costs three system calls; a few cover connections that take turns, more
 * would only hold fds). Pipes are made only while they leave fd_reserve
 * free. Callers check RLIMIT_NOFILE with these. */
enum { FE_FDS_PER_SERVER = 1, FE_FDS_PER_WORKER = 2, /* an eventfd, and epoll or an io_uring ring */
       FE_FDS_PER_PIPE = 2, FE_SPLICE_POOL_PIPES = 8 };

/* A client address. family is 4 or 6 (0: unknown); IPv4-mapped IPv6
 * addresses are reported as IPv4. addr holds 4 or 16 bytes, network order. */
typedef struct fe_peer {
    uint8_t family;
    uint16_t port;
    uint8_t addr[16];
} fe_peer;

/* An address range for the allow list: the first prefix_len bits of addr. */
typedef struct fe_cidr {
    uint8_t family; /* 4 or 6 */
    uint8_t prefix_len;
    uint8_t addr[16];
} fe_cidr;

enum fe_event_kind {
    FE_EVENT_OPEN = 1,
    FE_EVENT_CLOSE = 2,
    FE_EVENT_UDP = 3, /* a UDP source's totals over a window (about a minute) */
};

/* Why a connection closed: one table, named by fe_close_reason_name, that
 * the counters (fe_stats.closes), the binding, the metrics and the access
 * log all read. Append new reasons before FE_CLOSE_REASON_COUNT. */
enum fe_close_reason {
    FE_CLOSE_NONE = 0,      /* (open events) */
    FE_CLOSE_EOF,           /* the client closed; everything was echoed */
    FE_CLOSE_RESET,         /* ECONNRESET, EPIPE, or a socket error */
    FE_CLOSE_IDLE,          /* silent for idle_timeout_ms */
    FE_CLOSE_LINE_TOO_LONG, /* line mode: a line exceeded max_line */
    FE_CLOSE_SHUTDOWN,      /* the server stopped */
    FE_CLOSE_NO_MEMORY,     /* a buffer could not grow */
    FE_CLOSE_PROXY_INVALID, /* +proxy: a malformed, oversized or unfinished PROXY header */
    FE_CLOSE_PROXY_TIMEOUT, /* +proxy: no whole PROXY header within proxy_timeout_ms */
    FE_CLOSE_NOT_ALLOWED,   /* +proxy: the header's client is not in the allow list */
    FE_CLOSE_PER_IP_LIMIT,  /* +proxy: the header's client has max_connections_per_ip open */
    FE_CLOSE_TLS_HANDSHAKE, /* tls: the handshake failed (not TLS, no acceptable client
                               certificate, no common version or cipher, ...) */
    FE_CLOSE_TLS_TIMEOUT,   /* tls: no finished handshake within tls_handshake_timeout_ms */
    FE_CLOSE_TLS_ERROR,     /* tls: a protocol error after the handshake (a bad record) */
    FE_CLOSE_HTTP,          /* ws: answered a request that was no upgrade (the page, or an
                               HTTP error: fe_stats.ws_http says which) */
    FE_CLOSE_WS_TIMEOUT,    /* ws: no whole request head within ws_handshake_timeout_ms */
    FE_CLOSE_WS_CLOSE,      /* ws: the client's close frame was echoed (the close handshake) */
    FE_CLOSE_WS_PROTOCOL,   /* ws: the client broke RFC 6455 (close 1002), sent invalid
                               UTF-8 (1007) or too large a message (1009) */
    FE_CLOSE_REASON_COUNT
};

/* The reason's short name ("eof", "reset", ...; "" for FE_CLOSE_NONE), or
 * "unknown" for a value outside the table. Never NULL. */
const char *fe_close_reason_name(int reason);

/* How a stream's bytes come back: unchanged (raw), or line by line. */
enum fe_framing {
    FE_FRAMING_RAW = 0,  /* byte-exact echo */
    FE_FRAMING_LINE = 1, /* line mode: see fe_config.suffix */
};

/* How workers move bytes (fe_config.io_backend). */
enum fe_io_backend {
    FE_IO_EPOLL = 0, /* level-triggered readiness: read, then send (fe_loop_epoll.c) */
    FE_IO_URING = 1, /* completions: multishot receives into provided buffers,
                        one send in flight per connection (fe_loop_uring.c) */
};

/* Whether this build and this kernel can run the io_uring backend: 0, or
 * -1 with one line in why saying what is missing (built without liburing;
 * io_uring_setup refused: EPERM from a seccomp profile or
 * kernel.io_uring_disabled, ENOSYS; or a kernel without the features the
 * backend needs). Makes and closes a ring; callable from any thread. */
int fe_io_uring_check(char *why, size_t whylen);

/* A listening socket handed to fe_server_start. */
typedef struct fe_listener {
    int fd;     /* bound, listening SOCK_STREAM socket (or, with udp, a bound
                   SOCK_DGRAM socket with SO_REUSEPORT set); the caller owns it */
    bool proxy; /* each connection starts with a PROXY protocol header (v1 or v2) */
    bool tls;   /* connections speak TLS (after the PROXY header, if any):
                   needs fe_server_set_tls before fe_server_start */
    bool udp;   /* datagrams, echoed to their sender: every worker reads its
                   own socket on fd's address (the core opens them, with
                   SO_REUSEPORT, and the kernel spreads senders across them) */
    bool ws;    /* WebSocket (RFC 6455, after TLS and the PROXY header, if
                   any): an HTTP/1.1 upgrade, then each message echoed whole;
                   a plain GET of / gets the built-in page. Needs the core
                   built with OpenSSL (fe_ws_available) and raw framing */
} fe_listener;

/* Answers to the HTTP request that opens a ws listener's connection: one
 * table, counted in fe_stats.ws_http and named by fe_ws_http_status. */
enum fe_ws_http_kind {
    FE_WS_HTTP_UPGRADE,     /* 101: a WebSocket */
    FE_WS_HTTP_PAGE,        /* 200: the built-in page (GET or HEAD) */
    FE_WS_HTTP_BAD_REQUEST, /* 400: malformed, too large, or a botched upgrade */
    FE_WS_HTTP_FORBIDDEN,   /* 403: its Origin is not allowed */
    FE_WS_HTTP_NOT_FOUND,   /* 404: another path */
    FE_WS_HTTP_METHOD,      /* 405: another method */
    FE_WS_HTTP_VERSION,     /* 426: another WebSocket version */
    FE_WS_HTTP_COUNT
};

/* The answer's HTTP status code (101, 200, 400, ...); 0 outside the table. */
int fe_ws_http_status(int kind);

/* The close frames a ws connection sent, by status code: codes 1000-1015
 * at index code - 1000, the registered and private range 3000-4999 at
 * FE_WS_CLOSE_APPLICATION, a close frame without a code at FE_WS_CLOSE_NONE. */
enum { FE_WS_CLOSE_APPLICATION = 16, FE_WS_CLOSE_NONE = 17, FE_WS_CLOSE_SLOTS = 18 };

/* Whether this build serves ws listeners (it needs libcrypto's SHA-1). */
bool fe_ws_available(void);

/* Why a datagram was not echoed: one table, named by fe_udp_drop_name. */
enum fe_udp_drop {
    FE_UDP_DROP_LOW_PORT,    /* from a source port below 1024 (echo/chargen loops, reflection) */
    FE_UDP_DROP_NOT_ALLOWED, /* its source is not in the allow list */
    FE_UDP_DROP_RATE,        /* its source is past udp_rate datagrams per second */
    FE_UDP_DROP_SEND_FULL,   /* the socket's send buffer was full: never queued */
    FE_UDP_DROP_TRUNCATED,   /* larger than udp_max_datagram: never echoed short */
    FE_UDP_DROP_SEND_ERROR,  /* the kernel refused the reply (unreachable, ...) */
    FE_UDP_DROP_COUNT
};

/* The drop reason's short name ("low-port", ...); "unknown" outside the table. */
const char *fe_udp_drop_name(int reason);

/* The most listeners one server serves. */
enum { FE_MAX_LISTENERS = 64 };

/* Room for a client certificate's subject in an access event, NUL included;
 * a longer one is cut and ends in "...". */
enum { FE_SUBJECT_MAX = 160 };

/* One access-log record, produced by a worker and drained by the caller. */
typedef struct fe_event {
    uint8_t kind;   /* enum fe_event_kind */
    uint8_t reason; /* enum fe_close_reason */
    fe_peer peer;   /* the client: from its PROXY header, when it came through a proxy */
    fe_peer via;    /* the proxy that connected (family 0 when none did) */
    uint64_t bytes_in;    /* close: bytes received on this connection */
    uint64_t bytes_out;   /* close: bytes sent on this connection */
    uint64_t duration_ns; /* close: time since the connection was accepted */
    /* open, on a tls listener: the client certificate's subject (RFC 2253
     * form, e.g. "CN=client,O=Example"); "" when the client sent none. */
    char subject[FE_SUBJECT_MAX];
    /* udp: peer is the source address (port 0; family 0 for the sources
     * that did not fit the table, counted in sources), bytes_in/out its
     * payload bytes, duration_ns the window, and these its datagrams. */
    uint64_t datagrams_in;
    uint64_t datagrams_out;
    uint64_t sources;
} fe_event;

typedef struct fe_config {
    /* Worker threads (>= 1). Connections are not capped by this number. */
    int threads;
    /* Per-connection cap on echoed-but-unsent bytes. Above it the connection
     * is not read until its peer drains it (backpressure), so a client that
     * sends without reading holds at most about this much server memory (the
     * buffer grows by doubling from 4 KiB, so a cap that is not a power of
     * two may be rounded up; in line mode a pending line adds max_line). */
    size_t max_pending_output;
    /* Size of each worker's read buffer: the most bytes taken from one socket
     * in one read. */
    size_t read_buffer_size;
    /* Stack size of each worker thread (set explicitly: musl's default is
     * only 128 KiB, glibc's is 8 MiB of address space per thread). */
    size_t thread_stack_size;
    /* Capacity of each worker's hand-off queue; the acceptor waits (leaving
     * clients in the kernel's backlog) when a worker falls this far behind. */
    size_t queue_capacity;

    /* FE_FRAMING_LINE: each line comes back with suffix inserted before its
     * terminator (see fe_line.h); at end of stream an unterminated last line
     * comes back with suffix appended. A line longer than max_line gets an
     * error line and FIN; the client then has 2 s to close before the server
     * does. The suffix (suffix_len bytes; NULL when suffix_len is 0) is
     * copied; max_pending_output must be at least 2 * (1 + suffix_len).
     * suffix and max_line are ignored for raw framing. */
    enum fe_framing framing;
    const char *suffix;
    size_t suffix_len;
    size_t max_line;

    /* Access events: when > 0, each worker keeps a ring of this many
     * open/close events for fe_server_drain_events. A full ring drops the
     * event and counts it; a worker never waits for the reader. */
    size_t event_ring_size;

    /* Limits; 0 means none. A connection past a limit is closed at once,
     * counted, and never reaches a worker. */
    uint64_t max_connections;
    uint64_t max_connections_per_ip;
    /* Close connections whose client has neither sent anything nor taken any
     * of its pending echo for this long (at most 1e9 ms). */
    int64_t idle_timeout_ms;
    /* When allow_count > 0, only clients inside one of these ranges are
     * served. The array is copied. */
    const fe_cidr *allow;
    size_t allow_count;

    /* A budget, in bytes, for all buffered output and pending partial lines
     * of every connection together (buffer capacity, which is what memory
     * they hold); 0 means none. A connection whose next read could take the
     * total past it is not read, exactly as at its own max_pending_output,
     * until memory is freed, so nothing received is ever dropped. While the
     * budget is spent, a connection that holds nothing still reads as much
     * as its socket can send at once, so clients that read their echo keep
     * being served while others hold the budget. Workers check without
     * locking, so the total can pass the budget by one read's growth per
     * worker; in line mode also by the pending partial line of each
     * connection that reads at its socket's pace (at most max_line each),
     * and by the rare remainder of a send the kernel cut short after it
     * said there was room. At least 1 MiB when set, and in line mode at
     * least 4 * max_line. */
    size_t max_memory;
    /* File descriptors kept free for the caller (a metrics endpoint, log
     * files reopened): the acceptor stops accepting, as it does at EMFILE
     * (clients wait in the backlog, and it is counted as fd exhaustion),
     * while the fds open when the server started plus its connections plus
     * this reserve reach RLIMIT_NOFILE. At most a quarter of the limit is
     * kept, so that a small limit still serves. 0 keeps none. */
    size_t fd_reserve;
    /* Bulk echo without copying: a plain raw TCP connection whose read
     * fills the whole read buffer (or its output cap, if smaller) echoes
     * through a pipe of its own with splice(2) from then on, and goes back
     * to copying after a few short reads with the pipe empty. The pipe is
     * at most max_pending_output (and 1 MiB); its size counts against
     * max_memory, and its two fds against fd_reserve, while a connection
     * holds it. Without a pipe to be had, the connection keeps copying. Not
     * for TLS, ws or line mode. On by default. */
    bool splice;

    /* PROXY protocol, for listeners with proxy set. A connection to one
     * from a peer outside proxy_from (copied; count 0 trusts nobody) is
     * closed at accept and counted. Its header must be whole within
     * proxy_timeout_ms (>= 1). The header's client then stands for the
     * peer: the allow list and the per-address limit are applied to it on
     * the worker, and the access events name it, with the proxy as via. */
    const fe_cidr *proxy_from;
    size_t proxy_from_count;
    int64_t proxy_timeout_ms;

    /* TLS, for listeners with tls set: a connection whose handshake has not
     * finished this long after it began (after its PROXY header, if any)
     * is closed and counted (>= 1). */
    int64_t tls_handshake_timeout_ms;

    /* UDP, for listeners with udp set. Datagrams from source ports below
     * 1024 are dropped unless udp_allow_low_ports. With udp_rate > 0, each
     * source address gets at most that many replies per second (a token
     * bucket; the table of sources is bounded). Each worker receives up to
     * udp_max_datagram bytes per datagram (<= 65535, the default, which
     * fits any UDP datagram); a larger one is dropped, never echoed short.
     * Each worker holds 32 buffers of that size. */
    bool udp_allow_low_ports;
    uint32_t udp_rate;
    size_t udp_max_datagram;

    /* WebSocket, for listeners with ws set. The upgrade is accepted only
     * at ws_path (ws_path_len bytes, starting with '/', printable ASCII
     * without '"', '\\', '<' or '>'; copied) when it is set (NULL: any path).
     * When ws_origin_count > 0, only those Origin values may connect (each
     * ws_origin_lens[i] bytes; copied). A message larger than
     * ws_max_message bytes gets close 1009; a request head larger than
     * ws_max_header bytes gets 400; a request head not whole within
     * ws_handshake_timeout_ms (>= 1) of the connection's start (after TLS,
     * when it is wss) is closed and counted. */
    const char *ws_path;
    size_t ws_path_len;
    const char *const *ws_origins;
    const size_t *ws_origin_lens;
    size_t ws_origin_count;
    uint64_t ws_max_message;
    size_t ws_max_header;
    int64_t ws_handshake_timeout_ms;

    /* FE_IO_URING serves TCP listeners, raw or line mode, with or without
     * a PROXY header; fe_server_start refuses TLS, WebSocket and UDP
     * listeners under it (the epoll backend serves every kind).
     * fe_server_create fails when fe_io_uring_check does. */
    enum fe_io_backend io_backend;
} fe_config;

typedef struct fe_stats {
    uint64_t connections_accepted; /* accepted by the listener */
    uint64_t connections_active;   /* accepted and not yet closed */
    uint64_t connections_closed;   /* closed, for any reason */
    uint64_t bytes_received;       /* read from clients to be echoed */
    uint64_t bytes_sent;           /* written back to clients */
    uint64_t accept_errors;        /* failed accept() calls (EMFILE, ...) */
    uint64_t rejected_max_connections; /* closed at accept: max_connections */
    uint64_t rejected_per_ip;          /* closed at accept: max_connections_per_ip */
    uint64_t rejected_not_allowed;     /* closed at accept: not in the allow list */
    uint64_t rejected_proxy_untrusted; /* closed at accept: +proxy peer not in proxy_from */
    uint64_t idle_timeouts;            /* closed for idleness */
    uint64_t lines_too_long;           /* closed in line mode for an overlong line */
    uint64_t events_dropped;           /* access events lost to a full ring */
    uint64_t accept_fd_exhausted;      /* accepts refused for want of fds: EMFILE,
                                          ENFILE, or closed to keep fd_reserve free */
    uint64_t memory_held;              /* bytes held by connection buffers now (a gauge) */
    uint64_t memory_budget_waits;      /* times a connection stopped being read for max_memory */
    uint64_t tls_handshakes;           /* TLS handshakes completed */
    uint64_t tls_resumed;              /* of those, resumed sessions (tickets) */
    uint64_t splice_bytes;             /* of bytes_sent, those echoed through pipes (splice) */
    uint64_t splice_pipes;             /* pipes open now, held by connections or kept for reuse */
    uint64_t closes[FE_CLOSE_REASON_COUNT]; /* connections closed, by reason */
    /* Per listener, in fe_server_start's order (listener_count of them):
     * connections accepted (admitted) and closed, as above. */
    size_t listener_count;
    uint64_t listener_accepted[FE_MAX_LISTENERS];
    uint64_t listener_closed[FE_MAX_LISTENERS];
    /* Per UDP listener (0 for the others): datagrams and bytes received and
     * echoed, and datagrams dropped by reason. */
    uint64_t udp_in[FE_MAX_LISTENERS];
    uint64_t udp_out[FE_MAX_LISTENERS];
    uint64_t udp_bytes_in[FE_MAX_LISTENERS];
    uint64_t udp_bytes_out[FE_MAX_LISTENERS];
    uint64_t udp_dropped[FE_MAX_LISTENERS][FE_UDP_DROP_COUNT];
    /* WebSocket: the HTTP answers given, by kind; data messages echoed;
     * pings answered; close frames sent, by code (FE_WS_CLOSE_SLOTS). */
    uint64_t ws_http[FE_WS_HTTP_COUNT];
    uint64_t ws_messages;
    uint64_t ws_pings;
    uint64_t ws_closes[FE_WS_CLOSE_SLOTS];
} fe_stats;

/* Fills cfg with the defaults: threads 1, 1 MiB output cap, 64 KiB read
 * buffer, 256 KiB stacks, queue capacity 4096, raw framing (max_line
 * 64 KiB if line mode is turned on), no access events, no limits, no memory
 * budget, no fd reserve, splice on; UDP: low source ports dropped, no rate limit,
 * datagrams up to 65535 bytes; WebSocket: any path and origin, messages up
 * to 16 MiB, request heads up to 8 KiB, a 10 s handshake timeout; the
 * epoll backend. */
void fe_config_init(fe_config *cfg);

/* Allocates a server from cfg (copied; the caller keeps ownership of cfg).
 * Allocates every per-worker resource up front, so that start only has to
 * spawn threads. On success *out is set and 0 is returned. On failure -1 is
 * returned, errno is set (EINVAL for a bad config) and err holds a message. */
int fe_server_create(const fe_config *cfg, fe_server **out, char *err, size_t errlen);

/* Starts serving the count (1..FE_MAX_LISTENERS) listeners, whose sockets
 * the caller owns and must keep open until fe_server_shutdown has returned.
 * The core makes them non-blocking and never closes them. One acceptor
 * thread serves them all, and they share the workers, the limits and the
 * counters. Spawns the acceptor and the workers with every signal blocked,
 * so signals reach the caller's thread. Call at most once. Returns 0, or -1
 * with errno and err set; on failure no thread is left running and the
 * server may only be destroyed. */
int fe_server_start(fe_server *srv, const fe_listener *listeners, size_t count, char *err,
                    size_t errlen);

/* Begins a graceful stop, and returns without waiting for it:
 *  1. Stops accepting: the acceptor thread is joined before this returns, so
 *     the caller may close the listening sockets straight afterwards.
 *  2. For drain_ms, connections keep being served normally.
 *  3. Then reading stops; each connection gets up to linger_ms more to flush
 *     what it already received, send FIN, and see its peer close, so that no
 *     byte received before the drain deadline is cut off by a reset.
 *  4. Whatever remains is closed and the workers exit.
 * Workers exit as soon as they hold no connections. May be called again to
 * bring the deadlines forward (never back): (0, 0) stops at once. Safe from
 * any thread except a worker; a no-op on a server that was never started. */
void fe_server_shutdown(fe_server *srv, int64_t drain_ms, int64_t linger_ms);

/* Waits up to timeout_ms (< 0: forever) for every thread to exit after
 * fe_server_shutdown. Returns 1 when they all have (or it was never
 * started), 0 on timeout. Keep timeouts short when the caller must also
 * react to signals. */
int fe_server_wait(fe_server *srv, int timeout_ms);

/* Fills out with a snapshot of the counters. Lock-free: it never slows the
 * workers, and counters read at slightly different instants may be a few
 * events apart. Safe from any thread at any time between create and destroy. */
void fe_server_stats(const fe_server *srv, fe_stats *out);

/* Moves up to max pending access events into out, oldest first per worker;
 * returns how many. Never blocks a worker. Safe from any thread (callers
 * are serialized by an internal lock that workers never take). */
size_t fe_server_drain_events(fe_server *srv, fe_event *out, size_t max);

/* If the acceptor stopped by itself on an unrecoverable error (for example
 * the listening socket was closed under it), returns that errno; else 0. */
int fe_server_acceptor_error(const fe_server *srv);

/* TLS settings: what fe_tls_create loads. The PEM texts are the caller's
 * (read from files by the caller, so that nothing here opens a path). */
typedef struct fe_tls_settings {
    const char *cert_pem; /* the certificate, leaf first, then its chain */
    size_t cert_len;
    const char *key_pem;  /* its private key (unencrypted) */
    size_t key_len;
    const char *client_ca_pem; /* mutual TLS: clients must present a certificate
                                  issued by one of these; NULL: not asked for */
    size_t client_ca_len;
    int min_version; /* 12: TLS 1.2 and 1.3 (the default when 0); 13: TLS 1.3 only */
} fe_tls_settings;

/* A loaded certificate, key and policy (an OpenSSL SSL_CTX): TLS 1.2 and
 * 1.3 with Mozilla's "intermediate" ciphers, session tickets on,
 * renegotiation off. */
typedef struct fe_tls fe_tls;

/* Whether this build serves TLS (FASTECHO_WITH_TLS), and the OpenSSL it
 * runs on ("" when none). */
bool fe_tls_available(void);
const char *fe_tls_library(void);

/* Loads settings into a new fe_tls. Returns 0 and sets *out, or -1 with
 * errno (EINVAL: the settings are bad; ENOTSUP: no TLS in this build) and
 * a one-line reason in err (which PEM, and OpenSSL's reason). */
int fe_tls_create(const fe_tls_settings *settings, fe_tls **out, char *err, size_t errlen);

/* Writes a one-line description of the server certificate into out:
 * its subject and the end of its validity ("CN=x, valid until ..."). */
void fe_tls_describe(const fe_tls *tls, char *out, size_t outlen);

/* Releases the caller's reference; the server keeps its own. NULL: no-op. */
void fe_tls_free(fe_tls *tls);

/* Makes tls the server's certificate and policy for every handshake that
 * starts from now on (connections already open keep theirs). The server
 * takes its own reference, so the caller may free tls afterwards. Safe
 * from any thread at any time between create and destroy (certificate
 * rotation); session tickets issued before stay valid. */
void fe_server_set_tls(fe_server *srv, fe_tls *tls);

/* Stops (at once, if still running), joins every thread, closes every fd
 * the core opened and frees srv. NULL is a no-op. */
void fe_server_destroy(fe_server *srv);

#ifdef __cplusplus
}
#endif

#endif /* FE_H */
