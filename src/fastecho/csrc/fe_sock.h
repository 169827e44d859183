/*
 * fe_sock.h - socket options and addresses, in one place (compare redis's
 * anet.c): what the acceptor does to a listener and to each accepted socket,
 * and how a socket address becomes an fe_peer.
 */
#ifndef FE_SOCK_H
#define FE_SOCK_H

#include "fe.h"

#include <sys/socket.h>

/* Fills peer from a socket address; IPv4-mapped IPv6 becomes IPv4, and an
 * address of another family leaves family 0. */
void fe_peer_from_sockaddr(fe_peer *peer, const struct sockaddr *sa, socklen_t len);

/* Checks that fd is a listening socket and makes it non-blocking. Returns 0,
 * or -1 with errno set (EINVAL: a socket that is not listening). */
int fe_sock_prepare_listener(int fd);

/* Options every served connection gets: TCP_NODELAY (an echo answers small
 * writes at once; Nagle would hold them back), and no SO_LINGER inherited
 * from the listener (a lingering close() blocks even a non-blocking socket,
 * and with it the whole worker). Failures are ignored: both are tuning. */
void fe_sock_prepare_accepted(int fd);

/* A dup of fd, a bound UDP socket with SO_REUSEPORT set, non-blocking and
 * close-on-exec. Returns it, or -1 with errno (EINVAL: not such a socket). */
int fe_sock_udp_dup(int fd);

/* A new non-blocking UDP socket bound to fd's address with SO_REUSEPORT,
 * with fd's IPV6_V6ONLY and buffer sizes, so that the kernel spreads
 * senders across it and fd. Returns it, or -1 with errno. */
int fe_sock_udp_sibling(int fd);

#endif /* FE_SOCK_H */
