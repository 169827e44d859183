/*
 * fe_internal.h - structures shared by the server's lifecycle (fe_server.c),
 * its acceptor (fe_acceptor.c), the connection state machine (fe_conn.c) and
 * the worker loop (fe_loop_epoll.c). Not part of the public API.
 */
#ifndef FE_INTERNAL_H
#define FE_INTERNAL_H

#include "fe.h"
#include "fe_limits.h"
#include "fe_line.h"
#include "fe_queue.h"
#include "fe_rate.h"
#include "fe_ring.h"
#include "fe_udp_log.h"
#include "fe_ws_http.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* Server life: RUNNING until fe_server_shutdown, then DRAINING. Workers
 * derive their own closing phase from the deadlines, not from this. */
enum fe_state { FE_RUNNING = 0, FE_DRAINING = 1 };

/* A counter with exactly one writing thread. Updating it is a plain load and
 * store (no locked instruction, no shared cache line with other writers);
 * readers on other threads see a value that is at most slightly stale. */
typedef _Atomic uint64_t fe_counter;

/* Release/acquire (free on x86, one ordered instruction on arm64): a reader
 * that sees a count also sees every count its writer made before it, so a
 * connection's close is never seen without its accept. */
static inline void fe_counter_add(fe_counter *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_release);
}

static inline uint64_t fe_counter_read(const fe_counter *c)
{
    return atomic_load_explicit((fe_counter *)c, memory_order_acquire);
}

typedef struct fe_conn fe_conn;

/* A worker's own socket on a UDP listener's address (fe_udp.c). */
typedef struct fe_udp_socket {
    int fd;          /* -1: none (closed at stop) */
    uint8_t listener; /* index in fe_server.listeners */
    bool gso;         /* replies to one peer may go as one UDP_SEGMENT send */
} fe_udp_socket;

struct fe_udp_batch; /* fe_udp.c's buffers for recvmmsg/sendmmsg */

typedef struct fe_conn_list {
    fe_conn *head;
    fe_conn *tail;
} fe_conn_list;

typedef struct fe_worker {
    /* Written only by this worker thread; own cache line so that counting
     * never bounces a line between cores. */
    _Alignas(64) fe_counter bytes_received;
    fe_counter bytes_sent;
    fe_counter connections_closed;
    fe_counter lines_too_long; /* counted when seen; closes[] when closed */
    fe_counter budget_waits;
    fe_counter tls_handshakes;
    fe_counter tls_resumed;
    fe_counter closes[FE_CLOSE_REASON_COUNT];
    fe_counter listener_closed[FE_MAX_LISTENERS];
    fe_counter udp_in[FE_MAX_LISTENERS];
    fe_counter udp_out[FE_MAX_LISTENERS];
    fe_counter udp_bytes_in[FE_MAX_LISTENERS];
    fe_counter udp_bytes_out[FE_MAX_LISTENERS];
    fe_counter udp_dropped[FE_MAX_LISTENERS][FE_UDP_DROP_COUNT];
    fe_counter ws_http[FE_WS_HTTP_COUNT];
    fe_counter ws_messages;
    fe_counter ws_pings;
    fe_counter ws_closes[FE_WS_CLOSE_SLOTS];
    fe_counter splice_bytes; /* echoed through pipes (fe_splice.h), also in bytes_sent */

    _Alignas(64) struct fe_server *server;
    int index;
    pthread_t thread;
    bool thread_started;
    int epoll_fd;
    int wake_fd;       /* eventfd: "your queue has fds" or "state changed" */
    fe_queue inbox;    /* accepted fds handed to this worker */
    char *read_buffer; /* cfg.read_buffer_size bytes */
    /* Open connections, least recently active first: the idle sweep only
     * ever looks at the head, and stop walks the whole list. */
    fe_conn_list active;
    /* Connections closing after an overlong line, oldest first. */
    fe_conn_list aborting;
    /* Connections still waiting for their PROXY header, oldest first. */
    fe_conn_list proxy_waiting;
    /* TLS connections whose handshake has not finished, oldest first. */
    fe_conn_list handshaking;
    /* ws connections whose HTTP request head has not all arrived, oldest first. */
    fe_conn_list ws_upgrading;
    /* TLS connections with input OpenSSL already holds (epoll will not
     * report it), to be read after this batch of events; linked through
     * fe_conn.pending_prev/next. */
    fe_conn_list tls_pending;
    size_t tls_pending_count;
    size_t conn_count;
    size_t budget_blocked; /* connections not read until the memory budget frees */
    int64_t budget_retry_ns; /* when they were last looked at again */
    int64_t now_ns;    /* when the current batch of events arrived */
    bool closing;      /* past the drain deadline: no more echoing */
    bool going_away;   /* the stop began: ws connections were sent close 1001 */
    bool ring_ready;
    fe_ring events;    /* access events, when cfg.event_ring_size > 0 */
    /* UDP: this worker's socket on each UDP listener, and its buffers. */
    fe_udp_socket udp[FE_MAX_LISTENERS];
    size_t udp_count;
    struct fe_udp_batch *udp_batch;
    fe_udp_log udp_log;  /* per-source tallies, with access events and UDP */
    bool udp_log_ready;
    struct fe_uring *uring; /* io_uring: this worker's ring and buffers (fe_uring.h) */
    struct fe_pipe *pipe_pool; /* splice: empty pipes to reuse (fe_splice.c) */
    size_t pipe_pool_count;
} fe_worker;

struct fe_server {
    fe_config cfg;
    fe_listener listeners[FE_MAX_LISTENERS];
    /* Set by fe_server_start (before the acceptor exists), read by
     * fe_server_stats from any thread: atomic, so a scrape racing the start
     * sees 0 or all of them. */
    _Atomic size_t listener_count;
    int acceptor_wake_fd; /* eventfd that tells the acceptor to stop */
    pthread_t acceptor;
    bool acceptor_started;
    bool acceptor_joined;
    _Atomic int acceptor_error;

    fe_worker *workers;
    int worker_count;

    /* Owned copies of the config's pointers. */
    char *suffix;       /* line mode's suffix (never NULL in line mode) */
    fe_cidr *allow;
    fe_cidr *proxy_from;
    fe_line_format line_format; /* used in line mode */

    /* Written only by the acceptor. */
    fe_counter connections_accepted;
    fe_counter accept_errors;
    fe_counter connections_refused; /* accepted during shutdown, closed unserved */
    fe_counter rejected_max_connections;
    fe_counter rejected_per_ip;
    fe_counter rejected_not_allowed;
    fe_counter rejected_proxy_untrusted;
    fe_counter accept_fd_exhausted;
    fe_counter listener_accepted[FE_MAX_LISTENERS];
    fe_counter listener_refused[FE_MAX_LISTENERS]; /* accepted, then closed unserved at stop */
    /* The acceptor pauses while connections and their pipes hold this
     * many fds (fe_connection_fds), to keep cfg.fd_reserve fds free;
     * UINT64_MAX when no reserve is kept. Set at start from RLIMIT_NOFILE
     * and the fds open then. */
    uint64_t fd_connection_limit;
    uint64_t *assigned;             /* per worker; the acceptor's private tally */

    /* Connections open now: the acceptor adds, workers subtract. One atomic
     * add per connection open and close, never per message. */
    _Atomic uint64_t open_connections;
    /* Pipes open now, held by connections or pooled (fe_splice.c), beside
     * open_connections: written as rarely, read with it by the acceptor. */
    _Atomic uint64_t splice_pipes;
    /* Bytes of buffer capacity held by every connection together, for
     * cfg.max_memory. Written only when a buffer is allocated, grows or is
     * freed (never on the plain echo path, which buffers nothing); read
     * before each read while a budget is set. */
    _Atomic size_t memory_held;
    /* The plain echo path (fe_conn_plain) applies while memory_held is
     * below this: far enough from max_memory that no read can reach it. */
    size_t memory_plain_bound;
    /* Of max_memory, what reads that check the budget leave free: io_uring
     * keeps every worker's buffer pool free for the multishot receives
     * armed while memory was below memory_plain_bound (0 under epoll). */
    size_t memory_reserve;
    /* A plain connection's read room: min(max_pending_output, read buffer). */
    size_t plain_read_room;
    /* splice (fe_splice.h): the pipe size asked for, and the read that
     * moves a connection onto a pipe (one that fills plain_read_room); 0
     * for both when splice is off. */
    size_t splice_pipe_size;
    size_t splice_read_room;
    fe_ip_table ip_table; /* when cfg.max_connections_per_ip > 0 */
    /* The certificate new TLS sessions are made from (an SSL_CTX; NULL
     * until fe_server_set_tls), replaced on rotation under tls_lock. */
    struct ssl_ctx_st *tls_ctx;
    pthread_mutex_t tls_lock;

    /* WebSocket (fe_ws.c): owned copies of cfg's path and origins, the
     * policy the request parser reads, and the page with its path filled in. */
    char *ws_path;
    char **ws_origins;
    size_t *ws_origin_lens;
    fe_ws_policy ws_policy;
    char *ws_page;
    size_t ws_page_len;
    /* UDP sources' token buckets, when cfg.udp_rate > 0 (fe_udp_open). */
    fe_rate_table udp_rate;
    bool ip_table_ready;
    pthread_mutex_t events_lock; /* serializes fe_server_drain_events callers */

    _Atomic int state;
    _Atomic bool stop_accepting; /* set before the acceptor is woken to stop */
    /* CLOCK_MONOTONIC nanoseconds; INT64_MAX while running. */
    _Atomic int64_t drain_deadline_ns;
    _Atomic int64_t close_deadline_ns;

    /* Serializes start/shutdown/destroy, and lets fe_server_wait sleep on
     * workers_exited with a condition variable. */
    pthread_mutex_t control_lock;
    pthread_cond_t workers_exited_cond;
    int workers_running;
    bool started;
    bool workers_joined;
};

/* Sources the UDP rate table tracks at once (fe_rate.h: bounded). */
enum { FE_UDP_RATE_SOURCES = 65536 };

/* Monotonic clock in nanoseconds. */
int64_t fe_now_ns(void);

/* Worker thread entry points, one per backend (fe_loop_epoll.c,
 * fe_loop_uring.c). arg is the fe_worker. */
void *fe_worker_main_epoll(void *arg);
void *fe_worker_main_uring(void *arg);

/* Acceptor thread entry point (fe_acceptor.c). arg is the fe_server. */
/* The most connections that leave `reserve` fds (at most a quarter of
 * RLIMIT_NOFILE) free, counting the fds open now; UINT64_MAX for none. */
uint64_t fe_fd_connection_limit(size_t reserve);
/* The fds connections hold now: one each, and FE_FDS_PER_PIPE for each
 * pipe, held by a connection or pooled (what fd_connection_limit caps). */
uint64_t fe_connection_fds(fe_server *s);
void *fe_acceptor_main(void *arg);

/* Wakes a worker or the acceptor: adds 1 to its eventfd. Never blocks
 * (an eventfd only refuses a write at 2^64-2 pending, which cannot happen). */
void fe_wake(int eventfd_fd);

#endif /* FE_INTERNAL_H */
