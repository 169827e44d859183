/*
 * loadgen_udp.c: the load generator's UDP mode. The contract is in
 * loadgen.h (what is sent, checked and counted) and loadgen_udp.h.
 *
 * Why it looks like this:
 * - Connected sockets. Each socket connect()s to the server, so the kernel
 *   hands it only datagrams from the server's address and port, and an ICMP
 *   "port unreachable" comes back as ECONNREFUSED (the run fails: nothing
 *   listens there). Socket i and the server see one fixed 4-tuple, so a
 *   server with SO_REUSEPORT sockets keeps each client on one of them.
 * - Slots, not a sliding window. Each socket has `depth` slots; a free slot
 *   is filled at once with the socket's next sequence number. An echo frees
 *   its slot whatever its order, and a datagram not echoed within the
 *   timeout is given up (counted lost) and frees its slot too, so neither
 *   reordering nor loss stalls a socket the way a window would.
 * - What a datagram is. The first LG_UDP_HEADER_SIZE bytes are a header:
 *   the sequence number, the socket index, the slot, the length and a check
 *   mixed from all four and the seed; the rest is the run's pattern from a
 *   rotation derived from (seed, socket, sequence), as in the TCP mode. An
 *   echo is valid only when it has exactly the datagram's length and every
 *   byte is what was sent. The check makes a corrupt header a failure rather
 *   than a reference to some other datagram. A datagram shorter than the
 *   header is the header's first `size` bytes: an echo then completes the
 *   oldest datagram in flight on its socket that it equals (size 0: the
 *   oldest), and one that equals none counts as late, since duplicates and
 *   late echoes cannot be told apart without the whole header.
 * - Duplicates and late echoes. An echo whose datagram is no longer in
 *   flight was either answered before (a duplicate) or given up (late). A
 *   bitmap of the last LG_UDP_HISTORY sequence numbers of each socket says
 *   which; anything older counts as late.
 * - Batches both ways. sendmmsg() fills every free slot of a socket in one
 *   call and recvmmsg() takes up to LG_UDP_BATCH echoes in one, so the
 *   generator's syscalls per datagram fall as load rises and it keeps up
 *   with servers that batch too. Latency is from the sendmmsg() call to the
 *   recvmmsg() return that carried the echo.
 * - The end of a run. When the window closes the generator stops sending
 *   and keeps receiving until nothing is in flight (or the timeout has
 *   passed), then LG_UDP_GRACE_MS more for stray duplicates, so a datagram
 *   sent just before the close is judged like any other instead of being
 *   counted lost.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "loadgen_udp.h"
#include "loadgen_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

enum {
    /* seq (8) | socket index (4) | slot (4) | length (4) | check (4), little-endian */
    LG_UDP_HEADER_SIZE = 24,
    /* Datagrams per sendmmsg()/recvmmsg() call. */
    LG_UDP_BATCH = 64,
    /* recvmmsg() calls per readiness event, so a flood on one socket (a
     * duplicating server) cannot starve the others. */
    LG_UDP_READS_PER_EVENT = 4,
    /* Sequence numbers per socket whose fate (echoed in time or not) is
     * remembered, to tell a duplicate from a late echo. */
    LG_UDP_HISTORY = 4096,
    LG_UDP_MAX_EVENTS = 256,
    LG_UDP_MAX_WAIT_MS = 100,
    /* After the last datagram is resolved, how long to keep listening for
     * duplicates of the last ones. */
    LG_UDP_GRACE_MS = 20,
    /* At most this many slots (sockets x depth) per run: bounds memory and
     * the timeout sweep. */
    LG_UDP_MAX_SLOTS = 1 << 20,
    /* Bytes the kernel charges per queued datagram beyond its payload; used
     * only to size the client's receive buffers. */
    LG_UDP_OVERHEAD_ESTIMATE = 1024,
};

_Static_assert(LG_UDP_HISTORY % 64 == 0, "the history is a bitmap of 64-bit words");

enum lg_udp_phase { LG_UDP_WARMING_UP, LG_UDP_MEASURING, LG_UDP_DRAINING };

typedef struct lg_udp_slot {
    uint64_t seq;     /* the datagram it holds, or held last */
    uint64_t sent_ns; /* when it was handed to sendmmsg() */
    int in_flight;
} lg_udp_slot;

typedef struct lg_udp_socket {
    int fd;
    int index;
    uint32_t events;          /* the epoll interest registered for fd */
    int send_blocked;         /* the last send met EAGAIN: wait for EPOLLOUT */
    uint64_t next_seq;        /* sequence number of the next datagram */
    uint64_t window_first;    /* first seq sent in the window; UINT64_MAX before it opens */
    uint64_t window_end;      /* next_seq when the window closed; UINT64_MAX until then */
    uint64_t echoed_above;    /* 1 + the highest seq echoed in time so far; 0 = none yet */
    uint64_t window_messages; /* echoes in time received in the window */
    int free_count;
    int *free_slots;          /* a stack of free_count free slot indices */
    lg_udp_slot *slots;       /* depth slots */
    uint64_t *echoed;         /* LG_UDP_HISTORY bits: bit seq % HISTORY is 1 when seq was echoed in time */
} lg_udp_socket;

typedef struct lg_udp_state {
    const lg_config *config;
    lg_result *result;
    struct sockaddr_in address;
    uint64_t timeout_ns;
    uint64_t sweep_ns;
    int epoll_fd;
    enum lg_udp_phase phase;
    lg_udp_socket *sockets;
    lg_udp_slot *all_slots;
    int *all_free_slots;
    uint64_t *all_echoed;
    uint64_t in_flight;       /* datagrams in flight over all sockets */
    uint64_t window_messages;
    lg_window window;
    uint8_t *pattern;
    lg_histogram *latency;
    /* Batch buffers, reused by every call. */
    size_t recv_stride;       /* bytes per receive buffer */
    uint8_t *recv_buffers;    /* LG_UDP_BATCH * recv_stride */
    struct mmsghdr recv_msgs[LG_UDP_BATCH];
    struct iovec recv_iov[LG_UDP_BATCH];
    struct mmsghdr send_msgs[LG_UDP_BATCH];
    struct iovec send_iov[LG_UDP_BATCH][2];
    uint8_t send_headers[LG_UDP_BATCH][LG_UDP_HEADER_SIZE];
    int send_slots[LG_UDP_BATCH];
} lg_udp_state;

/* ---- the datagram ------------------------------------------------------- */

static void lg_put32(uint8_t *out, uint32_t value)
{
    for (int i = 0; i < 4; i++)
        out[i] = (uint8_t)(value >> (8 * i));
}

static void lg_put64(uint8_t *out, uint64_t value)
{
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(value >> (8 * i));
}

static uint32_t lg_get32(const uint8_t *in)
{
    uint32_t value = 0;
    for (int i = 3; i >= 0; i--)
        value = (value << 8) | in[i];
    return value;
}

static uint64_t lg_get64(const uint8_t *in)
{
    uint64_t value = 0;
    for (int i = 7; i >= 0; i--)
        value = (value << 8) | in[i];
    return value;
}

static uint32_t lg_udp_check(uint64_t seed, uint64_t seq, uint32_t socket_index, uint32_t slot, uint32_t length)
{
    uint64_t h = lg_mix(seed ^ seq);
    h = lg_mix(h ^ (((uint64_t)socket_index << 32) | slot));
    h = lg_mix(h ^ length);
    return (uint32_t)h;
}

/* The whole header datagram `seq` of socket u carries from slot `slot`. */
static void lg_udp_header(const lg_udp_state *s, const lg_udp_socket *u, int slot, uint64_t seq,
                          uint8_t header[LG_UDP_HEADER_SIZE])
{
    uint32_t length = (uint32_t)s->config->size;
    lg_put64(header, seq);
    lg_put32(header + 8, (uint32_t)u->index);
    lg_put32(header + 12, (uint32_t)slot);
    lg_put32(header + 16, length);
    lg_put32(header + 20, lg_udp_check(s->config->seed, seq, (uint32_t)u->index, (uint32_t)slot, length));
}

/* The pattern bytes after the header of datagram `seq` of socket u. */
static const uint8_t *lg_udp_body(const lg_udp_state *s, const lg_udp_socket *u, uint64_t seq)
{
    return s->pattern + lg_message_rotation(s->config->seed, u->index, seq);
}

/* ---- slots -------------------------------------------------------------- */

static int lg_udp_in_window(const lg_udp_socket *u, uint64_t seq)
{
    return seq >= u->window_first && seq < u->window_end;
}

static int lg_udp_remembered(const lg_udp_socket *u, uint64_t seq)
{
    return u->next_seq - seq <= LG_UDP_HISTORY;
}

static void lg_udp_set_echoed(lg_udp_socket *u, uint64_t seq, int echoed)
{
    uint64_t bit = (uint64_t)1 << (seq % 64);
    uint64_t *word = &u->echoed[(seq % LG_UDP_HISTORY) / 64];
    *word = echoed ? *word | bit : *word & ~bit;
}

static int lg_udp_was_echoed(const lg_udp_socket *u, uint64_t seq)
{
    return (u->echoed[(seq % LG_UDP_HISTORY) / 64] >> (seq % 64)) & 1;
}

static void lg_udp_free_slot(lg_udp_state *s, lg_udp_socket *u, int slot)
{
    u->slots[slot].in_flight = 0;
    u->free_slots[u->free_count++] = slot;
    s->in_flight--;
}

/* Give up on the datagram in `slot`: it counts as lost (if the window sent it). */
static void lg_udp_lose(lg_udp_state *s, lg_udp_socket *u, int slot)
{
    if (lg_udp_in_window(u, u->slots[slot].seq))
        s->result->lost++;
    lg_udp_free_slot(s, u, slot);
}

/* An echo of an earlier datagram no longer in flight: a second echo of one
 * answered in time, or a late one of one given up. */
static void lg_udp_stray(lg_udp_state *s, lg_udp_socket *u, uint64_t seq)
{
    int counted = lg_udp_in_window(u, seq);
    if (lg_udp_remembered(u, seq) && lg_udp_was_echoed(u, seq)) {
        if (counted)
            s->result->duplicates++;
        return;
    }
    if (counted)
        s->result->late++;
    if (lg_udp_remembered(u, seq))
        lg_udp_set_echoed(u, seq, 1); /* a second late copy is a duplicate */
}

static void lg_udp_echoed_in_time(lg_udp_state *s, lg_udp_socket *u, int slot, uint64_t now)
{
    lg_udp_slot *sl = &u->slots[slot];
    uint64_t seq = sl->seq;
    if (now - sl->sent_ns > s->timeout_ns) { /* past its deadline; the sweep had not got to it */
        lg_udp_lose(s, u, slot);
        lg_udp_stray(s, u, seq);
        return;
    }
    if (lg_udp_remembered(u, seq))
        lg_udp_set_echoed(u, seq, 1);
    if (seq + 1 < u->echoed_above) {
        if (lg_udp_in_window(u, seq))
            s->result->reordered++;
    } else {
        u->echoed_above = seq + 1;
    }
    if (s->phase == LG_UDP_MEASURING) {
        lg_histogram_record(s->latency, now - sl->sent_ns);
        u->window_messages++;
        s->window_messages++;
    }
    lg_udp_free_slot(s, u, slot);
}

/* ---- checking an echo --------------------------------------------------- */

/* Of the datagrams in flight on u, the one whose header `data` (length bytes,
 * at least the header) is closest to; -1 when none is within a few bytes. */
static int lg_udp_closest(const lg_udp_state *s, const lg_udp_socket *u, const uint8_t *data)
{
    int best = -1, best_differences = 5; /* more differing bytes than this: no guess */
    for (int slot = 0; slot < s->config->depth; slot++) {
        if (!u->slots[slot].in_flight)
            continue;
        uint8_t expected[LG_UDP_HEADER_SIZE];
        lg_udp_header(s, u, slot, u->slots[slot].seq, expected);
        int differences = 0;
        for (int i = 0; i < LG_UDP_HEADER_SIZE; i++)
            differences += data[i] != expected[i];
        if (differences < best_differences) {
            best = slot;
            best_differences = differences;
        }
    }
    return best;
}

static int lg_udp_differs(lg_udp_state *s, const lg_udp_socket *u, uint64_t seq, size_t at, uint8_t got,
                          uint8_t expected)
{
    return lg_errorf(s->result, "socket %d: the echo of datagram %" PRIu64 " differs at byte %zu of %zu%s: 0x%02x, "
                     "expected 0x%02x", u->index, seq, at, s->config->size,
                     at < LG_UDP_HEADER_SIZE ? " (in its header)" : "", got, expected);
}

/* A header that fails its check: name the byte if the echo is plainly one
 * of the datagrams in flight with a few bytes changed. */
static int lg_udp_corrupt_header(lg_udp_state *s, const lg_udp_socket *u, const uint8_t *data)
{
    int slot = lg_udp_closest(s, u, data);
    if (slot >= 0) {
        uint8_t expected[LG_UDP_HEADER_SIZE];
        lg_udp_header(s, u, slot, u->slots[slot].seq, expected);
        size_t i = 0;
        while (i < LG_UDP_HEADER_SIZE - 1 && data[i] == expected[i])
            i++;
        return lg_udp_differs(s, u, u->slots[slot].seq, i, data[i], expected[i]);
    }
    return lg_errorf(s->result, "socket %d: an echo's header is corrupt (its check field 0x%08" PRIx32
                     " does not match): no datagram sent looks like it", u->index, lg_get32(data + 20));
}

/* Whether `data` (length >= the header) carries a header this run made:
 * its check matches its fields. */
static int lg_udp_header_valid(const lg_udp_state *s, const uint8_t *data)
{
    return lg_get32(data + 20) ==
           lg_udp_check(s->config->seed, lg_get64(data), lg_get32(data + 8), lg_get32(data + 12), lg_get32(data + 16));
}

static int lg_udp_wrong_length(lg_udp_state *s, const lg_udp_socket *u, const uint8_t *data, size_t length,
                               size_t received)
{
    const char *how = length < s->config->size ? "truncated" : "longer than sent";
    /* Name the datagram when enough of it came back to read a valid header. */
    if (received >= LG_UDP_HEADER_SIZE && s->config->size >= LG_UDP_HEADER_SIZE && lg_udp_header_valid(s, data) &&
        lg_get32(data + 8) == (uint32_t)u->index)
        return lg_errorf(s->result, "socket %d: the echo of datagram %" PRIu64 " is %zu bytes long, %zu were sent (%s)",
                         u->index, lg_get64(data), length, s->config->size, how);
    return lg_errorf(s->result, "socket %d: an echo is %zu bytes long, but every datagram sent is %zu (%s)", u->index,
                     length, s->config->size, how);
}

/* Datagrams shorter than the header: complete the oldest one in flight that
 * the echo equals; an echo that equals none is counted late. */
static void lg_udp_match_short(lg_udp_state *s, lg_udp_socket *u, const uint8_t *data, uint64_t now)
{
    size_t size = s->config->size;
    int match = -1;
    for (int slot = 0; slot < s->config->depth; slot++) {
        const lg_udp_slot *sl = &u->slots[slot];
        if (!sl->in_flight || (match >= 0 && sl->seq > u->slots[match].seq))
            continue;
        uint8_t expected[LG_UDP_HEADER_SIZE];
        lg_udp_header(s, u, slot, sl->seq, expected);
        if (memcmp(data, expected, size) == 0)
            match = slot;
    }
    if (match >= 0)
        lg_udp_echoed_in_time(s, u, match, now);
    else if (s->phase != LG_UDP_WARMING_UP)
        s->result->late++;
}

/* One echo of `length` bytes (its real length) received on socket u. */
static int lg_udp_on_echo(lg_udp_state *s, lg_udp_socket *u, const uint8_t *data, size_t length, uint64_t now)
{
    const lg_config *cfg = s->config;
    if (length != cfg->size)
        return lg_udp_wrong_length(s, u, data, length, length < s->recv_stride ? length : s->recv_stride);
    if (cfg->size < LG_UDP_HEADER_SIZE) {
        lg_udp_match_short(s, u, data, now);
        return 0;
    }
    if (!lg_udp_header_valid(s, data))
        return lg_udp_corrupt_header(s, u, data);
    uint64_t seq = lg_get64(data);
    uint32_t socket_index = lg_get32(data + 8), slot = lg_get32(data + 12);
    if (socket_index != (uint32_t)u->index)
        return lg_errorf(s->result, "socket %d received the echo of datagram %" PRIu64 " of socket %" PRIu32
                         " (the server answered the wrong client)", u->index, seq, socket_index);
    if (seq >= u->next_seq || slot >= (uint32_t)cfg->depth) /* a valid check makes this all but impossible */
        return lg_errorf(s->result, "socket %d: an echo names datagram %" PRIu64 " in slot %" PRIu32
                         ", which was never sent", u->index, seq, slot);
    const uint8_t *body = lg_udp_body(s, u, seq);
    size_t body_length = cfg->size - LG_UDP_HEADER_SIZE;
    if (memcmp(data + LG_UDP_HEADER_SIZE, body, body_length) != 0) {
        size_t i = 0;
        while (data[LG_UDP_HEADER_SIZE + i] == body[i])
            i++;
        return lg_udp_differs(s, u, seq, LG_UDP_HEADER_SIZE + i, data[LG_UDP_HEADER_SIZE + i], body[i]);
    }
    if (u->slots[slot].in_flight && u->slots[slot].seq == seq)
        lg_udp_echoed_in_time(s, u, (int)slot, now);
    else
        lg_udp_stray(s, u, seq);
    return 0;
}

/* ---- sockets ------------------------------------------------------------ */

static int lg_udp_watch(lg_udp_state *s, lg_udp_socket *u, uint32_t events)
{
    if (events == u->events)
        return 0;
    struct epoll_event ev = { .events = events, .data.ptr = u };
    if (epoll_ctl(s->epoll_fd, u->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, u->fd, &ev) < 0)
        return lg_errorf(s->result, "socket %d: epoll_ctl failed: %s", u->index, strerror(errno));
    u->events = events;
    return 0;
}

static int lg_udp_socket_error(lg_udp_state *s, const lg_udp_socket *u, const char *call, int error)
{
    if (error == ECONNREFUSED)
        return lg_errorf(s->result, "socket %d: %s: nothing listens on %s:%d (ECONNREFUSED: the server's port "
                         "answered port unreachable)", u->index, call, s->config->host, s->config->port);
    return lg_errorf(s->result, "socket %d: %s failed: %s", u->index, call, strerror(error));
}

/* Fill every free slot of u with a new datagram, in batches. */
static int lg_udp_send_ready(lg_udp_state *s, lg_udp_socket *u, uint64_t now)
{
    const lg_config *cfg = s->config;
    if (s->phase == LG_UDP_DRAINING || u->send_blocked)
        return 0;
    /* Each pass sends at least one datagram or returns. */
    while (u->free_count > 0) {
        int count = u->free_count < LG_UDP_BATCH ? u->free_count : LG_UDP_BATCH;
        for (int i = 0; i < count; i++) {
            int slot = u->free_slots[u->free_count - 1 - i];
            uint64_t seq = u->next_seq + (uint64_t)i;
            s->send_slots[i] = slot;
            lg_udp_header(s, u, slot, seq, s->send_headers[i]);
            struct iovec *iov = s->send_iov[i];
            size_t head = cfg->size < LG_UDP_HEADER_SIZE ? cfg->size : LG_UDP_HEADER_SIZE;
            iov[0] = (struct iovec){ .iov_base = s->send_headers[i], .iov_len = head };
            iov[1] = (struct iovec){ .iov_base = (void *)lg_udp_body(s, u, seq), .iov_len = cfg->size - head };
            s->send_msgs[i].msg_hdr = (struct msghdr){ .msg_iov = iov, .msg_iovlen = cfg->size > head ? 2 : 1 };
        }
        int sent = sendmmsg(u->fd, s->send_msgs, (unsigned)count, MSG_DONTWAIT);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                u->send_blocked = 1;
                return lg_udp_watch(s, u, EPOLLIN | EPOLLOUT);
            }
            if (errno == ENOBUFS) /* a full device queue; the next sweep tries again */
                return 0;
            return lg_udp_socket_error(s, u, "send", errno);
        }
        for (int i = 0; i < sent; i++) {
            lg_udp_slot *sl = &u->slots[s->send_slots[i]];
            sl->seq = u->next_seq++;
            sl->sent_ns = now;
            sl->in_flight = 1;
            if (lg_udp_remembered(u, sl->seq))
                lg_udp_set_echoed(u, sl->seq, 0);
        }
        u->free_count -= sent;
        s->in_flight += (uint64_t)sent;
    }
    return 0;
}

static int lg_udp_receive(lg_udp_state *s, lg_udp_socket *u)
{
    uint64_t now = lg_now_ns();
    for (int reads = 0; reads < LG_UDP_READS_PER_EVENT; reads++) {
        /* MSG_TRUNC: msg_len is each datagram's real length, even one longer
         * than the buffer, so an over-long echo is caught and measured. */
        int received = recvmmsg(u->fd, s->recv_msgs, LG_UDP_BATCH, MSG_DONTWAIT | MSG_TRUNC, NULL);
        if (received < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return lg_udp_socket_error(s, u, "receive", errno);
        }
        now = lg_now_ns();
        for (int i = 0; i < received; i++)
            if (lg_udp_on_echo(s, u, s->recv_iov[i].iov_base, s->recv_msgs[i].msg_len, now) < 0)
                return -1;
        if (received < LG_UDP_BATCH)
            break;
    }
    return lg_udp_send_ready(s, u, now);
}

static int lg_udp_on_event(lg_udp_state *s, lg_udp_socket *u, uint32_t what)
{
    if (what & EPOLLOUT && u->send_blocked) {
        u->send_blocked = 0;
        if (lg_udp_watch(s, u, EPOLLIN) < 0)
            return -1;
    }
    /* EPOLLERR: an ICMP error waits; the receive reports it. */
    if (what & (EPOLLIN | EPOLLERR))
        return lg_udp_receive(s, u);
    return lg_udp_send_ready(s, u, lg_now_ns());
}

/* Give up on every datagram past its deadline, and refill the slots. */
static int lg_udp_sweep(lg_udp_state *s, uint64_t now)
{
    const lg_config *cfg = s->config;
    for (int i = 0; i < cfg->conns; i++) {
        lg_udp_socket *u = &s->sockets[i];
        for (int slot = 0; slot < cfg->depth; slot++)
            if (u->slots[slot].in_flight && now - u->slots[slot].sent_ns > s->timeout_ns)
                lg_udp_lose(s, u, slot);
        if (lg_udp_send_ready(s, u, now) < 0)
            return -1;
    }
    return 0;
}

/* Big enough for `depth` datagrams, so that the client never drops an echo
 * it is about to read: SO_RCVBUFFORCE where allowed, else SO_RCVBUF (capped
 * by net.core.rmem_max). Never made smaller than the default. */
static void lg_udp_size_receive_buffer(const lg_udp_state *s, int fd)
{
    size_t wanted = (size_t)s->config->depth * (s->config->size + LG_UDP_OVERHEAD_ESTIMATE);
    int current = 0;
    socklen_t length = sizeof current;
    if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &current, &length) < 0 || wanted <= (size_t)current / 2)
        return; /* the kernel reports twice what it was asked, its bookkeeping included */
    int value = wanted > (1u << 30) ? 1 << 30 : (int)wanted;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &value, sizeof value) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &value, sizeof value);
}

static int lg_udp_open(lg_udp_state *s, lg_udp_socket *u)
{
    u->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (u->fd < 0)
        return lg_errorf(s->result, "socket %d: socket() failed: %s", u->index, strerror(errno));
    lg_udp_size_receive_buffer(s, u->fd);
    if (connect(u->fd, (const struct sockaddr *)&s->address, sizeof s->address) < 0)
        return lg_errorf(s->result, "socket %d: connect to %s:%d failed: %s", u->index, s->config->host,
                         s->config->port, strerror(errno));
    return lg_udp_watch(s, u, EPOLLIN);
}

/* ---- the run ------------------------------------------------------------ */

static int lg_udp_validate(lg_udp_state *s)
{
    const lg_config *cfg = s->config;
    if (lg_validate_common(cfg, s->result, LG_UDP_MAX_SOCKETS, &s->address) < 0)
        return -1;
    if (cfg->size > LG_UDP_MAX_DATAGRAM_SIZE)
        return lg_errorf(s->result, "size %zu is outside 0..%u (the largest UDP datagram over IPv4)", cfg->size,
                         LG_UDP_MAX_DATAGRAM_SIZE);
    if ((int64_t)cfg->conns * cfg->depth > LG_UDP_MAX_SLOTS)
        return lg_errorf(s->result, "%d sockets x depth %d is more than %d datagrams in flight", cfg->conns,
                         cfg->depth, LG_UDP_MAX_SLOTS);
    if (cfg->tls || cfg->tls_version != 0 || cfg->tls_ca_file)
        return lg_errorf(s->result, "udp and tls exclude each other");
    if (cfg->handshakes)
        return lg_errorf(s->result, "udp has no handshake mode");
    if (cfg->ws || cfg->ws_path)
        return lg_errorf(s->result, "udp and ws exclude each other");
    double timeout = cfg->udp_timeout_s == 0.0 ? LG_UDP_DEFAULT_TIMEOUT_MS / 1000.0 : cfg->udp_timeout_s;
    if (!(timeout > 0.0 && timeout <= 60.0))
        return lg_errorf(s->result, "udp timeout %g s is outside (0, 60]", cfg->udp_timeout_s);
    s->timeout_ns = lg_seconds_to_ns(timeout);
    /* Deadlines are checked this often: a loss is noticed within a quarter
     * of the timeout, and the sweep over every slot stays rare. */
    s->sweep_ns = s->timeout_ns / 4;
    if (s->sweep_ns < 1000000u)
        s->sweep_ns = 1000000u;
    if (s->sweep_ns > 50000000u)
        s->sweep_ns = 50000000u;
    return 0;
}

static int lg_udp_allocate(lg_udp_state *s)
{
    const lg_config *cfg = s->config;
    size_t conns = (size_t)cfg->conns, depth = (size_t)cfg->depth;
    /* Room for the whole datagram, rounded up to a cache line; an echo
     * longer than that is still measured (MSG_TRUNC). */
    s->recv_stride = (cfg->size + 63) / 64 * 64;
    if (s->recv_stride == 0)
        s->recv_stride = 64;
    s->sockets = calloc(conns, sizeof *s->sockets);
    if (!s->sockets)
        return lg_errorf(s->result, "out of memory for %d sockets", cfg->conns);
    for (size_t i = 0; i < conns; i++)
        s->sockets[i].fd = -1; /* before anything else can fail: lg_udp_release closes the others */
    s->all_slots = calloc(conns * depth, sizeof *s->all_slots);
    s->all_free_slots = calloc(conns * depth, sizeof *s->all_free_slots);
    s->all_echoed = calloc(conns * (LG_UDP_HISTORY / 64), sizeof *s->all_echoed);
    s->pattern = malloc(cfg->size + LG_PATTERN_ROTATIONS);
    s->latency = malloc(sizeof *s->latency);
    s->recv_buffers = malloc(LG_UDP_BATCH * s->recv_stride);
    if (!s->all_slots || !s->all_free_slots || !s->all_echoed || !s->pattern || !s->latency ||
        !s->recv_buffers)
        return lg_errorf(s->result, "out of memory for %d sockets of %zu-byte datagrams", cfg->conns, cfg->size);
    lg_fill_pattern(s->pattern, cfg->size + LG_PATTERN_ROTATIONS, cfg->seed);
    lg_histogram_reset(s->latency);
    for (size_t i = 0; i < conns; i++) {
        lg_udp_socket *u = &s->sockets[i];
        u->index = (int)i;
        u->window_first = u->window_end = UINT64_MAX;
        u->slots = s->all_slots + i * depth;
        u->free_slots = s->all_free_slots + i * depth;
        u->echoed = s->all_echoed + i * (LG_UDP_HISTORY / 64);
        for (size_t slot = 0; slot < depth; slot++)
            u->free_slots[u->free_count++] = (int)(depth - 1 - slot); /* slot 0 is used first */
    }
    /* recvmmsg() writes only msg_len and msg_flags: the buffers are set once. */
    for (int i = 0; i < LG_UDP_BATCH; i++) {
        s->recv_iov[i] = (struct iovec){ .iov_base = s->recv_buffers + (size_t)i * s->recv_stride,
                                         .iov_len = s->recv_stride };
        s->recv_msgs[i].msg_hdr = (struct msghdr){ .msg_iov = &s->recv_iov[i], .msg_iovlen = 1 };
    }
    s->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (s->epoll_fd < 0)
        return lg_errorf(s->result, "epoll_create1 failed: %s", strerror(errno));
    return 0;
}

static void lg_udp_release(lg_udp_state *s)
{
    if (s->sockets)
        for (int i = 0; i < s->config->conns; i++)
            if (s->sockets[i].fd >= 0)
                close(s->sockets[i].fd);
    if (s->epoll_fd >= 0)
        close(s->epoll_fd);
    free(s->sockets);
    free(s->all_slots);
    free(s->all_free_slots);
    free(s->all_echoed);
    free(s->pattern);
    free(s->latency);
    free(s->recv_buffers);
}

static int lg_udp_open_window(lg_udp_state *s)
{
    lg_histogram_reset(s->latency);
    for (int i = 0; i < s->config->conns; i++) {
        s->sockets[i].window_messages = 0;
        s->sockets[i].window_first = s->sockets[i].next_seq;
    }
    s->window_messages = 0;
    s->phase = LG_UDP_MEASURING;
    return lg_window_open(&s->window, s->config, s->result);
}

/* The window's figures; what happens to its last datagrams is counted after. */
static int lg_udp_close_window(lg_udp_state *s)
{
    const lg_config *cfg = s->config;
    lg_result *r = s->result;
    if (lg_window_close(&s->window, cfg, r, s->latency, s->window_messages) < 0)
        return -1;
    s->phase = LG_UDP_DRAINING;
    for (int i = 0; i < cfg->conns; i++) {
        lg_udp_socket *u = &s->sockets[i];
        u->window_end = u->next_seq;
        r->sent += u->window_end - u->window_first;
        lg_count_conn_messages(r, u->window_messages);
    }
    return 0;
}

static int lg_udp_drive(lg_udp_state *s)
{
    const lg_config *cfg = s->config;
    uint64_t started = lg_now_ns();
    for (int i = 0; i < cfg->conns; i++)
        if (lg_udp_open(s, &s->sockets[i]) < 0)
            return -1;
    uint64_t now = lg_now_ns();
    s->result->connect_s = (double)(now - started) / 1e9;
    uint64_t deadline = now + lg_seconds_to_ns(cfg->warmup_s);
    uint64_t next_sweep = now + s->sweep_ns;
    uint64_t quiet_since = 0; /* draining: when the last datagram was resolved */
    for (int i = 0; i < cfg->conns; i++)
        if (lg_udp_send_ready(s, &s->sockets[i], now) < 0)
            return -1;

    struct epoll_event events[LG_UDP_MAX_EVENTS];
    /* Each pass sleeps at most until the next deadline or sweep; the drain
     * deadline is fixed when the window closes, so the loop ends. */
    for (;;) {
        now = lg_now_ns();
        if (now >= next_sweep) {
            if (lg_udp_sweep(s, now) < 0)
                return -1;
            next_sweep = now + s->sweep_ns;
        }
        if (s->phase == LG_UDP_WARMING_UP && now >= deadline) {
            if (lg_udp_open_window(s) < 0)
                return -1;
            deadline = s->window.start_ns + lg_seconds_to_ns(cfg->duration_s);
        }
        if (s->phase == LG_UDP_MEASURING && lg_window_over(cfg, now, deadline, s->window_messages)) {
            if (lg_udp_close_window(s) < 0)
                return -1;
            /* By then every datagram still in flight is past its deadline. */
            deadline = lg_now_ns() + s->timeout_ns + s->sweep_ns;
        }
        if (s->phase == LG_UDP_DRAINING) {
            if (s->in_flight == 0 && quiet_since == 0)
                quiet_since = now;
            if (now >= deadline || (quiet_since != 0 && now >= quiet_since + LG_UDP_GRACE_MS * 1000000u)) {
                /* Whatever is still in flight (only past the hard deadline) is lost. */
                for (int i = 0; i < cfg->conns; i++)
                    for (int slot = 0; slot < cfg->depth; slot++)
                        if (s->sockets[i].slots[slot].in_flight)
                            lg_udp_lose(s, &s->sockets[i], slot);
                return 0;
            }
        }

        uint64_t until = deadline < next_sweep ? deadline : next_sweep;
        if (quiet_since != 0 && quiet_since + LG_UDP_GRACE_MS * 1000000u < until)
            until = quiet_since + LG_UDP_GRACE_MS * 1000000u;
        int wait_ms = lg_wait_ms(until, lg_now_ns(), LG_UDP_MAX_WAIT_MS);
        int ready = epoll_wait(s->epoll_fd, events, LG_UDP_MAX_EVENTS, wait_ms);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            return lg_errorf(s->result, "epoll_wait failed: %s", strerror(errno));
        }
        for (int i = 0; i < ready; i++)
            if (lg_udp_on_event(s, events[i].data.ptr, events[i].events) < 0)
                return -1;
    }
}

int lg_udp_run(const lg_config *config, lg_result *result)
{
    lg_udp_state *s = calloc(1, sizeof *s); /* the batch buffers make it too big for a stack */
    if (!s) {
        lg_errorf(result, "out of memory");
        return LG_FAILED;
    }
    s->config = config;
    s->result = result;
    s->epoll_fd = -1;
    s->phase = LG_UDP_WARMING_UP;
    if (lg_udp_validate(s) < 0) {
        free(s);
        return LG_BAD_CONFIG;
    }
    int rc = lg_udp_allocate(s) == 0 ? lg_udp_drive(s) : -1;
    lg_udp_release(s);
    free(s);
    return rc == 0 ? LG_OK : LG_FAILED;
}
