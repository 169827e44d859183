/*
 * loadgen_internal.h: what loadgen.c (TCP and TLS) shares with
 * loadgen_udp.c: the clock, the payload pattern, the checks every mode's
 * config goes through, and the measured window (server CPU, own CPU, latency
 * quantiles and the spread over connections).
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

/* How long epoll_wait() may sleep from `now` for the loop to see `until`:
 * rounded up, so that it wakes at or after it rather than spinning just
 * before, and at most `most_ms`, so that a long wait still checks its
 * other deadlines. */
static inline int lg_wait_ms(uint64_t until, uint64_t now, int most_ms)
{
    uint64_t wait_ms = until > now ? (until - now + 999999u) / 1000000u : 0;
    return wait_ms > (uint64_t)most_ms ? most_ms : (int)wait_ms;
}

/* Whether the measured window is over: its duration, which ends at
 * `deadline`, has passed, or it has the max_messages it may stop at. */
static inline int lg_window_over(const lg_config *config, uint64_t now, uint64_t deadline, uint64_t window_messages)
{
    return now >= deadline || (config->max_messages > 0 && window_messages >= config->max_messages);
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

/*
 * The measured window, as every mode measures it: snapshots of the server's
 * CPU (summed over config->server_pids), the generator thread's CPU and the
 * clock, taken as the window opens, so that the result holds only what the
 * window itself used.
 */
typedef struct lg_window {
    uint64_t start_ns;
    int64_t server_user_us, server_system_us;
    int64_t own_cpu_us;
} lg_window;

/* Take the opening snapshots: the server's CPU first and the clock last, so
 * that the window's time leaves out the /proc reads. -1 with the reason
 * (naming the /proc file) when the server's CPU cannot be read. The caller
 * empties its histogram and per-connection counts itself. */
int lg_window_open(lg_window *window, const lg_config *config, lg_result *result);

/*
 * Fill result from the window: elapsed_s and own_cpu_us; with server pids,
 * the server's CPU over the window and its RSS now (-1 with the reason when
 * /proc cannot be read, the rest left unfilled); then messages, the latency
 * quantiles and max from `latency`, and min_conn_messages set to UINT64_MAX
 * for lg_count_conn_messages() to bring down.
 */
int lg_window_close(const lg_window *window, const lg_config *config, lg_result *result,
                    const lg_histogram *latency, uint64_t messages);

/* Count one connection's (or socket's) messages in the window into the
 * spread: starved_conns, min_conn_messages and max_conn_messages. Called
 * once per connection after lg_window_close(). */
void lg_count_conn_messages(lg_result *result, uint64_t conn_messages);

#endif /* FASTECHO_LOADGEN_INTERNAL_H */
