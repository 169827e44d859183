/*
 * reference_udp_main.c: the part the two bare UDP reference loops share
 * (fastecho-reference-udp and fastecho-reference-udp-mmsg): options,
 * sockets, threads and the stop signals, with the options and signals in
 * reference_common.c as for fastecho-reference-echo. The loop itself is in
 * reference_udp.c or reference_udp_mmsg.c.
 *
 *   fastecho-reference-udp[-mmsg] [--host 127.0.0.1] [--port 0] [--threads 1]
 *                                 [--rcvbuf BYTES]
 *
 * Every thread has its own blocking socket bound to the same address with
 * SO_REUSEPORT: the kernel spreads clients over the sockets by their address
 * and port, so a client always talks to the same thread, and no thread ever
 * waits for another. Socket options are the kernel's defaults, buffers
 * included: bare means bare. --rcvbuf asks for a bigger receive buffer
 * (SO_RCVBUF, capped by net.core.rmem_max, as fastecho's UDP listener asks
 * for 4 MiB), to tell what a server's code costs from what a full default
 * buffer (about 208 KiB) loses; it changes nothing per datagram.
 *
 * It prints "NAME listening on HOST:PORT (udp) (N threads)" once every
 * socket is bound, and exits 0 on SIGTERM or SIGINT.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "reference_common.h"
#include "reference_udp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void *echo_thread(void *socket_fd)
{
    reference_udp_loop((int)(intptr_t)socket_fd);
    return NULL;
}

/* A blocking UDP socket bound to *address with SO_REUSEPORT (and a receive
 * buffer of receive_buffer bytes unless 0); writes the port it got back into
 * *address (for --port 0). -1 with errno on failure. */
static int bind_shared(struct sockaddr_in *address, int receive_buffer)
{
    int one = 1;
    socklen_t length = sizeof *address;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if ((receive_buffer > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer) < 0) ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)address, sizeof *address) < 0 ||
        getsockname(fd, (struct sockaddr *)address, &length) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int main(int argc, char **argv)
{
    struct reference_options options;
    reference_parse_options(argc, argv, reference_udp_name, true, &options);
    const char *host = options.host;
    int port = options.port, threads = options.threads, receive_buffer = options.receive_buffer;
    struct sockaddr_in address = options.address;

    sigset_t stop_signals;
    reference_block_stop_signals(&stop_signals);

    /* The first bind picks the port (--port 0); the others join it. */
    static int sockets[REFERENCE_MAX_THREADS];
    for (int i = 0; i < threads; i++) {
        sockets[i] = bind_shared(&address, receive_buffer);
        if (sockets[i] < 0) {
            fprintf(stderr, "fastecho-%s: cannot bind %s:%d: %s\n", reference_udp_name, host,
                    i == 0 ? port : ntohs(address.sin_port), strerror(errno));
            return 1;
        }
    }
    for (int i = 0; i < threads; i++) {
        pthread_t worker;
        int rc = pthread_create(&worker, NULL, echo_thread, (void *)(intptr_t)sockets[i]);
        if (rc != 0) {
            fprintf(stderr, "fastecho-%s: pthread_create: %s\n", reference_udp_name, strerror(rc));
            return 1;
        }
        pthread_detach(worker);
    }

    printf("%s listening on %s:%d (udp) (%d threads)\n", reference_udp_name, host, ntohs(address.sin_port), threads);
    fflush(stdout);

    reference_wait_for_stop(&stop_signals);
    /* The loops block in the kernel with nothing to flush or finish:
     * exiting the process ends them. */
    return 0;
}
