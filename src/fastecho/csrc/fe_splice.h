/*
 * fe_splice.h - bulk echo through a pipe. splice(2) moves a plain TCP
 * connection's bytes from its socket into a pipe, and from the pipe back
 * into the socket, as references to the kernel's pages: they never enter
 * user space, and neither direction copies them.
 *
 * This file owns the pipes (sized within the output cap, kept in a small
 * pool per worker, and counted against the fds the acceptor leaves free)
 * and the two moves. When a connection takes a pipe and gives it back, and
 * what the bytes in it mean for backpressure, half-close and the memory
 * budget, is the connection's state machine's (fe_conn.c); when to move
 * them is the backend's (fe_loop_epoll.c, fe_loop_uring.c: both on
 * readiness, through fe_echo_path.h).
 *
 * Everything but fe_splice_pipe_size and fe_splice_pool_free runs on the
 * worker that owns the pool.
 */
#ifndef FE_SPLICE_H
#define FE_SPLICE_H

#include "fe.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct fe_worker;

typedef struct fe_pipe {
    int read_fd, write_fd;
    size_t capacity;      /* the most bytes it is given at once: within the output cap */
    struct fe_pipe *next; /* in its worker's pool */
} fe_pipe;

/* The pipe size to ask for under cfg (a power of two, at most the output
 * cap and the size an unprivileged process may set), or 0 when splice is
 * off or cannot apply (line mode). Pure. */
size_t fe_splice_pipe_size(const fe_config *cfg);

/* An empty pipe for one of w's connections: from w's pool, or a new one
 * when the fds it needs leave the acceptor's reserve intact. NULL when
 * there is none (EMFILE, ENFILE, the reserve, out of memory): the
 * connection then keeps copying. Counted in the server's splice_pipes. */
fe_pipe *fe_splice_pipe_get(struct fe_worker *w);

/* Gives p back. drained: the caller sent every byte it put in; p then goes
 * to w's pool if the kernel agrees it is empty and the pool has room. Any
 * other pipe is closed, so that no byte can reach another connection. */
void fe_splice_pipe_put(struct fe_worker *w, fe_pipe *p, bool drained);

/* Closes every pipe in w's pool. Only once w's thread has exited. */
void fe_splice_pool_free(struct fe_worker *w);

/* Moves up to n bytes from socket fd into p: the bytes moved, 0 at the
 * peer's FIN, FE_TP_AGAIN when there is nothing now, or FE_TP_ERROR.
 * Never blocks. n must fit in p (at most what it holds less p->capacity). */
ssize_t fe_splice_in(int fd, fe_pipe *p, size_t n);

/* Moves up to n bytes, oldest first, from p into socket fd: the bytes the
 * socket took (0 when it is full), or FE_TP_ERROR. Never blocks. */
ssize_t fe_splice_out(fe_pipe *p, int fd, size_t n);

#endif /* FE_SPLICE_H */
