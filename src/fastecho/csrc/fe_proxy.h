/*
 * fe_proxy.h - the PROXY protocol header (HAProxy's spec, version 1 text and
 * version 2 binary), parsed by a pure function: no I/O, no allocation, no
 * global state. It reads only the bytes it is given, so the connection path
 * can call it again on each read with everything received so far, and it can
 * be fuzzed alone (tests/fuzz/fuzz_proxy.c).
 *
 * What is accepted (anything else is FE_PROXY_INVALID):
 *
 * Version 1, one line of at most FE_PROXY_V1_MAX_HEADER (107) bytes, its
 * CRLF included:
 *   "PROXY TCP4 <src> <dst> <sport> <dport>\r\n"
 *   "PROXY TCP6 <src> <dst> <sport> <dport>\r\n"
 *   "PROXY UNKNOWN\r\n", "PROXY UNKNOWN <anything>\r\n"       (local)
 * - Exactly one space between fields; no other whitespace.
 * - TCP4 addresses: exactly four decimal parts 0-255 separated by single
 *   dots, no leading zeros ("0" is fine, "01" is not), no sign.
 * - TCP6 addresses: inet_pton(AF_INET6) syntax (compressed "::" and an
 *   embedded dotted IPv4 tail included), at most 45 characters. An
 *   IPv4-mapped address (::ffff:a.b.c.d) is reported as IPv4, as fe_peer
 *   always does. A TCP4 line must carry IPv4 text and a TCP6 line IPv6 text.
 * - Ports: decimal 0-65535, no sign, no leading zeros ("0" is fine, "080"
 *   is not), as the spec requires.
 * - The line ends at the first CR, which must be followed by LF. A LF without
 *   a CR before it, or a CR followed by anything but LF, is invalid, in the
 *   UNKNOWN tail too. The UNKNOWN tail may hold any other bytes.
 *
 * Version 2, the 12-byte signature then:
 * - version/command byte: version 2; command 0 (LOCAL) or 1 (PROXY).
 * - family/transport byte, for PROXY: 0x11 TCP/IPv4 and 0x21 TCP/IPv6 give
 *   the addresses; 0x12 UDP/IPv4 and 0x22 UDP/IPv6 are accepted and give
 *   their addresses the same way (the header still arrives on a stream; the
 *   client is who the proxy says it is); 0x00 UNSPEC, 0x31 UNIX stream and
 *   0x32 UNIX datagram are local. Any other byte is invalid. For LOCAL the
 *   byte is ignored, as the spec says.
 * - length (big-endian): 16 + length must be at most FE_PROXY_MAX_HEADER, and
 *   for PROXY it must cover the address block (12 for IPv4, 36 for IPv6, 216
 *   for UNIX).
 * - after the address block (PROXY with an IPv4, IPv6 or UNIX family), the
 *   rest must be TLVs (type byte, big-endian 2-byte length, value) that fill
 *   it exactly. Their values are not decoded (PP2_TYPE_SSL's sub-TLVs are not
 *   walked), except PP2_TYPE_CRC32C: its value must be 4 bytes and match the
 *   CRC32c of the whole header (computed with those 4 bytes as zeros), and
 *   it may appear at most once. Unknown types are skipped.
 * - LOCAL, and PROXY with UNSPEC, skip the whole block after the 16 fixed
 *   bytes unread: the spec says to ignore the address information there.
 * - IPv6 addresses that are IPv4-mapped are reported as IPv4.
 *
 * When bytes are judged: every fixed byte (the "PROXY " text, the signature,
 * the version, command and family bytes, the length field) as soon as it
 * arrives, so a client that is not a proxy is refused on its first byte that
 * cannot begin a header. A v1 IPv4 address or port is checked digit by digit
 * (value range, leading zeros, number of parts); a v1 IPv6 address only for
 * its characters and length until the space after it arrives, then whole. A
 * v2 TLV's length is checked against the header's length once its 3-byte
 * TLV header has arrived; the CRC32c once the whole header has. A verdict of
 * INVALID is final: more bytes never change it. Once
 * len >= FE_PROXY_V1_MAX_HEADER (v1) or len >= 16 + the length field (v2,
 * at most FE_PROXY_MAX_HEADER), the answer is DONE or INVALID, never
 * INCOMPLETE.
 */
#ifndef FE_PROXY_H
#define FE_PROXY_H

#include "fe.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    FE_PROXY_MAX_HEADER = 4096,   /* the largest header accepted (v2); larger ones are refused */
    FE_PROXY_V1_MAX_HEADER = 107, /* the longest v1 line, "\r\n" included (the spec's limit) */
    FE_PROXY_V2_MIN_HEADER = 16,  /* signature, version/command, family, length */
};

enum fe_proxy_status {
    FE_PROXY_INCOMPLETE = 0, /* no check has failed yet and more bytes are needed */
    FE_PROXY_DONE = 1,       /* a whole, valid header: *out is filled */
    FE_PROXY_INVALID = -1,   /* not a PROXY header, malformed or oversized: close */
};

typedef struct fe_proxy_header {
    /* Bytes the header occupies, from buf[0]. Consume exactly these; any
     * bytes after them are the client's data. */
    size_t length;
    /* Keep the socket's own addresses: v1 UNKNOWN, v2 LOCAL, v2 PROXY with
     * UNSPEC or a UNIX family. source and destination are then zeroed. */
    bool local;
    /* When !local: the original client (source) and the address it
     * connected to (destination). family is 4 or 6 (IPv4-mapped IPv6 is 4),
     * port in host order, addr 4 or 16 bytes in network order. The two
     * families may differ when one of two IPv6 addresses is IPv4-mapped. */
    fe_peer source, destination;
    int version; /* 1 or 2 */
} fe_proxy_header;

/* Parses the PROXY header at the start of a connection's bytes.
 *
 * Inputs: buf[0..len), everything the connection has received so far (buf
 * may be NULL when len is 0). Nothing outside that range is read, and
 * nothing is written but *out. Only the header's own bytes decide the
 * answer: bytes after a complete header never change it.
 *
 * Returns:
 * - FE_PROXY_DONE: buf begins with a whole, valid header; *out describes it
 *   and out->length (at most len, and at most FE_PROXY_MAX_HEADER) says how
 *   many bytes to consume.
 * - FE_PROXY_INCOMPLETE: no check so far has failed (see the top of this
 *   file for which checks run on a partial header) and more bytes are
 *   needed; call again with more. *out is zeroed.
 * - FE_PROXY_INVALID: buf does not begin with an acceptable header, and no
 *   bytes appended to it could make it one. *out is zeroed.
 *
 * Every proper prefix buf[0..k), k < out->length, of a header that gives
 * DONE gives INCOMPLETE. */
int fe_proxy_parse(const uint8_t *buf, size_t len, fe_proxy_header *out);

#endif /* FE_PROXY_H */
