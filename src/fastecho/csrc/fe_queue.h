/*
 * fe_queue.h - a bounded FIFO of accepted connections guarded by a mutex and a
 * condition variable: the hand-off from the acceptor to one worker.
 *
 * One producer (the acceptor) may block while the queue is full; consumers
 * (the owning worker) never block: they learn that fds are waiting from an
 * eventfd, because a worker sleeps in epoll_wait, not on a condvar.
 */
#ifndef FE_QUEUE_H
#define FE_QUEUE_H

#include "fe.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

/* An accepted connection on its way to a worker. */
typedef struct fe_handoff {
    int fd;
    bool counted_per_ip; /* the per-address table counts it: release on close */
    bool proxy;          /* a PROXY header comes first; admission waits for it */
    bool tls;            /* the connection speaks TLS (after its PROXY header) */
    bool ws;             /* WebSocket, after TLS and the PROXY header */
    uint8_t listener;    /* index of the listener it came from */
    fe_peer peer;
    int64_t accepted_ns; /* CLOCK_MONOTONIC */
} fe_handoff;

typedef struct fe_queue {
    pthread_mutex_t lock;
    pthread_cond_t not_full;
    fe_handoff *slots;
    size_t capacity;
    size_t head;  /* index of the oldest fd */
    size_t count;
    bool interrupted;
} fe_queue;

/* Allocates room for capacity (> 0) connections. Returns 0, or -1 with errno set. */
int fe_queue_init(fe_queue *q, size_t capacity);

/* Closes any connections still queued and frees the queue. No thread may be
 * using it. */
void fe_queue_destroy(fe_queue *q);

/* Appends item, waiting while the queue is full. Returns 0 and sets
 * *was_empty (so the caller wakes the consumer only when it may be idle),
 * or -1 if fe_queue_interrupt was called; item is then still the caller's. */
int fe_queue_push(fe_queue *q, const fe_handoff *item, bool *was_empty);

/* Moves up to max of the oldest items into out without waiting; returns
 * how many. Wakes a producer waiting for room. */
size_t fe_queue_pop_batch(fe_queue *q, fe_handoff *out, size_t max);

/* Makes every current and future fe_queue_push fail, so a producer blocked on
 * a full queue can be stopped. Items already queued stay poppable. */
void fe_queue_interrupt(fe_queue *q);

#endif /* FE_QUEUE_H */
