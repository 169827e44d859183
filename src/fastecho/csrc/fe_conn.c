/*
 * fe_conn.c - the stream connection's state machine (see fe_conn.h). No
 * socket I/O happens here except asking the kernel how much room a socket
 * has while the memory budget is spent.
 */
#include "fe_conn.h"
#include "fe_proxy.h"
#include "fe_splice.h"
#include "fe_ws.h"

#include <linux/sockios.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
    /* After an overlong line's error reply and FIN: how long the client gets
     * to close before we do. Its further input is discarded meanwhile. */
    FE_ABORT_LINGER_MS = 2000,
    /* While connections wait for the memory budget: how often their worker
     * looks again (memory freed on another worker wakes nobody here). */
    FE_BUDGET_RETRY_MS = 10,
    /* A spliced connection gives its pipe back, once the pipe is empty,
     * after this many splice reads in a row shorter than the read room:
     * the tail of a bulk message is one or two, small messages are all. */
    FE_SPLICE_SHORT_READS = 4,
    /* Room for line mode's error line ("error: line longer than N bytes\n"). */
    FE_LINE_ERROR_MAX = 96,
    /* A ws feed's output past its input (fe_ws_frame.h's bound), plus a
     * control frame of our own. */
    FE_WS_FRAME_OVERHEAD = FE_WS_FEED_SLACK + 2 + FE_WS_MAX_CONTROL,
};

static const char *const close_reason_names[FE_CLOSE_REASON_COUNT] = {
    [FE_CLOSE_NONE] = "",
    [FE_CLOSE_EOF] = "eof",
    [FE_CLOSE_RESET] = "reset",
    [FE_CLOSE_IDLE] = "idle",
    [FE_CLOSE_LINE_TOO_LONG] = "line-too-long",
    [FE_CLOSE_SHUTDOWN] = "shutdown",
    [FE_CLOSE_NO_MEMORY] = "no-memory",
    [FE_CLOSE_PROXY_INVALID] = "proxy-invalid",
    [FE_CLOSE_PROXY_TIMEOUT] = "proxy-timeout",
    [FE_CLOSE_NOT_ALLOWED] = "not-allowed",
    [FE_CLOSE_PER_IP_LIMIT] = "per-ip-limit",
    [FE_CLOSE_TLS_HANDSHAKE] = "tls-handshake",
    [FE_CLOSE_TLS_TIMEOUT] = "tls-handshake-timeout",
    [FE_CLOSE_TLS_ERROR] = "tls-error",
    [FE_CLOSE_HTTP] = "http",
    [FE_CLOSE_WS_TIMEOUT] = "ws-handshake-timeout",
    [FE_CLOSE_WS_CLOSE] = "ws-close",
    [FE_CLOSE_WS_PROTOCOL] = "ws-protocol",
};

const char *fe_close_reason_name(int reason)
{
    if (reason < 0 || reason >= FE_CLOSE_REASON_COUNT || close_reason_names[reason] == NULL)
        return "unknown";
    return close_reason_names[reason];
}

static bool line_mode(const fe_worker *w)
{
    return w->server->cfg.framing == FE_FRAMING_LINE;
}

/* A connection that sent an overlong line and got its error reply lives on
 * the aborting list until its client closes or FE_ABORT_LINGER_MS pass. */
static bool is_aborting(const fe_conn *c)
{
    return c->finishing && c->lingering;
}

static fe_conn_list *list_of(fe_worker *w, const fe_conn *c)
{
    if (c->awaiting_proxy)
        return &w->proxy_waiting;
    if (c->handshaking)
        return &w->handshaking;
    if (c->ws_upgrading)
        return &w->ws_upgrading;
    return is_aborting(c) ? &w->aborting : &w->active;
}

/* Records activity for the idle timeout: the connection moves to the tail
 * of the activity list. A no-op (no memory touched) when timeouts are off,
 * and for connections on the lists of other timers. */
void fe_conn_touch(fe_worker *w, fe_conn *c)
{
    if (w->server->cfg.idle_timeout_ms <= 0 || is_aborting(c) || c->ws_upgrading)
        return;
    c->active_ns = w->now_ns;
    if (c != w->active.tail) {
        fe_conn_list_remove(&w->active, c);
        fe_conn_list_append(&w->active, c);
    }
}

/* ---------------------------------------------------------------- accounting */

/* subject: the open event's client certificate subject (NULL: none). */
static void emit_event(fe_worker *w, const fe_conn *c, uint8_t kind, uint8_t reason, const char *subject)
{
    if (!w->ring_ready)
        return;
    fe_event ev = {
        .kind = kind,
        .reason = reason,
        .peer = c->peer,
        .via = c->via,
        .bytes_in = c->bytes_in,
        .bytes_out = c->bytes_out,
        .duration_ns = kind == FE_EVENT_CLOSE ? (uint64_t)(fe_now_ns() - c->accepted_ns) : 0,
    };
    if (subject != NULL)
        snprintf(ev.subject, sizeof ev.subject, "%s", subject);
    fe_ring_push(&w->events, &ev);
}

/* Records a change in the buffer capacity connections hold, for the memory
 * budget. Called only where a buffer may have been allocated, grown or
 * freed, so the plain echo path (which buffers nothing) never writes the
 * shared total. */
static void account_memory(fe_worker *w, size_t before, size_t after)
{
    if (after > before)
        atomic_fetch_add_explicit(&w->server->memory_held, after - before, memory_order_relaxed);
    else if (after < before)
        atomic_fetch_sub_explicit(&w->server->memory_held, before - after, memory_order_relaxed);
}

static size_t held(const fe_conn *c)
{
    size_t decoder = c->ws_state && c->ws_state->upgraded ? fe_ws_decoder_held(&c->ws_state->dec) : 0;
    return c->out.capacity + c->sending.capacity + c->partial_line.capacity + decoder;
}

/* Sends what is queued, then FIN, then closes for reason. */
static void finish(fe_conn *c, enum fe_close_reason reason)
{
    c->finishing = true;
    c->finish_reason = (uint8_t)reason;
}

/* Records how c now waits for the budget; counts each wait as it begins. */
static void set_budget_wait(fe_worker *w, fe_conn *c, enum fe_budget_verdict how)
{
    bool memory = how == FE_BUDGET_WAIT_MEMORY, socket = how == FE_BUDGET_WAIT_SOCKET;
    if ((memory && !c->budget_wait) || (socket && !c->space_wait))
        fe_counter_add(&w->budget_waits, 1);
    if (memory != c->budget_wait)
        w->budget_blocked += memory ? 1 : (size_t)-1;
    c->budget_wait = memory;
    c->space_wait = socket;
}

/* ---------------------------------------------------------------- life */

fe_conn *fe_conn_create(fe_worker *w, const fe_handoff *h)
{
    fe_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->fd = h->fd;
    c->counted_per_ip = h->counted_per_ip;
    c->peer = h->peer;
    c->accepted_ns = h->accepted_ns;
    c->active_ns = w->now_ns;
    c->awaiting_proxy = h->proxy;
    c->tls = h->tls;
    c->ws = h->ws;
    c->ws_upgrading = h->ws;
    if (h->ws && (c->ws_state = calloc(1, sizeof *c->ws_state)) == NULL) {
        free(c);
        return NULL;
    }
    c->handshaking = h->tls && !h->proxy;
    c->tp_wants = c->handshaking ? FE_WANT_READ : 0; /* the client speaks first */
    /* Its handshake timeout runs from now: w->now_ns is stale while no timer
     * runs, and the accept time would put it out of order on w->handshaking
     * behind connections that waited less in the queue. */
    if (c->handshaking || c->ws_upgrading)
        c->active_ns = fe_now_ns();
    c->listener = h->listener;
    fe_conn_list_append(list_of(w, c), c);
    w->conn_count++;
    if (!c->awaiting_proxy && !c->handshaking) /* else once its header or handshake is done */
        emit_event(w, c, FE_EVENT_OPEN, FE_CLOSE_NONE, NULL);
    return c;
}

void fe_conn_drop_handoff(fe_worker *w, const fe_handoff *h, enum fe_close_reason reason)
{
    fe_counter_add(&w->closes[reason], 1);
    if (h->counted_per_ip)
        fe_ip_table_release(&w->server->ip_table, &h->peer);
    atomic_fetch_sub_explicit(&w->server->open_connections, 1, memory_order_relaxed);
    fe_counter_add(&w->connections_closed, 1);
    fe_counter_add(&w->listener_closed[h->listener], 1);
    close(h->fd);
}

void fe_conn_release(fe_worker *w, fe_conn *c, enum fe_close_reason reason)
{
    fe_server *s = w->server;
    fe_conn_list_remove(list_of(w, c), c);
    w->conn_count--;
    fe_counter_add(&w->closes[reason < FE_CLOSE_REASON_COUNT ? reason : FE_CLOSE_RESET], 1);
    emit_event(w, c, FE_EVENT_CLOSE, (uint8_t)reason, NULL);
    if (c->counted_per_ip)
        fe_ip_table_release(&s->ip_table, &c->peer);
    atomic_fetch_sub_explicit(&s->open_connections, 1, memory_order_relaxed);
    fe_counter_add(&w->connections_closed, 1);
    fe_counter_add(&w->listener_closed[c->listener], 1);
    set_budget_wait(w, c, FE_BUDGET_OK);
}

/* c gives its pipe back (to the pool, if empty) and copies from now on. */
static void splice_end(fe_worker *w, fe_conn *c)
{
    account_memory(w, c->pipe->capacity, 0);
    fe_splice_pipe_put(w, c->pipe, c->piped == 0);
    c->pipe = NULL;
    c->piped = 0;
    c->spliced = false;
}

void fe_conn_free(fe_worker *w, fe_conn *c)
{
    if (c->spliced) /* a pipe with bytes left in it is closed, never pooled */
        splice_end(w, c);
    account_memory(w, held(c), 0);
    fe_buf_free(&c->out);
    fe_buf_free(&c->sending);
    fe_buf_free(&c->partial_line);
    if (c->ws_state) {
        if (c->ws_state->upgraded)
            fe_ws_decoder_free(&c->ws_state->dec);
        free(c->ws_state);
    }
    free(c);
}

/* ---------------------------------------------------------------- room to read */

static size_t worst_growth(const fe_worker *w, const fe_conn *c, size_t n);

/* Whether c has output queued, or (io_uring) being sent. */
static bool output_queued(const fe_conn *c)
{
    return c->out.len > 0 || c->sending.len > 0 || c->direct > 0;
}

/* io_uring: the buffer capacity c's send holds, or will once the rest of a
 * direct send is kept (copied into an empty c->sending, fe_buf's rounding). */
static size_t send_held(const fe_conn *c)
{
    static const fe_buf empty;
    return c->sending.capacity + (c->direct > 0 ? fe_buf_capacity_after(&empty, c->direct) : 0);
}

/* Whether the budget has room for n more bytes while now_held are held
 * (what the reads that check it may take: io_uring keeps memory_reserve). */
static bool budget_fits(const fe_server *s, size_t now_held, size_t n)
{
    size_t budget = s->cfg.max_memory - s->memory_reserve;
    return s->cfg.max_memory == 0 || (now_held <= budget && budget - now_held >= n);
}

/* How many bytes may be read now without the output passing the cap. In
 * line mode each input byte can become 1 + suffix_len output bytes. */
static size_t cap_room(const fe_worker *w, const fe_conn *c)
{
    const fe_server *s = w->server;
    size_t limit = s->cfg.max_pending_output;
    /* io_uring: its send in flight too, counted as the memory it holds until
     * it is all sent (which it keeps, as a send may not move it). */
    size_t beside = send_held(c);
    size_t queued = c->out.len + beside;
    if (queued >= limit)
        return 0;
    size_t room = limit - queued;
    if (line_mode(w))
        room /= 1 + s->line_format.suffix_len;
    room = room < s->cfg.read_buffer_size ? room : s->cfg.read_buffer_size;
    /* io_uring, raw, with a send of its own out: its output is then two
     * buffers, each grown by doubling, so the queue behind the send may
     * grow only as far as the cap leaves beside it (halving: only near the
     * cap). Framed output (line mode, ws) is capped in bytes, as under
     * epoll: its worst growth counts a whole held message or line, and
     * waiting for that to fit would stop reading a client that is still
     * sending it, until its echo is read. */
    if (beside > 0 && !line_mode(w) && !c->ws) {
        while (room > 0 && c->out.capacity + worst_growth(w, c, room) > limit - beside)
            room /= 2;
    }
    return room;
}

/* ws: the most output a read of n bytes can make: those bytes (a frame's
 * payload comes back as long as it went in, its header no longer), a
 * buffered message that they complete with its header, a pong or close,
 * and while the request head is arriving, the answer with the page. */
static size_t ws_worst_output(const fe_worker *w, const fe_conn *c, size_t n)
{
    const fe_ws_conn *ws = c->ws_state;
    if (!ws->upgraded)
        return FE_WS_ANSWER_HEAD_MAX + w->server->ws_page_len + n;
    return n + fe_ws_decoder_held(&ws->dec) + FE_WS_FRAME_OVERHEAD;
}

/* The most buffer capacity a read of n bytes can add to c: all of it
 * buffered in raw mode; in line mode, every byte a line of its own (plus
 * the pending line and the error line) and the tail kept as partial; for
 * ws, its output and its request head or message buffer growing by n. */
static size_t worst_growth(const fe_worker *w, const fe_conn *c, size_t n)
{
    if (c->ws) {
        size_t out_growth = fe_buf_capacity_after(&c->out, ws_worst_output(w, c, n)) - c->out.capacity;
        if (c->ws_upgrading)
            return out_growth + fe_buf_capacity_after(&c->partial_line, n) - c->partial_line.capacity;
        return out_growth + 2 * n + 4096; /* the message buffer doubling past n */
    }
    if (!line_mode(w))
        return fe_buf_capacity_after(&c->out, n) - c->out.capacity;
    size_t suffix_len = w->server->line_format.suffix_len;
    size_t out_bytes = c->partial_line.len + n * (1 + suffix_len) + FE_LINE_ERROR_MAX;
    return fe_buf_capacity_after(&c->out, out_bytes) - c->out.capacity +
           fe_buf_capacity_after(&c->partial_line, n) - c->partial_line.capacity;
}

/* Payload bytes c's socket can surely take at once: half the free send
 * buffer, since the kernel also charges its own overhead against it. */
static size_t send_space(const fe_conn *c)
{
    int sndbuf = 0, queued = 0;
    socklen_t len = sizeof sndbuf;
    if (getsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) != 0 ||
        ioctl(c->fd, SIOCOUTQ, &queued) != 0 || sndbuf <= queued)
        return 0;
    return (size_t)(sndbuf - queued) / 2;
}

/* How many of want bytes may be read without the memory budget being
 * passed (want itself when no budget is set), and how (*how); 0 means wait.
 * Once the budget is spent, a connection that holds nothing still echoes
 * what its socket can take at once (exactly, by peeking, in raw mode, over
 * TCP or TLS; in line mode, reads sized to half the free send buffer): a
 * client that reads
 * its echo keeps being served, and one that does not leaves its bytes in
 * the kernel. */
static size_t budget_room(const fe_worker *w, const fe_conn *c, size_t want, enum fe_budget_verdict *how)
{
    const fe_server *s = w->server;
    *how = FE_BUDGET_OK;
    if (s->cfg.max_memory == 0)
        return want;
    size_t now_held = atomic_load_explicit(&((fe_server *)s)->memory_held, memory_order_relaxed);
    for (size_t n = want; n > 0 && budget_fits(s, now_held, 0); n /= 2) { /* halving: only near the budget */
        if (budget_fits(s, now_held, worst_growth(w, c, n)))
            return n;
    }
    /* Queued output frees itself as the client reads: wait for that. A
     * pending partial line frees only when its newline is read, so it may
     * go on filling the room it already holds (the newline may be next),
     * but not grow: then it waits like the others. */
    if (c->out.capacity > 0 || c->sending.capacity > 0 || c->direct > 0) {
        /* (io_uring: a direct send in flight is output held, too; a peek
         * must not write past it) */
        *how = FE_BUDGET_WAIT_MEMORY;
        return 0;
    }
    if (c->ws && c->ws_state->upgraded && fe_ws_decoder_held(&c->ws_state->dec) > 0) {
        /* A held message, like a pending line: it may fill the room it
         * holds (its last bytes may be next), but not grow. */
        size_t held_room = fe_ws_decoder_room(&c->ws_state->dec);
        if (held_room == 0) {
            *how = FE_BUDGET_WAIT_MEMORY;
            return 0;
        }
        want = want < held_room ? want : held_room;
    }
    if (line_mode(w) && c->partial_line.capacity > 0) {
        size_t held_room = c->partial_line.capacity - c->partial_line.len;
        if (held_room == 0) {
            *how = FE_BUDGET_WAIT_MEMORY;
            return 0;
        }
        want = want < held_room ? want : held_room;
    }
    if (c->space_wait) {
        *how = FE_BUDGET_WAIT_SOCKET;
        return 0;
    }
    if (!line_mode(w) && !c->ws) {
        *how = FE_BUDGET_PEEK;
        return want;
    }
    size_t free_bytes = send_space(c);
    if (free_bytes == 0) {
        *how = FE_BUDGET_WAIT_SOCKET;
        return 0;
    }
    /* At least one byte: writability (what the wait is for) promises only
     * about a third of the buffer, which may not hold a whole suffix. */
    size_t space = line_mode(w) ? free_bytes / (1 + s->line_format.suffix_len) : free_bytes;
    space = space ? space : 1;
    return space < want ? space : want;
}

size_t fe_conn_read_room_general(const fe_worker *w, const fe_conn *c, enum fe_budget_verdict *how)
{
    *how = FE_BUDGET_OK;
    if (c->lingering) /* input after our FIN is discarded: it needs no room */
        return w->server->cfg.read_buffer_size;
    if (c->spliced) {
        /* The pipe's memory is held already, and it holds at most the
         * cap. It fills only while nothing is queued (io_uring: nor being
         * sent), and empties before it fills again: bytes leave in the
         * order they came. */
        *how = FE_BUDGET_SPLICE;
        return !output_queued(c) && c->piped == 0 ? c->pipe->capacity : 0;
    }
    if (c->splice_wanted && output_queued(c))
        return 0; /* bulk: no more copying; its pipe comes once the queue is out */
    size_t room = cap_room(w, c);
    if (c->ws_upgrading) {
        /* Never past the longest request head: the parser answers 400 on
         * reaching it, and frames that follow the head wait in the kernel. */
        size_t head_room = w->server->cfg.ws_max_header - c->partial_line.len; /* > 0 until answered */
        room = room < head_room ? room : head_room;
    }
    return room ? budget_room(w, c, room, how) : 0;
}

/* ---------------------------------------------------------------- events */

void fe_conn_ws_going_away(fe_worker *w, fe_conn *c)
{
    fe_ws_conn *ws = c->ws_state;
    if (!c->ws || !ws->upgraded || c->finishing || ws->going_away)
        return;
    size_t before = held(c);
    int rc = fe_ws_close(&ws->dec, FE_WS_CLOSE_GOING_AWAY, "going away", &c->out);
    account_memory(w, before, held(c));
    if (rc == 1) {
        /* A streamed frame's echo is part-way out: the close follows it,
         * from the fe_ws_feed that ends it (ws_frames_input); reading goes
         * on meanwhile, until the drain deadline. */
        ws->going_away = true;
        return;
    }
    if (rc == 0)
        fe_counter_add(&w->ws_closes[fe_ws_close_slot(FE_WS_CLOSE_GOING_AWAY)], 1);
    finish(c, rc == 0 ? FE_CLOSE_SHUTDOWN : FE_CLOSE_NO_MEMORY); /* no memory: FIN alone */
}

bool fe_conn_ws_idle(fe_worker *w, fe_conn *c)
{
    fe_ws_conn *ws = c->ws_state;
    if (!c->ws || !ws->upgraded || c->finishing)
        return false;
    size_t before = held(c);
    int rc = fe_ws_close(&ws->dec, FE_WS_CLOSE_GOING_AWAY, "idle timeout", &c->out);
    account_memory(w, before, held(c));
    if (rc != 0) /* mid-frame (deferred) or out of memory: closed at once, as plain TCP is */
        return false;
    fe_counter_add(&w->ws_closes[fe_ws_close_slot(FE_WS_CLOSE_GOING_AWAY)], 1);
    finish(c, FE_CLOSE_IDLE);
    fe_conn_touch(w, c); /* to the tail: another idle period before it is cut off unflushed */
    return true;
}

/* ws, upgraded: frames in, echoes (and pongs, and at most one close frame)
 * out. A close frame appended ends the connection after it is sent. */
static int ws_frames_input(fe_worker *w, fe_conn *c, const char *buf, size_t n, enum fe_close_reason *reason)
{
    fe_ws_feed_info info = {0};
    size_t before = held(c);
    int rc = fe_ws_feed(&c->ws_state->dec, (const uint8_t *)buf, n, &c->out, &info);
    account_memory(w, before, held(c));
    if (info.messages)
        fe_counter_add(&w->ws_messages, info.messages);
    if (info.pings)
        fe_counter_add(&w->ws_pings, info.pings);
    if (rc == FE_WS_NO_MEMORY) {
        *reason = FE_CLOSE_NO_MEMORY;
        return -1;
    }
    if (rc == FE_WS_CLOSE && !c->finishing) {
        fe_counter_add(&w->ws_closes[fe_ws_close_slot(info.close_code)], 1);
        finish(c, info.peer_closed               ? FE_CLOSE_WS_CLOSE
                  : c->ws_state->going_away ? FE_CLOSE_SHUTDOWN /* the stop's deferred 1001 */
                                            : FE_CLOSE_WS_PROTOCOL);
    }
    return 0;
}

/* ws, before the upgrade: the request head gathers in c->partial_line until
 * the parser answers. Anything but an upgrade is answered and closed; an
 * upgrade's answer goes out, and the bytes after the head are frames. */
static int ws_request_input(fe_worker *w, fe_conn *c, const char *buf, size_t n, enum fe_close_reason *reason)
{
    fe_server *s = w->server;
    fe_ws_conn *ws = c->ws_state;
    size_t before = held(c);
    int rc = fe_buf_append(&c->partial_line, buf, n);
    account_memory(w, before, held(c));
    if (rc != 0) {
        *reason = FE_CLOSE_NO_MEMORY;
        return -1;
    }
    const char *head = c->partial_line.data + c->partial_line.start;
    size_t len = c->partial_line.len;
    enum fe_ws_answer answer = fe_ws_http_parse(&s->ws_policy, head, len, &ws->req);
    if (answer == FE_WS_ANSWER_NONE)
        return 0;
    fe_conn_list_remove(&w->ws_upgrading, c);
    c->ws_upgrading = false;
    c->active_ns = w->now_ns;
    fe_conn_list_append(list_of(w, c), c);
    fe_counter_add(&w->ws_http[fe_ws_http_kind_of(answer)], 1);
    before = held(c);
    rc = fe_ws_http_answer(&ws->req, s->ws_page, s->ws_page_len, &c->out);
    if (rc == 0 && answer == FE_WS_ANSWER_UPGRADE) {
        fe_ws_decoder_init(&ws->dec, s->cfg.ws_max_message);
        ws->upgraded = true;
    }
    account_memory(w, before, held(c));
    if (rc != 0) {
        *reason = FE_CLOSE_NO_MEMORY;
        return -1;
    }
    if (!ws->upgraded) {
        finish(c, FE_CLOSE_HTTP); /* a request body, if any, is never read */
    } else if (len > ws->req.head_len) {
        /* Frames that came with the head: fed from partial_line, which is
         * freed only afterwards. */
        rc = ws_frames_input(w, c, head + ws->req.head_len, len - ws->req.head_len, reason);
    }
    before = held(c);
    fe_buf_free(&c->partial_line);
    account_memory(w, before, held(c));
    if (rc == 0 && ws->upgraded && atomic_load(&s->state) != FE_RUNNING)
        fe_conn_ws_going_away(w, c); /* upgraded as the stop began */
    return rc;
}

int fe_conn_input_general(fe_worker *w, fe_conn *c, const char *buf, size_t n, size_t sent,
                          enum fe_close_reason *reason)
{
    if (c->lingering)
        return 0; /* after our FIN, input is discarded, not echoed: not activity */
    fe_conn_touch(w, c);
    fe_counter_add(&w->bytes_received, (uint64_t)n);
    c->bytes_in += (uint64_t)n;
    if (sent > 0) {
        fe_counter_add(&w->bytes_sent, (uint64_t)sent);
        c->bytes_out += (uint64_t)sent;
    }
    if (c->ws)
        return c->ws_upgrading ? ws_request_input(w, c, buf, n, reason) : ws_frames_input(w, c, buf, n, reason);
    if (line_mode(w)) {
        size_t before = held(c);
        int rc = fe_line_feed(&w->server->line_format, &c->partial_line, buf, n, &c->out);
        account_memory(w, before, held(c));
        if (rc == FE_LINE_NO_MEMORY) {
            *reason = FE_CLOSE_NO_MEMORY;
            return -1;
        }
        if (rc == FE_LINE_TOO_LONG) {
            finish(c, FE_CLOSE_LINE_TOO_LONG); /* reading stops; the error line goes out, then close */
            fe_counter_add(&w->lines_too_long, 1);
        }
        return 0;
    }
    if (sent < n) { /* raw: what the socket did not take waits in out */
        size_t before = c->out.capacity;
        if (fe_buf_append(&c->out, buf + sent, n - sent) != 0) {
            *reason = FE_CLOSE_NO_MEMORY;
            return -1;
        }
        account_memory(w, before, c->out.capacity);
    }
    return 0;
}

size_t fe_conn_proxy_room(const fe_worker *w, const fe_conn *c)
{
    size_t room = FE_PROXY_MAX_HEADER - c->partial_line.len; /* > 0 while awaiting */
    return room < w->server->cfg.read_buffer_size ? room : w->server->cfg.read_buffer_size;
}

/* Applies the allow list and the per-address limit to the client a PROXY
 * header named, as the acceptor does for a direct one. */
static enum fe_close_reason admit_proxied(fe_worker *w, fe_conn *c)
{
    const fe_server *s = w->server;
    if (s->cfg.allow_count > 0 && !fe_cidr_contains_any(s->allow, s->cfg.allow_count, &c->peer))
        return FE_CLOSE_NOT_ALLOWED;
    if (s->cfg.max_connections_per_ip > 0) {
        if (!fe_ip_table_acquire(&w->server->ip_table, &c->peer, s->cfg.max_connections_per_ip))
            return FE_CLOSE_PER_IP_LIMIT;
        c->counted_per_ip = true;
    }
    return FE_CLOSE_NONE;
}

int fe_conn_proxy_input(fe_worker *w, fe_conn *c, const char *buf, size_t n, size_t *consume,
                        enum fe_close_reason *reason)
{
    size_t before = held(c), had = c->partial_line.len;
    *consume = n;
    int appended = fe_buf_append(&c->partial_line, buf, n);
    account_memory(w, before, held(c));
    if (appended != 0) {
        *reason = FE_CLOSE_NO_MEMORY;
        return -1;
    }
    fe_proxy_header header;
    const uint8_t *bytes = (const uint8_t *)c->partial_line.data + c->partial_line.start;
    int status = fe_proxy_parse(bytes, c->partial_line.len, &header);
    if (status == FE_PROXY_INCOMPLETE && c->partial_line.len < FE_PROXY_MAX_HEADER)
        return 0;
    if (status != FE_PROXY_DONE) {
        *reason = FE_CLOSE_PROXY_INVALID;
        return -1;
    }
    /* The header is whole: the bytes after it are the client's, left unread;
     * from now on the connection is its client's. */
    *consume = header.length - had;
    account_memory(w, c->partial_line.capacity, 0);
    fe_buf_free(&c->partial_line);
    if (!header.local) {
        c->via = c->peer;
        c->peer = header.source;
    }
    fe_conn_list_remove(&w->proxy_waiting, c);
    c->awaiting_proxy = false;
    c->handshaking = c->tls; /* its handshake, and the timeout for it, start now */
    c->tp_wants = c->tls ? FE_WANT_READ : 0;
    c->active_ns = w->now_ns;
    fe_conn_list_append(list_of(w, c), c);
    *reason = admit_proxied(w, c);
    if (*reason != FE_CLOSE_NONE)
        return -1;
    if (!c->tls)
        emit_event(w, c, FE_EVENT_OPEN, FE_CLOSE_NONE, NULL);
    return 0;
}

void fe_conn_handshake_done(fe_worker *w, fe_conn *c, const char *subject, bool resumed)
{
    fe_conn_list_remove(&w->handshaking, c);
    c->handshaking = false;
    c->active_ns = w->now_ns; /* ws: its request head's timeout starts now */
    fe_conn_list_append(list_of(w, c), c);
    fe_counter_add(&w->tls_handshakes, 1);
    if (resumed)
        fe_counter_add(&w->tls_resumed, 1);
    emit_event(w, c, FE_EVENT_OPEN, FE_CLOSE_NONE, subject);
}

int fe_conn_peer_eof(fe_worker *w, fe_conn *c, enum fe_close_reason *reason)
{
    c->peer_eof = true;
    if (!line_mode(w) || c->finishing || c->awaiting_proxy) /* (the header is no line) */
        return 0;
    size_t before = held(c);
    int rc = fe_line_finish(&w->server->line_format, &c->partial_line, &c->out);
    account_memory(w, before, held(c));
    if (rc != FE_LINE_OK) {
        *reason = FE_CLOSE_NO_MEMORY;
        return -1;
    }
    return 0;
}

/* Adds n to the memory held if the budget has room for all of it, in one
 * step: a pipe's megabyte is taken whole, so two workers that each see room
 * for one more pipe cannot both take it (a plain check-then-add let the
 * budget be passed by a pipe per worker). The gauge never counts a pipe
 * that was not taken. */
static bool budget_take(fe_worker *w, size_t n)
{
    fe_server *s = w->server;
    size_t now_held = atomic_load_explicit(&s->memory_held, memory_order_relaxed);
    do {
        if (!budget_fits(s, now_held, n))
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&s->memory_held, &now_held, now_held + n,
                                                    memory_order_relaxed, memory_order_relaxed));
    return true;
}

void fe_conn_splice_begin(fe_worker *w, fe_conn *c)
{
    fe_server *s = w->server;
    if (c->tls || c->ws || c->spliced || c->peer_eof || c->lingering || c->finishing || w->closing) {
        c->splice_wanted = false;
        return;
    }
    /* Only with nothing queued (nor, io_uring, being sent), so that the pipe
     * alone holds c's output, within the cap: until then c copies, and
     * fe_conn_next tries again. */
    size_t want = s->splice_pipe_size;
    if (output_queued(c)) {
        /* Stopping reading to wait for the queue is worth it only if a
         * pipe can be had then: the budget and the fd reserve, as now. */
        size_t now_held = atomic_load_explicit(&s->memory_held, memory_order_relaxed);
        c->splice_wanted = budget_fits(s, now_held, want) &&
                           (w->pipe_pool != NULL || fe_connection_fds(s) + FE_FDS_PER_PIPE <= s->fd_connection_limit);
        return;
    }
    c->splice_wanted = false;
    /* Near the budget a pipe would hold what copying waits for. */
    if (!budget_take(w, want))
        return;
    fe_pipe *p = fe_splice_pipe_get(w);
    account_memory(w, want, p != NULL ? p->capacity : 0);
    if (p == NULL)
        return;
    c->pipe = p;
    c->piped = 0;
    c->splice_short = 0;
    c->spliced = true;
}

void fe_conn_spliced_in(fe_worker *w, fe_conn *c, size_t n)
{
    fe_conn_touch(w, c);
    fe_counter_add(&w->bytes_received, (uint64_t)n);
    c->bytes_in += (uint64_t)n;
    c->piped += (uint32_t)n; /* n <= the pipe's capacity, at most 1 MiB */
    if (n >= w->server->splice_read_room)
        c->splice_short = 0;
    else if (c->splice_short < FE_SPLICE_SHORT_READS)
        c->splice_short++;
}

void fe_conn_spliced_out(fe_worker *w, fe_conn *c, size_t n)
{
    if (n == 0)
        return;
    fe_conn_touch(w, c); /* a slow reader that is reading is not idle */
    fe_counter_add(&w->bytes_sent, (uint64_t)n);
    fe_counter_add(&w->splice_bytes, (uint64_t)n);
    c->bytes_out += (uint64_t)n;
    c->piped -= (uint32_t)n;
    if (c->piped == 0 && c->splice_short >= FE_SPLICE_SHORT_READS)
        splice_end(w, c);
}

void fe_conn_sent(fe_worker *w, fe_conn *c, size_t sent)
{
    if (sent == 0)
        return;
    fe_counter_add(&w->bytes_sent, (uint64_t)sent);
    c->bytes_out += (uint64_t)sent;
    fe_buf *from = c->sending.len > 0 ? &c->sending : &c->out;
    size_t before = from->capacity;
    fe_buf_consume(from, sent);
    account_memory(w, before, from->capacity);
    fe_conn_touch(w, c); /* a slow reader that is reading is not idle */
}

int fe_conn_keep_direct_rest(fe_worker *w, fe_conn *c, const char *rest, size_t n)
{
    size_t before = c->sending.capacity;
    if (fe_buf_append(&c->sending, rest, n) != 0)
        return -1;
    account_memory(w, before, c->sending.capacity);
    c->direct = 0;
    return 0;
}

size_t fe_conn_recv_limit(const fe_worker *w, const fe_conn *c, size_t delivery)
{
    size_t limit = w->server->cfg.max_pending_output;
    size_t beside = send_held(c);
    size_t free_bytes = limit > beside ? limit - beside : 0;
    /* Half of it, floored to a power of two: a direct send's rest and the
     * queue behind it then each grow to at most that (a buffer doubles
     * from 4 KiB) if the receive delivers no more, which it does after
     * its limit and one more delivery at most. */
    size_t half = 4096;
    while (half * 4 <= free_bytes)
        half *= 2;
    return half > delivery ? half - delivery : 1;
}

void fe_conn_take_output(fe_conn *c)
{
    c->sending = c->out;
    c->out = (fe_buf){0};
}

void fe_conn_socket_full(fe_worker *w, fe_conn *c)
{
    set_budget_wait(w, c, FE_BUDGET_WAIT_SOCKET);
}

void fe_conn_socket_drained(fe_conn *c)
{
    c->space_wait = false; /* fe_conn_next looks at the budget again */
}

void fe_conn_lingering(fe_worker *w, fe_conn *c)
{
    if (c->finishing) { /* onto the aborting list, whose head expires first */
        fe_conn_list_remove(&w->active, c);
        c->lingering = true;
        c->active_ns = fe_now_ns();
        fe_conn_list_append(&w->aborting, c);
    } else {
        c->lingering = true;
    }
}

enum fe_close_reason fe_conn_stop_reason(const fe_conn *c)
{
    return c->finishing ? (enum fe_close_reason)c->finish_reason : FE_CLOSE_SHUTDOWN;
}

enum fe_conn_step fe_conn_next_general(fe_worker *w, fe_conn *c, uint32_t *interest,
                                       enum fe_close_reason *reason)
{
    if (c->awaiting_proxy) {
        if (c->peer_eof || w->closing) { /* it never finished its header */
            *reason = c->peer_eof ? FE_CLOSE_PROXY_INVALID : FE_CLOSE_SHUTDOWN;
            return FE_STEP_CLOSE;
        }
        *interest = FE_WANT_READ;
        return FE_STEP_WAIT;
    }
    if (c->handshaking) { /* only what the handshake waits for (c->tp_wants, the backend's) */
        if (w->closing) {
            *reason = FE_CLOSE_SHUTDOWN;
            return FE_STEP_CLOSE;
        }
        *interest = 0;
        return FE_STEP_WAIT;
    }
    if (c->splice_wanted) /* bulk: a pipe, now that nothing is queued */
        fe_conn_splice_begin(w, c);
    bool unsent = c->out.len > 0 || c->tls_unsent || c->sending.len > 0 || c->direct > 0 || c->piped > 0;
    if (!unsent && c->peer_eof) {
        /* Everything received was echoed and the client sent FIN. */
        *reason = c->finishing ? (enum fe_close_reason)c->finish_reason
                  : w->closing  ? FE_CLOSE_SHUTDOWN
                                : FE_CLOSE_EOF;
        return FE_STEP_FINISH;
    }
    if (!unsent && (w->closing || c->finishing) && !c->lingering)
        return FE_STEP_LINGER;

    uint32_t want = 0;
    if (unsent)
        want |= FE_WANT_WRITE;
    if (!c->peer_eof && c->lingering) {
        want |= FE_WANT_READ; /* discarding input: needs no room */
        set_budget_wait(w, c, FE_BUDGET_OK);
    } else if (!c->peer_eof && !w->closing && !c->finishing) {
        enum fe_budget_verdict how;
        if (fe_conn_read_room(w, c, &how) > 0)
            want |= FE_WANT_READ;
        else if (how == FE_BUDGET_WAIT_SOCKET)
            want |= FE_WANT_WRITE; /* writable again: there is room to read into */
        set_budget_wait(w, c, how);
    } else {
        set_budget_wait(w, c, FE_BUDGET_OK);
    }
    *interest = want;
    return FE_STEP_WAIT;
}

/* ---------------------------------------------------------------- timers */

fe_conn *fe_conn_expired(fe_worker *w, enum fe_close_reason *reason)
{
    fe_conn *c = w->proxy_waiting.head;
    if (c && w->now_ns - c->accepted_ns >= w->server->cfg.proxy_timeout_ms * 1000000) {
        *reason = FE_CLOSE_PROXY_TIMEOUT;
        return c;
    }
    c = w->handshaking.head; /* active_ns: when its handshake began */
    if (c && w->now_ns - c->active_ns >= w->server->cfg.tls_handshake_timeout_ms * 1000000) {
        *reason = FE_CLOSE_TLS_TIMEOUT;
        return c;
    }
    c = w->ws_upgrading.head; /* active_ns: when it began to wait for its head */
    if (c && w->now_ns - c->active_ns >= w->server->cfg.ws_handshake_timeout_ms * 1000000) {
        *reason = FE_CLOSE_WS_TIMEOUT;
        return c;
    }
    c = w->aborting.head;
    if (c && w->now_ns - c->active_ns >= FE_ABORT_LINGER_MS * 1000000LL) {
        *reason = (enum fe_close_reason)c->finish_reason;
        return c;
    }
    int64_t idle_ms = w->server->cfg.idle_timeout_ms;
    c = w->active.head;
    if (idle_ms > 0 && c && w->now_ns - c->active_ns >= idle_ms * 1000000) {
        /* The list is in activity order: only its head can be due, so the
         * cost is one comparison per batch, not a timer per connection. */
        *reason = c->finishing ? (enum fe_close_reason)c->finish_reason : FE_CLOSE_IDLE;
        return c;
    }
    return NULL;
}

static int64_t ms_until(int64_t deadline_ns, int64_t now_ns)
{
    if (deadline_ns <= now_ns)
        return 0;
    return (deadline_ns - now_ns + 999999) / 1000000;
}

/* The sooner of two timeouts in ms (-1: none). */
static int64_t sooner(int64_t a_ms, int64_t b_ms)
{
    return a_ms < 0 || (b_ms >= 0 && b_ms < a_ms) ? b_ms : a_ms;
}

int64_t fe_conn_next_timer_ms(const fe_worker *w)
{
    const fe_config *cfg = &w->server->cfg;
    int64_t ms = -1;
    if (cfg->idle_timeout_ms > 0 && w->active.head)
        ms = ms_until(w->active.head->active_ns + cfg->idle_timeout_ms * 1000000, w->now_ns);
    if (w->aborting.head)
        ms = sooner(ms, ms_until(w->aborting.head->active_ns + FE_ABORT_LINGER_MS * 1000000LL, w->now_ns));
    if (w->proxy_waiting.head)
        ms = sooner(ms, ms_until(w->proxy_waiting.head->accepted_ns + cfg->proxy_timeout_ms * 1000000,
                                 w->now_ns));
    if (w->handshaking.head)
        ms = sooner(ms, ms_until(w->handshaking.head->active_ns + cfg->tls_handshake_timeout_ms * 1000000,
                                 w->now_ns));
    if (w->ws_upgrading.head)
        ms = sooner(ms, ms_until(w->ws_upgrading.head->active_ns + cfg->ws_handshake_timeout_ms * 1000000,
                                 w->now_ns));
    if (w->budget_blocked > 0)
        ms = sooner(ms, FE_BUDGET_RETRY_MS);
    return ms > 1000 ? 1000 : ms;
}

bool fe_conn_budget_retry_due(fe_worker *w)
{
    if (w->budget_blocked == 0 || w->now_ns - w->budget_retry_ns < FE_BUDGET_RETRY_MS * 1000000LL)
        return false;
    w->budget_retry_ns = w->now_ns;
    return true;
}
