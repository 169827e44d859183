/*
 * reference_common.h: what every bare reference server's main() shares
 * (fastecho-reference-echo, fastecho-reference-udp[-mmsg]): the options and
 * the stop signals. It runs once at start and once at exit, never per
 * message, so the loops stay bare.
 */
#ifndef FASTECHO_REFERENCE_COMMON_H
#define FASTECHO_REFERENCE_COMMON_H

#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>

/* pthread_t arrays are sized by it, so --threads is capped by it. */
enum { REFERENCE_MAX_THREADS = 1024 };

struct reference_options {
    const char *host;           /* --host, as given (for messages) */
    int port;                   /* --port, as given (0: the kernel picks) */
    int threads;                /* --threads */
    int receive_buffer;         /* --rcvbuf in bytes; 0: the kernel's default */
    struct sockaddr_in address; /* host and port, ready to bind */
};

/*
 * Parse --host, --port, --threads and, when with_receive_buffer, --rcvbuf
 * into *options. `name` is the program's name without "fastecho-"
 * ("reference-echo"), for the messages. A bad command line prints the usage
 * and exits 2.
 */
void reference_parse_options(int argc, char **argv, const char *name, bool with_receive_buffer,
                             struct reference_options *options);

/*
 * Block SIGTERM and SIGINT in the calling thread and fill *stop_signals with
 * them. Call it before any thread starts, so that every thread inherits the
 * mask and only reference_wait_for_stop() ever receives them.
 */
void reference_block_stop_signals(sigset_t *stop_signals);

/* Wait until one of *stop_signals (blocked, see above) arrives. */
void reference_wait_for_stop(const sigset_t *stop_signals);

#endif /* FASTECHO_REFERENCE_COMMON_H */
