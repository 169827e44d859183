/*
 * fe_worker_loop.h - what every backend's worker loop shares (fe_worker_loop.c):
 * adopting handed-off connections, the timers, the memory budget's retries,
 * the stop (going away, the drain and close deadlines) and the exit. A
 * backend (fe_loop_epoll.c, fe_loop_uring.c) owns how bytes move; it lends
 * this code three operations on one connection through fe_backend.
 *
 * These run once per batch of events or less, never per message: the
 * indirect calls through fe_backend are off the echo path.
 */
#ifndef FE_WORKER_LOOP_H
#define FE_WORKER_LOOP_H

#include "fe_conn.h"

typedef struct fe_backend {
    /* Takes a handed-off connection into the backend (closing it on failure). */
    void (*adopt)(fe_worker *w, const fe_handoff *h);
    /* Acts on what c wants next (fe_conn_next). Returns false if c was closed. */
    bool (*settle)(fe_worker *w, fe_conn *c);
    /* Closes c for reason (fe_conn_release first; c is gone for the caller). */
    void (*close)(fe_worker *w, fe_conn *c, enum fe_close_reason reason);
    /* Serves input a transport already holds (TLS), after each batch; NULL: none. */
    void (*serve_pending)(fe_worker *w);
    /* At the stop, just before w's UDP sockets are closed: lets go of what
     * the backend holds on them (io_uring: a poll keeps its socket, and its
     * port, open past close()); NULL: nothing. */
    void (*unwatch_udp)(fe_worker *w);
    /* At exit, after every connection was closed: waits until the kernel
     * holds nothing that names them, and frees them; NULL: nothing to wait for. */
    void (*quiesce)(fe_worker *w);
} fe_backend;

/* Adopts everything queued for w (closes it unserved once w is closing). */
void fe_worker_adopt_queued(fe_worker *w, const fe_backend *b);

/* Whether w needs the clock after each wake-up: only for timers and access
 * events, so the plain echo path never reads it. Inline: every batch asks. */
static inline bool fe_worker_needs_clock(const fe_worker *w)
{
    return w->server->cfg.idle_timeout_ms > 0 || w->aborting.head != NULL ||
           w->proxy_waiting.head != NULL || w->handshaking.head != NULL || w->ws_upgrading.head != NULL ||
           w->budget_blocked > 0 || w->udp_log.window_start_ns != 0 ||
           atomic_load_explicit(&w->server->state, memory_order_relaxed) != FE_RUNNING;
}

/* How long the backend may wait for events: -1 (no timer runs), or the ms
 * until the next timer, the access log's window or the stop's deadline. */
int fe_worker_wait_ms(const fe_worker *w);

/* Everything after a batch of events: the clock for timers the batch
 * started (clock_read: whether it was read when the batch arrived), input
 * a transport holds, the UDP access log, expired timers, budget retries,
 * and the stop. Returns true when the worker is finished (then call
 * fe_worker_exit). The check that nothing is due is inline, so that the
 * plain echo loop pays one test of a few fields per batch. */
bool fe_worker_after_batch_slow(fe_worker *w, const fe_backend *b, bool clock_read);

static inline bool fe_worker_after_batch(fe_worker *w, const fe_backend *b, bool clock_read)
{
    if (!clock_read && w->tls_pending_count == 0 && !fe_worker_needs_clock(w))
        return false; /* no timer, nothing pending, not stopping */
    return fe_worker_after_batch_slow(w, b, clock_read);
}

/* Closes what is left and tells the server this worker has exited. */
void fe_worker_exit(fe_worker *w, const fe_backend *b);

#endif /* FE_WORKER_LOOP_H */
