/*
 * fe_queue.h - a bounded FIFO of file descriptors guarded by a mutex and a
 * condition variable: the hand-off from the acceptor to one worker.
 *
 * One producer (the acceptor) may block while the queue is full; consumers
 * (the owning worker) never block: they learn that fds are waiting from an
 * eventfd, because a worker sleeps in epoll_wait, not on a condvar.
 */
#ifndef FE_QUEUE_H
#define FE_QUEUE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct fe_queue {
    pthread_mutex_t lock;
    pthread_cond_t not_full;
    int *slots;
    size_t capacity;
    size_t head;  /* index of the oldest fd */
    size_t count;
    bool interrupted;
} fe_queue;

/* Allocates room for capacity (> 0) fds. Returns 0, or -1 with errno set. */
int fe_queue_init(fe_queue *q, size_t capacity);

/* Closes any fds still queued and frees the queue. No thread may be using it. */
void fe_queue_destroy(fe_queue *q);

/* Appends fd, waiting while the queue is full. Returns 0 and sets
 * *was_empty (so the caller wakes the consumer only when it may be idle),
 * or -1 if fe_queue_interrupt was called; fd is then still the caller's. */
int fe_queue_push(fe_queue *q, int fd, bool *was_empty);

/* Moves up to max of the oldest fds into out without waiting; returns how
 * many. Wakes a producer waiting for room. */
size_t fe_queue_pop_batch(fe_queue *q, int *out, size_t max);

/* Makes every current and future fe_queue_push fail, so a producer blocked on
 * a full queue can be stopped. Fds already queued stay poppable. */
void fe_queue_interrupt(fe_queue *q);

#endif /* FE_QUEUE_H */
