/*
 * independent_pingpong.c - a second, deliberately different load generator,
 * to cross-check the figures of fastecho.bench's epoll load generator.
 *
 * Two ways to drive CONNS connections doing SIZE-byte ping-pong (send,
 * read the echo back, compare, repeat):
 *   threads  one blocking thread per connection;
 *   epoll    one thread, non-blocking sockets, an epoll loop (the same
 *            batching as fastecho.bench's generator, written separately).
 * It reads the server's utime+stime from /proc/PID/stat around the measured
 * window and prints server CPU microseconds per message.
 *
 *   cc -O2 -pthread bench/independent_pingpong.c -o /tmp/ipp
 *   taskset -c 1 /tmp/ipp threads|epoll HOST PORT CONNS SIZE SECONDS SERVER_PID
 *
 * Talks only to the address it is given; every thread stops at the deadline.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in server;
static size_t size;
static atomic_int measuring, stopping;
static atomic_ulong messages, failures;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long server_cpu_ticks(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(buf, sizeof buf, f)) {
        perror("independent_pingpong: /proc/PID/stat");
        exit(1);
    }
    fclose(f);
    char *p = strrchr(buf, ')'); /* fields after the command name */
    long utime = 0, stime = 0;
    /* after ") ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld", &utime, &stime);
    return utime + stime;
}

static void *client(void *arg)
{
    (void)arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&server, sizeof server) != 0) {
        atomic_fetch_add(&failures, 1);
        return NULL;
    }
    char *out = malloc(size), *in = malloc(size);
    for (size_t i = 0; i < size; i++)
        out[i] = (char)(i * 31 + 7);
    while (!atomic_load(&stopping)) {
        if (send(fd, out, size, MSG_NOSIGNAL) != (ssize_t)size) {
            atomic_fetch_add(&failures, 1);
            break;
        }
        size_t got = 0;
        while (got < size) {
            ssize_t n = recv(fd, in + got, size - got, 0);
            if (n <= 0)
                break;
            got += (size_t)n;
        }
        if (got != size || memcmp(in, out, size) != 0) {
            atomic_fetch_add(&failures, 1);
            break;
        }
        if (atomic_load(&measuring))
            atomic_fetch_add(&messages, 1);
    }
    close(fd);
    free(out);
    free(in);
    return NULL;
}

/* One thread, every connection non-blocking in one epoll set. */
struct conn {
    int fd;
    size_t got;
};

static void *epoll_driver(void *arg)
{
    int conns = *(int *)arg;
    int ep = epoll_create1(0);
    struct conn *cs = calloc((size_t)conns, sizeof *cs);
    char *out = malloc(size), *in = malloc(size);
    for (size_t i = 0; i < size; i++)
        out[i] = (char)(i * 31 + 7);
    for (int i = 0; i < conns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&server, sizeof server) != 0) {
            atomic_fetch_add(&failures, 1);
            return NULL;
        }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        cs[i].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        if (send(fd, out, size, MSG_NOSIGNAL) != (ssize_t)size) /* 1 KiB fits the empty buffer */
            atomic_fetch_add(&failures, 1);
    }
    struct epoll_event events[256];
    while (!atomic_load(&stopping)) {
        int n = epoll_wait(ep, events, 256, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            ssize_t r = recv(c->fd, in + c->got, size - c->got, 0);
            if (r < 0 && errno == EAGAIN)
                continue;
            if (r <= 0 || memcmp(in + c->got, out + c->got, (size_t)r) != 0) {
                atomic_fetch_add(&failures, 1);
                atomic_store(&stopping, 1);
                break;
            }
            c->got += (size_t)r;
            if (c->got == size) {
                c->got = 0;
                if (atomic_load(&measuring))
                    atomic_fetch_add(&messages, 1);
                if (send(c->fd, out, size, MSG_NOSIGNAL) != (ssize_t)size)
                    atomic_fetch_add(&failures, 1);
            }
        }
    }
    for (int i = 0; i < conns; i++)
        close(cs[i].fd);
    close(ep);
    free(cs);
    free(out);
    free(in);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 8 || (strcmp(argv[1], "threads") != 0 && strcmp(argv[1], "epoll") != 0)) {
        fprintf(stderr, "usage: %s threads|epoll HOST PORT CONNS SIZE SECONDS SERVER_PID\n", argv[0]);
        return 2;
    }
    bool use_epoll = strcmp(argv[1], "epoll") == 0;
    argv++;
    server.sin_family = AF_INET;
    server.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &server.sin_addr) != 1) {
        fprintf(stderr, "independent_pingpong: bad host %s\n", argv[1]);
        return 2;
    }
    int conns = atoi(argv[3]);
    size = (size_t)atol(argv[4]);
    double seconds = atof(argv[5]);
    int pid = atoi(argv[6]);
    if (conns < 1 || conns > 10000 || size < 1 || size > (1 << 20) || seconds <= 0 || pid <= 0) {
        fprintf(stderr, "independent_pingpong: arguments out of range\n");
        return 2;
    }
    int nthreads = use_epoll ? 1 : conns;
    pthread_t *threads = calloc((size_t)nthreads, sizeof *threads);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 128 << 10);
    for (int i = 0; i < nthreads; i++)
        pthread_create(&threads[i], &attr, use_epoll ? epoll_driver : client, &conns);
    usleep(500000); /* warm-up */
    long ticks0 = server_cpu_ticks(pid);
    double t0 = now_s();
    atomic_store(&measuring, 1);
    usleep((useconds_t)(seconds * 1e6));
    atomic_store(&measuring, 0);
    long ticks1 = server_cpu_ticks(pid);
    double t1 = now_s();
    atomic_store(&stopping, 1);
    for (int i = 0; i < nthreads; i++)
        pthread_join(threads[i], NULL);
    unsigned long msgs = atomic_load(&messages);
    double cpu_us = (double)(ticks1 - ticks0) * 1e6 / (double)sysconf(_SC_CLK_TCK);
    printf("conns=%d size=%zu msgs/s=%.0f server_cpu_us_per_msg=%.2f failures=%lu\n", conns, size,
           (double)msgs / (t1 - t0), msgs ? cpu_us / (double)msgs : 0.0, atomic_load(&failures));
    return atomic_load(&failures) ? 1 : 0;
}
