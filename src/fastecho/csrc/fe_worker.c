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
 */
#include "fe_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { FE_MAX_EVENTS = 256, FE_ADOPT_BATCH = 64 };

struct fe_conn {
    int fd;
    uint32_t events;      /* the interest currently registered with epoll */
    bool peer_eof;        /* client sent FIN: echo what is left, then close */
    bool lingering;       /* we sent FIN at stop: discard input until the peer closes */
    fe_conn *prev, *next; /* the worker's list of open connections */
    char *out;            /* unsent output: out[out_start, out_start + out_len) */
    size_t out_start;
    size_t out_len;
    size_t out_capacity;
};

static void conn_close(fe_worker *w, fe_conn *c)
{
    close(c->fd); /* also removes it from the epoll set: no dup of it exists */
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->conn_count--;
    fe_counter_add(&w->connections_closed, 1);
    free(c->out);
    free(c);
}

static void conn_adopt(fe_worker *w, int fd)
{
    fe_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        fe_counter_add(&w->connections_closed, 1);
        return;
    }
    c->fd = fd;
    c->events = EPOLLIN;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(w->epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        close(fd);
        free(c);
        fe_counter_add(&w->connections_closed, 1);
        return;
    }
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->conn_count++;
}

static void adopt_queued(fe_worker *w)
{
    int fds[FE_ADOPT_BATCH];
    size_t n;
    while ((n = fe_queue_pop_batch(&w->inbox, fds, FE_ADOPT_BATCH)) > 0) {
        for (size_t i = 0; i < n; i++) {
            if (w->closing) { /* too late to serve it */
                close(fds[i]);
                fe_counter_add(&w->connections_closed, 1);
            } else {
                conn_adopt(w, fds[i]);
            }
        }
    }
}

/* Keeps n more bytes for later. The buffer never holds more than
 * max_pending_output: reads are sized so that it cannot overflow. */
static int out_append(fe_conn *c, const char *data, size_t n, size_t limit)
{
    if (c->out_start + c->out_len + n > c->out_capacity) {
        if (c->out_start > 0) {
            memmove(c->out, c->out + c->out_start, c->out_len);
            c->out_start = 0;
        }
        if (c->out_len + n > c->out_capacity) {
            size_t cap = c->out_capacity ? c->out_capacity : 4096;
            while (cap < c->out_len + n)
                cap *= 2;
            if (cap > limit)
                cap = limit > c->out_len + n ? limit : c->out_len + n;
            char *grown = realloc(c->out, cap);
            if (grown == NULL)
                return -1;
            c->out = grown;
            c->out_capacity = cap;
        }
    }
    memcpy(c->out + c->out_start + c->out_len, data, n);
    c->out_len += n;
    return 0;
}

/* Sends from buf until done or the socket is full. Returns the bytes sent,
 * or -1 when the connection is broken (EPIPE, ECONNRESET, ...). */
static ssize_t send_some(fe_worker *w, int fd, const char *buf, size_t len)
{
    size_t sent = 0;
    while (sent < len) {
        ssize_t n = send(fd, buf + sent, len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            sent += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            fe_counter_add(&w->bytes_sent, sent);
            return -1;
        }
    }
    fe_counter_add(&w->bytes_sent, sent);
    return (ssize_t)sent;
}

/* Returns -1 when the connection must be closed. */
static int flush_pending(fe_worker *w, fe_conn *c)
{
    ssize_t n = send_some(w, c->fd, c->out + c->out_start, c->out_len);
    if (n < 0)
        return -1;
    c->out_start += (size_t)n;
    c->out_len -= (size_t)n;
    if (c->out_len == 0) {
        /* Idle connections own no buffer; the next short write allocates. */
        free(c->out);
        c->out = NULL;
        c->out_start = 0;
        c->out_capacity = 0;
    }
    return 0;
}

/* One read, echoed at once. Returns -1 when the connection must be closed. */
static int read_and_echo(fe_worker *w, fe_conn *c)
{
    const size_t limit = w->server->cfg.max_pending_output;
    size_t want = w->server->cfg.read_buffer_size;
    if (limit - c->out_len < want)
        want = limit - c->out_len;
    if (want == 0)
        return 0; /* at the cap: conn_settle turns EPOLLIN off */
    ssize_t n;
    do {
        n = recv(c->fd, w->read_buffer, want, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    if (n == 0) {
        c->peer_eof = true;
        return 0;
    }
    if (c->lingering)
        return 0; /* stopping: input after our FIN is discarded, not echoed */
    fe_counter_add(&w->bytes_received, (uint64_t)n);
    size_t sent = 0;
    if (c->out_len == 0) {
        ssize_t s = send_some(w, c->fd, w->read_buffer, (size_t)n);
        if (s < 0)
            return -1;
        sent = (size_t)s;
    }
    if (sent < (size_t)n && out_append(c, w->read_buffer + sent, (size_t)n - sent, limit) != 0)
        return -1;
    return 0;
}

/* After our side is done writing: FIN, then linger reading until the peer
 * closes. Closing with unread input would send RST, and a RST can destroy
 * echoed bytes still in flight to the peer. */
static void begin_linger(fe_conn *c)
{
    shutdown(c->fd, SHUT_WR);
    c->lingering = true;
}

/* Re-registers c's epoll interest to match its state, or closes it when it
 * has nothing left to do. Returns false if c was closed. */
static bool conn_settle(fe_worker *w, fe_conn *c)
{
    if (c->out_len == 0 && c->peer_eof) {
        /* Everything received was echoed and the client sent FIN. */
        if (!c->lingering)
            shutdown(c->fd, SHUT_WR);
        conn_close(w, c);
        return false;
    }
    if (c->out_len == 0 && w->closing && !c->lingering)
        begin_linger(c);

    uint32_t want = 0;
    if (c->out_len > 0)
        want |= EPOLLOUT;
    if (!c->peer_eof && (c->lingering || (!w->closing && c->out_len < w->server->cfg.max_pending_output)))
        want |= EPOLLIN;
    if (want != c->events) {
        struct epoll_event ev = {.events = want, .data.ptr = c};
        if (epoll_ctl(w->epoll_fd, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
            conn_close(w, c);
            return false;
        }
        c->events = want;
    }
    return true;
}

static void conn_handle(fe_worker *w, fe_conn *c, uint32_t events)
{
    if (events & EPOLLERR) { /* reset or other socket error: nothing to save */
        conn_close(w, c);
        return;
    }
    if ((events & EPOLLOUT) && c->out_len > 0 && flush_pending(w, c) != 0) {
        conn_close(w, c);
        return;
    }
    if (c->events & EPOLLIN) {
        if ((events & (EPOLLIN | EPOLLHUP)) && read_and_echo(w, c) != 0) {
            conn_close(w, c);
            return;
        }
    } else if (events & EPOLLHUP) {
        /* Both directions are gone while we were not reading: no further
         * byte can be delivered, and a level-triggered HUP would otherwise
         * be reported forever. */
        conn_close(w, c);
        return;
    }
    conn_settle(w, c);
}

/* Past the drain deadline: stop echoing; each connection flushes what it
 * already received, sends FIN and lingers until the close deadline. */
static void enter_closing(fe_worker *w)
{
    w->closing = true;
    fe_conn *c = w->conns;
    while (c) {
        fe_conn *next = c->next;
        conn_settle(w, c);
        c = next;
    }
}

static void close_all(fe_worker *w)
{
    while (w->conns)
        conn_close(w, w->conns);
}

static int wait_timeout_ms(const fe_worker *w, int64_t now)
{
    const fe_server *s = w->server;
    if (atomic_load(&s->state) == FE_RUNNING)
        return -1;
    int64_t deadline = w->closing ? atomic_load(&s->close_deadline_ns)
                                  : atomic_load(&s->drain_deadline_ns);
    if (deadline <= now)
        return 0;
    int64_t ms = (deadline - now + 999999) / 1000000;
    return ms > 1000 ? 1000 : (int)ms;
}

void *fe_worker_main(void *arg)
{
    fe_worker *w = arg;
    fe_server *s = w->server;
    struct epoll_event events[FE_MAX_EVENTS];

    for (;;) {
        int n = epoll_wait(w->epoll_fd, events, FE_MAX_EVENTS, wait_timeout_ms(w, fe_now_ns()));
        if (n < 0 && errno != EINTR)
            break; /* EBADF/EINVAL: our own epoll fd is gone; cannot happen */
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
        if (atomic_load(&s->state) == FE_RUNNING)
            continue;

        /* Stopping. The acceptor was joined before the state changed, so
         * everything it ever queued is visible now; adopt it (or close it,
         * once closing) before deciding whether this worker is finished. */
        adopt_queued(w);
        int64_t now = fe_now_ns();
        if (!w->closing && now >= atomic_load(&s->drain_deadline_ns))
            enter_closing(w);
        if (w->closing && now >= atomic_load(&s->close_deadline_ns))
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
