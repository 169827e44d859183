/*
 * fe_loop_epoll.c - the epoll backend: one worker's whole main loop. It
 * adopts connections from the worker's queue, moves their bytes through
 * the transport, and lets each connection's state machine (fe_conn.h)
 * decide what happens next. It never blocks on any single client.
 *
 * The plain raw path is exactly a bare echo loop: level-triggered EPOLLIN,
 * one read into the worker's buffer, one send of the same bytes, with
 * direct calls only. Only when the kernel takes less than everything (a
 * short write) do the leftovers move to the connection's buffer and the
 * connection waits for EPOLLOUT; an idle connection owns no buffer at all.
 * One read per readiness per loop keeps the service fair: a busy client
 * cannot starve the others on its worker.
 *
 * A plain connection whose read fills the whole read room is moving bulk
 * data: from then on it echoes through a pipe with splice (fe_splice.h),
 * socket to pipe and pipe to socket, so its bytes never enter user space.
 * The copying path pays one compare per read for it.
 *
 * TLS connections take the same path through the TLS transport, chosen by
 * a flag: the handshake first (its WANT_READ/WANT_WRITE folded into the
 * interest), close_notify before FIN, and input OpenSSL has already taken
 * from the socket (which epoll will never report) served from a pending
 * list after each batch of events, as redis does.
 */
#include "fe_echo_path.h"
#include "fe_tls.h"
#include "fe_udp.h"
#include "fe_worker_loop.h"

#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>

enum { FE_MAX_EVENTS = 256 };

static uint32_t epoll_interest(uint32_t want)
{
    return ((want & FE_WANT_READ) ? EPOLLIN : 0) | ((want & FE_WANT_WRITE) ? EPOLLOUT : 0);
}

static void close_conn(fe_worker *w, fe_conn *c, enum fe_close_reason reason)
{
    fe_conn_release(w, c, reason);
    if (c->tls) {
        tls_pending_remove(w, c);
        fe_tp_tls_free(c->ssl);
    }
    /* Deregister explicitly: close() alone leaves the epoll entry alive if a
     * fork ever duplicated the fd, and its events would then name freed c. */
    epoll_ctl(w->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    fe_conn_free(w, c);
}

static void adopt(fe_worker *w, const fe_handoff *h)
{
    fe_conn *c = fe_conn_create(w, h);
    if (c == NULL) {
        fe_conn_drop_handoff(w, h, FE_CLOSE_NO_MEMORY);
        return;
    }
    if (c->tls && (c->ssl = fe_tls_accept(w->server, c->fd)) == NULL) {
        close_conn(w, c, FE_CLOSE_NO_MEMORY);
        return;
    }
    c->events = EPOLLIN; /* the client speaks first: PROXY header, ClientHello or data */
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(w->epoll_fd, EPOLL_CTL_ADD, c->fd, &ev) != 0)
        close_conn(w, c, FE_CLOSE_RESET);
}

/* Acts on what c wants next: FIN, close, or the epoll interest to wait
 * with. Returns false if c was closed. */
FE_ECHO_PATH bool settle_with(fe_worker *w, fe_conn *c, bool tls)
{
    uint32_t want = 0;
    enum fe_close_reason reason = FE_CLOSE_RESET;
    for (;;) {
        switch (fe_conn_next(w, c, &want, &reason)) {
        case FE_STEP_LINGER:
            /* FIN, then linger reading until the peer closes: closing with
             * unread input would send RST, and a RST can destroy echoed
             * bytes still in flight to the peer. */
            if (conn_end(c) == FE_TP_AGAIN_WRITE) {
                want = FE_WANT_WRITE; /* close_notify waits for room; then again */
                break;
            }
            fe_conn_lingering(w, c);
            c->tp_wants = 0; /* input is now discarded from the raw socket */
            continue;
        case FE_STEP_FINISH:
            /* A close_notify with no room waits for it, as in LINGER:
             * skipped, the client would get FIN alone after its whole
             * echo, which TLS cannot tell from a cut-off stream. */
            if (!c->lingering && conn_end(c) == FE_TP_AGAIN_WRITE) {
                want = FE_WANT_WRITE; /* then FINISH again */
                break;
            }
            close_conn(w, c, reason);
            return false;
        case FE_STEP_CLOSE:
            close_conn(w, c, reason);
            return false;
        case FE_STEP_WAIT:
            break;
        }
        break;
    }
    if (tls)
        want = tls_interest(w, c, want);
    uint32_t events = epoll_interest(want);
    if (events != c->events) {
        struct epoll_event ev = {.events = events, .data.ptr = c};
        if (epoll_ctl(w->epoll_fd, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
            close_conn(w, c, FE_CLOSE_RESET);
            return false;
        }
        c->events = (uint8_t)events;
    }
    return true;
}

/* settle, off the echo path (timers, the budget, stopping, handshakes). */
static bool settle(fe_worker *w, fe_conn *c)
{
    return c->tls ? settle_with(w, c, true) : settle_with(w, c, false);
}

/* Advances c's TLS handshake; closes c when it failed. */
static void handshake(fe_worker *w, fe_conn *c)
{
    enum fe_close_reason reason;
    if (tls_handshake_step(w, c, &reason) != 0)
        close_conn(w, c, reason);
    else
        settle(w, c);
}

FE_ECHO_PATH void handle_with(fe_worker *w, fe_conn *c, uint32_t events, bool tls)
{
    enum fe_close_reason reason = FE_CLOSE_RESET;
    if (events & EPOLLERR) { /* reset or other socket error: nothing to save */
        close_conn(w, c, fe_conn_failed_reason(c));
        return;
    }
    if (tls && c->handshaking) {
        handshake(w, c);
        return;
    }
    if (tls && (c->tp_wants & FE_WANT_WRITE) && (events & EPOLLOUT))
        events |= EPOLLIN; /* the read that had to send first can go on */
    if (events & EPOLLOUT) {
        if (c->space_wait)
            fe_conn_socket_drained(c);
        if (c->out.len > 0 && flush(w, c, tls) != 0) {
            close_conn(w, c, FE_CLOSE_RESET);
            return;
        }
        if (!tls && c->spliced && splice_flush(w, c) != 0) {
            close_conn(w, c, FE_CLOSE_RESET);
            return;
        }
        if (tls && c->tls_unsent && peek_echo(w, c, c->tls_unsent_len, &reason) != 0) {
            close_conn(w, c, reason);
            return;
        }
    }
    if (c->events & EPOLLIN) {
        if ((events & (EPOLLIN | EPOLLHUP)) && read_and_echo(w, c, tls, true, &reason) != 0) {
            close_conn(w, c, reason);
            return;
        }
    } else if (events & EPOLLHUP) {
        /* Both directions are gone while we were not reading: no further
         * byte can be delivered, and a level-triggered HUP would otherwise
         * be reported forever. */
        close_conn(w, c, FE_CLOSE_RESET);
        return;
    }
    settle_with(w, c, tls);
}

static __attribute__((noinline)) void handle_tls(fe_worker *w, fe_conn *c, uint32_t events)
{
    handle_with(w, c, events, true);
}

/* Acts on epoll's events for c (or on input OpenSSL holds: EPOLLIN). */
FE_ECHO_PATH void handle(fe_worker *w, fe_conn *c, uint32_t events)
{
    if (c->tls)
        handle_tls(w, c, events);
    else
        handle_with(w, c, events, false);
}

/* Serves the TLS connections whose input OpenSSL holds: one read each, as
 * for a readiness event (those that still hold more go round again). */
static void serve_tls_pending(fe_worker *w)
{
    for (size_t n = w->tls_pending_count; n > 0 && w->tls_pending.head; n--) {
        fe_conn *c = w->tls_pending.head;
        tls_pending_remove(w, c);
        handle_tls(w, c, EPOLLIN); /* only TLS connections are pending */
    }
}

/* UDP sockets are told apart from connections in epoll's data by their
 * low bit (both are at least 4-byte aligned). */
static void *udp_tag(fe_udp_socket *u)
{
    return (void *)((uintptr_t)u | 1);
}

static fe_udp_socket *udp_untag(void *ptr)
{
    return (uintptr_t)ptr & 1 ? (fe_udp_socket *)((uintptr_t)ptr & ~(uintptr_t)1) : NULL;
}

/* Registers w's UDP sockets; one that cannot be is closed (served by the
 * other workers' sockets on the same address). */
static void watch_udp(fe_worker *w)
{
    for (size_t i = 0; i < w->udp_count; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = udp_tag(&w->udp[i])};
        if (epoll_ctl(w->epoll_fd, EPOLL_CTL_ADD, w->udp[i].fd, &ev) != 0) {
            close(w->udp[i].fd);
            w->udp[i].fd = -1;
        }
    }
}

static const fe_backend epoll_backend = {
    .adopt = adopt,
    .settle = settle,
    .close = close_conn,
    .serve_pending = serve_tls_pending,
};

void *fe_worker_main_epoll(void *arg)
{
    fe_worker *w = arg;
    struct epoll_event events[FE_MAX_EVENTS];
    w->now_ns = fe_now_ns();
    watch_udp(w);

    for (;;) {
        int n = epoll_wait(w->epoll_fd, events, FE_MAX_EVENTS, fe_worker_wait_ms(w));
        if (n < 0 && errno != EINTR)
            break; /* EBADF/EINVAL: our own epoll fd is gone; cannot happen */
        bool clock_read = fe_worker_needs_clock(w);
        if (clock_read)
            w->now_ns = fe_now_ns();
        for (int i = 0; i < n; i++) {
            void *ptr = events[i].data.ptr;
            fe_udp_socket *u;
            if (ptr == NULL) {
                uint64_t ignored;
                while (read(w->wake_fd, &ignored, sizeof ignored) < 0 && errno == EINTR) {
                }
                fe_worker_adopt_queued(w, &epoll_backend);
            } else if ((u = udp_untag(ptr)) != NULL) {
                if (u->fd >= 0)
                    fe_udp_serve(w, u);
            } else {
                handle(w, ptr, events[i].events);
            }
        }
        if (fe_worker_after_batch(w, &epoll_backend, clock_read))
            break;
    }
    fe_worker_exit(w, &epoll_backend);
    return NULL;
}
