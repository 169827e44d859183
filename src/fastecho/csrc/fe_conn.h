/*
 * fe_conn.h - a stream connection's state machine, kept apart from how its
 * bytes move (the backend, fe_loop_epoll.c, through fe_transport.h) and
 * from how they are framed (raw, or line mode's codec, fe_line.h).
 *
 * It owns accounting, the output buffer, backpressure (the output cap and
 * the memory budget), half-close, linger, the idle and abort timers, and
 * close reasons. The backend tells it what happened (bytes arrived, bytes
 * were sent, the peer finished) and asks what it wants next (fe_conn_next):
 * completion-shaped, like libuv's uv_read_start / uv_write, so that a
 * readiness backend and a completion backend can both drive it.
 *
 * Everything here runs on the connection's own worker thread.
 */
#ifndef FE_CONN_H
#define FE_CONN_H

#include "fe_internal.h"

#include <stddef.h>

/* Field order matters: everything the echo path touches per message sits
 * in the first 64-byte cache line; list links, timestamps and the peer are
 * only needed on open, close, and when timeouts or the budget are at work. */
struct fe_conn {
    int fd;
    uint8_t events;       /* the interest the backend registered (EPOLLIN/EPOLLOUT) */
    bool tls;             /* TLS transport (ssl), handshake done or not */
    bool finishing;       /* send what is queued, FIN, then close (finish_reason): after an
                             overlong line, a ws close frame or an HTTP answer */
    /* The states fe_conn_plain rules out, read as one word (any set: not plain). */
    union {
        struct {
            bool peer_eof;       /* client sent FIN: echo what is left, then close */
            bool lingering;      /* we sent FIN: discard input until the peer closes */
            bool budget_wait;    /* not read until the memory budget frees (w->budget_blocked) */
            bool space_wait;     /* budget spent, holds nothing: not read until its socket drains */
            bool awaiting_proxy; /* +proxy: its PROXY header has not all arrived (w->proxy_waiting) */
            bool handshaking;    /* TLS: the handshake has not finished (w->handshaking) */
            /* Two flags in one byte, so that the word still covers every flag. */
            bool tls_unsent : 1; /* TLS, budget spent: OpenSSL holds a peeked record half-sent
                                    (tls_unsent_len bytes, still unread): like queued output,
                                    it goes out, with the same bytes, before anything else */
            bool spliced : 1;    /* plain, bulk: echoes through its pipe (c->pipe, fe_splice.h) */
            bool splice_wanted : 1; /* bulk, but output was queued: takes a pipe once it is out */
            bool ws;             /* a ws listener's: HTTP upgrade, then frames (ws_state) */
        };
        uint64_t not_plain;
    };
    fe_buf out;           /* echoed bytes the socket has not taken yet */
    uint64_t bytes_in, bytes_out;
    /* cold */
    fe_conn *prev, *next; /* links in w->active or w->aborting */
    int64_t active_ns;    /* last time the client sent or took echo; aborting: since when */
    int64_t accepted_ns;
    fe_buf partial_line;  /* line mode: a line still waiting for its newline; +proxy:
                             the PROXY header so far, until it is whole */
    fe_peer peer;         /* the client: from its PROXY header, behind a proxy */
    fe_peer via;          /* the proxy that connected (family 0: none) */
    uint8_t listener;     /* index of the listener it came from */
    bool counted_per_ip;
    bool tls_got;         /* TLS: the last read returned bytes (so OpenSSL may hold more) */
    uint16_t tls_unsent_len;
    uint8_t tp_wants;     /* TLS: interest the transport needs besides the
                             connection's own (FE_WANT_*: the handshake's, or
                             writability for a read that must send first) */
    struct ssl_st *ssl;   /* TLS: the session (fe_transport.h) */
    fe_conn *pending_prev, *pending_next; /* links in w->tls_pending */
    bool tls_pending;     /* on w->tls_pending */
    uint8_t finish_reason; /* enum fe_close_reason, once finishing */
    bool ws_upgrading;    /* ws: its request head has not all arrived (w->ws_upgrading) */
    struct fe_ws_conn *ws_state; /* ws: the request parse, then the frame decoder */
    /* io_uring (fe_loop_uring.c): its one send in flight carries either
     * `direct` bytes straight from a provided buffer, or `sending`, queued
     * output taken out of `out` so that nothing moves it while the kernel
     * reads it. Both are output not yet sent, ahead of `out`. */
    fe_buf sending;
    uint32_t direct;
    uint16_t send_bid;    /* the provided buffer a direct send goes out of, */
    uint32_t send_off;    /* from this offset in it */
    uint32_t fixed;       /* its slot in the ring's file table (UINT32_MAX: none) */
    uint8_t uring_refs;   /* completions the kernel still owes that name c */
    uint16_t uring_flags; /* fe_loop_uring.c's FE_URING_* */
    uint8_t splice_short; /* spliced: splice reads in a row shorter than the read room */
    uint32_t piped;       /* spliced: bytes in its pipe (at most the pipe's capacity) */
    struct fe_pipe *pipe; /* spliced: its pipe, whose bytes are queued output */
};
/* One compare of not_plain must cover every flag of the union. */
_Static_assert(offsetof(struct fe_conn, out) == offsetof(struct fe_conn, not_plain) + sizeof(uint64_t),
               "fe_conn's flags outgrew the word that reads them all");

/* Links c at the tail of list (through c->prev/next), and unlinks it. */
static inline void fe_conn_list_append(fe_conn_list *list, fe_conn *c)
{
    c->prev = list->tail;
    c->next = NULL;
    if (list->tail)
        list->tail->next = c;
    else
        list->head = c;
    list->tail = c;
}

static inline void fe_conn_list_remove(fe_conn_list *list, fe_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        list->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        list->tail = c->prev;
    c->prev = c->next = NULL;
}

/* What the memory budget allows a connection's next read. */
enum fe_budget_verdict {
    FE_BUDGET_OK = 0,      /* read, up to the room granted */
    FE_BUDGET_PEEK,        /* budget spent, raw, holds nothing: echo only what
                              the socket takes now and leave the rest unread
                              (peek, send, then fe_conn_input what was sent) */
    FE_BUDGET_WAIT_MEMORY, /* holds buffers: wait until memory frees anywhere */
    FE_BUDGET_WAIT_SOCKET, /* holds nothing: wait until its socket drains */
    FE_BUDGET_SPLICE,      /* spliced: read into its pipe (fe_conn_spliced_in), whose
                              memory is held already, up to the room granted */
};

/* Interest the backend registers for a connection (fe_conn_next). */
enum { FE_WANT_READ = 1, FE_WANT_WRITE = 2 };

/* What a connection wants next (fe_conn_next). */
enum fe_conn_step {
    FE_STEP_WAIT,   /* register *interest and wait for it */
    FE_STEP_LINGER, /* send FIN now, call fe_conn_lingering, then ask again */
    FE_STEP_FINISH, /* done: send FIN unless lingering, then close (*reason) */
    FE_STEP_CLOSE,  /* close at once (*reason) */
};

/* A new connection from h, accounted (open event, active list; a TLS or
 * +proxy one opens only once its handshake or header is done, and a TLS
 * one needs its session set in c->ssl by the backend). Returns
 * NULL when out of memory; the backend then calls fe_conn_drop_handoff. */
fe_conn *fe_conn_create(fe_worker *w, const fe_handoff *h);

/* Closes a handed-off connection that never got an fe_conn (its fd too). */
void fe_conn_drop_handoff(fe_worker *w, const fe_handoff *h, enum fe_close_reason reason);

/* First half of a close: counts it (by reason), emits the close event and
 * releases the connection's place in the limits, so that a client that
 * sees its connection close also sees it counted. The backend then lets go
 * of the fd and calls fe_conn_free. */
void fe_conn_release(fe_worker *w, fe_conn *c, enum fe_close_reason reason);

/* Frees c's buffers (leaving the memory budget) and c itself. */
void fe_conn_free(fe_worker *w, fe_conn *c);

/* The plain case: raw framing, nothing queued, no pending state (FIN,
 * linger, budget wait, PROXY header, TLS handshake, a pipe), and the memory budget too far away
 * for one read to reach it. The functions below handle it inline, so that
 * the backend's echo path stays a bare loop; everything else takes their
 * general versions in fe_conn.c. */
static inline bool fe_conn_plain(const fe_worker *w, const fe_conn *c)
{
    const fe_server *s = w->server;
    return s->cfg.framing == FE_FRAMING_RAW && c->out.len == 0 &&
           c->not_plain == 0 &&
           atomic_load_explicit(&((fe_server *)s)->memory_held, memory_order_relaxed) <
               s->memory_plain_bound;
}

size_t fe_conn_read_room_general(const fe_worker *w, const fe_conn *c, enum fe_budget_verdict *how);

/* How many bytes the next read may take, within the output cap and the
 * memory budget (*how says how the budget allows them); after our FIN any
 * amount, since that input is discarded. 0: do not read now. */
static inline size_t fe_conn_read_room(const fe_worker *w, const fe_conn *c, enum fe_budget_verdict *how)
{
    if (fe_conn_plain(w, c)) {
        *how = FE_BUDGET_OK;
        return w->server->plain_read_room;
    }
    return fe_conn_read_room_general(w, c, how);
}

int fe_conn_input_general(fe_worker *w, fe_conn *c, const char *buf, size_t n, size_t sent,
                          enum fe_close_reason *reason);

/* n bytes arrived in buf, and the backend already sent the first `sent` of
 * them straight back (raw framing with nothing queued; else sent is 0).
 * Queues what remains to be echoed (framing it in line mode). Returns 0, or
 * -1 with *reason when the connection must close. Input after our FIN is
 * discarded here. */
static inline int fe_conn_input(fe_worker *w, fe_conn *c, const char *buf, size_t n, size_t sent,
                                enum fe_close_reason *reason)
{
    const fe_server *s = w->server;
    if (sent == n && s->cfg.framing == FE_FRAMING_RAW && !c->lingering && s->cfg.idle_timeout_ms <= 0) {
        /* All of it went straight back: only the counters change. */
        fe_counter_add(&w->bytes_received, (uint64_t)n);
        fe_counter_add(&w->bytes_sent, (uint64_t)n);
        c->bytes_in += (uint64_t)n;
        c->bytes_out += (uint64_t)n;
        return 0;
    }
    return fe_conn_input_general(w, c, buf, n, sent, reason);
}

/* Whether bytes that arrive now may be sent straight from the read buffer:
 * raw framing, nothing queued before them, and not discarding after our FIN. */
static inline bool fe_conn_echoes_directly(const fe_worker *w, const fe_conn *c)
{
    return w->server->cfg.framing == FE_FRAMING_RAW && c->out.len == 0 && !c->lingering && !c->ws;
}

void fe_conn_touch(fe_worker *w, fe_conn *c);

/* io_uring: n bytes arrived (fe_conn_echoes_directly held) and go straight
 * back in a send the backend now has in flight from where they arrived:
 * counted as received now, and as sent by fe_conn_sent_direct. */
static inline void fe_conn_received_direct(fe_worker *w, fe_conn *c, size_t n)
{
    fe_counter_add(&w->bytes_received, (uint64_t)n);
    c->bytes_in += (uint64_t)n;
    c->direct = (uint32_t)n;
    if (w->server->cfg.idle_timeout_ms > 0)
        fe_conn_touch(w, c);
}

/* io_uring: sent bytes of the direct send went out. */
static inline void fe_conn_sent_direct(fe_worker *w, fe_conn *c, size_t sent)
{
    fe_counter_add(&w->bytes_sent, (uint64_t)sent);
    c->bytes_out += (uint64_t)sent;
    c->direct -= (uint32_t)sent;
    if (w->server->cfg.idle_timeout_ms > 0)
        fe_conn_touch(w, c);
}

/* io_uring: the rest of a direct send, which the socket did not take, is
 * kept (copied into c->sending, which must be empty) to go out first; the
 * provided buffer it was in can then be reused. Returns 0, or -1 when out
 * of memory (the connection must close). */
int fe_conn_keep_direct_rest(fe_worker *w, fe_conn *c, const char *rest, size_t n);

/* io_uring: the byte limit for a multishot receive armed now for plain c,
 * which the kernel ends once it has delivered at least that many bytes,
 * each completion bringing at most `delivery`. What c ends up holding of
 * them (a direct send's rest in c->sending, the queue behind it in c->out)
 * then stays within the output cap, though a batch's receives may all
 * land while c's receive is being cancelled. The smallest limit is 1 (one
 * delivery), so a cap under four deliveries may be passed by up to one. */
size_t fe_conn_recv_limit(const fe_worker *w, const fe_conn *c, size_t delivery);

/* io_uring: moves the queued output into c->sending (which must be empty)
 * for the send about to start; new output queues in c->out meanwhile. */
void fe_conn_take_output(fe_conn *c);

/* A read just filled the whole read room (s->splice_read_room): c echoes
 * through a pipe from now on, if it may (plain raw TCP, not finishing, the
 * memory budget and the fd reserve allow a pipe). With output queued (or,
 * io_uring, being sent) it waits for that to be out (c->splice_wanted,
 * which fe_conn_next looks at), so that the pipe alone holds c's output.
 * Otherwise nothing changes: c keeps copying. */
void fe_conn_splice_begin(fe_worker *w, fe_conn *c);

/* Spliced: n bytes came from the socket into c's pipe. */
void fe_conn_spliced_in(fe_worker *w, fe_conn *c, size_t n);

/* Spliced: n bytes went from c's pipe to the socket. Once the pipe is empty
 * after several short reads in a row, c gives it back and copies again. */
void fe_conn_spliced_out(fe_worker *w, fe_conn *c, size_t n);

/* Whether input just framed left output to send at once (line mode, ws). */
static inline bool fe_conn_framed_output(const fe_worker *w, const fe_conn *c)
{
    return c->out.len > 0 && (w->server->cfg.framing != FE_FRAMING_RAW || c->ws);
}

/* ws, once the stop began: sends close 1001 "going away" to an upgraded
 * connection (it then finishes: FIN after the frame) and to those that
 * upgrade later. Call once per connection; the backend settles c after. */
void fe_conn_ws_going_away(fe_worker *w, fe_conn *c);

/* ws, at its idle timeout: an upgraded connection is sent close 1001 "idle
 * timeout" and finishes (FIN after the frame; closed as idle); returns
 * false when it must be closed at once instead (not upgraded, mid-frame,
 * already finishing, out of memory). The backend settles c after true. */
bool fe_conn_ws_idle(fe_worker *w, fe_conn *c);

/* +proxy: buf holds n bytes peeked (not yet consumed) from a connection
 * still awaiting its PROXY header. Sets *consume to how many of them belong
 * to the header: all n while it is incomplete, fewer once it is whole, so
 * that the client's own bytes after it stay in the kernel and are read
 * later like any others (within the output cap and the memory budget).
 * Once the header is whole, the client it names stands for the peer and
 * admission (allow list, per-address limit) runs against it. Returns 0
 * (also while the header is incomplete), or -1 with *reason:
 * proxy-invalid, not-allowed, per-ip-limit or no-memory. */
int fe_conn_proxy_input(fe_worker *w, fe_conn *c, const char *buf, size_t n, size_t *consume,
                        enum fe_close_reason *reason);

/* How many bytes the next read of a connection awaiting its PROXY header
 * may take: never past the longest header, so that what follows a header
 * is bounded by it. */
size_t fe_conn_proxy_room(const fe_worker *w, const fe_conn *c);

/* TLS: the handshake finished. c joins the served connections (its open
 * event names subject, the client certificate's, "" for none). */
void fe_conn_handshake_done(fe_worker *w, fe_conn *c, const char *subject, bool resumed);

/* The peer finished sending (FIN). Returns 0, or -1 with *reason. */
int fe_conn_peer_eof(fe_worker *w, fe_conn *c, enum fe_close_reason *reason);

/* sent bytes of the queued output went out (of c->sending first, under io_uring). */
void fe_conn_sent(fe_worker *w, fe_conn *c, size_t sent);

/* The socket took none of an echo while the budget is spent (PEEK): wait
 * for it to drain. fe_conn_socket_drained undoes it on writability. */
void fe_conn_socket_full(fe_worker *w, fe_conn *c);
void fe_conn_socket_drained(fe_conn *c);

/* The backend sent our FIN: from now on input is discarded until the peer
 * closes (or, after an overlong line, until the abort linger expires). */
void fe_conn_lingering(fe_worker *w, fe_conn *c);

enum fe_conn_step fe_conn_next_general(fe_worker *w, fe_conn *c, uint32_t *interest,
                                       enum fe_close_reason *reason);

/* What c wants next, after anything happened to it. */
static inline enum fe_conn_step fe_conn_next(fe_worker *w, fe_conn *c, uint32_t *interest,
                                             enum fe_close_reason *reason)
{
    if (!w->closing && fe_conn_plain(w, c)) {
        *interest = FE_WANT_READ;
        return FE_STEP_WAIT;
    }
    return fe_conn_next_general(w, c, interest, reason);
}

/* The connection whose timer has run out at w->now_ns (PROXY header and
 * TLS handshake timeouts, the overlong-line linger, then the idle timeout), with the reason to close it; NULL
 * when none has. Call until NULL, closing each. */
fe_conn *fe_conn_expired(fe_worker *w, enum fe_close_reason *reason);

/* Milliseconds until the next timer of w's connections runs out (capped at
 * 1000; -1: none), folding in the retry interval of budget waits. */
int64_t fe_conn_next_timer_ms(const fe_worker *w);

/* The reason to give a connection closed because the server stopped (or
 * to one closed on a socket error): its finish_reason when finishing. */
enum fe_close_reason fe_conn_stop_reason(const fe_conn *c);

/* The reason to give a connection closed because its socket failed (a
 * reset, an error): its finish_reason when finishing, else a reset. */
static inline enum fe_close_reason fe_conn_failed_reason(const fe_conn *c)
{
    return c->finishing ? fe_conn_stop_reason(c) : FE_CLOSE_RESET;
}

/* Whether budget waits are due for another look at w->now_ns (it then
 * records the look); memory freed by another worker wakes nobody here. */
bool fe_conn_budget_retry_due(fe_worker *w);

#endif /* FE_CONN_H */
