/*
 * fe_splice.c - the pipes of bulk echo, and splice(2) through them (see
 * fe_splice.h).
 */
#include "fe_splice.h"
#include "fe_internal.h"
#include "fe_transport.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* The largest pipe asked for: Linux's default /proc/sys/fs/pipe-max-size,
 * the most an unprivileged process may set. Larger pipes would save little:
 * one splice then already moves a whole loopback send buffer. */
enum { FE_SPLICE_PIPE_MAX = 1 << 20 };

size_t fe_splice_pipe_size(const fe_config *cfg)
{
    if (!cfg->splice || cfg->framing != FE_FRAMING_RAW)
        return 0;
    size_t limit = cfg->max_pending_output < FE_SPLICE_PIPE_MAX ? cfg->max_pending_output : FE_SPLICE_PIPE_MAX;
    /* A power of two: F_SETPIPE_SZ rounds up to one (in pages), and a pipe
     * larger than the cap would let a client queue more than the cap. */
    size_t size = 1;
    while (size <= limit / 2)
        size *= 2;
    return size;
}

static void close_pipe(fe_server *s, fe_pipe *p)
{
    close(p->read_fd);
    close(p->write_fd);
    free(p);
    atomic_fetch_sub_explicit(&s->splice_pipes, 1, memory_order_relaxed);
}

fe_pipe *fe_splice_pipe_get(fe_worker *w)
{
    fe_pipe *p = w->pipe_pool;
    if (p != NULL) {
        w->pipe_pool = p->next;
        w->pipe_pool_count--;
        return p;
    }
    fe_server *s = w->server;
    /* Counted before the check, so that two workers cannot both take the
     * last fds the limit leaves; the acceptor checks the same sum. */
    atomic_fetch_add_explicit(&s->splice_pipes, 1, memory_order_relaxed);
    int fds[2];
    if (fe_connection_fds(s) > s->fd_connection_limit || pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        atomic_fetch_sub_explicit(&s->splice_pipes, 1, memory_order_relaxed);
        return NULL;
    }
    size_t want = s->splice_pipe_size;
    /* Refused past the user's pipe limits (EPERM, unprivileged): the pipe
     * keeps the size it was made with, used up to want. */
    int size = fcntl(fds[1], F_SETPIPE_SZ, (int)want);
    if (size < 0)
        size = fcntl(fds[1], F_GETPIPE_SZ);
    p = size > 0 ? malloc(sizeof *p) : NULL;
    if (p == NULL) {
        close(fds[0]);
        close(fds[1]);
        atomic_fetch_sub_explicit(&s->splice_pipes, 1, memory_order_relaxed);
        return NULL;
    }
    *p = (fe_pipe){.read_fd = fds[0], .write_fd = fds[1],
                   .capacity = (size_t)size < want ? (size_t)size : want};
    return p;
}

void fe_splice_pipe_put(fe_worker *w, fe_pipe *p, bool drained)
{
    int queued = -1;
    if (drained && w->pipe_pool_count < FE_SPLICE_POOL_PIPES && ioctl(p->read_fd, FIONREAD, &queued) == 0 &&
        queued == 0) {
        p->next = w->pipe_pool;
        w->pipe_pool = p;
        w->pipe_pool_count++;
        return;
    }
    close_pipe(w->server, p);
}

void fe_splice_pool_free(fe_worker *w)
{
    while (w->pipe_pool != NULL) {
        fe_pipe *p = w->pipe_pool;
        w->pipe_pool = p->next;
        close_pipe(w->server, p);
    }
    w->pipe_pool_count = 0;
}

/* splice with EINTR retried; SPLICE_F_MOVE asks for the pages themselves
 * to move where the kernel can. A socket whose peer is gone raises SIGPIPE
 * at the worker thread, which blocks every signal (fe_server_start). */
static ssize_t splice_retrying(int from, int to, size_t n)
{
    ssize_t moved;
    do {
        moved = splice(from, NULL, to, NULL, n, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    } while (moved < 0 && errno == EINTR);
    return moved;
}

ssize_t fe_splice_in(int fd, fe_pipe *p, size_t n)
{
    ssize_t moved = splice_retrying(fd, p->write_fd, n);
    if (moved < 0)
        return errno == EAGAIN ? FE_TP_AGAIN : FE_TP_ERROR;
    return moved;
}

ssize_t fe_splice_out(fe_pipe *p, int fd, size_t n)
{
    /* One call moves all the socket takes: the kernel goes on through the
     * pipe's pages until the socket is full. */
    ssize_t moved = splice_retrying(p->read_fd, fd, n);
    if (moved < 0)
        return errno == EAGAIN ? 0 : FE_TP_ERROR;
    return moved;
}
