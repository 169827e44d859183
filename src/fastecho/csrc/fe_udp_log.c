/*
 * fe_udp_log.c - per-source tallies for UDP's access log (see fe_udp_log.h).
 */
#include "fe_udp_log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum { SLOTS = 2 * FE_UDP_LOG_SOURCES };

int fe_udp_log_init(fe_udp_log *log)
{
    memset(log, 0, sizeof *log);
    log->slots = calloc(SLOTS, sizeof *log->slots);
    if (log->slots == NULL) {
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

void fe_udp_log_free(fe_udp_log *log)
{
    free(log->slots);
    log->slots = NULL;
}

static size_t slot_of(const fe_peer *p)
{
    /* FNV-1a: a worker's own table, read by nobody else; a sender aiming at
     * one chain only slows its own worker's logging, which is bounded. */
    uint64_t h = 1469598103934665603u ^ p->family;
    for (size_t i = 0; i < (p->family == 6 ? 16u : 4u); i++)
        h = (h ^ p->addr[i]) * 1099511628211u;
    return (size_t)(h ^ (h >> 29)) & (SLOTS - 1);
}

static void add(fe_udp_tally *t, size_t bytes, bool echoed)
{
    t->datagrams_in++;
    t->bytes_in += bytes;
    if (echoed) {
        t->datagrams_out++;
        t->bytes_out += bytes;
    }
}

void fe_udp_log_count(fe_udp_log *log, const fe_peer *source, size_t bytes, bool echoed, int64_t now_ns)
{
    if (log->window_start_ns == 0)
        log->window_start_ns = now_ns > 0 ? now_ns : 1;
    fe_peer key = *source;
    key.port = 0;
    size_t n = key.family == 6 ? 16 : 4;
    for (size_t probe = 0, i = slot_of(&key); probe < SLOTS; probe++, i = (i + 1) & (SLOTS - 1)) {
        fe_udp_tally *t = &log->slots[i];
        if (t->source.family == key.family && memcmp(t->source.addr, key.addr, n) == 0) {
            add(t, bytes, echoed);
            return;
        }
        if (t->source.family == 0) {
            if (log->used >= FE_UDP_LOG_SOURCES)
                break; /* full: into others */
            t->source = key;
            log->used++;
            add(t, bytes, echoed);
            return;
        }
    }
    log->other_sources++;
    add(&log->others, bytes, echoed);
}

bool fe_udp_log_due(const fe_udp_log *log, int64_t now_ns)
{
    return log->window_start_ns != 0 && now_ns - log->window_start_ns >= FE_UDP_LOG_WINDOW_MS * 1000000LL;
}

static void emit_tally(const fe_udp_tally *t, uint64_t sources, int64_t window_ns,
                       void (*emit)(void *ctx, const fe_event *ev), void *ctx)
{
    fe_event ev = {
        .kind = FE_EVENT_UDP,
        .peer = t->source,
        .bytes_in = t->bytes_in,
        .bytes_out = t->bytes_out,
        .duration_ns = (uint64_t)window_ns,
        .datagrams_in = t->datagrams_in,
        .datagrams_out = t->datagrams_out,
        .sources = sources,
    };
    emit(ctx, &ev);
}

void fe_udp_log_flush(fe_udp_log *log, int64_t now_ns, void (*emit)(void *ctx, const fe_event *ev), void *ctx)
{
    if (log->window_start_ns == 0)
        return;
    int64_t window_ns = now_ns > log->window_start_ns ? now_ns - log->window_start_ns : 0;
    for (size_t i = 0; i < SLOTS && log->used > 0; i++) {
        fe_udp_tally *t = &log->slots[i];
        if (t->source.family == 0)
            continue;
        emit_tally(t, 1, window_ns, emit, ctx);
        memset(t, 0, sizeof *t);
        log->used--;
    }
    if (log->others.datagrams_in > 0) /* family 0: "other sources" */
        emit_tally(&log->others, log->other_sources, window_ns, emit, ctx);
    memset(&log->others, 0, sizeof log->others);
    log->other_sources = 0;
    log->window_start_ns = 0;
}
