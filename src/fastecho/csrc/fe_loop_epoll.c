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
 * TLS connections take the same path through the TLS transport, chosen by
 * a flag: the handshake first (its WANT_READ/WANT_WRITE folded into the
 * interest), close_notify before FIN, and input OpenSSL has already taken
 * from the socket (which epoll will never report) served from a pending
 * list after each batch of events, as redis does.
 */
#include "fe_worker_loop.h"
#include "fe_tls.h"
#include "fe_transport.h"
#include "fe_udp.h"

#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>

enum { FE_MAX_EVENTS = 256 };

static uint32_t epoll_interest(uint32_t want)
{
    return ((want & FE_WANT_READ) ? EPOLLIN : 0) | ((want & FE_WANT_WRITE) ? EPOLLOUT : 0);
}

/* ---------------------------------------------------------------- TLS pending */

static void pending_add(fe_worker *w, fe_conn *c)
{
    if (c->tls_pending)
        return;
    c->tls_pending = true;
    c->pending_next = NULL;
    c->pending_prev = w->tls_pending.tail;
    if (w->tls_pending.tail)
        w->tls_pending.tail->pending_next = c;
    else
        w->tls_pending.head = c;
    w->tls_pending.tail = c;
    w->tls_pending_count++;
}

static void pending_remove(fe_worker *w, fe_conn *c)
{
    if (!c->tls_pending)
        return;
    if (c->pending_prev)
        c->pending_prev->pending_next = c->pending_next;
    else
        w->tls_pending.head = c->pending_next;
    if (c->pending_next)
        c->pending_next->pending_prev = c->pending_prev;
    else
        w->tls_pending.tail = c->pending_prev;
    c->pending_prev = c->pending_next = NULL;
    c->tls_pending = false;
    w->tls_pending_count--;
}

/* ---------------------------------------------------------------- transport */

/* The functions on the echo path take `tls`, which is always a constant
 * where they are called: handle() looks at c->tls once and enters one of
 * two copies of the path, each inlined with its constant folded. The plain
 * copy is then the bare loop, without a single transport check, and the
 * TLS copy calls OpenSSL directly (no indirect call in either). */
#define FE_ECHO_PATH static inline __attribute__((always_inline))

/* A TLS read's result as the connection sees it: a read that must send
 * first waits for writability (tp_wants) and is otherwise "nothing now";
 * tls_got notes whether bytes came, for the pending check in settle. */
static inline ssize_t tls_read_result(fe_conn *c, ssize_t got)
{
    c->tp_wants = got == FE_TP_AGAIN_WRITE ? FE_WANT_WRITE : 0;
    c->tls_got = got > 0;
    return got == FE_TP_AGAIN_WRITE ? FE_TP_AGAIN : got;
}

/* Reads through the connection's transport. After our FIN, input is only
 * discarded: a TLS connection then reads the raw socket, since its records
 * need no decrypting to be thrown away. */
FE_ECHO_PATH ssize_t conn_read(fe_conn *c, bool tls, void *buf, size_t n)
{
    if (!tls || c->lingering)
        return fe_tp_plain_read(c->fd, buf, n);
    return tls_read_result(c, fe_tp_tls_read(c->ssl, buf, n));
}

/* Peeks (leaves the bytes to be read again) and drops peeked bytes. */
static ssize_t conn_peek(fe_conn *c, void *buf, size_t n)
{
    if (!c->tls)
        return fe_tp_plain_peek(c->fd, buf, n);
    return tls_read_result(c, fe_tp_tls_peek(c->ssl, buf, n));
}

static void conn_discard(fe_conn *c, void *scratch, size_t n)
{
    if (c->tls)
        fe_tp_tls_discard(c->ssl, scratch, n);
    else
        fe_tp_plain_discard(c->fd, scratch, n);
}

FE_ECHO_PATH ssize_t conn_write(fe_conn *c, bool tls, const void *buf, size_t n)
{
    return tls ? fe_tp_tls_write(c->ssl, buf, n) : fe_tp_plain_write(c->fd, buf, n);
}

/* Ends our direction: close_notify first on TLS. Returns FE_TP_AGAIN_WRITE
 * when close_notify must wait for writability (nothing sent yet), else 0. */
static int conn_end(fe_conn *c)
{
    if (c->tls && fe_tp_tls_close_notify(c->ssl) == FE_TP_AGAIN_WRITE)
        return FE_TP_AGAIN_WRITE;
    fe_tp_plain_shutdown(c->fd);
    return 0;
}

static void close_conn(fe_worker *w, fe_conn *c, enum fe_close_reason reason)
{
    fe_conn_release(w, c, reason);
    if (c->tls) {
        pending_remove(w, c);
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

/* Sends queued output until done or the socket is full. Returns -1 when
 * the connection is broken. */
FE_ECHO_PATH int flush(fe_worker *w, fe_conn *c, bool tls)
{
    ssize_t n = conn_write(c, tls, c->out.data + c->out.start, c->out.len);
    if (n < 0)
        return -1;
    fe_conn_sent(w, c, (size_t)n);
    return 0;
}

/* A read that brought no bytes (n <= 0): 0 to wait (nothing arrived, or
 * the peer's FIN, now recorded), -1 to close. */
static int read_ended(fe_worker *w, fe_conn *c, ssize_t n, enum fe_close_reason *reason)
{
    if (n == FE_TP_AGAIN)
        return 0;
    if (n == FE_TP_PROTOCOL)
        *reason = FE_CLOSE_TLS_ERROR;
    if (n < 0)
        return -1;
    return fe_conn_peer_eof(w, c, reason);
}

/* Raw echo while the budget is spent, for a connection that holds nothing:
 * peek, send what the socket takes, then consume exactly that much. Bytes
 * the socket would not take stay in the kernel (TLS: in OpenSSL), so
 * nothing is buffered and nothing is lost. Returns -1 when the connection
 * must be closed.
 *
 * TLS: a peek returns at most the rest of one incoming record, which goes
 * out as one record, all or nothing. When the socket takes only part of
 * it, OpenSSL keeps that record and wants the same bytes again: they stay
 * unread, c->tls_unsent says so, and every retry (on writability, from the
 * pending list, or once the budget frees, and before FIN) peeks exactly
 * those bytes again. */
static int peek_echo(fe_worker *w, fe_conn *c, size_t want, enum fe_close_reason *reason)
{
    ssize_t n = conn_peek(c, w->read_buffer, want);
    if (n <= 0)
        return read_ended(w, c, n, reason);
    ssize_t sent = c->tls ? conn_write(c, true, w->read_buffer, (size_t)n)
                          : conn_write(c, false, w->read_buffer, (size_t)n);
    if (sent < 0)
        return -1;
    c->tls_unsent = c->tls && sent == 0;
    c->tls_unsent_len = c->tls_unsent ? (uint16_t)n : 0;
    if (sent == 0) {
        fe_conn_socket_full(w, c);
        return 0;
    }
    conn_discard(c, w->read_buffer, (size_t)sent);
    return fe_conn_input(w, c, w->read_buffer, (size_t)sent, (size_t)sent, reason);
}

/* A read of a connection still awaiting its PROXY header. It peeks, and
 * consumes only the header's bytes: what follows stays in the kernel and is
 * read as echo input, within the cap and the budget. Returns -1 when the
 * connection must be closed. */
static int read_proxy_header(fe_worker *w, fe_conn *c, enum fe_close_reason *reason)
{
    ssize_t n = fe_tp_plain_peek(c->fd, w->read_buffer, fe_conn_proxy_room(w, c));
    *reason = FE_CLOSE_RESET;
    if (n <= 0)
        return read_ended(w, c, n, reason);
    size_t consume = 0;
    int rc = fe_conn_proxy_input(w, c, w->read_buffer, (size_t)n, &consume, reason);
    if (consume > 0)
        fe_tp_plain_discard(c->fd, w->read_buffer, consume);
    return rc;
}

/* One read, echoed at once. Returns -1 when the connection must be closed
 * and sets *reason. */
FE_ECHO_PATH int read_and_echo(fe_worker *w, fe_conn *c, bool tls, enum fe_close_reason *reason)
{
    if (c->awaiting_proxy)
        return read_proxy_header(w, c, reason);
    *reason = FE_CLOSE_RESET;
    if (tls && c->tls_unsent) /* a half-sent record first, whatever the budget says now */
        return peek_echo(w, c, c->tls_unsent_len, reason);
    enum fe_budget_verdict how;
    size_t want = fe_conn_read_room(w, c, &how);
    if (how == FE_BUDGET_PEEK)
        return peek_echo(w, c, want, reason);
    if (want == 0)
        return 0; /* at the cap or the budget: fe_conn_next turns reading off */
    ssize_t n = conn_read(c, tls, w->read_buffer, want);
    if (n <= 0)
        return read_ended(w, c, n, reason);
    size_t sent = 0;
    if (fe_conn_echoes_directly(w, c)) {
        ssize_t put = conn_write(c, tls, w->read_buffer, (size_t)n);
        if (put < 0)
            return -1;
        sent = (size_t)put; /* a short write leaves the rest to fe_conn_input */
    }
    if (fe_conn_input(w, c, w->read_buffer, (size_t)n, sent, reason) != 0)
        return -1;
    if (!fe_conn_framed_output(w, c))
        return 0;
    /* Line mode, ws: send what was just framed. */
    *reason = c->finishing ? fe_conn_stop_reason(c) : FE_CLOSE_RESET;
    return flush(w, c, tls);
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
    if (tls) {
        want |= c->tp_wants;
        /* Read again after this batch (epoll will not say so) if OpenSSL
         * may hold a whole record: only after a read that returned bytes,
         * since what a read that found too little leaves is part of a record
         * whose rest must come from the socket. */
        if ((want & FE_WANT_READ) && c->tls_got && !c->handshaking && !c->lingering &&
            fe_tp_tls_pending(c->ssl))
            pending_add(w, c);
    }
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
    int rc = fe_tp_tls_handshake(c->ssl);
    if (rc == 1) {
        char subject[FE_SUBJECT_MAX];
        fe_tp_tls_subject(c->ssl, subject, sizeof subject);
        fe_conn_handshake_done(w, c, subject, fe_tp_tls_resumed(c->ssl));
        c->tp_wants = 0;
        c->tls_got = true; /* data may have come with its last flight */
    } else if (rc == FE_TP_AGAIN || rc == FE_TP_AGAIN_WRITE) {
        c->tp_wants = rc == FE_TP_AGAIN ? FE_WANT_READ : FE_WANT_WRITE;
    } else {
        close_conn(w, c, rc == 0 ? FE_CLOSE_EOF : rc == FE_TP_PROTOCOL ? FE_CLOSE_TLS_HANDSHAKE : FE_CLOSE_RESET);
        return;
    }
    settle(w, c);
}

FE_ECHO_PATH void handle_with(fe_worker *w, fe_conn *c, uint32_t events, bool tls)
{
    enum fe_close_reason reason = FE_CLOSE_RESET;
    if (events & EPOLLERR) { /* reset or other socket error: nothing to save */
        close_conn(w, c, c->finishing ? fe_conn_stop_reason(c) : FE_CLOSE_RESET);
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
        if (tls && c->tls_unsent && peek_echo(w, c, c->tls_unsent_len, &reason) != 0) {
            close_conn(w, c, reason);
            return;
        }
    }
    if (c->events & EPOLLIN) {
        if ((events & (EPOLLIN | EPOLLHUP)) && read_and_echo(w, c, tls, &reason) != 0) {
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
        pending_remove(w, c);
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
