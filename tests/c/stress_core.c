/*
 * stress_core.c - drives the C core hard, without Python, so that ASan,
 * UBSan and TSan see every path: the acceptor, full hand-off queues,
 * backpressure, short writes, half-close, resets, stats read concurrently,
 * and a shutdown while clients are still mid-stream.
 *
 * Built and run by ci/sanitize.sh. Exits 0 when every echoed byte matched
 * and the counters add up; prints the first failure and exits 1 otherwise.
 */

#include "fe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum { CLIENT_THREADS = 8, ROUNDS_PER_CLIENT = 60, LINGERING_CLIENTS = 16, HOARDERS = 8 };
/* The memory budget run: small enough that the hoarders spend it. */
#define BUDGET_BYTES ((size_t)1 << 20)

static struct sockaddr_in server_addr;
/* PROXY runs: every client first sends a v1 header naming a made-up client. */
static bool proxy_run;
static atomic_uint proxied_clients;
static atomic_int failures;
static atomic_bool stop_stats_reader;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "stress_core: " __VA_ARGS__);                    \
            fprintf(stderr, " (%s:%d, errno %d)\n", __FILE__, __LINE__, errno); \
            atomic_fetch_add(&failures, 1);                                  \
            return -1;                                                       \
        }                                                                    \
    } while (0)

static int connect_client(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
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

static int recv_all(int fd, unsigned char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = recv(fd, buf, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Sends payload in pieces and reads it all back: more than the server's
 * output cap and read buffer, so short writes and backpressure happen. */
static int echo_exchange(int fd, unsigned int *seed, size_t size)
{
    unsigned char *out = malloc(size), *in = malloc(size);
    CHECK(out && in, "out of memory");
    for (size_t i = 0; i < size; i++)
        out[i] = (unsigned char)rand_r(seed);
    size_t sent = 0, got = 0;
    int rc = 0;
    while (got < size && rc == 0) {
        size_t piece = 1 + (size_t)rand_r(seed) % 20000;
        if (sent < size) {
            if (piece > size - sent)
                piece = size - sent;
            rc = send_all(fd, out + sent, piece);
            sent += piece;
        }
        size_t want = sent - got;
        if (rc == 0 && want > 0)
            rc = recv_all(fd, in + got, want);
        got += want;
    }
    int same = rc == 0 && memcmp(out, in, size) == 0;
    free(out);
    free(in);
    CHECK(same, "echo of %zu bytes was lost or corrupted", size);
    return 0;
}

static int one_round(unsigned int *seed)
{
    int fd = connect_client();
    CHECK(fd >= 0, "connect failed");
    int kind = rand_r(seed) % 4;
    int rc = 0;
    if (kind == 0) { /* ordinary exchange, then a clean close */
        rc = echo_exchange(fd, seed, 1 + (size_t)rand_r(seed) % 300000);
    } else if (kind == 1) { /* half-close: everything sent still comes back */
        unsigned char msg[5000], back[5000];
        memset(msg, 'h', sizeof msg);
        rc = send_all(fd, msg, sizeof msg);
        shutdown(fd, SHUT_WR);
        if (rc == 0)
            rc = recv_all(fd, back, sizeof back);
        if (rc == 0 && (memcmp(msg, back, sizeof msg) != 0 || recv(fd, back, 1, 0) != 0))
            rc = -1;
        if (rc != 0) {
            close(fd);
            CHECK(0, "half-close exchange failed");
        }
    } else if (kind == 2) { /* reset mid-stream */
        unsigned char junk[100000];
        memset(junk, 'r', sizeof junk);
        send_all(fd, junk, sizeof junk);
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    } else { /* send a lot, never read, and leave */
        unsigned char junk[60000];
        memset(junk, 'q', sizeof junk);
        send_all(fd, junk, sizeof junk);
    }
    close(fd);
    return rc;
}

/* Line mode: random lines, sent in random pieces, each must come back with
 * the suffix; now and then an overlong line must get the error line. */
static const char line_suffix[] = " server[echo]";
enum { LINE_MAX = 2000 };

static int line_round(unsigned int *seed)
{
    int fd = connect_client();
    CHECK(fd >= 0, "connect failed");
    int lines = 1 + rand_r(seed) % 20;
    for (int i = 0; i < lines; i++) {
        char line[LINE_MAX + 1], want[LINE_MAX + sizeof line_suffix + 1], got[sizeof want];
        size_t len = (size_t)rand_r(seed) % LINE_MAX;
        for (size_t k = 0; k < len; k++)
            line[k] = (char)('a' + rand_r(seed) % 26);
        line[len] = '\n';
        size_t sent = 0;
        while (sent < len + 1) { /* in pieces, so frames span reads */
            size_t piece = 1 + (size_t)rand_r(seed) % (len + 1 - sent);
            if (send_all(fd, (unsigned char *)line + sent, piece) != 0)
                break;
            sent += piece;
        }
        memcpy(want, line, len);
        memcpy(want + len, line_suffix, sizeof line_suffix - 1);
        want[len + sizeof line_suffix - 1] = '\n';
        size_t want_len = len + sizeof line_suffix;
        int ok = sent == len + 1 && recv_all(fd, (unsigned char *)got, want_len) == 0 &&
                 memcmp(got, want, want_len) == 0;
        if (!ok) {
            close(fd);
            CHECK(0, "line %d of %zu bytes came back wrong", i, len);
        }
    }
    if (rand_r(seed) % 4 == 0) { /* an overlong line: error line, then FIN */
        char junk[LINE_MAX + 10], reply[128];
        memset(junk, 'z', sizeof junk);
        send_all(fd, (unsigned char *)junk, sizeof junk);
        size_t got = 0;
        ssize_t n;
        while (got < sizeof reply - 1 && (n = recv(fd, reply + got, sizeof reply - 1 - got, 0)) > 0)
            got += (size_t)n;
        reply[got] = 0;
        if (strncmp(reply, "error: line longer than", 23) != 0) {
            close(fd);
            CHECK(0, "overlong line got %zu bytes: %.40s", got, reply);
        }
    }
    close(fd);
    return 0;
}

static bool line_mode_run;

static void *client_main(void *arg)
{
    unsigned int seed = (unsigned int)(uintptr_t)arg * 7919u + 1;
    for (int i = 0; i < ROUNDS_PER_CLIENT; i++)
        if ((line_mode_run ? line_round(&seed) : one_round(&seed)) != 0)
            break;
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
static void start_hoarders(int *fds)
{
    static unsigned char junk[65536];
    memset(junk, 'm', sizeof junk);
    for (size_t i = 999; i < sizeof junk; i += 1000)
        junk[i] = '\n'; /* whole lines, so that line mode buffers their echo too */
    for (int i = 0; i < HOARDERS; i++) {
        fds[i] = connect_client();
        if (fds[i] < 0) {
            fprintf(stderr, "stress_core: hoarder %d could not connect\n", i);
            atomic_fetch_add(&failures, 1);
            continue;
        }
        int small = 4096;
        setsockopt(fds[i], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    }
    for (int pass = 0, stalled = 0; pass < 4000 && stalled < 50; pass++) {
        bool progress = false;
        for (int i = 0; i < HOARDERS; i++) {
            if (fds[i] >= 0 && send(fds[i], junk, sizeof junk, MSG_NOSIGNAL) > 0)
                progress = true;
        }
        stalled = progress ? 0 : stalled + 1;
        if (!progress) {
            struct timespec pause = {.tv_nsec = 2000000};
            nanosleep(&pause, NULL);
        }
    }
}

static int listen_ephemeral(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
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

static int run(int threads, size_t queue_capacity, bool line_mode, bool budget)
{
    line_mode_run = line_mode;
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
        cfg.max_line = LINE_MAX;
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
    fe_server *srv = NULL;
    char err[256];
    if (fe_server_create(&cfg, &srv, err, sizeof err) != 0 ||
        fe_server_start(srv, &(fe_listener){.fd = listen_fd, .proxy = proxy_run}, 1, err, sizeof err) != 0) {
        fprintf(stderr, "stress_core: %s\n", err);
        return 1;
    }

    int hoarders[HOARDERS];
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
    for (int i = 0; i < CLIENT_THREADS; i++)
        pthread_create(&clients[i], NULL, client_main, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < CLIENT_THREADS; i++)
        pthread_join(clients[i], NULL);
    for (int i = 0; budget && i < HOARDERS; i++) {
        if (hoarders[i] >= 0)
            close(hoarders[i]);
    }

    /* Clients still connected and mid-stream when the stop begins. In line
     * mode the request is one line and the reply carries the suffix. */
    int lingering[LINGERING_CLIENTS];
    unsigned char request[1500], reply[1500 + sizeof line_suffix]; /* under LINE_MAX */
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
        lingering[i] = connect_client();
        if (lingering[i] < 0 || send_all(lingering[i], request, sizeof request) != 0) {
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
    /* Each lingering client gets its reply, then an orderly FIN. */
    for (int i = 0; i < LINGERING_CLIENTS; i++) {
        unsigned char back[sizeof reply];
        if (lingering[i] < 0)
            continue;
        if (recv_all(lingering[i], back, reply_len) != 0 || memcmp(back, reply, reply_len) != 0 ||
            recv(lingering[i], back, 1, 0) != 0) {
            fprintf(stderr, "stress_core: lingering client %d lost its echo\n", i);
            atomic_fetch_add(&failures, 1);
        }
        close(lingering[i]);
    }
    atomic_store(&stop_stats_reader, true);
    pthread_join(stats_reader, NULL);

    fe_stats st;
    fe_server_stats(srv, &st);
    fe_server_destroy(srv);
    printf("%s%s%s threads=%d queue=%zu accepted=%llu closed=%llu active=%llu in=%llu out=%llu\n",
           line_mode ? "line" : "echo", budget ? "+budget" : "", proxy_run ? "+proxy" : "", threads,
           queue_capacity,
           (unsigned long long)st.connections_accepted,
           (unsigned long long)st.connections_closed, (unsigned long long)st.connections_active,
           (unsigned long long)st.bytes_received, (unsigned long long)st.bytes_sent);
    if (st.connections_active != 0 || st.connections_accepted != st.connections_closed) {
        fprintf(stderr, "stress_core: connections leaked\n");
        atomic_fetch_add(&failures, 1);
    }
    if (st.memory_held != 0) {
        fprintf(stderr, "stress_core: %llu bytes still counted as held after stop\n",
                (unsigned long long)st.memory_held);
        atomic_fetch_add(&failures, 1);
    }
    return 0;
}

int main(void)
{
    if (run(4, 2, false, false) != 0 || run(1, 1, false, false) != 0 ||
        run(16, 4096, false, false) != 0 || run(3, 8, true, false) != 0 ||
        run(4, 64, false, true) != 0 || run(2, 64, true, true) != 0)
        return 1;
    proxy_run = true; /* the PROXY header path, raw and line mode, with every limit */
    if (run(4, 8, false, false) != 0 || run(3, 8, true, false) != 0)
        return 1;
    int n = atomic_load(&failures);
    printf(n ? "stress_core: %d failure(s)\n" : "stress_core: all checks held\n", n);
    return n ? 1 : 0;
}
