/*
 * fe_transport.h - how a stream connection's bytes cross the wire, apart
 * from what the connection does with them (fe_conn.h).
 *
 * Two transports: plain TCP (fe_tp_plain.c) and TLS (fe_tp_tls.c), with the
 * same operations (read, write, end our direction) and the same results.
 * The backend picks one per connection with a direct check of a flag, not
 * through a table of function pointers: with two transports a table buys
 * nothing, and the plain echo path then makes no indirect call per message
 * (retpolines make those cost differently on different machines).
 */
#ifndef FE_TRANSPORT_H
#define FE_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Results besides a byte count. */
enum {
    FE_TP_ERROR = -1,       /* the connection is broken (reset, EPIPE, ...) */
    FE_TP_AGAIN = -2,       /* nothing now: wait for readability */
    FE_TP_AGAIN_WRITE = -3, /* TLS: nothing until the socket is writable */
    FE_TP_PROTOCOL = -4,    /* TLS: the peer broke the protocol (not TLS, a bad
                               record, a refused certificate, an alert) */
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

/* ---- TLS (fe_tp_tls.c). ssl is the connection's session (fe_tls_accept),
 * over a socket BIO that uses recv() and send(MSG_NOSIGNAL). Each call
 * leaves OpenSSL's per-thread error queue empty. */
struct ssl_st;

/* Advances the handshake: 1 when it has finished, FE_TP_AGAIN or
 * FE_TP_AGAIN_WRITE while it waits, 0 when the peer closed before sending
 * a byte (a port probe, not a failure), FE_TP_PROTOCOL when it failed, or
 * FE_TP_ERROR when the socket broke. */
int fe_tp_tls_handshake(struct ssl_st *ssl);

/* Reads up to n bytes of plaintext: > 0 bytes, 0 at the peer's end
 * (close_notify, or FIN without one), FE_TP_AGAIN, FE_TP_AGAIN_WRITE (the
 * read needs to send first: retry when writable), FE_TP_PROTOCOL or
 * FE_TP_ERROR. Never blocks. */
ssize_t fe_tp_tls_read(struct ssl_st *ssl, void *buf, size_t n);

/* Like fe_tp_tls_read, but leaves the plaintext in OpenSSL (at most the
 * rest of the record being read). */
ssize_t fe_tp_tls_peek(struct ssl_st *ssl, void *buf, size_t n);

/* Drops n bytes just peeked (n <= what fe_tp_tls_peek returned), copying
 * them through scratch (room for n bytes). */
void fe_tp_tls_discard(struct ssl_st *ssl, void *scratch, size_t n);

/* Encrypts and sends as much of buf as the socket takes now, record by
 * record: the plaintext bytes taken (0 when it is full), FE_TP_PROTOCOL or
 * FE_TP_ERROR. A write cut short inside a record must be retried with the
 * same bytes next (they may have moved), as OpenSSL holds that record. */
ssize_t fe_tp_tls_write(struct ssl_st *ssl, const void *buf, size_t n);

/* Whether OpenSSL holds input not yet returned by fe_tp_tls_read (epoll
 * will not report it: the bytes have left the socket). */
bool fe_tp_tls_pending(struct ssl_st *ssl);

/* Sends close_notify: 0 when sent (or when it cannot be: the session
 * already failed), FE_TP_AGAIN_WRITE to retry once the socket is writable.
 * FIN (fe_tp_plain_shutdown) follows it. */
int fe_tp_tls_close_notify(struct ssl_st *ssl);

/* The client certificate's subject (RFC 2253, escaped), "" when none. */
void fe_tp_tls_subject(struct ssl_st *ssl, char *out, size_t outlen);

/* Whether the finished handshake resumed an earlier session (a ticket). */
bool fe_tp_tls_resumed(struct ssl_st *ssl);

/* Frees the session (not the socket). NULL: no-op. */
void fe_tp_tls_free(struct ssl_st *ssl);

#endif /* FE_TRANSPORT_H */
