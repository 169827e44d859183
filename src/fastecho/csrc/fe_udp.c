/*
 * fe_udp.c - UDP echo (see fe_udp.h).
 *
 * A datagram goes back to the address it came from, unchanged, or not at
 * all: from a source port below 1024 (an echo/chargen loop or a reflection
 * attack, CVE-1999-0103), from outside the allow list, past its source's
 * rate, larger than the buffer (MSG_TRUNC: never echoed short), or when
 * the kernel has no room for the reply. Each of those is counted, per
 * listener and reason. Nothing is queued: UDP promises no delivery, and
 * memory stays flat.
 */
#include "fe_udp.h"
#include "fe_rate.h"
#include "fe_sock.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* linux/udp.h, for libcs that predate it (Linux 4.18) */
#endif

enum {
    FE_UDP_BATCH = 32,
    /* One UDP_SEGMENT send carries at most this many datagrams and bytes
     * (the kernel's UDP_MAX_SEGMENTS is 64, and the whole must fit one IPv4
     * datagram's 65,507 bytes). */
    FE_UDP_GSO_SEGMENTS = 64,
    FE_UDP_GSO_BYTES = 65507,
};

/* A reply send: one datagram, or with UDP_SEGMENT several of one size (the
 * last may be shorter) to the same peer, which the kernel cuts apart. */
typedef union {
    char buf[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
} fe_udp_segment_cmsg;

struct fe_udp_batch {
    struct mmsghdr msgs[FE_UDP_BATCH];
    struct iovec iov[FE_UDP_BATCH];
    struct sockaddr_storage from[FE_UDP_BATCH];
    /* For the access log: each received datagram's length and fate. */
    uint32_t len[FE_UDP_BATCH];
    bool echoed[FE_UDP_BATCH];
    /* The replies, in arrival order: which received datagram each is. */
    uint8_t reply[FE_UDP_BATCH];
    /* The sends that carry them: send k carries replies first[k] ..
     * first[k] + count[k] - 1, its iovecs in out_iov from first[k] on. */
    struct mmsghdr out[FE_UDP_BATCH];
    struct iovec out_iov[FE_UDP_BATCH];
    uint8_t first[FE_UDP_BATCH];
    uint8_t count[FE_UDP_BATCH];
    fe_udp_segment_cmsg segment[FE_UDP_BATCH];
    char *data; /* FE_UDP_BATCH buffers of cfg.udp_max_datagram bytes */
};

static const char *const drop_names[FE_UDP_DROP_COUNT] = {
    [FE_UDP_DROP_LOW_PORT] = "low-port",
    [FE_UDP_DROP_NOT_ALLOWED] = "not-allowed",
    [FE_UDP_DROP_RATE] = "rate",
    [FE_UDP_DROP_SEND_FULL] = "send-buffer-full",
    [FE_UDP_DROP_TRUNCATED] = "truncated",
    [FE_UDP_DROP_SEND_ERROR] = "send-error",
};

const char *fe_udp_drop_name(int reason)
{
    if (reason < 0 || reason >= FE_UDP_DROP_COUNT)
        return "unknown";
    return drop_names[reason];
}

static int fail(char *err, size_t errlen, int errnum, const char *what, int fd)
{
    snprintf(err, errlen, "%s (UDP listener fd %d): %s", what, fd, strerror(errnum));
    errno = errnum;
    return -1;
}

/* Whether the kernel knows UDP_SEGMENT (Linux 4.18). A route that cannot
 * take it (no checksum offload, a smaller MTU) still fails the send: then
 * send_replies turns it off for the socket. */
static bool has_gso(int fd)
{
    int size = 0;
    socklen_t len = sizeof size;
    return getsockopt(fd, IPPROTO_UDP, UDP_SEGMENT, &size, &len) == 0;
}

int fe_udp_open(fe_server *s, char *err, size_t errlen)
{
    size_t count = atomic_load(&s->listener_count);
    for (size_t l = 0; l < count; l++) {
        if (!s->listeners[l].udp)
            continue;
        int fd = s->listeners[l].fd;
        for (int i = 0; i < s->worker_count; i++) {
            fe_worker *w = &s->workers[i];
            /* The first worker's is a dup, so the caller may close its own
             * as soon as fe_server_shutdown returns. */
            int own = i == 0 ? fe_sock_udp_dup(fd) : fe_sock_udp_sibling(fd);
            if (own < 0)
                return fail(err, errlen, errno, i == 0 ? "cannot use the socket" : "cannot open a sibling socket", fd);
            w->udp[w->udp_count++] = (fe_udp_socket){.fd = own, .listener = (uint8_t)l, .gso = has_gso(own)};
        }
    }
    if (s->workers[0].udp_count == 0)
        return 0;
    if (s->cfg.udp_rate > 0 && fe_rate_init(&s->udp_rate, s->cfg.udp_rate, FE_UDP_RATE_SOURCES) != 0)
        return fail(err, errlen, ENOMEM, "allocating the rate table", -1);
    for (int i = 0; i < s->worker_count; i++) {
        fe_worker *w = &s->workers[i];
        struct fe_udp_batch *b = calloc(1, sizeof *b);
        char *data = b ? malloc(FE_UDP_BATCH * s->cfg.udp_max_datagram) : NULL;
        if (data == NULL) {
            free(b);
            return fail(err, errlen, ENOMEM, "allocating UDP buffers", -1);
        }
        b->data = data;
        w->udp_batch = b;
        if (w->ring_ready) {
            if (fe_udp_log_init(&w->udp_log) != 0)
                return fail(err, errlen, ENOMEM, "allocating the UDP access log", -1);
            w->udp_log_ready = true;
        }
    }
    return 0;
}

/* The source port, straight from the address (no fe_peer for the plain case). */
static unsigned source_port(const struct sockaddr_storage *from)
{
    if (from->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)from)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)from)->sin6_port);
}

/* Why the i-th received datagram is not echoed, or FE_UDP_DROP_COUNT. */
static int verdict(fe_worker *w, const struct mmsghdr *m, const struct sockaddr_storage *from, int64_t *now_ns)
{
    const fe_server *s = w->server;
    if (m->msg_hdr.msg_flags & MSG_TRUNC)
        return FE_UDP_DROP_TRUNCATED;
    if (!s->cfg.udp_allow_low_ports && source_port(from) < 1024)
        return FE_UDP_DROP_LOW_PORT;
    if (s->cfg.allow_count == 0 && s->cfg.udp_rate == 0)
        return FE_UDP_DROP_COUNT;
    fe_peer peer;
    fe_peer_from_sockaddr(&peer, (const struct sockaddr *)from, m->msg_hdr.msg_namelen);
    if (s->cfg.allow_count > 0 && !fe_cidr_contains_any(s->allow, s->cfg.allow_count, &peer))
        return FE_UDP_DROP_NOT_ALLOWED;
    if (s->cfg.udp_rate > 0) {
        if (*now_ns == 0)
            *now_ns = fe_now_ns(); /* once per batch */
        if (!fe_rate_take((fe_rate_table *)&s->udp_rate, &peer, *now_ns))
            return FE_UDP_DROP_RATE;
    }
    return FE_UDP_DROP_COUNT;
}

static void tally(fe_worker *w, const struct fe_udp_batch *b, int n);

/* Whether received datagrams i and j came from the same address. */
static bool same_sender(const struct fe_udp_batch *b, int i, int j)
{
    socklen_t len = b->msgs[i].msg_hdr.msg_namelen;
    return len == b->msgs[j].msg_hdr.msg_namelen && memcmp(&b->from[i], &b->from[j], len) == 0;
}

/* Plans the sends for replies from..replies-1 into b->out from index
 * `sends` on; returns the new number of sends. With gso, a run of replies
 * to one sender, all of one size but the last (which may be shorter), goes
 * as one send. */
static int plan_sends(struct fe_udp_batch *b, int from, int replies, bool gso, int sends)
{
    for (int r = from; r < replies;) {
        int i = b->reply[r];
        uint32_t size = b->len[i];
        int count = 1;
        uint32_t bytes = size;
        if (gso && size > 0) {
            while (r + count < replies && count < FE_UDP_GSO_SEGMENTS) {
                int j = b->reply[r + count];
                if (b->len[j] == 0 || b->len[j] > size || bytes + b->len[j] > FE_UDP_GSO_BYTES ||
                    !same_sender(b, i, j))
                    break;
                bytes += b->len[j];
                count++;
                if (b->len[j] < size)
                    break; /* a shorter one ends the run */
            }
        }
        for (int k = 0; k < count; k++) {
            int j = b->reply[r + k];
            b->out_iov[r + k] = (struct iovec){.iov_base = b->iov[j].iov_base, .iov_len = b->len[j]};
        }
        struct msghdr *h = &b->out[sends].msg_hdr;
        *h = (struct msghdr){.msg_name = &b->from[i], .msg_namelen = b->msgs[i].msg_hdr.msg_namelen,
                             .msg_iov = &b->out_iov[r], .msg_iovlen = (size_t)count};
        if (count > 1) {
            h->msg_control = b->segment[sends].buf;
            h->msg_controllen = sizeof b->segment[sends].buf;
            struct cmsghdr *c = CMSG_FIRSTHDR(h);
            c->cmsg_level = IPPROTO_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t segment = (uint16_t)size;
            memcpy(CMSG_DATA(c), &segment, sizeof segment);
        }
        b->first[sends] = (uint8_t)r;
        b->count[sends] = (uint8_t)count;
        sends++;
        r += count;
    }
    return sends;
}

/* Whether a UDP_SEGMENT send failed for want of offload or MTU, not for
 * its peer: then the socket sends one datagram at a time from then on. */
static bool gso_refused(int e)
{
    return e == EIO || e == EINVAL || e == EMSGSIZE || e == ENOPROTOOPT || e == EOPNOTSUPP;
}

/* Sends the batch's replies, as few sends as the peers allow, in one
 * sendmmsg where the kernel takes them all. What it has no room for is
 * dropped and counted, never queued. */
static void send_replies(fe_worker *w, fe_udp_socket *u, struct fe_udp_batch *b, int replies)
{
    uint8_t l = u->listener;
    int sends = plan_sends(b, 0, replies, u->gso, 0);
    int done = 0;
    uint64_t sent = 0, bytes_out = 0;
    while (done < sends) {
        int r = sendmmsg(u->fd, b->out + done, (unsigned)(sends - done), MSG_DONTWAIT);
        if (r > 0) {
            for (int k = done; k < done + r; k++) {
                for (int q = b->first[k]; q < b->first[k] + b->count[k]; q++) {
                    bytes_out += b->out_iov[q].iov_len;
                    b->echoed[b->reply[q]] = true;
                }
                sent += b->count[k];
            }
            done += r;
            continue;
        }
        int e = errno;
        if (r < 0 && e == EINTR)
            continue;
        int left = replies - b->first[done];
        if (r < 0 && (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS)) {
            /* No room: the rest are dropped, never queued. */
            fe_counter_add(&w->udp_dropped[l][FE_UDP_DROP_SEND_FULL], (uint64_t)left);
            break;
        }
        if (b->count[done] > 1 && gso_refused(e)) {
            u->gso = false; /* the route cannot take it: one at a time from here */
            sends = plan_sends(b, b->first[done], replies, false, done);
            continue;
        }
        /* That send failed for its peer: drop what it carried, go on. */
        fe_counter_add(&w->udp_dropped[l][FE_UDP_DROP_SEND_ERROR], b->count[done]);
        done++;
    }
    fe_counter_add(&w->udp_out[l], sent);
    fe_counter_add(&w->udp_bytes_out[l], bytes_out);
}

bool fe_udp_serve(fe_worker *w, fe_udp_socket *u)
{
    struct fe_udp_batch *b = w->udp_batch;
    size_t size = w->server->cfg.udp_max_datagram;
    for (int i = 0; i < FE_UDP_BATCH; i++) {
        b->iov[i] = (struct iovec){.iov_base = b->data + (size_t)i * size, .iov_len = size};
        b->msgs[i].msg_hdr = (struct msghdr){.msg_name = &b->from[i], .msg_namelen = sizeof b->from[i],
                                             .msg_iov = &b->iov[i], .msg_iovlen = 1};
    }
    int n = recvmmsg(u->fd, b->msgs, FE_UDP_BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0) /* EAGAIN (another worker's wake-up): the next event; EINTR: again */
        return n < 0 && errno == EINTR;

    /* The replies are the datagrams that pass, in arrival order. */
    uint8_t l = u->listener;
    uint64_t bytes_in = 0;
    int64_t now_ns = 0;
    int replies = 0;
    for (int i = 0; i < n; i++) {
        size_t len = b->msgs[i].msg_len;
        bytes_in += len;
        b->len[i] = (uint32_t)len;
        b->echoed[i] = false;
        int drop = verdict(w, &b->msgs[i], &b->from[i], &now_ns);
        if (drop != FE_UDP_DROP_COUNT) {
            fe_counter_add(&w->udp_dropped[l][drop], 1);
            continue;
        }
        b->reply[replies++] = (uint8_t)i;
    }
    fe_counter_add(&w->udp_in[l], (uint64_t)n);
    fe_counter_add(&w->udp_bytes_in[l], bytes_in);
    send_replies(w, u, b, replies);
    if (w->udp_log_ready)
        tally(w, b, n);
    return n == FE_UDP_BATCH;
}

/* Counts each datagram of the batch under its source for the access log. */
static void tally(fe_worker *w, const struct fe_udp_batch *b, int n)
{
    w->now_ns = fe_now_ns(); /* the window's start, if this opens one */
    for (int i = 0; i < n; i++) {
        fe_peer source;
        fe_peer_from_sockaddr(&source, (const struct sockaddr *)&b->from[i], sizeof b->from[i]);
        fe_udp_log_count(&w->udp_log, &source, b->len[i], b->echoed[i], w->now_ns);
    }
}

static void push_event(void *ctx, const fe_event *ev)
{
    fe_ring_push(ctx, ev);
}

void fe_udp_log_flush_due(fe_worker *w, bool now)
{
    if (w->udp_log_ready && (now || fe_udp_log_due(&w->udp_log, w->now_ns)))
        fe_udp_log_flush(&w->udp_log, w->now_ns, push_event, &w->events);
}

int64_t fe_udp_log_ms_left(const fe_worker *w)
{
    if (!w->udp_log_ready || w->udp_log.window_start_ns == 0)
        return -1;
    int64_t end = w->udp_log.window_start_ns + FE_UDP_LOG_WINDOW_MS * 1000000LL;
    return end <= w->now_ns ? 0 : (end - w->now_ns + 999999) / 1000000;
}

void fe_udp_close(fe_worker *w)
{
    for (size_t i = 0; i < w->udp_count; i++) {
        if (w->udp[i].fd < 0)
            continue;
        if (w->epoll_fd >= 0) /* (io_uring: its poll is cancelled by the backend) */
            epoll_ctl(w->epoll_fd, EPOLL_CTL_DEL, w->udp[i].fd, NULL);
        close(w->udp[i].fd);
        w->udp[i].fd = -1;
    }
}

void fe_udp_free(fe_worker *w)
{
    if (w->udp_log_ready) {
        fe_udp_log_free(&w->udp_log);
        w->udp_log_ready = false;
    }
    if (w->udp_batch != NULL) {
        free(w->udp_batch->data);
        free(w->udp_batch);
        w->udp_batch = NULL;
    }
}
