/*
 * fe_limits.h - admission control at accept time: the allow list and the
 * per-address connection count. Used by the acceptor (admit) and by workers
 * (release on close), so the per-address table is guarded by a mutex; it is
 * touched once per connection open and close, never per message.
 */
#ifndef FE_LIMITS_H
#define FE_LIMITS_H

#include "fe.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct fe_ip_entry fe_ip_entry;

typedef struct fe_ip_table {
    pthread_mutex_t lock;
    fe_ip_entry **buckets;
    size_t bucket_count; /* a power of two */
} fe_ip_table;

/* True if peer lies inside one of the count ranges. */
bool fe_cidr_contains_any(const fe_cidr *ranges, size_t count, const fe_peer *peer);

/* Returns 0, or -1 with errno set. */
int fe_ip_table_init(fe_ip_table *t, size_t bucket_count);
void fe_ip_table_destroy(fe_ip_table *t);

/* Counts one more connection from peer unless it already has limit;
 * returns false (and counts nothing) when at the limit or out of memory. */
bool fe_ip_table_acquire(fe_ip_table *t, const fe_peer *peer, uint64_t limit);

/* Counts one connection from peer fewer (one that acquire admitted). */
void fe_ip_table_release(fe_ip_table *t, const fe_peer *peer);

#endif /* FE_LIMITS_H */
