/*
 * fe_rate.h - per-source token buckets in a bounded table, for UDP's
 * --udp-rate: each source address may take `rate` datagrams per second,
 * with bursts of up to one second's worth.
 *
 * The table never grows: it is a fixed number of sets of FE_RATE_WAYS
 * slots, and a new source takes an empty slot of its set or else the one
 * seen least recently. A flood of spoofed addresses therefore costs a
 * fixed amount of memory; it can only evict real sources, which then start
 * again with a full bucket (no worse than a table that small allows).
 * Set positions hash the address with a random key, so a sender cannot
 * aim many addresses at one set. Safe from every worker at once: each set
 * is guarded by one of a fixed number of striped locks.
 */
#ifndef FE_RATE_H
#define FE_RATE_H

#include "fe.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { FE_RATE_WAYS = 8, FE_RATE_LOCKS = 64 };

typedef struct fe_rate_slot {
    int64_t seen_ns;   /* last time the source took a token; 0: empty */
    uint64_t tokens;   /* in billionths of a token */
    uint8_t family;    /* 4 or 6 */
    uint8_t addr[16];
} fe_rate_slot;

typedef struct fe_rate_table {
    uint32_t rate;     /* tokens per second, > 0 */
    size_t set_mask;   /* sets - 1 (a power of two) */
    uint64_t key;      /* random hash key */
    fe_rate_slot *slots;
    pthread_mutex_t locks[FE_RATE_LOCKS];
} fe_rate_table;

/* A table of at least `sources` slots (rounded up to whole sets, a power of
 * two of them) for `rate` (> 0) tokens per second. Returns 0, or -1 with
 * errno (ENOMEM). */
int fe_rate_init(fe_rate_table *t, uint32_t rate, size_t sources);

void fe_rate_destroy(fe_rate_table *t);

/* Whether source may send one more datagram at now_ns (monotonic); takes
 * its token if so. */
bool fe_rate_take(fe_rate_table *t, const fe_peer *source, int64_t now_ns);

#endif /* FE_RATE_H */
