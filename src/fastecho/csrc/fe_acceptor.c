/*
 * fe_acceptor.c - the acceptor thread: it accepts from every listener,
 * applies admission (the allow list and the connection limits), and hands
 * each socket to the worker with the fewest open connections, through that
 * worker's condvar queue plus an eventfd wake-up. A worker keeps a
 * connection for its whole life, so after the hand-off no message ever
 * crosses threads.
 */
#include "fe_internal.h"
#include "fe_sock.h"
#include "fe_splice.h"

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
    FE_ACCEPT_BATCH = 256,   /* accepts per listener per wake, so a stop request is seen promptly */
    FE_BACKOFF_MIN_MS = 10,  /* first pause after EMFILE/ENFILE/ENOMEM */
    FE_BACKOFF_MAX_MS = 500, /* longest pause: the slowest we recover */
};

/* Picks the worker with the fewest open connections. Reading the workers'
 * close counters is lock-free; a slightly stale count only skews balance. */
static int least_loaded_worker(fe_server *s)
{
    int best = 0;
    uint64_t best_load = UINT64_MAX;
    for (int i = 0; i < s->worker_count; i++) {
        uint64_t load = s->assigned[i] - fe_counter_read(&s->workers[i].connections_closed);
        if (load < best_load) {
            best_load = load;
            best = i;
        }
    }
    return best;
}

static void dispatch(fe_server *s, const fe_handoff *h)
{
    fe_sock_prepare_accepted(h->fd);
    int i = least_loaded_worker(s);
    bool was_empty = false;
    if (fe_queue_push(&s->workers[i].inbox, h, &was_empty) != 0) {
        /* Interrupted by shutdown while the worker's queue was full. */
        close(h->fd);
        if (h->counted_per_ip)
            fe_ip_table_release(&s->ip_table, &h->peer);
        atomic_fetch_sub_explicit(&s->open_connections, 1, memory_order_relaxed);
        fe_counter_add(&s->connections_refused, 1);
        fe_counter_add(&s->listener_refused[h->listener], 1);
        return;
    }
    s->assigned[i]++;
    if (was_empty) /* a non-empty queue already has a wake-up pending */
        fe_wake(s->workers[i].wake_fd);
}

/* Applies the allow list and the connection limits to a fresh connection.
 * Returns true if it may be served; otherwise it was closed and counted. */
static bool admit(fe_server *s, fe_handoff *h)
{
    fe_counter *rejected = NULL;
    if (h->proxy && !fe_cidr_contains_any(s->proxy_from, s->cfg.proxy_from_count, &h->peer))
        rejected = &s->rejected_proxy_untrusted; /* nobody else may claim an address */
    else if (!h->proxy && s->cfg.allow_count > 0 &&
             !fe_cidr_contains_any(s->allow, s->cfg.allow_count, &h->peer))
        rejected = &s->rejected_not_allowed;
    else if (s->cfg.max_connections > 0 &&
             atomic_load_explicit(&s->open_connections, memory_order_relaxed) >= s->cfg.max_connections)
        rejected = &s->rejected_max_connections;
    else if (!h->proxy && s->cfg.max_connections_per_ip > 0) {
        /* Behind a proxy, the client's address is known only from its
         * header: the worker applies the allow list and this limit then. */
        if (fe_ip_table_acquire(&s->ip_table, &h->peer, s->cfg.max_connections_per_ip))
            h->counted_per_ip = true;
        else
            rejected = &s->rejected_per_ip;
    }
    if (rejected) {
        fe_counter_add(rejected, 1); /* before close: a client that sees the close sees the count */
        close(h->fd);
        return false;
    }
    /* Only the acceptor adds, so the check above cannot be raced past. */
    atomic_fetch_add_explicit(&s->open_connections, 1, memory_order_relaxed);
    return true;
}

static bool is_transient_accept_error(int e)
{
    /* The connection died in the backlog, or the kernel reported a network
     * error on it (accept(2): treat these like EAGAIN and retry). */
    return e == ECONNABORTED || e == EPROTO || e == ENETDOWN || e == ENOPROTOOPT ||
           e == EHOSTDOWN || e == ENONET || e == EHOSTUNREACH || e == EOPNOTSUPP ||
           e == ENETUNREACH || e == EPERM;
}

static bool is_resource_exhaustion(int e)
{
    return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
}

/* How many fds are open in this process now; 0 if /proc is not mounted. */
static uint64_t open_fd_count(void)
{
    DIR *dir = opendir("/proc/self/fd");
    if (dir == NULL)
        return 0;
    uint64_t n = 0;
    for (struct dirent *d; (d = readdir(dir)) != NULL;)
        n += d->d_name[0] != '.';
    closedir(dir);
    return n > 0 ? n - 1 : 0; /* less the directory's own fd */
}

uint64_t fe_fd_connection_limit(size_t reserve)
{
    struct rlimit nofile;
    if (reserve == 0 || getrlimit(RLIMIT_NOFILE, &nofile) != 0 || nofile.rlim_cur == RLIM_INFINITY)
        return UINT64_MAX;
    uint64_t limit = nofile.rlim_cur;
    if (reserve > limit / 4)
        reserve = limit / 4;
    uint64_t used = open_fd_count() + reserve;
    return limit > used ? limit - used : 0;
}

uint64_t fe_connection_fds(fe_server *s)
{
    return atomic_load_explicit(&s->open_connections, memory_order_relaxed) +
           FE_FDS_PER_PIPE * atomic_load_explicit(&s->splice_pipes, memory_order_relaxed);
}

/* The pause after the acceptor runs out of a resource: doubling, capped. */
static int next_backoff_ms(int backoff_ms)
{
    backoff_ms = backoff_ms ? backoff_ms * 2 : FE_BACKOFF_MIN_MS;
    return backoff_ms > FE_BACKOFF_MAX_MS ? FE_BACKOFF_MAX_MS : backoff_ms;
}

/* Accepts up to FE_ACCEPT_BATCH connections from one listener. Returns 0
 * when its backlog is empty or the batch is done, 1 when the acceptor must
 * back off (out of fds or memory), -1 when the listener itself failed. */
static int accept_batch(fe_server *s, size_t index)
{
    const fe_listener *listener = &s->listeners[index];
    for (int n = 0; n < FE_ACCEPT_BATCH && !atomic_load(&s->stop_accepting); n++) {
        if (fe_connection_fds(s) >= s->fd_connection_limit) {
            /* Another connection would eat into the caller's reserve of
             * fds: wait as at EMFILE, with clients in the backlog. Pipes
             * count too: a worker takes one only within the same limit,
             * and gives it back once its connection stops echoing bulk. */
            fe_counter_add(&s->accept_fd_exhausted, 1);
            return 1;
        }
        struct sockaddr_storage addr;
        socklen_t addr_len = sizeof addr;
        int fd = accept4(listener->fd, (struct sockaddr *)&addr, &addr_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            fe_handoff h = {.fd = fd, .accepted_ns = fe_now_ns(), .proxy = listener->proxy,
                            .tls = listener->tls, .ws = listener->ws, .listener = (uint8_t)index};
            fe_peer_from_sockaddr(&h.peer, (struct sockaddr *)&addr, addr_len);
            if (!admit(s, &h))
                continue;
            fe_counter_add(&s->connections_accepted, 1);
            fe_counter_add(&s->listener_accepted[index], 1);
            dispatch(s, &h);
            continue;
        }
        int e = errno;
        if (e == EINTR)
            continue;
        if (e == EAGAIN || e == EWOULDBLOCK)
            return 0;
        fe_counter_add(&s->accept_errors, 1);
        if (is_transient_accept_error(e))
            continue;
        if (is_resource_exhaustion(e)) {
            /* Out of fds or memory: leave clients queued in the kernel's
             * backlog and retry after a pause, so the acceptor costs
             * nothing while it waits, and serves again soon after fds are
             * freed. */
            if (e == EMFILE || e == ENFILE)
                fe_counter_add(&s->accept_fd_exhausted, 1);
            return 1;
        }
        /* EBADF, EINVAL, ENOTSOCK: the listener itself is unusable. */
        atomic_store(&s->acceptor_error, e);
        return -1;
    }
    return 0;
}

void *fe_acceptor_main(void *arg)
{
    fe_server *s = arg;
    int backoff_ms = 0;
    struct pollfd fds[1 + FE_MAX_LISTENERS];
    fds[0] = (struct pollfd){.fd = s->acceptor_wake_fd, .events = POLLIN};
    size_t count = atomic_load(&s->listener_count);
    for (size_t i = 0; i < count; i++) /* UDP listeners accept nothing: poll skips fd -1 */
        fds[1 + i] = (struct pollfd){.fd = s->listeners[i].udp ? -1 : s->listeners[i].fd, .events = POLLIN};
    nfds_t all = (nfds_t)(1 + count);

    for (;;) {
        /* While backing off, only a stop request can wake us: the listeners
         * stay readable and would otherwise spin the loop. After a pause,
         * every listener is tried once without waiting. */
        bool after_pause = backoff_ms > 0;
        int rc = poll(fds, backoff_ms ? 1 : all, backoff_ms ? backoff_ms : -1);
        if (rc < 0 && errno != EINTR) {
            atomic_store(&s->acceptor_error, errno);
            return NULL;
        }
        if (atomic_load(&s->state) != FE_RUNNING || (fds[0].revents & POLLIN))
            return NULL;
        int verdict = 0;
        for (nfds_t i = 1; i < all && verdict == 0; i++) {
            /* Any event, POLLHUP and POLLNVAL too: accept() then says what
             * is wrong with the listener, instead of poll() spinning on it. */
            if (fds[i].fd >= 0 && (after_pause || fds[i].revents != 0))
                verdict = accept_batch(s, (size_t)i - 1);
        }
        if (verdict < 0)
            return NULL;
        backoff_ms = verdict > 0 ? next_backoff_ms(backoff_ms) : 0;
        if (backoff_ms == 0)
            continue;
        for (nfds_t i = 1; i < all; i++)
            fds[i].revents = 0;
    }
}
