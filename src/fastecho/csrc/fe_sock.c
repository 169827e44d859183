#include "fe_sock.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

void fe_peer_from_sockaddr(fe_peer *peer, const struct sockaddr *sa, socklen_t len)
{
    memset(peer, 0, sizeof *peer);
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        peer->family = 4;
        peer->port = ntohs(in->sin_port);
        memcpy(peer->addr, &in->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        peer->port = ntohs(in6->sin6_port);
        if (memcmp(in6->sin6_addr.s6_addr, v4_mapped_prefix, 12) == 0) {
            peer->family = 4; /* a dual-stack socket's IPv4 client */
            memcpy(peer->addr, in6->sin6_addr.s6_addr + 12, 4);
        } else {
            peer->family = 6;
            memcpy(peer->addr, in6->sin6_addr.s6_addr, 16);
        }
    }
}

int fe_sock_prepare_listener(int fd)
{
    int listening = 0;
    socklen_t len = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0)
        return -1;
    if (!listening) {
        errno = EINVAL;
        return -1;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)
        return -1;
    return 0;
}

void fe_sock_prepare_accepted(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct linger no_linger = {.l_onoff = 0, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &no_linger, sizeof no_linger);
}

/* Whether fd is a bound UDP socket that others may join (SO_REUSEPORT). */
static bool joinable_udp(int fd)
{
    int type = 0, reuse = 0;
    socklen_t len = sizeof type;
    struct sockaddr_storage addr;
    socklen_t addr_len = sizeof addr;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_DGRAM)
        return false;
    len = sizeof reuse;
    if (getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &reuse, &len) != 0 || !reuse)
        return false;
    if (getsockname(fd, (struct sockaddr *)&addr, &addr_len) != 0)
        return false;
    fe_peer bound;
    fe_peer_from_sockaddr(&bound, (struct sockaddr *)&addr, addr_len);
    return bound.port != 0;
}

int fe_sock_udp_dup(int fd)
{
    if (!joinable_udp(fd)) {
        errno = EINVAL;
        return -1;
    }
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (own < 0)
        return -1;
    int flags = fcntl(own, F_GETFL);
    if (flags < 0 || fcntl(own, F_SETFL, flags | O_NONBLOCK) != 0) {
        int e = errno;
        close(own);
        errno = e;
        return -1;
    }
    return own;
}

int fe_sock_udp_sibling(int fd)
{
    struct sockaddr_storage addr;
    socklen_t addr_len = sizeof addr;
    if (!joinable_udp(fd) || getsockname(fd, (struct sockaddr *)&addr, &addr_len) != 0) {
        errno = EINVAL;
        return -1;
    }
    int own = socket(addr.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (own < 0)
        return -1;
    int one = 1;
    /* Same options as fd where it has them (v6only matters for "::"). */
    static const int copied[][2] = {{SOL_SOCKET, SO_RCVBUF}, {SOL_SOCKET, SO_SNDBUF}, {IPPROTO_IPV6, IPV6_V6ONLY}};
    for (size_t i = 0; i < sizeof copied / sizeof copied[0]; i++) {
        int value = 0;
        socklen_t len = sizeof value;
        if ((copied[i][0] != IPPROTO_IPV6 || addr.ss_family == AF_INET6) &&
            getsockopt(fd, copied[i][0], copied[i][1], &value, &len) == 0) {
            if (copied[i][1] != IPV6_V6ONLY)
                value /= 2; /* the kernel reports the doubled size it keeps */
            setsockopt(own, copied[i][0], copied[i][1], &value, sizeof value);
        }
    }
    if (setsockopt(own, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        bind(own, (struct sockaddr *)&addr, addr_len) != 0) {
        int e = errno;
        close(own);
        errno = e;
        return -1;
    }
    return own;
}
