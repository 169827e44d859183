/*
 * reference_udp.h: what the two bare UDP reference loops share.
 * reference_udp_main.c (with reference_common.c) parses the options, binds
 * one socket per thread and runs the stop signals; each program adds one loop, reference_udp.c
 * (recvfrom/sendto per datagram) or reference_udp_mmsg.c
 * (recvmmsg/sendmmsg, batches of 64).
 */
#ifndef FASTECHO_REFERENCE_UDP_H
#define FASTECHO_REFERENCE_UDP_H

/* The name the program announces itself with ("reference-udp"). */
extern const char reference_udp_name[];

/*
 * Echo every datagram that arrives on `fd` (a blocking UDP socket bound to
 * the shared port) back to its sender, for ever. A datagram that cannot be
 * received or sent whole is dropped, as UDP allows. Runs on its own thread;
 * the process ends it by exiting.
 */
void reference_udp_loop(int fd);

#endif /* FASTECHO_REFERENCE_UDP_H */
