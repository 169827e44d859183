/*
 * reference_echo.c: the bare C epoll echo loop, the practical lower bound
 * that `python -m fastecho.bench` compares every server against.
 *
 *   fastecho-reference-echo [--host 127.0.0.1] [--port 0] [--threads 1]
 *
 * One epoll loop per thread, level-triggered: read, then write what was read.
 * Nothing else: no per-connection state, no counters, no backpressure. Every
 * thread watches the shared listening socket with EPOLLEXCLUSIVE, so a new
 * connection wakes one thread, which then owns it for its life.
 *
 * It prints "reference listening on HOST:PORT (N threads)" once the socket
 * listens, and exits 0 on SIGTERM or SIGINT.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "reference_common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
    MAX_EVENTS = 128,
    READ_BUFFER_SIZE = 64 * 1024,
    /* A client that accepts none of its echo for this long is dropped, so a
     * stuck peer cannot hold a worker thread forever. */
    WRITE_STALL_MS = 5000,
};

static int listen_fd = -1;
static int stop_fd = -1; /* eventfd: readable once the process should exit */

/* Write all of buf. A short write only happens when the client is not
 * reading; waiting for it in poll() is the simplest honest choice for a
 * lower-bound server and never happens in ping-pong at sane sizes. */
static int write_all(int fd, const char *buf, size_t length)
{
    while (length > 0) {
        ssize_t n = send(fd, buf, length, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            length -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = { .fd = fd, .events = POLLOUT };
            int ready = poll(&pfd, 1, WRITE_STALL_MS);
            if (ready > 0 || (ready < 0 && errno == EINTR))
                continue;
        }
        return -1;
    }
    return 0;
}

static void echo_once(int fd, char *buf)
{
    ssize_t n;
    do
        n = recv(fd, buf, READ_BUFFER_SIZE, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    /* EOF, an error, or a client that stopped reading: closing the fd also
     * removes it from this thread's epoll set. */
    if (n <= 0 || write_all(fd, buf, (size_t)n) < 0)
        close(fd);
}

/* One accept per wake-up: level-triggered EPOLLEXCLUSIVE keeps reporting a
 * non-empty backlog, which spreads new connections over the threads. */
static void accept_one(int epoll_fd)
{
    int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return; /* EAGAIN (another thread won), EINTR, ECONNABORTED, EMFILE */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0)
        close(fd);
}

static void *echo_thread(void *unused)
{
    (void)unused;
    static _Thread_local char buf[READ_BUFFER_SIZE];
    int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd < 0) {
        perror("reference: epoll_create1");
        exit(1);
    }
    struct epoll_event ev = { .events = EPOLLIN | EPOLLEXCLUSIVE, .data.fd = listen_fd };
    struct epoll_event stop = { .events = EPOLLIN, .data.fd = stop_fd };
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listen_fd, &ev) < 0 ||
        epoll_ctl(epoll_fd, EPOLL_CTL_ADD, stop_fd, &stop) < 0) {
        perror("reference: epoll_ctl");
        exit(1);
    }
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int ready = epoll_wait(epoll_fd, events, MAX_EVENTS, -1);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            perror("reference: epoll_wait");
            exit(1);
        }
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            if (fd == stop_fd)
                return NULL; /* connections die with the process */
            if (fd == listen_fd)
                accept_one(epoll_fd);
            else
                echo_once(fd, buf);
        }
    }
}

int main(int argc, char **argv)
{
    struct reference_options options;
    reference_parse_options(argc, argv, "reference-echo", false, &options);
    const char *host = options.host;
    int port = options.port, threads = options.threads;
    struct sockaddr_in address = options.address;

    sigset_t stop_signals;
    reference_block_stop_signals(&stop_signals);

    int one = 1;
    socklen_t address_length = sizeof address;
    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd < 0 || setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(listen_fd, (struct sockaddr *)&address, sizeof address) < 0 || listen(listen_fd, SOMAXCONN) < 0 ||
        getsockname(listen_fd, (struct sockaddr *)&address, &address_length) < 0) {
        fprintf(stderr, "fastecho-reference-echo: cannot listen on %s:%d: %s\n", host, port, strerror(errno));
        return 1;
    }
    stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (stop_fd < 0) {
        perror("reference: eventfd");
        return 1;
    }

    pthread_t workers[REFERENCE_MAX_THREADS];
    for (int i = 0; i < threads; i++) {
        int rc = pthread_create(&workers[i], NULL, echo_thread, NULL);
        if (rc != 0) {
            fprintf(stderr, "fastecho-reference-echo: pthread_create: %s\n", strerror(rc));
            return 1;
        }
    }

    printf("reference listening on %s:%d (%d threads)\n", host, ntohs(address.sin_port), threads);
    fflush(stdout);

    reference_wait_for_stop(&stop_signals);
    /* The eventfd stays readable and is not EPOLLEXCLUSIVE: it wakes all. */
    uint64_t wake = 1;
    if (write(stop_fd, &wake, sizeof wake) != (ssize_t)sizeof wake) {
        perror("reference: eventfd write");
        return 1;
    }
    for (int i = 0; i < threads; i++)
        pthread_join(workers[i], NULL);
    close(listen_fd);
    close(stop_fd);
    return 0;
}
