/*
 * reference_udp.c: the bare per-datagram UDP echo loop, the first practical
 * lower bound for `python -m fastecho.bench --transport udp`.
 *
 *   fastecho-reference-udp [--host 127.0.0.1] [--port 0] [--threads 1]
 *
 * Each thread blocks in recvfrom() on its own socket and answers with one
 * sendto(): two system calls per datagram and nothing else. (Options,
 * sockets and signals: reference_udp_main.c.)
 */
#include "reference_udp.h"

#include <sys/socket.h>
#include <sys/types.h>

enum { DATAGRAM_BUFFER_SIZE = 65536 }; /* more than the largest UDP payload */

const char reference_udp_name[] = "reference-udp";

void reference_udp_loop(int fd)
{
    static _Thread_local char buffer[DATAGRAM_BUFFER_SIZE];
    for (;;) {
        struct sockaddr_storage peer;
        socklen_t peer_length = sizeof peer;
        ssize_t length = recvfrom(fd, buffer, sizeof buffer, 0, (struct sockaddr *)&peer, &peer_length);
        if (length < 0)
            continue; /* EINTR or a transient error (ENOMEM): nothing to answer */
        /* A failed send drops this one echo; the client counts it lost. */
        (void)sendto(fd, buffer, (size_t)length, 0, (struct sockaddr *)&peer, peer_length);
    }
}
