/*
 * fe_server.c - the server's lifecycle and its acceptor thread.
 *
 * The acceptor accepts in batches and hands each socket to the worker with
 * the fewest open connections, through that worker's condvar queue plus an
 * eventfd wake-up. A worker keeps a connection for its whole life, so after
 * the hand-off no message ever crosses threads.
 */
#include "fe_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The longest drain, linger or idle time accepted (about 11.6 days): keeps
 * nanosecond deadline arithmetic far from overflow. */
#define FE_MAX_TIMEOUT_MS ((int64_t)1000000000)

enum {
    FE_ACCEPT_BATCH = 256,   /* accepts per wake, so a stop request is seen promptly */
    FE_BACKOFF_MIN_MS = 10,  /* first pause after EMFILE/ENFILE/ENOMEM */
    FE_BACKOFF_MAX_MS = 500, /* longest pause: the slowest we recover */
};

int64_t fe_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void fe_wake(int eventfd_fd)
{
    uint64_t one = 1;
    while (write(eventfd_fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
}

static int fail(char *err, size_t errlen, int errnum, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        int used = vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        if (errnum && used >= 0 && (size_t)used < errlen)
            snprintf(err + used, errlen - (size_t)used, ": %s", strerror(errnum));
    }
    errno = errnum ? errnum : EINVAL;
    return -1;
}

void fe_config_init(fe_config *cfg)
{
    cfg->threads = 1;
    cfg->max_pending_output = 1u << 20;
    cfg->read_buffer_size = 64u << 10;
    cfg->thread_stack_size = 256u << 10;
    cfg->queue_capacity = 4096;
    cfg->suffix = NULL;
    cfg->suffix_len = 0;
    cfg->max_line = 64u << 10;
    cfg->event_ring_size = 0;
    cfg->max_connections = 0;
    cfg->max_connections_per_ip = 0;
    cfg->idle_timeout_ms = 0;
    cfg->allow = NULL;
    cfg->allow_count = 0;
    cfg->max_memory = 0;
    cfg->fd_reserve = 0;
}

static int validate_config(const fe_config *cfg, char *err, size_t errlen)
{
    if (cfg->threads < 1 || cfg->threads > 4096)
        return fail(err, errlen, 0, "threads must be between 1 and 4096, not %d", cfg->threads);
    if (cfg->read_buffer_size < 512 || cfg->read_buffer_size > (64u << 20))
        return fail(err, errlen, 0, "read buffer size must be between 512 B and 64 MiB");
    if (cfg->max_pending_output < 1)
        return fail(err, errlen, 0, "max pending output must be at least 1 byte");
    if (cfg->thread_stack_size < (64u << 10))
        return fail(err, errlen, 0, "thread stack size must be at least 64 KiB");
    if (cfg->queue_capacity < 1)
        return fail(err, errlen, 0, "queue capacity must be at least 1");
    if (cfg->suffix && cfg->suffix_len > 4096)
        return fail(err, errlen, 0, "the line suffix must be at most 4096 bytes");
    if (cfg->suffix && memchr(cfg->suffix, '\n', cfg->suffix_len))
        return fail(err, errlen, 0, "the line suffix must not contain a newline");
    if (cfg->suffix && (cfg->max_line < 1 || cfg->max_line > (64u << 20)))
        return fail(err, errlen, 0, "max line must be between 1 B and 64 MiB");
    if (cfg->suffix && cfg->max_pending_output < 2 * (1 + cfg->suffix_len))
        return fail(err, errlen, 0, "max pending output (%zu) must be at least 2 * (1 + suffix length) = %zu",
                    cfg->max_pending_output, 2 * (1 + cfg->suffix_len));
    if (cfg->event_ring_size > (1u << 24))
        return fail(err, errlen, 0, "the event ring may hold at most 16777216 events");
    if (cfg->idle_timeout_ms < 0 || cfg->idle_timeout_ms > FE_MAX_TIMEOUT_MS)
        return fail(err, errlen, 0, "the idle timeout must be between 0 and %lld ms",
                    (long long)FE_MAX_TIMEOUT_MS);
    if (cfg->max_memory != 0 && cfg->max_memory < (1u << 20))
        return fail(err, errlen, 0, "the memory budget must be at least 1 MiB (or 0 for none)");
    if (cfg->fd_reserve > (1u << 20))
        return fail(err, errlen, 0, "the fd reserve must be at most 1048576");
    if (cfg->allow_count > 0 && cfg->allow == NULL)
        return fail(err, errlen, 0, "allow_count is set but allow is NULL");
    for (size_t i = 0; i < cfg->allow_count; i++) {
        const fe_cidr *r = &cfg->allow[i];
        if (!((r->family == 4 && r->prefix_len <= 32) || (r->family == 6 && r->prefix_len <= 128)))
            return fail(err, errlen, 0, "allow entry %zu is not a valid address range", i);
    }
    return 0;
}

static void release_workers(fe_server *s)
{
    for (int i = 0; i < s->worker_count; i++) {
        fe_worker *w = &s->workers[i];
        if (w->epoll_fd >= 0)
            close(w->epoll_fd);
        if (w->wake_fd >= 0)
            close(w->wake_fd);
        if (w->inbox.slots)
            fe_queue_destroy(&w->inbox);
        if (w->ring_ready)
            fe_ring_destroy(&w->events);
        free(w->read_buffer);
    }
    free(s->workers);
    free(s->assigned);
    fe_ip_table_destroy(&s->ip_table);
    free(s->suffix);
    free(s->allow);
}

static void free_server(fe_server *s)
{
    release_workers(s);
    if (s->acceptor_wake_fd >= 0)
        close(s->acceptor_wake_fd);
    pthread_mutex_destroy(&s->events_lock);
    pthread_cond_destroy(&s->workers_exited_cond);
    pthread_mutex_destroy(&s->control_lock);
    free(s);
}

int fe_server_create(const fe_config *cfg, fe_server **out, char *err, size_t errlen)
{
    if (validate_config(cfg, err, errlen) != 0)
        return -1;
    fe_server *s = calloc(1, sizeof *s);
    if (s == NULL)
        return fail(err, errlen, ENOMEM, "allocating the server");
    s->cfg = *cfg;
    s->listen_fd = -1;
    s->acceptor_wake_fd = -1;
    atomic_init(&s->state, FE_RUNNING);
    atomic_init(&s->drain_deadline_ns, INT64_MAX);
    atomic_init(&s->close_deadline_ns, INT64_MAX);
    atomic_init(&s->acceptor_error, 0);

    pthread_condattr_t cattr;
    pthread_condattr_init(&cattr);
    pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC); /* wall-clock jumps must not stretch waits */
    pthread_mutex_init(&s->control_lock, NULL);
    pthread_mutex_init(&s->events_lock, NULL);
    pthread_cond_init(&s->workers_exited_cond, &cattr);
    pthread_condattr_destroy(&cattr);
    atomic_init(&s->open_connections, 0);
    atomic_init(&s->memory_held, 0);
    s->fd_connection_limit = UINT64_MAX;

    const char *what = NULL;
    /* aligned_alloc: fe_worker keeps its counters on their own cache line. */
    size_t workers_size = sizeof(fe_worker) * (size_t)cfg->threads;
    s->workers = aligned_alloc(_Alignof(fe_worker), workers_size);
    s->assigned = calloc((size_t)cfg->threads, sizeof *s->assigned);
    if (s->workers == NULL || s->assigned == NULL) {
        what = "allocating the workers";
    } else {
        memset(s->workers, 0, workers_size);
        s->worker_count = cfg->threads;
    }
    for (int i = 0; i < s->worker_count; i++) {
        s->workers[i].epoll_fd = -1;
        s->workers[i].wake_fd = -1;
    }
    if (what == NULL && cfg->suffix) {
        s->suffix = malloc(cfg->suffix_len ? cfg->suffix_len : 1);
        if (s->suffix == NULL)
            what = "copying the suffix";
        else
            memcpy(s->suffix, cfg->suffix, cfg->suffix_len);
        s->cfg.suffix = s->suffix;
        s->line_format = (fe_line_format){s->suffix, cfg->suffix_len, cfg->max_line};
    }
    if (what == NULL && cfg->allow_count > 0) {
        s->allow = calloc(cfg->allow_count, sizeof *s->allow);
        if (s->allow == NULL)
            what = "copying the allow list";
        else
            memcpy(s->allow, cfg->allow, cfg->allow_count * sizeof *s->allow);
        s->cfg.allow = s->allow;
    }
    if (what == NULL && cfg->max_connections_per_ip > 0) {
        if (fe_ip_table_init(&s->ip_table, 4096) != 0)
            what = "allocating the per-address table";
        else
            s->ip_table_ready = true;
    }
    if (what == NULL) {
        s->acceptor_wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (s->acceptor_wake_fd < 0)
            what = "eventfd";
    }
    for (int i = 0; what == NULL && i < cfg->threads; i++) {
        fe_worker *w = &s->workers[i];
        w->server = s;
        w->index = i;
        if ((w->epoll_fd = epoll_create1(EPOLL_CLOEXEC)) < 0)
            what = "epoll_create1";
        else if ((w->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
            what = "eventfd";
        else if ((w->read_buffer = malloc(cfg->read_buffer_size)) == NULL)
            what = "allocating a read buffer";
        else if (fe_queue_init(&w->inbox, cfg->queue_capacity) != 0)
            what = "allocating a queue";
        else if (cfg->event_ring_size > 0 && fe_ring_init(&w->events, cfg->event_ring_size) != 0)
            what = "allocating an event ring";
        else {
            w->ring_ready = cfg->event_ring_size > 0;
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
            if (epoll_ctl(w->epoll_fd, EPOLL_CTL_ADD, w->wake_fd, &ev) != 0)
                what = "epoll_ctl";
        }
    }
    if (what) {
        int e = errno;
        free_server(s);
        return fail(err, errlen, e, "%s", what);
    }
    *out = s;
    return 0;
}

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
    int one = 1;
    /* An echo answers small writes at once; Nagle would hold them back. */
    setsockopt(h->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* A listener handed in with SO_LINGER set passes it on, and a lingering
     * close() blocks even on a non-blocking socket: the whole worker would
     * wait for one client. */
    struct linger no_linger = {.l_onoff = 0, .l_linger = 0};
    setsockopt(h->fd, SOL_SOCKET, SO_LINGER, &no_linger, sizeof no_linger);
    int i = least_loaded_worker(s);
    bool was_empty = false;
    if (fe_queue_push(&s->workers[i].inbox, h, &was_empty) != 0) {
        /* Interrupted by shutdown while the worker's queue was full. */
        close(h->fd);
        if (h->counted_per_ip)
            fe_ip_table_release(&s->ip_table, &h->peer);
        atomic_fetch_sub_explicit(&s->open_connections, 1, memory_order_relaxed);
        fe_counter_add(&s->connections_refused, 1);
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
    if (s->cfg.allow_count > 0 && !fe_cidr_contains_any(s->allow, s->cfg.allow_count, &h->peer))
        rejected = &s->rejected_not_allowed;
    else if (s->cfg.max_connections > 0 &&
             atomic_load_explicit(&s->open_connections, memory_order_relaxed) >= s->cfg.max_connections)
        rejected = &s->rejected_max_connections;
    else if (s->cfg.max_connections_per_ip > 0) {
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

/* The most connections that leave `reserve` fds (at most a quarter of
 * RLIMIT_NOFILE) free, counting the fds open now; UINT64_MAX for none. */
static uint64_t fd_connection_limit(size_t reserve)
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

/* The pause after the acceptor runs out of a resource: doubling, capped. */
static int next_backoff_ms(int backoff_ms)
{
    backoff_ms = backoff_ms ? backoff_ms * 2 : FE_BACKOFF_MIN_MS;
    return backoff_ms > FE_BACKOFF_MAX_MS ? FE_BACKOFF_MAX_MS : backoff_ms;
}

static void *acceptor_main(void *arg)
{
    fe_server *s = arg;
    int backoff_ms = 0;
    struct pollfd fds[2] = {
        {.fd = s->acceptor_wake_fd, .events = POLLIN},
        {.fd = s->listen_fd, .events = POLLIN},
    };

    for (;;) {
        /* While backing off, only a stop request can wake us: the listener
         * stays readable and would otherwise spin the loop. */
        int rc = poll(fds, backoff_ms ? 1 : 2, backoff_ms ? backoff_ms : -1);
        if (rc < 0 && errno != EINTR) {
            atomic_store(&s->acceptor_error, errno);
            return NULL;
        }
        if (atomic_load(&s->state) != FE_RUNNING || (fds[0].revents & POLLIN))
            return NULL;

        for (int n = 0; n < FE_ACCEPT_BATCH && !atomic_load(&s->stop_accepting); n++) {
            if (atomic_load_explicit(&s->open_connections, memory_order_relaxed) >=
                s->fd_connection_limit) {
                /* Another connection would eat into the caller's reserve of
                 * fds: wait as at EMFILE, with clients in the backlog. */
                fe_counter_add(&s->accept_fd_exhausted, 1);
                backoff_ms = next_backoff_ms(backoff_ms);
                break;
            }
            struct sockaddr_storage addr;
            socklen_t addr_len = sizeof addr;
            int fd = accept4(s->listen_fd, (struct sockaddr *)&addr, &addr_len,
                             SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd >= 0) {
                backoff_ms = 0;
                fe_handoff h = {.fd = fd, .accepted_ns = fe_now_ns()};
                fe_peer_from_sockaddr(&h.peer, (struct sockaddr *)&addr, addr_len);
                if (!admit(s, &h))
                    continue;
                fe_counter_add(&s->connections_accepted, 1);
                dispatch(s, &h);
                continue;
            }
            int e = errno;
            if (e == EINTR)
                continue;
            if (e == EAGAIN || e == EWOULDBLOCK) {
                backoff_ms = 0; /* the backlog is empty: poll the listener again */
                break;
            }
            fe_counter_add(&s->accept_errors, 1);
            if (is_transient_accept_error(e))
                continue;
            if (is_resource_exhaustion(e)) {
                /* Out of fds or memory: leave clients queued in the kernel's
                 * backlog and retry after a pause that doubles each time, so
                 * the acceptor costs nothing while it waits, and serves
                 * again soon after fds are freed. */
                if (e == EMFILE || e == ENFILE)
                    fe_counter_add(&s->accept_fd_exhausted, 1);
                backoff_ms = next_backoff_ms(backoff_ms);
                break;
            }
            /* EBADF, EINVAL, ENOTSOCK: the listener itself is unusable. */
            atomic_store(&s->acceptor_error, e);
            return NULL;
        }
    }
}

static int spawn(pthread_t *thread, const fe_config *cfg, void *(*fn)(void *), void *arg,
                 const char *name)
{
    pthread_attr_t attr;
    int rc = pthread_attr_init(&attr);
    if (rc != 0)
        return rc;
    rc = pthread_attr_setstacksize(&attr, cfg->thread_stack_size);
    if (rc == 0)
        rc = pthread_create(thread, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    if (rc == 0)
        pthread_setname_np(*thread, name); /* shows in top -H, ps -L, gdb */
    return rc;
}

/* Joins every thread that was started. Caller holds no locks. */
static void join_all(fe_server *s)
{
    if (s->acceptor_started && !s->acceptor_joined) {
        pthread_join(s->acceptor, NULL);
        s->acceptor_joined = true;
    }
    if (!s->workers_joined) {
        for (int i = 0; i < s->worker_count; i++) {
            if (s->workers[i].thread_started)
                pthread_join(s->workers[i].thread, NULL);
        }
        s->workers_joined = true;
    }
}

int fe_server_start(fe_server *s, int listen_fd, char *err, size_t errlen)
{
    /* Held throughout, so that a shutdown from another thread waits until
     * every thread exists and then stops them all. Workers take this lock
     * only when exiting, which cannot happen before a shutdown. */
    pthread_mutex_lock(&s->control_lock);
    if (s->started) {
        pthread_mutex_unlock(&s->control_lock);
        return fail(err, errlen, EALREADY, "the server was already started");
    }
    s->started = true;

    int listening = 0;
    socklen_t len = sizeof listening;
    int flags;
    if (getsockopt(listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0) {
        pthread_mutex_unlock(&s->control_lock);
        return fail(err, errlen, errno, "fd %d is not a usable socket", listen_fd);
    }
    if (!listening) {
        pthread_mutex_unlock(&s->control_lock);
        return fail(err, errlen, EINVAL, "fd %d is not a listening socket", listen_fd);
    }
    if ((flags = fcntl(listen_fd, F_GETFL)) < 0 || fcntl(listen_fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        int e = errno;
        pthread_mutex_unlock(&s->control_lock);
        return fail(err, errlen, e, "making fd %d non-blocking", listen_fd);
    }
    s->listen_fd = listen_fd;
    s->fd_connection_limit = fd_connection_limit(s->cfg.fd_reserve);

    /* Threads inherit the creator's signal mask: block everything while
     * spawning so that signals are only ever delivered to the caller. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);

    int rc = 0;
    char name[16]; /* the kernel keeps at most 15 chars of a thread name */
    for (int i = 0; rc == 0 && i < s->worker_count; i++) {
        fe_worker *w = &s->workers[i];
        snprintf(name, sizeof name, "fe-worker-%u", (unsigned)i % 10000u);
        rc = spawn(&w->thread, &s->cfg, fe_worker_main, w, name);
        if (rc == 0) {
            w->thread_started = true;
            s->workers_running++;
        }
    }
    if (rc == 0) {
        rc = spawn(&s->acceptor, &s->cfg, acceptor_main, s, "fe-acceptor");
        s->acceptor_started = rc == 0;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_mutex_unlock(&s->control_lock);

    if (rc != 0) {
        fe_server_shutdown(s, 0, 0);
        join_all(s);
        return fail(err, errlen, rc, "starting %d threads", s->worker_count + 1);
    }
    return 0;
}

void fe_server_shutdown(fe_server *s, int64_t drain_ms, int64_t linger_ms)
{
    drain_ms = drain_ms < 0 ? 0 : drain_ms > FE_MAX_TIMEOUT_MS ? FE_MAX_TIMEOUT_MS : drain_ms;
    linger_ms = linger_ms < 0 ? 0 : linger_ms > FE_MAX_TIMEOUT_MS ? FE_MAX_TIMEOUT_MS : linger_ms;
    pthread_mutex_lock(&s->control_lock);
    if (!s->started) {
        pthread_mutex_unlock(&s->control_lock);
        return;
    }
    if (s->acceptor_started && !s->acceptor_joined) {
        /* Stop accepting first: once the acceptor is joined, nothing can be
         * queued any more, and the caller may close the listening socket. */
        atomic_store(&s->stop_accepting, true);
        fe_wake(s->acceptor_wake_fd);
        for (int i = 0; i < s->worker_count; i++)
            fe_queue_interrupt(&s->workers[i].inbox);
        pthread_join(s->acceptor, NULL);
        s->acceptor_joined = true;
    }
    int64_t now = fe_now_ns();
    int64_t drain = now + drain_ms * 1000000;
    int64_t close = drain + linger_ms * 1000000;
    if (drain < atomic_load(&s->drain_deadline_ns))
        atomic_store(&s->drain_deadline_ns, drain);
    if (close < atomic_load(&s->close_deadline_ns))
        atomic_store(&s->close_deadline_ns, close);
    atomic_store(&s->state, FE_DRAINING);
    for (int i = 0; i < s->worker_count; i++)
        fe_wake(s->workers[i].wake_fd);
    pthread_mutex_unlock(&s->control_lock);
}

int fe_server_wait(fe_server *s, int timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    if (timeout_ms >= 0) {
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&s->control_lock);
    int rc = 0;
    while (s->workers_running > 0 && rc != ETIMEDOUT) {
        if (timeout_ms < 0)
            pthread_cond_wait(&s->workers_exited_cond, &s->control_lock);
        else
            rc = pthread_cond_timedwait(&s->workers_exited_cond, &s->control_lock, &until);
    }
    int done = s->workers_running == 0;
    pthread_mutex_unlock(&s->control_lock);
    return done;
}

void fe_server_stats(const fe_server *s, fe_stats *out)
{
    uint64_t received = 0, sent = 0, closed = 0, idle = 0, too_long = 0, dropped = 0, waits = 0;
    for (int i = 0; i < s->worker_count; i++) {
        const fe_worker *w = &s->workers[i];
        received += fe_counter_read(&w->bytes_received);
        sent += fe_counter_read(&w->bytes_sent);
        closed += fe_counter_read(&w->connections_closed);
        idle += fe_counter_read(&w->idle_timeouts);
        too_long += fe_counter_read(&w->lines_too_long);
        waits += fe_counter_read(&w->budget_waits);
        if (w->ring_ready)
            dropped += atomic_load_explicit(&((fe_worker *)w)->events.dropped, memory_order_relaxed);
    }
    closed += fe_counter_read(&s->connections_refused);
    /* Read accepted after closed (acquire loads): every close seen here was
     * preceded by its accept, so active can only be overstated. */
    uint64_t accepted = fe_counter_read(&s->connections_accepted);
    out->connections_accepted = accepted;
    out->connections_closed = closed;
    out->connections_active = accepted > closed ? accepted - closed : 0;
    out->bytes_received = received;
    out->bytes_sent = sent;
    out->accept_errors = fe_counter_read(&s->accept_errors);
    out->rejected_max_connections = fe_counter_read(&s->rejected_max_connections);
    out->rejected_per_ip = fe_counter_read(&s->rejected_per_ip);
    out->rejected_not_allowed = fe_counter_read(&s->rejected_not_allowed);
    out->idle_timeouts = idle;
    out->lines_too_long = too_long;
    out->events_dropped = dropped;
    out->accept_fd_exhausted = fe_counter_read(&s->accept_fd_exhausted);
    out->memory_held = atomic_load_explicit(&((fe_server *)s)->memory_held, memory_order_relaxed);
    out->memory_budget_waits = waits;
}

size_t fe_server_drain_events(fe_server *s, fe_event *out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&s->events_lock);
    for (int i = 0; i < s->worker_count && n < max; i++) {
        if (s->workers[i].ring_ready)
            n += fe_ring_pop(&s->workers[i].events, out + n, max - n);
    }
    pthread_mutex_unlock(&s->events_lock);
    return n;
}

int fe_server_acceptor_error(const fe_server *s)
{
    return atomic_load(&((fe_server *)s)->acceptor_error);
}

void fe_server_destroy(fe_server *s)
{
    if (s == NULL)
        return;
    fe_server_shutdown(s, 0, 0);
    fe_server_wait(s, -1);
    join_all(s);
    free_server(s);
}
