/*
 * fe_ring.h - a bounded single-producer, single-consumer ring of access
 * events. The producer (a worker) never waits: when the ring is full the
 * event is dropped and counted. The consumer drains in batches.
 */
#ifndef FE_RING_H
#define FE_RING_H

#include "fe.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct fe_ring {
    fe_event *slots;
    size_t mask; /* capacity - 1; capacity is a power of two */
    _Alignas(64) _Atomic size_t head; /* next slot to read; written by the consumer */
    _Alignas(64) _Atomic size_t tail; /* next slot to write; written by the producer */
    _Atomic uint64_t dropped;         /* written by the producer */
} fe_ring;

/* Allocates room for at least capacity (>= 1) events, rounded up to a power
 * of two. Returns 0, or -1 with errno set. */
int fe_ring_init(fe_ring *r, size_t capacity);

void fe_ring_destroy(fe_ring *r);

/* Producer only. Copies ev in, or counts it as dropped if the ring is full. */
void fe_ring_push(fe_ring *r, const fe_event *ev);

/* Consumer only. Moves up to max events into out; returns how many. */
size_t fe_ring_pop(fe_ring *r, fe_event *out, size_t max);

#endif /* FE_RING_H */
