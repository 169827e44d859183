/*
 * fe_tp_tls.c - the TLS transport: OpenSSL on a non-blocking socket, its
 * results folded into the transport's (fe_transport.h).
 *
 * OpenSSL's error queue is per thread and must be empty before a call whose
 * failure SSL_get_error is to explain: every failure here is explained and
 * the queue emptied at once, so it stays empty on the echo path without a
 * clearing call per message.
 */
#include "fe_tls.h"
#include "fe_transport.h"

#ifdef FE_WITH_TLS

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

/* Why the call that returned ret failed, as a transport result. errnum is
 * errno right after the call. */
static int failure(SSL *ssl, int ret, int errnum)
{
    int result;
    switch (SSL_get_error(ssl, ret)) {
    case SSL_ERROR_WANT_READ:
        result = FE_TP_AGAIN;
        break;
    case SSL_ERROR_WANT_WRITE:
        result = FE_TP_AGAIN_WRITE;
        break;
    case SSL_ERROR_ZERO_RETURN: /* close_notify (or, with IGNORE_UNEXPECTED_EOF, FIN) */
        result = 0;
        break;
    case SSL_ERROR_SYSCALL:
        /* With an empty queue and no errno: FIN without close_notify (older
         * OpenSSL). Otherwise the socket broke. */
        result = (ERR_peek_error() == 0 && errnum == 0) ? 0 : FE_TP_ERROR;
        if (result != 0)
            SSL_set_quiet_shutdown(ssl, 1); /* no close_notify on a failed session */
        break;
    default:
        result = FE_TP_PROTOCOL;
        SSL_set_quiet_shutdown(ssl, 1);
        break;
    }
    ERR_clear_error();
    return result;
}

int fe_tp_tls_handshake(SSL *ssl)
{
    errno = 0;
    int ret = SSL_do_handshake(ssl);
    if (ret == 1)
        return 1;
    int result = failure(ssl, ret, errno);
    if (result == 0 && BIO_number_read(SSL_get_rbio(ssl)) > 0)
        result = FE_TP_PROTOCOL; /* it began a handshake and walked away */
    if (result == FE_TP_ERROR && BIO_number_read(SSL_get_rbio(ssl)) == 0)
        result = 0; /* connected and reset without a word: a probe too */
    return result;
}

/* SSL_read_ex or SSL_peek_ex, with its result folded (inlined into each
 * caller, so no call through the pointer remains). */
static inline ssize_t read_with(int (*op)(SSL *, void *, size_t, size_t *), SSL *ssl, void *buf, size_t n)
{
    size_t got = 0;
    errno = 0;
    int ret = op(ssl, buf, n, &got);
    if (ret == 1)
        return (ssize_t)got;
    return failure(ssl, ret, errno);
}

ssize_t fe_tp_tls_read(SSL *ssl, void *buf, size_t n)
{
    return read_with(SSL_read_ex, ssl, buf, n);
}

ssize_t fe_tp_tls_peek(SSL *ssl, void *buf, size_t n)
{
    return read_with(SSL_peek_ex, ssl, buf, n);
}

void fe_tp_tls_discard(SSL *ssl, void *scratch, size_t n)
{
    /* The bytes are decrypted and waiting: each read returns some at once.
     * A failure cannot happen here; if it did, the next read reports it. */
    for (size_t left = n, got = 0; left > 0; left -= got) {
        if (SSL_read_ex(ssl, scratch, left, &got) != 1) {
            ERR_clear_error();
            break;
        }
    }
}

ssize_t fe_tp_tls_write(SSL *ssl, const void *buf, size_t n)
{
    const char *bytes = buf;
    size_t sent = 0;
    while (sent < n) { /* partial-write mode: one record per call */
        size_t put = 0;
        errno = 0;
        int ret = SSL_write_ex(ssl, bytes + sent, n - sent, &put);
        if (ret == 1) {
            sent += put;
            continue;
        }
        int result = failure(ssl, ret, errno);
        if (result == FE_TP_AGAIN_WRITE)
            break;
        /* WANT_READ would mean renegotiation, which is off: a broken peer. */
        return result == FE_TP_ERROR ? FE_TP_ERROR : FE_TP_PROTOCOL;
    }
    return (ssize_t)sent;
}

bool fe_tp_tls_pending(SSL *ssl)
{
    return SSL_has_pending(ssl) == 1;
}

int fe_tp_tls_close_notify(SSL *ssl)
{
    errno = 0;
    int ret = SSL_shutdown(ssl); /* 0: ours sent, the peer's not seen yet; 1: both */
    if (ret >= 0)
        return 0;
    return failure(ssl, ret, errno) == FE_TP_AGAIN_WRITE ? FE_TP_AGAIN_WRITE : 0;
}

void fe_tp_tls_subject(SSL *ssl, char *out, size_t outlen)
{
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    X509 *cert = SSL_get1_peer_certificate(ssl);
#else
    X509 *cert = SSL_get_peer_certificate(ssl);
#endif
    if (cert == NULL) {
        if (outlen > 0)
            out[0] = '\0';
        return;
    }
    fe_tls_name_text(X509_get_subject_name(cert), out, outlen);
    X509_free(cert);
}

bool fe_tp_tls_resumed(SSL *ssl)
{
    return SSL_session_reused(ssl) == 1;
}

void fe_tp_tls_free(SSL *ssl)
{
    SSL_free(ssl);
}

#else /* !FE_WITH_TLS: no session can exist (fe_tls_accept returns NULL) */

#include <stddef.h>

int fe_tp_tls_handshake(struct ssl_st *ssl)
{
    (void)ssl;
    return FE_TP_PROTOCOL;
}

ssize_t fe_tp_tls_read(struct ssl_st *ssl, void *buf, size_t n)
{
    (void)ssl, (void)buf, (void)n;
    return FE_TP_PROTOCOL;
}

ssize_t fe_tp_tls_write(struct ssl_st *ssl, const void *buf, size_t n)
{
    (void)ssl, (void)buf, (void)n;
    return FE_TP_PROTOCOL;
}

ssize_t fe_tp_tls_peek(struct ssl_st *ssl, void *buf, size_t n)
{
    (void)ssl, (void)buf, (void)n;
    return FE_TP_PROTOCOL;
}

void fe_tp_tls_discard(struct ssl_st *ssl, void *scratch, size_t n)
{
    (void)ssl, (void)scratch, (void)n;
}

bool fe_tp_tls_pending(struct ssl_st *ssl)
{
    (void)ssl;
    return false;
}

int fe_tp_tls_close_notify(struct ssl_st *ssl)
{
    (void)ssl;
    return 0;
}

void fe_tp_tls_subject(struct ssl_st *ssl, char *out, size_t outlen)
{
    (void)ssl;
    if (outlen > 0)
        out[0] = '\0';
}

bool fe_tp_tls_resumed(struct ssl_st *ssl)
{
    (void)ssl;
    return false;
}

void fe_tp_tls_free(struct ssl_st *ssl)
{
    (void)ssl;
}

#endif
