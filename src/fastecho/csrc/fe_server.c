/*
 * fe_server.c - the server's lifecycle: config, create, start (the workers
 * of fe_loop_epoll.c or fe_loop_uring.c, and the acceptor of fe_acceptor.c), graceful stop,
 * wait, counters, access events, destroy.
 */
#include "fe_internal.h"
#include "fe_sock.h"
#include "fe_splice.h"
#include "fe_tls.h"
#include "fe_udp.h"
#include "fe_uring.h"
#include "fe_ws.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* The longest drain, linger or idle time accepted (about 11.6 days): keeps
 * nanosecond deadline arithmetic far from overflow. */
#define FE_MAX_TIMEOUT_MS ((int64_t)1000000000)

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
    cfg->framing = FE_FRAMING_RAW;
    cfg->io_backend = FE_IO_EPOLL;
    cfg->suffix = NULL;
    cfg->suffix_len = 0;
    cfg->max_line = 64u << 10;
    cfg->event_ring_size = 0;
    cfg->max_connections = 0;
    cfg->max_connections_per_ip = 0;
    cfg->idle_timeout_ms = 0;
    cfg->allow = NULL;
    cfg->allow_count = 0;
    cfg->proxy_from = NULL;
    cfg->proxy_from_count = 0;
    cfg->proxy_timeout_ms = 5000;
    cfg->tls_handshake_timeout_ms = 10000;
    /* Every field set here: a C caller's cfg starts as whatever its stack
     * held, so a field left out is garbage (a bool that is neither 0 nor 1). */
    cfg->udp_allow_low_ports = false;
    cfg->udp_rate = 0;
    cfg->udp_max_datagram = 65535;
    cfg->ws_path = NULL;
    cfg->ws_path_len = 0;
    cfg->ws_origins = NULL;
    cfg->ws_origin_lens = NULL;
    cfg->ws_origin_count = 0;
    cfg->ws_max_message = 16u << 20;
    cfg->ws_max_header = 8u << 10;
    cfg->ws_handshake_timeout_ms = 10000;
    cfg->max_memory = 0;
    cfg->fd_reserve = 0;
    cfg->splice = true;
}

static int validate_ranges(const char *name, const fe_cidr *ranges, size_t count, char *err,
                           size_t errlen)
{
    if (count > 0 && ranges == NULL)
        return fail(err, errlen, 0, "%s_count is set but %s is NULL", name, name);
    for (size_t i = 0; i < count; i++) {
        const fe_cidr *r = &ranges[i];
        if (!((r->family == 4 && r->prefix_len <= 32) || (r->family == 6 && r->prefix_len <= 128)))
            return fail(err, errlen, 0, "%s entry %zu is not a valid address range", name, i);
    }
    return 0;
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
    bool line = cfg->framing == FE_FRAMING_LINE;
    if (cfg->framing != FE_FRAMING_RAW && !line)
        return fail(err, errlen, 0, "unknown framing %d", (int)cfg->framing);
    if (cfg->io_backend != FE_IO_EPOLL && cfg->io_backend != FE_IO_URING)
        return fail(err, errlen, 0, "unknown io backend %d", (int)cfg->io_backend);
    if (line && cfg->suffix_len > 0 && cfg->suffix == NULL)
        return fail(err, errlen, 0, "suffix_len is set but suffix is NULL");
    if (line && cfg->suffix_len > 4096)
        return fail(err, errlen, 0, "the line suffix must be at most 4096 bytes");
    if (line && cfg->suffix_len > 0 && memchr(cfg->suffix, '\n', cfg->suffix_len))
        return fail(err, errlen, 0, "the line suffix must not contain a newline");
    if (line && (cfg->max_line < 1 || cfg->max_line > (64u << 20)))
        return fail(err, errlen, 0, "max line must be between 1 B and 64 MiB");
    if (line && cfg->max_pending_output < 2 * (1 + cfg->suffix_len))
        return fail(err, errlen, 0, "max pending output (%zu) must be at least 2 * (1 + suffix length) = %zu",
                    cfg->max_pending_output, 2 * (1 + cfg->suffix_len));
    if (cfg->event_ring_size > (1u << 24))
        return fail(err, errlen, 0, "the event ring may hold at most 16777216 events");
    if (cfg->idle_timeout_ms < 0 || cfg->idle_timeout_ms > FE_MAX_TIMEOUT_MS)
        return fail(err, errlen, 0, "the idle timeout must be between 0 and %lld ms",
                    (long long)FE_MAX_TIMEOUT_MS);
    if (cfg->max_memory != 0 && cfg->max_memory < (1u << 20))
        return fail(err, errlen, 0, "the memory budget must be at least 1 MiB (or 0 for none)");
    /* A line is held whole until its newline, then copied out whole: one
     * longer than a quarter of the budget could wait for ever on itself. */
    if (line && cfg->max_memory != 0 && cfg->max_memory / 4 < cfg->max_line)
        return fail(err, errlen, 0, "in line mode the memory budget (%zu) must be at least 4 * max line (%zu)",
                    cfg->max_memory, cfg->max_line);
    if (cfg->fd_reserve > (1u << 20))
        return fail(err, errlen, 0, "the fd reserve must be at most 1048576");
    if (validate_ranges("allow", cfg->allow, cfg->allow_count, err, errlen) != 0 ||
        validate_ranges("proxy_from", cfg->proxy_from, cfg->proxy_from_count, err, errlen) != 0)
        return -1;
    if (cfg->proxy_timeout_ms < 1 || cfg->proxy_timeout_ms > FE_MAX_TIMEOUT_MS)
        return fail(err, errlen, 0, "the PROXY header timeout must be between 1 and %lld ms",
                    (long long)FE_MAX_TIMEOUT_MS);
    if (cfg->tls_handshake_timeout_ms < 1 || cfg->tls_handshake_timeout_ms > FE_MAX_TIMEOUT_MS)
        return fail(err, errlen, 0, "the TLS handshake timeout must be between 1 and %lld ms",
                    (long long)FE_MAX_TIMEOUT_MS);
    if (cfg->udp_max_datagram < 1 || cfg->udp_max_datagram > 65535)
        return fail(err, errlen, 0, "the largest UDP datagram must be between 1 and 65535 bytes");
    if (fe_ws_validate_config(cfg, err, errlen) != 0) {
        errno = EINVAL;
        return -1;
    }
    return 0;
}

/* The memory budget's plain bound and reserve (fe_internal.h), set by
 * fe_server_start once the listeners are known; only workers read them.
 * multishots: io_uring, with a listener whose connections can be plain
 * (they receive with multishot receives). */
static void set_memory_bounds(fe_server *s, bool multishots)
{
    const fe_config *cfg = &s->cfg;
    /* A read of plain_read_room into an empty buffer grows it by at most
     * 2 * plain_read_room + 4 KiB (fe_buf doubles from 4 KiB). */
    size_t plain_growth = 2 * s->plain_read_room + 4096;
    /* io_uring: each worker's multishot receives may deliver its whole
     * buffer pool in the batch in which memory passes the bound, on top of
     * what the reads that check the budget took: that much stays free. */
    s->memory_reserve = 0;
    if (multishots) {
        s->memory_reserve = fe_uring_pool_growth(cfg) * (size_t)cfg->threads;
        /* At most half the budget: reads that check it must have room, or
         * a held ws message or partial line could hardly grow. Below that
         * (a budget under about 4 MiB per thread) one batch of multishot
         * receives may pass the budget by what the reserve leaves out. */
        if (s->memory_reserve > cfg->max_memory / 2)
            s->memory_reserve = cfg->max_memory / 2;
        plain_growth += s->memory_reserve;
    }
    s->memory_plain_bound = cfg->max_memory == 0 ? SIZE_MAX
                            : cfg->max_memory >= plain_growth ? cfg->max_memory - plain_growth + 1
                                                              : 0;
}

/* Copies count ranges into *owned (NULL when count is 0). Returns 0 or -1. */
static int copy_ranges(const fe_cidr *ranges, size_t count, fe_cidr **owned)
{
    *owned = NULL;
    if (count == 0)
        return 0;
    if ((*owned = calloc(count, sizeof **owned)) == NULL)
        return -1;
    memcpy(*owned, ranges, count * sizeof **owned);
    return 0;
}

static void release_workers(fe_server *s)
{
    for (int i = 0; i < s->worker_count; i++) {
        fe_worker *w = &s->workers[i];
        fe_udp_close(w); /* a no-op unless the workers never ran */
        fe_udp_free(w);
        fe_uring_worker_free(w);
        fe_splice_pool_free(w);
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
    fe_rate_destroy(&s->udp_rate);
    free(s->suffix);
    free(s->allow);
    free(s->proxy_from);
    fe_ws_server_release(s);
}

static void free_server(fe_server *s)
{
    release_workers(s);
    if (s->acceptor_wake_fd >= 0)
        close(s->acceptor_wake_fd);
    pthread_mutex_destroy(&s->events_lock);
    fe_tls_server_release(s);
    pthread_mutex_destroy(&s->tls_lock);
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
    pthread_mutex_init(&s->tls_lock, NULL);
    pthread_cond_init(&s->workers_exited_cond, &cattr);
    pthread_condattr_destroy(&cattr);
    atomic_init(&s->open_connections, 0);
    atomic_init(&s->memory_held, 0);
    s->plain_read_room = cfg->max_pending_output < cfg->read_buffer_size ? cfg->max_pending_output
                                                                         : cfg->read_buffer_size;
    s->fd_connection_limit = UINT64_MAX;
    s->splice_pipe_size = fe_splice_pipe_size(cfg);
    s->splice_read_room = s->splice_pipe_size ? s->plain_read_room : 0;
    atomic_init(&s->splice_pipes, 0);

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
    s->cfg.suffix = NULL;
    if (what == NULL && cfg->framing == FE_FRAMING_LINE) {
        s->suffix = malloc(cfg->suffix_len ? cfg->suffix_len : 1);
        if (s->suffix == NULL)
            what = "copying the suffix";
        else if (cfg->suffix_len > 0)
            memcpy(s->suffix, cfg->suffix, cfg->suffix_len);
        s->cfg.suffix = s->suffix;
        s->line_format = (fe_line_format){s->suffix, cfg->suffix_len, cfg->max_line};
    }
    if (what == NULL && (copy_ranges(cfg->allow, cfg->allow_count, &s->allow) != 0 ||
                         copy_ranges(cfg->proxy_from, cfg->proxy_from_count, &s->proxy_from) != 0))
        what = "copying the address ranges";
    s->cfg.allow = s->allow;
    s->cfg.proxy_from = s->proxy_from;
    if (what == NULL)
        what = fe_ws_server_init(s, cfg);
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
        bool epoll = cfg->io_backend == FE_IO_EPOLL; /* io_uring: its ring stands for it */
        if (epoll && (w->epoll_fd = epoll_create1(EPOLL_CLOEXEC)) < 0)
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
            if (epoll && epoll_ctl(w->epoll_fd, EPOLL_CTL_ADD, w->wake_fd, &ev) != 0)
                what = "epoll_ctl";
        }
    }
    if (what == NULL && cfg->io_backend == FE_IO_URING) {
        /* In the caller's thread, so that a refusal (a seccomp profile,
         * kernel.io_uring_disabled, a locked-memory limit) is reported here. */
        for (int i = 0; i < cfg->threads; i++) {
            if (fe_uring_worker_init(&s->workers[i], err, errlen) != 0) {
                int e = errno;
                free_server(s);
                errno = e;
                return -1;
            }
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

static bool tls_ready(fe_server *s)
{
    pthread_mutex_lock(&s->tls_lock);
    bool ready = s->tls_ctx != NULL;
    pthread_mutex_unlock(&s->tls_lock);
    return ready;
}

int fe_server_start(fe_server *s, const fe_listener *listeners, size_t count, char *err,
                    size_t errlen)
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

    if (count < 1 || count > FE_MAX_LISTENERS || listeners == NULL) {
        pthread_mutex_unlock(&s->control_lock);
        return fail(err, errlen, EINVAL, "between 1 and %d listeners are served, not %zu",
                    FE_MAX_LISTENERS, count);
    }
    for (size_t i = 0; i < count; i++) {
        if (listeners[i].udp && (listeners[i].tls || listeners[i].proxy)) {
            pthread_mutex_unlock(&s->control_lock);
            return fail(err, errlen, EINVAL, "a UDP listener speaks neither TLS nor the PROXY protocol");
        }
        if (!listeners[i].udp && fe_sock_prepare_listener(listeners[i].fd) != 0) {
            int e = errno;
            pthread_mutex_unlock(&s->control_lock);
            return fail(err, errlen, e, "fd %d is not a usable listening socket", listeners[i].fd);
        }
        if (listeners[i].tls && !tls_ready(s)) {
            pthread_mutex_unlock(&s->control_lock);
            return fail(err, errlen, fe_tls_available() ? EINVAL : ENOTSUP,
                        fe_tls_available() ? "a tls listener needs a certificate (fe_server_set_tls)"
                                           : "a tls listener needs TLS, and this build has none");
        }
        if (listeners[i].ws && (listeners[i].udp || !fe_ws_available() || s->cfg.framing != FE_FRAMING_RAW)) {
            pthread_mutex_unlock(&s->control_lock);
            return fail(err, errlen, fe_ws_available() ? EINVAL : ENOTSUP,
                        !fe_ws_available() ? "a ws listener needs libcrypto, and this build has none"
                        : listeners[i].udp ? "a UDP listener cannot speak WebSocket"
                                           : "line mode does not apply to ws listeners (messages come back whole)");
        }
        s->listeners[i] = listeners[i];
    }
    atomic_store(&s->listener_count, count);
    /* Only a raw tcp listener's connections receive with multishot
     * receives (ws, udp and line mode never do): without one, io_uring
     * needs no reserve. */
    bool multishots = false;
    for (size_t i = 0; i < count; i++)
        multishots |= !listeners[i].udp && !listeners[i].ws && !listeners[i].tls;
    set_memory_bounds(s, s->cfg.io_backend == FE_IO_URING && s->cfg.framing == FE_FRAMING_RAW && multishots);
    if (fe_udp_open(s, err, errlen) != 0) {
        int e = errno;
        pthread_mutex_unlock(&s->control_lock);
        errno = e;
        return -1; /* what it opened is closed at destroy */
    }

    /* Counted here, in the caller's thread, when every fd the caller and the
     * core opened up front is open and before anything else can be: counted
     * later by the acceptor, the fds of whatever the caller's other threads
     * accept meanwhile (metrics scrapes) would be taken from connections. */
    s->fd_connection_limit = fe_fd_connection_limit(s->cfg.fd_reserve);

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
        rc = spawn(&w->thread, &s->cfg, s->cfg.io_backend == FE_IO_URING ? fe_worker_main_uring : fe_worker_main_epoll,
                   w, name);
        if (rc == 0) {
            w->thread_started = true;
            s->workers_running++;
        }
    }
    if (rc == 0) {
        rc = spawn(&s->acceptor, &s->cfg, fe_acceptor_main, s, "fe-acceptor");
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

/* Listener l's UDP counters, summed over the workers. */
static void udp_stats(const fe_server *s, size_t l, fe_stats *out)
{
    out->udp_in[l] = out->udp_out[l] = out->udp_bytes_in[l] = out->udp_bytes_out[l] = 0;
    memset(out->udp_dropped[l], 0, sizeof out->udp_dropped[l]);
    for (int i = 0; i < s->worker_count; i++) {
        const fe_worker *w = &s->workers[i];
        out->udp_in[l] += fe_counter_read(&w->udp_in[l]);
        out->udp_out[l] += fe_counter_read(&w->udp_out[l]);
        out->udp_bytes_in[l] += fe_counter_read(&w->udp_bytes_in[l]);
        out->udp_bytes_out[l] += fe_counter_read(&w->udp_bytes_out[l]);
        for (int r = 0; r < FE_UDP_DROP_COUNT; r++)
            out->udp_dropped[l][r] += fe_counter_read(&w->udp_dropped[l][r]);
    }
}

void fe_server_stats(const fe_server *s, fe_stats *out)
{
    uint64_t received = 0, sent = 0, closed = 0, too_long = 0, dropped = 0, waits = 0;
    uint64_t handshakes = 0, resumed = 0, spliced = 0;
    uint64_t closes[FE_CLOSE_REASON_COUNT] = {0};
    memset(out->ws_http, 0, sizeof out->ws_http);
    memset(out->ws_closes, 0, sizeof out->ws_closes);
    out->ws_messages = out->ws_pings = 0;
    for (int i = 0; i < s->worker_count; i++) {
        const fe_worker *w = &s->workers[i];
        received += fe_counter_read(&w->bytes_received);
        sent += fe_counter_read(&w->bytes_sent);
        closed += fe_counter_read(&w->connections_closed);
        for (int r = 0; r < FE_CLOSE_REASON_COUNT; r++)
            closes[r] += fe_counter_read(&w->closes[r]);
        too_long += fe_counter_read(&w->lines_too_long);
        waits += fe_counter_read(&w->budget_waits);
        handshakes += fe_counter_read(&w->tls_handshakes);
        resumed += fe_counter_read(&w->tls_resumed);
        spliced += fe_counter_read(&w->splice_bytes);
        for (int k = 0; k < FE_WS_HTTP_COUNT; k++)
            out->ws_http[k] += fe_counter_read(&w->ws_http[k]);
        for (int k = 0; k < FE_WS_CLOSE_SLOTS; k++)
            out->ws_closes[k] += fe_counter_read(&w->ws_closes[k]);
        out->ws_messages += fe_counter_read(&w->ws_messages);
        out->ws_pings += fe_counter_read(&w->ws_pings);
        if (w->ring_ready)
            dropped += atomic_load_explicit(&((fe_worker *)w)->events.dropped, memory_order_relaxed);
    }
    uint64_t refused = fe_counter_read(&s->connections_refused);
    closed += refused;
    closes[FE_CLOSE_SHUTDOWN] += refused; /* accepted as the stop began, closed unserved */
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
    out->rejected_proxy_untrusted = fe_counter_read(&s->rejected_proxy_untrusted);
    out->idle_timeouts = closes[FE_CLOSE_IDLE];
    memcpy(out->closes, closes, sizeof closes);
    out->lines_too_long = too_long;
    out->events_dropped = dropped;
    out->accept_fd_exhausted = fe_counter_read(&s->accept_fd_exhausted);
    out->memory_held = atomic_load_explicit(&((fe_server *)s)->memory_held, memory_order_relaxed);
    out->memory_budget_waits = waits;
    out->tls_handshakes = handshakes;
    out->tls_resumed = resumed;
    out->splice_bytes = spliced;
    out->splice_pipes = atomic_load_explicit(&((fe_server *)s)->splice_pipes, memory_order_relaxed);
    /* Closed before accepted, as for the totals above. */
    out->listener_count = atomic_load(&((fe_server *)s)->listener_count);
    for (size_t l = 0; l < out->listener_count; l++) {
        uint64_t listener_closed = fe_counter_read(&s->listener_refused[l]);
        for (int i = 0; i < s->worker_count; i++)
            listener_closed += fe_counter_read(&s->workers[i].listener_closed[l]);
        out->listener_closed[l] = listener_closed;
        out->listener_accepted[l] = fe_counter_read(&s->listener_accepted[l]);
        udp_stats(s, l, out);
    }
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
