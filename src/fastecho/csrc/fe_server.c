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
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

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
        free(w->read_buffer);
    }
    free(s->workers);
    free(s->assigned);
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
    pthread_cond_init(&s->workers_exited_cond, &cattr);
    pthread_condattr_destroy(&cattr);

    s->workers = aligned_alloc(_Alignof(fe_worker), sizeof(fe_worker) * (size_t)cfg->threads);
    s->assigned = calloc((size_t)cfg->threads, sizeof *s->assigned);
    if (s->workers == NULL || s->assigned == NULL) {
        int e = errno;
        free(s->workers);
        free(s->assigned);
        free(s);
        return fail(err, errlen, e, "allocating %d workers", cfg->threads);
    }
    memset(s->workers, 0, sizeof(fe_worker) * (size_t)cfg->threads);
    for (int i = 0; i < cfg->threads; i++) {
        s->workers[i].epoll_fd = -1;
        s->workers[i].wake_fd = -1;
    }
    s->worker_count = cfg->threads;

    const char *what = NULL;
    s->acceptor_wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->acceptor_wake_fd < 0)
        what = "eventfd";
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
        else {
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
            if (epoll_ctl(w->epoll_fd, EPOLL_CTL_ADD, w->wake_fd, &ev) != 0)
                what = "epoll_ctl";
        }
    }
    if (what) {
        int e = errno;
        release_workers(s);
        if (s->acceptor_wake_fd >= 0)
            close(s->acceptor_wake_fd);
        pthread_cond_destroy(&s->workers_exited_cond);
        pthread_mutex_destroy(&s->control_lock);
        free(s);
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

static void dispatch(fe_server *s, int fd)
{
    int one = 1;
    /* An echo answers small writes at once; Nagle would hold them back. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int i = least_loaded_worker(s);
    bool was_empty = false;
    if (fe_queue_push(&s->workers[i].inbox, fd, &was_empty) != 0) {
        /* Interrupted by shutdown while the worker's queue was full. */
        close(fd);
        fe_counter_add(&s->connections_refused, 1);
        return;
    }
    s->assigned[i]++;
    if (was_empty) /* a non-empty queue already has a wake-up pending */
        fe_wake(s->workers[i].wake_fd);
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

        for (int n = 0; n < FE_ACCEPT_BATCH; n++) {
            int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd >= 0) {
                fe_counter_add(&s->connections_accepted, 1);
                dispatch(s, fd);
                backoff_ms = 0;
                continue;
            }
            int e = errno;
            if (e == EINTR)
                continue;
            if (e == EAGAIN || e == EWOULDBLOCK)
                break;
            fe_counter_add(&s->accept_errors, 1);
            if (is_transient_accept_error(e))
                continue;
            if (is_resource_exhaustion(e)) {
                /* Out of fds or memory: leave clients queued in the kernel's
                 * backlog and retry after a pause that doubles each time, so
                 * the acceptor costs nothing while it waits, and serves
                 * again soon after fds are freed. */
                backoff_ms = backoff_ms ? backoff_ms * 2 : FE_BACKOFF_MIN_MS;
                if (backoff_ms > FE_BACKOFF_MAX_MS)
                    backoff_ms = FE_BACKOFF_MAX_MS;
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
    pthread_mutex_lock(&s->control_lock);
    if (s->started) {
        pthread_mutex_unlock(&s->control_lock);
        return fail(err, errlen, EALREADY, "the server was already started");
    }
    s->started = true;
    pthread_mutex_unlock(&s->control_lock);

    int listening = 0;
    socklen_t len = sizeof listening;
    if (getsockopt(listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0)
        return fail(err, errlen, errno, "fd %d is not a usable socket", listen_fd);
    if (!listening)
        return fail(err, errlen, EINVAL, "fd %d is not a listening socket", listen_fd);
    int flags = fcntl(listen_fd, F_GETFL);
    if (flags < 0 || fcntl(listen_fd, F_SETFL, flags | O_NONBLOCK) != 0)
        return fail(err, errlen, errno, "making fd %d non-blocking", listen_fd);
    s->listen_fd = listen_fd;

    /* Threads inherit the creator's signal mask: block everything while
     * spawning so that signals are only ever delivered to the caller. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);

    int rc = 0;
    char name[16]; /* the kernel keeps at most 15 chars of a thread name */
    for (int i = 0; rc == 0 && i < s->worker_count; i++) {
        fe_worker *w = &s->workers[i];
        pthread_mutex_lock(&s->control_lock);
        s->workers_running++;
        pthread_mutex_unlock(&s->control_lock);
        snprintf(name, sizeof name, "fe-worker-%u", (unsigned)i % 10000u);
        rc = spawn(&w->thread, &s->cfg, fe_worker_main, w, name);
        if (rc == 0) {
            w->thread_started = true;
        } else {
            pthread_mutex_lock(&s->control_lock);
            s->workers_running--;
            pthread_mutex_unlock(&s->control_lock);
        }
    }
    if (rc == 0) {
        rc = spawn(&s->acceptor, &s->cfg, acceptor_main, s, "fe-acceptor");
        s->acceptor_started = rc == 0;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (rc != 0) {
        fe_server_shutdown(s, 0, 0);
        join_all(s);
        return fail(err, errlen, rc, "starting %d threads", s->worker_count + 1);
    }
    return 0;
}

void fe_server_shutdown(fe_server *s, int64_t drain_ms, int64_t linger_ms)
{
    if (drain_ms < 0)
        drain_ms = 0;
    if (linger_ms < 0)
        linger_ms = 0;
    pthread_mutex_lock(&s->control_lock);
    if (!s->started) {
        pthread_mutex_unlock(&s->control_lock);
        return;
    }
    if (s->acceptor_started && !s->acceptor_joined) {
        /* Stop accepting first: once the acceptor is joined, nothing can be
         * queued any more, and the caller may close the listening socket. */
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
    uint64_t received = 0, sent = 0, closed = 0;
    for (int i = 0; i < s->worker_count; i++) {
        const fe_worker *w = &s->workers[i];
        received += fe_counter_read(&w->bytes_received);
        sent += fe_counter_read(&w->bytes_sent);
        closed += fe_counter_read(&w->connections_closed);
    }
    closed += fe_counter_read(&s->connections_refused);
    /* Read accepted after closed so that active can only be overstated. */
    atomic_thread_fence(memory_order_acquire);
    uint64_t accepted = fe_counter_read(&s->connections_accepted);
    out->connections_accepted = accepted;
    out->connections_closed = closed;
    out->connections_active = accepted > closed ? accepted - closed : 0;
    out->bytes_received = received;
    out->bytes_sent = sent;
    out->accept_errors = fe_counter_read(&s->accept_errors);
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
    release_workers(s);
    close(s->acceptor_wake_fd);
    pthread_cond_destroy(&s->workers_exited_cond);
    pthread_mutex_destroy(&s->control_lock);
    free(s);
}
