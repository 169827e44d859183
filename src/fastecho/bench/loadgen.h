/*
 * loadgen.h: a single-threaded epoll load generator for TCP, TLS and UDP
 * echo servers.
 *
 * Echo mode (the default): it opens N connections to one IPv4 host:port
 * (with TLS, handshakes on each), keeps `depth` messages of `size` bytes in
 * flight on each, checks every echoed byte, and records the latency of each
 * message in a log-linear histogram. Every handshake happens before the
 * measured window.
 *
 * Handshake mode (lg_config.handshakes): each of the N connections, over and
 * over, connects, completes a full handshake (never a resumed one), echoes
 * one message of `size` bytes, checks it, and closes (close_notify, or FIN
 * without TLS, then waits for the server's). The window counts these cycles;
 * latency is from connect() to the verified echo. Without TLS a "handshake"
 * is a TCP connection's setup and teardown.
 *
 * UDP mode (lg_config.udp; loadgen_udp.c): N UDP sockets, each connect()ed
 * to the server so that the kernel passes it only the server's datagrams,
 * keep `depth` datagrams of `size` bytes in flight each. Every datagram
 * carries a header (sequence number, socket index, length, check) and then a
 * deterministic pattern; every echo is checked, content and exact length. A
 * datagram not echoed within udp_timeout_s is given up: it is counted lost
 * and frees its slot, so loss never stalls a socket. Duplicates, late echoes
 * and reordering are counted; none of them fails the run. After the window
 * the generator stops sending and waits (at most udp_timeout_s) until every
 * datagram sent in the window is echoed or lost.
 *
 * WebSocket mode (lg_config.ws; codec in loadgen_ws.c): as echo mode, over
 * RFC 6455. After TCP (and, with tls, the TLS handshake: wss) each
 * connection sends an upgrade request for ws_path with a random
 * Sec-WebSocket-Key and checks the 101 response, Sec-WebSocket-Accept
 * included, before the window. Each message is one masked binary frame of
 * `size` payload bytes, with a random mask of its own. The server's frames
 * are parsed in any split or coalescing; every echoed payload byte is
 * checked, and so are the framing (unmasked, no reserved bits, shortest
 * length form) and the message boundaries (binary messages of exactly
 * `size` bytes, in one frame or in fragments). A close frame, a ping, a
 * text frame or a malformed frame fails the run, naming the connection and
 * the offset; unsolicited pongs are skipped. Needs OpenSSL (SHA-1).
 *
 * It has no Python in it; src/fastecho/bench/_loadgen.pyx calls lg_run()
 * with the GIL released. The run is bounded in time: connect_timeout_s +
 * warmup_s + duration_s (plus one epoll tick), whatever the server does; in
 * UDP mode warmup_s + duration_s + udp_timeout_s plus a few ticks.
 */
#ifndef FASTECHO_LOADGEN_H
#define FASTECHO_LOADGEN_H

#include <stddef.h>
#include <stdint.h>

/* Largest message the generator accepts. The whole pattern buffer it sends
 * from is allocated up front, so this bounds its memory. */
#define LG_MAX_MESSAGE_SIZE (16u * 1024u * 1024u)

/* UDP: the largest datagram IPv4 carries (65,535 minus the IP and UDP
 * headers), the most sockets one run opens, and the loss timeout used when
 * the config leaves it 0. */
#define LG_UDP_MAX_DATAGRAM_SIZE 65507u
#define LG_UDP_MAX_SOCKETS 65536
#define LG_UDP_DEFAULT_TIMEOUT_MS 200

/* Histogram layout: values below 2 * LG_HIST_SUB_BUCKETS are exact; above,
 * each power-of-two range is split into LG_HIST_SUB_BUCKETS equal buckets, so
 * a bucket is at most 1/LG_HIST_SUB_BUCKETS (1.6%) of its value wide and the
 * reported midpoint is within 0.8% of every value in it. */
#define LG_HIST_SUB_BUCKETS 64
#define LG_HIST_BUCKETS ((64 - 5) * LG_HIST_SUB_BUCKETS)

#define LG_ERROR_SIZE 512
#define LG_TLS_DESCRIPTION_SIZE 128
/* Most processes whose CPU one run sums (a proxy in front + its backend, ...). */
#define LG_MAX_SERVER_PIDS 16

typedef struct lg_histogram {
    uint64_t counts[LG_HIST_BUCKETS];
    uint64_t total; /* values recorded */
    uint64_t min;   /* smallest value recorded; UINT64_MAX when empty */
    uint64_t max;   /* largest value recorded; 0 when empty */
} lg_histogram;

typedef struct lg_config {
    const char *host;         /* IPv4 address in dotted form, e.g. "127.0.0.1" */
    int port;                 /* 1..65535 */
    int conns;                /* connections (UDP: sockets) to open, >= 1 */
    size_t size;              /* bytes per message, 1..LG_MAX_MESSAGE_SIZE
                                 (UDP: 0..LG_UDP_MAX_DATAGRAM_SIZE) */
    int depth;                /* messages in flight per connection, 1..4096 */
    double warmup_s;          /* traffic before the measured window, >= 0 */
    double duration_s;        /* length of the measured window, > 0 */
    double connect_timeout_s; /* all connections must be up within this, > 0 */
    uint64_t max_messages;    /* end the window early after this many; 0 = no limit */
    /* The server side: every process that serves the clients (a TLS proxy and
     * its backend count together). Their CPU and RSS are summed. */
    const int *server_pids;   /* server_pid_count process ids, each > 0 */
    int server_pid_count;     /* 0..LG_MAX_SERVER_PIDS; 0 = don't read any */
    uint64_t seed;            /* payload pattern seed */
    int tls;                  /* nonzero: speak TLS (only in a build with FASTECHO_WITH_TLS) */
    int tls_version;          /* with tls: 0 = 1.2 or 1.3, as negotiated; 12 or 13 = only that one */
    const char *tls_ca_file;  /* with tls: verify the server's certificate, which must name `host`,
                                 against this PEM CA; NULL = accept any certificate */
    int handshakes;           /* nonzero: handshake mode (see above); needs depth 1 */
    int udp;                  /* nonzero: UDP mode (see above); not with tls or handshakes */
    double udp_timeout_s;     /* with udp: a datagram not echoed within this is lost; 0 means
                                 LG_UDP_DEFAULT_TIMEOUT_MS, else in (0, 60] */
    int ws;                   /* nonzero: WebSocket mode (see above); with tls, wss; not with udp
                                 or handshakes; needs a build with OpenSSL (lg_ws_supported) */
    const char *ws_path;      /* with ws: the request path, "/" followed by visible ASCII; NULL = "/" */
} lg_config;

typedef struct lg_result {
    /* Everything below counts only the measured window. */
    uint64_t messages;          /* messages fully echoed and verified */
    uint64_t handshakes;        /* handshake mode: connections that completed connect, handshake
                                   and their one verified echo (so equal to messages); else 0 */
    double elapsed_s;           /* actual window length */
    double connect_s;           /* time to establish all connections (with TLS, handshakes
                                   included), before any warm-up */
    uint64_t p50_ns, p99_ns, p999_ns, max_ns; /* per-message latency; in handshake mode,
                                   connect() to verified echo */
    int starved_conns;          /* connections (handshake mode: slots) that completed nothing */
    uint64_t min_conn_messages; /* fewest messages one connection (slot) completed */
    uint64_t max_conn_messages; /* most messages one connection (slot) completed */
    int64_t own_cpu_us;         /* CPU the generator itself used: near elapsed_s
                                   means the client, not the server, was the limit */
    /* Only when lg_config.server_pid_count > 0, else -1; sums over those processes. */
    int64_t server_utime_us;    /* user CPU the server used in the window */
    int64_t server_stime_us;    /* system CPU the server used in the window */
    int64_t server_rss_kib;     /* server VmRSS at the end of the window */
    /* UDP mode only (else 0). `messages` counts echoes that arrived in time
     * within the window; these count what happened to the datagrams sent in
     * the window, followed past its end until each was echoed or lost. */
    uint64_t sent;              /* datagrams sent in the window */
    uint64_t lost;              /* of those, not echoed within udp_timeout_s (late ones included) */
    uint64_t late;              /* of those, echoed only after they were counted lost */
    uint64_t duplicates;        /* extra echoes of a datagram already echoed */
    uint64_t reordered;         /* echoed after a datagram sent later on the same socket was */
    /* With tls: what the first handshake negotiated, e.g.
     * "TLSv1.3 TLS_AES_256_GCM_SHA384 X25519"; else empty. */
    char tls_description[LG_TLS_DESCRIPTION_SIZE];
    char error[LG_ERROR_SIZE];  /* why lg_run failed; empty on success */
} lg_result;

enum lg_status {
    LG_OK = 0,
    LG_FAILED = -1,     /* the run failed; see lg_result.error */
    LG_BAD_CONFIG = -2, /* a config field is out of range or contradicts another, the CA file
                           cannot be loaded, or TLS was asked of a build without it; see
                           lg_result.error */
};

/*
 * Run one measurement. Returns LG_OK and fills *result, or returns
 * LG_BAD_CONFIG or LG_FAILED with a one-line reason in result->error.
 * The run fails when: connections are not all established (TLS handshake
 * included) within connect_timeout_s, an echoed byte differs from what was
 * sent, the server closes or resets a connection, a handshake fails (a
 * certificate that does not verify included), or a server pid's /proc
 * entry cannot be read. In handshake mode it also fails when one
 * connection's connect and handshake, or its close once echoed, takes
 * longer than connect_timeout_s.
 * A connection the server never answers is NOT a failure; it is counted in
 * starved_conns.
 * In WebSocket mode it also fails when an upgrade is refused or its
 * response is wrong, or on any framing error (see above).
 * In UDP mode the run fails when an echo differs from the datagram sent
 * (a byte, its length, or the socket it came back to), when the server's
 * port refuses datagrams (ECONNREFUSED), or when a server pid's /proc entry
 * cannot be read. Loss, duplicates and reordering are counted instead. Thread-safe: keeps no global state, and blocks SIGPIPE in
 * the calling thread only while it runs (OpenSSL writes with write(2)).
 */
int lg_run(const lg_config *config, lg_result *result);

/* 1 when this build can speak TLS (FASTECHO_WITH_TLS), else 0. */
int lg_tls_supported(void);

/* 1 when this build can speak WebSocket (it needs OpenSSL too), else 0. */
int lg_ws_supported(void);

/* The TLS library the generator runs with, e.g. "OpenSSL 3.0.19 27 Jan 2026";
 * NULL without TLS. */
const char *lg_tls_version_text(void);

/* Empty the histogram. */
void lg_histogram_reset(lg_histogram *hist);

/* Count one value (nanoseconds, or any unit). O(1). */
void lg_histogram_record(lg_histogram *hist, uint64_t value);

/*
 * The value at quantile q (0 <= q <= 1): the midpoint of the bucket holding
 * the ceil(q * total)-th smallest value, clamped to [min, max]. Returns 0 for
 * an empty histogram.
 */
uint64_t lg_histogram_quantile(const lg_histogram *hist, double q);

#endif /* FASTECHO_LOADGEN_H */
