/*
 * fe_udp_log.h - UDP's access log: one event per source address per minute
 * with its totals (a line per datagram would be the load itself).
 *
 * Each worker tallies the sources it serves in a table of fixed size; the
 * sources past it (a flood of spoofed addresses) are summed into one event
 * for all of them, so memory stays flat. Events go through the worker's
 * access-event ring like TCP's open and close.
 */
#ifndef FE_UDP_LOG_H
#define FE_UDP_LOG_H

#include "fe.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    FE_UDP_LOG_SOURCES = 4096,      /* sources tallied per worker per window */
    FE_UDP_LOG_WINDOW_MS = 60000,   /* one event per source per this long */
};

typedef struct fe_udp_tally {
    fe_peer source;      /* port 0; family 0: an empty slot */
    uint64_t datagrams_in, datagrams_out, bytes_in, bytes_out;
} fe_udp_tally;

typedef struct fe_udp_log {
    fe_udp_tally *slots; /* FE_UDP_LOG_SOURCES * 2 (open addressing, half full at most) */
    size_t used;
    fe_udp_tally others; /* sources that found the table full */
    uint64_t other_sources; /* datagrams counted into others (sources are not told apart there) */
    int64_t window_start_ns; /* 0: nothing tallied */
} fe_udp_log;

/* Allocates the table. Returns 0, or -1 (ENOMEM). */
int fe_udp_log_init(fe_udp_log *log);

void fe_udp_log_free(fe_udp_log *log);

/* Counts one datagram of bytes from source (its port ignored), echoed or
 * not, at now_ns (the window starts with the first one). */
void fe_udp_log_count(fe_udp_log *log, const fe_peer *source, size_t bytes, bool echoed, int64_t now_ns);

/* Whether the window that began at the first tally has run out at now_ns. */
bool fe_udp_log_due(const fe_udp_log *log, int64_t now_ns);

/* Fills out with the window's events (kind FE_EVENT_UDP), calling emit for
 * each, and empties the table. */
void fe_udp_log_flush(fe_udp_log *log, int64_t now_ns, void (*emit)(void *ctx, const fe_event *ev), void *ctx);

#endif /* FE_UDP_LOG_H */
