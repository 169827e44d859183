#include "fe_ring.h"

#include <errno.h>
#include <stdlib.h>

int fe_ring_init(fe_ring *r, size_t capacity)
{
    size_t cap = 1;
    while (cap < capacity) {
        if (cap > ((size_t)-1) / 2) {
            errno = EINVAL;
            return -1;
        }
        cap *= 2;
    }
    r->slots = calloc(cap, sizeof *r->slots);
    if (r->slots == NULL)
        return -1;
    r->mask = cap - 1;
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    atomic_init(&r->dropped, 0);
    return 0;
}

void fe_ring_destroy(fe_ring *r)
{
    free(r->slots);
    r->slots = NULL;
}

void fe_ring_push(fe_ring *r, const fe_event *ev)
{
    size_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    size_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    if (tail - head > r->mask) {
        atomic_store_explicit(&r->dropped,
                              atomic_load_explicit(&r->dropped, memory_order_relaxed) + 1,
                              memory_order_relaxed);
        return;
    }
    r->slots[tail & r->mask] = *ev;
    /* release: the slot's contents are visible before the new tail is */
    atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
}

size_t fe_ring_pop(fe_ring *r, fe_event *out, size_t max)
{
    size_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    size_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    size_t n = tail - head;
    if (n > max)
        n = max;
    for (size_t i = 0; i < n; i++)
        out[i] = r->slots[(head + i) & r->mask];
    /* release: the slots are copied out before the producer may reuse them */
    atomic_store_explicit(&r->head, head + n, memory_order_release);
    return n;
}
