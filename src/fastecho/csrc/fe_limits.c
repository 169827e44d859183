#include "fe_limits.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

struct fe_ip_entry {
    fe_ip_entry *next;
    uint64_t count;
    uint8_t family;
    uint8_t addr[16];
};

static bool cidr_contains(const fe_cidr *r, const fe_peer *peer)
{
    if (r->family != peer->family)
        return false;
    size_t full = r->prefix_len / 8, rest = r->prefix_len % 8;
    if (memcmp(r->addr, peer->addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (r->addr[full] & mask) == (peer->addr[full] & mask);
}

bool fe_cidr_contains_any(const fe_cidr *ranges, size_t count, const fe_peer *peer)
{
    for (size_t i = 0; i < count; i++)
        if (cidr_contains(&ranges[i], peer))
            return true;
    return false;
}

int fe_ip_table_init(fe_ip_table *t, size_t bucket_count)
{
    t->buckets = calloc(bucket_count, sizeof *t->buckets);
    if (t->buckets == NULL)
        return -1;
    t->bucket_count = bucket_count;
    int rc = pthread_mutex_init(&t->lock, NULL);
    if (rc != 0) {
        free(t->buckets);
        t->buckets = NULL;
        errno = rc;
        return -1;
    }
    return 0;
}

void fe_ip_table_destroy(fe_ip_table *t)
{
    if (t->buckets == NULL)
        return;
    for (size_t i = 0; i < t->bucket_count; i++) {
        fe_ip_entry *e = t->buckets[i];
        while (e) {
            fe_ip_entry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(t->buckets);
    t->buckets = NULL;
    pthread_mutex_destroy(&t->lock);
}

static size_t addr_len(uint8_t family)
{
    return family == 4 ? 4 : 16;
}

static size_t bucket_of(const fe_ip_table *t, const fe_peer *peer)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < addr_len(peer->family); i++)
        h = (h ^ peer->addr[i]) * 1099511628211ull;
    return (size_t)(h & (t->bucket_count - 1));
}

static fe_ip_entry **find(fe_ip_table *t, const fe_peer *peer)
{
    fe_ip_entry **link = &t->buckets[bucket_of(t, peer)];
    while (*link && !((*link)->family == peer->family &&
                      memcmp((*link)->addr, peer->addr, addr_len(peer->family)) == 0))
        link = &(*link)->next;
    return link;
}

bool fe_ip_table_acquire(fe_ip_table *t, const fe_peer *peer, uint64_t limit)
{
    bool admitted = false;
    pthread_mutex_lock(&t->lock);
    fe_ip_entry **link = find(t, peer);
    if (*link == NULL) {
        fe_ip_entry *e = calloc(1, sizeof *e);
        if (e) {
            e->family = peer->family;
            memcpy(e->addr, peer->addr, sizeof e->addr);
            *link = e;
        }
    }
    if (*link && (*link)->count < limit) {
        (*link)->count++;
        admitted = true;
    }
    pthread_mutex_unlock(&t->lock);
    return admitted;
}

void fe_ip_table_release(fe_ip_table *t, const fe_peer *peer)
{
    pthread_mutex_lock(&t->lock);
    fe_ip_entry **link = find(t, peer);
    fe_ip_entry *e = *link;
    if (e && --e->count == 0) { /* forget addresses with no connections */
        *link = e->next;
        free(e);
    }
    pthread_mutex_unlock(&t->lock);
}
