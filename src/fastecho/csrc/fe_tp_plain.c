/*
 * fe_tp_plain.c - the plain TCP transport: non-blocking socket calls with
 * EINTR retried and errno folded into the transport's results.
 */
#include "fe_transport.h"

#include <errno.h>
#include <sys/socket.h>

static ssize_t recv_with(int fd, void *buf, size_t n, int flags)
{
    ssize_t got;
    do {
        got = recv(fd, buf, n, flags | MSG_DONTWAIT);
    } while (got < 0 && errno == EINTR);
    if (got < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? FE_TP_AGAIN : FE_TP_ERROR;
    return got;
}

ssize_t fe_tp_plain_read(int fd, void *buf, size_t n)
{
    return recv_with(fd, buf, n, 0);
}

ssize_t fe_tp_plain_peek(int fd, void *buf, size_t n)
{
    return recv_with(fd, buf, n, MSG_PEEK);
}

void fe_tp_plain_discard(int fd, void *scratch, size_t n)
{
    /* MSG_TRUNC on a TCP socket discards up to n queued bytes, copying none. */
    while (recv(fd, scratch, n, MSG_TRUNC | MSG_DONTWAIT) < 0 && errno == EINTR) {
    }
}

ssize_t fe_tp_plain_write(int fd, const void *buf, size_t n)
{
    const char *bytes = buf;
    size_t sent = 0;
    while (sent < n) {
        ssize_t put = send(fd, bytes + sent, n - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (put > 0)
            sent += (size_t)put;
        else if (put < 0 && errno == EINTR)
            continue;
        else if (put < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        else
            return FE_TP_ERROR;
    }
    return (ssize_t)sent;
}

void fe_tp_plain_shutdown(int fd)
{
    shutdown(fd, SHUT_WR);
}
