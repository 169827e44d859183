/*
 * reference_udp_mmsg.c: the bare batched UDP echo loop, the second practical
 * lower bound for `python -m fastecho.bench --transport udp`.
 *
 *   fastecho-reference-udp-mmsg [--host 127.0.0.1] [--port 0] [--threads 1]
 *
 * Each thread blocks in recvmmsg() on its own socket until at least one
 * datagram is there (MSG_WAITFORONE), takes up to 64 at once, and sends
 * them all back with sendmmsg(), each to its sender, from the same buffers.
 * Nothing else. (Options, sockets and signals: reference_udp_main.c.)
 */
#include "reference_udp.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>

enum {
    BATCH = 64,
    DATAGRAM_BUFFER_SIZE = 65536, /* more than the largest UDP payload */
};

const char reference_udp_name[] = "reference-udp-mmsg";

void reference_udp_loop(int fd)
{
    /* 4 MiB of address space per thread; only the pages datagrams touch
     * become resident. */
    char *buffers = malloc((size_t)BATCH * DATAGRAM_BUFFER_SIZE);
    if (!buffers) {
        perror("reference-udp-mmsg: malloc");
        exit(1);
    }
    struct mmsghdr messages[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_storage peers[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iov[i] = (struct iovec){ .iov_base = buffers + (size_t)i * DATAGRAM_BUFFER_SIZE,
                                 .iov_len = DATAGRAM_BUFFER_SIZE };
        messages[i].msg_hdr = (struct msghdr){ .msg_name = &peers[i], .msg_namelen = sizeof peers[i],
                                               .msg_iov = &iov[i], .msg_iovlen = 1 };
    }
    for (;;) {
        int received = recvmmsg(fd, messages, BATCH, MSG_WAITFORONE, NULL);
        if (received <= 0)
            continue; /* EINTR or a transient error (ENOMEM): nothing to answer */
        /* Each echo goes out from the buffer it came in, to the address it
         * came from, exactly as long as it came. */
        for (int i = 0; i < received; i++)
            iov[i].iov_len = messages[i].msg_len;
        /* sendmmsg() stops at the first datagram that fails and reports it on
         * the next call: skip that one, so each pass sends or drops one. */
        for (int sent = 0; sent < received;) {
            int count = sendmmsg(fd, messages + sent, (unsigned)(received - sent), 0);
            sent += count > 0 ? count : 1;
        }
        /* Only the entries used were changed (lengths, and the kernel wrote
         * msg_namelen): set them back for the next receive. */
        for (int i = 0; i < received; i++) {
            iov[i].iov_len = DATAGRAM_BUFFER_SIZE;
            messages[i].msg_hdr.msg_namelen = sizeof peers[i];
        }
    }
}
