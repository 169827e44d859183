/*
 * stress_core.c - drives the C core hard, without Python, so that ASan,
 * UBSan and TSan see every path: the acceptor, full hand-off queues,
 * backpressure, short writes, half-close, resets, stats read concurrently,
 * and a shutdown while clients are still mid-stream. The same runs go over
 * PROXY headers and, where the core was built with TLS (FE_WITH_TLS), over
 * TLS listeners, with OpenSSL clients and a certificate rotated while they
 * handshake and echo.
 *
 * Built and run by ci/sanitize.sh (usage: stress_core [plain|tls], to run
 * only those). Exits 0 when every echoed byte matched and the counters add
 * up; prints each failure and exits 1 otherwise.
 */

#include "fe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifdef FE_WITH_TLS
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#endif

enum {
    CLIENT_THREADS = 8,
    ROUNDS_PER_CLIENT = 60,
    TLS_ROUNDS_PER_CLIENT = 30, /* each round also costs a handshake */
    LINGERING_CLIENTS = 16,
    HOARDERS = 8,
};
/* The memory budget run: small enough that the hoarders spend it. */
#define BUDGET_BYTES ((size_t)1 << 20)

static struct sockaddr_in server_addr;
/* PROXY runs: every client first sends a v1 header naming a made-up client. */
static bool proxy_run;
/* TLS runs: the listener is tls and every client speaks TLS (after its
 * PROXY header, in a tls+proxy run). Never set without FE_WITH_TLS. */
static bool tls_run;
static atomic_uint proxied_clients;
static atomic_int failures;
static atomic_bool stop_stats_reader;
/* Line mode runs: lines of at most TEST_MAX_LINE come back with the suffix. */
static bool line_mode_run;
static const char line_suffix[] = " server[echo]";
enum { TEST_MAX_LINE = 2000 };
/* Payload bytes whose echo came back and was checked, in this run: the
 * server's byte counters cannot be below them. */
static atomic_ullong verified_in, verified_out;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "stress_core: " __VA_ARGS__);                    \
            fprintf(stderr, " (%s:%d, errno %d)\n", __FILE__, __LINE__, errno); \
            atomic_fetch_add(&failures, 1);                                  \
            return -1;                                                       \
        }                                                                    \
    } while (0)

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A connected TCP socket with 10 s timeouts (and its PROXY header sent, in
 * PROXY runs), or -1. rcvbuf > 0: that small a receive buffer (set before
 * connecting, so the window starts small), so that the server's echo
 * meets a full socket: short writes, backpressure, TLS's WANT_WRITE. */
static int connect_tcp(int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    /* No Nagle: line mode sends lines in small pieces, and each piece after
     * the first would wait for the server's delayed ACK (40 ms), which is
     * how the line runs spent 30 s each mostly asleep. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) != 0) {
        close(fd);
        return -1;
    }
    if (proxy_run) {
        unsigned n = atomic_fetch_add(&proxied_clients, 1);
        char header[108];
        int len = snprintf(header, sizeof header, "PROXY TCP4 198.51.%u.%u 127.0.0.1 %u 7000\r\n",
                           (n / 250) % 250, n % 250 + 1, 1024 + n % 60000);
        if (send(fd, header, (size_t)len, MSG_NOSIGNAL) != len) {
            close(fd);
            return -1;
        }
    }
    return fd;
}

static int send_all(int fd, const unsigned char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* ---------------------------------------------------------------- clients */

/* A client: a blocking socket with timeouts, and in TLS runs the client's
 * TLS session over it. Every test client goes through these functions, so
 * that each run works unchanged over TCP and over TLS. */
typedef struct client {
    int fd;
    bool echoed; /* an echo came back on it (so the server finished its handshake) */
#ifdef FE_WITH_TLS
    SSL *ssl;
    SSL_SESSION **save_to; /* where its session is kept for resumption (NULL: nowhere) */
    bool resumed;
#endif
} client;

#ifdef FE_WITH_TLS
static int tls_connect(client *c, unsigned int *seed);
static int tls_send(SSL *ssl, const unsigned char *buf, size_t len);
static ssize_t tls_recv_some(SSL *ssl, unsigned char *buf, size_t len);
static void tls_close(client *c, bool notify);
#endif

/* Connects (and handshakes, in TLS runs). seed picks a small receive
 * buffer for one client in three, the TLS version, and whether an earlier
 * session is resumed; NULL: default buffer, TLS 1.3, full handshake. */
static int client_open(client *c, unsigned int *seed)
{
    memset(c, 0, sizeof *c);
    c->fd = connect_tcp(seed && rand_r(seed) % 3 == 0 ? 4096 : 0);
    CHECK(c->fd >= 0, "connect failed");
#ifdef FE_WITH_TLS
    if (tls_run && tls_connect(c, seed) != 0) {
        tls_close(c, false);
        close(c->fd);
        return -1;
    }
#endif
    return 0;
}

/* Closes; over TLS with a close_notify first when notify is set (plain TCP
 * has nothing to add to its FIN). */
static void client_close(client *c, bool notify)
{
#ifdef FE_WITH_TLS
    tls_close(c, notify);
#else
    (void)notify;
#endif
    close(c->fd);
}

static int client_send(client *c, const unsigned char *buf, size_t len)
{
#ifdef FE_WITH_TLS
    if (c->ssl)
        return tls_send(c->ssl, buf, len);
#endif
    return send_all(c->fd, buf, len);
}

/* One read: > 0 bytes, 0 at the server's orderly end (FIN; over TLS only
 * close_notify), -1 on anything else. */
static ssize_t client_recv_some(client *c, unsigned char *buf, size_t len)
{
#ifdef FE_WITH_TLS
    if (c->ssl)
        return tls_recv_some(c->ssl, buf, len);
#endif
    ssize_t n;
    do {
        n = recv(c->fd, buf, len, 0);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -1 : n;
}

static int client_recv(client *c, unsigned char *buf, size_t len)
{
    while (len > 0) { /* each pass takes >= 1 byte or fails (10 s timeout) */
        ssize_t n = client_recv_some(c, buf, len);
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    c->echoed = true;
    return 0;
}

/* Whether the server ended its direction in order: FIN, and over TLS a
 * close_notify before it (SSL_read returns 0, SSL_ERROR_ZERO_RETURN). */
static bool client_sees_end(client *c)
{
    unsigned char byte;
    return client_recv_some(c, &byte, 1) == 0;
}

/* Ends our direction (FIN; over TLS a close_notify), still reading. */
static int client_end_sending(client *c)
{
#ifdef FE_WITH_TLS
    if (c->ssl) {
        int rc = SSL_shutdown(c->ssl); /* 0: sent, the server's not seen yet */
        ERR_clear_error();
        return rc >= 0 ? 0 : -1;
    }
#endif
    return shutdown(c->fd, SHUT_WR);
}

/* Non-blocking send (for the hoarders, after O_NONBLOCK): whether any byte
 * left. Over TLS, the same buffer is offered again after WANT_WRITE, as
 * OpenSSL requires, and progress is what reached the socket. */
static bool client_push(client *c, const unsigned char *buf, size_t len)
{
#ifdef FE_WITH_TLS
    if (c->ssl) {
        uint64_t before = BIO_number_written(SSL_get_wbio(c->ssl));
        size_t put = 0;
        SSL_write_ex(c->ssl, buf, len, &put);
        ERR_clear_error();
        return BIO_number_written(SSL_get_wbio(c->ssl)) > before;
    }
#endif
    return send(c->fd, buf, len, MSG_NOSIGNAL) > 0;
}

/* ---------------------------------------------------------------- TLS */

#ifdef FE_WITH_TLS

enum {
    /* The main TLS runs' tls_handshake_timeout_ms: far above any real
     * handshake here, even under TSan on 2 cores. */
    TLS_TIMEOUT_MS = 2000,
    /* The quiet timeout run's: short, nothing else is going on. */
    QUIET_TIMEOUT_MS = 250,
    SILENT_CLIENTS = 6,
    ROGUE_ROUNDS = 3,
};

static void sleep_ms(long ms)
{
    struct timespec pause = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    nanosleep(&pause, NULL);
}

/* Reads and drops whatever the server still sends (an alert, say) until it
 * closes: true when it did (FIN or reset) within the socket's timeout. */
static bool wait_server_close(int fd)
{
    unsigned char sink[4096];
    for (int i = 0; i < 1000; i++) {
        ssize_t n = recv(fd, sink, sizeof sink, 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return true;
        if (n < 0 && errno != EINTR)
            return false; /* EAGAIN: the 10 s timeout passed */
    }
    return false;
}

/* A self-signed certificate and its key, made at run time (no key file is
 * committed), and the PEM texts fe_tls_create loads. */
typedef struct test_cert {
    X509 *x509;
    EVP_PKEY *key;
    char *cert_pem, *key_pem;
    size_t cert_len, key_len;
} test_cert;

static test_cert cert_a, cert_b;
/* Long-lived fe_tls objects of A and B (the rotation also installs fresh
 * ones, and these again while connections made from them are open). */
static fe_tls *tls_a, *tls_b;
/* Client contexts: TLS 1.2 only, TLS 1.3 only (both trust A and B); and
 * TLS 1.1 only, which the server must refuse. */
static SSL_CTX *client_ctx[2], *old_client_ctx;
/* The start of a real ClientHello (TLS 1.3), for clients that stop
 * halfway through theirs. */
static unsigned char hello_half[1024];
static size_t hello_half_len;
/* Each client thread's latest resumable session, per version. */
static _Thread_local SSL_SESSION *thread_sessions[2];

/* What the clients saw, and what the misbehaving ones caused, in a run. */
static struct {
    atomic_uint handshakes, resumed;           /* client handshakes that succeeded */
    atomic_uint proven, proven_resumed;        /* ... and got an echo back */
    atomic_uint version[2];                    /* ... by version: 1.2, 1.3 */
    atomic_uint key_updates;                   /* TLS 1.3 KeyUpdates asked of the server */
    atomic_uint handshake_failures, timeouts, bad_records; /* closes caused on purpose */
    atomic_uint rotations;
} tls_seen;
static atomic_bool stop_rotator;

/* Copies the memory BIO's text into a new string (NULL: out of memory). */
static char *bio_text(BIO *bio, size_t *len)
{
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    char *copy = n > 0 ? malloc((size_t)n) : NULL;
    if (copy)
        memcpy(copy, data, (size_t)n);
    *len = copy ? (size_t)n : 0;
    return copy;
}

/* An EC P-256 key and a self-signed certificate for it, valid for a day
 * (from an hour ago, against clock skew), written as PEM to memory. */
static int make_cert(test_cert *out, const char *cn, long serial)
{
    memset(out, 0, sizeof *out);
    EVP_PKEY_CTX *kctx = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, NULL);
    int ok = kctx && EVP_PKEY_keygen_init(kctx) > 0 &&
             EVP_PKEY_CTX_set_ec_paramgen_curve_nid(kctx, NID_X9_62_prime256v1) > 0 &&
             EVP_PKEY_keygen(kctx, &out->key) > 0;
    EVP_PKEY_CTX_free(kctx);
    CHECK(ok, "cannot generate an EC P-256 key");
    X509 *x = out->x509 = X509_new();
    X509_NAME *name = x ? X509_get_subject_name(x) : NULL;
    ok = x && X509_set_version(x, 2) && ASN1_INTEGER_set(X509_get_serialNumber(x), serial) &&
         X509_gmtime_adj(X509_getm_notBefore(x), -3600) && X509_gmtime_adj(X509_getm_notAfter(x), 86400) &&
         X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) &&
         X509_set_issuer_name(x, name) && X509_set_pubkey(x, out->key) && X509_sign(x, out->key, EVP_sha256()) > 0;
    CHECK(ok, "cannot make a self-signed certificate");
    BIO *cert_bio = BIO_new(BIO_s_mem()), *key_bio = BIO_new(BIO_s_mem());
    ok = cert_bio && key_bio && PEM_write_bio_X509(cert_bio, x) &&
         PEM_write_bio_PrivateKey(key_bio, out->key, NULL, NULL, 0, NULL, NULL);
    if (ok) {
        out->cert_pem = bio_text(cert_bio, &out->cert_len);
        out->key_pem = bio_text(key_bio, &out->key_len);
    }
    BIO_free(cert_bio);
    BIO_free(key_bio);
    CHECK(ok && out->cert_pem && out->key_pem, "cannot write the certificate as PEM");
    return 0;
}

static void free_cert(test_cert *c)
{
    X509_free(c->x509);
    EVP_PKEY_free(c->key);
    free(c->cert_pem);
    free(c->key_pem);
}

/* A new fe_tls from a certificate's PEM texts, the way a reload makes one. */
static fe_tls *load_tls(const test_cert *c)
{
    fe_tls_settings settings = {.cert_pem = c->cert_pem, .cert_len = c->cert_len,
                                .key_pem = c->key_pem, .key_len = c->key_len};
    fe_tls *tls = NULL;
    char err[256];
    if (fe_tls_create(&settings, &tls, err, sizeof err) != 0) {
        fprintf(stderr, "stress_core: fe_tls_create: %s\n", err);
        atomic_fetch_add(&failures, 1);
        return NULL;
    }
    return tls;
}

static SSL_CTX *client_context(int min_version, int max_version)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, min_version) ||
        !SSL_CTX_set_max_proto_version(ctx, max_version) ||
        !X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), cert_a.x509) ||
        !X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), cert_b.x509)) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL); /* the server's certificate must be A or B */
    return ctx;
}

/* The first half of a real ClientHello, made over memory BIOs. */
static int make_hello_half(void)
{
    SSL *ssl = SSL_new(client_ctx[1]);
    BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
    CHECK(ssl && in && out, "out of memory");
    SSL_set_bio(ssl, in, out); /* ssl owns them now */
    SSL_set_connect_state(ssl);
    SSL_do_handshake(ssl); /* writes the ClientHello, then wants the reply */
    ERR_clear_error();
    char *data = NULL;
    long n = BIO_get_mem_data(out, &data);
    hello_half_len = n > 0 ? (size_t)n / 2 : 0;
    if (hello_half_len > sizeof hello_half)
        hello_half_len = sizeof hello_half;
    if (hello_half_len > 0)
        memcpy(hello_half, data, hello_half_len);
    SSL_free(ssl);
    CHECK(hello_half_len > 10, "no ClientHello was written (%ld bytes)", n);
    return 0;
}

static int tls_setup(void)
{
    if (make_cert(&cert_a, "stress-a.invalid", 1) != 0 || make_cert(&cert_b, "stress-b.invalid", 2) != 0)
        return -1;
    tls_a = load_tls(&cert_a);
    tls_b = load_tls(&cert_b);
    client_ctx[0] = client_context(TLS1_2_VERSION, TLS1_2_VERSION);
    client_ctx[1] = client_context(TLS1_3_VERSION, TLS1_3_VERSION);
    old_client_ctx = client_context(TLS1_1_VERSION, TLS1_1_VERSION);
    /* TLS 1.1 needs security level 0 on OpenSSL 3 (its MD5-SHA1). If it is
     * still refused, the client sends nothing and that case counts no
     * handshake failure (see handshake_failure). */
    if (old_client_ctx)
        SSL_CTX_set_security_level(old_client_ctx, 0);
    CHECK(tls_a && tls_b && client_ctx[0] && client_ctx[1] && old_client_ctx, "TLS setup failed");
    return make_hello_half();
}

static void tls_teardown(void)
{
    fe_tls_free(tls_a);
    fe_tls_free(tls_b);
    SSL_CTX_free(client_ctx[0]);
    SSL_CTX_free(client_ctx[1]);
    SSL_CTX_free(old_client_ctx);
    free_cert(&cert_a);
    free_cert(&cert_b);
}

static void forget_sessions(void)
{
    for (int v = 0; v < 2; v++) {
        SSL_SESSION_free(thread_sessions[v]);
        thread_sessions[v] = NULL;
    }
}

static void tls_error(const char *what)
{
    char reason[200] = "";
    unsigned long code = ERR_peek_last_error();
    if (code)
        ERR_error_string_n(code, reason, sizeof reason);
    ERR_clear_error();
    fprintf(stderr, "stress_core: %s: %s (errno %d)\n", what, reason, errno);
}

static int tls_connect(client *c, unsigned int *seed)
{
    int v = seed ? rand_r(seed) % 2 : 1; /* 0: TLS 1.2, 1: TLS 1.3 */
    c->ssl = SSL_new(client_ctx[v]);
    CHECK(c->ssl && SSL_set_fd(c->ssl, c->fd), "cannot make a client session");
    if (seed) {
        c->save_to = &thread_sessions[v];
        if (*c->save_to && rand_r(seed) % 3 == 0)
            SSL_set_session(c->ssl, *c->save_to); /* a ticket from earlier, maybe another certificate's */
    }
    if (SSL_connect(c->ssl) != 1) {
        tls_error(v ? "TLS 1.3 handshake" : "TLS 1.2 handshake");
        atomic_fetch_add(&failures, 1);
        return -1;
    }
    CHECK(SSL_version(c->ssl) == (v ? TLS1_3_VERSION : TLS1_2_VERSION), "negotiated %s",
          SSL_get_version(c->ssl));
    c->resumed = SSL_session_reused(c->ssl) == 1;
    atomic_fetch_add(&tls_seen.handshakes, 1);
    atomic_fetch_add(&tls_seen.version[v], 1);
    if (c->resumed)
        atomic_fetch_add(&tls_seen.resumed, 1);
    return 0;
}

static void tls_close(client *c, bool notify)
{
    if (c->ssl == NULL)
        return;
    if (c->echoed) {
        /* The server echoed, so it had finished its handshake. */
        atomic_fetch_add(&tls_seen.proven, 1);
        if (c->resumed)
            atomic_fetch_add(&tls_seen.proven_resumed, 1);
        SSL_SESSION *session = c->save_to ? SSL_get1_session(c->ssl) : NULL;
        if (session && SSL_SESSION_is_resumable(session)) {
            SSL_SESSION_free(*c->save_to);
            *c->save_to = session;
        } else {
            SSL_SESSION_free(session);
        }
    }
    if (notify)
        SSL_shutdown(c->ssl); /* close_notify; its reply is not waited for */
    SSL_free(c->ssl);
    c->ssl = NULL;
    ERR_clear_error();
}

static int tls_send(SSL *ssl, const unsigned char *buf, size_t len)
{
    while (len > 0) { /* blocking: each pass takes >= 1 byte or fails (10 s timeout) */
        size_t put = 0;
        if (SSL_write_ex(ssl, buf, len, &put) != 1) {
            ERR_clear_error(); /* (the caller says whether that was wrong) */
            return -1;
        }
        buf += put;
        len -= put;
    }
    return 0;
}

static ssize_t tls_recv_some(SSL *ssl, unsigned char *buf, size_t len)
{
    size_t got = 0;
    int rc = SSL_read_ex(ssl, buf, len, &got);
    if (rc == 1)
        return (ssize_t)got;
    int err = SSL_get_error(ssl, rc);
    ERR_clear_error(); /* FIN without close_notify is an error here: -1 */
    return err == SSL_ERROR_ZERO_RETURN ? 0 : -1;
}

/* TLS 1.3: now and then, asks the server to update its keys too, so that
 * a server read has to send before it can go on. */
static void maybe_key_update(client *c, unsigned int *seed)
{
    if (c->ssl && SSL_version(c->ssl) == TLS1_3_VERSION && rand_r(seed) % 16 == 0 &&
        SSL_key_update(c->ssl, SSL_KEY_UPDATE_REQUESTED) == 1)
        atomic_fetch_add(&tls_seen.key_updates, 1);
}

/* Rotates the server's certificate between A and B every couple of
 * milliseconds while clients handshake and echo: fresh fe_tls objects
 * freed right after (as a reload does), and every other time a long-lived
 * one installed again while connections made from it are open. */
static void *rotator_main(void *arg)
{
    fe_server *srv = arg;
    int64_t deadline = now_ms() + 120000;
    for (unsigned i = 0; i < 100000 && !atomic_load(&stop_rotator) && now_ms() < deadline; i++) {
        bool b = (i / 2) % 2;
        if (i % 2 == 1) {
            fe_server_set_tls(srv, b ? tls_b : tls_a);
        } else {
            fe_tls *fresh = load_tls(b ? &cert_b : &cert_a);
            if (fresh == NULL)
                break;
            fe_server_set_tls(srv, fresh);
            fe_tls_free(fresh); /* the server holds its own reference */
        }
        atomic_fetch_add(&tls_seen.rotations, 1);
        sleep_ms(2);
    }
    return NULL;
}

/* Silent clients: connected (with their PROXY header, in PROXY runs), then
 * nothing, or half a ClientHello and nothing: each must be closed by the
 * server once its handshake timeout has passed, and not before. */
static int silent_open(int *fds, int count)
{
    for (int i = 0; i < count; i++) {
        fds[i] = connect_tcp(0);
        if (fds[i] < 0 || (i % 2 == 1 && send_all(fds[i], hello_half, hello_half_len) != 0)) {
            for (int k = 0; k <= i; k++)
                if (fds[k] >= 0)
                    close(fds[k]);
            CHECK(0, "silent client %d could not connect or send", i);
        }
    }
    return 0;
}

static int silent_wait(int *fds, int count, int64_t opened_ms, int64_t timeout_ms)
{
    struct pollfd pfds[SILENT_CLIENTS];
    CHECK(count <= SILENT_CLIENTS, "at most %d silent clients", SILENT_CLIENTS);
    int open_left = count;
    int64_t give_up = opened_ms + timeout_ms + 10000;
    while (open_left > 0 && now_ms() < give_up) { /* bounded by give_up */
        for (int i = 0; i < count; i++)
            pfds[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
        if (poll(pfds, (nfds_t)count, 100) <= 0)
            continue;
        for (int i = 0; i < count; i++) {
            if (fds[i] < 0 || pfds[i].revents == 0)
                continue;
            unsigned char byte;
            ssize_t n = recv(fds[i], &byte, 1, MSG_DONTWAIT);
            int64_t waited = now_ms() - opened_ms;
            close(fds[i]);
            fds[i] = -1;
            open_left--;
            CHECK(n == 0 || (n < 0 && errno == ECONNRESET), "silent client %d got %zd bytes", i, n);
            /* The server counts from when it took the connection, after
             * the client connected: never less than the timeout here. */
            CHECK(waited >= timeout_ms, "silent client %d closed after %lld ms, timeout %lld ms", i,
                  (long long)waited, (long long)timeout_ms);
            atomic_fetch_add(&tls_seen.timeouts, 1);
        }
    }
    for (int i = 0; i < count; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
    }
    CHECK(open_left == 0, "%d silent client(s) were never closed", open_left);
    return 0;
}

/* A client whose handshake must fail (closes[FE_CLOSE_TLS_HANDSHAKE]):
 * 0 plaintext, 1 a ServerHello sent to the server, 2 application data
 * before any handshake, 3 half a ClientHello and FIN, 4 TLS 1.1 only. Each
 * waits until the server has closed, so that the count is final. */
static int handshake_failure(int variant, unsigned int *seed)
{
    int fd = connect_tcp(0);
    CHECK(fd >= 0, "connect failed");
    unsigned char junk[256];
    size_t len = 0;
    bool sent_bytes = true;
    int rc = 0;
    if (variant == 0) {
        static const char http[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        len = sizeof http - 1;
        memcpy(junk, http, len);
    } else if (variant == 1 || variant == 2) {
        /* A whole record, so the server has all of it and fails at once
         * (a record it would wait for the rest of would time out instead). */
        size_t body = variant == 1 ? 8 : 1 + (size_t)rand_r(seed) % 200;
        junk[0] = variant == 1 ? 0x16 : 0x17; /* handshake, application data */
        junk[1] = 3;
        junk[2] = variant == 1 ? 1 : 3;
        junk[3] = (unsigned char)(body >> 8);
        junk[4] = (unsigned char)body;
        for (size_t i = 0; i < body; i++)
            junk[5 + i] = (unsigned char)rand_r(seed);
        if (variant == 1) { /* ServerHello, 4 bytes long */
            memcpy(junk + 5, "\x02\x00\x00\x04", 4);
        }
        len = 5 + body;
    }
    if (variant <= 2) {
        rc = send_all(fd, junk, len);
    } else if (variant == 3) {
        rc = send_all(fd, hello_half, hello_half_len);
        shutdown(fd, SHUT_WR); /* began a handshake and walked away */
    } else {
        SSL *ssl = SSL_new(old_client_ctx);
        if (ssl && SSL_set_fd(ssl, fd)) {
            if (SSL_connect(ssl) == 1)
                rc = -1; /* the server must refuse TLS 1.1 */
            sent_bytes = BIO_number_written(SSL_get_wbio(ssl)) > 0;
        }
        SSL_free(ssl);
        ERR_clear_error();
    }
    bool closed = wait_server_close(fd);
    close(fd);
    CHECK(rc == 0, "bad handshake %d: send failed or TLS 1.1 was accepted", variant);
    CHECK(closed, "bad handshake %d: the server did not close", variant);
    if (sent_bytes)
        atomic_fetch_add(&tls_seen.handshake_failures, 1);
    return 0;
}

/* A finished handshake and an echo (one line, in line mode), then a
 * record that does not decrypt: the server must close
 * (closes[FE_CLOSE_TLS_ERROR]). */
static int bad_record(unsigned int *seed)
{
    client c;
    if (client_open(&c, seed) != 0)
        return -1;
    unsigned char msg[1000], want[sizeof msg + sizeof line_suffix], back[sizeof want];
    unsigned char record[5 + 32] = {0x17, 3, 3, 0, 32};
    memset(msg, 'b', sizeof msg);
    memcpy(want, msg, sizeof msg);
    size_t want_len = sizeof msg;
    if (line_mode_run) {
        msg[sizeof msg - 1] = want[sizeof msg - 1] = '\n';
        memcpy(want + sizeof msg - 1, line_suffix, sizeof line_suffix - 1);
        want_len = sizeof msg + sizeof line_suffix - 1;
        want[want_len - 1] = '\n';
    }
    for (size_t i = 5; i < sizeof record; i++)
        record[i] = (unsigned char)rand_r(seed);
    int rc = client_send(&c, msg, sizeof msg) == 0 && client_recv(&c, back, want_len) == 0 &&
                     memcmp(want, back, want_len) == 0
                 ? send_all(c.fd, record, sizeof record)
                 : -1;
    bool closed = rc == 0 && wait_server_close(c.fd);
    client_close(&c, false);
    CHECK(rc == 0, "bad record client: the echo before it failed");
    CHECK(closed, "bad record client: the server did not close");
    atomic_fetch_add(&tls_seen.bad_records, 1);
    return 0;
}

/* Misbehaving TLS clients, alongside the echo clients of a run: silent
 * ones (held open the whole time), failed handshakes, bad records, and
 * probes that connect and leave without a byte (closed as eof, uncounted). */
static void *rogue_main(void *arg)
{
    (void)arg;
    unsigned int seed = 4242;
    int silent[SILENT_CLIENTS];
    int64_t opened = now_ms();
    if (silent_open(silent, SILENT_CLIENTS) != 0)
        return NULL;
    for (int round = 0; round < ROGUE_ROUNDS; round++) {
        for (int variant = 0; variant < 5; variant++)
            if (handshake_failure(variant, &seed) != 0)
                break;
        bad_record(&seed);
        int probe = connect_tcp(0);
        if (probe >= 0)
            close(probe);
        sleep_ms(50);
    }
    silent_wait(silent, SILENT_CLIENTS, opened, TLS_TIMEOUT_MS);
    forget_sessions(); /* bad_record's clients keep theirs, as any client thread's */
    return NULL;
}

static pthread_t rotator, rogue;

static void tls_begin(fe_server *srv)
{
    memset(&tls_seen, 0, sizeof tls_seen);
    atomic_store(&stop_rotator, false);
    pthread_create(&rotator, NULL, rotator_main, srv);
    pthread_create(&rogue, NULL, rogue_main, NULL);
}

/* The clients are done: stops the rotation, lets the misbehaving clients
 * finish, and checks that a handshake starting after the last rotation
 * gets that certificate. */
static int tls_clients_done(fe_server *srv)
{
    atomic_store(&stop_rotator, true);
    pthread_join(rotator, NULL);
    pthread_join(rogue, NULL);
    fe_tls *fresh = load_tls(&cert_b);
    CHECK(fresh, "cannot load certificate B");
    fe_server_set_tls(srv, fresh);
    fe_tls_free(fresh);
    client c;
    if (client_open(&c, NULL) != 0)
        return -1;
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    X509 *peer = SSL_get1_peer_certificate(c.ssl);
#else
    X509 *peer = SSL_get_peer_certificate(c.ssl);
#endif
    bool is_b = peer && X509_cmp(peer, cert_b.x509) == 0;
    X509_free(peer);
    client_close(&c, true);
    CHECK(is_b, "a handshake after the rotation ended on B did not get B");
    return 0;
}

/* The counters of a TLS run against what its clients saw and caused. */
static int tls_check(const fe_stats *st)
{
    unsigned proven = atomic_load(&tls_seen.proven), done = atomic_load(&tls_seen.handshakes);
    unsigned proven_resumed = atomic_load(&tls_seen.proven_resumed);
    unsigned resumed = atomic_load(&tls_seen.resumed);
    printf("  tls: handshakes=%llu (clients %u, echoed %u) resumed=%llu (clients %u) tls1.2=%u tls1.3=%u "
           "key-updates=%u rotations=%u closes: handshake=%llu timeout=%llu error=%llu\n",
           (unsigned long long)st->tls_handshakes, done, proven, (unsigned long long)st->tls_resumed, resumed,
           atomic_load(&tls_seen.version[0]), atomic_load(&tls_seen.version[1]),
           atomic_load(&tls_seen.key_updates), atomic_load(&tls_seen.rotations),
           (unsigned long long)st->closes[FE_CLOSE_TLS_HANDSHAKE],
           (unsigned long long)st->closes[FE_CLOSE_TLS_TIMEOUT],
           (unsigned long long)st->closes[FE_CLOSE_TLS_ERROR]);
    /* The server finishes a handshake before it can echo, and never
     * finishes one its client did not. */
    CHECK(st->tls_handshakes >= proven && st->tls_handshakes <= done, "tls_handshakes %llu outside [%u, %u]",
          (unsigned long long)st->tls_handshakes, proven, done);
    CHECK(st->tls_resumed >= proven_resumed && st->tls_resumed <= resumed, "tls_resumed %llu outside [%u, %u]",
          (unsigned long long)st->tls_resumed, proven_resumed, resumed);
    CHECK(resumed > 0, "no session was resumed");
    CHECK(atomic_load(&tls_seen.version[0]) > 0 && atomic_load(&tls_seen.version[1]) > 0,
          "TLS 1.2 and 1.3 were not both used");
    CHECK(atomic_load(&tls_seen.rotations) > 0, "the certificate was never rotated");
    /* Exactly the closes the misbehaving clients caused: */
    CHECK(st->closes[FE_CLOSE_TLS_HANDSHAKE] == atomic_load(&tls_seen.handshake_failures),
          "closes[tls-handshake] %llu, caused %u", (unsigned long long)st->closes[FE_CLOSE_TLS_HANDSHAKE],
          atomic_load(&tls_seen.handshake_failures));
    CHECK(st->closes[FE_CLOSE_TLS_TIMEOUT] == atomic_load(&tls_seen.timeouts),
          "closes[tls-handshake-timeout] %llu, caused %u",
          (unsigned long long)st->closes[FE_CLOSE_TLS_TIMEOUT], atomic_load(&tls_seen.timeouts));
    CHECK(st->closes[FE_CLOSE_TLS_ERROR] == atomic_load(&tls_seen.bad_records),
          "closes[tls-error] %llu, caused %u", (unsigned long long)st->closes[FE_CLOSE_TLS_ERROR],
          atomic_load(&tls_seen.bad_records));
    return 0;
}

#else /* !FE_WITH_TLS: TLS runs are compiled out */

static void forget_sessions(void)
{
}

static void maybe_key_update(client *c, unsigned int *seed)
{
    (void)c, (void)seed;
}

#endif

/* ---------------------------------------------------------------- rounds */

/* Sends payload in pieces and reads it all back: more than the server's
 * output cap and read buffer, so short writes and backpressure happen. */
static int echo_exchange(client *c, unsigned int *seed, size_t size)
{
    unsigned char *out = malloc(size), *in = malloc(size);
    if (!out || !in) {
        free(out);
        free(in);
        CHECK(0, "out of memory");
    }
    for (size_t i = 0; i < size; i++)
        out[i] = (unsigned char)rand_r(seed);
    size_t sent = 0, got = 0;
    int rc = 0;
    while (got < size && rc == 0) {
        size_t piece = 1 + (size_t)rand_r(seed) % 20000;
        maybe_key_update(c, seed);
        if (sent < size) {
            if (piece > size - sent)
                piece = size - sent;
            rc = client_send(c, out + sent, piece);
            sent += piece;
        }
        size_t want = sent - got;
        if (rc == 0 && want > 0)
            rc = client_recv(c, in + got, want);
        got += want;
    }
    int same = rc == 0 && memcmp(out, in, size) == 0;
    free(out);
    free(in);
    CHECK(same, "echo of %zu bytes was lost or corrupted", size);
    atomic_fetch_add(&verified_in, size);
    atomic_fetch_add(&verified_out, size);
    return 0;
}

static int one_round(unsigned int *seed)
{
    client c;
    if (client_open(&c, seed) != 0)
        return -1;
    int kind = rand_r(seed) % 4;
    int rc = 0;
    if (kind == 0) { /* ordinary exchange, then a clean close (over TLS, with or without close_notify) */
        rc = echo_exchange(&c, seed, 1 + (size_t)rand_r(seed) % 300000);
        client_close(&c, rand_r(seed) % 2 == 0);
        return rc;
    }
    if (kind == 1) { /* half-close: everything sent still comes back, then the server's end */
        /* Up to more than the server's send buffer and output cap
         * together, so that the end may have to wait for room. */
        unsigned char msg[40000], back[sizeof msg];
        size_t len = 1 + (size_t)rand_r(seed) % sizeof msg;
        memset(msg, 'h', sizeof msg);
        rc = client_send(&c, msg, len);
        if (rc == 0)
            rc = client_end_sending(&c);
        if (rc == 0)
            rc = client_recv(&c, back, len);
        bool same = rc == 0 && memcmp(msg, back, len) == 0;
        bool ended = same && client_sees_end(&c);
        client_close(&c, false);
        CHECK(same, "half-close: the echo of %zu bytes was lost or corrupted", len);
        CHECK(ended, "half-close: %zu bytes echoed, then no orderly end (over TLS: no close_notify)", len);
        atomic_fetch_add(&verified_in, len);
        atomic_fetch_add(&verified_out, len);
    } else if (kind == 2) { /* reset mid-stream */
        unsigned char junk[100000];
        memset(junk, 'r', sizeof junk);
        client_send(&c, junk, sizeof junk);
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        client_close(&c, false);
    } else { /* send a lot, never read, and leave */
        unsigned char junk[60000];
        memset(junk, 'q', sizeof junk);
        client_send(&c, junk, sizeof junk);
        client_close(&c, false);
    }
    return rc;
}

/* Line mode: random lines, sent in random pieces, each must come back with
 * the suffix; now and then an overlong line must get the error line. */
static int line_round(unsigned int *seed)
{
    client c;
    if (client_open(&c, seed) != 0)
        return -1;
    int lines = 1 + rand_r(seed) % 20;
    for (int i = 0; i < lines; i++) {
        char line[TEST_MAX_LINE + 1], want[TEST_MAX_LINE + sizeof line_suffix + 1], got[sizeof want];
        size_t len = (size_t)rand_r(seed) % TEST_MAX_LINE;
        for (size_t k = 0; k < len; k++)
            line[k] = (char)('a' + rand_r(seed) % 26);
        line[len] = '\n';
        size_t sent = 0;
        while (sent < len + 1) { /* in pieces, so frames span reads */
            size_t piece = 1 + (size_t)rand_r(seed) % (len + 1 - sent);
            if (client_send(&c, (unsigned char *)line + sent, piece) != 0)
                break;
            sent += piece;
        }
        memcpy(want, line, len);
        memcpy(want + len, line_suffix, sizeof line_suffix - 1);
        want[len + sizeof line_suffix - 1] = '\n';
        size_t want_len = len + sizeof line_suffix;
        int ok = sent == len + 1 && client_recv(&c, (unsigned char *)got, want_len) == 0 &&
                 memcmp(got, want, want_len) == 0;
        if (!ok) {
            client_close(&c, false);
            CHECK(0, "line %d of %zu bytes came back wrong", i, len);
        }
        atomic_fetch_add(&verified_in, len + 1);
        atomic_fetch_add(&verified_out, want_len);
    }
    if (rand_r(seed) % 4 == 0) { /* an overlong line: error line, then FIN */
        char junk[TEST_MAX_LINE + 10], reply[128];
        memset(junk, 'z', sizeof junk);
        client_send(&c, (unsigned char *)junk, sizeof junk);
        size_t got = 0;
        ssize_t n;
        while (got < sizeof reply - 1 &&
               (n = client_recv_some(&c, (unsigned char *)reply + got, sizeof reply - 1 - got)) > 0)
            got += (size_t)n;
        reply[got] = 0;
        if (strncmp(reply, "error: line longer than", 23) != 0) {
            client_close(&c, false);
            CHECK(0, "overlong line got %zu bytes: %.40s", got, reply);
        }
    }
    client_close(&c, true);
    return 0;
}

static void *client_main(void *arg)
{
    /* A write to a connection the server has reset raises SIGPIPE (OpenSSL
     * writes with write(), not send(MSG_NOSIGNAL)): the clients block it;
     * the server's threads must cope on their own (see start_server). */
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);
    unsigned int seed = (unsigned int)(uintptr_t)arg * 7919u + 1;
    int rounds = tls_run ? TLS_ROUNDS_PER_CLIENT : ROUNDS_PER_CLIENT;
    for (int i = 0; i < rounds; i++)
        if ((line_mode_run ? line_round(&seed) : one_round(&seed)) != 0)
            break;
    forget_sessions();
    return NULL;
}

static void *stats_reader_main(void *arg)
{
    fe_server *srv = arg;
    fe_event events[64];
    while (!atomic_load(&stop_stats_reader)) {
        fe_server_drain_events(srv, events, 64); /* races with the workers' pushes */
        fe_stats st;
        fe_server_stats(srv, &st);
        if (st.connections_closed > st.connections_accepted) {
            fprintf(stderr, "stress_core: closed %llu > accepted %llu\n",
                    (unsigned long long)st.connections_closed,
                    (unsigned long long)st.connections_accepted);
            atomic_fetch_add(&failures, 1);
            break;
        }
        struct timespec pause = {.tv_nsec = 1000000};
        nanosleep(&pause, NULL);
    }
    return NULL;
}

/* Connects HOARDERS clients that send without ever reading, each until the
 * server stops taking its bytes (or 16 MiB), so that the memory budget is
 * spent while the other clients run. */
static void start_hoarders(client *hoarders)
{
    static unsigned char junk[65536];
    memset(junk, 'm', sizeof junk);
    for (size_t i = 999; i < sizeof junk; i += 1000)
        junk[i] = '\n'; /* whole lines, so that line mode buffers their echo too */
    for (int i = 0; i < HOARDERS; i++) {
        if (client_open(&hoarders[i], NULL) != 0) {
            fprintf(stderr, "stress_core: hoarder %d could not connect\n", i);
            atomic_fetch_add(&failures, 1);
            hoarders[i].fd = -1;
            continue;
        }
        int small = 4096;
        setsockopt(hoarders[i].fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
        fcntl(hoarders[i].fd, F_SETFL, fcntl(hoarders[i].fd, F_GETFL) | O_NONBLOCK);
    }
    for (int pass = 0, stalled = 0; pass < 4000 && stalled < 50; pass++) {
        bool progress = false;
        for (int i = 0; i < HOARDERS; i++) {
            if (hoarders[i].fd >= 0 && client_push(&hoarders[i], junk, sizeof junk))
                progress = true;
        }
        stalled = progress ? 0 : stalled + 1;
        if (!progress) {
            struct timespec pause = {.tv_nsec = 2000000};
            nanosleep(&pause, NULL);
        }
    }
}

/* A listening socket on 127.0.0.1, port chosen by the kernel. Its small
 * send buffer is inherited by every connection accepted from it (fixed:
 * no autotuning), so that the server's echo meets a full socket often:
 * short writes, the output cap, TLS records cut mid-way (WANT_WRITE). */
static int listen_ephemeral(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int sndbuf = 8192;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof server_addr;
    if (fd < 0 || bind(fd, (struct sockaddr *)&server_addr, sizeof server_addr) != 0 ||
        listen(fd, 64) != 0 || getsockname(fd, (struct sockaddr *)&server_addr, &len) != 0) {
        perror("stress_core: listen");
        exit(1);
    }
    return fd;
}

/* fe_server_start from a thread that does not block SIGPIPE (the main
 * thread blocks it for its own TLS clients the rest of the time), so that
 * the server's threads survive SIGPIPE only because they block every
 * signal themselves, as fe_server_start promises. */
static int start_server(fe_server *srv, const fe_listener *listener, char *err, size_t errlen)
{
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    /* A SIGPIPE our clients raised is still pending: take it first, or
     * unblocking would deliver it. Standard signals do not queue: one wait. */
    struct timespec no_wait = {0};
    sigtimedwait(&pipe_set, NULL, &no_wait);
    pthread_sigmask(SIG_UNBLOCK, &pipe_set, NULL);
    int rc = fe_server_start(srv, listener, 1, err, errlen);
    pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);
    return rc;
}

/* Byte counters against the bytes whose echo was checked. */
static int check_bytes(const fe_stats *st, bool line_mode)
{
    unsigned long long in = atomic_load(&verified_in), out = atomic_load(&verified_out);
    CHECK(st->bytes_received >= in && st->bytes_sent >= out,
          "received %llu sent %llu, but %llu in and %llu out were echoed",
          (unsigned long long)st->bytes_received, (unsigned long long)st->bytes_sent, in, out);
    CHECK(line_mode || st->bytes_sent <= st->bytes_received, "raw: sent %llu > received %llu",
          (unsigned long long)st->bytes_sent, (unsigned long long)st->bytes_received);
    return 0;
}

static int run(int threads, size_t queue_capacity, bool line_mode, bool budget)
{
    int64_t started = now_ms();
    line_mode_run = line_mode;
    atomic_store(&verified_in, 0);
    atomic_store(&verified_out, 0);
    int listen_fd = listen_ephemeral();
    fe_config cfg;
    fe_config_init(&cfg);
    cfg.threads = threads;
    cfg.queue_capacity = queue_capacity; /* tiny: the acceptor must wait on the condvar */
    cfg.max_pending_output = 16 * 1024;  /* tiny: backpressure engages constantly */
    cfg.read_buffer_size = 4096;
    /* Behind a proxy the clients are 198.51.x.x: allow everyone then. */
    fe_cidr loopback = {.family = 4, .prefix_len = proxy_run ? 0 : 8, .addr = {127}};
    if (line_mode) { /* and every optional feature that costs nothing here */
        cfg.framing = FE_FRAMING_LINE;
        cfg.suffix = line_suffix;
        cfg.suffix_len = sizeof line_suffix - 1;
        cfg.max_line = TEST_MAX_LINE;
        cfg.event_ring_size = 16; /* small: drops happen too */
        cfg.idle_timeout_ms = 5000;
        cfg.max_connections = 1000;
        cfg.max_connections_per_ip = 1000;
        cfg.allow = &loopback;
        cfg.allow_count = 1;
    }
    if (budget) { /* spent by the hoarders: every budget path runs */
        cfg.max_memory = BUDGET_BYTES;
        cfg.max_pending_output = 512 * 1024;
    }
    fe_cidr loopback_proxies = {.family = 4, .prefix_len = 8, .addr = {127}};
    cfg.proxy_from = &loopback_proxies;
    cfg.proxy_from_count = 1;
#ifdef FE_WITH_TLS
    if (tls_run) /* short enough for the silent clients to wait out */
        cfg.tls_handshake_timeout_ms = TLS_TIMEOUT_MS;
#endif
    fe_server *srv = NULL;
    char err[256];
    if (fe_server_create(&cfg, &srv, err, sizeof err) != 0) {
        fprintf(stderr, "stress_core: %s\n", err);
        return 1;
    }
#ifdef FE_WITH_TLS
    if (tls_run)
        fe_server_set_tls(srv, tls_a);
#endif
    fe_listener listener = {.fd = listen_fd, .proxy = proxy_run, .tls = tls_run};
    if (start_server(srv, &listener, err, sizeof err) != 0) {
        fprintf(stderr, "stress_core: %s\n", err);
        return 1;
    }

    client hoarders[HOARDERS];
    if (budget)
        start_hoarders(hoarders);
    fe_stats spent;
    fe_server_stats(srv, &spent);
    if (budget && (spent.memory_budget_waits == 0 || spent.memory_held > 2 * BUDGET_BYTES)) {
        fprintf(stderr, "stress_core: hoarders left %llu bytes held after %llu budget waits\n",
                (unsigned long long)spent.memory_held, (unsigned long long)spent.memory_budget_waits);
        atomic_fetch_add(&failures, 1);
    }

    atomic_store(&stop_stats_reader, false);
    pthread_t stats_reader, clients[CLIENT_THREADS];
    pthread_create(&stats_reader, NULL, stats_reader_main, srv);
#ifdef FE_WITH_TLS
    if (tls_run)
        tls_begin(srv);
#endif
    for (int i = 0; i < CLIENT_THREADS; i++)
        pthread_create(&clients[i], NULL, client_main, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < CLIENT_THREADS; i++)
        pthread_join(clients[i], NULL);
#ifdef FE_WITH_TLS
    if (tls_run)
        tls_clients_done(srv);
#endif
    for (int i = 0; budget && i < HOARDERS; i++) {
        if (hoarders[i].fd >= 0)
            client_close(&hoarders[i], false);
    }

    /* Clients still connected and mid-stream when the stop begins. In line
     * mode the request is one line and the reply carries the suffix. */
    client lingering[LINGERING_CLIENTS];
    unsigned char request[1500], reply[1500 + sizeof line_suffix]; /* under TEST_MAX_LINE */
    memset(request, 'L', sizeof request);
    memset(reply, 'L', sizeof reply);
    size_t reply_len = sizeof request;
    if (line_mode) {
        request[sizeof request - 1] = '\n';
        memcpy(reply + sizeof request - 1, line_suffix, sizeof line_suffix - 1);
        reply_len = sizeof request + sizeof line_suffix - 1;
        reply[reply_len - 1] = '\n';
    }
    fe_stats before;
    fe_server_stats(srv, &before);
    for (int i = 0; i < LINGERING_CLIENTS; i++) {
        if (client_open(&lingering[i], NULL) != 0) {
            lingering[i].fd = -1;
        } else if (client_send(&lingering[i], request, sizeof request) != 0) {
            fprintf(stderr, "stress_core: lingering client %d failed\n", i);
            atomic_fetch_add(&failures, 1);
        }
    }
    /* Stop only once every request was read and echoed by the server. */
    for (int tries = 0; tries < 2000; tries++) {
        fe_stats st;
        fe_server_stats(srv, &st);
        if (st.bytes_sent - before.bytes_sent >= LINGERING_CLIENTS * reply_len &&
            st.connections_active >= LINGERING_CLIENTS)
            break;
        struct timespec pause = {.tv_nsec = 1000000};
        nanosleep(&pause, NULL);
    }
    fe_server_shutdown(srv, 100, 500);
    close(listen_fd);
    if (!fe_server_wait(srv, 10000)) {
        fprintf(stderr, "stress_core: workers did not stop within 10 s\n");
        atomic_fetch_add(&failures, 1);
    }
    /* Each lingering client gets its reply, then an orderly end: FIN, and
     * over TLS a close_notify before it (the server stopped gracefully
     * after echoing everything it received). */
    for (int i = 0; i < LINGERING_CLIENTS; i++) {
        unsigned char back[sizeof reply];
        if (lingering[i].fd < 0)
            continue;
        if (client_recv(&lingering[i], back, reply_len) != 0 || memcmp(back, reply, reply_len) != 0 ||
            !client_sees_end(&lingering[i])) {
            fprintf(stderr, "stress_core: lingering client %d lost its echo or its orderly end\n", i);
            atomic_fetch_add(&failures, 1);
        }
        client_close(&lingering[i], false);
    }
    atomic_store(&stop_stats_reader, true);
    pthread_join(stats_reader, NULL);

    fe_stats st;
    fe_server_stats(srv, &st);
    fe_server_destroy(srv);
    printf("%s%s%s%s threads=%d queue=%zu accepted=%llu closed=%llu active=%llu in=%llu out=%llu (%.1f s)\n",
           line_mode ? "line" : "echo", budget ? "+budget" : "", tls_run ? "+tls" : "", proxy_run ? "+proxy" : "",
           threads, queue_capacity,
           (unsigned long long)st.connections_accepted,
           (unsigned long long)st.connections_closed, (unsigned long long)st.connections_active,
           (unsigned long long)st.bytes_received, (unsigned long long)st.bytes_sent,
           (double)(now_ms() - started) / 1000);
    if (st.connections_active != 0 || st.connections_accepted != st.connections_closed) {
        fprintf(stderr, "stress_core: connections leaked\n");
        atomic_fetch_add(&failures, 1);
    }
    if (st.memory_held != 0) {
        fprintf(stderr, "stress_core: %llu bytes still counted as held after stop\n",
                (unsigned long long)st.memory_held);
        atomic_fetch_add(&failures, 1);
    }
    check_bytes(&st, line_mode);
#ifdef FE_WITH_TLS
    if (tls_run)
        tls_check(&st);
#endif
    fflush(stdout);
    return 0;
}

#ifdef FE_WITH_TLS
/* Handshake timeouts on a quiet server, where no other traffic makes the
 * workers read the clock: a client that arrives after the workers sat idle
 * for longer than the timeout still gets the whole timeout for its
 * handshake, and silent clients are closed after it, not before. */
static int quiet_timeout_run(void)
{
    int64_t started = now_ms();
    memset(&tls_seen, 0, sizeof tls_seen);
    int listen_fd = listen_ephemeral();
    fe_config cfg;
    fe_config_init(&cfg);
    cfg.threads = 2;
    cfg.tls_handshake_timeout_ms = QUIET_TIMEOUT_MS;
    fe_server *srv = NULL;
    char err[256];
    if (fe_server_create(&cfg, &srv, err, sizeof err) != 0) {
        fprintf(stderr, "stress_core: %s\n", err);
        return 1;
    }
    fe_server_set_tls(srv, tls_b);
    fe_listener listener = {.fd = listen_fd, .tls = true};
    if (start_server(srv, &listener, err, sizeof err) != 0) {
        fprintf(stderr, "stress_core: %s\n", err);
        return 1;
    }
    unsigned int seed = 99;
    enum { GOOD = 4, SILENT = 4 };
    for (int phase = 0; phase < 2; phase++) {
        sleep_ms(2 * QUIET_TIMEOUT_MS); /* idle: no timer runs, no clock is read */
        for (int i = 0; i < GOOD; i++) {
            client c;
            if (client_open(&c, &seed) != 0) {
                fprintf(stderr, "stress_core: quiet run: client %d (after %d ms idle) failed\n", i,
                        2 * QUIET_TIMEOUT_MS);
                continue;
            }
            echo_exchange(&c, &seed, 3000);
            client_close(&c, true);
        }
        int silent[SILENT];
        int64_t opened = now_ms();
        if (silent_open(silent, SILENT) == 0)
            silent_wait(silent, SILENT, opened, QUIET_TIMEOUT_MS);
    }
    forget_sessions();
    fe_server_shutdown(srv, 100, 500);
    close(listen_fd);
    if (!fe_server_wait(srv, 10000)) {
        fprintf(stderr, "stress_core: workers did not stop within 10 s\n");
        atomic_fetch_add(&failures, 1);
    }
    fe_stats st;
    fe_server_stats(srv, &st);
    fe_server_destroy(srv);
    printf("tls quiet timeouts accepted=%llu closed=%llu handshakes=%llu timeouts=%llu (%.1f s)\n",
           (unsigned long long)st.connections_accepted, (unsigned long long)st.connections_closed,
           (unsigned long long)st.tls_handshakes, (unsigned long long)st.closes[FE_CLOSE_TLS_TIMEOUT],
           (double)(now_ms() - started) / 1000);
    fflush(stdout);
    CHECK(st.connections_active == 0 && st.connections_accepted == st.connections_closed,
          "quiet run: connections leaked");
    CHECK(st.tls_handshakes == 2 * GOOD, "quiet run: %llu handshakes, %d clients",
          (unsigned long long)st.tls_handshakes, 2 * GOOD);
    CHECK(st.closes[FE_CLOSE_TLS_TIMEOUT] == 2 * SILENT, "quiet run: %llu timeouts, %d silent clients",
          (unsigned long long)st.closes[FE_CLOSE_TLS_TIMEOUT], 2 * SILENT);
    return 0;
}
#endif

/* Usage: stress_core [plain|tls] - every run, or only the plain TCP and
 * PROXY ones, or only the TLS ones. */
int main(int argc, char **argv)
{
    bool plain = argc < 2 || strcmp(argv[1], "tls") != 0;
    bool tls = argc < 2 || strcmp(argv[1], "plain") != 0;
    /* The main thread's own clients (hoarders, lingering clients) may
     * raise SIGPIPE over TLS; see start_server for the server's threads. */
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);

    if (plain) {
        if (run(4, 2, false, false) != 0 || run(1, 1, false, false) != 0 ||
            run(16, 4096, false, false) != 0 || run(3, 8, true, false) != 0 ||
            run(4, 64, false, true) != 0 || run(2, 64, true, true) != 0)
            return 1;
        proxy_run = true; /* the PROXY header path, raw and line mode, with every limit */
        if (run(4, 8, false, false) != 0 || run(3, 8, true, false) != 0)
            return 1;
        proxy_run = false;
    }
#ifdef FE_WITH_TLS
    if (tls) {
        /* TLS: raw, line mode and the memory budget; then behind PROXY
         * headers; then handshake timeouts on a quiet server. */
        if (tls_setup() != 0)
            return 1;
        tls_run = true;
        if (run(4, 8, false, false) != 0 || run(3, 8, true, false) != 0 || run(4, 64, false, true) != 0)
            return 1;
        proxy_run = true;
        if (run(2, 8, false, false) != 0)
            return 1;
        proxy_run = false;
        if (quiet_timeout_run() > 0) /* (its failed checks are counted, not fatal) */
            return 1;
        tls_run = false;
        tls_teardown();
    }
#else
    if (tls)
        printf("stress_core: built without TLS (FASTECHO_WITH_TLS=OFF): no TLS runs\n");
#endif
    int n = atomic_load(&failures);
    printf(n ? "stress_core: %d failure(s)\n" : "stress_core: all checks held\n", n);
    return n ? 1 : 0;
}
