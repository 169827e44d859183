/*
 * fe_echo_path.h - a stream connection's readiness echo path: one read
 * through its transport (plain or TLS), echoed at once, within the output
 * cap and the memory budget (peeking once it is spent), or its PROXY
 * header; and the transport's other operations. The epoll backend runs
 * every connection through it; the io_uring backend runs those that are
 * not on its completion path (near a limit, line mode, a PROXY header)
 * through it, when no send of theirs is in flight.
 *
 * Everything here is inline: each backend compiles its own copy into its
 * loop, so that the plain path makes no call it does not need.
 */
#ifndef FE_ECHO_PATH_H
#define FE_ECHO_PATH_H

#include "fe_conn.h"
#include "fe_splice.h"
#include "fe_transport.h"

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
static inline ssize_t conn_peek(fe_conn *c, void *buf, size_t n)
{
    if (!c->tls)
        return fe_tp_plain_peek(c->fd, buf, n);
    return tls_read_result(c, fe_tp_tls_peek(c->ssl, buf, n));
}

static inline void conn_discard(fe_conn *c, void *scratch, size_t n)
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
static inline int conn_end(fe_conn *c)
{
    if (c->tls && fe_tp_tls_close_notify(c->ssl) == FE_TP_AGAIN_WRITE)
        return FE_TP_AGAIN_WRITE;
    fe_tp_plain_shutdown(c->fd);
    return 0;
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

/* Spliced: sends what c's pipe holds, unless c->out (io_uring: or
 * c->sending) still holds bytes that came before them. Returns -1 when the
 * connection is broken. */
static inline int splice_flush(fe_worker *w, fe_conn *c)
{
    if (c->out.len > 0 || c->sending.len > 0 || c->piped == 0)
        return 0;
    ssize_t n = fe_splice_out(c->pipe, c->fd, c->piped);
    if (n < 0)
        return -1;
    fe_conn_spliced_out(w, c, (size_t)n);
    return 0;
}

/* A read that brought no bytes (n <= 0): 0 to wait (nothing arrived, or
 * the peer's FIN, now recorded), -1 to close. */
static inline int read_ended(fe_worker *w, fe_conn *c, ssize_t n, enum fe_close_reason *reason)
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
static inline int peek_echo(fe_worker *w, fe_conn *c, size_t want, enum fe_close_reason *reason)
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

/* Spliced (fe_splice.h): one read of up to want bytes
 * into the pipe, echoed at once as far as the socket takes them; the rest
 * waits in the pipe for writability, and reading waits until the pipe is
 * empty. Returns -1 when the connection must be closed. */
static inline int splice_echo(fe_worker *w, fe_conn *c, size_t want, enum fe_close_reason *reason)
{
    ssize_t n = fe_splice_in(c->fd, c->pipe, want);
    if (n <= 0)
        return read_ended(w, c, n, reason);
    fe_conn_spliced_in(w, c, (size_t)n);
    return splice_flush(w, c);
}

/* A read of a connection still awaiting its PROXY header. It peeks, and
 * consumes only the header's bytes: what follows stays in the kernel and is
 * read as echo input, within the cap and the budget. Returns -1 when the
 * connection must be closed. */
static inline int read_proxy_header(fe_worker *w, fe_conn *c, enum fe_close_reason *reason)
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

/* One read, echoed at once. may_write: whether this may write to the
 * socket itself (the io_uring backend: not while a send of its own is in
 * flight, which must go first; the read's bytes then queue, and a peek
 * waits). Returns -1 when the connection must be closed and sets *reason. */
FE_ECHO_PATH int read_and_echo(fe_worker *w, fe_conn *c, bool tls, bool may_write, enum fe_close_reason *reason)
{
    if (c->awaiting_proxy)
        return read_proxy_header(w, c, reason);
    *reason = FE_CLOSE_RESET;
    if (tls && c->tls_unsent) /* a half-sent record first, whatever the budget says now */
        return peek_echo(w, c, c->tls_unsent_len, reason);
    enum fe_budget_verdict how;
    size_t want = fe_conn_read_room(w, c, &how);
    if (how == FE_BUDGET_PEEK)
        return may_write ? peek_echo(w, c, want, reason) : 0;
    if (want == 0)
        return 0; /* at the cap or the budget: fe_conn_next turns reading off */
    if (!tls && how == FE_BUDGET_SPLICE)
        return may_write ? splice_echo(w, c, want, reason) : 0;
    ssize_t n = conn_read(c, tls, w->read_buffer, want);
    if (n <= 0)
        return read_ended(w, c, n, reason);
    size_t sent = 0;
    if (may_write && fe_conn_echoes_directly(w, c)) {
        ssize_t put = conn_write(c, tls, w->read_buffer, (size_t)n);
        if (put < 0)
            return -1;
        sent = (size_t)put; /* a short write leaves the rest to fe_conn_input */
    }
    if (fe_conn_input(w, c, w->read_buffer, (size_t)n, sent, reason) != 0)
        return -1;
    if (!may_write || !fe_conn_framed_output(w, c)) {
        /* Bulk: the socket had at least a whole read room queued. The one
         * compare the copying path pays for splice (0: off). */
        if (!tls && (size_t)n == w->server->splice_read_room)
            fe_conn_splice_begin(w, c);
        return 0;
    }
    /* Line mode, ws: send what was just framed. */
    *reason = fe_conn_failed_reason(c);
    return flush(w, c, tls);
}

/* ---- TLS: what both backends do around the echo path. */

/* The worker's list of TLS connections whose input OpenSSL already holds
 * (read from the socket, so no readiness will report it): served after
 * each batch, as redis does. */
static inline void tls_pending_add(fe_worker *w, fe_conn *c)
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

static inline void tls_pending_remove(fe_worker *w, fe_conn *c)
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

/* The interest a TLS connection waits with, besides the connection's own
 * (want): its transport's, while it handshakes or wants to read (a read
 * that had to send first is moot once reading stops, and its writability
 * would then be reported for nothing, again and again). Puts c on the
 * pending list to be read again after this batch if OpenSSL may hold a
 * whole record: only after a read that returned bytes, since what a read
 * that found too little leaves is part of a record whose rest must come
 * from the socket. */
static inline uint32_t tls_interest(fe_worker *w, fe_conn *c, uint32_t want)
{
    if (c->handshaking || (want & FE_WANT_READ))
        want |= c->tp_wants;
    if ((want & FE_WANT_READ) && c->tls_got && !c->handshaking && !c->lingering && fe_tp_tls_pending(c->ssl))
        tls_pending_add(w, c);
    return want;
}

/* Advances c's TLS handshake (c->tp_wants then says what it waits for).
 * Returns -1 with *reason when it failed and c must close, else 0. */
static inline int tls_handshake_step(fe_worker *w, fe_conn *c, enum fe_close_reason *reason)
{
    int rc = fe_tp_tls_handshake(c->ssl);
    if (rc == 1) {
        char subject[FE_SUBJECT_MAX];
        fe_tp_tls_subject(c->ssl, subject, sizeof subject);
        fe_conn_handshake_done(w, c, subject, fe_tp_tls_resumed(c->ssl));
        c->tp_wants = 0;
        c->tls_got = true; /* data may have come with its last flight */
        return 0;
    }
    if (rc == FE_TP_AGAIN || rc == FE_TP_AGAIN_WRITE) {
        c->tp_wants = rc == FE_TP_AGAIN ? FE_WANT_READ : FE_WANT_WRITE;
        return 0;
    }
    *reason = rc == 0 ? FE_CLOSE_EOF : rc == FE_TP_PROTOCOL ? FE_CLOSE_TLS_HANDSHAKE : FE_CLOSE_RESET;
    return -1;
}

#endif /* FE_ECHO_PATH_H */
