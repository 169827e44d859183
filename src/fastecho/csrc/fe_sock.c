#include "fe_sock.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>

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
