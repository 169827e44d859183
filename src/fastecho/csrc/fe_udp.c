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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { FE_UDP_BATCH = 32 };

struct fe_udp_batch {
    struct mmsghdr msgs[FE_UDP_BATCH];
    struct iovec iov[FE_UDP_BATCH];
    struct sockaddr_storage from[FE_UDP_BATCH];
    /* For the access log: each received datagram's length and fate, and
     * which received datagram each reply slot holds. */
    uint32_t len[FE_UDP_BATCH];
    bool echoed[FE_UDP_BATCH];
    uint8_t origin[FE_UDP_BATCH];
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
            w->udp[w->udp_count++] = (fe_udp_socket){.fd = own, .listener = (uint8_t)l};
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

void fe_udp_serve(fe_worker *w, fe_udp_socket *u)
{
    struct fe_udp_batch *b = w->udp_batch;
    size_t size = w->server->cfg.udp_max_datagram;
    for (int i = 0; i < FE_UDP_BATCH; i++) {
        b->iov[i] = (struct iovec){.iov_base = b->data + (size_t)i * size, .iov_len = size};
        b->msgs[i].msg_hdr = (struct msghdr){.msg_name = &b->from[i], .msg_namelen = sizeof b->from[i],
                                             .msg_iov = &b->iov[i], .msg_iovlen = 1};
    }
    int n = recvmmsg(u->fd, b->msgs, FE_UDP_BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0)
        return; /* EAGAIN (another worker's wake-up), EINTR: the next event */

    /* Keep the replies at the front of msgs, each pointing at its own
     * buffer and sender, sized to what arrived. */
    uint8_t l = u->listener;
    uint64_t bytes_in = 0;
    int64_t now_ns = 0;
    int keep = 0;
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
        b->iov[i].iov_len = len;
        if (keep != i)
            b->msgs[keep].msg_hdr = b->msgs[i].msg_hdr;
        b->origin[keep] = (uint8_t)i;
        keep++;
    }
    fe_counter_add(&w->udp_in[l], (uint64_t)n);
    fe_counter_add(&w->udp_bytes_in[l], bytes_in);

    int sent = 0;
    uint64_t bytes_out = 0;
    while (sent < keep) {
        int r = sendmmsg(u->fd, b->msgs + sent, (unsigned)(keep - sent), MSG_DONTWAIT);
        if (r > 0) {
            for (int i = sent; i < sent + r; i++) {
                bytes_out += b->msgs[i].msg_hdr.msg_iov->iov_len;
                b->echoed[b->origin[i]] = true;
            }
            sent += r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            /* No room: the rest are dropped, never queued. */
            fe_counter_add(&w->udp_dropped[l][FE_UDP_DROP_SEND_FULL], (uint64_t)(keep - sent));
            keep = sent;
        } else {
            fe_counter_add(&w->udp_dropped[l][FE_UDP_DROP_SEND_ERROR], 1); /* that one; go on */
            memmove(&b->msgs[sent], &b->msgs[sent + 1], (size_t)(keep - sent - 1) * sizeof b->msgs[0]);
            memmove(&b->origin[sent], &b->origin[sent + 1], (size_t)(keep - sent - 1));
            keep--;
        }
    }
    fe_counter_add(&w->udp_out[l], (uint64_t)sent);
    fe_counter_add(&w->udp_bytes_out[l], bytes_out);
    if (w->udp_log_ready)
        tally(w, b, n);
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
