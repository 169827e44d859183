/*
 * loadgen_tls.c: the load generator's TLS client over OpenSSL. The contract
 * is in loadgen_tls.h.
 *
 * Why it looks like this:
 * - Full handshakes only: the session cache is off and no session is ever
 *   set on a new SSL, so nothing can be resumed; SSL_OP_NO_TICKET keeps
 *   TLS 1.2 servers from even issuing tickets. (A TLS 1.3 server still sends
 *   its tickets after the handshake; they are read and dropped.)
 * - read_ahead: OpenSSL pulls whatever the socket holds in one recv()
 *   instead of a header then a body, halving the generator's syscalls. The
 *   price is that decrypted-but-unread records can sit in OpenSSL where epoll
 *   cannot see them; lg_tls_has_pending() is how loadgen.c finds them.
 * - Partial writes and a moving write buffer: a write returns as soon as one
 *   record is out, and a retry after WANT_WRITE may pass the same bytes at
 *   another address, which is what loadgen.c's pattern offsets do.
 * - SSL_* objects are exposed only as opaque lg_tls_* pointers, so loadgen.c
 *   needs no OpenSSL header.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "loadgen_tls.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#ifdef LG_WITH_TLS

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* The opaque types are the OpenSSL objects themselves: no wrapper to allocate. */
static SSL_CTX *lg_ctx(lg_tls_context *context) { return (SSL_CTX *)(void *)context; }
static SSL *lg_ssl(lg_tls_session *session) { return (SSL *)(void *)session; }
static const SSL *lg_const_ssl(const lg_tls_session *session) { return (const SSL *)(const void *)session; }

int lg_tls_available(void)
{
    return 1;
}

const char *lg_tls_library(void)
{
    return OpenSSL_version(OPENSSL_VERSION);
}

/* "what failed: reason" from OpenSSL's error queue, which it then empties. */
static void lg_tls_describe_error(const SSL *ssl, const char *what, char *error, size_t error_size)
{
    unsigned long code = ERR_get_error();
    const char *reason = code ? ERR_reason_error_string(code) : NULL;
    char fallback[256];
    if (!reason) {
        if (code)
            ERR_error_string_n(code, fallback, sizeof fallback);
        else
            snprintf(fallback, sizeof fallback, "unknown OpenSSL error");
        reason = fallback;
    }
    long verify = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (verify != X509_V_OK)
        snprintf(error, error_size, "%s failed: %s (%s)", what, reason, X509_verify_cert_error_string(verify));
    else
        snprintf(error, error_size, "%s failed: %s", what, reason);
    ERR_clear_error();
}

/* Turn a failed SSL_* call into a status. saved_errno is errno right after
 * the call, which was made with errno cleared. */
static enum lg_tls_status lg_tls_outcome(SSL *ssl, int ret, int saved_errno, const char *what, char *error,
                                         size_t error_size)
{
    switch (SSL_get_error(ssl, ret)) {
    case SSL_ERROR_WANT_READ:
        return LG_TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return LG_TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        return LG_TLS_CLOSED;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() != 0)
            break;
        if (saved_errno == 0) /* OpenSSL 1.1.1's way of saying EOF */
            return LG_TLS_EOF;
        snprintf(error, error_size, "%s failed: %s", what, strerror(saved_errno));
        return LG_TLS_ERROR;
    case SSL_ERROR_SSL:
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING
        /* OpenSSL 3's way of saying EOF without close_notify */
        if (ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
            ERR_clear_error();
            return LG_TLS_EOF;
        }
#endif
        break;
    default:
        break;
    }
    lg_tls_describe_error(ssl, what, error, error_size);
    return LG_TLS_ERROR;
}

lg_tls_context *lg_tls_context_new(int version, const char *ca_file, char *error, size_t error_size)
{
    ERR_clear_error(); /* the caller's thread may have left errors behind */
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        lg_tls_describe_error(NULL, "SSL_CTX_new", error, error_size);
        return NULL;
    }
    int lowest = version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION;
    int highest = version == 12 ? TLS1_2_VERSION : 0; /* 0: the highest OpenSSL knows */
    if (SSL_CTX_set_min_proto_version(ctx, lowest) != 1 || SSL_CTX_set_max_proto_version(ctx, highest) != 1) {
        lg_tls_describe_error(NULL, "setting the TLS version", error, error_size);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1);
    if (ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            char what[256];
            snprintf(what, sizeof what, "loading the CA file %s", ca_file);
            lg_tls_describe_error(NULL, what, error, error_size);
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    ERR_clear_error();
    return (lg_tls_context *)(void *)ctx;
}

void lg_tls_context_free(lg_tls_context *context)
{
    SSL_CTX_free(lg_ctx(context));
}

lg_tls_session *lg_tls_session_new(lg_tls_context *context, int fd, const char *host, char *error,
                                   size_t error_size)
{
    SSL_CTX *ctx = lg_ctx(context);
    SSL *ssl = SSL_new(ctx);
    if (!ssl) {
        lg_tls_describe_error(NULL, "SSL_new", error, error_size);
        return NULL;
    }
    if (SSL_set_fd(ssl, fd) != 1) {
        lg_tls_describe_error(NULL, "SSL_set_fd", error, error_size);
        SSL_free(ssl);
        return NULL;
    }
    /* The certificate must name the address dialled, not just chain to the CA. */
    if ((SSL_CTX_get_verify_mode(ctx) & SSL_VERIFY_PEER) &&
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) != 1) {
        snprintf(error, error_size, "cannot verify the server as %s: not an IP address", host);
        ERR_clear_error();
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_connect_state(ssl);
    return (lg_tls_session *)(void *)ssl;
}

void lg_tls_session_free(lg_tls_session *session)
{
    SSL_free(lg_ssl(session));
}

enum lg_tls_status lg_tls_handshake(lg_tls_session *session, char *error, size_t error_size)
{
    SSL *ssl = lg_ssl(session);
    errno = 0;
    int ret = SSL_do_handshake(ssl);
    if (ret == 1)
        return LG_TLS_DONE;
    return lg_tls_outcome(ssl, ret, errno, "TLS handshake", error, error_size);
}

enum lg_tls_status lg_tls_read(lg_tls_session *session, void *buffer, size_t size, size_t *count, char *error,
                               size_t error_size)
{
    SSL *ssl = lg_ssl(session);
    errno = 0;
    int ret = SSL_read_ex(ssl, buffer, size, count);
    if (ret == 1)
        return LG_TLS_DONE;
    return lg_tls_outcome(ssl, ret, errno, "TLS read", error, error_size);
}

enum lg_tls_status lg_tls_write(lg_tls_session *session, const void *buffer, size_t size, size_t *count,
                                char *error, size_t error_size)
{
    SSL *ssl = lg_ssl(session);
    errno = 0;
    int ret = SSL_write_ex(ssl, buffer, size, count);
    if (ret == 1)
        return LG_TLS_DONE;
    return lg_tls_outcome(ssl, ret, errno, "TLS write", error, error_size);
}

enum lg_tls_status lg_tls_close_notify(lg_tls_session *session, char *error, size_t error_size)
{
    SSL *ssl = lg_ssl(session);
    errno = 0;
    /* 0: sent, the peer's has not come yet; 1: both ways done already. */
    int ret = SSL_shutdown(ssl);
    if (ret >= 0)
        return LG_TLS_DONE;
    return lg_tls_outcome(ssl, ret, errno, "sending close_notify", error, error_size);
}

int lg_tls_has_pending(const lg_tls_session *session)
{
    return SSL_has_pending(lg_const_ssl(session));
}

void lg_tls_describe(const lg_tls_session *session, char *text, size_t text_size)
{
    SSL *ssl = (SSL *)(void *)session; /* the getters below take a non-const SSL */
    const char *group = NULL;
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    group = SSL_group_to_name(ssl, SSL_get_negotiated_group(ssl));
#else
    EVP_PKEY *key = NULL;
    if (SSL_get_peer_tmp_key(ssl, &key) == 1) {
        group = OBJ_nid2sn(EVP_PKEY_id(key));
        EVP_PKEY_free(key);
    }
#endif
    snprintf(text, text_size, "%s %s %s", SSL_get_version(ssl), SSL_get_cipher_name(ssl), group ? group : "?");
}

#else /* !LG_WITH_TLS: this build has no OpenSSL; every entry point refuses. */

static const char lg_no_tls[] =
    "TLS was asked for, but this load generator was built without it "
    "(FASTECHO_WITH_TLS=OFF, or OpenSSL >= 1.1.1 was not found when fastecho was built)";

int lg_tls_available(void)
{
    return 0;
}

const char *lg_tls_library(void)
{
    return NULL;
}

lg_tls_context *lg_tls_context_new(int version, const char *ca_file, char *error, size_t error_size)
{
    (void)version;
    (void)ca_file;
    snprintf(error, error_size, "%s", lg_no_tls);
    return NULL;
}

void lg_tls_context_free(lg_tls_context *context)
{
    (void)context;
}

lg_tls_session *lg_tls_session_new(lg_tls_context *context, int fd, const char *host, char *error,
                                   size_t error_size)
{
    (void)context;
    (void)fd;
    (void)host;
    snprintf(error, error_size, "%s", lg_no_tls);
    return NULL;
}

void lg_tls_session_free(lg_tls_session *session)
{
    (void)session;
}

static enum lg_tls_status lg_tls_refuse(char *error, size_t error_size)
{
    snprintf(error, error_size, "%s", lg_no_tls);
    return LG_TLS_ERROR;
}

enum lg_tls_status lg_tls_handshake(lg_tls_session *session, char *error, size_t error_size)
{
    (void)session;
    return lg_tls_refuse(error, error_size);
}

enum lg_tls_status lg_tls_read(lg_tls_session *session, void *buffer, size_t size, size_t *count, char *error,
                               size_t error_size)
{
    (void)session;
    (void)buffer;
    (void)size;
    *count = 0;
    return lg_tls_refuse(error, error_size);
}

enum lg_tls_status lg_tls_write(lg_tls_session *session, const void *buffer, size_t size, size_t *count,
                                char *error, size_t error_size)
{
    (void)session;
    (void)buffer;
    (void)size;
    *count = 0;
    return lg_tls_refuse(error, error_size);
}

enum lg_tls_status lg_tls_close_notify(lg_tls_session *session, char *error, size_t error_size)
{
    (void)session;
    return lg_tls_refuse(error, error_size);
}

int lg_tls_has_pending(const lg_tls_session *session)
{
    (void)session;
    return 0;
}

void lg_tls_describe(const lg_tls_session *session, char *text, size_t text_size)
{
    (void)session;
    snprintf(text, text_size, "no TLS");
}

#endif /* LG_WITH_TLS */
