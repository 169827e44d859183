#include "fe_queue.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

int fe_queue_init(fe_queue *q, size_t capacity)
{
    if (capacity == 0) {
        errno = EINVAL;
        return -1;
    }
    q->slots = calloc(capacity, sizeof *q->slots);
    if (q->slots == NULL)
        return -1;
    int rc = pthread_mutex_init(&q->lock, NULL);
    if (rc != 0) {
        free(q->slots);
        errno = rc;
        return -1;
    }
    rc = pthread_cond_init(&q->not_full, NULL);
    if (rc != 0) {
        pthread_mutex_destroy(&q->lock);
        free(q->slots);
        errno = rc;
        return -1;
    }
    q->capacity = capacity;
    q->head = 0;
    q->count = 0;
    q->interrupted = false;
    return 0;
}

void fe_queue_destroy(fe_queue *q)
{
    for (size_t i = 0; i < q->count; i++)
        close(q->slots[(q->head + i) % q->capacity].fd);
    pthread_cond_destroy(&q->not_full);
    pthread_mutex_destroy(&q->lock);
    free(q->slots);
    q->slots = NULL;
    q->count = 0;
}

int fe_queue_push(fe_queue *q, const fe_handoff *item, bool *was_empty)
{
    pthread_mutex_lock(&q->lock);
    while (q->count == q->capacity && !q->interrupted)
        pthread_cond_wait(&q->not_full, &q->lock);
    if (q->interrupted) {
        pthread_mutex_unlock(&q->lock);
        return -1;
    }
    q->slots[(q->head + q->count) % q->capacity] = *item;
    *was_empty = q->count == 0;
    q->count++;
    pthread_mutex_unlock(&q->lock);
    return 0;
}

size_t fe_queue_pop_batch(fe_queue *q, fe_handoff *out, size_t max)
{
    pthread_mutex_lock(&q->lock);
    bool was_full = q->count == q->capacity;
    size_t n = q->count < max ? q->count : max;
    for (size_t i = 0; i < n; i++) {
        out[i] = q->slots[q->head];
        q->head = (q->head + 1) % q->capacity;
    }
    q->count -= n;
    if (was_full && n > 0)
        pthread_cond_signal(&q->not_full);
    pthread_mutex_unlock(&q->lock);
    return n;
}

void fe_queue_interrupt(fe_queue *q)
{
    pthread_mutex_lock(&q->lock);
    q->interrupted = true;
    pthread_cond_broadcast(&q->not_full);
    pthread_mutex_unlock(&q->lock);
}
