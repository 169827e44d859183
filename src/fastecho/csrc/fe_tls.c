/*
 * fe_tls.c - TLS certificates and policy (an OpenSSL SSL_CTX), and the
 * server's current one, which SIGHUP-style rotation replaces while
 * connections are served. The per-connection side is fe_tp_tls.c.
 *
 * Everything is loaded from PEM text the caller read: nothing here opens a
 * path, so a FIFO or /dev/zero named as a certificate cannot hang or flood
 * the core (the caller reads files with its own limits).
 */
#include "fe_tls.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#ifdef FE_WITH_TLS

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

struct fe_tls {
    SSL_CTX *ctx;
};

/* Mozilla's "intermediate" configuration (TLS 1.2 ciphers; TLS 1.3 keeps
 * OpenSSL's three suites, which are the same list). */
static const char intermediate_ciphers[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305";
static const char intermediate_groups[] = "X25519:prime256v1:secp384r1";
/* Sessions resume only within the same context id (with client
 * certificates OpenSSL refuses to resume without one). Without client
 * certificates it is this constant; with them, a digest of the trusted CAs
 * (session_context), so that a session verified under other trust settings
 * never resumes after a rotation, which keeps the ticket keys. */
static const unsigned char session_id_context[] = "fastecho";

/* The context id for settings: SSL_MAX_SID_CTX_LENGTH (32) bytes at most. */
static int session_context(const fe_tls_settings *s, unsigned char *out, unsigned int *len)
{
    if (s->client_ca_pem == NULL) {
        memcpy(out, session_id_context, sizeof session_id_context - 1);
        *len = sizeof session_id_context - 1;
        return 1;
    }
    return EVP_Digest(s->client_ca_pem, s->client_ca_len, out, len, EVP_sha256(), NULL);
}

bool fe_tls_available(void)
{
    return true;
}

const char *fe_tls_library(void)
{
    return OpenSSL_version(OPENSSL_VERSION);
}

/* Never prompt for a passphrase on the terminal: an encrypted key fails. */
static int no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
    (void)buf, (void)size, (void)rwflag, (void)userdata;
    return -1;
}

/* Writes "what: OpenSSL's reason" into err, and empties the error queue. */
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    char what[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    unsigned long code = ERR_peek_last_error();
    const char *reason = code ? ERR_reason_error_string(code) : NULL;
    if (reason)
        snprintf(err, errlen, "%s: %s", what, reason);
    else
        snprintf(err, errlen, "%s", what);
    ERR_clear_error();
    errno = EINVAL;
    return -1;
}

/* Whether the last PEM read failed only because no more PEM blocks follow
 * (the normal end of a bundle); clears that error. */
static bool pem_ended(void)
{
    unsigned long code = ERR_peek_last_error();
    if (ERR_GET_LIB(code) == ERR_LIB_PEM && ERR_GET_REASON(code) == PEM_R_NO_START_LINE) {
        ERR_clear_error();
        return true;
    }
    return code == 0;
}

static int load_certificate(SSL_CTX *ctx, const fe_tls_settings *s, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(s->cert_pem, (int)s->cert_len);
    if (bio == NULL)
        return fail(err, errlen, "certificate: out of memory");
    X509 *leaf = PEM_read_bio_X509_AUX(bio, NULL, no_passphrase, NULL);
    if (leaf == NULL) {
        BIO_free(bio);
        return fail(err, errlen, "certificate: no PEM certificate found");
    }
    int ok = SSL_CTX_use_certificate(ctx, leaf);
    X509_free(leaf);
    if (!ok) {
        BIO_free(bio);
        return fail(err, errlen, "certificate: not usable");
    }
    X509 *ca;
    int chain = 0;
    while ((ca = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL)) != NULL) {
        chain++;
        if (!SSL_CTX_add0_chain_cert(ctx, ca)) { /* takes ca on success */
            X509_free(ca);
            BIO_free(bio);
            return fail(err, errlen, "certificate: chain certificate %d not usable", chain);
        }
    }
    BIO_free(bio);
    if (!pem_ended())
        return fail(err, errlen, "certificate: chain certificate %d is malformed", chain + 1);
    return 0;
}

static int load_key(SSL_CTX *ctx, const fe_tls_settings *s, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(s->key_pem, (int)s->key_len);
    if (bio == NULL)
        return fail(err, errlen, "key: out of memory");
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    if (key == NULL)
        return fail(err, errlen, "key: no unencrypted PEM private key found");
    int ok = SSL_CTX_use_PrivateKey(ctx, key);
    EVP_PKEY_free(key);
    if (!ok)
        return fail(err, errlen, "the key does not belong to the certificate");
    if (!SSL_CTX_check_private_key(ctx))
        return fail(err, errlen, "the key does not belong to the certificate");
    return 0;
}

/* Every certificate in the PEM becomes a trust anchor for client
 * certificates and a name sent in the CertificateRequest. */
static int load_client_ca(SSL_CTX *ctx, const fe_tls_settings *s, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(s->client_ca_pem, (int)s->client_ca_len);
    if (bio == NULL)
        return fail(err, errlen, "client CA: out of memory");
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    X509 *ca;
    int count = 0;
    while ((ca = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL)) != NULL) {
        count++;
        int ok = X509_STORE_add_cert(store, ca) && SSL_CTX_add_client_CA(ctx, ca);
        X509_free(ca);
        if (!ok) {
            BIO_free(bio);
            return fail(err, errlen, "client CA: certificate %d not usable", count);
        }
    }
    BIO_free(bio);
    if (!pem_ended())
        return fail(err, errlen, "client CA: certificate %d is malformed", count + 1);
    if (count == 0)
        return fail(err, errlen, "client CA: no PEM certificate found");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    return 0;
}

static int configure(SSL_CTX *ctx, const fe_tls_settings *s, char *err, size_t errlen)
{
    unsigned char sid[EVP_MAX_MD_SIZE];
    unsigned int sid_len = 0;
    int min = s->min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION;
    if (!SSL_CTX_set_min_proto_version(ctx, min) || !SSL_CTX_set_cipher_list(ctx, intermediate_ciphers) ||
        !SSL_CTX_set1_groups_list(ctx, intermediate_groups) ||
        !session_context(s, sid, &sid_len) || !SSL_CTX_set_session_id_context(ctx, sid, sid_len))
        return fail(err, errlen, "TLS policy not supported by %s", fe_tls_library());
    SSL_CTX_set_dh_auto(ctx, 1); /* for the DHE-RSA suites */
    long options = SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION;
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    /* A client that ends with FIN but no close_notify has still ended (as
     * for plain TCP); nothing it sent is lost, since echo has no framing. */
    options |= SSL_OP_IGNORE_UNEXPECTED_EOF;
#endif
    SSL_CTX_set_options(ctx, options);
    /* Partial writes: SSL_write returns after each record, as send()
     * returns a short count. A moving buffer: a write retried after
     * WANT_WRITE may come from the connection's output buffer, which moves
     * as it grows. Released buffers: an idle connection holds no 34 KiB of
     * OpenSSL buffers, as an idle plain one holds none of ours. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    /* Read ahead: one recv takes whatever records have arrived, instead of
     * two per record (header, then body); the backend then serves what
     * OpenSSL holds before waiting on the socket (fe_tp_tls_pending). */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    return 0;
}

int fe_tls_create(const fe_tls_settings *settings, fe_tls **out, char *err, size_t errlen)
{
    *out = NULL;
    ERR_clear_error(); /* the caller's thread may hold an old error: not ours to report */
    if (settings->cert_pem == NULL || settings->key_pem == NULL || settings->cert_len > INT32_MAX ||
        settings->key_len > INT32_MAX || settings->client_ca_len > INT32_MAX) {
        snprintf(err, errlen, "a certificate and a key are needed");
        errno = EINVAL;
        return -1;
    }
    if (settings->min_version != 0 && settings->min_version != 12 && settings->min_version != 13) {
        snprintf(err, errlen, "minimum TLS version must be 12 or 13, not %d", settings->min_version);
        errno = EINVAL;
        return -1;
    }
    fe_tls *tls = calloc(1, sizeof *tls);
    if (tls == NULL || (tls->ctx = SSL_CTX_new(TLS_server_method())) == NULL) {
        free(tls);
        ERR_clear_error();
        snprintf(err, errlen, "cannot create a TLS context: out of memory");
        errno = ENOMEM;
        return -1;
    }
    if (configure(tls->ctx, settings, err, errlen) != 0 || load_certificate(tls->ctx, settings, err, errlen) != 0 ||
        load_key(tls->ctx, settings, err, errlen) != 0 ||
        (settings->client_ca_pem != NULL && load_client_ca(tls->ctx, settings, err, errlen) != 0)) {
        fe_tls_free(tls);
        errno = EINVAL;
        return -1;
    }
    *out = tls;
    return 0;
}

/* Appends src to out (of outlen), cut with "..." when it does not fit. */
static void copy_cut(char *out, size_t outlen, const char *src, size_t n)
{
    if (outlen == 0)
        return;
    if (n < outlen) {
        memcpy(out, src, n);
        out[n] = '\0';
        return;
    }
    snprintf(out, outlen, "%.*s...", (int)(outlen > 4 ? outlen - 4 : 0), src);
}

void fe_tls_name_text(const void *x509_name, char *out, size_t outlen)
{
    /* RFC 2253 form, with control and non-ASCII bytes escaped: the text is
     * the client's, and it goes into log lines. */
    BIO *bio = BIO_new(BIO_s_mem());
    char *text = NULL;
    long n = 0;
    if (bio && X509_NAME_print_ex(bio, (const X509_NAME *)x509_name, 0, XN_FLAG_RFC2253) >= 0)
        n = BIO_get_mem_data(bio, &text);
    copy_cut(out, outlen, text ? text : "", n > 0 ? (size_t)n : 0);
    BIO_free(bio);
    ERR_clear_error();
}

void fe_tls_describe(const fe_tls *tls, char *out, size_t outlen)
{
    X509 *cert = SSL_CTX_get0_certificate(tls->ctx);
    char subject[FE_SUBJECT_MAX] = "", until[64] = "";
    if (cert) {
        fe_tls_name_text(X509_get_subject_name(cert), subject, sizeof subject);
        BIO *bio = BIO_new(BIO_s_mem());
        char *text = NULL;
        long n = 0;
        if (bio && ASN1_TIME_print(bio, X509_get0_notAfter(cert)))
            n = BIO_get_mem_data(bio, &text);
        copy_cut(until, sizeof until, text ? text : "?", n > 0 ? (size_t)n : 1);
        BIO_free(bio);
        ERR_clear_error();
    }
    snprintf(out, outlen, "%s, valid until %s", subject, until);
}

void fe_tls_free(fe_tls *tls)
{
    if (tls == NULL)
        return;
    SSL_CTX_free(tls->ctx);
    free(tls);
}

void fe_server_set_tls(fe_server *s, fe_tls *tls)
{
    SSL_CTX_up_ref(tls->ctx);
    pthread_mutex_lock(&s->tls_lock);
    SSL_CTX *old = s->tls_ctx;
    if (old != NULL) {
        /* Tickets issued under the old pair keep resuming: same keys.
         * Written only where they differ: tls may be live already (installed
         * before, and rotated back to, or installed twice), and OpenSSL
         * reads a context's ticket keys without a lock in every handshake
         * of its sessions, so even rewriting the same bytes would race. */
        unsigned char keys[80], have[80];
        if (SSL_CTX_get_tlsext_ticket_keys(old, keys, sizeof keys) == 1 &&
            (SSL_CTX_get_tlsext_ticket_keys(tls->ctx, have, sizeof have) != 1 ||
             CRYPTO_memcmp(keys, have, sizeof keys) != 0))
            SSL_CTX_set_tlsext_ticket_keys(tls->ctx, keys, sizeof keys);
        OPENSSL_cleanse(keys, sizeof keys);
        OPENSSL_cleanse(have, sizeof have);
    }
    s->tls_ctx = tls->ctx;
    pthread_mutex_unlock(&s->tls_lock);
    SSL_CTX_free(old); /* connections made with it hold their own references */
}

/* ---- The socket under a session: a BIO of our own, not OpenSSL's socket
 * BIO, which uses read() and write(): recv() and send() skip the file
 * layer's position lock, and send() takes MSG_NOSIGNAL, so a peer that is
 * gone cannot raise SIGPIPE in a program that embeds the engine. The fd is
 * the BIO's data; the end of the stream is BIO_FLAGS_IN_EOF, as for
 * OpenSSL's own BIO (SSL_OP_IGNORE_UNEXPECTED_EOF asks for it). */

#ifndef BIO_FLAGS_IN_EOF /* OpenSSL 1.1.1 before e: a flag of this BIO's own */
#define BIO_FLAGS_IN_EOF 0x800
#endif

static int sock_of(BIO *bio)
{
    return (int)(intptr_t)BIO_get_data(bio);
}

static int sock_read(BIO *bio, char *buf, size_t n, size_t *got)
{
    ssize_t r;
    do {
        r = recv(sock_of(bio), buf, n, MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    BIO_clear_retry_flags(bio);
    if (r > 0) {
        *got = (size_t)r;
        return 1;
    }
    if (r == 0)
        BIO_set_flags(bio, BIO_FLAGS_IN_EOF);
    else if (errno == EAGAIN || errno == EWOULDBLOCK)
        BIO_set_retry_read(bio);
    *got = 0;
    return 0;
}

static int sock_write(BIO *bio, const char *buf, size_t n, size_t *put)
{
    ssize_t r;
    do {
        r = send(sock_of(bio), buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    BIO_clear_retry_flags(bio);
    if (r >= 0) {
        *put = (size_t)r;
        return 1;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        BIO_set_retry_write(bio);
    *put = 0;
    return 0;
}

static long sock_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    (void)num, (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH: /* nothing is held here */
        return 1;
    case BIO_CTRL_EOF:
        return BIO_test_flags(bio, BIO_FLAGS_IN_EOF) != 0;
    default:
        return 0;
    }
}

static BIO_METHOD *sock_method;
static pthread_once_t sock_method_once = PTHREAD_ONCE_INIT;

static void make_sock_method(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "fastecho socket");
    if (m && BIO_meth_set_read_ex(m, sock_read) && BIO_meth_set_write_ex(m, sock_write) &&
        BIO_meth_set_ctrl(m, sock_ctrl)) {
        sock_method = m; /* kept for the life of the process */
        return;
    }
    BIO_meth_free(m);
}

struct ssl_st *fe_tls_accept(fe_server *s, int fd)
{
    pthread_once(&sock_method_once, make_sock_method);
    BIO *bio = sock_method ? BIO_new(sock_method) : NULL;
    if (bio == NULL) {
        ERR_clear_error();
        return NULL;
    }
    BIO_set_data(bio, (void *)(intptr_t)fd);
    BIO_set_init(bio, 1);
    pthread_mutex_lock(&s->tls_lock);
    SSL *ssl = s->tls_ctx ? SSL_new(s->tls_ctx) : NULL;
    pthread_mutex_unlock(&s->tls_lock);
    if (ssl == NULL) {
        BIO_free(bio);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_bio(ssl, bio, bio); /* the session owns it now (one reference for both) */
    SSL_set_accept_state(ssl);
    return ssl;
}

void fe_tls_server_release(fe_server *s)
{
    SSL_CTX_free(s->tls_ctx);
    s->tls_ctx = NULL;
}

#else /* !FE_WITH_TLS: the API exists and says there is no TLS */

bool fe_tls_available(void)
{
    return false;
}

const char *fe_tls_library(void)
{
    return "";
}

int fe_tls_create(const fe_tls_settings *settings, fe_tls **out, char *err, size_t errlen)
{
    (void)settings;
    *out = NULL;
    snprintf(err, errlen, "this fastecho was built without TLS (FASTECHO_WITH_TLS=OFF)");
    errno = ENOTSUP;
    return -1;
}

void fe_tls_describe(const fe_tls *tls, char *out, size_t outlen)
{
    (void)tls;
    snprintf(out, outlen, "-");
}

void fe_tls_free(fe_tls *tls)
{
    (void)tls;
}

void fe_server_set_tls(fe_server *s, fe_tls *tls)
{
    (void)s, (void)tls;
}

struct ssl_st *fe_tls_accept(fe_server *s, int fd)
{
    (void)s, (void)fd;
    return NULL;
}

void fe_tls_server_release(fe_server *s)
{
    (void)s;
}

#endif
