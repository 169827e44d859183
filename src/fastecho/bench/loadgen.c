/*
 * loadgen.c: the load generator behind `python -m fastecho.bench`.
 * The contract is in loadgen.h.
 *
 * Why it looks like this:
 * - One thread, one epoll set, level-triggered. On a 2-core box the server
 *   gets one core and this gets the other; more client threads would only
 *   compete with the server for CPU.
 * - Payload: one random pattern buffer of `size + LG_PATTERN_ROTATIONS` bytes
 *   is filled from the seed once. Message m of connection c is the `size`
 *   bytes starting at a rotation derived from (seed, c, m). Sending therefore
 *   never generates or copies bytes, and checking an echo is one memcmp
 *   against the very bytes that were sent. A flipped, dropped, duplicated or
 *   reordered byte changes what is compared and is caught.
 * - Latency of a message: from the send() that carries its first byte to the
 *   recv() that completes its echo, CLOCK_MONOTONIC.
 * - TLS (loadgen_tls.c) plugs into the same loop. Each connection moves
 *   through TCP_CONNECTING -> TLS_HANDSHAKING -> ESTABLISHED (-> CLOSING in
 *   handshake mode, then back to TCP_CONNECTING on a fresh socket). The
 *   epoll interest is EPOLLIN, plus EPOLLOUT while a send waits for room or
 *   OpenSSL said WANT_WRITE. Bytes OpenSSL has already pulled off the socket
 *   raise no epoll event, so a connection that stops reading while OpenSSL
 *   still holds some goes on a pending list, served on the next pass with a
 *   zero epoll timeout. The plain TCP path is the one it always was:
 *   sendmsg() of up to LG_MAX_IOV messages, recv() into one big buffer.
 * - In handshake mode message numbers keep counting across a slot's
 *   connections, so each connection sends different bytes; error offsets are
 *   reported relative to the connection's own stream.
 * - WebSocket (loadgen_ws.c holds the codec) is one more stage and a framing
 *   layer on the same loop: after TCP (and TLS) a connection is
 *   WS_UPGRADING until the server's 101 checks out, and only then counts as
 *   established, so upgrades happen before the window like handshakes. A
 *   message goes out as one masked binary frame, with a mask of its own
 *   derived from a per-run random secret, the connection and the message
 *   number. Frames are not stored: each send attempt makes the frames from
 *   the unsent point on again in one scratch buffer (the same bytes each
 *   time, as a TLS retry needs), so memory does not grow with connections
 *   or depth. Offsets and counts of sent and echoed bytes stay in payload
 *   terms; the frame headers only add to `wire_size`.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "loadgen.h"
#include "loadgen_internal.h"
#include "loadgen_tls.h"
#include "loadgen_udp.h"
#include "loadgen_ws.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum {
    LG_RECV_BUFFER_SIZE = 256 * 1024,
    LG_MAX_EVENTS = 256,
    /* Messages coalesced into one sendmsg() when depth > 1, so that the
     * generator does not pay one syscall per small message. */
    LG_MAX_IOV = 64,
    /* recv() calls per readiness event, so one busy connection cannot
     * starve the others of the generator's attention. */
    LG_READS_PER_EVENT = 4,
    /* The longest epoll_wait() sleep; deadlines are also checked after it. */
    LG_MAX_WAIT_MS = 100,
    /* How often handshake mode looks for a connection stuck in connect,
     * handshake or close: a full pass over the connections each time. */
    LG_STAGE_CHECK_MS = 20,
    /* WebSocket: bytes of frames made per send attempt, at most. */
    LG_WS_SCRATCH_SIZE = 64 * 1024,
};

#define LG_HIST_SUB_BITS 6
_Static_assert(LG_HIST_SUB_BUCKETS == (1 << LG_HIST_SUB_BITS), "sub-bucket count must match its bit width");

enum lg_phase { LG_CONNECTING, LG_WARMING_UP, LG_MEASURING };

enum lg_conn_state { LG_TCP_CONNECTING, LG_TLS_HANDSHAKING, LG_WS_UPGRADING, LG_ESTABLISHED, LG_CLOSING };

/* A WebSocket opening handshake under way: allocated for its duration only. */
typedef struct lg_ws_upgrade {
    lg_ws_handshake handshake;
    char request[LG_WS_REQUEST_MAX];
    size_t request_length, request_sent;
    char response[LG_WS_RESPONSE_MAX];
    size_t response_length;
} lg_ws_upgrade;

typedef struct lg_conn {
    int fd;
    int index;
    enum lg_conn_state state;
    uint32_t events;           /* the epoll interest registered for fd */
    int send_blocked;          /* a send waits for room in the socket */
    int tls_wants_output;      /* the last handshake, read or close_notify said WANT_WRITE */
    int close_notify_sent;
    int pending_listed;        /* in lg_state.pending */
    lg_tls_session *tls;       /* NULL without TLS, and until TCP connects */
    lg_ws_upgrade *upgrade;    /* while WS_UPGRADING */
    lg_ws_reader ws;           /* WebSocket: the server's frames */
    uint64_t first_message;    /* number of this connection's first message (handshake mode
                                  reconnects; else 0) */
    uint64_t sent_messages;    /* messages fully handed to the kernel (or OpenSSL) */
    size_t send_offset;        /* bytes of message `sent_messages` already sent */
    uint64_t echoed_messages;  /* messages fully echoed and verified */
    size_t echo_offset;        /* bytes of message `echoed_messages` verified */
    uint64_t window_messages;  /* echoed inside the measured window */
    uint64_t *started_ns;      /* depth slots: start time of message m at m % depth */
    uint64_t connect_ns;       /* when this connection's connect() was called */
    uint64_t stage_deadline_ns; /* handshake mode: connect + handshake, or the close, must end by
                                   this; 0 while echoing */
} lg_conn;

typedef struct lg_state {
    const lg_config *config;
    lg_result *result;
    struct sockaddr_in address;
    int epoll_fd;
    enum lg_phase phase;
    int connected_count;
    uint64_t window_messages;
    lg_window window;
    lg_conn *conns;
    uint64_t *started_ns;
    uint8_t *pattern;
    uint8_t *recv_buffer;
    lg_histogram *latency;
    lg_tls_context *tls;       /* NULL without TLS */
    /* TLS connections whose OpenSSL holds bytes epoll cannot report; served
     * after each epoll pass. Two arrays of `conns`, swapped per pass. */
    lg_conn **pending, **serving;
    int pending_count;
    uint64_t next_stage_check_ns;
    char tls_error[LG_ERROR_SIZE / 2];
    /* Bytes one message takes on the wire: size, plus a frame header with ws. */
    size_t wire_size;
    size_t ws_header_size;     /* 0 without ws */
    uint64_t ws_mask_secret;   /* random per run: masks are unpredictable to the server */
    uint8_t *ws_scratch;       /* LG_WS_SCRATCH_SIZE bytes, with ws */
} lg_state;

void lg_fill_pattern(uint8_t *pattern, size_t length, uint64_t seed)
{
    uint64_t state = seed;
    for (size_t i = 0; i < length; i += sizeof state) {
        uint64_t word = lg_mix(state++);
        size_t n = length - i < sizeof word ? length - i : sizeof word;
        memcpy(pattern + i, &word, n);
    }
}

int lg_errorf(lg_result *result, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(result->error, sizeof result->error, format, args);
    va_end(args);
    return -1;
}

__attribute__((format(printf, 2, 3)))
static int lg_fail(lg_state *s, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(s->result->error, sizeof s->result->error, format, args);
    va_end(args);
    return -1;
}

/* ---- histogram ---------------------------------------------------------- */

static size_t lg_bucket_index(uint64_t value)
{
    if (value < 2 * LG_HIST_SUB_BUCKETS)
        return (size_t)value;
    int top_bit = 63 - __builtin_clzll(value);
    int shift = top_bit - LG_HIST_SUB_BITS;
    /* value >> shift lies in [SUB, 2*SUB): the top LG_HIST_SUB_BITS+1 bits. */
    return (size_t)shift * LG_HIST_SUB_BUCKETS + (size_t)(value >> shift);
}

static uint64_t lg_bucket_midpoint(size_t index)
{
    if (index < 2 * LG_HIST_SUB_BUCKETS)
        return index;
    unsigned shift = (unsigned)(index / LG_HIST_SUB_BUCKETS) - 1;
    uint64_t mantissa = index - (uint64_t)shift * LG_HIST_SUB_BUCKETS;
    uint64_t width = (uint64_t)1 << shift;
    return (mantissa << shift) + (width - 1) / 2;
}

void lg_histogram_reset(lg_histogram *hist)
{
    memset(hist->counts, 0, sizeof hist->counts);
    hist->total = 0;
    hist->min = UINT64_MAX;
    hist->max = 0;
}

void lg_histogram_record(lg_histogram *hist, uint64_t value)
{
    hist->counts[lg_bucket_index(value)]++;
    hist->total++;
    if (value < hist->min)
        hist->min = value;
    if (value > hist->max)
        hist->max = value;
}

uint64_t lg_histogram_quantile(const lg_histogram *hist, double q)
{
    if (hist->total == 0)
        return 0;
    if (!(q > 0.0))
        return hist->min;
    if (q >= 1.0)
        return hist->max;
    double exact_rank = q * (double)hist->total;
    uint64_t rank = (uint64_t)exact_rank;
    if ((double)rank < exact_rank)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < LG_HIST_BUCKETS; i++) {
        seen += hist->counts[i];
        if (seen >= rank) {
            uint64_t value = lg_bucket_midpoint(i);
            if (value < hist->min)
                value = hist->min;
            if (value > hist->max)
                value = hist->max;
            return value;
        }
    }
    return hist->max;
}

/* ---- /proc readers ------------------------------------------------------ */

static int lg_read_file(const char *path, char *buffer, size_t size)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    size_t n = fread(buffer, 1, size - 1, f);
    int failed = ferror(f);
    fclose(f);
    if (failed)
        return -1;
    buffer[n] = '\0';
    return 0;
}

/* One process's user and system CPU so far, all its threads together. */
static int lg_read_process_cpu(lg_result *r, int pid, int64_t *user_us, int64_t *system_us)
{
    char path[64], text[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (lg_read_file(path, text, sizeof text) < 0)
        return lg_errorf(r, "cannot read %s: %s (did the server exit?)", path, strerror(errno));
    /* The command name (field 2) may hold spaces and ')', so parse from the
     * last ')'. utime and stime are fields 14 and 15. */
    const char *after_name = strrchr(text, ')');
    unsigned long long user_ticks, system_ticks;
    if (!after_name ||
        sscanf(after_name + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &user_ticks, &system_ticks) != 2)
        return lg_errorf(r, "cannot parse %s", path);
    long ticks_per_second = sysconf(_SC_CLK_TCK);
    if (ticks_per_second <= 0)
        return lg_errorf(r, "sysconf(_SC_CLK_TCK) failed");
    *user_us = (int64_t)(user_ticks * 1000000u / (unsigned long long)ticks_per_second);
    *system_us = (int64_t)(system_ticks * 1000000u / (unsigned long long)ticks_per_second);
    return 0;
}

/* User and system CPU so far, summed over config->server_pids. */
static int lg_read_server_cpu(const lg_config *config, lg_result *result, int64_t *user_us, int64_t *system_us)
{
    *user_us = *system_us = 0;
    for (int i = 0; i < config->server_pid_count; i++) {
        int64_t user, system;
        if (lg_read_process_cpu(result, config->server_pids[i], &user, &system) < 0)
            return -1;
        *user_us += user;
        *system_us += system;
    }
    return 0;
}

/* VmRSS, summed over config->server_pids. */
static int lg_read_server_rss(const lg_config *config, lg_result *result, int64_t *rss_kib)
{
    *rss_kib = 0;
    for (int i = 0; i < config->server_pid_count; i++) {
        char path[64], text[4096];
        snprintf(path, sizeof path, "/proc/%d/status", config->server_pids[i]);
        if (lg_read_file(path, text, sizeof text) < 0)
            return lg_errorf(result, "cannot read %s: %s (did the server exit?)", path, strerror(errno));
        const char *line = strstr(text, "\nVmRSS:");
        long long kib;
        if (!line || sscanf(line + strlen("\nVmRSS:"), " %lld", &kib) != 1)
            return lg_errorf(result, "no VmRSS in %s", path);
        *rss_kib += kib;
    }
    return 0;
}

/* CPU the calling thread (the generator) has used so far, in microseconds. */
static int64_t lg_own_cpu_us(void)
{
    struct rusage usage;
    if (getrusage(RUSAGE_THREAD, &usage) < 0)
        return 0;
    return (int64_t)(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1000000 + usage.ru_utime.tv_usec +
           usage.ru_stime.tv_usec;
}

/* ---- the measured window ----------------------------------------------- */

int lg_window_open(lg_window *window, const lg_config *config, lg_result *result)
{
    if (lg_read_server_cpu(config, result, &window->server_user_us, &window->server_system_us) < 0)
        return -1;
    window->own_cpu_us = lg_own_cpu_us();
    window->start_ns = lg_now_ns();
    return 0;
}

int lg_window_close(const lg_window *window, const lg_config *config, lg_result *result,
                    const lg_histogram *latency, uint64_t messages)
{
    result->elapsed_s = (double)(lg_now_ns() - window->start_ns) / 1e9;
    result->own_cpu_us = lg_own_cpu_us() - window->own_cpu_us;
    if (config->server_pid_count > 0) {
        int64_t user_us, system_us;
        if (lg_read_server_cpu(config, result, &user_us, &system_us) < 0 ||
            lg_read_server_rss(config, result, &result->server_rss_kib) < 0)
            return -1;
        result->server_utime_us = user_us - window->server_user_us;
        result->server_stime_us = system_us - window->server_system_us;
    }
    result->messages = messages;
    result->p50_ns = lg_histogram_quantile(latency, 0.50);
    result->p99_ns = lg_histogram_quantile(latency, 0.99);
    result->p999_ns = lg_histogram_quantile(latency, 0.999);
    result->max_ns = latency->max;
    result->min_conn_messages = UINT64_MAX;
    return 0;
}

void lg_count_conn_messages(lg_result *result, uint64_t conn_messages)
{
    if (conn_messages == 0)
        result->starved_conns++;
    if (conn_messages < result->min_conn_messages)
        result->min_conn_messages = conn_messages;
    if (conn_messages > result->max_conn_messages)
        result->max_conn_messages = conn_messages;
}

/* ---- connections -------------------------------------------------------- */

/* Payload bytes handed to the kernel (or OpenSSL): with ws, the frame
 * headers do not count. */
static uint64_t lg_sent_bytes(const lg_state *s, const lg_conn *c)
{
    size_t payload_offset = c->send_offset > s->ws_header_size ? c->send_offset - s->ws_header_size : 0;
    return (c->sent_messages - c->first_message) * s->config->size + payload_offset;
}

static uint64_t lg_echoed_bytes(const lg_state *s, const lg_conn *c)
{
    return (c->echoed_messages - c->first_message) * s->config->size + c->echo_offset;
}

static int lg_watch(lg_state *s, lg_conn *c, int op, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = c };
    if (epoll_ctl(s->epoll_fd, op, c->fd, &ev) < 0)
        return lg_fail(s, "connection %d: epoll_ctl failed: %s", c->index, strerror(errno));
    c->events = events;
    return 0;
}

/* Ask epoll for what the connection waits for now: always input once TCP is
 * up, output while a send or OpenSSL is blocked on room. */
static int lg_update_interest(lg_state *s, lg_conn *c)
{
    uint32_t wanted = EPOLLIN | (c->send_blocked || c->tls_wants_output ? (uint32_t)EPOLLOUT : 0u);
    if (wanted == c->events)
        return 0;
    return lg_watch(s, c, EPOLL_CTL_MOD, wanted);
}

static int lg_set_send_blocked(lg_state *s, lg_conn *c, int blocked)
{
    c->send_blocked = blocked;
    return lg_update_interest(s, c);
}

/* Serve c after this epoll pass even if epoll reports nothing for it. */
static void lg_list_pending(lg_state *s, lg_conn *c)
{
    if (c->pending_listed)
        return;
    c->pending_listed = 1;
    s->pending[s->pending_count++] = c; /* at most once per connection: room for all */
}

/* The run-ending message for a TLS call that did not succeed. */
static int lg_tls_failed(lg_state *s, lg_conn *c, enum lg_tls_status status)
{
    switch (status) {
    case LG_TLS_CLOSED:
        return lg_fail(s,
                       "connection %d: server closed the TLS session (close_notify) after echoing %" PRIu64
                       " of %" PRIu64 " bytes sent",
                       c->index, lg_echoed_bytes(s, c), lg_sent_bytes(s, c));
    case LG_TLS_EOF:
        return lg_fail(s,
                       "connection %d: server closed the connection (EOF) after echoing %" PRIu64 " of %" PRIu64
                       " bytes sent",
                       c->index, lg_echoed_bytes(s, c), lg_sent_bytes(s, c));
    default:
        return lg_fail(s, "connection %d: %s (%" PRIu64 " of %" PRIu64 " bytes sent were echoed)", c->index,
                       s->tls_error, lg_echoed_bytes(s, c), lg_sent_bytes(s, c));
    }
}

/* The most messages c may have started: `depth` ahead of its echo, and in
 * handshake mode one per connection. */
static uint64_t lg_send_limit(const lg_state *s, const lg_conn *c)
{
    uint64_t limit = c->echoed_messages + (uint64_t)s->config->depth;
    if (s->config->handshakes && limit > c->first_message + 1)
        limit = c->first_message + 1;
    return limit;
}

static void lg_count_sent(const lg_state *s, lg_conn *c, size_t sent)
{
    size_t left = sent;
    while (left > 0) {
        size_t rest_of_message = s->wire_size - c->send_offset;
        if (left < rest_of_message) {
            c->send_offset += left;
            break;
        }
        left -= rest_of_message;
        c->sent_messages++;
        c->send_offset = 0;
    }
}

/* The mask of message m's frame: from the run's secret, the connection and m. */
static void lg_ws_mask_of(const lg_state *s, const lg_conn *c, uint64_t m, uint8_t mask[4])
{
    uint32_t word = (uint32_t)lg_mix(s->ws_mask_secret ^ lg_mix((uint64_t)(unsigned)c->index << 40 ^ m));
    memcpy(mask, &word, 4);
}

/*
 * What to send next: the bytes from message c->sent_messages at
 * c->send_offset on, up to message `limit`, as at most `most` iovecs. Raw
 * echo points into the pattern, one iovec per message; ws makes the frames
 * in the scratch buffer, one iovec in all. Records `now` as the start of
 * each message it begins: overwritten on the next attempt if this one sends
 * nothing of that message, so it holds the time its first byte really left.
 * Returns the iovec count; *offered is their total length.
 */
static int lg_next_bytes(lg_state *s, lg_conn *c, uint64_t limit, uint64_t now, struct iovec *iov, int most,
                         size_t *offered)
{
    const lg_config *cfg = s->config;
    int count = 0;
    size_t filled = 0;
    for (uint64_t m = c->sent_messages; m < limit && count < most; m++) {
        size_t skip = m == c->sent_messages ? c->send_offset : 0;
        const uint8_t *payload = s->pattern + lg_message_rotation(cfg->seed, c->index, m);
        if (skip == 0)
            c->started_ns[m % (uint64_t)cfg->depth] = now;
        if (!s->ws_scratch) {
            iov[count].iov_base = (void *)(payload + skip);
            iov[count++].iov_len = cfg->size - skip;
            filled += cfg->size - skip;
            continue;
        }
        size_t take = s->wire_size - skip;
        if (take > LG_WS_SCRATCH_SIZE - filled)
            take = LG_WS_SCRATCH_SIZE - filled;
        uint8_t mask[4];
        lg_ws_mask_of(s, c, m, mask);
        lg_ws_encode(s->ws_scratch + filled, skip, take, payload, cfg->size, mask);
        filled += take;
        if (filled == LG_WS_SCRATCH_SIZE)
            break;
    }
    if (s->ws_scratch) {
        iov[0].iov_base = s->ws_scratch;
        iov[0].iov_len = filled;
        count = 1;
    }
    *offered = filled;
    return count;
}

/* TLS: one run of bytes per SSL_write (OpenSSL cannot gather): a message or
 * its rest, or with ws a scratch buffer of frames. A retry after WANT_*
 * offers the same bytes, as OpenSSL requires. */
static int lg_send_ready_tls(lg_state *s, lg_conn *c, uint64_t now)
{
    /* Each pass sends at least one byte or returns. */
    for (;;) {
        uint64_t limit = lg_send_limit(s, c);
        if (c->sent_messages >= limit)
            return lg_set_send_blocked(s, c, 0);
        struct iovec iov;
        size_t offered, sent = 0;
        lg_next_bytes(s, c, limit, now, &iov, 1, &offered);
        enum lg_tls_status status =
            lg_tls_write(c->tls, iov.iov_base, iov.iov_len, &sent, s->tls_error, sizeof s->tls_error);
        if (status == LG_TLS_DONE) {
            lg_count_sent(s, c, sent);
            continue;
        }
        if (status == LG_TLS_WANT_WRITE)
            return lg_set_send_blocked(s, c, 1);
        if (status == LG_TLS_WANT_READ) /* input is always watched; lg_receive sends again */
            return lg_set_send_blocked(s, c, 0);
        return lg_tls_failed(s, c, status);
    }
}

/* Send until `depth` messages are in flight or the socket is full. */
static int lg_send_ready(lg_state *s, lg_conn *c, uint64_t now)
{
    if (s->phase == LG_CONNECTING || c->state != LG_ESTABLISHED)
        return 0;
    if (c->tls)
        return lg_send_ready_tls(s, c, now);
    for (;;) {
        uint64_t may_start_below = lg_send_limit(s, c);
        if (c->sent_messages >= may_start_below)
            return lg_set_send_blocked(s, c, 0);
        struct iovec iov[LG_MAX_IOV];
        size_t offered;
        int count = lg_next_bytes(s, c, may_start_below, now, iov, LG_MAX_IOV, &offered);
        struct msghdr message = { .msg_iov = iov, .msg_iovlen = (size_t)count };
        ssize_t sent = sendmsg(c->fd, &message, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return lg_set_send_blocked(s, c, 1);
            return lg_fail(s, "connection %d: send failed: %s (%" PRIu64 " of %" PRIu64 " bytes sent were echoed)",
                           c->index, strerror(errno), lg_echoed_bytes(s, c), lg_sent_bytes(s, c));
        }
        lg_count_sent(s, c, (size_t)sent);
        if ((size_t)sent < offered)
            return lg_set_send_blocked(s, c, 1);
    }
}

/* Compare freshly received bytes with what was sent; complete messages. */
static int lg_check_echo(lg_state *s, lg_conn *c, const uint8_t *data, size_t length, uint64_t now)
{
    const lg_config *cfg = s->config;
    uint64_t echoed = lg_echoed_bytes(s, c), sent = lg_sent_bytes(s, c);
    if (echoed + length > sent)
        return lg_fail(s, "connection %d: server echoed %" PRIu64 " more bytes than it was sent (%" PRIu64 " sent)",
                       c->index, echoed + length - sent, sent);
    while (length > 0) {
        size_t take = cfg->size - c->echo_offset;
        if (take > length)
            take = length;
        const uint8_t *expected = s->pattern + lg_message_rotation(cfg->seed, c->index, c->echoed_messages) +
                                  c->echo_offset;
        if (memcmp(data, expected, take) != 0) {
            size_t i = 0;
            while (data[i] == expected[i])
                i++;
            return lg_fail(s,
                           "connection %d: echoed byte %" PRIu64 " of the stream (message %" PRIu64
                           ", byte %zu of %zu) is 0x%02x, expected 0x%02x",
                           c->index, lg_echoed_bytes(s, c) + i, c->echoed_messages - c->first_message,
                           c->echo_offset + i, cfg->size, data[i], expected[i]);
        }
        data += take;
        length -= take;
        c->echo_offset += take;
        if (c->echo_offset == cfg->size) {
            if (s->phase == LG_MEASURING) {
                uint64_t started = cfg->handshakes ? c->connect_ns
                                                   : c->started_ns[c->echoed_messages % (uint64_t)cfg->depth];
                lg_histogram_record(s->latency, now - started);
                c->window_messages++;
                s->window_messages++;
            }
            c->echoed_messages++;
            c->echo_offset = 0;
        }
    }
    return 0;
}

/* Bytes that arrived on an established connection: echoed payload, or with
 * ws frames whose payload is the echo. */
static int lg_take_input(lg_state *s, lg_conn *c, const uint8_t *data, size_t length, uint64_t now)
{
    if (!s->ws_scratch)
        return lg_check_echo(s, c, data, length, now);
    while (length > 0) {
        size_t used, payload_length;
        const uint8_t *payload = NULL;
        char reason[LG_ERROR_SIZE / 2];
        if (lg_ws_read(&c->ws, data, length, &used, &payload, &payload_length, reason, sizeof reason) < 0)
            return lg_fail(s, "connection %d: %s (%" PRIu64 " of %" PRIu64 " bytes sent were echoed)", c->index,
                           reason, lg_echoed_bytes(s, c), lg_sent_bytes(s, c));
        if (payload_length > 0 && lg_check_echo(s, c, payload, payload_length, now) < 0)
            return -1;
        data += used;
        length -= used;
    }
    return 0;
}

static int lg_start_connect(lg_state *s, lg_conn *c);

/* Handshake mode: the server has answered our close; start the next connection. */
static int lg_finish_cycle(lg_state *s, lg_conn *c)
{
    if (c->tls) {
        lg_tls_session_free(c->tls);
        c->tls = NULL;
    }
    close(c->fd); /* also leaves the epoll set */
    c->fd = -1;
    c->first_message = c->sent_messages; /* == echoed_messages: everything came back */
    c->send_offset = c->echo_offset = 0;
    c->send_blocked = c->tls_wants_output = c->close_notify_sent = 0;
    return lg_start_connect(s, c);
}

static int lg_send_close_notify(lg_state *s, lg_conn *c)
{
    enum lg_tls_status status = lg_tls_close_notify(c->tls, s->tls_error, sizeof s->tls_error);
    if (status == LG_TLS_DONE) {
        c->close_notify_sent = 1;
        c->tls_wants_output = 0;
        /* The server's answer may already sit in OpenSSL, unseen by epoll. */
        if (lg_tls_has_pending(c->tls))
            lg_list_pending(s, c);
    } else if (status == LG_TLS_WANT_WRITE || status == LG_TLS_WANT_READ) {
        c->tls_wants_output = status == LG_TLS_WANT_WRITE;
    } else {
        return lg_tls_failed(s, c, status);
    }
    return lg_update_interest(s, c);
}

/* Handshake mode, once the connection's message came back: close politely
 * (close_notify, or FIN without TLS) and wait for the server to do the same,
 * so that its side of the close is paid for inside the cycle too. */
static int lg_begin_close(lg_state *s, lg_conn *c)
{
    c->state = LG_CLOSING;
    c->stage_deadline_ns = lg_now_ns() + lg_seconds_to_ns(s->config->connect_timeout_s);
    c->send_blocked = 0;
    if (c->tls)
        return lg_send_close_notify(s, c);
    if (shutdown(c->fd, SHUT_WR) < 0)
        return lg_fail(s, "connection %d: shutdown failed: %s", c->index, strerror(errno));
    return lg_update_interest(s, c);
}

/* What follows bytes having been read: the close in handshake mode once the
 * message is back, else more sending. */
static int lg_after_input(lg_state *s, lg_conn *c, uint64_t now)
{
    if (c->state == LG_CLOSING)
        return lg_update_interest(s, c);
    if (s->config->handshakes && c->echoed_messages > c->first_message)
        return lg_begin_close(s, c);
    return lg_send_ready(s, c, now);
}

static int lg_receive_plain(lg_state *s, lg_conn *c)
{
    uint64_t now = lg_now_ns();
    for (int reads = 0; reads < LG_READS_PER_EVENT; reads++) {
        ssize_t n = recv(c->fd, s->recv_buffer, LG_RECV_BUFFER_SIZE, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return lg_fail(s, "connection %d: receive failed: %s (%" PRIu64 " of %" PRIu64 " bytes sent were echoed)",
                           c->index, strerror(errno), lg_echoed_bytes(s, c), lg_sent_bytes(s, c));
        }
        if (n == 0) {
            if (c->state == LG_CLOSING)
                return lg_finish_cycle(s, c);
            return lg_fail(s,
                           "connection %d: server closed the connection (EOF) after echoing %" PRIu64
                           " of %" PRIu64 " bytes sent",
                           c->index, lg_echoed_bytes(s, c), lg_sent_bytes(s, c));
        }
        now = lg_now_ns();
        if (lg_take_input(s, c, s->recv_buffer, (size_t)n, now) < 0)
            return -1;
        if ((size_t)n < LG_RECV_BUFFER_SIZE)
            break;
    }
    return lg_after_input(s, c, now);
}

static int lg_receive_tls(lg_state *s, lg_conn *c)
{
    uint64_t now = lg_now_ns();
    enum lg_tls_status status = LG_TLS_WANT_READ;
    for (int reads = 0; reads < LG_READS_PER_EVENT; reads++) {
        size_t n = 0;
        status = lg_tls_read(c->tls, s->recv_buffer, LG_RECV_BUFFER_SIZE, &n, s->tls_error, sizeof s->tls_error);
        if (status != LG_TLS_DONE)
            break;
        now = lg_now_ns();
        if (lg_take_input(s, c, s->recv_buffer, n, now) < 0)
            return -1;
        /* Nothing held back by OpenSSL: whatever else arrives, epoll reports. */
        if (!lg_tls_has_pending(c->tls))
            break;
    }
    switch (status) {
    case LG_TLS_DONE: /* the read budget ran out, or nothing is held */
        c->tls_wants_output = 0;
        if (lg_tls_has_pending(c->tls))
            lg_list_pending(s, c);
        break;
    case LG_TLS_WANT_READ:
        c->tls_wants_output = 0;
        break;
    case LG_TLS_WANT_WRITE:
        c->tls_wants_output = 1;
        break;
    case LG_TLS_CLOSED:
    case LG_TLS_EOF:
        if (c->state == LG_CLOSING && c->close_notify_sent)
            return lg_finish_cycle(s, c);
        return lg_tls_failed(s, c, status);
    case LG_TLS_ERROR:
        return lg_tls_failed(s, c, status);
    }
    return lg_after_input(s, c, now);
}

static int lg_receive(lg_state *s, lg_conn *c)
{
    return c->tls ? lg_receive_tls(s, c) : lg_receive_plain(s, c);
}

/* The connection is ready to echo (TCP up and, with TLS, handshaken; with
 * ws, upgraded). */
static int lg_established(lg_state *s, lg_conn *c)
{
    c->state = LG_ESTABLISHED;
    c->stage_deadline_ns = 0;
    if (s->ws_scratch)
        lg_ws_reader_init(&c->ws, s->config->size);
    if (c->tls && !s->result->tls_description[0])
        lg_tls_describe(c->tls, s->result->tls_description, sizeof s->result->tls_description);
    int rc;
    if (s->phase == LG_CONNECTING) {
        s->connected_count++; /* sending starts once all are up */
        rc = lg_update_interest(s, c);
    } else {
        rc = lg_send_ready(s, c, lg_now_ns()); /* handshake mode's next connection */
    }
    if (rc < 0)
        return -1;
    if (c->tls && lg_tls_has_pending(c->tls))
        lg_list_pending(s, c);
    return 0;
}

/* WebSocket: the upgrade is under way. Send (the rest of) the request,
 * then read until the response's header is complete and checks out; the
 * bytes after it, if any, are the start of the frame stream. A request or
 * read that cannot go on now resumes on the next event for c. */
static int lg_continue_upgrade(lg_state *s, lg_conn *c)
{
    lg_ws_upgrade *u = c->upgrade;
    while (u->request_sent < u->request_length) {
        const char *rest = u->request + u->request_sent;
        size_t left = u->request_length - u->request_sent, sent = 0;
        if (c->tls) {
            enum lg_tls_status status = lg_tls_write(c->tls, rest, left, &sent, s->tls_error, sizeof s->tls_error);
            if (status == LG_TLS_WANT_WRITE || status == LG_TLS_WANT_READ) {
                c->tls_wants_output = status == LG_TLS_WANT_WRITE;
                return lg_update_interest(s, c);
            }
            if (status != LG_TLS_DONE)
                return lg_fail(s, "connection %d: sending the WebSocket upgrade request failed: %s", c->index,
                               status == LG_TLS_ERROR ? s->tls_error : "the server closed the connection");
        } else {
            ssize_t n = send(c->fd, rest, left, MSG_NOSIGNAL);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                return lg_set_send_blocked(s, c, 1);
            if (n < 0)
                return lg_fail(s, "connection %d: sending the WebSocket upgrade request failed: %s", c->index,
                               strerror(errno));
            sent = (size_t)n;
        }
        u->request_sent += sent;
    }
    c->tls_wants_output = 0;
    if (lg_set_send_blocked(s, c, 0) < 0)
        return -1;
    for (;;) {
        char *into = u->response + u->response_length;
        size_t room = sizeof u->response - u->response_length, n = 0;
        if (c->tls) {
            enum lg_tls_status status = lg_tls_read(c->tls, into, room, &n, s->tls_error, sizeof s->tls_error);
            if (status == LG_TLS_WANT_READ || status == LG_TLS_WANT_WRITE) {
                c->tls_wants_output = status == LG_TLS_WANT_WRITE;
                return lg_update_interest(s, c);
            }
            if (status == LG_TLS_ERROR)
                return lg_fail(s, "connection %d: reading the WebSocket upgrade response failed: %s", c->index,
                               s->tls_error);
        } else {
            ssize_t got = recv(c->fd, into, room, 0);
            if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                return 0;
            if (got < 0)
                return lg_fail(s, "connection %d: reading the WebSocket upgrade response failed: %s", c->index,
                               strerror(errno));
            n = (size_t)got;
        }
        if (n == 0)
            return lg_fail(s, "connection %d: the server closed the connection during the WebSocket upgrade "
                           "(after %zu bytes of response)", c->index, u->response_length);
        u->response_length += n;
        char reason[LG_ERROR_SIZE / 2];
        long header = lg_ws_check_response(u->response, u->response_length, &u->handshake, reason, sizeof reason);
        if (header < 0)
            return lg_fail(s, "connection %d: WebSocket upgrade refused: %s", c->index, reason);
        if (header > 0) {
            size_t extra = u->response_length - (size_t)header;
            uint8_t early[LG_WS_RESPONSE_MAX];
            memcpy(early, u->response + header, extra);
            free(c->upgrade);
            c->upgrade = NULL;
            if (lg_established(s, c) < 0)
                return -1;
            return extra > 0 ? lg_take_input(s, c, early, extra, lg_now_ns()) : 0;
        }
    }
}

/* TCP is up and, with TLS, handshaken: upgrade to WebSocket with ws, else
 * ready to echo. */
static int lg_transport_ready(lg_state *s, lg_conn *c)
{
    if (!s->ws_scratch)
        return lg_established(s, c);
    c->upgrade = calloc(1, sizeof *c->upgrade);
    if (!c->upgrade)
        return lg_fail(s, "connection %d: out of memory for the WebSocket upgrade", c->index);
    c->state = LG_WS_UPGRADING;
    char reason[LG_ERROR_SIZE / 2];
    if (lg_ws_handshake_new(&c->upgrade->handshake, reason, sizeof reason) < 0)
        return lg_fail(s, "connection %d: %s", c->index, reason);
    c->upgrade->request_length = lg_ws_request(c->upgrade->request, sizeof c->upgrade->request, s->config->host,
                                               s->config->port, s->config->ws_path ? s->config->ws_path : "/",
                                               &c->upgrade->handshake);
    return lg_continue_upgrade(s, c);
}

static int lg_continue_handshake(lg_state *s, lg_conn *c)
{
    enum lg_tls_status status = lg_tls_handshake(c->tls, s->tls_error, sizeof s->tls_error);
    switch (status) {
    case LG_TLS_DONE:
        c->tls_wants_output = 0;
        return lg_transport_ready(s, c);
    case LG_TLS_WANT_READ:
    case LG_TLS_WANT_WRITE:
        c->tls_wants_output = status == LG_TLS_WANT_WRITE;
        return lg_update_interest(s, c);
    case LG_TLS_CLOSED:
    case LG_TLS_EOF:
        return lg_fail(s, "connection %d: server closed the connection during the TLS handshake", c->index);
    default:
        return lg_fail(s, "connection %d: %s", c->index, s->tls_error);
    }
}

/* TCP is up: handshake, or go on straight away without TLS. */
static int lg_tcp_connected(lg_state *s, lg_conn *c)
{
    if (!s->tls)
        return lg_transport_ready(s, c);
    c->tls = lg_tls_session_new(s->tls, c->fd, s->config->host, s->tls_error, sizeof s->tls_error);
    if (!c->tls)
        return lg_fail(s, "connection %d: %s", c->index, s->tls_error);
    c->state = LG_TLS_HANDSHAKING;
    return lg_continue_handshake(s, c);
}

static int lg_start_connect(lg_state *s, lg_conn *c)
{
    c->state = LG_TCP_CONNECTING;
    c->connect_ns = lg_now_ns();
    c->stage_deadline_ns = c->connect_ns + lg_seconds_to_ns(s->config->connect_timeout_s);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return lg_fail(s, "connection %d: socket() failed: %s", c->index, strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (const struct sockaddr *)&s->address, sizeof s->address) == 0) {
        if (lg_watch(s, c, EPOLL_CTL_ADD, EPOLLIN) < 0)
            return -1;
        return lg_tcp_connected(s, c);
    }
    /* On a nonblocking socket an interrupted connect() carries on in the
     * background, exactly like EINPROGRESS; completion shows as EPOLLOUT. */
    if (errno != EINPROGRESS && errno != EINTR)
        return lg_fail(s, "connection %d: connect to %s:%d failed: %s", c->index,
                       s->config->host, s->config->port, strerror(errno));
    return lg_watch(s, c, EPOLL_CTL_ADD, EPOLLOUT);
}

static int lg_finish_connect(lg_state *s, lg_conn *c)
{
    int error = 0;
    socklen_t length = sizeof error;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &length) < 0)
        error = errno;
    if (error != 0)
        return lg_fail(s, "connection %d: connect to %s:%d failed: %s", c->index,
                       s->config->host, s->config->port, strerror(error));
    return lg_tcp_connected(s, c);
}

/* Handshake mode: the close is under way; send close_notify if it could not
 * go yet, then look for the server's answer. */
static int lg_continue_close(lg_state *s, lg_conn *c)
{
    if (c->tls && !c->close_notify_sent) {
        if (lg_send_close_notify(s, c) < 0)
            return -1;
        if (!c->close_notify_sent)
            return 0;
    }
    return lg_receive(s, c);
}

static int lg_on_event(lg_state *s, lg_conn *c, uint32_t what)
{
    switch (c->state) {
    case LG_TCP_CONNECTING:
        return lg_finish_connect(s, c);
    case LG_TLS_HANDSHAKING:
        return lg_continue_handshake(s, c);
    case LG_WS_UPGRADING:
        return lg_continue_upgrade(s, c);
    case LG_CLOSING:
        return lg_continue_close(s, c);
    case LG_ESTABLISHED:
        /* recv() reports an error or EOF; a TLS read that wanted output
         * retries on EPOLLOUT and sends after. */
        if (what & (EPOLLIN | EPOLLERR | EPOLLHUP) || c->tls_wants_output)
            return lg_receive(s, c);
        return lg_send_ready(s, c, lg_now_ns());
    }
    return 0;
}

/* Serve the connections OpenSSL holds bytes for. Ones listed again while
 * this runs wait for the next pass, so this ends. */
static int lg_serve_pending(lg_state *s)
{
    lg_conn **serving = s->pending;
    int count = s->pending_count;
    s->pending = s->serving;
    s->serving = serving;
    s->pending_count = 0;
    for (int i = 0; i < count; i++) {
        lg_conn *c = serving[i];
        c->pending_listed = 0;
        /* A connection closed and reopened since it was listed holds nothing. */
        if (!c->tls || (c->state != LG_ESTABLISHED && c->state != LG_CLOSING))
            continue;
        if ((c->state == LG_CLOSING ? lg_continue_close(s, c) : lg_receive(s, c)) < 0)
            return -1;
    }
    return 0;
}

/* Handshake mode: a connection stuck in connect, handshake or close fails
 * the run, as a connect phase that overruns does in echo mode. */
static int lg_check_stages(lg_state *s, uint64_t now)
{
    const lg_config *cfg = s->config;
    for (int i = 0; i < cfg->conns; i++) {
        lg_conn *c = &s->conns[i];
        if (c->stage_deadline_ns == 0 || now < c->stage_deadline_ns)
            continue;
        if (c->state == LG_CLOSING)
            return lg_fail(s, "connection %d: server did not close within %g s of the client's %s", c->index,
                           cfg->connect_timeout_s, c->tls ? "close_notify" : "FIN");
        return lg_fail(s, "connection %d: %s to %s:%d not completed within %g s", c->index,
                       s->tls ? "connect and TLS handshake" : "connect", cfg->host, cfg->port,
                       cfg->connect_timeout_s);
    }
    return 0;
}

/* ---- the run ------------------------------------------------------------ */

int lg_tls_supported(void)
{
    return lg_tls_available();
}

const char *lg_tls_version_text(void)
{
    return lg_tls_library();
}

int lg_ws_supported(void)
{
    return lg_ws_available();
}

int lg_validate_common(const lg_config *cfg, lg_result *r, int max_conns, struct sockaddr_in *address)
{
    if (!cfg->host || inet_pton(AF_INET, cfg->host, &address->sin_addr) != 1)
        return lg_errorf(r, "host %s is not an IPv4 address", cfg->host ? cfg->host : "(null)");
    if (cfg->port < 1 || cfg->port > 65535)
        return lg_errorf(r, "port %d is outside 1..65535", cfg->port);
    if (cfg->conns < 1 || cfg->conns > max_conns)
        return lg_errorf(r, "conns %d is outside 1..%d", cfg->conns, max_conns);
    if (cfg->depth < 1 || cfg->depth > 4096)
        return lg_errorf(r, "depth %d is outside 1..4096", cfg->depth);
    if (!(cfg->warmup_s >= 0.0 && cfg->warmup_s <= 3600.0))
        return lg_errorf(r, "warmup %g s is outside 0..3600", cfg->warmup_s);
    if (!(cfg->duration_s > 0.0 && cfg->duration_s <= 3600.0))
        return lg_errorf(r, "duration %g s is outside (0, 3600]", cfg->duration_s);
    if (!(cfg->connect_timeout_s > 0.0 && cfg->connect_timeout_s <= 600.0))
        return lg_errorf(r, "connect timeout %g s is outside (0, 600]", cfg->connect_timeout_s);
    if (cfg->server_pid_count < 0 || cfg->server_pid_count > LG_MAX_SERVER_PIDS)
        return lg_errorf(r, "server pid count %d is outside 0..%d", cfg->server_pid_count, LG_MAX_SERVER_PIDS);
    if (cfg->server_pid_count > 0 && !cfg->server_pids)
        return lg_errorf(r, "server pid count %d without server pids", cfg->server_pid_count);
    for (int i = 0; i < cfg->server_pid_count; i++)
        if (cfg->server_pids[i] <= 0)
            return lg_errorf(r, "server pid %d is not a process id", cfg->server_pids[i]);
    address->sin_family = AF_INET;
    address->sin_port = htons((uint16_t)cfg->port);
    return 0;
}

static int lg_validate(lg_state *s)
{
    const lg_config *cfg = s->config;
    if (lg_validate_common(cfg, s->result, 1 << 22, &s->address) < 0)
        return -1;
    if (cfg->size < 1 || cfg->size > LG_MAX_MESSAGE_SIZE)
        return lg_fail(s, "size %zu is outside 1..%u", cfg->size, LG_MAX_MESSAGE_SIZE);
    if (cfg->udp_timeout_s != 0.0)
        return lg_fail(s, "udp_timeout applies only with udp");
    if (cfg->handshakes && cfg->depth != 1)
        return lg_fail(s, "depth %d: handshake mode echoes one message per connection, so depth must be 1",
                       cfg->depth);
    if (cfg->tls_version != 0 && cfg->tls_version != 12 && cfg->tls_version != 13)
        return lg_fail(s, "tls_version %d is not 0 (1.2 or 1.3), 12 or 13", cfg->tls_version);
    if (!cfg->tls && (cfg->tls_version != 0 || cfg->tls_ca_file))
        return lg_fail(s, "tls_version and tls_ca_file apply only with tls");
    if (!cfg->ws && cfg->ws_path)
        return lg_fail(s, "ws_path applies only with ws");
    if (cfg->ws) {
        if (cfg->handshakes)
            return lg_fail(s, "ws has no handshake mode (each connection upgrades once, before the window)");
        if (!lg_ws_available())
            return lg_fail(s, "ws: this load generator was built without OpenSSL (FASTECHO_WITH_TLS), which it "
                           "needs for SHA-1 and randomness");
        if (cfg->ws_path && lg_ws_check_path(cfg->ws_path, s->result->error, sizeof s->result->error) < 0)
            return -1;
        if (lg_ws_random(&s->ws_mask_secret, sizeof s->ws_mask_secret, s->result->error,
                         sizeof s->result->error) < 0)
            return -1;
        s->ws_header_size = lg_ws_header_size(cfg->size);
    }
    s->wire_size = cfg->size + s->ws_header_size;
    if (cfg->tls) {
        /* Here rather than in lg_allocate: a CA file that cannot be loaded,
         * or a build without TLS, is a config error, not a failed run. */
        s->tls = lg_tls_context_new(cfg->tls_version, cfg->tls_ca_file, s->tls_error, sizeof s->tls_error);
        if (!s->tls)
            return lg_fail(s, "%s", s->tls_error);
    }
    return 0;
}

static int lg_allocate(lg_state *s)
{
    const lg_config *cfg = s->config;
    size_t conns = (size_t)cfg->conns, depth = (size_t)cfg->depth;
    s->conns = calloc(conns, sizeof *s->conns);
    s->started_ns = calloc(conns * depth, sizeof *s->started_ns);
    s->pattern = malloc(cfg->size + LG_PATTERN_ROTATIONS);
    s->recv_buffer = malloc(LG_RECV_BUFFER_SIZE);
    s->latency = malloc(sizeof *s->latency);
    s->pending = calloc(conns, sizeof *s->pending);
    s->serving = calloc(conns, sizeof *s->serving);
    s->ws_scratch = cfg->ws ? malloc(LG_WS_SCRATCH_SIZE) : NULL;
    if (!s->conns || !s->started_ns || !s->pattern || !s->recv_buffer || !s->latency || !s->pending || !s->serving ||
        (cfg->ws && !s->ws_scratch))
        return lg_fail(s, "out of memory for %d connections of %zu-byte messages", cfg->conns, cfg->size);
    lg_fill_pattern(s->pattern, cfg->size + LG_PATTERN_ROTATIONS, cfg->seed);
    lg_histogram_reset(s->latency);
    for (size_t i = 0; i < conns; i++) {
        s->conns[i].fd = -1;
        s->conns[i].index = (int)i;
        s->conns[i].started_ns = s->started_ns + i * depth;
    }
    s->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (s->epoll_fd < 0)
        return lg_fail(s, "epoll_create1 failed: %s", strerror(errno));
    return 0;
}

static void lg_release(lg_state *s)
{
    if (s->conns)
        for (int i = 0; i < s->config->conns; i++) {
            if (s->conns[i].tls)
                lg_tls_session_free(s->conns[i].tls);
            free(s->conns[i].upgrade);
            if (s->conns[i].fd >= 0)
                close(s->conns[i].fd);
        }
    if (s->epoll_fd >= 0)
        close(s->epoll_fd);
    if (s->tls)
        lg_tls_context_free(s->tls);
    free(s->conns);
    free(s->started_ns);
    free(s->pattern);
    free(s->recv_buffer);
    free(s->latency);
    free(s->pending);
    free(s->serving);
    free(s->ws_scratch);
}

/* Start counting: everything before this moment was warm-up. */
static int lg_open_window(lg_state *s)
{
    lg_histogram_reset(s->latency);
    for (int i = 0; i < s->config->conns; i++)
        s->conns[i].window_messages = 0;
    s->window_messages = 0;
    s->phase = LG_MEASURING;
    return lg_window_open(&s->window, s->config, s->result);
}

static int lg_close_window(lg_state *s)
{
    const lg_config *cfg = s->config;
    lg_result *r = s->result;
    if (lg_window_close(&s->window, cfg, r, s->latency, s->window_messages) < 0)
        return -1;
    r->handshakes = cfg->handshakes ? s->window_messages : 0;
    for (int i = 0; i < cfg->conns; i++)
        lg_count_conn_messages(r, s->conns[i].window_messages);
    return 0;
}

static int lg_drive(lg_state *s)
{
    const lg_config *cfg = s->config;
    uint64_t started = lg_now_ns();
    uint64_t deadline = started + lg_seconds_to_ns(cfg->connect_timeout_s);
    struct epoll_event events[LG_MAX_EVENTS];

    for (int i = 0; i < cfg->conns; i++)
        if (lg_start_connect(s, &s->conns[i]) < 0)
            return -1;

    /* Each pass either sleeps until an event or the next deadline (at most
     * LG_MAX_WAIT_MS), or with pending TLS bytes does not sleep at all but
     * serves them; either way the loop ends by the last deadline. */
    for (;;) {
        uint64_t now = lg_now_ns();
        if (s->phase == LG_CONNECTING) {
            if (s->connected_count == cfg->conns) {
                s->result->connect_s = (double)(now - started) / 1e9;
                s->phase = LG_WARMING_UP;
                deadline = now + lg_seconds_to_ns(cfg->warmup_s);
                for (int i = 0; i < cfg->conns; i++)
                    if (lg_send_ready(s, &s->conns[i], now) < 0)
                        return -1;
            } else if (now >= deadline) {
                return lg_fail(s, "only %d of %d connections to %s:%d were established%s within %g s",
                               s->connected_count, cfg->conns, cfg->host, cfg->port,
                               s->tls && cfg->ws ? " (TLS handshake and WebSocket upgrade included)"
                               : s->tls ? " (TLS handshake included)"
                               : cfg->ws ? " (WebSocket upgrade included)" : "", cfg->connect_timeout_s);
            }
        } else if (cfg->handshakes && now >= s->next_stage_check_ns) {
            if (lg_check_stages(s, now) < 0)
                return -1;
            s->next_stage_check_ns = now + LG_STAGE_CHECK_MS * 1000000u;
        }
        if (s->phase == LG_WARMING_UP && now >= deadline) {
            if (lg_open_window(s) < 0)
                return -1;
            deadline = s->window.start_ns + lg_seconds_to_ns(cfg->duration_s);
        }
        if (s->phase == LG_MEASURING && lg_window_over(cfg, now, deadline, s->window_messages))
            return lg_close_window(s);

        int wait_ms = s->pending_count > 0 ? 0 : lg_wait_ms(deadline, lg_now_ns(), LG_MAX_WAIT_MS);
        int ready = epoll_wait(s->epoll_fd, events, LG_MAX_EVENTS, wait_ms);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            return lg_fail(s, "epoll_wait failed: %s", strerror(errno));
        }
        for (int i = 0; i < ready; i++)
            if (lg_on_event(s, events[i].data.ptr, events[i].events) < 0)
                return -1;
        if (s->pending_count > 0 && lg_serve_pending(s) < 0)
            return -1;
    }
}

/* OpenSSL writes with write(2), which raises SIGPIPE on a closed peer (the
 * plain path's MSG_NOSIGNAL cannot reach it). Block it in this thread for
 * the run, and swallow one that arrived meanwhile. */
static int lg_block_sigpipe(sigset_t *previous)
{
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    return pthread_sigmask(SIG_BLOCK, &pipe_only, previous) == 0;
}

static void lg_restore_sigpipe(const sigset_t *previous)
{
    if (sigismember(previous, SIGPIPE) != 1) { /* it was not blocked before: drop ours, if any */
        sigset_t pipe_only;
        sigemptyset(&pipe_only);
        sigaddset(&pipe_only, SIGPIPE);
        const struct timespec no_wait = { 0, 0 };
        sigtimedwait(&pipe_only, NULL, &no_wait); /* at most one is pending: SIGPIPE does not queue */
    }
    pthread_sigmask(SIG_SETMASK, previous, NULL);
}

int lg_run(const lg_config *config, lg_result *result)
{
    memset(result, 0, sizeof *result);
    result->server_utime_us = result->server_stime_us = result->server_rss_kib = -1;
    if (config->udp)
        return lg_udp_run(config, result);
    lg_state s = { .config = config, .result = result, .epoll_fd = -1, .phase = LG_CONNECTING };
    if (lg_validate(&s) < 0) {
        lg_release(&s);
        return LG_BAD_CONFIG;
    }
    sigset_t previous_mask;
    int blocked = s.tls ? lg_block_sigpipe(&previous_mask) : 0;
    int rc = lg_allocate(&s) == 0 ? lg_drive(&s) : -1;
    lg_release(&s);
    if (blocked)
        lg_restore_sigpipe(&previous_mask);
    return rc == 0 ? LG_OK : LG_FAILED;
}
