/*
 * stress_core.c - drives the C core hard, without Python, so that ASan,
 * UBSan and TSan see every path: the acceptor, full hand-off queues,
 * backpressure, short writes, half-close, resets, stats read concurrently,
 * and a shutdown while clients are still mid-stream. The same runs go over
 * PROXY headers and, where the core was built with TLS (FE_WITH_TLS), over
 * TLS listeners, with OpenSSL clients and a certificate rotated while they
 * handshake and echo. UDP listeners get their own runs: echo of every size
 * next to TCP, the per-source rate limit hammered from many sockets and
 * threads (and its table on its own), every drop reason, and a stop while
 * datagrams still arrive; each counted exactly (see "UDP" below).
 * WebSocket listeners (ws, and wss over the TLS clients) get theirs:
 * upgrades, every kind of message, hostile clients, the memory budget and
 * a stop mid-message, every answer counted (see "WebSocket" below).
 *
 * Every run goes again on the io_uring backend (FE_IO_URING), where this
 * kernel and build allow it ("uring": only the plain ones there).
 *
 * Raw echo runs with splice (bulk through pipes, the default) and without,
 * on each backend.
 *
 * Built and run by ci/sanitize.sh (usage: stress_core [plain|uring|tls|udp|ws],
 * to run only those). Exits 0 when every echoed byte matched and the counters add
 * up; prints each failure and exits 1 otherwise.
 */

#include "fe.h"
#include "fe_rate.h" /* internal: the UDP rate table, driven on its own too */

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
#include <dirent.h>
#include <fcntl.h>
#include <linux/sock_diag.h> /* SK_MEMINFO_DROPS */
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
/* Copy runs: splice off, so that raw echo copies every byte (on, bulk
 * connections echo through pipes). */
static bool copy_run;
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

/* CHECK that goes on: for a run that must still stop its server. */
#define EXPECT(cond, ...)                                                    \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "stress_core: " __VA_ARGS__);                    \
            fprintf(stderr, " (%s:%d)\n", __FILE__, __LINE__);               \
            atomic_fetch_add(&failures, 1);                                  \
        }                                                                    \
    } while (0)

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec pause = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    nanosleep(&pause, NULL);
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

/* Blocks SIGPIPE in the calling thread: a write to a connection the server
 * has reset raises it (OpenSSL writes with write(), not send(MSG_NOSIGNAL)).
 * The test's own threads block it; the server's threads must cope on their
 * own (see start_server). */
static void block_sigpipe(void)
{
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);
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

static atomic_uint tls_interrupted; /* handshakes whose read was interrupted (EINTR), retried */

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
    int rc;
    /* A blocking read with a timeout (SO_RCVTIMEO) is not restarted after
     * an interruption, and OpenSSL reports its EINTR as WANT_READ: retried,
     * as any client must, and counted. (The thread that made an io_uring
     * server, this one, sees such interruptions now and then.) */
    for (int tries = 0; (rc = SSL_connect(c->ssl)) != 1 && tries < 10; tries++) {
        int e = SSL_get_error(c->ssl, rc);
        if (errno != EINTR || (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_SYSCALL))
            break;
        ERR_clear_error();
        atomic_fetch_add(&tls_interrupted, 1);
    }
    if (rc != 1) {
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

/* The end of an exchange: what came back (in) must be what was sent (out)
 * once rc is 0; both are freed, and the bytes count as verified. */
static int echo_matched(unsigned char *out, unsigned char *in, size_t size, int rc, const char *what)
{
    int same = rc == 0 && memcmp(out, in, size) == 0;
    free(out);
    free(in);
    CHECK(same, "%s: the echo of %zu bytes was lost, corrupted or reordered", what, size);
    atomic_fetch_add(&verified_in, size);
    atomic_fetch_add(&verified_out, size);
    return 0;
}

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
    return echo_matched(out, in, size, rc, "exchange");
}

/* Small pieces sent back to back without reading, then a large one, then
 * the whole echo read. The server's echo of the small pieces waits in its
 * output buffer (the socket is full) when the large piece fills a read and
 * the connection starts echoing through a pipe (splice): the buffered bytes
 * must still come back first. 72 KiB in all, which the server's receive
 * buffer and ours take while nothing is read, so no send blocks for good. */
static int pipelined_exchange(client *c, unsigned int *seed)
{
    enum { SMALL_BYTES = 24 * 1024, LARGE_BYTES = 48 * 1024, PIECE_MAX = 3000 };
    size_t size = SMALL_BYTES + LARGE_BYTES;
    unsigned char *out = malloc(size), *in = malloc(size);
    int rc = out && in ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < size; i++)
        out[i] = (unsigned char)rand_r(seed);
    for (size_t sent = 0, piece; rc == 0 && sent < SMALL_BYTES; sent += piece) {
        piece = 1 + (size_t)rand_r(seed) % PIECE_MAX;
        piece = piece < SMALL_BYTES - sent ? piece : SMALL_BYTES - sent;
        rc = client_send(c, out + sent, piece);
    }
    if (rc == 0)
        rc = client_send(c, out + SMALL_BYTES, LARGE_BYTES);
    if (rc == 0)
        rc = client_recv(c, in, size);
    return echo_matched(out, in, size, rc, "pipelined");
}

static int one_round(unsigned int *seed)
{
    client c;
    if (client_open(&c, seed) != 0)
        return -1;
    int kind = rand_r(seed) % 5;
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
    } else if (kind == 3) { /* send a lot, never read, and leave */
        unsigned char junk[60000];
        memset(junk, 'q', sizeof junk);
        client_send(&c, junk, sizeof junk);
        client_close(&c, false);
    } else { /* bulk behind small pieces whose echo is still queued */
        rc = pipelined_exchange(&c, seed);
        client_close(&c, rand_r(seed) % 2 == 0);
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
    block_sigpipe();
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
 * spent while the other clients run. begin (NULL: none) runs on each
 * hoarder (its index i) before it turns non-blocking: a WebSocket upgrade
 * and the header of the frame the junk is the payload of, say. */
static void start_hoarders(client *hoarders, int (*begin)(client *c, int i))
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
        if (begin && begin(&hoarders[i], i) != 0) {
            fprintf(stderr, "stress_core: hoarder %d could not begin\n", i);
            atomic_fetch_add(&failures, 1);
            client_close(&hoarders[i], false);
            hoarders[i].fd = -1;
            continue;
        }
        int small = 4096;
        setsockopt(hoarders[i].fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
        fcntl(hoarders[i].fd, F_SETFL, fcntl(hoarders[i].fd, F_GETFL) | O_NONBLOCK);
    }
    int pushes[HOARDERS] = {0}; /* each at most sizeof junk: 16 MiB in 256 */
    for (int pass = 0, stalled = 0; pass < 4000 && stalled < 50; pass++) {
        bool progress = false;
        for (int i = 0; i < HOARDERS; i++) {
            if (hoarders[i].fd >= 0 && pushes[i] < 256 && client_push(&hoarders[i], junk, sizeof junk)) {
                pushes[i]++;
                progress = true;
            }
        }
        stalled = progress ? 0 : stalled + 1;
        if (!progress) {
            struct timespec pause = {.tv_nsec = 2000000};
            nanosleep(&pause, NULL);
        }
    }
}

/* The hoarders of a budget run: they must have spent the budget, and may
 * pass it only by the slack fe_config.max_memory allows (far below twice). */
static void hoard(fe_server *srv, client *hoarders, int (*begin)(client *c, int i))
{
    start_hoarders(hoarders, begin);
    fe_stats spent;
    fe_server_stats(srv, &spent);
    EXPECT(spent.memory_budget_waits > 0 && spent.memory_held <= 2 * BUDGET_BYTES,
           "hoarders left %llu bytes held (budget %zu) after %llu budget waits",
           (unsigned long long)spent.memory_held, BUDGET_BYTES, (unsigned long long)spent.memory_budget_waits);
}

/* Resets them: a connection that waits for the budget does not read, so
 * it would not see a FIN (a hoarder whose echo is unread resets anyway). */
static void close_hoarders(client *hoarders)
{
    for (int i = 0; i < HOARDERS; i++) {
        if (hoarders[i].fd < 0)
            continue;
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(hoarders[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        client_close(&hoarders[i], false);
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
static int start_server(fe_server *srv, const fe_listener *listeners, size_t count, char *err, size_t errlen)
{
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    /* A SIGPIPE our clients raised is still pending: take it first, or
     * unblocking would deliver it. Standard signals do not queue: one wait. */
    struct timespec no_wait = {0};
    sigtimedwait(&pipe_set, NULL, &no_wait);
    pthread_sigmask(SIG_UNBLOCK, &pipe_set, NULL);
    int rc = fe_server_start(srv, listeners, count, err, errlen);
    pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);
    return rc;
}

/* A server from cfg, serving listener (its fd set here: a new ephemeral
 * listening socket, the caller's to close) with tls when that is not NULL.
 * NULL when it could not start (said on stderr). */
static fe_server *serve(const fe_config *cfg, fe_listener *listener, fe_tls *tls)
{
    listener->fd = listen_ephemeral();
    fe_server *srv = NULL;
    char err[256];
    if (fe_server_create(cfg, &srv, err, sizeof err) != 0) {
        fprintf(stderr, "stress_core: %s\n", err);
        return NULL;
    }
    if (tls)
        fe_server_set_tls(srv, tls);
    if (start_server(srv, listener, 1, err, sizeof err) != 0) {
        fprintf(stderr, "stress_core: %s\n", err);
        fe_server_destroy(srv);
        return NULL;
    }
    return srv;
}

/* After fe_server_shutdown: every worker must be gone within 10 s. */
static void wait_stopped(fe_server *srv)
{
    EXPECT(fe_server_wait(srv, 10000), "workers did not stop within 10 s");
}

/* A stopped server's counters: no connection left, no memory held. */
static void check_stopped(const fe_stats *st)
{
    EXPECT(st->connections_active == 0 && st->connections_accepted == st->connections_closed,
           "connections leaked: accepted %llu, closed %llu, active %llu",
           (unsigned long long)st->connections_accepted, (unsigned long long)st->connections_closed,
           (unsigned long long)st->connections_active);
    EXPECT(st->memory_held == 0, "%llu bytes still counted as held after stop", (unsigned long long)st->memory_held);
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

/* The backend the stream runs use (the plain runs go on both). */
static enum fe_io_backend io_backend_run = FE_IO_EPOLL;
static int count_fds(void);

static int run(int threads, size_t queue_capacity, bool line_mode, bool budget)
{
    int64_t started = now_ms();
    int fds_before = count_fds();
    line_mode_run = line_mode;
    atomic_store(&verified_in, 0);
    atomic_store(&verified_out, 0);
    fe_config cfg;
    fe_config_init(&cfg);
    cfg.threads = threads;
    cfg.io_backend = io_backend_run;
    cfg.queue_capacity = queue_capacity; /* tiny: the acceptor must wait on the condvar */
    cfg.max_pending_output = 16 * 1024;  /* tiny: backpressure engages constantly */
    cfg.read_buffer_size = 4096;
    cfg.splice = !copy_run;
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
    fe_listener listener = {.proxy = proxy_run, .tls = tls_run};
#ifdef FE_WITH_TLS
    fe_server *srv = serve(&cfg, &listener, tls_run ? tls_a : NULL);
#else
    fe_server *srv = serve(&cfg, &listener, NULL);
#endif
    if (srv == NULL)
        return 1;
    int listen_fd = listener.fd;

    client hoarders[HOARDERS];
#ifdef FE_WITH_TLS
    memset(&tls_seen, 0, sizeof tls_seen); /* before the hoarders, whose handshakes count too */
#endif
    if (budget)
        hoard(srv, hoarders, NULL);

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
    if (budget)
        close_hoarders(hoarders);

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
    wait_stopped(srv);
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
    printf("%s%s%s%s%s threads=%d queue=%zu accepted=%llu closed=%llu active=%llu in=%llu out=%llu spliced=%llu "
           "(%.1f s)\n",
           line_mode ? "line" : "echo", budget ? "+budget" : "", tls_run ? "+tls" : "", proxy_run ? "+proxy" : "",
           copy_run ? "+copy" : "",
           threads, queue_capacity,
           (unsigned long long)st.connections_accepted,
           (unsigned long long)st.connections_closed, (unsigned long long)st.connections_active,
           (unsigned long long)st.bytes_received, (unsigned long long)st.bytes_sent,
           (unsigned long long)st.splice_bytes, (double)(now_ms() - started) / 1000);
    check_stopped(&st);
    check_bytes(&st, line_mode);
    /* Raw echo over plain TCP moves bulk through pipes, unless splice is off. */
    /* (io_uring keeps half of this run's small budget free for its
     * multishot receives, which leaves less than a pipe's room.) */
    bool splices = !line_mode && !tls_run && !copy_run && !(budget && io_backend_run == FE_IO_URING);
    EXPECT(splices ? st.splice_bytes > 0 : st.splice_bytes == 0, "%llu bytes spliced",
           (unsigned long long)st.splice_bytes);
    /* Read before destroy: only the workers' pools hold pipes by then. */
    EXPECT(st.splice_pipes <= (uint64_t)threads * FE_SPLICE_POOL_PIPES, "%llu pipes open with no connection",
           (unsigned long long)st.splice_pipes);
    /* Every socket, pipe and pooled pipe closed. */
    int fds_after = count_fds();
    EXPECT(fds_after == fds_before, "fds leaked: %d before, %d after", fds_before, fds_after);
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
    fe_config cfg;
    fe_config_init(&cfg);
    cfg.io_backend = io_backend_run;
    cfg.threads = 2;
    cfg.tls_handshake_timeout_ms = QUIET_TIMEOUT_MS;
    fe_listener listener = {.tls = true};
    fe_server *srv = serve(&cfg, &listener, tls_b);
    if (srv == NULL)
        return 1;
    int listen_fd = listener.fd;
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
    wait_stopped(srv);
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

/* ---------------------------------------------------------------- WebSocket */

#ifdef FE_WITH_TLS
/* WebSocket runs (ws listeners need libcrypto, so they come with TLS, and
 * wss:// goes through the TLS clients above): clients upgrade (the 101 and
 * its Sec-WebSocket-Accept checked), then send masked frames of random
 * sizes and kinds, in random pieces: binary frames (streamed by the server,
 * so their echo is read as they go), text (valid UTF-8, held until whole),
 * fragmented messages with pings and pongs between the fragments, bursts of
 * small messages in one write; then a close handshake, a FIN or a reset.
 * Beside them: HTTP requests that are no upgrade (the page, 400 to 426),
 * protocol violations (close 1002, 1007, 1009), clients that vanish
 * mid-frame or never finish their request head; in the budget run, hoarders
 * that stream or hold messages without reading. Then a stop while clients
 * are mid-message: each upgraded one gets close 1001 before its end. Every
 * answer the clients get is counted, and the server's counters must match
 * exactly (see ws_check). */

enum {
    WS_THREADS = 6,
    WS_SESSIONS = 10,          /* per client thread */
    WS_MAX_HEADER = 1024,      /* ws_max_header: the oversized heads pass it */
    WS_TIMEOUT_MS = 1500,      /* ws_handshake_timeout_ms: the silent clients wait it out */
    WS_DRAIN_MS = 800,         /* the stop's drain: shorter than WS_TIMEOUT_MS (see ws_linger) */
    WS_SILENT = 4,
    WS_LINGER_ROUNDS = 2,      /* of every kind of lingering client */
    WS_MID_SENT = 5000,        /* a lingering binary frame's payload sent before the stop ... */
    WS_MID_TOTAL = 20000,      /* ... of this many */
    WS_CONT = 0x0,
    WS_TEXT = 0x1,
    WS_BINARY = 0x2,
    WS_CLOSE = 0x8,
    WS_PING = 0x9,
    WS_PONG = 0xA,
    WS_FIN = 0x80,
    WS_MAX_CONTROL = 125, /* the largest control frame payload */
    WS_PROTOCOL_ERROR = 1002,
    WS_BAD_DATA = 1007,
    WS_TOO_BIG = 1009,
};
/* ws_max_message: above anything a hoarder pushes (16 MiB), and what their
 * frames announce. */
#define WS_MAX_MESSAGE ((uint64_t)32 << 20)
static const char ws_path[] = "/echo";

/* What the clients of a ws run were answered, and what they caused. */
static struct {
    atomic_uint http[FE_WS_HTTP_COUNT];         /* answers read, by kind (upgrades included) */
    atomic_uint closes[FE_WS_CLOSE_SLOTS];      /* close frames read, by code */
    atomic_uint messages, pongs;                /* echoed messages and pongs read back whole */
    atomic_uint reasons[FE_CLOSE_REASON_COUNT]; /* closes caused, where the reason is certain */
} ws_seen;

/* The header of a client frame: b0 is FIN, RSV and opcode; len the length
 * announced, in form 0 (the shortest), 126 or 127 (forced); masked with key
 * (NULL: not masked). Returns its length (at most 14). */
static size_t ws_header(unsigned char *h, unsigned b0, uint64_t len, int form, const unsigned char *key)
{
    if (form == 0)
        form = len < 126 ? 0 : len < 65536 ? 126 : 127;
    size_t n = 0;
    h[n++] = (unsigned char)b0;
    h[n++] = (unsigned char)((key ? 0x80 : 0) | (form ? (unsigned)form : (unsigned)len));
    for (int shift = form == 126 ? 8 : form == 127 ? 56 : -8; shift >= 0; shift -= 8)
        h[n++] = (unsigned char)(len >> shift);
    if (key) {
        memcpy(h + n, key, 4);
        n += 4;
    }
    return n;
}

/* A whole client frame into out (room for n + 14): masked with a random
 * key, or not when seed is NULL. Returns its length. */
static size_t ws_frame(unsigned char *out, unsigned b0, const unsigned char *payload, size_t n, unsigned int *seed)
{
    unsigned char key[4];
    for (int i = 0; seed && i < 4; i++)
        key[i] = (unsigned char)rand_r(seed);
    size_t h = ws_header(out, b0, n, 0, seed ? key : NULL);
    for (size_t i = 0; i < n; i++)
        out[h + i] = seed ? payload[i] ^ key[i % 4] : payload[i];
    return h + n;
}

/* Sends buf in random pieces of up to max bytes, so that frames and heads
 * span the server's reads. */
static int ws_send_pieces(client *c, const unsigned char *buf, size_t len, unsigned int *seed, size_t max)
{
    for (size_t sent = 0, piece; sent < len; sent += piece) {
        piece = 1 + (size_t)rand_r(seed) % max;
        if (piece > len - sent)
            piece = len - sent;
        if (client_send(c, buf + sent, piece) != 0)
            return -1;
    }
    return 0;
}

/* Sends one masked frame (in pieces). */
static int ws_send(client *c, unsigned b0, const unsigned char *payload, size_t n, unsigned int *seed)
{
    unsigned char *frame = malloc(n + 14);
    CHECK(frame, "out of memory");
    size_t len = ws_frame(frame, b0, payload, n, seed);
    int rc = ws_send_pieces(c, frame, len, seed, 3000);
    free(frame);
    CHECK(rc == 0, "sending a %zu-byte frame failed", n);
    atomic_fetch_add(&verified_in, len);
    return 0;
}

/* Reads a server frame's header: FIN set, no RSV bit, not masked (the
 * length in any form). */
static int ws_recv_header(client *c, unsigned *b0, uint64_t *len)
{
    unsigned char h[8];
    CHECK(client_recv(c, h, 2) == 0, "no frame header from the server");
    *b0 = h[0];
    CHECK((h[0] & 0xF0) == WS_FIN && !(h[1] & 0x80), "a server frame starts %02x %02x", h[0], h[1]);
    *len = h[1] & 0x7F;
    if (*len >= 126) {
        size_t ext = *len == 126 ? 2 : 8;
        CHECK(client_recv(c, h, ext) == 0, "a server frame's length was cut off");
        *len = 0;
        for (size_t i = 0; i < ext; i++)
            *len = *len << 8 | h[i];
    }
    atomic_fetch_add(&verified_out, 2);
    return 0;
}

/* Reads a server frame whose payload fits cap bytes at payload. */
static int ws_recv(client *c, unsigned *b0, unsigned char *payload, size_t cap, size_t *len)
{
    uint64_t n;
    if (ws_recv_header(c, b0, &n) != 0)
        return -1;
    CHECK(n <= cap, "a %llu-byte server frame (opcode %u), %zu expected at most", (unsigned long long)n, *b0 & 15,
          cap);
    CHECK(n == 0 || client_recv(c, payload, (size_t)n) == 0, "a server frame's payload was cut off");
    *len = (size_t)n;
    atomic_fetch_add(&verified_out, n);
    return 0;
}

/* Reads the next frame: it must be opcode op with exactly payload[0, n). A
 * pong is counted, as is a data message. */
static int ws_expect(client *c, unsigned op, const unsigned char *payload, size_t n)
{
    unsigned char *got = malloc(n ? n : 1);
    CHECK(got, "out of memory");
    unsigned b0 = 0;
    size_t len = 0;
    int rc = ws_recv(c, &b0, got, n, &len);
    bool same = rc == 0 && (b0 & 15) == op && len == n && memcmp(got, payload, n) == 0;
    free(got);
    CHECK(same, "expected opcode %u of %zu bytes, got opcode %u of %zu bytes%s", op, n, b0 & 15, len,
          rc == 0 && len == n && (b0 & 15) == op ? " that differ" : "");
    atomic_fetch_add(op == WS_PONG ? &ws_seen.pongs : &ws_seen.messages, 1);
    return 0;
}

/* Reads the server's close frame: code (0: none) and reason, then the
 * server's orderly end. Counted by code. */
static int ws_expect_close(client *c, uint16_t code, const char *reason)
{
    unsigned char got[WS_MAX_CONTROL];
    unsigned b0 = 0;
    size_t len = 0;
    if (ws_recv(c, &b0, got, sizeof got, &len) != 0)
        return -1;
    size_t rlen = strlen(reason);
    uint16_t got_code = len >= 2 ? (uint16_t)(got[0] << 8 | got[1]) : 0;
    CHECK((b0 & 15) == WS_CLOSE && got_code == code && len == (code ? 2 + rlen : 0) &&
              memcmp(got + 2, reason, rlen) == 0,
          "expected close %u \"%s\", got opcode %u, %zu bytes, code %u", code, reason, b0 & 15, len, got_code);
    atomic_fetch_add(&ws_seen.closes[code ? (code >= 1000 && code < 1016 ? code - 1000 : FE_WS_CLOSE_APPLICATION)
                                          : FE_WS_CLOSE_NONE],
                     1);
    CHECK(client_sees_end(c), "close %u, then no orderly end", code);
    return 0;
}

/* n bytes of valid UTF-8 (RFC 3629): characters of 1 to 4 bytes, no
 * surrogates, nothing past U+10FFFF. */
static void ws_utf8(unsigned char *out, size_t n, unsigned int *seed)
{
    for (size_t i = 0; i < n;) {
        size_t bytes = 1 + (size_t)rand_r(seed) % 4;
        if (bytes > n - i)
            bytes = 1;
        uint32_t cp;
        if (bytes == 1) {
            cp = 0x20 + (uint32_t)rand_r(seed) % 0x5F;
            out[i] = (unsigned char)cp;
        } else if (bytes == 2) {
            cp = 0x80 + (uint32_t)rand_r(seed) % 0x780;
            out[i] = (unsigned char)(0xC0 | cp >> 6);
        } else if (bytes == 3) {
            do
                cp = 0x800 + (uint32_t)rand_r(seed) % 0xF800;
            while (cp >= 0xD800 && cp <= 0xDFFF);
            out[i] = (unsigned char)(0xE0 | cp >> 12);
        } else {
            cp = 0x10000 + (uint32_t)rand_r(seed) % 0x100000;
            out[i] = (unsigned char)(0xF0 | cp >> 18);
        }
        for (size_t k = 1; k < bytes; k++)
            out[i + k] = (unsigned char)(0x80 | ((cp >> (6 * (bytes - 1 - k))) & 0x3F));
        i += bytes;
    }
}

/* Random bytes, or for text valid UTF-8. */
static void ws_payload(unsigned char *out, size_t n, bool text, unsigned int *seed)
{
    if (text) {
        ws_utf8(out, n, seed);
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = (unsigned char)rand_r(seed);
}

/* An upgrade request at ws_path for a fresh random key (key: 25 bytes,
 * the 24 characters and a NUL), with header names in random case and now
 * and then bare LF line ends. Returns its length. */
static size_t ws_request(char *out, size_t cap, char *key, unsigned int *seed)
{
    unsigned char raw[16];
    for (int i = 0; i < 16; i++)
        raw[i] = (unsigned char)rand_r(seed);
    EVP_EncodeBlock((unsigned char *)key, raw, 16);
    const char *eol = rand_r(seed) % 4 == 0 ? "\n" : "\r\n";
    int variant = rand_r(seed) % 2;
    int n = snprintf(out, cap,
                     "GET %s%s HTTP/1.1\r\n%s: 127.0.0.1%s%s: %s%s%s: %s%s%s: %s%s%s: 13%s"
                     "Origin: http://127.0.0.1%sSec-WebSocket-Extensions: permessage-deflate%s%s",
                     ws_path, variant ? "?x=1" : "", variant ? "host" : "Host", eol,
                     variant ? "upgrade" : "Upgrade", variant ? "WebSocket" : "websocket", eol,
                     variant ? "CONNECTION" : "Connection", variant ? "keep-alive, Upgrade" : "Upgrade", eol,
                     variant ? "sec-websocket-key" : "Sec-WebSocket-Key", key, eol,
                     variant ? "sec-websocket-version" : "Sec-WebSocket-Version", eol, eol, eol, eol);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* Reads an HTTP answer's head, through its blank line (cap: room for it
 * and a NUL). Returns its length, or 0. */
static size_t ws_read_head(client *c, char *head, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap && (n < 4 || memcmp(head + n - 4, "\r\n\r\n", 4) != 0)) {
        if (client_recv(c, (unsigned char *)head + n, 1) != 0)
            return 0; /* one byte at a time: what follows the head stays unread */
        n++;
    }
    head[n] = '\0';
    return n >= 4 && memcmp(head + n - 4, "\r\n\r\n", 4) == 0 ? n : 0;
}

/* Reads the 101 for key: its Sec-WebSocket-Accept must be base64(SHA-1(key
 * and the RFC 6455 GUID)), computed here with libcrypto. */
static int ws_expect_upgrade(client *c, const char *key)
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    char head[1024], text[64], accept[64], want[128];
    size_t n = ws_read_head(c, head, sizeof head);
    CHECK(n > 0, "no answer to the upgrade");
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    snprintf(text, sizeof text, "%s%s", key, guid);
    CHECK(EVP_Digest(text, strlen(text), md, &md_len, EVP_sha1(), NULL) == 1 && md_len == 20, "SHA-1 failed");
    EVP_EncodeBlock((unsigned char *)accept, md, 20);
    snprintf(want, sizeof want, "\r\nSec-WebSocket-Accept: %s\r\n", accept);
    CHECK(strncmp(head, "HTTP/1.1 101 ", 13) == 0 && strstr(head, want) != NULL &&
              strstr(head, "\r\nUpgrade: websocket\r\n") != NULL,
          "upgrade answered: %.200s", head);
    atomic_fetch_add(&ws_seen.http[FE_WS_HTTP_UPGRADE], 1);
    return 0;
}

/* Upgrades c; first (n bytes, may be 0) goes out with the request's last
 * piece, so that frames arrive with the head. */
static int ws_upgrade(client *c, unsigned int *seed, const unsigned char *first, size_t n)
{
    char request[512 + 14 + 200], key[25];
    size_t len = ws_request(request, sizeof request - n, key, seed);
    if (n > 0)
        memcpy(request + len, first, n);
    CHECK(len > 0 && ws_send_pieces(c, (unsigned char *)request, len + n, seed, 200) == 0 &&
              ws_expect_upgrade(c, key) == 0,
          "upgrade failed");
    return 0;
}

/* Connects (over TLS in wss runs) and upgrades (see ws_upgrade). */
static int ws_open(client *c, unsigned int *seed, const unsigned char *first, size_t n)
{
    if (client_open(c, seed) != 0)
        return -1;
    if (ws_upgrade(c, seed, first, n) != 0) {
        client_close(c, false);
        return -1;
    }
    return 0;
}

/* One binary frame of n bytes, sent in pieces, its echo read as it goes:
 * the server streams it, so all that was sent must come back before more
 * is (more than the output cap, read buffer and socket buffers). */
static int ws_binary_streamed(client *c, unsigned int *seed, size_t n)
{
    unsigned char *payload = malloc(n + 1), *frame = malloc(n + 14), *echo = malloc(n + 1);
    int rc = payload && frame && echo ? 0 : -1;
    size_t len = 0, hlen = 0, got = 0;
    if (rc == 0) {
        ws_payload(payload, n, false, seed);
        len = ws_frame(frame, WS_FIN | WS_BINARY, payload, n, seed);
        hlen = len - n;
    }
    bool echo_header = false;
    for (size_t sent = 0, piece; rc == 0 && sent < len; sent += piece) {
        piece = 1 + (size_t)rand_r(seed) % 20000;
        piece = piece < len - sent ? piece : len - sent;
        rc = client_send(c, frame + sent, piece);
        if (rc == 0 && sent + piece >= hlen && !echo_header) {
            unsigned b0;
            uint64_t echo_len;
            rc = ws_recv_header(c, &b0, &echo_len);
            rc = rc == 0 && b0 == (WS_FIN | WS_BINARY) && echo_len == n ? 0 : -1;
            echo_header = true;
        }
        if (rc == 0 && sent + piece > hlen) {
            size_t owed = sent + piece - hlen - got;
            rc = client_recv(c, echo + got, owed);
            got += owed;
        }
    }
    bool same = rc == 0 && got == n && memcmp(payload, echo, n) == 0;
    free(payload);
    free(frame);
    free(echo);
    CHECK(same, "the streamed echo of a %zu-byte binary frame was lost or corrupted", n);
    atomic_fetch_add(&ws_seen.messages, 1);
    atomic_fetch_add(&verified_in, len);
    atomic_fetch_add(&verified_out, n);
    return 0;
}

/* A message of n bytes in fragments (some empty), with pings (each
 * answered at once) and unsolicited pongs (ignored) between them; the
 * pongs, then the message whole. */
static int ws_fragmented(client *c, unsigned int *seed, bool text, size_t n)
{
    unsigned char *payload = malloc(n + 1);
    CHECK(payload, "out of memory");
    ws_payload(payload, n, text, seed);
    unsigned char pings[4][WS_MAX_CONTROL];
    size_t ping_len[4];
    int fragments = 2 + rand_r(seed) % 4, ping_count = 0, rc = 0;
    for (int f = 0, done = 0; f < fragments && rc == 0; f++) {
        size_t at = f == fragments - 1 ? n : (size_t)done + (size_t)rand_r(seed) % (n - (size_t)done + 1);
        unsigned b0 = (f == 0 ? (text ? WS_TEXT : WS_BINARY) : WS_CONT) | (f == fragments - 1 ? WS_FIN : 0);
        rc = ws_send(c, b0, payload + done, at - (size_t)done, seed);
        done = (int)at;
        if (rc == 0 && f < fragments - 1 && rand_r(seed) % 2 == 0) {
            size_t k = (size_t)rand_r(seed) % (WS_MAX_CONTROL + 1);
            ws_payload(pings[ping_count], k, false, seed);
            ping_len[ping_count] = k;
            rc = ws_send(c, WS_FIN | WS_PING, pings[ping_count++], k, seed);
        }
        if (rc == 0 && rand_r(seed) % 4 == 0)
            rc = ws_send(c, WS_FIN | WS_PONG, payload, n < 10 ? n : 10, seed);
    }
    for (int i = 0; i < ping_count && rc == 0; i++)
        rc = ws_expect(c, WS_PONG, pings[i], ping_len[i]);
    if (rc == 0)
        rc = ws_expect(c, text ? WS_TEXT : WS_BINARY, payload, n);
    free(payload);
    return rc;
}

/* 2 to 16 small messages (and a ping) in one write, then their echoes. */
static int ws_burst(client *c, unsigned int *seed)
{
    enum { MAX = 16, SMALL = 300 };
    unsigned char payload[MAX][SMALL], frames[MAX * (SMALL + 14)];
    size_t lens[MAX], len = 0;
    unsigned ops[MAX];
    int count = 2 + rand_r(seed) % (MAX - 1);
    for (int i = 0; i < count; i++) {
        ops[i] = i == count / 2 ? WS_PING : 1 + (unsigned)rand_r(seed) % 2;
        lens[i] = (size_t)rand_r(seed) % (ops[i] == WS_PING ? WS_MAX_CONTROL : SMALL);
        ws_payload(payload[i], lens[i], ops[i] == WS_TEXT, seed);
        len += ws_frame(frames + len, WS_FIN | ops[i], payload[i], lens[i], seed);
    }
    CHECK(client_send(c, frames, len) == 0, "a burst of %d messages could not be sent", count);
    atomic_fetch_add(&verified_in, len);
    for (int i = 0; i < count; i++)
        if (ws_expect(c, ops[i] == WS_PING ? WS_PONG : ops[i], payload[i], lens[i]) != 0)
            return -1;
    return 0;
}

/* A close code a client may send (RFC 6455 7.4), and the server echoes. */
static uint16_t ws_client_code(unsigned int *seed)
{
    static const uint16_t codes[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014};
    if (rand_r(seed) % 3 == 0)
        return (uint16_t)(3000 + rand_r(seed) % 2000);
    return codes[rand_r(seed) % (int)(sizeof codes / sizeof codes[0])];
}

/* One client's session: an upgrade (frames now and then sent with it),
 * messages of every kind, then a close handshake, a FIN or a reset. */
static int ws_session(unsigned int *seed)
{
    client c;
    unsigned char first[64];
    size_t first_len = rand_r(seed) % 4 == 0 ? (size_t)rand_r(seed) % 40 : 0;
    ws_payload(first, first_len, false, seed);
    unsigned char frame[64 + 14];
    size_t frame_len = first_len ? ws_frame(frame, WS_FIN | WS_BINARY, first, first_len, seed) : 0;
    if (ws_open(&c, seed, frame, frame_len) != 0)
        return -1;
    int rc = first_len ? ws_expect(&c, WS_BINARY, first, first_len) : 0;
    int messages = 1 + rand_r(seed) % 8;
    for (int i = 0; i < messages && rc == 0; i++) {
        int kind = rand_r(seed) % 5;
        size_t big = rand_r(seed) % 8 == 0 ? 200000 : 3000;
        size_t n = (size_t)rand_r(seed) % (big + 1);
        if (kind == 0) {
            rc = ws_binary_streamed(&c, seed, n);
        } else if (kind == 1 || kind == 2) { /* held: text, or fragmented */
            rc = kind == 1 ? ws_fragmented(&c, seed, true, n) : ws_fragmented(&c, seed, rand_r(seed) % 2, n);
        } else if (kind == 3) {
            rc = ws_burst(&c, seed);
        } else { /* a lone text frame, or a ping */
            bool ping = rand_r(seed) % 2;
            n = ping ? n % (WS_MAX_CONTROL + 1) : n;
            unsigned char *payload = malloc(n + 1);
            CHECK(payload, "out of memory");
            ws_payload(payload, n, !ping, seed);
            rc = ws_send(&c, WS_FIN | (ping ? WS_PING : WS_TEXT), payload, n, seed);
            if (rc == 0)
                rc = ws_expect(&c, ping ? WS_PONG : WS_TEXT, payload, n);
            free(payload);
        }
        maybe_key_update(&c, seed);
    }
    int end = rand_r(seed) % 4;
    if (rc == 0 && end <= 1) { /* the close handshake: the code comes back (or none) */
        uint16_t code = end == 0 ? ws_client_code(seed) : 0;
        unsigned char payload[2 + 60];
        size_t n = 0;
        if (code) {
            payload[0] = (unsigned char)(code >> 8);
            payload[1] = (unsigned char)code;
            n = 2 + (size_t)rand_r(seed) % 60;
            ws_utf8(payload + 2, n - 2, seed);
        }
        rc = ws_send(&c, WS_FIN | WS_CLOSE, payload, n, seed);
        if (rc == 0)
            rc = ws_expect_close(&c, code, "");
        if (rc == 0)
            atomic_fetch_add(&ws_seen.reasons[FE_CLOSE_WS_CLOSE], 1);
    } else if (rc == 0 && end == 2) { /* gone without a close frame */
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    client_close(&c, rand_r(seed) % 2);
    return rc;
}

static void *ws_client_main(void *arg)
{
    block_sigpipe();
    unsigned int seed = (unsigned int)(uintptr_t)arg * 104729u + 7;
    for (int i = 0; i < WS_SESSIONS; i++)
        if (ws_session(&seed) != 0)
            break;
    forget_sessions();
    return NULL;
}

/* ---- the clients that are no good ---- */

/* A request that is no upgrade: its answer must be kind (the status, a
 * Content-Length the body matches, no body for HEAD), then the end. */
static int ws_http_case(const char *request, size_t len, enum fe_ws_http_kind kind, unsigned int *seed)
{
    client c;
    if (client_open(&c, seed) != 0)
        return -1;
    char head[1024], status[16];
    size_t body_len = 0;
    int rc = ws_send_pieces(&c, (const unsigned char *)request, len, seed, 100);
    size_t n = rc == 0 ? ws_read_head(&c, head, sizeof head) : 0;
    snprintf(status, sizeof status, "HTTP/1.1 %d ", fe_ws_http_status(kind));
    const char *cl = n ? strstr(head, "\r\nContent-Length: ") : NULL;
    bool head_only = strncmp(request, "HEAD ", 5) == 0;
    if (cl && !head_only)
        body_len = strtoul(cl + 18, NULL, 10);
    unsigned char *body = malloc(body_len + 1);
    bool ok = n > 0 && strncmp(head, status, strlen(status)) == 0 && cl && body &&
              (body_len == 0 || client_recv(&c, body, body_len) == 0) && client_sees_end(&c);
    free(body);
    client_close(&c, false);
    CHECK(ok, "request %.30s...: expected %d, got %.60s", request, fe_ws_http_status(kind), n ? head : "nothing");
    atomic_fetch_add(&ws_seen.http[kind], 1);
    atomic_fetch_add(&ws_seen.reasons[FE_CLOSE_HTTP], 1);
    return 0;
}

static int ws_http_cases(unsigned int *seed)
{
    static const struct {
        const char *request;
        enum fe_ws_http_kind kind;
    } cases[] = {
        {"GET / HTTP/1.1\r\nHost: a\r\n\r\n", FE_WS_HTTP_PAGE},
        {"HEAD /index.html?q HTTP/1.1\r\nHost: a\r\n\r\n", FE_WS_HTTP_PAGE},
        {"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n", FE_WS_HTTP_NOT_FOUND},
        {"GET /other HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
         FE_WS_HTTP_NOT_FOUND},
        {"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", FE_WS_HTTP_METHOD},
        {"GET /echo HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
         FE_WS_HTTP_VERSION},
        {"GET /echo HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Version: 13\r\n\r\n",
         FE_WS_HTTP_BAD_REQUEST},
        {"GET /echo HTTP/1.0\r\nHost: a\r\n\r\n", FE_WS_HTTP_BAD_REQUEST},
        {"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", FE_WS_HTTP_BAD_REQUEST}, /* a ClientHello */
        {"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", FE_WS_HTTP_BAD_REQUEST},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (ws_http_case(cases[i].request, strlen(cases[i].request), cases[i].kind, seed) != 0)
            return -1;
    /* A head that never ends, past ws_max_header: 400 once it is that long. */
    char big[WS_MAX_HEADER + 300];
    size_t len = (size_t)snprintf(big, sizeof big, "GET %s HTTP/1.1\r\nHost: a\r\n", ws_path);
    while (len + 20 < sizeof big)
        len += (size_t)snprintf(big + len, sizeof big - len, "X-Pad: %010d\r\n", rand_r(seed));
    return ws_http_case(big, len, FE_WS_HTTP_BAD_REQUEST, seed);
}

/* Protocol violation i (once upgraded) into out, and the close code it
 * must get; 0 when there is no violation i. */
static size_t ws_violation(int i, unsigned char *out, uint16_t *code, unsigned int *seed)
{
    static const unsigned char bad_utf8[][5] = {
        {2, 0xC0, 0x80}, {3, 0xED, 0xA0, 0x80}, {4, 'a', 0xF4, 0x90, 0x80}, {3, 'a', 0xE2, 0x82}, {1, 0xFF}};
    unsigned char key[4] = {1, 2, 3, 4}, ctl[3] = {0x03, 0xED, 0xFF}; /* 1005 */
    size_t n = 0;
    *code = WS_PROTOCOL_ERROR;
    switch (i) {
    case 0: return ws_frame(out, WS_FIN | WS_BINARY, (const unsigned char *)"abc", 3, NULL); /* unmasked */
    case 1: return ws_frame(out, WS_FIN | 0x40 | WS_BINARY, (const unsigned char *)"abc", 3, seed); /* RSV1 */
    case 2: return ws_frame(out, WS_FIN | 0x3, NULL, 0, seed);       /* reserved data opcode */
    case 3: return ws_frame(out, WS_FIN | 0xB, NULL, 0, seed);       /* reserved control opcode */
    case 4: return ws_frame(out, WS_PING, ctl, 1, seed);             /* a control frame without FIN */
    case 5: return ws_header(out, WS_FIN | WS_PING, 126, 126, key);  /* a control frame over 125 */
    case 6: return ws_frame(out, WS_FIN | WS_CONT, ctl, 2, seed);    /* a continuation of nothing */
    case 7:                                                          /* a new message inside another */
        n = ws_frame(out, WS_TEXT, (const unsigned char *)"ab", 2, seed);
        return n + ws_frame(out + n, WS_FIN | WS_BINARY, (const unsigned char *)"cd", 2, seed);
    case 8: return ws_header(out, WS_FIN | WS_BINARY, 5, 126, key) + 5; /* a length not minimal */
    case 9: return ws_header(out, WS_FIN | WS_BINARY, (uint64_t)1 << 63, 127, key); /* its top bit */
    case 10: return ws_frame(out, WS_FIN | WS_CLOSE, ctl, 1, seed);  /* a 1-byte close */
    case 11: return ws_frame(out, WS_FIN | WS_CLOSE, ctl, 2, seed);  /* close 1005 */
    case 12: /* a message past ws_max_message, and one whose fragments add up past it */
    case 13:
        *code = WS_TOO_BIG;
        if (i == 12)
            return ws_header(out, WS_FIN | WS_BINARY, WS_MAX_MESSAGE + 1, 0, key);
        n = ws_frame(out, WS_BINARY, ctl, 3, seed);
        return n + ws_header(out + n, WS_FIN | WS_CONT, WS_MAX_MESSAGE - 2, 0, key);
    case 14: /* a close reason that is not UTF-8 */
        *code = WS_BAD_DATA;
        return ws_frame(out, WS_FIN | WS_CLOSE, (const unsigned char *)"\x03\xe8\xc0", 3, seed);
    default:
        break;
    }
    i -= 15;
    if (i >= (int)(sizeof bad_utf8 / sizeof bad_utf8[0]))
        return 0;
    *code = WS_BAD_DATA; /* text that is not UTF-8: whole, or in its second fragment */
    if (i % 2)
        n = ws_frame(out, WS_TEXT, (const unsigned char *)"ok", 2, seed);
    return n + ws_frame(out + n, WS_FIN | (i % 2 ? WS_CONT : WS_TEXT), bad_utf8[i] + 1, bad_utf8[i][0], seed);
}

/* Each violation on its own upgraded connection, after a good message now
 * and then: the close frame with its code (no reason), then the end. */
static int ws_violations(unsigned int *seed)
{
    unsigned char bytes[64];
    uint16_t code;
    size_t len;
    for (int i = 0; (len = ws_violation(i, bytes, &code, seed)) > 0; i++) {
        client c;
        if (ws_open(&c, seed, NULL, 0) != 0)
            return -1;
        int rc = 0;
        if (rand_r(seed) % 2) {
            unsigned char hello[100];
            ws_utf8(hello, sizeof hello, seed);
            rc = ws_send(&c, WS_FIN | WS_TEXT, hello, sizeof hello, seed);
            rc = rc == 0 ? ws_expect(&c, WS_TEXT, hello, sizeof hello) : rc;
        }
        rc = rc == 0 ? ws_send_pieces(&c, bytes, len, seed, 4) : rc;
        rc = rc == 0 ? ws_expect_close(&c, code, "") : rc;
        client_close(&c, false);
        CHECK(rc == 0, "violation %d: no close %u", i, code);
        atomic_fetch_add(&ws_seen.reasons[FE_CLOSE_WS_PROTOCOL], 1);
    }
    return 0;
}

/* Clients that leave mid-frame (binary or text, FIN or reset), or mid-head. */
static int ws_vanish(unsigned int *seed)
{
    for (int i = 0; i < 6; i++) {
        client c;
        unsigned char frame[3000 + 14], payload[3000];
        size_t n = 100 + (size_t)rand_r(seed) % 2900;
        ws_payload(payload, n, i % 2, seed);
        size_t len = ws_frame(frame, WS_FIN | (i % 2 ? WS_TEXT : WS_BINARY), payload, n, seed);
        if (i == 5) { /* half a request head */
            if (client_open(&c, seed) != 0)
                return -1;
            char request[512], key[25];
            size_t rlen = ws_request(request, sizeof request, key, seed);
            client_send(&c, (unsigned char *)request, rlen / 2);
        } else {
            if (ws_open(&c, seed, NULL, 0) != 0)
                return -1;
            client_send(&c, frame, (size_t)rand_r(seed) % len);
        }
        if (i % 3 == 0) {
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        client_close(&c, false);
    }
    return 0;
}

/* Silent clients: connected (over TLS, handshaken) and then nothing, or
 * half a request head: each must be closed, unanswered, once
 * ws_handshake_timeout_ms has passed, and not before. */
static void ws_silent_open(client *silent, unsigned int *seed)
{
    for (int i = 0; i < WS_SILENT; i++) {
        if (client_open(&silent[i], NULL) != 0) {
            silent[i].fd = -1;
            continue;
        }
        char request[512], key[25];
        size_t len = ws_request(request, sizeof request, key, seed);
        if (i % 2 && client_send(&silent[i], (unsigned char *)request, len - 4) != 0)
            EXPECT(0, "silent client %d could not send", i);
    }
}

static int ws_silent_wait(client *silent, int64_t opened_ms)
{
    int rc = 0;
    for (int i = 0; i < WS_SILENT; i++) {
        if (silent[i].fd < 0)
            continue;
        unsigned char byte;
        ssize_t n = client_recv_some(&silent[i], &byte, 1); /* 0 or -1 at the close (plain: FIN or reset) */
        int64_t waited = now_ms() - opened_ms;
        client_close(&silent[i], false);
        if (n > 0 || waited < WS_TIMEOUT_MS || waited > WS_TIMEOUT_MS + 8000) {
            fprintf(stderr, "stress_core: silent ws client %d: %zd bytes after %lld ms (timeout %d ms)\n", i, n,
                    (long long)waited, WS_TIMEOUT_MS);
            atomic_fetch_add(&failures, 1);
            rc = -1;
            continue;
        }
        atomic_fetch_add(&ws_seen.reasons[FE_CLOSE_WS_TIMEOUT], 1);
    }
    return rc;
}

static void *ws_rogue_main(void *arg)
{
    (void)arg;
    block_sigpipe();
    unsigned int seed = 31337;
    client silent[WS_SILENT];
    int64_t opened = now_ms();
    ws_silent_open(silent, &seed);
    for (int round = 0; round < 2; round++)
        if (ws_http_cases(&seed) != 0 || ws_violations(&seed) != 0 || ws_vanish(&seed) != 0)
            break;
    ws_silent_wait(silent, opened);
    forget_sessions();
    return NULL;
}

/* ---- the stop ---- */

/* Clients caught by the stop, by what they were doing: */
enum ws_linger_kind {
    WL_IDLE,       /* upgraded, between messages */
    WL_HALF_TEXT,  /* half a text frame sent (held, never to be echoed) */
    WL_FRAGMENT,   /* a fragment and a ping sent (the pong came back) */
    WL_MID_BINARY, /* part of a binary frame sent and its echo read: the rest is sent after the stop */
    WL_HALF_HEAD,  /* half its request head sent: the rest after the stop */
    WL_SILENT,     /* connected, nothing sent: closed when the drain ends */
    WL_KINDS
};

typedef struct ws_lingerer {
    client c;
    enum ws_linger_kind kind;
    unsigned char *frame, *payload; /* WL_MID_BINARY: its frame, and the payload it carries */
    size_t frame_len, sent, hlen;
    char request[512], key[25]; /* WL_HALF_HEAD */
    size_t request_len;
} ws_lingerer;

static int ws_linger_begin(ws_lingerer *l, enum ws_linger_kind kind, unsigned int *seed)
{
    memset(l, 0, sizeof *l);
    l->kind = kind;
    l->c.fd = -1;
    if (kind == WL_HALF_HEAD || kind == WL_SILENT) {
        if (client_open(&l->c, seed) != 0) {
            l->c.fd = -1;
            return -1;
        }
        l->request_len = ws_request(l->request, sizeof l->request, l->key, seed);
        return kind == WL_SILENT ? 0 : client_send(&l->c, (unsigned char *)l->request, l->request_len / 2);
    }
    if (ws_open(&l->c, seed, NULL, 0) != 0) {
        l->c.fd = -1;
        return -1;
    }
    unsigned char text[2000];
    ws_utf8(text, sizeof text, seed);
    if (kind == WL_HALF_TEXT) {
        unsigned char frame[sizeof text + 14];
        size_t len = ws_frame(frame, WS_FIN | WS_TEXT, text, sizeof text, seed);
        return client_send(&l->c, frame, len / 2);
    }
    if (kind == WL_FRAGMENT) {
        return ws_send(&l->c, WS_TEXT, text, sizeof text / 2, seed) == 0 &&
                       ws_send(&l->c, WS_FIN | WS_PING, text, 10, seed) == 0
                   ? ws_expect(&l->c, WS_PONG, text, 10)
                   : -1;
    }
    if (kind != WL_MID_BINARY)
        return 0;
    l->payload = malloc(WS_MID_TOTAL);
    l->frame = malloc(WS_MID_TOTAL + 14);
    CHECK(l->payload && l->frame, "out of memory");
    ws_payload(l->payload, WS_MID_TOTAL, false, seed);
    l->frame_len = ws_frame(l->frame, WS_FIN | WS_BINARY, l->payload, WS_MID_TOTAL, seed);
    l->hlen = l->frame_len - WS_MID_TOTAL;
    l->sent = l->hlen + WS_MID_SENT;
    unsigned char echo[WS_MID_SENT];
    unsigned b0;
    uint64_t len;
    /* Its echo's header and what was sent of the payload came back: the
     * server is inside the frame's echo when the stop comes. */
    CHECK(client_send(&l->c, l->frame, l->sent) == 0 && ws_recv_header(&l->c, &b0, &len) == 0 &&
              len == WS_MID_TOTAL && client_recv(&l->c, echo, sizeof echo) == 0 &&
              memcmp(echo, l->payload, sizeof echo) == 0,
          "a lingering binary frame's first %d bytes did not come back", WS_MID_SENT);
    return 0;
}

/* After the stop began: what each finishes, then close 1001 "going away"
 * (our own close frame sent back, as a client should, and discarded), then
 * the end. A silent one gets no answer at all. */
static int ws_linger_end(ws_lingerer *l, unsigned int *seed)
{
    int rc = 0;
    if (l->kind == WL_SILENT) {
        unsigned char byte;
        rc = client_recv_some(&l->c, &byte, 1) > 0 ? -1 : 0;
    } else {
        if (l->kind == WL_HALF_HEAD) {
            rc = client_send(&l->c, (unsigned char *)l->request + l->request_len / 2,
                             l->request_len - l->request_len / 2);
            rc = rc == 0 ? ws_expect_upgrade(&l->c, l->key) : rc;
        } else if (l->kind == WL_MID_BINARY) {
            unsigned char *echo = malloc(WS_MID_TOTAL - WS_MID_SENT);
            rc = echo && client_send(&l->c, l->frame + l->sent, l->frame_len - l->sent) == 0 &&
                         client_recv(&l->c, echo, WS_MID_TOTAL - WS_MID_SENT) == 0 &&
                         memcmp(echo, l->payload + WS_MID_SENT, WS_MID_TOTAL - WS_MID_SENT) == 0
                     ? 0
                     : -1;
            free(echo);
            if (rc == 0)
                atomic_fetch_add(&ws_seen.messages, 1);
        }
        unsigned char going[2] = {1001 >> 8, 1001 & 0xFF};
        rc = rc == 0 ? ws_expect_close(&l->c, 1001, "going away") : rc;
        if (rc == 0) /* (the server reads no more: its FIN may come first) */
            ws_send(&l->c, WS_FIN | WS_CLOSE, going, 2, seed);
    }
    client_close(&l->c, false);
    free(l->frame);
    free(l->payload);
    CHECK(rc == 0, "lingering ws client (kind %d) did not get its echo, close 1001 and end", l->kind);
    atomic_fetch_add(&ws_seen.reasons[FE_CLOSE_SHUTDOWN], 1);
    return 0;
}

/* The stop with clients of every lingering kind connected: close 1001 for
 * each upgraded one (and for one that upgrades during the drain), the
 * binary frame that was part-way finished first; the silent ones closed
 * when the drain ends. */
static void ws_stop(fe_server *srv, int listen_fd)
{
    enum { COUNT = WL_KINDS * WS_LINGER_ROUNDS };
    ws_lingerer *lingering = calloc(COUNT, sizeof *lingering);
    unsigned int seed = 2024;
    fe_stats st;
    fe_server_stats(srv, &st);
    uint64_t accepted = st.connections_accepted;
    for (int i = 0; lingering && i < COUNT; i++)
        EXPECT(ws_linger_begin(&lingering[i], (enum ws_linger_kind)(i % WL_KINDS), &seed) == 0,
               "lingering ws client %d (kind %d) could not begin", i, i % WL_KINDS);
    /* Stop only once the server took every one (not left in the backlog). */
    for (int tries = 0; tries < 5000 && st.connections_accepted < accepted + COUNT; tries++) {
        sleep_ms(1);
        fe_server_stats(srv, &st);
    }
    int64_t stop_at = now_ms();
    fe_server_shutdown(srv, WS_DRAIN_MS, 500);
    close(listen_fd);
    for (int pass = 0; pass < 2; pass++) /* the silent ones last: they wait for the drain to end */
        for (int i = 0; lingering && i < COUNT; i++)
            if (lingering[i].c.fd >= 0 && (lingering[i].kind == WL_SILENT) == (pass == 1))
                ws_linger_end(&lingering[i], &seed);
    wait_stopped(srv);
    int64_t waited = now_ms() - stop_at;
    EXPECT(waited >= WS_DRAIN_MS - 50, "the workers were gone %lld ms after the stop, before the drain ended "
           "(the silent clients were still open)", (long long)waited);
    forget_sessions();
    free(lingering);
}

/* ---- hoarders and the run ---- */

/* A hoarder's beginning: an upgrade, then the header of a huge frame that
 * its junk is the payload of: binary (streamed: the echo fills its output)
 * or text (held: it fills the message buffer; the junk is ASCII). */
static int ws_hoarder_begin(client *c, int i)
{
    unsigned int seed = 555u + (unsigned)i;
    unsigned char key[4] = {0, 0, 0, 0}, h[14]; /* a zero mask: the junk goes in as it is */
    size_t len = ws_header(h, WS_FIN | (i % 2 ? WS_TEXT : WS_BINARY), WS_MAX_MESSAGE, 0, key);
    return ws_upgrade(c, &seed, h, len);
}

/* The server's counters against what the clients were answered. */
static int ws_check(const fe_stats *st)
{
    unsigned reason_sum = 0;
    for (int k = 0; k < FE_WS_HTTP_COUNT; k++)
        EXPECT(st->ws_http[k] == atomic_load(&ws_seen.http[k]), "ws_http[%d] %llu, clients were answered %u",
               fe_ws_http_status(k), (unsigned long long)st->ws_http[k], atomic_load(&ws_seen.http[k]));
    for (int k = 0; k < FE_WS_CLOSE_SLOTS; k++)
        EXPECT(st->ws_closes[k] == atomic_load(&ws_seen.closes[k]), "ws_closes[%d] %llu, clients got %u", k,
               (unsigned long long)st->ws_closes[k], atomic_load(&ws_seen.closes[k]));
    EXPECT(st->ws_messages == atomic_load(&ws_seen.messages), "ws_messages %llu, clients got %u back",
           (unsigned long long)st->ws_messages, atomic_load(&ws_seen.messages));
    EXPECT(st->ws_pings == atomic_load(&ws_seen.pongs), "ws_pings %llu, clients got %u pongs",
           (unsigned long long)st->ws_pings, atomic_load(&ws_seen.pongs));
    static const int exact[] = {FE_CLOSE_HTTP, FE_CLOSE_WS_TIMEOUT, FE_CLOSE_WS_CLOSE, FE_CLOSE_WS_PROTOCOL,
                                FE_CLOSE_SHUTDOWN, FE_CLOSE_NO_MEMORY};
    for (size_t k = 0; k < sizeof exact / sizeof exact[0]; k++) {
        unsigned want = atomic_load(&ws_seen.reasons[exact[k]]);
        reason_sum += want;
        EXPECT(st->closes[exact[k]] == want, "closes[%s] %llu, caused %u", fe_close_reason_name(exact[k]),
               (unsigned long long)st->closes[exact[k]], want);
    }
    /* The rest left on their own, mid-frame or not. */
    uint64_t left = st->closes[FE_CLOSE_EOF] + st->closes[FE_CLOSE_RESET];
    EXPECT(st->connections_closed == reason_sum + left, "%llu closed: %u caused, %llu eof or reset, and %llu else",
           (unsigned long long)st->connections_closed, reason_sum, (unsigned long long)left,
           (unsigned long long)(st->connections_closed - reason_sum - left));
    if (atomic_load(&failures) == 0)
        return 0;
    fprintf(stderr, "stress_core: closes by reason:");
    for (int k = 1; k < FE_CLOSE_REASON_COUNT; k++)
        if (st->closes[k])
            fprintf(stderr, " %s=%llu", fe_close_reason_name(k), (unsigned long long)st->closes[k]);
    fprintf(stderr, "\n");
    return -1;
}

/* A ws run (wss when tls_run): WS_THREADS clients' sessions beside the
 * rogue clients (and in a budget run, hoarders holding the budget), then
 * the stop with lingering clients. */
static int ws_run(bool budget)
{
    int64_t started = now_ms();
    memset(&ws_seen, 0, sizeof ws_seen);
    atomic_store(&verified_in, 0);
    atomic_store(&verified_out, 0);
    fe_config cfg;
    fe_config_init(&cfg);
    cfg.io_backend = io_backend_run;
    cfg.threads = 3;
    cfg.queue_capacity = 8;
    cfg.max_pending_output = 16 * 1024; /* small: the streamed echoes meet it */
    cfg.read_buffer_size = 4096;
    cfg.event_ring_size = 16; /* small: drops happen too */
    cfg.ws_path = ws_path;
    cfg.ws_path_len = sizeof ws_path - 1;
    cfg.ws_max_message = WS_MAX_MESSAGE;
    cfg.ws_max_header = WS_MAX_HEADER;
    cfg.ws_handshake_timeout_ms = WS_TIMEOUT_MS;
    cfg.tls_handshake_timeout_ms = TLS_TIMEOUT_MS;
    if (budget) {
        cfg.max_memory = BUDGET_BYTES;
        cfg.max_pending_output = 512 * 1024;
    }
    fe_listener listener = {.tls = tls_run, .ws = true};
    fe_server *srv = serve(&cfg, &listener, tls_run ? tls_a : NULL);
    if (srv == NULL)
        return 1;
    client hoarders[HOARDERS];
    if (budget)
        hoard(srv, hoarders, ws_hoarder_begin);
    atomic_store(&stop_stats_reader, false);
    pthread_t stats_reader, rogue_thread, clients[WS_THREADS];
    pthread_create(&stats_reader, NULL, stats_reader_main, srv);
    pthread_create(&rogue_thread, NULL, ws_rogue_main, NULL);
    for (int i = 0; i < WS_THREADS; i++)
        pthread_create(&clients[i], NULL, ws_client_main, (void *)(uintptr_t)(i + 1));
    if (budget) {
        /* The clients meet the spent budget (a held message cannot grow
         * then, a streamed echo waits), then it is freed: all goes on. */
        sleep_ms(300);
        close_hoarders(hoarders);
    }
    for (int i = 0; i < WS_THREADS; i++)
        pthread_join(clients[i], NULL);
    pthread_join(rogue_thread, NULL);
    ws_stop(srv, listener.fd);
    atomic_store(&stop_stats_reader, true);
    pthread_join(stats_reader, NULL);
    fe_stats st;
    fe_server_stats(srv, &st);
    fe_server_destroy(srv);
    printf("%s%s accepted=%llu closed=%llu upgrades=%llu messages=%llu pings=%llu in=%llu out=%llu "
           "budget-waits=%llu (%.1f s)\n",
           tls_run ? "wss" : "ws", budget ? "+budget" : "", (unsigned long long)st.connections_accepted,
           (unsigned long long)st.connections_closed, (unsigned long long)st.ws_http[FE_WS_HTTP_UPGRADE],
           (unsigned long long)st.ws_messages, (unsigned long long)st.ws_pings,
           (unsigned long long)st.bytes_received, (unsigned long long)st.bytes_sent,
           (unsigned long long)st.memory_budget_waits, (double)(now_ms() - started) / 1000);
    fflush(stdout);
    check_stopped(&st);
    check_bytes(&st, true); /* (the page and the 101s are longer than their requests) */
    ws_check(&st);
    return 0;
}

/* ws, ws with the memory budget, and wss. */
static int ws_runs(void)
{
    if (!fe_ws_available()) {
        printf("stress_core: this core serves no ws listeners: no ws runs\n");
        return 0;
    }
    if (tls_setup() != 0)
        return 1;
    int rc = ws_run(false) != 0 || ws_run(true) != 0;
    tls_run = true;
    rc = rc || ws_run(false) != 0;
    tls_run = false;
    tls_teardown();
    return rc;
}
#endif

/* ---------------------------------------------------------------- UDP */

/* UDP runs. Every datagram a client sends names itself, so that each reply
 * is checked byte for byte with no per-datagram state: from UDP_HEADER
 * bytes up, a header (magic, the sending socket's id, a sequence number,
 * the length) followed by bytes drawn from (id, seq); below that, a fixed
 * pattern of its length, counted per length. A reply is good only if it
 * comes from the server's address and is exactly one that its socket sent
 * and has not had back yet (id, length and every byte): a corrupted,
 * truncated, duplicated or foreign reply fails the run.
 *
 * A datagram that never comes back is no failure by itself: UDP may lose
 * it, even on loopback, when a socket's receive buffer is full. Each such
 * loss is counted by the kernel on the socket that dropped it (SO_MEMINFO
 * for the clients' sockets; /proc/net/udp for the server's, since the core
 * opened most of them), so the totals must still add up exactly at the
 * end. The one loss no socket counts is the per-CPU backlog's
 * (netdev_max_backlog, counted system-wide in /proc/net/softnet_stat): a
 * run may lose at most as many datagrams as that counter rose meanwhile. */

enum {
    UDP_MAX_PAYLOAD = 65507, /* the largest IPv4 UDP payload */
    UDP_HEADER = 16,         /* magic, id, seq, length: 4 bytes each */
    UDP_MAX_SEQ = 1 << 15,   /* headed datagrams per client socket (its bitmap of replies) */
    UDP_WINDOW = 8,          /* datagrams sent per socket before waiting for their replies */
    UDP_WAIT_MS = 250,       /* for a window's replies before counting the rest as missing */
    UDP_MAX_SOCKETS = 4,     /* client sockets per thread */
    UDP_MAX_THREADS = 8,
    UDP_RATE = 400,          /* the rate run's udp_rate */
    UDP_TRUNC_AT = 1000,     /* the filter run's udp_max_datagram */
};
#define UDP_MAGIC 0x46455544u /* "FEUD" */
/* The server's UDP receive buffer (the siblings copy it): room for a few
 * hundred big datagrams, so that its sockets rarely drop under these runs. */
#define UDP_SERVER_RCVBUF (4 << 20)

/* The UDP listeners' addresses (index 0: 127.0.0.1, 1: ::1). */
static struct sockaddr_in udp_addr4;
static struct sockaddr_in6 udp_addr6;
static bool udp_have_v6; /* ::1 can be bound here */
static atomic_bool udp_stop_clients;
static atomic_ulong udp_snapshots; /* stats read by the UDP stats reader */
static atomic_ullong udp_sent_total; /* datagrams sent by every client, ever */

/* One client socket and what it sent and had back. */
typedef struct udp_client {
    int fd;         /* -1: none */
    int fam;        /* 0: IPv4, 1: IPv6 (the listener it sends to) */
    uint32_t id;    /* unique in the process: in every headed datagram */
    uint32_t next_seq;
    unsigned char *seen; /* UDP_MAX_SEQ bits: which headed datagrams came back */
    uint32_t small_sent[UDP_HEADER], small_got[UDP_HEADER];
    uint64_t sent, sent_bytes, got, got_bytes;
} udp_client;

static atomic_uint udp_next_id = 1;

static uint64_t splitmix(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* What datagram (id, seq) of len bytes holds from UDP_HEADER on. */
static void udp_body(unsigned char *out, uint32_t id, uint32_t seq, size_t len)
{
    uint64_t state = ((uint64_t)id << 32) | seq;
    for (size_t i = UDP_HEADER; i < len; i += 8) {
        uint64_t r = splitmix(&state);
        memcpy(out + i, &r, len - i < 8 ? len - i : 8);
    }
}

/* The bytes of a datagram too short for a header. */
static void udp_small(unsigned char *out, size_t len)
{
    for (size_t i = 0; i < len; i++)
        out[i] = (unsigned char)(0xa5u ^ (len * 17u) ^ (i * 29u));
}

static const struct sockaddr *udp_dest(int fam, socklen_t *len)
{
    *len = fam ? (socklen_t)sizeof udp_addr6 : (socklen_t)sizeof udp_addr4;
    return fam ? (const struct sockaddr *)&udp_addr6 : (const struct sockaddr *)&udp_addr4;
}

static void udp_client_close(udp_client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->seen);
    c->seen = NULL;
}

/* A client socket bound to the loopback address of fam and port (0: any);
 * rcvbuf > 0 sets its receive buffer. Returns 0, or -1 with errno set
 * (EACCES: a low port needs privileges). */
static int udp_client_open(udp_client *c, int fam, int rcvbuf, uint16_t port)
{
    memset(c, 0, sizeof *c);
    c->fam = fam;
    c->id = atomic_fetch_add(&udp_next_id, 1);
    c->fd = socket(fam ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    c->seen = calloc(UDP_MAX_SEQ / 8, 1);
    if (c->fd < 0 || c->seen == NULL) {
        int e = c->seen ? errno : ENOMEM;
        udp_client_close(c);
        errno = e;
        return -1;
    }
    if (rcvbuf > 0)
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int rc = fam ? bind(c->fd, (struct sockaddr *)&a6, sizeof a6) : bind(c->fd, (struct sockaddr *)&a4, sizeof a4);
    if (rc != 0) {
        int e = errno;
        udp_client_close(c);
        errno = e;
        return -1;
    }
    return 0;
}

/* A client socket on a port below 1024, or -1 where this process may not
 * bind one (not root, no CAP_NET_BIND_SERVICE). Tries at most 64 ports. */
static int udp_low_port_open(udp_client *c, int fam)
{
    for (unsigned port = 1023; port > 1023 - 64; port--) {
        if (udp_client_open(c, fam, 0, (uint16_t)port) == 0)
            return 0;
        if (errno != EADDRINUSE)
            return -1;
    }
    return -1;
}

/* Sends one datagram of len bytes (buf: room for UDP_MAX_PAYLOAD). */
static int udp_send(udp_client *c, unsigned char *buf, size_t len)
{
    if (len < UDP_HEADER) {
        udp_small(buf, len);
    } else {
        CHECK(c->next_seq < UDP_MAX_SEQ, "client socket %u is out of sequence numbers", c->id);
        uint32_t head[4] = {UDP_MAGIC, c->id, c->next_seq, (uint32_t)len};
        memcpy(buf, head, sizeof head);
        udp_body(buf, c->id, c->next_seq, len);
    }
    socklen_t dest_len;
    const struct sockaddr *dest = udp_dest(c->fam, &dest_len);
    ssize_t n;
    do {
        n = sendto(c->fd, buf, len, 0, dest, dest_len);
    } while (n < 0 && errno == EINTR);
    CHECK(n == (ssize_t)len, "sendto of %zu bytes returned %zd", len, n);
    if (len < UDP_HEADER)
        c->small_sent[len]++;
    else
        c->next_seq++;
    c->sent++;
    c->sent_bytes += len;
    atomic_fetch_add(&udp_sent_total, 1);
    return 0;
}

/* Whether from is the server's UDP address for fam. */
static bool udp_from_server(int fam, const struct sockaddr_storage *from, socklen_t len)
{
    if (fam == 0) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)from;
        return len == sizeof *a && a->sin_family == AF_INET && a->sin_port == udp_addr4.sin_port &&
               a->sin_addr.s_addr == udp_addr4.sin_addr.s_addr;
    }
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)from;
    return len == sizeof *a && a->sin6_family == AF_INET6 && a->sin6_port == udp_addr6.sin6_port &&
           memcmp(&a->sin6_addr, &udp_addr6.sin6_addr, sizeof a->sin6_addr) == 0;
}

/* Checks one reply of n bytes (scratch: room for UDP_MAX_PAYLOAD). */
static int udp_check_reply(udp_client *c, const unsigned char *buf, size_t n, unsigned char *scratch)
{
    if (n < UDP_HEADER) {
        udp_small(scratch, n);
        CHECK(memcmp(buf, scratch, n) == 0, "socket %u: a %zu-byte reply is no datagram it sent", c->id, n);
        CHECK(c->small_got[n] < c->small_sent[n], "socket %u: more %zu-byte replies than it sent (%u)", c->id, n,
              c->small_sent[n]);
        c->small_got[n]++;
    } else {
        uint32_t head[4];
        memcpy(head, buf, sizeof head);
        CHECK(head[0] == UDP_MAGIC && head[1] == c->id, "socket %u: a %zu-byte reply of socket %u (magic %08x)",
              c->id, n, head[1], head[0]);
        CHECK(head[2] < c->next_seq, "socket %u: a reply to datagram %u, which it never sent", c->id, head[2]);
        CHECK(head[3] == n, "socket %u: datagram %u of %u bytes came back with %zu", c->id, head[2], head[3], n);
        CHECK(!(c->seen[head[2] / 8] & (1u << head[2] % 8)), "socket %u: datagram %u came back twice", c->id,
              head[2]);
        udp_body(scratch, c->id, head[2], n);
        CHECK(memcmp(buf + UDP_HEADER, scratch + UDP_HEADER, n - UDP_HEADER) == 0,
              "socket %u: datagram %u (%zu bytes) came back corrupted", c->id, head[2], n);
        c->seen[head[2] / 8] |= (unsigned char)(1u << head[2] % 8);
    }
    c->got++;
    c->got_bytes += n;
    return 0;
}

/* Takes and checks every reply already queued on c (buf, scratch: 64 KiB
 * each). Returns -1 after a bad one. */
static int udp_take_replies(udp_client *c, unsigned char *buf, unsigned char *scratch)
{
    for (int i = 0; i < 100000; i++) { /* a queue holds far fewer */
        struct sockaddr_storage from;
        struct iovec iov = {.iov_base = buf, .iov_len = 65536};
        struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1};
        ssize_t n = recvmsg(c->fd, &msg, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        CHECK(n >= 0, "socket %u: recvmsg failed", c->id);
        CHECK(!(msg.msg_flags & MSG_TRUNC), "socket %u: a reply longer than 64 KiB", c->id);
        CHECK(udp_from_server(c->fam, &from, msg.msg_namelen), "socket %u: a datagram not from the server", c->id);
        if (udp_check_reply(c, buf, (size_t)n, scratch) != 0)
            return -1;
    }
    return 0;
}

/* Replies the kernel dropped on c because its receive buffer was full. */
static uint64_t udp_drops(const udp_client *c)
{
    uint32_t info[SK_MEMINFO_VARS] = {0};
    socklen_t len = sizeof info;
    if (c->fd < 0 || getsockopt(c->fd, SOL_SOCKET, SO_MEMINFO, info, &len) != 0)
        return 0;
    return info[SK_MEMINFO_DROPS];
}

/* Waits until every datagram c sent came back or was dropped on c, or
 * timeout_ms passed (the server or its socket dropped some). */
static int udp_wait_replies(udp_client *c, unsigned char *buf, unsigned char *scratch, int timeout_ms)
{
    int64_t until = now_ms() + timeout_ms;
    for (;;) { /* bounded by until */
        if (udp_take_replies(c, buf, scratch) != 0)
            return -1;
        int64_t left = until - now_ms();
        if (c->got + udp_drops(c) >= c->sent || left <= 0)
            return 0;
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        poll(&p, 1, left > 10 ? 10 : (int)left);
    }
}

/* A random size: one in four up to 1472 bytes (one Ethernet frame), the
 * rest anywhere up to max. */
static size_t udp_random_size(unsigned int *seed, size_t max)
{
    size_t small = max < 1472 ? max : 1472;
    return rand_r(seed) % 4 == 0 ? (size_t)rand_r(seed) % (small + 1) : (size_t)rand_r(seed) % (max + 1);
}

enum udp_client_kind { UDP_ECHO, UDP_HAMMER, UDP_UNTIL_STOPPED };

/* A client thread and its sockets, which outlive it: the main thread
 * drains them and reads their drop counts after the server went quiet. */
typedef struct udp_thread {
    pthread_t thread;
    enum udp_client_kind kind;
    unsigned int seed;
    int rounds;          /* UDP_ECHO: windows per socket */
    int64_t deadline_ms; /* UDP_HAMMER, UDP_UNTIL_STOPPED: when to stop at the latest */
    int socket_count;
    udp_client sockets[UDP_MAX_SOCKETS];
    unsigned char *buf, *scratch;
} udp_thread;

/* The sizes each echo socket sends first: both ends, and the header's edge. */
static const size_t udp_edge_sizes[UDP_WINDOW] = {0, 1, UDP_HEADER - 1, UDP_HEADER, UDP_HEADER + 1, 1472, 1473,
                                                  UDP_MAX_PAYLOAD};

/* Windows of UDP_WINDOW datagrams of random sizes on each socket, each
 * window's replies awaited (UDP_ECHO: a fixed number of rounds;
 * UDP_UNTIL_STOPPED: until udp_stop_clients, replies awaited briefly). */
static int udp_echo_client(udp_thread *t)
{
    bool until_stopped = t->kind == UDP_UNTIL_STOPPED;
    for (int round = 0; round < (until_stopped ? 100000 : t->rounds); round++) {
        if (until_stopped && (atomic_load(&udp_stop_clients) || now_ms() > t->deadline_ms))
            break;
        for (int s = 0; s < t->socket_count; s++) {
            for (int i = 0; i < UDP_WINDOW; i++) {
                size_t len = round == 0 ? udp_edge_sizes[i] : udp_random_size(&t->seed, UDP_MAX_PAYLOAD);
                if (udp_send(&t->sockets[s], t->buf, len) != 0)
                    return -1;
            }
        }
        for (int s = 0; s < t->socket_count; s++) {
            /* Once stopped there are no more replies: do not wait long. */
            int wait = until_stopped ? 20 : UDP_WAIT_MS;
            if (udp_wait_replies(&t->sockets[s], t->buf, t->scratch, wait) != 0)
                return -1;
        }
    }
    return 0;
}

/* Bursts of small datagrams from every socket, as fast as replies (few:
 * the rate limit drops most) can be taken, until the deadline. */
static int udp_hammer_client(udp_thread *t)
{
    for (int pass = 0; pass < 1000000 && now_ms() < t->deadline_ms; pass++) {
        struct pollfd p[UDP_MAX_SOCKETS];
        for (int s = 0; s < t->socket_count; s++) {
            udp_client *c = &t->sockets[s];
            for (int i = 0; i < UDP_WINDOW && c->next_seq < UDP_MAX_SEQ - UDP_WINDOW; i++) {
                if (udp_send(c, t->buf, (size_t)rand_r(&t->seed) % 600) != 0)
                    return -1;
            }
            if (udp_take_replies(c, t->buf, t->scratch) != 0)
                return -1;
            p[s] = (struct pollfd){.fd = c->fd, .events = POLLIN};
        }
        poll(p, (nfds_t)t->socket_count, 1); /* a breath, so that the server keeps up */
    }
    return 0;
}

static void *udp_client_main(void *arg)
{
    udp_thread *t = arg;
    if (t->kind == UDP_HAMMER)
        udp_hammer_client(t);
    else
        udp_echo_client(t);
    return NULL;
}

/* Opens thread t's sockets: count of them, alternating IPv4 and IPv6
 * from fam0 (when there is IPv6), every second one with a small receive
 * buffer, so that replies are lost on it and must be accounted for. */
static int udp_thread_init(udp_thread *t, enum udp_client_kind kind, int count, int fam0, unsigned int seed)
{
    memset(t, 0, sizeof *t);
    t->kind = kind;
    t->seed = seed;
    t->buf = malloc(65536);
    t->scratch = malloc(65536);
    CHECK(t->buf && t->scratch, "out of memory");
    for (int s = 0; s < count && s < UDP_MAX_SOCKETS; s++) {
        int fam = udp_have_v6 ? (fam0 + s) % 2 : 0;
        CHECK(udp_client_open(&t->sockets[s], fam, s % 2 ? 100000 : 1 << 20, 0) == 0, "UDP client socket");
        t->socket_count++;
    }
    return 0;
}

static void udp_thread_free(udp_thread *t)
{
    for (int s = 0; s < t->socket_count; s++)
        udp_client_close(&t->sockets[s]);
    free(t->buf);
    free(t->scratch);
}

/* What the clients of a run sent and had back, per family. */
typedef struct udp_totals {
    uint64_t sent[2], sent_bytes[2], got[2], got_bytes[2], drops[2];
} udp_totals;

/* Drains every client socket of threads (each thread joined) and sums. */
static void udp_collect(udp_thread *threads, int count, udp_client *extra, int extra_count, udp_totals *tot)
{
    memset(tot, 0, sizeof *tot);
    for (int i = 0; i < count + extra_count; i++) {
        udp_thread *t = i < count ? &threads[i] : NULL;
        int sockets = t ? t->socket_count : 1;
        for (int s = 0; s < sockets; s++) {
            udp_client *c = t ? &t->sockets[s] : &extra[i - count];
            if (c->fd < 0)
                continue;
            if (t)
                udp_take_replies(c, t->buf, t->scratch);
            else
                udp_take_replies(c, threads[0].buf, threads[0].scratch);
            tot->sent[c->fam] += c->sent;
            tot->sent_bytes[c->fam] += c->sent_bytes;
            tot->got[c->fam] += c->got;
            tot->got_bytes[c->fam] += c->got_bytes;
            tot->drops[c->fam] += udp_drops(c);
        }
    }
}

/* The server's sockets on a UDP listener's address: how many there are
 * (the caller's and each worker's), and how many datagrams their kernel
 * queues dropped (the "drops" column of /proc/net/udp{,6}). */
static int udp_server_sockets(int fam, uint64_t *drops)
{
    char want[40];
    if (fam == 0) {
        uint32_t a;
        memcpy(&a, &udp_addr4.sin_addr, 4);
        snprintf(want, sizeof want, "%08X:%04X", a, ntohs(udp_addr4.sin_port));
    } else {
        uint32_t a[4];
        memcpy(a, &udp_addr6.sin6_addr, 16);
        snprintf(want, sizeof want, "%08X%08X%08X%08X:%04X", a[0], a[1], a[2], a[3], ntohs(udp_addr6.sin6_port));
    }
    FILE *f = fopen(fam ? "/proc/net/udp6" : "/proc/net/udp", "r");
    *drops = 0;
    if (f == NULL)
        return -1;
    int sockets = 0;
    char line[512];
    for (int i = 0; i < 1000000 && fgets(line, sizeof line, f); i++) {
        char local[64];
        unsigned long inode, dropped;
        /* sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops */
        if (sscanf(line, " %*s %63s %*s %*s %*s %*s %*s %*s %*s %lu %*s %*s %lu", local, &inode, &dropped) == 3 &&
            strcmp(local, want) == 0) {
            sockets++;
            *drops += dropped;
        }
    }
    fclose(f);
    return sockets;
}

/* Datagrams the kernel's per-CPU backlogs dropped, system-wide. */
static uint64_t softnet_dropped(void)
{
    FILE *f = fopen("/proc/net/softnet_stat", "r");
    uint64_t total = 0;
    unsigned processed, dropped;
    for (int i = 0; f && i < 4096 && fscanf(f, "%x %x%*[^\n]", &processed, &dropped) == 2; i++)
        total += dropped;
    if (f)
        fclose(f);
    return total;
}

/* Open file descriptors of this process. */
static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    struct dirent *e;
    for (int i = 0; d && i < 1000000 && (e = readdir(d)) != NULL; i++)
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n - 1; /* opendir's own */
}

/* Reads the stats while UDP flows: no counter may ever go back. */
static void *udp_stats_reader_main(void *arg)
{
    fe_server *srv = arg;
    fe_stats prev, st;
    memset(&prev, 0, sizeof prev);
    for (int i = 0; i < 600000 && !atomic_load(&stop_stats_reader); i++) {
        fe_server_stats(srv, &st);
        atomic_fetch_add(&udp_snapshots, 1);
        bool backwards = st.connections_closed > st.connections_accepted;
        for (size_t l = 0; l < st.listener_count; l++) {
            backwards |= st.udp_in[l] < prev.udp_in[l] || st.udp_out[l] < prev.udp_out[l] ||
                         st.udp_bytes_in[l] < prev.udp_bytes_in[l] || st.udp_bytes_out[l] < prev.udp_bytes_out[l];
            for (int r = 0; r < FE_UDP_DROP_COUNT; r++)
                backwards |= st.udp_dropped[l][r] < prev.udp_dropped[l][r];
        }
        if (backwards) {
            fprintf(stderr, "stress_core: a UDP counter went back, or closed > accepted\n");
            atomic_fetch_add(&failures, 1);
            break;
        }
        prev = st;
        struct timespec pause = {.tv_nsec = 1000000};
        nanosleep(&pause, NULL);
    }
    return NULL;
}

/* udp_stats_reader_main on a thread of its own, until udp_stats_reader_stop. */
static void udp_stats_reader_start(pthread_t *reader, fe_server *srv)
{
    atomic_store(&stop_stats_reader, false);
    pthread_create(reader, NULL, udp_stats_reader_main, srv);
}

static void udp_stats_reader_stop(pthread_t reader)
{
    atomic_store(&stop_stats_reader, true);
    pthread_join(reader, NULL);
}

/* A UDP listener: a bound socket with SO_REUSEPORT set before bind (as
 * fe_listener.udp requires) and a big receive buffer, which the core's
 * sibling sockets copy. port 0: any. Fills udp_addr4 or udp_addr6. */
static int udp_listener_once(int fam, uint16_t port)
{
    int fd = socket(fam ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int one = 1, rcvbuf = UDP_SERVER_RCVBUF;
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf); /* up to net.core.rmem_max */
    if (fam)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    socklen_t len4 = sizeof udp_addr4, len6 = sizeof udp_addr6;
    int rc = setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (rc == 0 && fam)
        rc = bind(fd, (struct sockaddr *)&a6, sizeof a6) || getsockname(fd, (struct sockaddr *)&udp_addr6, &len6);
    else if (rc == 0)
        rc = bind(fd, (struct sockaddr *)&a4, sizeof a4) || getsockname(fd, (struct sockaddr *)&udp_addr4, &len4);
    if (rc != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* udp_listener_once, but alone on its address: SO_REUSEPORT would let a
 * socket of another process of this user on the same port take a share of
 * the datagrams (a few tries, then any port). */
static int udp_listener(int fam, uint16_t port)
{
    for (int i = 0; i < 8; i++) {
        int fd = udp_listener_once(fam, i < 4 ? port : 0);
        uint64_t ignored;
        if (fd < 0 || udp_server_sockets(fam, &ignored) == 1)
            return fd;
        close(fd);
    }
    errno = EADDRINUSE;
    return -1;
}

/* A UDP run's server: optionally a TCP listener (first), then a UDP
 * listener on 127.0.0.1 (on the TCP listener's port when that is free)
 * and one on ::1 where there is IPv6. */
typedef struct udp_setup {
    fe_server *srv;
    int tcp_fd;       /* -1: none */
    int udp_fd[2];    /* IPv4, IPv6; -1: none */
    size_t index[2];  /* their listener indexes */
    bool same_port;   /* the IPv4 UDP listener shares the TCP one's port */
} udp_setup;

static int udp_setup_start(udp_setup *u, const fe_config *cfg, bool with_tcp)
{
    memset(u, 0, sizeof *u);
    u->tcp_fd = u->udp_fd[0] = u->udp_fd[1] = -1;
    fe_listener listeners[3];
    size_t count = 0;
    if (with_tcp) {
        u->tcp_fd = listen_ephemeral(); /* sets server_addr, for the TCP clients */
        listeners[count++] = (fe_listener){.fd = u->tcp_fd};
        u->udp_fd[0] = udp_listener(0, ntohs(server_addr.sin_port));
        u->same_port = u->udp_fd[0] >= 0;
    }
    if (u->udp_fd[0] < 0)
        u->udp_fd[0] = udp_listener(0, 0);
    CHECK(u->udp_fd[0] >= 0, "cannot bind a UDP listener on 127.0.0.1");
    u->index[0] = count;
    listeners[count++] = (fe_listener){.fd = u->udp_fd[0], .udp = true};
    if (udp_have_v6) {
        u->udp_fd[1] = udp_listener(1, 0);
        CHECK(u->udp_fd[1] >= 0, "cannot bind a UDP listener on ::1");
        u->index[1] = count;
        listeners[count++] = (fe_listener){.fd = u->udp_fd[1], .udp = true};
    }
    char err[256];
    if (fe_server_create(cfg, &u->srv, err, sizeof err) != 0 ||
        start_server(u->srv, listeners, count, err, sizeof err) != 0) {
        fprintf(stderr, "stress_core: %s\n", err);
        atomic_fetch_add(&failures, 1);
        return -1;
    }
    return 0;
}

/* Stops (the caller's sockets stay open until fe_server_shutdown has
 * returned, as fe_server_start asks), destroys, and closes them. */
static int udp_setup_stop(udp_setup *u)
{
    fe_server_shutdown(u->srv, 0, 0);
    int stopped = fe_server_wait(u->srv, 10000);
    fe_server_destroy(u->srv);
    u->srv = NULL;
    for (int i = 0; i < 3; i++) {
        int *fd = i < 2 ? &u->udp_fd[i] : &u->tcp_fd;
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
    }
    CHECK(stopped, "workers did not stop within 10 s");
    return 0;
}

/* What the core dropped on listener `listener`, every reason together. */
static uint64_t udp_core_drops(const fe_stats *st, size_t listener)
{
    uint64_t dropped = 0;
    for (int r = 0; r < FE_UDP_DROP_COUNT; r++)
        dropped += st->udp_dropped[listener][r];
    return dropped;
}

/* The end of a UDP run: the server stopped and its sockets closed (see
 * udp_setup_stop), then the client threads' sockets and buffers freed. */
static int udp_run_teardown(udp_setup *u, udp_thread *threads, int count)
{
    if (udp_setup_stop(u) != 0)
        return -1;
    for (int i = 0; i < count; i++)
        udp_thread_free(&threads[i]);
    return 0;
}

/* Waits (at most 10 s) until the server has read every datagram that
 * reached its sockets and every reply reached a client socket or was
 * dropped there, then checks for each listener:
 *   sent    == udp_in + drops on the server's sockets
 *   udp_in  == udp_out + the core's drops, by reason
 *   udp_out == good replies + drops on the clients' sockets
 * exactly, except for what the backlogs dropped meanwhile (see above).
 * Fills st and tot with the final counts. */
static int udp_settle(udp_setup *u, udp_thread *threads, int count, udp_client *extra, int extra_count,
                      uint64_t softnet_before, fe_stats *st, udp_totals *tot, uint64_t server_drops[2])
{
    bool settled = false;
    for (int tries = 0; tries < 5000 && !settled; tries++) { /* 2 ms each */
        if (tries > 0) {
            struct timespec pause = {.tv_nsec = 2000000};
            nanosleep(&pause, NULL);
        }
        fe_server_stats(u->srv, st);
        udp_collect(threads, count, extra, extra_count, tot);
        settled = true;
        for (int f = 0; f < 2; f++) {
            if (u->udp_fd[f] < 0)
                continue;
            size_t l = u->index[f];
            uint64_t dropped = udp_core_drops(st, l);
            udp_server_sockets(f, &server_drops[f]);
            settled &= st->udp_in[l] + server_drops[f] == tot->sent[f] && st->udp_out[l] + dropped == st->udp_in[l] &&
                       tot->got[f] + tot->drops[f] == st->udp_out[l];
        }
    }
    uint64_t backlog = softnet_dropped() - softnet_before, unexplained = 0;
    for (int f = 0; f < 2; f++) {
        if (u->udp_fd[f] < 0)
            continue;
        size_t l = u->index[f];
        uint64_t dropped = udp_core_drops(st, l);
        CHECK(st->udp_out[l] + dropped == st->udp_in[l], "IPv%d: udp_in %llu != udp_out %llu + dropped %llu",
              f ? 6 : 4, (unsigned long long)st->udp_in[l], (unsigned long long)st->udp_out[l],
              (unsigned long long)dropped);
        CHECK(st->udp_in[l] + server_drops[f] <= tot->sent[f] && tot->got[f] + tot->drops[f] <= st->udp_out[l],
              "IPv%d: more arrived than was sent: sent %llu, udp_in %llu + server socket drops %llu; udp_out %llu, "
              "replies %llu + client socket drops %llu",
              f ? 6 : 4, (unsigned long long)tot->sent[f], (unsigned long long)st->udp_in[l],
              (unsigned long long)server_drops[f], (unsigned long long)st->udp_out[l],
              (unsigned long long)tot->got[f], (unsigned long long)tot->drops[f]);
        unexplained += tot->sent[f] - st->udp_in[l] - server_drops[f] + st->udp_out[l] - tot->got[f] - tot->drops[f];
    }
    CHECK(unexplained <= backlog, "%llu datagrams lost where no socket counted them, and the backlogs dropped %llu",
          (unsigned long long)unexplained, (unsigned long long)backlog);
    if (unexplained > 0)
        printf("  udp: %llu datagrams lost in the backlogs (softnet dropped %llu meanwhile)\n",
               (unsigned long long)unexplained, (unsigned long long)backlog);
    return 0;
}

static void udp_start_threads(udp_thread *threads, int count)
{
    for (int i = 0; i < count; i++)
        pthread_create(&threads[i].thread, NULL, udp_client_main, &threads[i]);
}

static void udp_join_threads(udp_thread *threads, int count)
{
    for (int i = 0; i < count; i++)
        pthread_join(threads[i].thread, NULL);
}

/* The last check of every UDP run, after its report: each fd it opened is
 * closed again. Flushes the report, so that it is out before the next run. */
static int udp_run_check_fds(int fds_before, int fds_after)
{
    CHECK(fds_after == fds_before, "fds leaked: %d before, %d after", fds_before, fds_after);
    fflush(stdout);
    return 0;
}

static void *tcp_neighbor_main(void *arg)
{
    unsigned int seed = (unsigned int)(uintptr_t)arg;
    for (int i = 0; i < 8; i++)
        if (one_round(&seed) != 0)
            break;
    return NULL;
}

/* Echo: UDP clients on both families send datagrams of every size up to
 * 65,507 bytes in windows, next to TCP clients on the same server (and
 * port), with the stats read all along; every reply is checked and every
 * datagram accounted for. */
static int udp_echo_run(void)
{
    int64_t started = now_ms();
    int fds_before = count_fds();
    uint64_t softnet_before = softnet_dropped();
    atomic_store(&verified_in, 0);
    atomic_store(&verified_out, 0);
    fe_config cfg;
    fe_config_init(&cfg);
    cfg.io_backend = io_backend_run;
    cfg.threads = 2;
    cfg.max_pending_output = 16 * 1024;
    udp_setup u;
    if (udp_setup_start(&u, &cfg, true) != 0)
        return -1;
    enum { THREADS = 3 };
    udp_thread threads[THREADS];
    for (int i = 0; i < THREADS; i++) {
        if (udp_thread_init(&threads[i], UDP_ECHO, 2, i % 2, 1000u + (unsigned)i) != 0)
            return -1;
        threads[i].rounds = 30;
    }
    atomic_store(&udp_snapshots, 0);
    pthread_t reader, tcp[2];
    udp_stats_reader_start(&reader, u.srv);
    for (int i = 0; i < 2; i++)
        pthread_create(&tcp[i], NULL, tcp_neighbor_main, (void *)(uintptr_t)(31u + (unsigned)i));
    udp_start_threads(threads, THREADS);
    udp_join_threads(threads, THREADS);
    for (int i = 0; i < 2; i++)
        pthread_join(tcp[i], NULL);

    fe_stats st;
    udp_totals tot;
    uint64_t server_drops[2] = {0, 0};
    udp_settle(&u, threads, THREADS, NULL, 0, softnet_before, &st, &tot, server_drops);
    udp_stats_reader_stop(reader);
    for (int f = 0; f < 2; f++) {
        if (u.udp_fd[f] < 0)
            continue;
        size_t l = u.index[f];
        const uint64_t *d = st.udp_dropped[l];
        printf("udp echo IPv%d: sent=%llu in=%llu out=%llu replies=%llu bytes in=%llu out=%llu lost: server "
               "socket=%llu client sockets=%llu send-buffer-full=%llu send-error=%llu\n",
               f ? 6 : 4, (unsigned long long)tot.sent[f], (unsigned long long)st.udp_in[l],
               (unsigned long long)st.udp_out[l], (unsigned long long)tot.got[f],
               (unsigned long long)st.udp_bytes_in[l], (unsigned long long)st.udp_bytes_out[l],
               (unsigned long long)server_drops[f], (unsigned long long)tot.drops[f],
               (unsigned long long)d[FE_UDP_DROP_SEND_FULL], (unsigned long long)d[FE_UDP_DROP_SEND_ERROR]);
        /* No filter applies here: only the send path may drop. */
        EXPECT(d[FE_UDP_DROP_LOW_PORT] + d[FE_UDP_DROP_NOT_ALLOWED] + d[FE_UDP_DROP_RATE] + d[FE_UDP_DROP_TRUNCATED] == 0,
              "IPv%d: filters dropped datagrams in the echo run", f ? 6 : 4);
        EXPECT(tot.got[f] > 0, "IPv%d: no reply at all", f ? 6 : 4);
        /* Bytes: exact where nothing was lost on the way in (out). */
        EXPECT(st.udp_bytes_in[l] <= tot.sent_bytes[f] && st.udp_bytes_out[l] >= tot.got_bytes[f] &&
                  st.udp_bytes_out[l] <= st.udp_bytes_in[l],
              "IPv%d: bytes in %llu (sent %llu) out %llu (replies %llu)", f ? 6 : 4,
              (unsigned long long)st.udp_bytes_in[l], (unsigned long long)tot.sent_bytes[f],
              (unsigned long long)st.udp_bytes_out[l], (unsigned long long)tot.got_bytes[f]);
        if (st.udp_in[l] == tot.sent[f])
            EXPECT(st.udp_bytes_in[l] == tot.sent_bytes[f], "IPv%d: every datagram arrived, but bytes in %llu != %llu",
                  f ? 6 : 4, (unsigned long long)st.udp_bytes_in[l], (unsigned long long)tot.sent_bytes[f]);
        if (tot.got[f] == st.udp_out[l])
            EXPECT(st.udp_bytes_out[l] == tot.got_bytes[f], "IPv%d: every reply arrived, but bytes out %llu != %llu",
                  f ? 6 : 4, (unsigned long long)st.udp_bytes_out[l], (unsigned long long)tot.got_bytes[f]);
    }
    EXPECT(atomic_load(&udp_snapshots) > 0, "the stats were never read during the run");
    EXPECT(st.bytes_received >= atomic_load(&verified_in) && st.connections_accepted > 0,
          "TCP next to UDP: received %llu, verified %llu", (unsigned long long)st.bytes_received,
          (unsigned long long)atomic_load(&verified_in));
    if (udp_run_teardown(&u, threads, THREADS) != 0)
        return -1;
    int fds_after = count_fds();
    printf("udp echo: TCP on the %s port, stats read %lu times, fds %d before and %d after (%.1f s)\n",
           u.same_port ? "same" : "another", atomic_load(&udp_snapshots), fds_before, fds_after,
           (double)(now_ms() - started) / 1000);
    return udp_run_check_fds(fds_before, fds_after);
}

/* The rate table alone, with the clock in the test's hands:
 *  - workers read the clock once per batch, so takes reach the table with
 *    timestamps out of order; an earlier one must not let the next take
 *    refill the same time again;
 *  - threads with clocks skewed apart hammer 64 sources spread over the
 *    striped locks: none may get more than rate * (1 + the span of the
 *    timestamps given), nor less than its first burst;
 *  - threads hammer a tiny table with sources it has never seen (eviction
 *    all the time, under the locks): each must get its full first bucket. */
enum { RATE_THREADS = 4, RATE_TAKES = 20000, RATE_SOURCES = 64, RATE_PER_S = 1000 };
static fe_rate_table rate_table;
static atomic_uint rate_granted[RATE_SOURCES], rate_takes[RATE_SOURCES];
static atomic_uint rate_flood_granted;
#define RATE_BASE_NS ((int64_t)1000000000 * 1000)
#define RATE_STEP_NS 1000        /* each thread's clock: 1 us per take */
#define RATE_SKEW_NS 3000000     /* and 3 ms apart from the next thread's */

static fe_peer rate_source(unsigned i, bool v6)
{
    fe_peer p = {.family = v6 ? 6 : 4};
    if (v6) {
        memcpy(p.addr, "\x20\x01\x0d\xb8", 4); /* 2001:db8::/32, documentation */
        memcpy(p.addr + 12, &i, 4);
    } else {
        p.addr[0] = 198, p.addr[1] = (uint8_t)(18 + (i >> 16 & 1)); /* 198.18.0.0/15, benchmarking */
        p.addr[2] = (uint8_t)(i >> 8), p.addr[3] = (uint8_t)i;
    }
    return p;
}

static void *rate_hammer_main(void *arg)
{
    unsigned k = (unsigned)(uintptr_t)arg, seed = 17 + k;
    for (int i = 0; i < RATE_TAKES; i++) {
        unsigned src = (unsigned)rand_r(&seed) % RATE_SOURCES;
        fe_peer p = rate_source(src, src % 2);
        atomic_fetch_add(&rate_takes[src], 1);
        if (fe_rate_take(&rate_table, &p, RATE_BASE_NS + (int64_t)k * RATE_SKEW_NS + (int64_t)i * RATE_STEP_NS))
            atomic_fetch_add(&rate_granted[src], 1);
    }
    return NULL;
}

static void *rate_flood_main(void *arg)
{
    unsigned k = (unsigned)(uintptr_t)arg;
    for (unsigned i = 0; i < RATE_TAKES / 4; i++) {
        fe_peer p = rate_source(k * RATE_TAKES + i + 0x10000u, i % 2); /* never seen before */
        if (fe_rate_take(&rate_table, &p, RATE_BASE_NS + (int64_t)i * RATE_STEP_NS))
            atomic_fetch_add(&rate_flood_granted, 1);
    }
    return NULL;
}

static int rate_table_run(void)
{
    int64_t started = now_ms();
    /* Out of order: a burst at T, then alternately T + 0.5 s (one worker)
     * and T (another, whose batch began earlier): 0.5 s adds 5 tokens at
     * 10/s, however often the earlier timestamp comes between. */
    CHECK(fe_rate_init(&rate_table, 10, 64) == 0, "fe_rate_init");
    fe_peer p = rate_source(1, false);
    unsigned granted = 0;
    for (int i = 0; i < 10; i++)
        granted += fe_rate_take(&rate_table, &p, RATE_BASE_NS);
    for (int i = 0; i < 100; i++) {
        granted += fe_rate_take(&rate_table, &p, RATE_BASE_NS + 500000000);
        granted += fe_rate_take(&rate_table, &p, RATE_BASE_NS);
    }
    fe_rate_destroy(&rate_table);
    CHECK(granted == 15, "rate 10/s: %u datagrams granted in 0.5 s with timestamps out of order (15 allowed)",
          granted);

    /* Contention on the striped locks. 64 sources in the server's table
     * size (8192 sets of 8): that any set gets 9 of them and evicts one
     * (which would then start a full bucket again) has odds below 1e-20. */
    CHECK(fe_rate_init(&rate_table, RATE_PER_S, 65536) == 0, "fe_rate_init");
    for (int i = 0; i < RATE_SOURCES; i++) {
        atomic_store(&rate_granted[i], 0);
        atomic_store(&rate_takes[i], 0);
    }
    pthread_t threads[RATE_THREADS];
    for (int k = 0; k < RATE_THREADS; k++)
        pthread_create(&threads[k], NULL, rate_hammer_main, (void *)(uintptr_t)k);
    for (int k = 0; k < RATE_THREADS; k++)
        pthread_join(threads[k], NULL);
    fe_rate_destroy(&rate_table);
    /* Every timestamp given lies in [base, base + span]. */
    int64_t span = (int64_t)(RATE_THREADS - 1) * RATE_SKEW_NS + (int64_t)(RATE_TAKES - 1) * RATE_STEP_NS;
    uint64_t most = RATE_PER_S + (uint64_t)RATE_PER_S * (uint64_t)span / 1000000000u, max_seen = 0;
    for (int i = 0; i < RATE_SOURCES; i++) {
        unsigned g = atomic_load(&rate_granted[i]), takes = atomic_load(&rate_takes[i]);
        max_seen = g > max_seen ? g : max_seen;
        CHECK(g <= most, "source %d: %u granted, at most %llu allowed", i, g, (unsigned long long)most);
        CHECK(g >= (takes < RATE_PER_S ? takes : RATE_PER_S), "source %d: %u of %u granted, its first burst is %d",
              i, g, takes, RATE_PER_S);
    }

    /* Constant eviction: a tiny table, sources never seen before. */
    CHECK(fe_rate_init(&rate_table, 1, 16) == 0, "fe_rate_init");
    atomic_store(&rate_flood_granted, 0);
    for (int k = 0; k < RATE_THREADS; k++)
        pthread_create(&threads[k], NULL, rate_flood_main, (void *)(uintptr_t)k);
    for (int k = 0; k < RATE_THREADS; k++)
        pthread_join(threads[k], NULL);
    fe_rate_destroy(&rate_table);
    CHECK(atomic_load(&rate_flood_granted) == RATE_THREADS * (RATE_TAKES / 4),
          "new sources in a full table: %u of %d granted", atomic_load(&rate_flood_granted),
          RATE_THREADS * (RATE_TAKES / 4));
    printf("rate table: out-of-order 15/15, hammered max %llu of %llu allowed, flood %u new sources granted (%.1f s)\n",
           (unsigned long long)max_seen, (unsigned long long)most, atomic_load(&rate_flood_granted),
           (double)(now_ms() - started) / 1000);
    fflush(stdout);
    return 0;
}

/* The rate limit through the server: many sockets on many threads, from
 * 127.0.0.1 and ::1 (one bucket each, every port of a source sharing it),
 * hammer 4 workers, which take tokens from the shared table at once. */
static int udp_rate_run(void)
{
    int64_t started = now_ms();
    int fds_before = count_fds();
    uint64_t softnet_before = softnet_dropped();
    fe_config cfg;
    fe_config_init(&cfg);
    cfg.io_backend = io_backend_run;
    cfg.threads = 4;
    cfg.udp_rate = UDP_RATE;
    udp_setup u;
    if (udp_setup_start(&u, &cfg, false) != 0)
        return -1;
    enum { THREADS = 6 };
    udp_thread threads[THREADS];
    int64_t t0 = now_ms(); /* before any datagram: the buckets start after this */
    for (int i = 0; i < THREADS; i++) {
        if (udp_thread_init(&threads[i], UDP_HAMMER, UDP_MAX_SOCKETS, i % 2, 2000u + (unsigned)i) != 0)
            return -1;
        threads[i].deadline_ms = t0 + 1000;
    }
    pthread_t reader;
    udp_stats_reader_start(&reader, u.srv);
    udp_start_threads(threads, THREADS);
    udp_join_threads(threads, THREADS);
    fe_stats st;
    udp_totals tot;
    uint64_t server_drops[2] = {0, 0};
    udp_settle(&u, threads, THREADS, NULL, 0, softnet_before, &st, &tot, server_drops);
    int64_t t1 = now_ms(); /* after every take */
    udp_stats_reader_stop(reader);
    for (int f = 0; f < 2; f++) {
        if (u.udp_fd[f] < 0)
            continue;
        size_t l = u.index[f];
        const uint64_t *d = st.udp_dropped[l];
        /* A token is taken for every datagram echoed or lost on the send. */
        uint64_t tokens = st.udp_out[l] + d[FE_UDP_DROP_SEND_FULL] + d[FE_UDP_DROP_SEND_ERROR];
        uint64_t most = UDP_RATE + (uint64_t)UDP_RATE * (uint64_t)(t1 - t0 + 1) / 1000;
        uint64_t least = st.udp_in[l] < UDP_RATE ? st.udp_in[l] : UDP_RATE; /* the first burst */
        printf("udp rate %d/s IPv%d: sent=%llu in=%llu out=%llu dropped rate=%llu replies=%llu, tokens %llu in "
               "[%llu, %llu] over %.2f s, lost: server socket=%llu client sockets=%llu\n",
               UDP_RATE, f ? 6 : 4, (unsigned long long)tot.sent[f], (unsigned long long)st.udp_in[l],
               (unsigned long long)st.udp_out[l], (unsigned long long)d[FE_UDP_DROP_RATE],
               (unsigned long long)tot.got[f], (unsigned long long)tokens, (unsigned long long)least,
               (unsigned long long)most, (double)(t1 - t0) / 1000, (unsigned long long)server_drops[f],
               (unsigned long long)tot.drops[f]);
        EXPECT(st.udp_in[l] == tokens + d[FE_UDP_DROP_RATE], "IPv%d: other drops than the rate's", f ? 6 : 4);
        EXPECT(tokens <= most && tokens >= least, "IPv%d: %llu tokens taken, outside [%llu, %llu]", f ? 6 : 4,
              (unsigned long long)tokens, (unsigned long long)least, (unsigned long long)most);
        EXPECT(d[FE_UDP_DROP_RATE] > 0, "IPv%d: the rate limit never dropped anything", f ? 6 : 4);
    }
    if (udp_run_teardown(&u, threads, THREADS) != 0)
        return -1;
    int fds_after = count_fds();
    printf("udp rate: %d threads x %d sockets, stats read %lu times (%.1f s)\n", THREADS, UDP_MAX_SOCKETS,
           atomic_load(&udp_snapshots), (double)(now_ms() - started) / 1000);
    return udp_run_check_fds(fds_before, fds_after);
}

/* The filters, each datagram's fate known in advance, in the core's order
 * (truncated, then low port, then the allow list), counted exactly:
 *  1. udp_max_datagram 1000 and an allow list of ::1 only (IPv4 is then
 *     never allowed; without IPv6, a range none of ours is in), with
 *     clients on ordinary and, as root, low ports; a TCP client from
 *     127.0.0.1 is refused by the same allow list;
 *  2. udp_allow_low_ports: the low-port clients are echoed (root only). */
static int udp_filter_case(bool allow_low)
{
    int64_t started = now_ms();
    int fds_before = count_fds();
    uint64_t softnet_before = softnet_dropped();
    fe_config cfg;
    fe_config_init(&cfg);
    cfg.io_backend = io_backend_run;
    cfg.threads = 2;
    fe_cidr allow = udp_have_v6 ? (fe_cidr){.family = 6, .prefix_len = 128, .addr = {[15] = 1}}
                                : (fe_cidr){.family = 4, .prefix_len = 24, .addr = {192, 0, 2}};
    if (!allow_low) {
        cfg.udp_max_datagram = UDP_TRUNC_AT;
        cfg.allow = &allow;
        cfg.allow_count = 1;
    }
    cfg.udp_allow_low_ports = allow_low;
    /* Clients: ordinary IPv4 and IPv6 sockets, and the same on low ports. */
    enum { CLIENTS = 4 };
    udp_client clients[CLIENTS];
    bool low[CLIENTS] = {false, false, true, true};
    int present = 0;
    for (int i = 0; i < CLIENTS; i++) {
        int fam = i % 2;
        clients[i].fd = -1;
        if (fam && !udp_have_v6)
            continue;
        int rc = low[i] ? udp_low_port_open(&clients[i], fam) : udp_client_open(&clients[i], fam, 1 << 20, 0);
        if (rc != 0 && low[i]) {
            if (fam == 0)
                printf("udp filters%s: cannot bind a port below 1024 (not root): %s\n",
                       allow_low ? " (low ports allowed)" : "",
                       allow_low ? "skipped" : "low-port drops not checked");
            clients[i].fd = -1;
            continue;
        }
        CHECK(rc == 0, "UDP client socket");
        present++;
    }
    if (allow_low && clients[2].fd < 0) {
        for (int i = 0; i < CLIENTS; i++)
            if (clients[i].fd >= 0)
                udp_client_close(&clients[i]);
        return 0; /* nothing to show without a low port */
    }
    udp_setup u;
    if (udp_setup_start(&u, &cfg, !allow_low) != 0)
        return -1;
    udp_thread scratch; /* only its buffers */
    if (udp_thread_init(&scratch, UDP_ECHO, 0, 0, 3000) != 0)
        return -1;
    /* Expected per family: drops by reason, replies, bytes read. */
    uint64_t expect[2][FE_UDP_DROP_COUNT] = {{0}}, expect_out[2] = {0, 0}, expect_bytes_in[2] = {0, 0};
    static const size_t edges[] = {0, 1, 15, 16, 999, 1000, 1001, 1472, UDP_MAX_PAYLOAD};
    unsigned int seed = 4321;
    size_t limit = allow_low ? 65535 : UDP_TRUNC_AT;
    for (int i = 0; i < CLIENTS; i++) {
        udp_client *c = &clients[i];
        if (c->fd < 0)
            continue;
        for (int k = 0; k < 40; k++) {
            size_t len = k < (int)(sizeof edges / sizeof edges[0]) ? edges[k] : (size_t)rand_r(&seed) % 3000;
            if (udp_send(c, scratch.buf, len) != 0)
                return -1;
            expect_bytes_in[c->fam] += len < limit ? len : limit; /* a truncated one: what was read */
            if (len > limit)
                expect[c->fam][FE_UDP_DROP_TRUNCATED]++;
            else if (low[i] && !allow_low)
                expect[c->fam][FE_UDP_DROP_LOW_PORT]++;
            else if (!allow_low && c->fam == 0)
                expect[c->fam][FE_UDP_DROP_NOT_ALLOWED]++; /* IPv4 is outside the allow list */
            else
                expect_out[c->fam]++;
        }
    }
    bool refused = true;
    if (!allow_low) { /* TCP from 127.0.0.1: closed at accept by the same allow list */
        int fd = connect_tcp(0);
        unsigned char byte;
        ssize_t n = fd >= 0 ? recv(fd, &byte, 1, 0) : -1;
        refused = fd >= 0 && (n == 0 || (n < 0 && errno == ECONNRESET));
        if (fd >= 0)
            close(fd);
    }
    fe_stats st;
    udp_totals tot;
    uint64_t server_drops[2] = {0, 0};
    udp_settle(&u, &scratch, 1, clients, CLIENTS, softnet_before, &st, &tot, server_drops);
    for (int f = 0; f < 2; f++) {
        if (u.udp_fd[f] < 0)
            continue;
        size_t l = u.index[f];
        const uint64_t *d = st.udp_dropped[l];
        printf("udp filters%s IPv%d: in=%llu out=%llu (expected %llu) dropped truncated=%llu low-port=%llu "
               "not-allowed=%llu (expected %llu %llu %llu) bytes in=%llu (expected %llu)\n",
               allow_low ? " (low ports allowed)" : "", f ? 6 : 4, (unsigned long long)st.udp_in[l],
               (unsigned long long)st.udp_out[l], (unsigned long long)expect_out[f],
               (unsigned long long)d[FE_UDP_DROP_TRUNCATED], (unsigned long long)d[FE_UDP_DROP_LOW_PORT],
               (unsigned long long)d[FE_UDP_DROP_NOT_ALLOWED], (unsigned long long)expect[f][FE_UDP_DROP_TRUNCATED],
               (unsigned long long)expect[f][FE_UDP_DROP_LOW_PORT],
               (unsigned long long)expect[f][FE_UDP_DROP_NOT_ALLOWED], (unsigned long long)st.udp_bytes_in[l],
               (unsigned long long)expect_bytes_in[f]);
        /* Exact when the server's sockets dropped nothing (a few hundred
         * small datagrams into 8 MiB of buffer: they never should). */
        EXPECT(server_drops[f] == 0, "IPv%d: the server's sockets dropped %llu datagrams", f ? 6 : 4,
              (unsigned long long)server_drops[f]);
        for (int r = 0; r < FE_UDP_DROP_COUNT; r++)
            EXPECT(d[r] == expect[f][r], "IPv%d: %llu dropped as %s, expected %llu", f ? 6 : 4,
                  (unsigned long long)d[r], fe_udp_drop_name(r), (unsigned long long)expect[f][r]);
        EXPECT(st.udp_out[l] == expect_out[f] && st.udp_bytes_in[l] == expect_bytes_in[f],
              "IPv%d: %llu echoed (expected %llu), %llu bytes in (expected %llu)", f ? 6 : 4,
              (unsigned long long)st.udp_out[l], (unsigned long long)expect_out[f],
              (unsigned long long)st.udp_bytes_in[l], (unsigned long long)expect_bytes_in[f]);
    }
    EXPECT(refused && (allow_low || st.rejected_not_allowed == 1), "TCP from outside the allow list: refused %d, "
          "counted %llu", refused, (unsigned long long)st.rejected_not_allowed);
    if (udp_run_teardown(&u, &scratch, 1) != 0)
        return -1;
    for (int i = 0; i < CLIENTS; i++)
        if (clients[i].fd >= 0)
            udp_client_close(&clients[i]);
    int fds_after = count_fds();
    printf("udp filters%s: %d client sockets (%.1f s)\n", allow_low ? " (low ports allowed)" : "", present,
           (double)(now_ms() - started) / 1000);
    return udp_run_check_fds(fds_before, fds_after);
}

/* A stop while UDP clients are still sending and a TCP client is still
 * connected: the workers close their UDP sockets at once (long before
 * the drain ends, which the TCP client still gets served in), nothing is
 * read after, every reply that came was good, the counters balance, and
 * every fd the core opened is closed. */
static int udp_shutdown_run(void)
{
    int64_t started = now_ms();
    int fds_before = count_fds();
    fe_config cfg;
    fe_config_init(&cfg);
    cfg.io_backend = io_backend_run;
    cfg.threads = 2;
    udp_setup u;
    if (udp_setup_start(&u, &cfg, true) != 0)
        return -1;
    enum { THREADS = 3, DRAIN_MS = 3000 };
    udp_thread threads[THREADS];
    atomic_store(&udp_stop_clients, false);
    for (int i = 0; i < THREADS; i++) {
        if (udp_thread_init(&threads[i], UDP_UNTIL_STOPPED, 2, i % 2, 5000u + (unsigned)i) != 0)
            return -1;
        threads[i].deadline_ms = now_ms() + 20000;
    }
    pthread_t reader;
    udp_stats_reader_start(&reader, u.srv);
    client tcp;
    EXPECT(client_open(&tcp, NULL) == 0, "TCP client");
    unsigned int seed = 77;
    echo_exchange(&tcp, &seed, 5000);
    udp_start_threads(threads, THREADS);
    /* Stop once traffic flows on every UDP listener. */
    fe_stats st;
    for (int tries = 0; tries < 5000; tries++) {
        fe_server_stats(u.srv, &st);
        if (st.udp_out[u.index[0]] >= 200 && (u.udp_fd[1] < 0 || st.udp_out[u.index[1]] >= 200))
            break;
        sleep_ms(1);
    }
    /* Each worker's UDP sockets are fds of this process; the first
     * worker's is a dup of the caller's, the same socket, so only the fd
     * count (not /proc/net/udp) sees every worker let go. */
    int udp_listeners = (u.udp_fd[0] >= 0) + (u.udp_fd[1] >= 0);
    int fds_closed = count_fds() - cfg.threads * udp_listeners;
    int64_t stop_at = now_ms();
    fe_server_shutdown(u.srv, DRAIN_MS, 500);
    int64_t closed_ms = -1;
    for (int tries = 0; tries < 3000 && closed_ms < 0; tries++) {
        if (count_fds() <= fds_closed)
            closed_ms = now_ms() - stop_at;
        else
            sleep_ms(1);
    }
    for (int f = 0; f < 2; f++) { /* and in the kernel only the caller's socket is left */
        uint64_t ignored;
        int left = u.udp_fd[f] < 0 ? 1 : udp_server_sockets(f, &ignored);
        EXPECT(left == 1, "IPv%d: %d sockets on the listener's address after the stop", f ? 6 : 4, left);
    }
    /* Reading ended: udp_in stays put while the clients send on (at least
     * a window from each thread; at most 2 s). */
    fe_stats a, b;
    fe_server_stats(u.srv, &a);
    unsigned long long sent_a = atomic_load(&udp_sent_total);
    bool still_sending = false;
    for (int tries = 0; tries < 2000 && !still_sending; tries++) {
        sleep_ms(1);
        still_sending = atomic_load(&udp_sent_total) >= sent_a + THREADS * 2 * UDP_WINDOW;
    }
    sleep_ms(20); /* and time for a worker that still read to count it */
    fe_server_stats(u.srv, &b);
    /* The TCP client is still served: the drain goes on. */
    int tcp_ok = echo_exchange(&tcp, &seed, 5000);
    client_close(&tcp, false);
    atomic_store(&udp_stop_clients, true);
    udp_join_threads(threads, THREADS);
    int stopped = fe_server_wait(u.srv, 10000);
    int64_t waited = now_ms() - stop_at;
    udp_stats_reader_stop(reader);
    /* The workers are gone: what they echoed is final. */
    fe_server_stats(u.srv, &st);
    int fds_stopped = count_fds();
    udp_totals tot;
    for (int tries = 0; tries < 1000; tries++) { /* replies still in the backlogs: a moment */
        udp_collect(threads, THREADS, NULL, 0, &tot);
        if (tot.got[0] + tot.drops[0] == st.udp_out[u.index[0]] &&
            (u.udp_fd[1] < 0 || tot.got[1] + tot.drops[1] == st.udp_out[u.index[1]]))
            break;
        sleep_ms(2);
    }
    printf("udp shutdown: worker sockets closed %lld ms after the stop (drain %d ms), workers gone after %lld ms\n",
           (long long)closed_ms, DRAIN_MS, (long long)waited);
    for (int f = 0; f < 2; f++) {
        if (u.udp_fd[f] < 0)
            continue;
        size_t l = u.index[f];
        uint64_t dropped = udp_core_drops(&st, l);
        /* What reached the caller's socket after its worker let go (the
         * datagrams queued on the workers' own sockets when they closed
         * were freed uncounted: that is the one inexact part). */
        uint64_t leftover = 0, ours_dropped;
        udp_client ours = {.fd = u.udp_fd[f]};
        ours_dropped = udp_drops(&ours);
        for (int i = 0; i < 100000 && recv(u.udp_fd[f], threads[0].buf, 65536, MSG_DONTWAIT) >= 0; i++)
            leftover++;
        printf("  IPv%d: sent=%llu in=%llu out=%llu dropped=%llu replies=%llu client socket drops=%llu, left on "
               "the caller's socket %llu (+%llu dropped there), unread when the workers' sockets closed %lld\n",
               f ? 6 : 4, (unsigned long long)tot.sent[f], (unsigned long long)st.udp_in[l],
               (unsigned long long)st.udp_out[l], (unsigned long long)dropped, (unsigned long long)tot.got[f],
               (unsigned long long)tot.drops[f], (unsigned long long)leftover, (unsigned long long)ours_dropped,
               (long long)(tot.sent[f] - st.udp_in[l] - leftover - ours_dropped));
        EXPECT(a.udp_in[l] == b.udp_in[l], "IPv%d: %llu datagrams read after the workers' sockets closed", f ? 6 : 4,
              (unsigned long long)(b.udp_in[l] - a.udp_in[l]));
        EXPECT(st.udp_in[l] == st.udp_out[l] + dropped, "IPv%d: in %llu != out %llu + dropped %llu", f ? 6 : 4,
              (unsigned long long)st.udp_in[l], (unsigned long long)st.udp_out[l], (unsigned long long)dropped);
        EXPECT(tot.got[f] + tot.drops[f] == st.udp_out[l], "IPv%d: out %llu != replies %llu + client drops %llu",
              f ? 6 : 4, (unsigned long long)st.udp_out[l], (unsigned long long)tot.got[f],
              (unsigned long long)tot.drops[f]);
        EXPECT(st.udp_in[l] + leftover + ours_dropped <= tot.sent[f], "IPv%d: more arrived than was sent", f ? 6 : 4);
    }
    EXPECT(closed_ms >= 0 && closed_ms < DRAIN_MS / 2, "the workers' UDP sockets closed %lld ms after the stop",
          (long long)closed_ms);
    EXPECT(still_sending, "the UDP clients had stopped sending before the check that nothing is read");
    EXPECT(tcp_ok == 0, "the TCP client was not served during the drain");
    EXPECT(stopped, "workers did not stop within 10 s");
    EXPECT(waited < DRAIN_MS, "the workers waited for the drain (%lld ms) with no connection left", (long long)waited);
    /* Stopped, not destroyed: the core holds only its own fds (eventfds,
     * epoll) and the caller's listeners are still open; no UDP socket. */
    int expect_stopped = fds_before + 1 + (u.udp_fd[0] >= 0) + (u.udp_fd[1] >= 0) + FE_FDS_PER_SERVER +
                         FE_FDS_PER_WORKER * cfg.threads;
    for (int i = 0; i < THREADS; i++)
        expect_stopped += threads[i].socket_count; /* the clients' sockets, still open */
    EXPECT(fds_stopped == expect_stopped, "%d fds open once stopped, expected %d", fds_stopped, expect_stopped);
    if (udp_run_teardown(&u, threads, THREADS) != 0)
        return -1;
    int fds_after = count_fds();
    printf("udp shutdown: fds %d before, %d stopped, %d after (%.1f s)\n", fds_before, fds_stopped, fds_after,
           (double)(now_ms() - started) / 1000);
    return udp_run_check_fds(fds_before, fds_after);
}

/* Listeners fe_server_start must refuse (EINVAL), after it may already
 * have opened worker sockets for the good listener before a bad one: a
 * UDP socket without SO_REUSEPORT, one not bound, a stream socket marked
 * udp, and udp with tls. Destroying the server closes all it opened. */
static int udp_refused_run(void)
{
    int fds_before = count_fds();
    int good = udp_listener(0, 0);
    CHECK(good >= 0, "cannot bind a UDP listener on 127.0.0.1");
    int plain = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), unbound = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int stream = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(plain >= 0 && unbound >= 0 && stream >= 0 && bind(plain, (struct sockaddr *)&a4, sizeof a4) == 0 &&
              setsockopt(unbound, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) == 0,
          "cannot make the bad listeners");
    int fds_open = count_fds();
    const struct {
        fe_listener bad;
        const char *what;
    } cases[] = {
        {{.fd = plain, .udp = true}, "without SO_REUSEPORT"},
        {{.fd = unbound, .udp = true}, "not bound"},
        {{.fd = stream, .udp = true}, "a stream socket"},
        {{.fd = good, .udp = true, .tls = true}, "with tls"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fe_config cfg;
        fe_config_init(&cfg);
        cfg.io_backend = io_backend_run;
        cfg.threads = 3;
        fe_server *srv = NULL;
        char err[256] = "";
        CHECK(fe_server_create(&cfg, &srv, err, sizeof err) == 0, "%s", err);
        fe_listener listeners[2] = {{.fd = good, .udp = true}, cases[i].bad};
        errno = 0;
        int rc = start_server(srv, listeners, 2, err, sizeof err);
        int e = errno;
        fe_server_destroy(srv);
        CHECK(rc != 0 && e == EINVAL, "a UDP listener %s: fe_server_start returned %d, errno %d (%s)", cases[i].what,
              rc, e, err);
        int fds_now = count_fds();
        CHECK(fds_now == fds_open, "a UDP listener %s: %d fds open after destroy, %d before", cases[i].what, fds_now,
              fds_open);
    }
    close(good);
    close(plain);
    close(unbound);
    close(stream);
    int fds_after = count_fds();
    printf("udp refused listeners: %zu cases, fds %d before and %d after\n", sizeof cases / sizeof cases[0],
           fds_before, fds_after);
    return udp_run_check_fds(fds_before, fds_after);
}

/* Every UDP run. IPv6 runs too where ::1 can be bound. */
static int udp_runs(void)
{
    int probe = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    udp_have_v6 = probe >= 0 && bind(probe, (struct sockaddr *)&a6, sizeof a6) == 0;
    if (probe >= 0)
        close(probe);
    if (!udp_have_v6)
        printf("stress_core: no IPv6 loopback: UDP runs on IPv4 only\n");
    line_mode_run = false; /* the TCP clients next to UDP echo raw */
    if (rate_table_run() != 0 || udp_echo_run() != 0 || udp_rate_run() != 0 || udp_filter_case(false) != 0 ||
        udp_filter_case(true) != 0 || udp_shutdown_run() != 0 || udp_refused_run() != 0)
        return -1;
    return 0;
}

/* Usage: stress_core [plain|tls|udp|ws] - every run, or only the plain TCP
 * and PROXY ones, only the TLS ones, only the UDP ones, or only the
 * WebSocket ones (ws and wss). */
int main(int argc, char **argv)
{
    const char *only = argc < 2 ? NULL : argv[1];
    if (only && strcmp(only, "plain") != 0 && strcmp(only, "uring") != 0 && strcmp(only, "tls") != 0 &&
        strcmp(only, "udp") != 0 && strcmp(only, "ws") != 0) {
        fprintf(stderr, "usage: stress_core [plain|uring|tls|udp|ws]\n");
        return 2;
    }
    bool plain = !only || strcmp(only, "plain") == 0;
    bool uring = !only || strcmp(only, "uring") == 0;
    bool tls = !only || strcmp(only, "tls") == 0;
    bool udp = !only || strcmp(only, "udp") == 0;
    bool ws = !only || strcmp(only, "ws") == 0;
    /* The main thread's own clients (hoarders, lingering clients) may
     * raise SIGPIPE over TLS; see start_server for the server's threads. */
    block_sigpipe();

    char why[256];
    bool uring_ok = fe_io_uring_check(why, sizeof why) == 0;
    if (!uring_ok)
        printf("stress_core: no io_uring runs: %s\n", why);
    uring = uring && uring_ok;
    for (int pass = 0; pass < 2; pass++) {
        if (!(pass == 0 ? plain : uring))
            continue;
        io_backend_run = pass == 0 ? FE_IO_EPOLL : FE_IO_URING;
        if (run(4, 2, false, false) != 0 || run(1, 1, false, false) != 0 ||
            run(16, 4096, false, false) != 0 || run(3, 8, true, false) != 0 ||
            run(4, 64, false, true) != 0 || run(2, 64, true, true) != 0)
            return 1;
        proxy_run = true; /* the PROXY header path, raw and line mode, with every limit */
        if (run(4, 8, false, false) != 0 || run(3, 8, true, false) != 0)
            return 1;
        proxy_run = false;
        /* Splice off: raw echo copying every byte, short writes and the
         * cap at every size. */
        copy_run = true;
        if (run(4, 2, false, false) != 0 || run(4, 64, false, true) != 0)
            return 1;
        copy_run = false;
    }
    /* TLS, ws and UDP, on each backend (io_uring where it can run). */
    for (int pass = 0; pass < (uring_ok ? 2 : 1); pass++) {
        io_backend_run = pass == 0 ? FE_IO_EPOLL : FE_IO_URING;
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
        if (ws && ws_runs() != 0)
            return 1;
#else
        if (tls || ws)
            printf("stress_core: built without TLS (FASTECHO_WITH_TLS=OFF): no TLS or ws runs\n");
#endif
        if (udp && udp_runs() != 0)
            return 1;
    }
#ifdef FE_WITH_TLS
    if (atomic_load(&tls_interrupted) > 0)
        printf("stress_core: %u TLS handshakes' reads were interrupted (EINTR) and retried\n",
               atomic_load(&tls_interrupted));
#endif
    int n = atomic_load(&failures);
    printf(n ? "stress_core: %d failure(s)\n" : "stress_core: all checks held\n", n);
    return n ? 1 : 0;
}
