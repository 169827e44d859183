/*
 * fe_worker.c - one worker's epoll loop: it adopts connections from its
 * queue and echoes them, never blocking on any single client.
 *
 * The fast path is exactly a bare echo loop: level-triggered EPOLLIN, one
 * read into the worker's buffer, one send of the same bytes. Only when the
 * kernel takes less than everything (a short write) do the leftovers move to
 * a per-connection heap buffer and the connection waits for EPOLLOUT; an idle
 * connection owns no buffer at all. One read per readiness per loop keeps the
 * service fair: a busy client cannot starve the others on its worker.
 *
 * Line mode (a suffix is set) replaces "send what was read" with framing
 * through fe_line_feed; everything else is shared.
 */
#include "fe_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
    FE_MAX_EVENTS = 256,
    FE_ADOPT_BATCH = 64,
    /* After an overlong line's error reply and FIN: how long the client gets
     * to close before we do. Its further input is discarded meanwhile. */
    FE_ABORT_LINGER_MS = 2000,
    /* While connections wait for the memory budget: how often their worker
     * looks again (memory freed on another worker wakes nobody here). */
    FE_BUDGET_RETRY_MS = 10,
    /* Room for line mode's error line ("error: line longer than N bytes\n"). */
    FE_LINE_ERROR_MAX = 96,
};

/* Field order matters: everything the echo path touches per message sits
 * in the first 64-byte cache line; list links, timestamps and the peer are
 * only needed on open, close, and when timeouts are on. */
struct fe_conn {
    int fd;
    uint32_t events;      /* the interest currently registered with epoll */
    bool peer_eof;        /* client sent FIN: echo what is left, then close */
    bool lingering;       /* we sent FIN: discard input until the peer closes */
    bool finishing;       /* line too long: send what is queued, then close */
    bool counted_per_ip;
    bool budget_wait;     /* not read until the memory budget frees (w->budget_blocked) */
    bool space_wait;      /* budget spent, holds nothing: not read until its socket drains */
    fe_buf out;           /* echoed bytes the socket has not taken yet */
    uint64_t bytes_in, bytes_out;
    /* cold */
    fe_conn *prev, *next; /* links in w->active or w->aborting */
    int64_t active_ns;    /* last time the client sent or took echo; aborting: since when */
    int64_t accepted_ns;
    fe_buf partial_line;  /* line mode: a line still waiting for its newline */
    fe_peer peer;
};

static void list_remove(fe_conn_list *list, fe_conn *c)
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

static void list_append(fe_conn_list *list, fe_conn *c)
{
    c->prev = list->tail;
    c->next = NULL;
    if (list->tail)
        list->tail->next = c;
    else
        list->head = c;
    list->tail = c;
}

/* A connection that sent an overlong line and got its error reply lives on
 * the aborting list until its client closes or FE_ABORT_LINGER_MS pass. */
static bool is_aborting(const fe_conn *c)
{
    return c->finishing && c->lingering;
}

static fe_conn_list *list_of(fe_worker *w, const fe_conn *c)
{
    return is_aborting(c) ? &w->aborting : &w->active;
}

/* Records activity for the idle timeout: the connection moves to the tail
 * of the activity list. A no-op (no memory touched) when timeouts are off. */
static void conn_touch(fe_worker *w, fe_conn *c)
{
    if (w->server->cfg.idle_timeout_ms <= 0 || is_aborting(c))
        return;
    c->active_ns = w->now_ns;
    if (c != w->active.tail) {
        list_remove(&w->active, c);
        list_append(&w->active, c);
    }
}

static void emit_event(fe_worker *w, const fe_conn *c, uint8_t kind, uint8_t reason)
{
    if (!w->ring_ready)
        return;
    fe_event ev = {
        .kind = kind,
        .reason = reason,
        .peer = c->peer,
        .bytes_in = c->bytes_in,
        .bytes_out = c->bytes_out,
        .duration_ns = kind == FE_EVENT_CLOSE ? (uint64_t)(fe_now_ns() - c->accepted_ns) : 0,
    };
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

/* What the memory budget allows c's next read. */
enum fe_budget_verdict {
    FE_BUDGET_OK = 0,      /* read (up to the room granted) */
    FE_BUDGET_PEEK,        /* budget spent, raw mode, holds nothing: echo only
                              what the socket takes now, leave the rest unread */
    FE_BUDGET_WAIT_MEMORY, /* holds buffers: wait until memory frees anywhere (polled) */
    FE_BUDGET_WAIT_SOCKET, /* holds nothing: wait until its socket drains (EPOLLOUT) */
};

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

static void conn_close(fe_worker *w, fe_conn *c, enum fe_close_reason reason)
{
    fe_server *s = w->server;
    /* Account first, so that a client that has seen its connection close
     * also sees it in the counters and events. */
    list_remove(list_of(w, c), c);
    w->conn_count--;
    if (reason == FE_CLOSE_IDLE)
        fe_counter_add(&w->idle_timeouts, 1);
    emit_event(w, c, FE_EVENT_CLOSE, (uint8_t)reason);
    if (c->counted_per_ip)
        fe_ip_table_release(&s->ip_table, &c->peer);
    atomic_fetch_sub_explicit(&s->open_connections, 1, memory_order_relaxed);
    fe_counter_add(&w->connections_closed, 1);
    /* Deregister explicitly: close() alone leaves the epoll entry alive if a
     * fork ever duplicated the fd, and its events would then name freed c. */
    epoll_ctl(w->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    set_budget_wait(w, c, FE_BUDGET_OK);
    account_memory(w, c->out.capacity + c->partial_line.capacity, 0);
    fe_buf_free(&c->out);
    fe_buf_free(&c->partial_line);
    free(c);
}

/* Closes a connection that never got a fe_conn. */
static void drop_handoff(fe_worker *w, const fe_handoff *h)
{
    if (h->counted_per_ip)
        fe_ip_table_release(&w->server->ip_table, &h->peer);
    atomic_fetch_sub_explicit(&w->server->open_connections, 1, memory_order_relaxed);
    fe_counter_add(&w->connections_closed, 1);
    close(h->fd);
}

static void conn_adopt(fe_worker *w, const fe_handoff *h)
{
    fe_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        drop_handoff(w, h);
        return;
    }
    c->fd = h->fd;
    c->events = EPOLLIN;
    c->counted_per_ip = h->counted_per_ip;
    c->peer = h->peer;
    c->accepted_ns = h->accepted_ns;
    c->active_ns = w->now_ns;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(w->epoll_fd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        free(c);
        drop_handoff(w, h);
        return;
    }
    list_append(&w->active, c);
    w->conn_count++;
    emit_event(w, c, FE_EVENT_OPEN, FE_CLOSE_NONE);
}

static void adopt_queued(fe_worker *w)
{
    fe_handoff batch[FE_ADOPT_BATCH];
    size_t n;
    while ((n = fe_queue_pop_batch(&w->inbox, batch, FE_ADOPT_BATCH)) > 0) {
        for (size_t i = 0; i < n; i++) {
            if (w->closing) /* too late to serve it */
                drop_handoff(w, &batch[i]);
            else
                conn_adopt(w, &batch[i]);
        }
    }
}

/* Sends from buf until done or the socket is full. Returns the bytes sent,
 * or -1 when the connection is broken (EPIPE, ECONNRESET, ...). */
static ssize_t send_some(fe_worker *w, fe_conn *c, const char *buf, size_t len)
{
    size_t sent = 0;
    ssize_t result = 0;
    while (sent < len) {
        ssize_t n = send(c->fd, buf + sent, len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            sent += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            result = -1;
            break;
        }
    }
    fe_counter_add(&w->bytes_sent, sent);
    c->bytes_out += sent;
    return result < 0 ? -1 : (ssize_t)sent;
}

/* Returns -1 when the connection must be closed. */
static int flush_pending(fe_worker *w, fe_conn *c)
{
    ssize_t n = send_some(w, c, c->out.data + c->out.start, c->out.len);
    if (n < 0)
        return -1;
    size_t before = c->out.capacity;
    fe_buf_consume(&c->out, (size_t)n);
    account_memory(w, before, c->out.capacity);
    return 0;
}

/* The most buffer capacity a read of n bytes can add to c: all of it
 * buffered in raw mode; in line mode, every byte a line of its own (plus
 * the pending line and the error line) and the tail kept as partial. */
static size_t worst_growth(const fe_worker *w, const fe_conn *c, size_t n)
{
    const fe_server *s = w->server;
    if (s->suffix == NULL)
        return fe_buf_capacity_after(&c->out, n) - c->out.capacity;
    size_t out_bytes = c->partial_line.len + n * (1 + s->line_format.suffix_len) + FE_LINE_ERROR_MAX;
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
 * what its socket can take at once (exactly, by peeking, in raw mode; in
 * line mode, reads sized to half the free send buffer): a client that reads
 * its echo keeps being served, and one that does not leaves its bytes in
 * the kernel. */
static size_t budget_room(const fe_worker *w, const fe_conn *c, size_t want, enum fe_budget_verdict *how)
{
    const fe_server *s = w->server;
    *how = FE_BUDGET_OK;
    if (s->cfg.max_memory == 0)
        return want;
    size_t budget = s->cfg.max_memory;
    size_t held = atomic_load_explicit(&((fe_server *)s)->memory_held, memory_order_relaxed);
    for (size_t n = want; n > 0 && held <= budget; n /= 2) { /* halving: only near the budget */
        if (worst_growth(w, c, n) <= budget - held)
            return n;
    }
    if (c->out.capacity > 0 || (s->suffix && c->partial_line.capacity > 0)) {
        *how = FE_BUDGET_WAIT_MEMORY;
        return 0;
    }
    if (c->space_wait) {
        *how = FE_BUDGET_WAIT_SOCKET;
        return 0;
    }
    if (s->suffix == NULL) {
        *how = FE_BUDGET_PEEK;
        return want;
    }
    size_t space = send_space(c) / (1 + s->line_format.suffix_len);
    if (space == 0)
        *how = FE_BUDGET_WAIT_SOCKET;
    return space < want ? space : want;
}

/* How many bytes may be read now without the output passing the cap. In
 * line mode each input byte can become 1 + suffix_len output bytes. */
static size_t cap_room(const fe_worker *w, const fe_conn *c)
{
    const fe_server *s = w->server;
    size_t limit = s->cfg.max_pending_output;
    if (c->out.len >= limit)
        return 0;
    size_t room = limit - c->out.len;
    if (s->suffix)
        room /= 1 + s->line_format.suffix_len;
    return room < s->cfg.read_buffer_size ? room : s->cfg.read_buffer_size;
}

/* The bytes the next read may take, within the output cap and the budget;
 * *how says how the budget allows them. */
static size_t read_room(const fe_worker *w, const fe_conn *c, enum fe_budget_verdict *how)
{
    size_t room = cap_room(w, c);
    *how = FE_BUDGET_OK;
    return room ? budget_room(w, c, room, how) : 0;
}

/* Raw echo while the budget is spent, for a connection that holds nothing:
 * peek, send what the socket takes, then consume exactly that much. Bytes
 * the socket would not take stay in the kernel, so nothing is buffered and
 * nothing is lost. Returns -1 when the connection must be closed. */
static int peek_echo(fe_worker *w, fe_conn *c, size_t want)
{
    ssize_t n;
    do {
        n = recv(c->fd, w->read_buffer, want, MSG_PEEK | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    if (n == 0) {
        c->peer_eof = true;
        return 0;
    }
    ssize_t sent = send_some(w, c, w->read_buffer, (size_t)n);
    if (sent < 0)
        return -1;
    if (sent == 0) {
        c->space_wait = true; /* full: conn_settle waits for EPOLLOUT */
        fe_counter_add(&w->budget_waits, 1);
        return 0;
    }
    /* MSG_TRUNC on TCP discards the bytes already echoed without copying. */
    while (recv(c->fd, w->read_buffer, (size_t)sent, MSG_TRUNC | MSG_DONTWAIT) < 0 && errno == EINTR) {
    }
    conn_touch(w, c);
    fe_counter_add(&w->bytes_received, (uint64_t)sent);
    c->bytes_in += (uint64_t)sent;
    return 0;
}

/* Line mode: frame the bytes just read and send what is complete. */
static int line_echo(fe_worker *w, fe_conn *c, size_t n, enum fe_close_reason *reason)
{
    size_t before = c->out.capacity + c->partial_line.capacity;
    int rc = fe_line_feed(&w->server->line_format, &c->partial_line, w->read_buffer, n, &c->out);
    account_memory(w, before, c->out.capacity + c->partial_line.capacity);
    if (rc == FE_LINE_NO_MEMORY) {
        *reason = FE_CLOSE_NO_MEMORY;
        return -1;
    }
    if (rc == FE_LINE_TOO_LONG) {
        c->finishing = true; /* reading stops; the error line goes out, then close */
        fe_counter_add(&w->lines_too_long, 1);
    }
    *reason = c->finishing ? FE_CLOSE_LINE_TOO_LONG : FE_CLOSE_RESET;
    return c->out.len ? flush_pending(w, c) : 0;
}

/* One read, echoed at once. Returns -1 when the connection must be closed
 * and sets *reason. */
static int read_and_echo(fe_worker *w, fe_conn *c, enum fe_close_reason *reason)
{
    /* Input after our FIN is discarded, so it needs no room for output. */
    enum fe_budget_verdict how = FE_BUDGET_OK;
    size_t want = c->lingering ? w->server->cfg.read_buffer_size : read_room(w, c, &how);
    *reason = FE_CLOSE_RESET;
    if (how == FE_BUDGET_PEEK)
        return peek_echo(w, c, want);
    if (want == 0)
        return 0; /* at the cap or the budget: conn_settle turns EPOLLIN off */
    ssize_t n;
    do {
        n = recv(c->fd, w->read_buffer, want, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        *reason = FE_CLOSE_RESET;
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    }
    if (n == 0) {
        c->peer_eof = true;
        if (w->server->suffix && !c->finishing) {
            size_t before = c->out.capacity + c->partial_line.capacity;
            int rc = fe_line_finish(&w->server->line_format, &c->partial_line, &c->out);
            account_memory(w, before, c->out.capacity + c->partial_line.capacity);
            if (rc != FE_LINE_OK) {
                *reason = FE_CLOSE_NO_MEMORY;
                return -1;
            }
        }
        return 0;
    }
    if (c->lingering)
        return 0; /* after our FIN, input is discarded, not echoed: not activity */
    conn_touch(w, c);
    fe_counter_add(&w->bytes_received, (uint64_t)n);
    c->bytes_in += (uint64_t)n;

    *reason = FE_CLOSE_RESET;
    if (w->server->suffix)
        return line_echo(w, c, (size_t)n, reason);
    size_t sent = 0;
    if (c->out.len == 0) {
        ssize_t s = send_some(w, c, w->read_buffer, (size_t)n);
        if (s < 0)
            return -1;
        sent = (size_t)s;
    }
    if (sent < (size_t)n) {
        size_t before = c->out.capacity;
        if (fe_buf_append(&c->out, w->read_buffer + sent, (size_t)n - sent) != 0) {
            *reason = FE_CLOSE_NO_MEMORY;
            return -1;
        }
        account_memory(w, before, c->out.capacity);
    }
    return 0;
}

/* After our side is done writing: FIN, then linger reading until the peer
 * closes. Closing with unread input would send RST, and a RST can destroy
 * echoed bytes still in flight to the peer. */
static void begin_linger(fe_worker *w, fe_conn *c)
{
    shutdown(c->fd, SHUT_WR);
    if (c->finishing) { /* onto the aborting list, whose head expires first */
        list_remove(&w->active, c);
        c->lingering = true;
        c->active_ns = fe_now_ns();
        list_append(&w->aborting, c);
    } else {
        c->lingering = true;
    }
}

/* Re-registers c's epoll interest to match its state, or closes it when it
 * has nothing left to do. Returns false if c was closed. */
static bool conn_settle(fe_worker *w, fe_conn *c)
{
    if (c->out.len == 0 && c->peer_eof) {
        /* Everything received was echoed and the client sent FIN. */
        if (!c->lingering)
            shutdown(c->fd, SHUT_WR);
        conn_close(w, c, c->finishing ? FE_CLOSE_LINE_TOO_LONG
                         : w->closing ? FE_CLOSE_SHUTDOWN : FE_CLOSE_EOF);
        return false;
    }
    if (c->out.len == 0 && (w->closing || c->finishing) && !c->lingering)
        begin_linger(w, c);

    uint32_t want = 0;
    if (c->out.len > 0)
        want |= EPOLLOUT;
    if (!c->peer_eof && c->lingering) {
        want |= EPOLLIN; /* discarding input: needs no room */
    } else if (!c->peer_eof && !w->closing && !c->finishing) {
        enum fe_budget_verdict how;
        if (read_room(w, c, &how) > 0)
            want |= EPOLLIN;
        else if (how == FE_BUDGET_WAIT_SOCKET)
            want |= EPOLLOUT; /* writable again: there is room to read into */
        set_budget_wait(w, c, how);
    } else {
        set_budget_wait(w, c, FE_BUDGET_OK);
    }
    if (want != c->events) {
        struct epoll_event ev = {.events = want, .data.ptr = c};
        if (epoll_ctl(w->epoll_fd, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
            conn_close(w, c, FE_CLOSE_RESET);
            return false;
        }
        c->events = want;
    }
    return true;
}

static void conn_handle(fe_worker *w, fe_conn *c, uint32_t events)
{
    enum fe_close_reason reason = FE_CLOSE_RESET;
    if (events & EPOLLERR) { /* reset or other socket error: nothing to save */
        conn_close(w, c, c->finishing ? FE_CLOSE_LINE_TOO_LONG : FE_CLOSE_RESET);
        return;
    }
    if ((events & EPOLLOUT) && c->space_wait)
        c->space_wait = false; /* its socket drained: conn_settle looks at the budget again */
    if ((events & EPOLLOUT) && c->out.len > 0) {
        size_t before = c->out.len;
        if (flush_pending(w, c) != 0) {
            conn_close(w, c, FE_CLOSE_RESET);
            return;
        }
        if (c->out.len < before) /* a slow reader that is reading is not idle */
            conn_touch(w, c);
    }
    if (c->events & EPOLLIN) {
        if ((events & (EPOLLIN | EPOLLHUP)) && read_and_echo(w, c, &reason) != 0) {
            conn_close(w, c, reason);
            return;
        }
    } else if (events & EPOLLHUP) {
        /* Both directions are gone while we were not reading: no further
         * byte can be delivered, and a level-triggered HUP would otherwise
         * be reported forever. */
        conn_close(w, c, FE_CLOSE_RESET);
        return;
    }
    conn_settle(w, c);
}

/* Closes connections silent for idle_timeout_ms. The list is in activity
 * order, so this stops at the first connection that is still fresh: the
 * cost is one comparison per batch, not a timer per connection. */
static void sweep_idle(fe_worker *w)
{
    int64_t limit_ns = w->server->cfg.idle_timeout_ms * 1000000;
    while (w->active.head && w->now_ns - w->active.head->active_ns >= limit_ns)
        conn_close(w, w->active.head, w->active.head->finishing ? FE_CLOSE_LINE_TOO_LONG : FE_CLOSE_IDLE);
}

/* Looks again at connections waiting for the memory budget, at most every
 * FE_BUDGET_RETRY_MS: memory is freed by whichever worker's client reads,
 * and that worker does not wake this one. */
static void retry_budget_waits(fe_worker *w)
{
    if (w->now_ns - w->budget_retry_ns < FE_BUDGET_RETRY_MS * 1000000LL)
        return;
    w->budget_retry_ns = w->now_ns;
    fe_conn *c = w->active.head;
    while (c && w->budget_blocked > 0) {
        fe_conn *next = c->next;
        if (c->budget_wait)
            conn_settle(w, c);
        c = next;
    }
}

/* Closes aborting connections whose client did not close in time. */
static void sweep_aborting(fe_worker *w)
{
    while (w->aborting.head && w->now_ns - w->aborting.head->active_ns >= FE_ABORT_LINGER_MS * 1000000LL)
        conn_close(w, w->aborting.head, FE_CLOSE_LINE_TOO_LONG);
}

/* Past the drain deadline: stop echoing; each connection flushes what it
 * already received, sends FIN and lingers until the close deadline. */
static void enter_closing(fe_worker *w)
{
    w->closing = true;
    fe_conn *c = w->active.head;
    while (c) {
        fe_conn *next = c->next;
        conn_settle(w, c);
        c = next;
    }
}

static void close_all(fe_worker *w)
{
    while (w->active.head)
        conn_close(w, w->active.head, FE_CLOSE_SHUTDOWN);
    while (w->aborting.head)
        conn_close(w, w->aborting.head, FE_CLOSE_LINE_TOO_LONG);
}

static int64_t ms_until(int64_t deadline_ns, int64_t now_ns)
{
    if (deadline_ns <= now_ns)
        return 0;
    return (deadline_ns - now_ns + 999999) / 1000000;
}

static int wait_timeout_ms(const fe_worker *w)
{
    const fe_server *s = w->server;
    int64_t ms = -1;
    if (atomic_load(&s->state) != FE_RUNNING) {
        int64_t deadline = w->closing ? atomic_load(&s->close_deadline_ns)
                                      : atomic_load(&s->drain_deadline_ns);
        ms = ms_until(deadline, w->now_ns);
    }
    if (s->cfg.idle_timeout_ms > 0 && w->active.head) {
        int64_t idle = ms_until(w->active.head->active_ns + s->cfg.idle_timeout_ms * 1000000, w->now_ns);
        if (ms < 0 || idle < ms)
            ms = idle;
    }
    if (w->aborting.head) {
        int64_t abort = ms_until(w->aborting.head->active_ns + FE_ABORT_LINGER_MS * 1000000LL, w->now_ns);
        if (ms < 0 || abort < ms)
            ms = abort;
    }
    if (w->budget_blocked > 0 && (ms < 0 || ms > FE_BUDGET_RETRY_MS))
        ms = FE_BUDGET_RETRY_MS;
    return ms < 0 ? -1 : ms > 1000 ? 1000 : (int)ms;
}

/* Whether this worker needs the clock after each wake-up: only for
 * timeouts and access events, so the plain echo path never reads it. */
static bool needs_clock(const fe_worker *w)
{
    return w->server->cfg.idle_timeout_ms > 0 || w->aborting.head != NULL ||
           w->budget_blocked > 0 || atomic_load(&w->server->state) != FE_RUNNING;
}

void *fe_worker_main(void *arg)
{
    fe_worker *w = arg;
    fe_server *s = w->server;
    struct epoll_event events[FE_MAX_EVENTS];
    w->now_ns = fe_now_ns();

    for (;;) {
        int n = epoll_wait(w->epoll_fd, events, FE_MAX_EVENTS, wait_timeout_ms(w));
        if (n < 0 && errno != EINTR)
            break; /* EBADF/EINVAL: our own epoll fd is gone; cannot happen */
        if (needs_clock(w))
            w->now_ns = fe_now_ns();
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL) {
                uint64_t ignored;
                while (read(w->wake_fd, &ignored, sizeof ignored) < 0 && errno == EINTR) {
                }
                adopt_queued(w);
            } else {
                conn_handle(w, events[i].data.ptr, events[i].events);
            }
        }
        if (s->cfg.idle_timeout_ms > 0)
            sweep_idle(w);
        if (w->aborting.head)
            sweep_aborting(w);
        if (w->budget_blocked > 0)
            retry_budget_waits(w);
        if (atomic_load(&s->state) == FE_RUNNING)
            continue;

        /* Stopping. The acceptor was joined before the state changed, so
         * everything it ever queued is visible now; adopt it (or close it,
         * once closing) before deciding whether this worker is finished. */
        adopt_queued(w);
        if (!w->closing && w->now_ns >= atomic_load(&s->drain_deadline_ns))
            enter_closing(w);
        if (w->closing && w->now_ns >= atomic_load(&s->close_deadline_ns))
            close_all(w);
        if (w->conn_count == 0)
            break;
    }

    close_all(w);
    pthread_mutex_lock(&s->control_lock);
    s->workers_running--;
    pthread_cond_broadcast(&s->workers_exited_cond);
    pthread_mutex_unlock(&s->control_lock);
    return NULL;
}
