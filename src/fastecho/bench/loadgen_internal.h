/*
 * loadgen_internal.h: what loadgen.c (TCP and TLS) shares with
 * loadgen_udp.c: the clock, the payload pattern, the checks every mode's
 * config goes through, and the /proc readers behind server CPU per message.
 * Internal to the load generator; the API is loadgen.h.
 *
 * Errors: a function that can fail writes a one-line reason into
 * result->error and returns -1.
 */
#ifndef FASTECHO_LOADGEN_INTERNAL_H
#define FASTECHO_LOADGEN_INTERNAL_H

#include "loadgen.h"

#include <netinet/in.h>
#include <stdint.h>
#include <time.h>

static inline uint64_t lg_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t lg_seconds_to_ns(double seconds)
{
    return (uint64_t)(seconds * 1e9);
}

/* splitmix64's output function: a cheap bijective mixer. */
static inline uint64_t lg_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15u;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    return x ^ (x >> 31);
}

/* Distinct start offsets into the pattern: how many different messages
 * exist. Large enough that two messages rarely share bytes. A pattern buffer
 * is `size + LG_PATTERN_ROTATIONS` bytes. */
#define LG_PATTERN_ROTATIONS 65536u

/* Where message `message` of connection (or socket) `conn_index` starts in
 * the pattern: a rotation derived from all three, so no two neighbours share
 * bytes. */
static inline size_t lg_message_rotation(uint64_t seed, int conn_index, uint64_t message)
{
    uint64_t h = lg_mix(seed);
    h = lg_mix(h ^ (uint64_t)(unsigned)conn_index);
    h = lg_mix(h ^ message);
    return (size_t)(h % LG_PATTERN_ROTATIONS);
}

/* Fill `length` bytes with the run's pseudo-random pattern, from `seed`. */
void lg_fill_pattern(uint8_t *pattern, size_t length, uint64_t seed);

/* Write the formatted reason into result->error; returns -1. */
int lg_errorf(lg_result *result, const char *format, ...) __attribute__((format(printf, 2, 3)));

/*
 * The checks every mode shares: host (IPv4, written into *address with the
 * port), port, conns (1..max_conns), depth, warmup, duration, connect
 * timeout and the server pids. Returns 0, or -1 with the reason.
 */
int lg_validate_common(const lg_config *config, lg_result *result, int max_conns, struct sockaddr_in *address);

/* User and system CPU so far, summed over config->server_pids. -1 with the
 * reason (naming the /proc file) when one cannot be read. */
int lg_read_server_cpu(const lg_config *config, lg_result *result, int64_t *user_us, int64_t *system_us);

/* VmRSS, summed over config->server_pids; -1 with the reason. */
int lg_read_server_rss(const lg_config *config, lg_result *result, int64_t *rss_kib);

/* CPU the calling thread (the generator) has used so far, in microseconds. */
int64_t lg_own_cpu_us(void);

#endif /* FASTECHO_LOADGEN_INTERNAL_H */
