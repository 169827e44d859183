/*
 * fe_udp.h - UDP echo (RFC 862's other half): each worker reads its own
 * socket on every UDP listener's address (SO_REUSEPORT spreads senders
 * across them), in batches (recvmmsg), and sends the replies it keeps in
 * one batch (sendmmsg). It shares the workers, the counters, the allow list
 * and the stop with TCP; it never queues a reply the kernel refuses.
 */
#ifndef FE_UDP_H
#define FE_UDP_H

#include "fe_internal.h"

/* Opens each worker's socket on every UDP listener in s->listeners (the
 * first worker's is a dup of the caller's, the others new ones bound to
 * its address) and allocates the workers' buffers. Called by
 * fe_server_start before the workers run. Returns 0, or -1 with errno and
 * a message in err (a socket that is not a bound UDP socket with
 * SO_REUSEPORT, or out of fds or memory); what it opened is then closed. */
int fe_udp_open(fe_server *s, char *err, size_t errlen);

/* Reads one batch from u and echoes what passes the filters. On u's
 * worker; never blocks. Returns true when the batch was full: more may be
 * waiting (a readiness that is not level-triggered, io_uring's, must then
 * serve u again without waiting for another). */
bool fe_udp_serve(fe_worker *w, fe_udp_socket *u);

/* Access log: emits the per-source events whose window has run out at
 * w->now_ns (all of them with now, at the stop). */
void fe_udp_log_flush_due(fe_worker *w, bool now);

/* Milliseconds until the access log's window runs out (-1: none open). */
int64_t fe_udp_log_ms_left(const fe_worker *w);

/* Closes w's UDP sockets (the stop: reading UDP ends at once) and removes
 * them from its epoll set (io_uring: the backend cancels its polls). Idempotent; on w's thread, or after it exited. */
void fe_udp_close(fe_worker *w);

/* Frees w's UDP buffers (at destroy). */
void fe_udp_free(fe_worker *w);

#endif /* FE_UDP_H */
