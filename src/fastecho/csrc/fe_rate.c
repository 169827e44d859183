/*
 * fe_rate.c - per-source token buckets in a bounded table (see fe_rate.h).
 */
#include "fe_rate.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

enum { NS_PER_S = 1000000000 };

int fe_rate_init(fe_rate_table *t, uint32_t rate, size_t sources)
{
    memset(t, 0, sizeof *t);
    size_t sets = 1;
    while (sets * FE_RATE_WAYS < sources && sets < ((size_t)1 << 24))
        sets *= 2;
    t->slots = calloc(sets * FE_RATE_WAYS, sizeof *t->slots);
    if (t->slots == NULL) {
        errno = ENOMEM;
        return -1;
    }
    t->rate = rate;
    t->set_mask = sets - 1;
    if (getrandom(&t->key, sizeof t->key, GRND_NONBLOCK) != (ssize_t)sizeof t->key)
        t->key = (uint64_t)(uintptr_t)t ^ 0x9e3779b97f4a7c15u; /* no entropy yet: still not guessable from outside */
    for (int i = 0; i < FE_RATE_LOCKS; i++)
        pthread_mutex_init(&t->locks[i], NULL);
    return 0;
}

void fe_rate_destroy(fe_rate_table *t)
{
    if (t->slots == NULL)
        return;
    for (int i = 0; i < FE_RATE_LOCKS; i++)
        pthread_mutex_destroy(&t->locks[i]);
    free(t->slots);
    t->slots = NULL;
}

/* A keyed multiply-xorshift hash of the address (not of the port: every
 * port of a source shares its bucket). */
static uint64_t hash_source(const fe_rate_table *t, const fe_peer *p)
{
    size_t n = p->family == 6 ? 16 : 4;
    uint64_t h = t->key ^ p->family;
    for (size_t i = 0; i < n; i++) {
        h ^= p->addr[i];
        h *= 0x100000001b3u;
        h ^= h >> 29;
    }
    return h ^ (h >> 32);
}

static bool same_source(const fe_rate_slot *s, const fe_peer *p)
{
    return s->family == p->family && memcmp(s->addr, p->addr, p->family == 6 ? 16 : 4) == 0;
}

bool fe_rate_take(fe_rate_table *t, const fe_peer *source, int64_t now_ns)
{
    const uint64_t full = (uint64_t)t->rate * NS_PER_S, one = NS_PER_S;
    size_t set = (size_t)hash_source(t, source) & t->set_mask;
    fe_rate_slot *slots = &t->slots[set * FE_RATE_WAYS], *slot = NULL, *oldest = &slots[0];
    pthread_mutex_t *lock = &t->locks[set % FE_RATE_LOCKS];
    pthread_mutex_lock(lock);
    for (int i = 0; i < FE_RATE_WAYS && slot == NULL; i++) {
        if (slots[i].seen_ns != 0 && same_source(&slots[i], source))
            slot = &slots[i];
        else if (slots[i].seen_ns < oldest->seen_ns)
            oldest = &slots[i]; /* an empty slot (0) is the oldest of all */
    }
    if (slot == NULL) { /* a new source: a full bucket, in the stalest slot */
        slot = oldest;
        slot->family = source->family;
        memcpy(slot->addr, source->addr, sizeof slot->addr);
        slot->tokens = full;
        slot->seen_ns = now_ns > 0 ? now_ns : 1;
    } else if (now_ns > slot->seen_ns) {
        /* Refill for the time since; a second's worth fills it. */
        uint64_t elapsed = (uint64_t)(now_ns - slot->seen_ns);
        uint64_t refill = elapsed >= (uint64_t)NS_PER_S ? full : elapsed * t->rate;
        slot->tokens = refill >= full - slot->tokens ? full : slot->tokens + refill;
        slot->seen_ns = now_ns;
    }
    /* An earlier now_ns (a worker whose batch began before another's took
     * the lock after it) leaves seen_ns alone: moving it back would let the
     * next take refill that stretch of time a second time. */
    bool allowed = slot->tokens >= one;
    if (allowed)
        slot->tokens -= one;
    pthread_mutex_unlock(lock);
    return allowed;
}
