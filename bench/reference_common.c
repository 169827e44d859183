/*
 * reference_common.c: the options and stop signals of the bare reference
 * servers (see reference_common.h). Nothing here runs per message.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "reference_common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static const char *program_name;  /* without "fastecho-" */
static bool takes_receive_buffer; /* whether --rcvbuf is an option */

static void usage_error(const char *message)
{
    fprintf(stderr, "fastecho-%s: %s\nusage: fastecho-%s [--host ADDR] [--port N] [--threads N]%s\n", program_name,
            message, program_name, takes_receive_buffer ? " [--rcvbuf BYTES]" : "");
    exit(2);
}

static long parse_number(const char *text, long low, long high, const char *what)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || *text == '\0' || *end != '\0' || value < low || value > high) {
        char message[128];
        snprintf(message, sizeof message, "%s must be a number in %ld..%ld, not '%s'", what, low, high, text);
        usage_error(message);
    }
    return value;
}

void reference_parse_options(int argc, char **argv, const char *name, bool with_receive_buffer,
                             struct reference_options *options)
{
    program_name = name;
    takes_receive_buffer = with_receive_buffer;
    *options = (struct reference_options){ .host = "127.0.0.1", .threads = 1 };
    struct option known[] = {
        { "host", required_argument, NULL, 'h' },
        { "port", required_argument, NULL, 'p' },
        { "threads", required_argument, NULL, 't' },
        { "rcvbuf", required_argument, NULL, 'r' },
        { NULL, 0, NULL, 0 },
    };
    /* Without --rcvbuf the table ends before it, so that getopt_long reports
     * it as unrecognized like any other unknown option. */
    if (!with_receive_buffer)
        known[3] = (struct option){ NULL, 0, NULL, 0 };
    for (int opt; (opt = getopt_long(argc, argv, "", known, NULL)) != -1;) {
        if (opt == 'h')
            options->host = optarg;
        else if (opt == 'p')
            options->port = (int)parse_number(optarg, 0, 65535, "--port");
        else if (opt == 't')
            options->threads = (int)parse_number(optarg, 1, REFERENCE_MAX_THREADS, "--threads");
        else if (opt == 'r')
            options->receive_buffer = (int)parse_number(optarg, 0, 1L << 30, "--rcvbuf");
        else
            usage_error("unknown option");
    }
    if (optind != argc)
        usage_error("unexpected argument");

    options->address = (struct sockaddr_in){ .sin_family = AF_INET, .sin_port = htons((uint16_t)options->port) };
    if (inet_pton(AF_INET, options->host, &options->address.sin_addr) != 1)
        usage_error("--host must be an IPv4 address");
}

void reference_block_stop_signals(sigset_t *stop_signals)
{
    sigemptyset(stop_signals);
    sigaddset(stop_signals, SIGTERM);
    sigaddset(stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, stop_signals, NULL);
}

void reference_wait_for_stop(const sigset_t *stop_signals)
{
    int signal_number;
    while (sigwait(stop_signals, &signal_number) != 0)
        ;
}
