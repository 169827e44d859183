/*
 * fe_loop_uring.c - the io_uring backend: one worker's whole main loop,
 * completion-driven, beside the epoll one (fe_loop_epoll.c). The same
 * state machine (fe_conn.h) decides what each connection does; only how
 * its bytes move differs:
 *
 * - One ring per worker, with SINGLE_ISSUER and DEFER_TASKRUN where the
 *   kernel has them: completions are produced only when this thread asks
 *   for them, in the one io_uring_enter per loop that also submits.
 * - A plain connection (fe_conn_plain: raw, nothing queued, far from the
 *   memory budget) receives with one multishot receive into a pool of
 *   provided buffers the worker owns (1 MiB), consumed incrementally where
 *   the kernel can (one buffer takes the receives of many connections): an
 *   idle connection owns no buffer, as under epoll. Its socket is
 *   registered in the ring's file table. Every other connection (one with
 *   output queued, near the budget, in line mode, awaiting a PROXY header)
 *   waits for readability with a one-shot poll and then takes the epoll
 *   backend's own read path (fe_echo_path.h), with its exact room, its
 *   peeking once the budget is spent, and its PROXY header peeking; while
 *   a send of its own is in flight that path writes nothing itself.
 * - A multishot receive may deliver more, in one batch, than the output
 *   cap or the budget has room for once a connection stops being plain.
 *   For the cap, each is armed with a byte limit after which the kernel
 *   ends it (fe_conn_recv_limit; Linux 6.17; before it, at most the
 *   worker's buffer pool, since a batch cannot take more buffers than
 *   there are). The budget keeps every worker's pool free of the reads
 *   that check it (memory_reserve), and every multishot receive of a
 *   worker is cancelled as soon as memory passes the plain bound.
 * - At most one send in flight per connection, so echoed bytes can never
 *   be reordered. Bytes that arrive with nothing queued go straight back
 *   out of the provided buffer they arrived in, with MSG_DONTWAIT: a send
 *   the socket cannot take at once completes short instead of waiting, and
 *   its rest is copied out (c->sending) so the buffer returns to the pool
 *   at once; no slow reader ever holds one. Bytes that arrive while a send
 *   is in flight queue in c->out, which moves to c->sending, where nothing
 *   reallocates it, for the next send.
 * - Bulk (splice on): a connection off the plain path whose read fills the
 *   read room takes a pipe, as under epoll, and from then on moves its
 *   bytes with splice(2) on readiness (one-shot polls): it is never on the
 *   multishot path while spliced, so no receive can deliver bytes that
 *   belong behind those in its pipe, and its pipe fills only once nothing
 *   of its own is queued or in flight.
 * - A connection closed while the kernel still holds operations that name
 *   it (counted in c->uring_refs) is released at once (counted, its close
 *   event sent, its limits freed), has those operations cancelled, and is
 *   freed, its fd closed, only when the last completion has come back.
 *
 * - WebSocket connections take the readiness path, as line mode does.
 * - UDP sockets are watched with a multishot poll each, and read in
 *   batches by fe_udp.c as under epoll; one whose batch was full is served
 *   again after the batch (a poll reports arrivals, not what is queued).
 *
 * - TLS connections (tls, wss) move their bytes through OpenSSL on
 *   readiness alone, as under epoll (its handshake steps, close_notify,
 *   the pending list for what OpenSSL already holds): one-shot polls,
 *   never a ring send or receive.
 */
#include "fe_echo_path.h"
#include "fe_tls.h"
#include "fe_udp.h"
#include "fe_uring.h"
#include "fe_worker_loop.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#ifdef FE_WITH_URING

#include <liburing.h>
#include <poll.h>

/* Incremental consumption of provided buffers (Linux 6.12), newer than
 * Debian's liburing 2.3 headers: the kernel's uapi values. */
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)
#endif
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

enum {
    FE_URING_ENTRIES = 1024,    /* submission queue */
    FE_URING_CQ_ENTRIES = 8192, /* completions: multishot receives post many */
    FE_URING_POOL_BYTES = 1 << 20, /* provided buffers per worker, in bytes ... */
    FE_URING_BUFFER_MAX = 32 << 10, /* ... each at most this (and at most read_buffer_size) */
    FE_URING_GROUP = 0,         /* their buffer group */
    FE_QUIESCE_TRIES = 1000,    /* at exit, 10 ms waits for the last completions */
    /* Registered file slots per worker (at most RLIMIT_NOFILE): each costs
     * the kernel 8 bytes; connections past them use their fds as they are. */
    FE_URING_FILES = 65536,
};

#define FE_URING_NO_SLOT UINT32_MAX

/* What a completion is for: the low bits of its user_data, above a
 * connection's address (calloc'ed: 16-byte aligned). */
enum {
    OP_WAKE = 0, /* the worker's eventfd (no connection) */
    OP_RECV = 1,
    OP_SEND = 2,
    OP_CANCEL = 3,
    OP_POLL_OUT = 4, /* the budget waits for the socket to drain */
    OP_POLL_IN = 5,  /* a connection off the plain path waits for input */
    OP_UDP = 6,      /* a UDP socket is readable: its index in w->udp above the op */
    OP_IGNORED = 7,  /* nothing to do (the cancel of a UDP poll) */
    OP_WATCH = 8,    /* a connection that waits for neither: its socket's error or hangup */
    OP_MASK = 15,
};
enum { OP_SHIFT = 4 };

/* c->uring_flags */
enum {
    FE_URING_RECV = 1,      /* its multishot receive is armed */
    FE_URING_RECV_LIMITED = 2, /* ... with a byte limit (u->recv_limit) */
    FE_URING_CANCELING = 4, /* a cancel of that receive is on its way */
    FE_URING_SEND = 8,      /* a send is in flight */
    FE_URING_POLL_OUT = 16, /* a writability poll is armed */
    FE_URING_STARVED = 32,  /* its receive ran out of buffers: armed again after the batch */
    FE_URING_CLOSED = 64,   /* released: freed when uring_refs reaches 0 */
    FE_URING_POLL_IN = 128, /* a readability poll is armed (not plain: fe_echo_path.h reads) */
    FE_URING_WATCH = 256,   /* a poll for its socket's error or hangup is armed */
    /* The watch came back for the peer's FIN alone (the kernel adds
     * POLLRDHUP to every poll): not armed again until c reads, which is
     * where a FIN is acted on, or it would come back at once, forever. */
    FE_URING_PEER_FIN = 512,
};

/* What the worker knows of one provided buffer. With incremental
 * consumption the kernel fills one buffer with the receives of several
 * connections, one after the other; it is given back once the kernel is done
 * with it and no send still goes out of it. */
struct fe_pbuf {
    uint32_t used;     /* bytes the kernel has filled, from its start */
    uint16_t users;    /* regions of it still in use (a direct send) */
    bool kernel_done;  /* the kernel has moved on to the next buffer */
};

struct fe_uring {
    struct io_uring ring;
    struct fe_pbuf *pbufs; /* buf_count of them */
    bool incremental;      /* IOU_PBUF_RING_INC: receives fill buffers incrementally */
    /* Multishot receives are armed with a byte limit (fe_conn_recv_limit);
     * cleared the first time the kernel refuses one (EINVAL: before 6.17). */
    bool recv_limit;
    bool ring_ready;
    struct io_uring_buf_ring *br;
    size_t br_bytes;
    char *bufs;
    size_t buf_size;
    unsigned buf_count; /* a power of two */
    /* Released connections whose completions are still due (prev/next). */
    fe_conn_list closed;
    size_t multishots; /* multishot receives armed */
    /* The ring's file table: operations on a registered socket skip the
     * kernel's fd lookup (and its reference count) every time. */
    uint32_t slots;         /* registered slots (0: none could be) */
    uint32_t next_slot;     /* slots below it have been handed out */
    uint32_t *free_slots;   /* ... and these given back */
    uint32_t free_count, free_capacity;
    /* Connections whose receive ended for want of a buffer, linked through
     * pending_next (which a TLS connection, never on the multishot path,
     * uses for the worker's TLS pending list instead). */
    fe_conn *starved;
    /* UDP sockets (bits: their index in w->udp) whose multishot poll is
     * armed, and those whose last batch was full: a poll reports arrivals,
     * not what is still queued, so those are served again after the batch,
     * without waiting. */
    uint64_t udp_armed, udp_more;
};

static inline uint64_t tag(fe_conn *c, unsigned op)
{
    return (uint64_t)(uintptr_t)c | op;
}

static inline char *buffer(const struct fe_uring *u, unsigned bid)
{
    return u->bufs + (size_t)bid * u->buf_size;
}

/* The res bytes a receive completion delivered into buffer bid, taken
 * for use until release(): where they start. */
static inline char *take(struct fe_uring *u, unsigned bid, int res, uint32_t cqe_flags)
{
    struct fe_pbuf *b = &u->pbufs[bid];
    char *data = buffer(u, bid) + b->used;
    b->used += (uint32_t)res;
    b->users++;
    if (!(cqe_flags & IORING_CQE_F_BUF_MORE))
        b->kernel_done = true;
    return data;
}

/* Ends one use of buffer bid; the last one gives it back to the kernel's
 * pool, once the kernel is done filling it. */
static inline void release(struct fe_uring *u, unsigned bid)
{
    struct fe_pbuf *b = &u->pbufs[bid];
    if (--b->users > 0 || !b->kernel_done)
        return;
    b->used = 0;
    b->kernel_done = false;
    io_uring_buf_ring_add(u->br, buffer(u, bid), (unsigned)u->buf_size, (unsigned short)bid,
                          io_uring_buf_ring_mask(u->buf_count), 0);
    io_uring_buf_ring_advance(u->br, 1);
}

/* Points sqe (prepared with c->fd) at c's registered slot, if it has one. */
static inline void target(struct io_uring_sqe *sqe, const fe_conn *c)
{
    if (c->fixed != FE_URING_NO_SLOT) {
        sqe->fd = (int)c->fixed;
        sqe->flags |= IOSQE_FIXED_FILE;
    }
}

/* Registers c's socket in a free slot of the file table; without one (all
 * taken, or the kernel refused), c uses its fd. */
static void register_file(struct fe_uring *u, fe_conn *c)
{
    c->fixed = FE_URING_NO_SLOT;
    uint32_t slot;
    if (u->free_count > 0)
        slot = u->free_slots[--u->free_count];
    else if (u->next_slot < u->slots)
        slot = u->next_slot++;
    else
        return;
    if (io_uring_register_files_update(&u->ring, slot, &c->fd, 1) == 1)
        c->fixed = slot;
    else
        u->free_slots[u->free_count++] = slot; /* (room: it was just taken from there or is new) */
}

/* Empties c's slot (the table holds a reference to the socket, which a
 * close of the fd alone would leave open) and makes it free again. */
static void unregister_file(struct fe_uring *u, fe_conn *c)
{
    if (c->fixed == FE_URING_NO_SLOT)
        return;
    int none = -1;
    io_uring_register_files_update(&u->ring, c->fixed, &none, 1);
    u->free_slots[u->free_count++] = c->fixed;
    c->fixed = FE_URING_NO_SLOT;
}

/* A submission entry; when the queue is full, what is in it is submitted
 * first. NULL only if the kernel refuses the submission. */
static inline struct io_uring_sqe *sqe_get(struct fe_uring *u)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    if (sqe == NULL && io_uring_submit(&u->ring) >= 0)
        sqe = io_uring_get_sqe(&u->ring);
    return sqe;
}

/* ---------------------------------------------------------------- closing */

/* Frees a released connection once the kernel owes it nothing more. */
static void free_if_done(fe_worker *w, fe_conn *c)
{
    if (c->uring_refs > 0)
        return;
    fe_conn_list_remove(&w->uring->closed, c);
    unregister_file(w->uring, c);
    close(c->fd);
    fe_conn_free(w, c);
}

static void close_conn(fe_worker *w, fe_conn *c, enum fe_close_reason reason)
{
    struct fe_uring *u = w->uring;
    fe_conn_release(w, c, reason);
    if (c->tls) { /* no operation in the ring uses the session */
        tls_pending_remove(w, c);
        fe_tp_tls_free(c->ssl);
        c->ssl = NULL;
    }
    c->uring_flags |= FE_URING_CLOSED;
    fe_conn_list_append(&u->closed, c);
    if (c->uring_refs == 0) {
        free_if_done(w, c);
        return;
    }
    /* Everything still in flight on its fd: the fd stays open (and its
     * number taken) until the last of them has come back. */
    struct io_uring_sqe *sqe = sqe_get(u);
    if (sqe == NULL)
        return; /* then they come back by themselves, at the latest at exit */
    bool fixed = c->fixed != FE_URING_NO_SLOT;
    io_uring_prep_cancel_fd(sqe, fixed ? (int)c->fixed : c->fd,
                            IORING_ASYNC_CANCEL_ALL | (fixed ? IORING_ASYNC_CANCEL_FD_FIXED : 0));
    io_uring_sqe_set_data64(sqe, tag(c, OP_CANCEL));
    c->uring_refs++;
}

/* ---------------------------------------------------------------- arming */

/* Arms c's multishot receive (c is plain). */
static bool arm_recv(fe_worker *w, fe_conn *c)
{
    struct fe_uring *u = w->uring;
    struct io_uring_sqe *sqe = sqe_get(u);
    if (sqe == NULL)
        return false;
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    target(sqe, c);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = FE_URING_GROUP;
    /* The kernel ends the receive by itself after this many bytes (its
     * optlen, which liburing 2.3 knows as file_index; Linux 6.17). */
    if (u->recv_limit) {
        sqe->file_index = (uint32_t)fe_conn_recv_limit(w, c, u->buf_size);
        c->uring_flags |= FE_URING_RECV_LIMITED;
    }
    io_uring_sqe_set_data64(sqe, tag(c, OP_RECV));
    c->uring_flags |= FE_URING_RECV;
    c->uring_refs++;
    u->multishots++;
    return true;
}

static bool cancel_recv(fe_worker *w, fe_conn *c)
{
    struct io_uring_sqe *sqe = sqe_get(w->uring);
    if (sqe == NULL)
        return false;
    io_uring_prep_cancel64(sqe, tag(c, OP_RECV), 0);
    io_uring_sqe_set_data64(sqe, tag(c, OP_CANCEL));
    c->uring_flags |= FE_URING_CANCELING;
    c->uring_refs++;
    return true;
}

/* Starts one send of buf (n bytes); dontwait: complete short rather than wait. */
static inline bool start_send(fe_worker *w, fe_conn *c, const char *buf, size_t n, bool dontwait)
{
    struct io_uring_sqe *sqe = sqe_get(w->uring);
    if (sqe == NULL)
        return false;
    io_uring_prep_send(sqe, c->fd, buf, n, MSG_NOSIGNAL | (dontwait ? MSG_DONTWAIT : 0));
    target(sqe, c);
    io_uring_sqe_set_data64(sqe, tag(c, OP_SEND));
    c->uring_flags |= FE_URING_SEND;
    c->uring_refs++;
    return true;
}

/* Arms a one-shot poll on c: for POLLIN, POLLOUT, or (0) only its
 * socket's error or hangup. */
static bool arm_poll(fe_worker *w, fe_conn *c, unsigned events)
{
    struct io_uring_sqe *sqe = sqe_get(w->uring);
    if (sqe == NULL)
        return false;
    unsigned op = events == POLLIN ? OP_POLL_IN : events == POLLOUT ? OP_POLL_OUT : OP_WATCH;
    io_uring_prep_poll_add(sqe, c->fd, events ? events : POLLERR | POLLHUP);
    target(sqe, c);
    io_uring_sqe_set_data64(sqe, tag(c, op));
    c->uring_flags |= op == OP_POLL_IN ? FE_URING_POLL_IN : op == OP_POLL_OUT ? FE_URING_POLL_OUT : FE_URING_WATCH;
    if (op == OP_POLL_IN)
        c->uring_flags &= (uint16_t)~FE_URING_PEER_FIN;
    c->uring_refs++;
    return true;
}

/* Whether c is on the bare echo path, where a completion needs no look
 * at the state machine: plain (fe_conn_plain) and not stopping. */
static inline bool bare(const fe_worker *w, const fe_conn *c)
{
    return !w->closing && fe_conn_plain(w, c) && c->sending.len == 0 && !c->tls;
}

/* Acts on what c wants next: FIN, close, the next send, and whether its
 * receive stays armed. Returns false if c was closed. */
static bool settle_tls(fe_worker *w, fe_conn *c, uint32_t want);

static bool settle(fe_worker *w, fe_conn *c)
{
    uint32_t want = 0;
    enum fe_close_reason reason = FE_CLOSE_RESET;
    for (;;) {
        enum fe_conn_step step = fe_conn_next(w, c, &want, &reason);
        if (step == FE_STEP_LINGER) {
            /* FIN (TLS: close_notify first), then linger reading until the
             * peer closes (see the epoll backend: a close with unread input
             * would send RST). */
            if (conn_end(c) == FE_TP_AGAIN_WRITE) {
                want = FE_WANT_WRITE; /* close_notify waits for room; then again */
                break;
            }
            fe_conn_lingering(w, c);
            c->tp_wants = 0; /* input is now discarded from the raw socket */
            continue;
        }
        if (step == FE_STEP_FINISH && !c->lingering && conn_end(c) == FE_TP_AGAIN_WRITE) {
            want = FE_WANT_WRITE; /* then FINISH again */
            break;
        }
        if (step != FE_STEP_WAIT) {
            close_conn(w, c, reason);
            return false;
        }
        break;
    }
    if (c->tls)
        return settle_tls(w, c, tls_interest(w, c, want));
    uint16_t f = c->uring_flags;
    bool ok = true;
    if (!(f & FE_URING_SEND)) {
        if (c->sending.len == 0 && c->out.len > 0)
            fe_conn_take_output(c);
        if (c->sending.len > 0)
            ok = start_send(w, c, c->sending.data + c->sending.start, c->sending.len, false);
        else if ((want & FE_WANT_WRITE) && !(f & FE_URING_POLL_OUT))
            ok = arm_poll(w, c, POLLOUT); /* the budget waits for the socket to drain */
    }
    bool reading = want & FE_WANT_READ, plain = bare(w, c);
    if (ok && reading && plain && !(f & (FE_URING_RECV | FE_URING_STARVED | FE_URING_POLL_IN)))
        ok = arm_recv(w, c);
    else if (ok && reading && !plain && !(f & (FE_URING_RECV | FE_URING_POLL_IN)))
        ok = arm_poll(w, c, POLLIN);
    if (ok && (f & FE_URING_RECV) && !(f & FE_URING_CANCELING) && (!reading || !plain)) {
        /* Off the plain path: what its multishot receive already delivered
         * is still taken, but no more. */
        ok = cancel_recv(w, c);
    }
    if (ok && !(c->uring_flags & (FE_URING_RECV | FE_URING_SEND | FE_URING_POLL_IN | FE_URING_POLL_OUT |
                                  FE_URING_STARVED | FE_URING_WATCH | FE_URING_PEER_FIN))) {
        /* Waiting for neither (the budget, or a cap that frees only as
         * memory does): as epoll reports an error or hangup whatever the
         * interest, a client that resets meanwhile must still be seen, or
         * what it holds is held for good. */
        ok = arm_poll(w, c, 0);
    }
    if (!ok) {
        close_conn(w, c, FE_CLOSE_NO_MEMORY); /* the ring refused a submission */
        return false;
    }
    return true;
}

/* A TLS connection moves its bytes through OpenSSL on readiness alone, as
 * under epoll: one-shot polls for what it wants (its transport's wants
 * included), never a ring send or receive, whose bytes OpenSSL would not
 * see. Returns false if c was closed. */
static bool settle_tls(fe_worker *w, fe_conn *c, uint32_t want)
{
    bool ok = true;
    if ((want & FE_WANT_WRITE) && !(c->uring_flags & FE_URING_POLL_OUT))
        ok = arm_poll(w, c, POLLOUT);
    if (ok && (want & FE_WANT_READ) && !(c->uring_flags & FE_URING_POLL_IN))
        ok = arm_poll(w, c, POLLIN);
    if (ok && !(c->uring_flags & (FE_URING_POLL_IN | FE_URING_POLL_OUT | FE_URING_WATCH | FE_URING_PEER_FIN)))
        ok = arm_poll(w, c, 0); /* waiting for neither: see settle */
    if (!ok) {
        close_conn(w, c, FE_CLOSE_NO_MEMORY); /* the ring refused a submission */
        return false;
    }
    return true;
}

/* TLS: input (or what OpenSSL holds, from the pending list): the
 * handshake's next step, or one read through OpenSSL, echoed at once. */
static void tls_readable(fe_worker *w, fe_conn *c)
{
    enum fe_close_reason reason = FE_CLOSE_RESET;
    int rc = 0;
    if (c->handshaking)
        rc = tls_handshake_step(w, c, &reason);
    else if (!w->closing || c->lingering) /* past the drain deadline what it sends is not echoed */
        rc = read_and_echo(w, c, true, true, &reason);
    if (rc != 0)
        close_conn(w, c, reason);
    else
        settle(w, c);
}

/* TLS: writability: the handshake's next step, or queued output (and a
 * half-sent record) out, and a read that had to send first goes on. */
static void tls_writable(fe_worker *w, fe_conn *c)
{
    enum fe_close_reason reason = FE_CLOSE_RESET;
    if (c->handshaking) {
        tls_readable(w, c);
        return;
    }
    if (c->space_wait)
        fe_conn_socket_drained(c);
    int rc = c->out.len > 0 ? flush(w, c, true) : 0;
    if (rc == 0 && c->tls_unsent)
        rc = peek_echo(w, c, c->tls_unsent_len, &reason);
    /* (as epoll reads only with read interest: not once it stops reading) */
    if (rc == 0 && (c->tp_wants & FE_WANT_WRITE) && !c->lingering && !c->peer_eof && !c->finishing && !w->closing)
        rc = read_and_echo(w, c, true, true, &reason);
    if (rc != 0)
        close_conn(w, c, reason);
    else
        settle(w, c);
}

/* Serves the TLS connections whose input OpenSSL holds: one read each (those
 * that still hold more go round again). */
static void serve_tls_pending(fe_worker *w)
{
    for (size_t n = w->tls_pending_count; n > 0 && w->tls_pending.head; n--) {
        fe_conn *c = w->tls_pending.head;
        tls_pending_remove(w, c);
        tls_readable(w, c);
    }
}

/* ---------------------------------------------------------------- completions */

/* n bytes arrived at data, in provided buffer bid (taken): straight back
 * out of it when nothing is queued, else queued (or framed, or discarded)
 * by the state machine. Returns -1 with *reason when c must close. */
static inline int input(fe_worker *w, fe_conn *c, unsigned bid, char *data, size_t n,
                        enum fe_close_reason *reason)
{
    struct fe_uring *u = w->uring;
    if (!(c->uring_flags & FE_URING_SEND) && c->sending.len == 0 && fe_conn_echoes_directly(w, c)) {
        fe_conn_received_direct(w, c, n);
        c->send_bid = (uint16_t)bid;
        c->send_off = (uint32_t)(data - buffer(u, bid));
        if (start_send(w, c, data, n, true))
            return 0; /* the buffer is released when the send is back */
        *reason = FE_CLOSE_NO_MEMORY;
        c->direct = 0;
        release(u, bid);
        return -1;
    }
    int rc = fe_conn_input(w, c, data, n, 0, reason);
    release(u, bid);
    return rc;
}

static void on_recv(fe_worker *w, fe_conn *c, const struct io_uring_cqe *cqe)
{
    struct fe_uring *u = w->uring;
    bool has_buffer = cqe->flags & IORING_CQE_F_BUFFER;
    unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
    int res = cqe->res;
    char *data = has_buffer ? take(u, bid, res > 0 ? res : 0, cqe->flags) : NULL;
    bool limited = c->uring_flags & FE_URING_RECV_LIMITED;
    if (!(cqe->flags & IORING_CQE_F_MORE)) {
        c->uring_flags &= (uint16_t)~(FE_URING_RECV | FE_URING_RECV_LIMITED);
        c->uring_refs--;
        u->multishots--;
    }
    if (c->uring_flags & FE_URING_CLOSED) {
        if (has_buffer)
            release(u, bid);
        free_if_done(w, c);
        return;
    }
    enum fe_close_reason reason = FE_CLOSE_RESET;
    int rc = 0;
    if (res > 0 && has_buffer) {
        rc = input(w, c, bid, data, (size_t)res, &reason);
    } else if (res == 0) {
        if (has_buffer)
            release(u, bid);
        rc = fe_conn_peer_eof(w, c, &reason);
    } else if (res == -ENOBUFS) {
        /* The pool is empty for now (buffers return as this batch's sends
         * complete): armed again after the batch. */
        if (!(c->uring_flags & FE_URING_STARVED)) {
            c->uring_flags |= FE_URING_STARVED;
            c->uring_refs++; /* the list's: a close meanwhile must not free c */
            c->pending_next = u->starved;
            u->starved = c;
        }
        return;
    } else if (res == -EINVAL && limited) {
        /* A kernel without the byte limit: armed again without it (the
         * cap may then be passed by what one batch delivers, at most the
         * buffer pool). Every receive armed with it meanwhile comes back
         * so, and is armed again the same way. */
        u->recv_limit = false;
    } else if (res != -ECANCELED) {
        rc = -1; /* ECONNRESET and other socket errors: nothing to save */
        reason = fe_conn_failed_reason(c);
    }
    if (rc != 0)
        close_conn(w, c, reason);
    else if (!(cqe->flags & IORING_CQE_F_MORE) || !bare(w, c))
        settle(w, c); /* a multishot receive still armed on a plain connection needs nothing */
}

static void on_send(fe_worker *w, fe_conn *c, const struct io_uring_cqe *cqe)
{
    struct fe_uring *u = w->uring;
    c->uring_flags &= (uint16_t)~FE_URING_SEND;
    c->uring_refs--;
    int res = cqe->res;
    bool direct = c->direct > 0;
    if (c->uring_flags & FE_URING_CLOSED) {
        if (direct)
            release(u, c->send_bid);
        free_if_done(w, c);
        return;
    }
    enum fe_close_reason reason = fe_conn_failed_reason(c);
    if (direct) {
        size_t sent = res > 0 ? (size_t)res : 0;
        if (res < 0 && res != -EAGAIN) {
            release(u, c->send_bid);
            c->direct = 0;
            close_conn(w, c, reason);
            return;
        }
        if (sent > 0)
            fe_conn_sent_direct(w, c, sent);
        /* The socket took less than all: keep the rest, free the buffer. */
        const char *rest = buffer(u, c->send_bid) + c->send_off + sent;
        int kept = c->direct > 0 ? fe_conn_keep_direct_rest(w, c, rest, c->direct) : 0;
        release(u, c->send_bid);
        if (kept != 0) {
            c->direct = 0;
            close_conn(w, c, FE_CLOSE_NO_MEMORY);
            return;
        }
        if (c->sending.len == 0 && bare(w, c) && (c->uring_flags & FE_URING_RECV))
            return; /* the echo is out and the receive still armed: the bare loop */
    } else {
        if (res < 0) {
            close_conn(w, c, reason);
            return;
        }
        fe_conn_sent(w, c, (size_t)res);
    }
    settle(w, c);
}

/* The completion of an operation that held no buffer (flag: what it set
 * in c->uring_flags). Returns false when c is closed (freed, if that was
 * its last): there is nothing more to do for it. */
static bool operation_done(fe_worker *w, fe_conn *c, uint16_t flag)
{
    c->uring_flags &= (uint16_t)~flag;
    c->uring_refs--;
    if (!(c->uring_flags & FE_URING_CLOSED))
        return true;
    free_if_done(w, c);
    return false;
}

/* The watch of a connection that waited for neither: its socket failed
 * or hung up (closed), or c moved on meanwhile. */
static void on_watch(fe_worker *w, fe_conn *c, int res)
{
    if (!operation_done(w, c, FE_URING_WATCH))
        return;
    /* An error, or a hangup while nothing reads (a read that is armed
     * reads to the end, as a lingering connection must, and closes then). */
    bool reading = c->uring_flags & (FE_URING_POLL_IN | FE_URING_RECV);
    if (res > 0 && ((res & POLLERR) || ((res & POLLHUP) && !reading))) {
        close_conn(w, c, fe_conn_failed_reason(c));
        return;
    }
    if (res > 0 && !(res & (POLLERR | POLLHUP)))
        c->uring_flags |= FE_URING_PEER_FIN;
    settle(w, c);
}

static void on_poll_out(fe_worker *w, fe_conn *c)
{
    if (!operation_done(w, c, FE_URING_POLL_OUT))
        return;
    if (c->tls) {
        tls_writable(w, c);
        return;
    }
    if (c->space_wait)
        fe_conn_socket_drained(c);
    /* Spliced: what its pipe holds goes out now (the poll is armed only
     * with no send in flight, so nothing of c's is ahead of it). */
    if (c->spliced && !(c->uring_flags & FE_URING_SEND) && splice_flush(w, c) != 0) {
        close_conn(w, c, fe_conn_failed_reason(c));
        return;
    }
    settle(w, c);
}

/* Input (or an error, or the peer's FIN) for a connection off the plain
 * path: one read, as the epoll backend reads; with a send of its own in
 * flight, whose bytes go first, what it reads queues behind them. */
static void on_poll_in(fe_worker *w, fe_conn *c)
{
    if (!operation_done(w, c, FE_URING_POLL_IN))
        return;
    if (c->tls) {
        tls_readable(w, c);
        return;
    }
    if (w->closing && !c->lingering) {
        settle(w, c); /* past the drain deadline: what it sends now is not echoed */
        return;
    }
    enum fe_close_reason reason = FE_CLOSE_RESET;
    bool may_write = !(c->uring_flags & FE_URING_SEND) && c->sending.len == 0;
    if (read_and_echo(w, c, false, may_write, &reason) != 0) {
        close_conn(w, c, reason);
        return;
    }
    settle(w, c);
}

static void on_cancel(fe_worker *w, fe_conn *c)
{
    /* (A close's cancel sets no flag; clearing CANCELING then is harmless.) */
    if (!operation_done(w, c, FE_URING_CANCELING))
        return;
    if (!(c->uring_flags & FE_URING_RECV))
        settle(w, c); /* the receive is gone: arm what is wanted now */
}

/* Arms the receives that ran out of buffers, now that the batch gave back
 * the buffers its sends were using. */
static void serve_starved(fe_worker *w)
{
    struct fe_uring *u = w->uring;
    fe_conn *c = u->starved;
    u->starved = NULL;
    while (c) {
        fe_conn *next = c->pending_next;
        c->pending_next = NULL;
        c->uring_flags &= (uint16_t)~FE_URING_STARVED;
        c->uring_refs--;
        if (c->uring_flags & FE_URING_CLOSED)
            free_if_done(w, c);
        else
            settle(w, c);
        c = next;
    }
}

/* Memory passed the plain bound: every multishot receive of this worker is
 * cancelled, so that what they deliver past the budget stays within one
 * batch (the buffer pool), however many connections are armed. */
static void cancel_multishots(fe_worker *w)
{
    for (fe_conn *c = w->active.head; c && w->uring->multishots > 0; c = c->next) {
        if ((c->uring_flags & (FE_URING_RECV | FE_URING_CANCELING)) == FE_URING_RECV && !cancel_recv(w, c))
            return; /* the ring refused: the next batch tries again */
    }
}

/* ---------------------------------------------------------------- UDP */

static inline uint64_t udp_tag(size_t i)
{
    return ((uint64_t)i << OP_SHIFT) | OP_UDP;
}

/* Arms a multishot poll for readability on w's UDP socket i; one that
 * cannot be is closed (served by the other workers' sockets on the same
 * address), as under epoll. */
static void arm_udp(fe_worker *w, size_t i)
{
    struct io_uring_sqe *sqe = sqe_get(w->uring);
    if (sqe == NULL) {
        close(w->udp[i].fd);
        w->udp[i].fd = -1;
        return;
    }
    io_uring_prep_poll_multishot(sqe, w->udp[i].fd, POLLIN);
    io_uring_sqe_set_data64(sqe, udp_tag(i));
    w->uring->udp_armed |= UINT64_C(1) << i;
}

static void watch_udp(fe_worker *w)
{
    for (size_t i = 0; i < w->udp_count; i++) {
        if (w->udp[i].fd >= 0)
            arm_udp(w, i);
    }
}

static void serve_udp(fe_worker *w, size_t i)
{
    uint64_t bit = UINT64_C(1) << i;
    if (w->udp[i].fd >= 0 && fe_udp_serve(w, &w->udp[i]))
        w->uring->udp_more |= bit;
    else
        w->uring->udp_more &= ~bit;
}

static void on_udp(fe_worker *w, const struct io_uring_cqe *cqe, size_t i)
{
    struct fe_uring *u = w->uring;
    if (!(cqe->flags & IORING_CQE_F_MORE)) {
        u->udp_armed &= ~(UINT64_C(1) << i);
        if (w->udp[i].fd >= 0) /* (the kernel ended it: overflow, or out of memory) */
            arm_udp(w, i);
    }
    serve_udp(w, i);
}

/* The sockets whose last batch was full, served again. */
static void serve_udp_more(fe_worker *w)
{
    uint64_t more = w->uring->udp_more;
    for (size_t i = 0; more != 0; i++, more >>= 1) {
        if (more & 1)
            serve_udp(w, i);
    }
}

/* The stop, before it closes w's UDP sockets (fe_udp_close): their polls,
 * which would hold the sockets open (and their ports bound) past close(),
 * are cancelled, at once, so that the close lets go of them. */
static void unwatch_udp(fe_worker *w)
{
    struct fe_uring *u = w->uring;
    for (size_t i = 0; i < w->udp_count; i++) {
        uint64_t bit = UINT64_C(1) << i;
        if (!(u->udp_armed & bit))
            continue;
        struct io_uring_sqe *sqe = sqe_get(u);
        if (sqe == NULL)
            break; /* the ring's exit cancels them */
        io_uring_prep_cancel64(sqe, udp_tag(i), 0);
        io_uring_sqe_set_data64(sqe, OP_IGNORED);
        u->udp_armed &= ~bit;
    }
    u->udp_more = 0;
    /* Submitted, and their completions run now (DEFER_TASKRUN defers
     * them to a wait): only then is each socket's last reference its fd. */
    io_uring_submit_and_get_events(&u->ring);
}

static bool arm_wake(fe_worker *w)
{
    struct io_uring_sqe *sqe = sqe_get(w->uring);
    if (sqe == NULL)
        return false;
    io_uring_prep_poll_multishot(sqe, w->wake_fd, POLLIN);
    io_uring_sqe_set_data64(sqe, OP_WAKE);
    return true;
}

static void adopt(fe_worker *w, const fe_handoff *h);

static const fe_backend uring_backend;

/* Acts on one completion. adopting: whether a wake-up adopts new
 * connections (not once the worker is exiting). */
static inline void dispatch(fe_worker *w, const struct io_uring_cqe *cqe, bool adopting)
{
    uint64_t data = io_uring_cqe_get_data64(cqe);
    fe_conn *c = (fe_conn *)(uintptr_t)(data & ~(uint64_t)OP_MASK);
    switch (data & OP_MASK) {
    case OP_RECV:
        on_recv(w, c, cqe);
        break;
    case OP_SEND:
        on_send(w, c, cqe);
        break;
    case OP_CANCEL:
        on_cancel(w, c);
        break;
    case OP_POLL_OUT:
        on_poll_out(w, c);
        break;
    case OP_POLL_IN:
        on_poll_in(w, c);
        break;
    case OP_UDP:
        on_udp(w, cqe, (size_t)(data >> OP_SHIFT));
        break;
    case OP_WATCH:
        on_watch(w, c, cqe->res);
        break;
    case OP_IGNORED:
        break;
    default: /* OP_WAKE */
        if (!adopting)
            break;
        {
            uint64_t ignored;
            while (read(w->wake_fd, &ignored, sizeof ignored) < 0 && errno == EINTR) {
            }
        }
        if (!(cqe->flags & IORING_CQE_F_MORE))
            arm_wake(w);
        fe_worker_adopt_queued(w, &uring_backend);
        break;
    }
}

/* Submits what is queued and waits up to ms (-1: without limit) for at
 * least one completion, reads the clock if timers need it (the result),
 * then acts on every completion there is. */
static bool run_once(fe_worker *w, int ms, bool adopting)
{
    struct fe_uring *u = w->uring;
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long long)(ms % 1000) * 1000000};
    io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, ms >= 0 ? &ts : NULL, NULL);
    /* -ETIME, -EINTR: nothing to act on; the loop looks at its timers. */
    bool clock_read = fe_worker_needs_clock(w);
    if (clock_read)
        w->now_ns = fe_now_ns();
    unsigned head, count = 0;
    io_uring_for_each_cqe(&u->ring, head, cqe)
    {
        dispatch(w, cqe, adopting);
        count++;
    }
    io_uring_cq_advance(&u->ring, count);
    return clock_read;
}

static void adopt(fe_worker *w, const fe_handoff *h)
{
    fe_conn *c = fe_conn_create(w, h);
    if (c == NULL) {
        fe_conn_drop_handoff(w, h, FE_CLOSE_NO_MEMORY);
        return;
    }
    register_file(w->uring, c);
    if (c->tls && (c->ssl = fe_tls_accept(w->server, c->fd)) == NULL) {
        close_conn(w, c, FE_CLOSE_NO_MEMORY);
        return;
    }
    settle(w, c); /* the client speaks first: its receive is armed */
}

/* At exit: every connection is released; waits for the completions that
 * still name one, so that each is freed (and its fd closed) safely. */
static void quiesce(fe_worker *w)
{
    for (int i = 0; i < FE_QUIESCE_TRIES && w->uring->closed.head; i++) {
        if (w->uring->starved)
            serve_starved(w); /* (every one is closed now: this frees them) */
        else
            run_once(w, 10, false);
    }
    /* Whatever is left (a kernel that never answered) is freed after the
     * ring is gone: fe_uring_worker_free. */
}

static const fe_backend uring_backend = {
    .adopt = adopt,
    .settle = settle,
    .close = close_conn,
    .serve_pending = serve_tls_pending,
    .unwatch_udp = unwatch_udp,
    .quiesce = quiesce,
};

void *fe_worker_main_uring(void *arg)
{
    fe_worker *w = arg;
    struct fe_uring *u = w->uring;
    w->now_ns = fe_now_ns();
    /* This thread becomes the ring's only submitter, and then registers
     * (a SINGLE_ISSUER ring takes registrations from it alone). */
    bool enabled = io_uring_enable_rings(&u->ring) == 0;
    if (enabled && io_uring_register_files_sparse(&u->ring, u->slots) != 0)
        u->slots = 0; /* every connection uses its fd */
    if (enabled && arm_wake(w)) {
        watch_udp(w);
        for (;;) {
            bool clock_read = run_once(w, u->udp_more ? 0 : fe_worker_wait_ms(w), true);
            if (u->udp_more)
                serve_udp_more(w);
            if (u->starved)
                serve_starved(w);
            if (u->multishots > 0 &&
                atomic_load_explicit(&w->server->memory_held, memory_order_relaxed) >= w->server->memory_plain_bound)
                cancel_multishots(w);
            if (fe_worker_after_batch(w, &uring_backend, clock_read))
                break;
        }
    }
    fe_worker_exit(w, &uring_backend);
    return NULL;
}

/* ---------------------------------------------------------------- setup */

static int setup_ring(struct io_uring *ring, unsigned extra_flags)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | extra_flags;
    p.cq_entries = FE_URING_CQ_ENTRIES;
    int rc = io_uring_queue_init_params(FE_URING_ENTRIES, ring, &p);
    if (rc == -EINVAL) { /* a kernel before 6.1: without SINGLE_ISSUER and DEFER_TASKRUN */
        memset(&p, 0, sizeof p);
        p.flags = IORING_SETUP_CQSIZE | extra_flags;
        p.cq_entries = FE_URING_CQ_ENTRIES;
        rc = io_uring_queue_init_params(FE_URING_ENTRIES, ring, &p);
    }
    return rc;
}

int fe_io_uring_check(char *why, size_t whylen)
{
    struct io_uring ring;
    int rc = setup_ring(&ring, 0);
    if (rc < 0) {
        snprintf(why, whylen, "io_uring_setup: %s%s", strerror(-rc),
                 rc == -EPERM    ? " (refused by a seccomp profile or kernel.io_uring_disabled)"
                 : rc == -ENOSYS ? " (this kernel has no io_uring)"
                                 : "");
        return -1;
    }
    const char *missing = NULL;
    struct io_uring_probe *probe = io_uring_get_probe_ring(&ring);
    if (!(ring.features & IORING_FEAT_EXT_ARG) || !(ring.features & IORING_FEAT_FAST_POLL))
        missing = "waiting with a timeout (IORING_FEAT_EXT_ARG) and fast poll, Linux 5.11+";
    else if (probe == NULL || !io_uring_opcode_supported(probe, IORING_OP_SEND) ||
             !io_uring_opcode_supported(probe, IORING_OP_RECV) ||
             !io_uring_opcode_supported(probe, IORING_OP_ASYNC_CANCEL))
        missing = "send, receive and cancel operations";
    if (probe)
        io_uring_free_probe(probe);
    if (missing == NULL) {
        /* Provided buffer rings (5.19) and multishot receives (6.0): the
         * receive is refused with EINVAL on a kernel before them. */
        struct io_uring_buf_reg reg = {0};
        void *mem = NULL;
        size_t bytes = sizeof(struct io_uring_buf) * 1;
        if (posix_memalign(&mem, (size_t)sysconf(_SC_PAGESIZE), bytes) != 0) {
            missing = "memory for a buffer ring";
        } else {
            reg.ring_addr = (uint64_t)(uintptr_t)mem;
            reg.ring_entries = 1;
            reg.bgid = FE_URING_GROUP;
            if (io_uring_register_buf_ring(&ring, &reg, 0) != 0)
                missing = "provided buffer rings, Linux 5.19+";
            else
                io_uring_unregister_buf_ring(&ring, FE_URING_GROUP);
            free(mem);
        }
    }
    io_uring_queue_exit(&ring);
    if (missing) {
        snprintf(why, whylen, "this kernel's io_uring lacks %s", missing);
        return -1;
    }
    return 0;
}

/* The provided buffers' size and count for cfg (a power of two). */
static void pool_shape(const fe_config *cfg, size_t *size, unsigned *count)
{
    *size = cfg->read_buffer_size < FE_URING_BUFFER_MAX ? cfg->read_buffer_size : FE_URING_BUFFER_MAX;
    *count = 1;
    while (*count * 2 * *size <= FE_URING_POOL_BYTES)
        *count *= 2;
}

size_t fe_uring_pool_growth(const fe_config *cfg)
{
    size_t size;
    unsigned count;
    pool_shape(cfg, &size, &count);
    /* Each buffer's bytes may land in a buffer of their own that grows by
     * doubling from 4 KiB (fe_buf). */
    return (size_t)count * (2 * size > 4096 ? 2 * size : 4096);
}

int fe_uring_worker_init(fe_worker *w, char *err, size_t errlen)
{
    struct fe_uring *u = calloc(1, sizeof *u);
    if (u == NULL) {
        snprintf(err, errlen, "allocating an io_uring");
        return -1;
    }
    w->uring = u;
    pool_shape(&w->server->cfg, &u->buf_size, &u->buf_count);
    struct rlimit nofile;
    u->slots = FE_URING_FILES;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < u->slots)
        u->slots = (uint32_t)nofile.rlim_cur;
    /* Disabled until the worker enables it: SINGLE_ISSUER then names the
     * worker thread, not this one. */
    int rc = setup_ring(&u->ring, IORING_SETUP_R_DISABLED);
    if (rc < 0) {
        errno = -rc;
        snprintf(err, errlen, "io_uring_setup: %s", strerror(-rc));
        return -1;
    }
    u->ring_ready = true;
    u->recv_limit = true;
    u->br_bytes = sizeof(struct io_uring_buf) * u->buf_count;
    void *br = mmap(NULL, u->br_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    u->bufs = malloc(u->buf_size * u->buf_count);
    u->pbufs = calloc(u->buf_count, sizeof *u->pbufs);
    /* Untouched until slots come back: no memory held for idle slots. */
    u->free_slots = malloc(sizeof *u->free_slots * (u->slots ? u->slots : 1));
    if (br == MAP_FAILED || u->bufs == NULL || u->pbufs == NULL || u->free_slots == NULL) {
        if (br != MAP_FAILED)
            munmap(br, u->br_bytes);
        errno = ENOMEM;
        snprintf(err, errlen, "allocating io_uring buffers");
        return -1;
    }
    u->br = br;
    struct io_uring_buf_reg reg = {
        .ring_addr = (uint64_t)(uintptr_t)br, .ring_entries = u->buf_count, .bgid = FE_URING_GROUP};
    /* Incremental consumption where the kernel has it (6.12): a buffer then
     * takes the receives of many connections, so a pool far smaller than
     * the connections ready in one batch does not run dry. (liburing 2.3
     * names the flags field `pad`.) */
    reg.pad = IOU_PBUF_RING_INC;
    rc = io_uring_register_buf_ring(&u->ring, &reg, 0);
    u->incremental = rc == 0;
    if (rc == -EINVAL) {
        reg.pad = 0;
        rc = io_uring_register_buf_ring(&u->ring, &reg, 0);
    }
    if (rc != 0) {
        munmap(br, u->br_bytes);
        u->br = NULL;
        errno = -rc;
        snprintf(err, errlen, "registering io_uring buffers: %s", strerror(-rc));
        return -1;
    }
    io_uring_buf_ring_init(u->br);
    for (unsigned i = 0; i < u->buf_count; i++)
        io_uring_buf_ring_add(u->br, buffer(u, i), (unsigned)u->buf_size, (unsigned short)i,
                              io_uring_buf_ring_mask(u->buf_count), (int)i);
    io_uring_buf_ring_advance(u->br, (int)u->buf_count);
    return 0;
}

void fe_uring_worker_free(fe_worker *w)
{
    struct fe_uring *u = w->uring;
    if (u == NULL)
        return;
    if (u->ring_ready)
        io_uring_queue_exit(&u->ring); /* cancels and waits for what was in flight */
    while (u->closed.head) {        /* only if the kernel never answered at exit */
        fe_conn *c = u->closed.head;
        fe_conn_list_remove(&u->closed, c); /* (its slot went with the ring) */
        close(c->fd);
        fe_conn_free(w, c);
    }
    if (u->br)
        munmap(u->br, u->br_bytes);
    free(u->bufs);
    free(u->pbufs);
    free(u->free_slots);
    free(u);
    w->uring = NULL;
}

#else /* !FE_WITH_URING */

int fe_io_uring_check(char *why, size_t whylen)
{
    snprintf(why, whylen, "this fastecho was built without liburing (FASTECHO_WITH_URING=OFF)");
    return -1;
}

size_t fe_uring_pool_growth(const fe_config *cfg)
{
    (void)cfg;
    return 0;
}

int fe_uring_worker_init(fe_worker *w, char *err, size_t errlen)
{
    (void)w;
    errno = ENOSYS;
    return fe_io_uring_check(err, errlen);
}

void fe_uring_worker_free(fe_worker *w)
{
    (void)w;
}

void *fe_worker_main_uring(void *arg)
{
    (void)arg;
    return NULL;
}

#endif /* FE_WITH_URING */
