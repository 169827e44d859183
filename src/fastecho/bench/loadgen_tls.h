/*
 * loadgen_tls.h: the load generator's TLS client, a thin layer over OpenSSL
 * that loadgen.c drives from its epoll loop. Internal to the load generator.
 *
 * Every call is nonblocking and answers with an lg_tls_status instead of
 * OpenSSL's return-code-plus-SSL_get_error() pair, so loadgen.c never sees
 * an OpenSSL type. Built only with FASTECHO_WITH_TLS (LG_WITH_TLS defined);
 * otherwise loadgen_tls.c compiles to stubs that refuse to create a context.
 *
 * Error text: every function that can fail writes a one-line reason into the
 * caller's `error` buffer (LG_ERROR_SIZE bytes is plenty) and leaves
 * OpenSSL's per-thread error queue empty.
 */
#ifndef FASTECHO_LOADGEN_TLS_H
#define FASTECHO_LOADGEN_TLS_H

#include <stddef.h>

typedef struct lg_tls_context lg_tls_context; /* one per run: an SSL_CTX */
typedef struct lg_tls_session lg_tls_session; /* one per connection: an SSL */

enum lg_tls_status {
    LG_TLS_DONE,       /* the handshake finished, or bytes moved (count > 0) */
    LG_TLS_WANT_READ,  /* retry once the socket is readable */
    LG_TLS_WANT_WRITE, /* retry once the socket is writable */
    LG_TLS_CLOSED,     /* the peer sent close_notify */
    LG_TLS_EOF,        /* the peer closed TCP without close_notify */
    LG_TLS_ERROR,      /* failed; see the error buffer */
};

/* 1 when this build has TLS, else 0. */
int lg_tls_available(void);

/* The TLS library this build runs with ("OpenSSL 3.0.19 27 Jan 2026"), or
 * NULL without TLS. */
const char *lg_tls_library(void);

/*
 * A client context for a run. version: 0 (TLS 1.2 or 1.3), 12 or 13 (only
 * that one). ca_file: PEM file of the CA to verify the server against, or
 * NULL to accept any certificate. Full handshakes only: no session cache and
 * no tickets are ever reused. Returns NULL with the reason in `error`.
 */
lg_tls_context *lg_tls_context_new(int version, const char *ca_file, char *error, size_t error_size);
void lg_tls_context_free(lg_tls_context *context);

/*
 * A client session on the connected nonblocking socket `fd` (not owned: the
 * caller closes it after lg_tls_session_free). When the context verifies,
 * the certificate must name `host` (an IP address) too. NULL on failure.
 */
lg_tls_session *lg_tls_session_new(lg_tls_context *context, int fd, const char *host, char *error,
                                   size_t error_size);
void lg_tls_session_free(lg_tls_session *session);

/* Drive the handshake: DONE when finished, WANT_* to retry, else a failure. */
enum lg_tls_status lg_tls_handshake(lg_tls_session *session, char *error, size_t error_size);

/* Read up to `size` decrypted bytes; on DONE *count > 0 bytes were read. */
enum lg_tls_status lg_tls_read(lg_tls_session *session, void *buffer, size_t size, size_t *count, char *error,
                               size_t error_size);

/*
 * Write up to `size` bytes (one record or more); on DONE *count > 0 bytes were
 * taken. After WANT_*, call again with the same bytes and size: OpenSSL may
 * already have encrypted part of them.
 */
enum lg_tls_status lg_tls_write(lg_tls_session *session, const void *buffer, size_t size, size_t *count,
                                char *error, size_t error_size);

/*
 * Send close_notify. DONE once it is sent (the peer's answer then shows up
 * as LG_TLS_CLOSED or LG_TLS_EOF from lg_tls_read), WANT_WRITE to retry.
 */
enum lg_tls_status lg_tls_close_notify(lg_tls_session *session, char *error, size_t error_size);

/* 1 when OpenSSL holds received bytes not yet returned by lg_tls_read:
 * epoll will not report them, so the caller must read again unprompted. */
int lg_tls_has_pending(const lg_tls_session *session);

/* "TLSv1.3 TLS_AES_256_GCM_SHA384 X25519": what the handshake settled on. */
void lg_tls_describe(const lg_tls_session *session, char *text, size_t text_size);

#endif /* FASTECHO_LOADGEN_TLS_H */
