/*
 * fe_worker_loop.c - the parts of a worker's loop that do not depend on
 * how bytes move (see fe_worker_loop.h): adoption, timers, budget retries,
 * the stop and the exit, for both backends.
 */
#include "fe_worker_loop.h"
#include "fe_udp.h"

enum { FE_ADOPT_BATCH = 64 };

void fe_worker_adopt_queued(fe_worker *w, const fe_backend *b)
{
    fe_handoff batch[FE_ADOPT_BATCH];
    size_t n;
    while ((n = fe_queue_pop_batch(&w->inbox, batch, FE_ADOPT_BATCH)) > 0) {
        for (size_t i = 0; i < n; i++) {
            if (w->closing) /* too late to serve it */
                fe_conn_drop_handoff(w, &batch[i], FE_CLOSE_SHUTDOWN);
            else
                b->adopt(w, &batch[i]);
        }
    }
}

/* Looks again at connections waiting for the memory budget. */
static void retry_budget_waits(fe_worker *w, const fe_backend *b)
{
    fe_conn *c = w->active.head;
    while (c && w->budget_blocked > 0) {
        fe_conn *next = c->next;
        if (c->budget_wait)
            b->settle(w, c);
        c = next;
    }
}

static void close_expired(fe_worker *w, const fe_backend *b)
{
    enum fe_close_reason reason;
    fe_conn *c;
    while ((c = fe_conn_expired(w, &reason)) != NULL) {
        if (reason == FE_CLOSE_IDLE && fe_conn_ws_idle(w, c))
            b->settle(w, c); /* its close frame goes out first */
        else
            b->close(w, c, reason);
    }
}

/* Closes the connections still awaiting their PROXY header, TLS handshake
 * or WebSocket request: at a stop, nothing they sent is owed an echo. */
static void close_unserved(fe_worker *w, const fe_backend *b)
{
    fe_conn_list *lists[] = {&w->proxy_waiting, &w->handshaking, &w->ws_upgrading};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        while (lists[i]->head)
            b->close(w, lists[i]->head, FE_CLOSE_SHUTDOWN);
    }
}

/* The stop began: ws connections are told "going away" (close 1001) at
 * once, then finish as they would after any close frame. */
static void send_going_away(fe_worker *w, const fe_backend *b)
{
    w->going_away = true;
    fe_conn *c = w->active.head;
    while (c) {
        fe_conn *next = c->next;
        if (c->ws) {
            fe_conn_ws_going_away(w, c);
            b->settle(w, c);
        }
        c = next;
    }
}

/* Past the drain deadline: stop echoing; each connection flushes what it
 * already received, sends FIN and lingers until the close deadline. */
static void enter_closing(fe_worker *w, const fe_backend *b)
{
    w->closing = true;
    close_unserved(w, b); /* nothing received yet that is owed an echo */
    fe_conn *c = w->active.head;
    while (c) {
        fe_conn *next = c->next;
        b->settle(w, c);
        c = next;
    }
}

static void close_all(fe_worker *w, const fe_backend *b)
{
    close_unserved(w, b);
    while (w->active.head)
        b->close(w, w->active.head, fe_conn_stop_reason(w->active.head));
    while (w->aborting.head)
        b->close(w, w->aborting.head, fe_conn_stop_reason(w->aborting.head));
}

int fe_worker_wait_ms(const fe_worker *w)
{
    const fe_server *s = w->server;
    /* With no timer running (the plain echo loop), there is none to look at. */
    int64_t ms = fe_worker_needs_clock(w) ? fe_conn_next_timer_ms(w) : -1;
    /* Only a UDP access-log window open (which needs the clock too) has a deadline. */
    int64_t log_ms = w->udp_log.window_start_ns != 0 ? fe_udp_log_ms_left(w) : -1;
    if (log_ms >= 0 && (ms < 0 || log_ms < ms))
        ms = log_ms;
    if (w->tls_pending_count > 0)
        return 0; /* input is waiting in OpenSSL */
    if (atomic_load(&((fe_server *)s)->state) != FE_RUNNING) {
        int64_t deadline = w->closing ? atomic_load(&((fe_server *)s)->close_deadline_ns)
                                      : atomic_load(&((fe_server *)s)->drain_deadline_ns);
        int64_t stop = deadline <= w->now_ns ? 0 : (deadline - w->now_ns + 999999) / 1000000;
        if (ms < 0 || stop < ms)
            ms = stop;
    }
    return ms < 0 ? -1 : ms > 1000 ? 1000 : (int)ms;
}

bool fe_worker_after_batch_slow(fe_worker *w, const fe_backend *b, bool clock_read)
{
    fe_server *s = w->server;
    /* A timer that started in this batch (a connection now awaiting its
     * PROXY header, or the budget) is measured from now, not from a
     * wake-up that needed no clock. */
    if (!clock_read && fe_worker_needs_clock(w))
        w->now_ns = fe_now_ns();
    if (w->tls_pending_count > 0 && b->serve_pending)
        b->serve_pending(w);
    if (w->udp_log.window_start_ns != 0)
        fe_udp_log_flush_due(w, false);
    if (s->cfg.idle_timeout_ms > 0 || w->aborting.head || w->proxy_waiting.head || w->handshaking.head ||
        w->ws_upgrading.head)
        close_expired(w, b);
    if (w->budget_blocked > 0 && fe_conn_budget_retry_due(w))
        retry_budget_waits(w, b);
    if (atomic_load(&s->state) == FE_RUNNING)
        return false;

    /* Stopping. UDP reading ends at once (each batch was sent as it was
     * read, so nothing is pending). The acceptor was joined before the
     * state changed, so everything it ever queued is visible now; adopt it
     * (or close it, once closing) before deciding whether this worker is
     * finished. */
    if (!w->going_away) { /* once: the stop's first look */
        fe_udp_log_flush_due(w, true);
        if (b->unwatch_udp)
            b->unwatch_udp(w);
        fe_udp_close(w);
    }
    fe_worker_adopt_queued(w, b);
    if (!w->going_away)
        send_going_away(w, b);
    if (!w->closing && w->now_ns >= atomic_load(&s->drain_deadline_ns))
        enter_closing(w, b);
    if (w->closing && w->now_ns >= atomic_load(&s->close_deadline_ns))
        close_all(w, b);
    return w->conn_count == 0;
}

void fe_worker_exit(fe_worker *w, const fe_backend *b)
{
    fe_server *s = w->server;
    close_all(w, b);
    if (b->quiesce)
        b->quiesce(w);
    pthread_mutex_lock(&s->control_lock);
    s->workers_running--;
    pthread_cond_broadcast(&s->workers_exited_cond);
    pthread_mutex_unlock(&s->control_lock);
}
