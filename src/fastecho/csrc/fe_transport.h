/*
 * fe_transport.h - how a stream connection's bytes cross the wire, apart
 * from what the connection does with them (fe_conn.h).
 *
 * Plain TCP is the only transport so far, and it is called directly, so
 * the plain echo path makes no indirect call per message. A transport with
 * state of its own (TLS) joins here as a small table of these operations,
 * chosen per connection, as redis's ConnectionType or nginx's c->recv and
 * c->send; the plain case stays a direct check.
 */
#ifndef FE_TRANSPORT_H
#define FE_TRANSPORT_H

#include <stddef.h>
#include <sys/types.h>

/* Results besides a byte count. */
enum {
    FE_TP_ERROR = -1, /* the connection is broken (reset, EPIPE, ...) */
    FE_TP_AGAIN = -2, /* nothing now: wait for readiness */
};

/* Reads up to n bytes: > 0 bytes, 0 at the peer's orderly end (FIN),
 * FE_TP_AGAIN or FE_TP_ERROR. Never blocks. */
ssize_t fe_tp_plain_read(int fd, void *buf, size_t n);

/* Like fe_tp_plain_read, but leaves the bytes queued in the kernel. */
ssize_t fe_tp_plain_peek(int fd, void *buf, size_t n);

/* Drops n bytes already peeked, without copying them. scratch must have
 * room for n bytes all the same: sanitizers assume recv() writes them. */
void fe_tp_plain_discard(int fd, void *scratch, size_t n);

/* Writes as much of buf as the socket takes now: the bytes taken (0 when
 * it is full), or FE_TP_ERROR. Never blocks, never raises SIGPIPE. */
ssize_t fe_tp_plain_write(int fd, const void *buf, size_t n);

/* Ends our direction of the stream (FIN); the peer may still send. */
void fe_tp_plain_shutdown(int fd);

#endif /* FE_TRANSPORT_H */
