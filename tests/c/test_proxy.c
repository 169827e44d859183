/*
 * test_proxy.c - known vectors for the PROXY protocol parser (fe_proxy.c).
 *
 * Build and run (from the repository root):
 *   cc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -fsanitize=address,undefined \
 *      -Isrc/fastecho/csrc src/fastecho/csrc/fe_proxy.c tests/c/test_proxy.c -o test_proxy
 *   ./test_proxy
 *
 * Every input is parsed from a heap copy of exactly its length, so that
 * AddressSanitizer sees any read past the bytes given. Each valid header is
 * also checked truncated at every length (INCOMPLETE) and followed by client
 * data (the same header, the same length); each invalid one followed by more
 * bytes (still INVALID). Prints each failure, then "N passed, M failed" as
 * its last line (N and M count checks); exits 0 only when M is 0.
 */
#include "fe_proxy.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* Parses a heap copy of exactly n bytes (NULL when n is 0). */
static int parse_copy(const void *p, size_t n, fe_proxy_header *h)
{
    uint8_t *copy = NULL;
    if (n > 0) {
        copy = malloc(n);
        if (copy == NULL)
            abort();
        memcpy(copy, p, n);
    }
    int rc = fe_proxy_parse(copy, n, h);
    free(copy);
    return rc;
}

static const char *status_name(int rc)
{
    return rc == FE_PROXY_DONE ? "DONE" : rc == FE_PROXY_INCOMPLETE ? "INCOMPLETE" : rc == FE_PROXY_INVALID ? "INVALID" : "?";
}

static int peer_equal(const fe_peer *a, const fe_peer *b)
{
    return a->family == b->family && a->port == b->port && memcmp(a->addr, b->addr, 16) == 0;
}

static int header_equal(const fe_proxy_header *a, const fe_proxy_header *b)
{
    return a->length == b->length && a->local == b->local && a->version == b->version &&
           peer_equal(&a->source, &b->source) && peer_equal(&a->destination, &b->destination);
}

static const fe_proxy_header zero_header;

/* Client bytes that may follow a header, some shaped like another header. */
static const char *const trailers[] = {"hello\r\n", "PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n",
                                       "\r\n\r\n\x00\r\nQUIT\n\x21\x11", "\n", "\r"};
static const size_t trailer_lens[] = {7, 32, 14, 1, 1};

/* Checks that header[0..n) parses as DONE with length n into *got, that
 * every shorter prefix is INCOMPLETE, and that client bytes after it change
 * nothing. */
static void expect_done(const char *name, const void *header, size_t n, fe_proxy_header *got)
{
    int rc = parse_copy(header, n, got);
    check(rc == FE_PROXY_DONE, name, "whole header: %s, want DONE", status_name(rc));
    check(rc != FE_PROXY_DONE || got->length == n, name, "length %zu, want %zu", got->length, n);
    if (rc != FE_PROXY_DONE)
        return;
    size_t bad = 0, first_bad = 0;
    for (size_t k = 0; k < n; k++) {
        fe_proxy_header h;
        int r = parse_copy(header, k, &h);
        if (r != FE_PROXY_INCOMPLETE || !header_equal(&h, &zero_header)) {
            if (bad++ == 0)
                first_bad = k;
        }
    }
    check(bad == 0, name, "%zu truncations not INCOMPLETE, the first at %zu bytes", bad, first_bad);
    for (size_t t = 0; t < sizeof trailers / sizeof trailers[0]; t++) {
        uint8_t *more = malloc(n + trailer_lens[t]);
        memcpy(more, header, n);
        memcpy(more + n, trailers[t], trailer_lens[t]);
        fe_proxy_header h;
        int r = parse_copy(more, n + trailer_lens[t], &h);
        check(r == FE_PROXY_DONE && header_equal(&h, got), name,
              "with client data %zu after it: %s, length %zu", t, status_name(r), h.length);
        free(more);
    }
}

static void expect_status(const char *name, const void *bytes, size_t n, int want)
{
    fe_proxy_header h;
    int rc = parse_copy(bytes, n, &h);
    check(rc == want, name, "%s, want %s", status_name(rc), status_name(want));
    check(rc == FE_PROXY_DONE || header_equal(&h, &zero_header), name, "*out not zeroed");
    if (want != FE_PROXY_INVALID || rc != FE_PROXY_INVALID)
        return;
    /* INVALID is final: nothing appended revives it. */
    for (size_t t = 0; t < sizeof trailers / sizeof trailers[0]; t++) {
        uint8_t *more = malloc(n + trailer_lens[t]);
        memcpy(more, bytes, n);
        memcpy(more + n, trailers[t], trailer_lens[t]);
        int r = parse_copy(more, n + trailer_lens[t], &h);
        check(r == FE_PROXY_INVALID, name, "with bytes %zu appended: %s", t, status_name(r));
        free(more);
    }
}

static void expect_invalid(const char *name, const void *bytes, size_t n)
{
    expect_status(name, bytes, n, FE_PROXY_INVALID);
}

static void expect_invalid_str(const char *text)
{
    expect_invalid(text, text, strlen(text));
}

static void expect_peer(const char *name, const fe_peer *p, int family, const char *text, unsigned port)
{
    uint8_t addr[16] = {0};
    inet_pton(family == 4 ? AF_INET : AF_INET6, text, addr);
    check(p->family == family && p->port == port && memcmp(p->addr, addr, 16) == 0, name,
          "peer family %d port %u, want %s port %u", p->family, p->port, text, port);
}

/* ---- version 1 ---------------------------------------------------------- */

static void v1_valid(void)
{
    fe_proxy_header h;
    const char *s = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
    expect_done("v1 TCP4", s, strlen(s), &h);
    check(h.version == 1 && !h.local, "v1 TCP4", "version %d local %d", h.version, h.local);
    expect_peer("v1 TCP4 source", &h.source, 4, "192.168.0.1", 56324);
    expect_peer("v1 TCP4 destination", &h.destination, 4, "192.168.0.11", 443);

    s = "PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n";
    expect_done("v1 TCP4 extremes", s, strlen(s), &h);
    expect_peer("v1 TCP4 extremes source", &h.source, 4, "255.255.255.255", 65535);
    expect_peer("v1 TCP4 extremes destination", &h.destination, 4, "0.0.0.0", 0);

    s = "PROXY TCP6 2001:db8::7 2001:DB8::1 51000 7000\r\n";
    expect_done("v1 TCP6", s, strlen(s), &h);
    check(h.version == 1 && !h.local, "v1 TCP6", "version %d local %d", h.version, h.local);
    expect_peer("v1 TCP6 source", &h.source, 6, "2001:db8::7", 51000);
    expect_peer("v1 TCP6 destination", &h.destination, 6, "2001:db8::1", 7000);

    s = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        "65535 65535\r\n";
    check(strlen(s) == 104, "v1 TCP6 longest", "fixture is %zu bytes", strlen(s));
    expect_done("v1 TCP6 longest", s, strlen(s), &h);

    s = "PROXY TCP6 ::ffff:203.0.113.7 ::1 51000 7000\r\n";
    expect_done("v1 TCP6 mapped", s, strlen(s), &h);
    expect_peer("v1 TCP6 mapped source is IPv4", &h.source, 4, "203.0.113.7", 51000);
    expect_peer("v1 TCP6 mapped destination", &h.destination, 6, "::1", 7000);

    s = "PROXY TCP6 0000:0000:0000:0000:0000:ffff:255.255.255.255 ::1 1 2\r\n"; /* 45 characters */
    expect_done("v1 TCP6 longest address text", s, strlen(s), &h);
    expect_peer("v1 TCP6 longest address text", &h.source, 4, "255.255.255.255", 1);

    s = "PROXY UNKNOWN\r\n";
    expect_done("v1 UNKNOWN short", s, strlen(s), &h);
    check(h.local && h.version == 1 && h.source.family == 0 && h.destination.family == 0,
          "v1 UNKNOWN short", "local %d version %d families %d/%d", h.local, h.version,
          h.source.family, h.destination.family);

    s = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        "65535 65535\r\n";
    check(strlen(s) == FE_PROXY_V1_MAX_HEADER, "v1 UNKNOWN longest", "fixture is %zu bytes", strlen(s));
    expect_done("v1 UNKNOWN longest (107 bytes)", s, strlen(s), &h);
    check(h.local, "v1 UNKNOWN longest", "not local");

    /* The UNKNOWN tail is ignored, whatever it holds besides CR and LF. */
    char tail[FE_PROXY_V1_MAX_HEADER];
    memcpy(tail, "PROXY UNKNOWN ", 14);
    for (size_t i = 14; i < sizeof tail - 2; i++)
        tail[i] = (char)(i % 3 == 0 ? 0 : 0x80 + i % 100); /* NULs and high bytes */
    memcpy(tail + sizeof tail - 2, "\r\n", 2);
    expect_done("v1 UNKNOWN binary tail", tail, sizeof tail, &h);
    check(h.local, "v1 UNKNOWN binary tail", "not local");
}

static void v1_invalid(void)
{
    expect_invalid_str("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n"); /* LF only */
    expect_invalid_str("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\rX");
    expect_invalid_str("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\r\n");
    expect_invalid_str("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 \r\n");
    expect_invalid_str("PROXY TCP4 192.168.0.1 192.168.0.11 56324  443\r\n");
    expect_invalid_str("PROXY  TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
    expect_invalid_str("PROXY TCP4  192.168.0.1 192.168.0.11 56324 443\r\n");
    expect_invalid_str("PROXY TCP4 192.168.0.1\t192.168.0.11 56324 443\r\n");
    expect_invalid_str("PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n");
    expect_invalid_str("PROXY TCP4 192.168.0.1 192.168.0.11\r\n");
    expect_invalid_str("PROXY TCP4\r\n");
    expect_invalid_str("PROXY TCP5 192.168.0.1 192.168.0.11 56324 443\r\n");
    expect_invalid_str("PROXY UDP4 192.168.0.1 192.168.0.11 56324 443\r\n");
    expect_invalid_str("PROXY tcp4 192.168.0.1 192.168.0.11 56324 443\r\n");
    expect_invalid_str("proxy TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
    expect_invalid_str("PROXY\r\n");
    expect_invalid_str("PROXY \r\n");
    /* IPv4 addresses */
    expect_invalid_str("PROXY TCP4 256.1.1.1 1.1.1.1 1 2\r\n");
    expect_invalid_str("PROXY TCP4 1.1.1.1 1.1.1.1000 1 2\r\n");
    expect_invalid_str("PROXY TCP4 1.2.3 1.1.1.1 1 2\r\n");
    expect_invalid_str("PROXY TCP4 1.2.3.4.5 1.1.1.1 1 2\r\n");
    expect_invalid_str("PROXY TCP4 01.2.3.4 1.1.1.1 1 2\r\n");
    expect_invalid_str("PROXY TCP4 1.2.3.00 1.1.1.1 1 2\r\n");
    expect_invalid_str("PROXY TCP4 1..2.3 1.1.1.1 1 2\r\n");
    expect_invalid_str("PROXY TCP4 1.2.3. 1.1.1.1 1 2\r\n");
    expect_invalid_str("PROXY TCP4 .1.2.3 1.1.1.1 1 2\r\n");
    expect_invalid_str("PROXY TCP4 1.2.3.4a 1.1.1.1 1 2\r\n");
    expect_invalid_str("PROXY TCP4 +1.2.3.4 1.1.1.1 1 2\r\n");
    expect_invalid_str("PROXY TCP4 0x1.2.3.4 1.1.1.1 1 2\r\n");
    expect_invalid_str("PROXY TCP4 1.2.3.4 1.1.1.1.1 1 2\r\n");
    /* the family must match the protocol */
    expect_invalid_str("PROXY TCP4 ::1 ::1 1 2\r\n");
    expect_invalid_str("PROXY TCP4 ::ffff:1.2.3.4 1.1.1.1 1 2\r\n");
    expect_invalid_str("PROXY TCP6 1.2.3.4 1.1.1.1 1 2\r\n");
    expect_invalid_str("PROXY TCP6 ::1 1.1.1.1 1 2\r\n");
    /* IPv6 addresses */
    expect_invalid_str("PROXY TCP6 2001:db8:::1 ::1 1 2\r\n");
    expect_invalid_str("PROXY TCP6 2001::db8::1 ::1 1 2\r\n");
    expect_invalid_str("PROXY TCP6 12345::1 ::1 1 2\r\n");
    expect_invalid_str("PROXY TCP6 g::1 ::1 1 2\r\n");
    expect_invalid_str("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n");
    expect_invalid_str("PROXY TCP6 [::1] ::1 1 2\r\n");
    expect_invalid_str("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n");
    expect_invalid_str("PROXY TCP6 ::ffff:01.2.3.4 ::1 1 2\r\n");
    expect_invalid_str("PROXY TCP6 1111:2222:3333:4444:5555:6666:7777:8888:9999:0 ::1 1 2\r\n");
    const char *v6_46 = "PROXY TCP6 0000:0000:0000:0000:0000:0000:0000:0000:000000";
    check(strlen(v6_46) == 11 + 46, "fixture", "v6_46 is %zu bytes", strlen(v6_46));
    expect_invalid("v1 IPv6 text past 45 characters, judged on arrival", v6_46, strlen(v6_46));
    expect_status("v1 IPv6 text of 45 characters, still arriving", v6_46, strlen(v6_46) - 1,
                  FE_PROXY_INCOMPLETE);
    /* ports */
    expect_invalid_str("PROXY TCP4 1.1.1.1 2.2.2.2 65536 2\r\n");
    expect_invalid_str("PROXY TCP4 1.1.1.1 2.2.2.2 1 99999\r\n");
    expect_invalid_str("PROXY TCP4 1.1.1.1 2.2.2.2 123456 2\r\n");
    expect_invalid_str("PROXY TCP4 1.1.1.1 2.2.2.2 -1 2\r\n");
    expect_invalid_str("PROXY TCP4 1.1.1.1 2.2.2.2 +80 2\r\n");
    expect_invalid_str("PROXY TCP4 1.1.1.1 2.2.2.2 080 2\r\n");
    expect_invalid_str("PROXY TCP4 1.1.1.1 2.2.2.2 1 00\r\n");
    expect_invalid_str("PROXY TCP4 1.1.1.1 2.2.2.2 1a 2\r\n");
    expect_invalid_str("PROXY TCP4 1.1.1.1 2.2.2.2 0x50 2\r\n");
    expect_invalid_str("PROXY TCP4 1.1.1.1 2.2.2.2  2\r\n"); /* empty source port */
    expect_invalid_str("PROXY TCP4 1.1.1.1 2.2.2.2 1 \r\n"); /* empty destination port */
    expect_invalid_str("PROXY TCP4 1.1.1.1 2.2.2.2 1 2 3\r\n");
    /* UNKNOWN */
    expect_invalid_str("PROXY UNKNOWNX\r\n");
    expect_invalid_str("PROXY UNKNOWN\n");
    expect_invalid_str("PROXY UNKNOWN a\nb\r\n");
    expect_invalid_str("PROXY UNKNOWN a\rb\r\n");
    expect_invalid_str("PROXY UNKNOWN\r\r\n");
    expect_invalid_str("PROXY UNKNOW\r\n");

    /* Too long: CRLF must end by byte 107. */
    char line[200];
    memset(line, 'a', sizeof line);
    memcpy(line, "PROXY UNKNOWN ", 14);
    memcpy(line + 106, "\r\n", 2); /* 108 bytes */
    expect_invalid("v1 UNKNOWN of 108 bytes", line, 108);
    expect_status("v1 UNKNOWN 106 bytes, no CRLF yet", line, 106, FE_PROXY_INCOMPLETE);
    memset(line + 106, 'a', 2);
    expect_invalid("v1 107 bytes without CRLF", line, 107);
    expect_invalid("v1 200 bytes without CRLF", line, sizeof line);
    memcpy(line + 105, "\r\n", 2); /* 107 bytes: the limit */
    expect_status("v1 UNKNOWN of 107 bytes", line, 107, FE_PROXY_DONE);
    line[106] = 'a';
    expect_invalid("v1 CR followed by a byte other than LF", line, 107);
    line[105] = 'a';
    line[106] = '\r'; /* the 107th byte is a CR: its LF would be the 108th */
    expect_invalid("v1 CR as byte 107", line, 107);
    expect_status("v1 106 bytes, CR still to come", line, 106, FE_PROXY_INCOMPLETE);
}

/* Clients that are no proxy are refused at the first byte that shows it. */
static void early_refusal(void)
{
    expect_invalid("HTTP", "G", 1);
    expect_invalid("TLS ClientHello", "\x16\x03\x01", 1);
    expect_invalid("SSH", "S", 1);
    expect_invalid("a NUL", "", 1);
    expect_invalid("a lone LF", "\n", 1);
    expect_invalid("PROX then space", "PROX ", 5);
    expect_invalid("PROXY then CR", "PROXY\r", 6);
    expect_invalid("PROXY T then X", "PROXY TX", 8);
    expect_invalid("PROXY TCP then 5", "PROXY TCP5", 10);
    expect_invalid("telnet CRLF", "\r\n\r\n\r", 5);
    expect_invalid("CR then CR", "\r\r", 2);
    expect_invalid("v1 bad address char at once", "PROXY TCP4 1.2.x", 16);
    expect_invalid("v1 octet past 255 at once", "PROXY TCP4 1.2.300", 18);
    expect_invalid("v1 leading zero at once", "PROXY TCP4 1.2.03", 17);
    expect_invalid("v1 fourth dot at once", "PROXY TCP4 1.2.3.4.", 19);
    expect_invalid("v1 empty octet at once", "PROXY TCP4 1..", 14);
    expect_invalid("v1 port leading zero at once", "PROXY TCP4 1.1.1.1 2.2.2.2 08", 29);
    expect_invalid("v1 port past 65535 at once", "PROXY TCP4 1.1.1.1 2.2.2.2 65536", 32);
    expect_status("nothing yet", "", 0, FE_PROXY_INCOMPLETE);
    expect_status("P", "P", 1, FE_PROXY_INCOMPLETE);
    expect_status("CR", "\r", 1, FE_PROXY_INCOMPLETE);
    expect_status("PROXY TCP", "PROXY TCP", 9, FE_PROXY_INCOMPLETE);
    expect_status("v1 partial IPv6", "PROXY TCP6 2001:db8:", 20, FE_PROXY_INCOMPLETE);
}

/* ---- version 2 ---------------------------------------------------------- */

static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* CRC32c, table-driven (the parser's is bitwise). */
static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32c(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++)
        c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

typedef struct {
    uint8_t b[FE_PROXY_MAX_HEADER + 64];
    size_t n;
} v2_buf;

/* Starts a v2 header: signature, ver_cmd, fam, length 0 (set by v2_end). */
static void v2_begin(v2_buf *v, uint8_t ver_cmd, uint8_t fam)
{
    memcpy(v->b, sig, 12);
    v->b[12] = ver_cmd;
    v->b[13] = fam;
    v->b[14] = v->b[15] = 0;
    v->n = 16;
}

static void v2_put(v2_buf *v, const void *p, size_t n)
{
    memcpy(v->b + v->n, p, n);
    v->n += n;
}

static void v2_u16(v2_buf *v, unsigned x)
{
    uint8_t p[2] = {(uint8_t)(x >> 8), (uint8_t)x};
    v2_put(v, p, 2);
}

static void v2_tlv(v2_buf *v, uint8_t type, const void *value, size_t n)
{
    v2_put(v, &type, 1);
    v2_u16(v, (unsigned)n);
    if (n > 0)
        v2_put(v, value, n);
}

static void v2_addr(v2_buf *v, int family, const char *src, const char *dst, unsigned sport, unsigned dport)
{
    uint8_t a[16];
    inet_pton(family == 4 ? AF_INET : AF_INET6, src, a);
    v2_put(v, a, family == 4 ? 4 : 16);
    inet_pton(family == 4 ? AF_INET : AF_INET6, dst, a);
    v2_put(v, a, family == 4 ? 4 : 16);
    v2_u16(v, sport);
    v2_u16(v, dport);
}

/* Sets the length field to cover everything after the 16 fixed bytes. */
static void v2_end(v2_buf *v)
{
    v->b[14] = (uint8_t)((v->n - 16) >> 8);
    v->b[15] = (uint8_t)(v->n - 16);
}

static void v2_set_len(v2_buf *v, unsigned len)
{
    v->b[14] = (uint8_t)(len >> 8);
    v->b[15] = (uint8_t)len;
}

static void v2_valid(void)
{
    v2_buf v;
    fe_proxy_header h;

    v2_begin(&v, 0x21, 0x11);
    v2_addr(&v, 4, "203.0.113.7", "192.0.2.1", 51000, 7000);
    v2_end(&v);
    expect_done("v2 PROXY TCP/IPv4", v.b, v.n, &h);
    check(h.version == 2 && !h.local && h.length == 28, "v2 PROXY TCP/IPv4", "version %d local %d length %zu",
          h.version, h.local, h.length);
    expect_peer("v2 IPv4 source", &h.source, 4, "203.0.113.7", 51000);
    expect_peer("v2 IPv4 destination", &h.destination, 4, "192.0.2.1", 7000);

    v2_begin(&v, 0x21, 0x12);
    v2_addr(&v, 4, "203.0.113.7", "192.0.2.1", 53, 5353);
    v2_end(&v);
    expect_done("v2 PROXY UDP/IPv4 (addresses accepted)", v.b, v.n, &h);
    expect_peer("v2 UDP/IPv4 source", &h.source, 4, "203.0.113.7", 53);

    v2_begin(&v, 0x21, 0x21);
    v2_addr(&v, 6, "2001:db8::7", "2001:db8::1", 443, 65535);
    v2_end(&v);
    expect_done("v2 PROXY TCP/IPv6", v.b, v.n, &h);
    check(!h.local && h.length == 52, "v2 PROXY TCP/IPv6", "local %d length %zu", h.local, h.length);
    expect_peer("v2 IPv6 source", &h.source, 6, "2001:db8::7", 443);
    expect_peer("v2 IPv6 destination", &h.destination, 6, "2001:db8::1", 65535);

    v2_begin(&v, 0x21, 0x22);
    v2_addr(&v, 6, "2001:db8::7", "2001:db8::1", 0, 1);
    v2_end(&v);
    expect_done("v2 PROXY UDP/IPv6", v.b, v.n, &h);
    expect_peer("v2 UDP/IPv6 destination", &h.destination, 6, "2001:db8::1", 1);

    v2_begin(&v, 0x21, 0x21);
    v2_addr(&v, 6, "::ffff:198.51.100.9", "::ffff:10.0.0.1", 40000, 7000);
    v2_end(&v);
    expect_done("v2 IPv4-mapped IPv6", v.b, v.n, &h);
    expect_peer("v2 IPv4-mapped source is IPv4", &h.source, 4, "198.51.100.9", 40000);
    expect_peer("v2 IPv4-mapped destination is IPv4", &h.destination, 4, "10.0.0.1", 7000);

    /* TLVs of every registered kind, and unknown ones, are skipped. */
    v2_begin(&v, 0x21, 0x11);
    v2_addr(&v, 4, "203.0.113.7", "192.0.2.1", 51000, 7000);
    v2_tlv(&v, 0x01, "h2", 2);                  /* PP2_TYPE_ALPN */
    v2_tlv(&v, 0x02, "echo.example.com", 16);   /* PP2_TYPE_AUTHORITY */
    v2_tlv(&v, 0x04, NULL, 0);                  /* PP2_TYPE_NOOP, empty */
    v2_tlv(&v, 0x05, "\x01\x02\x03\x04", 4);    /* PP2_TYPE_UNIQUE_ID */
    {
        v2_buf ssl = {.n = 0};
        uint8_t head[5] = {0x07, 0, 0, 0, 0}; /* client: SSL|CERT_CONN|CERT_SESS; verify 0 */
        v2_put(&ssl, head, 5);
        v2_tlv(&ssl, 0x21, "TLSv1.3", 7);             /* PP2_SUBTYPE_SSL_VERSION */
        v2_tlv(&ssl, 0x22, "client.example", 14);     /* PP2_SUBTYPE_SSL_CN */
        v2_tlv(&ssl, 0x23, "TLS_AES_128_GCM_SHA256", 22); /* PP2_SUBTYPE_SSL_CIPHER */
        v2_tlv(&ssl, 0x24, "ECDSA-SHA256", 12);       /* PP2_SUBTYPE_SSL_SIG_ALG */
        v2_tlv(&ssl, 0x25, "EC256", 5);               /* PP2_SUBTYPE_SSL_KEY_ALG */
        v2_tlv(&v, 0x20, ssl.b, ssl.n);               /* PP2_TYPE_SSL */
    }
    v2_tlv(&v, 0x30, "blue", 4);   /* PP2_TYPE_NETNS */
    v2_tlv(&v, 0xE0, "custom", 6); /* PP2_TYPE_MIN_CUSTOM */
    v2_tlv(&v, 0xFF, "future", 6); /* reserved for the future */
    v2_end(&v);
    expect_done("v2 IPv4 with TLVs", v.b, v.n, &h);
    expect_peer("v2 IPv4 with TLVs source", &h.source, 4, "203.0.113.7", 51000);

    v2_begin(&v, 0x21, 0x21);
    v2_addr(&v, 6, "2001:db8::7", "2001:db8::1", 443, 7000);
    v2_tlv(&v, 0x01, "http/1.1", 8);
    v2_tlv(&v, 0x42, "", 0);
    v2_end(&v);
    expect_done("v2 IPv6 with TLVs", v.b, v.n, &h);
    expect_peer("v2 IPv6 with TLVs source", &h.source, 6, "2001:db8::7", 443);

    /* A right CRC32c, wherever the TLV sits. */
    for (int where = 0; where < 2; where++) {
        v2_begin(&v, 0x21, 0x11);
        v2_addr(&v, 4, "203.0.113.7", "192.0.2.1", 51000, 7000);
        if (where == 1)
            v2_tlv(&v, 0x02, "echo.example.com", 16);
        size_t at = v.n + 3;
        v2_tlv(&v, 0x03, "\0\0\0\0", 4);
        v2_tlv(&v, 0x01, "h2", 2);
        v2_end(&v);
        uint32_t c = crc32c(v.b, v.n);
        v.b[at] = (uint8_t)(c >> 24);
        v.b[at + 1] = (uint8_t)(c >> 16);
        v.b[at + 2] = (uint8_t)(c >> 8);
        v.b[at + 3] = (uint8_t)c;
        expect_done(where ? "v2 CRC32C after a TLV" : "v2 CRC32C first", v.b, v.n, &h);
        v.b[at + 3] ^= 1;
        expect_invalid("v2 CRC32C wrong", v.b, v.n);
        v.b[at + 3] ^= 1;
        v.b[20] ^= 0x80; /* an address bit flipped in transit */
        expect_invalid("v2 CRC32C over a corrupted header", v.b, v.n);
    }

    /* LOCAL: the socket's addresses; family and block are ignored. */
    v2_begin(&v, 0x20, 0x00);
    v2_end(&v);
    expect_done("v2 LOCAL", v.b, v.n, &h);
    check(h.local && h.version == 2 && h.length == 16 && h.source.family == 0, "v2 LOCAL",
          "local %d version %d length %zu", h.local, h.version, h.length);

    v2_begin(&v, 0x20, 0x11);
    v2_addr(&v, 4, "203.0.113.7", "192.0.2.1", 51000, 7000);
    v2_put(&v, "\x99\xff", 2); /* not TLV-shaped: skipped unread */
    v2_end(&v);
    expect_done("v2 LOCAL with an address block", v.b, v.n, &h);
    check(h.local && h.source.family == 0 && h.length == 30, "v2 LOCAL with addresses", "local %d length %zu",
          h.local, h.length);

    v2_begin(&v, 0x20, 0xFF);
    v2_end(&v);
    expect_done("v2 LOCAL with a family byte it ignores", v.b, v.n, &h);
    check(h.local, "v2 LOCAL, family ignored", "not local");

    /* PROXY with UNSPEC: local, the block skipped. */
    v2_begin(&v, 0x21, 0x00);
    v2_put(&v, "\x01\x02\x03\x04\x05\x06\x07", 7);
    v2_end(&v);
    expect_done("v2 PROXY UNSPEC", v.b, v.n, &h);
    check(h.local && h.length == 23, "v2 PROXY UNSPEC", "local %d length %zu", h.local, h.length);

    /* PROXY over UNIX sockets: local, 216 bytes of addresses, then TLVs. */
    for (uint8_t fam = 0x31; fam <= 0x32; fam++) {
        v2_begin(&v, 0x21, fam);
        uint8_t paths[216] = {0};
        memcpy(paths, "/run/haproxy.sock", 17);
        v2_put(&v, paths, sizeof paths);
        v2_tlv(&v, 0x01, "h2", 2);
        v2_end(&v);
        expect_done(fam == 0x31 ? "v2 PROXY UNIX stream" : "v2 PROXY UNIX datagram", v.b, v.n, &h);
        check(h.local && h.length == 16 + 216 + 5, "v2 PROXY UNIX", "local %d length %zu", h.local, h.length);
    }

    /* The largest header: exactly FE_PROXY_MAX_HEADER bytes. */
    v2_begin(&v, 0x21, 0x11);
    v2_addr(&v, 4, "203.0.113.7", "192.0.2.1", 51000, 7000);
    {
        static uint8_t pad[FE_PROXY_MAX_HEADER];
        v2_tlv(&v, 0x04, pad, FE_PROXY_MAX_HEADER - v.n - 3);
    }
    v2_end(&v);
    check(v.n == FE_PROXY_MAX_HEADER, "v2 largest", "fixture is %zu bytes", v.n);
    expect_done("v2 PROXY of FE_PROXY_MAX_HEADER bytes", v.b, v.n, &h);

    v2_begin(&v, 0x20, 0x00);
    v2_set_len(&v, FE_PROXY_MAX_HEADER - 16);
    memset(v.b + 16, 0xAB, FE_PROXY_MAX_HEADER - 16);
    expect_done("v2 LOCAL of FE_PROXY_MAX_HEADER bytes", v.b, FE_PROXY_MAX_HEADER, &h);
}

static void v2_invalid(void)
{
    v2_buf v;
    /* A valid IPv4 header, altered below. */
    v2_buf good;
    v2_begin(&good, 0x21, 0x11);
    v2_addr(&good, 4, "203.0.113.7", "192.0.2.1", 51000, 7000);
    v2_end(&good);

    for (size_t i = 0; i < 12; i++) {
        v = good;
        v.b[i] ^= 0x20;
        char name[64];
        snprintf(name, sizeof name, "v2 signature byte %zu wrong", i);
        expect_invalid(name, v.b, v.n);
        if (i > 0)
            expect_invalid("v2 wrong signature byte, judged on arrival", v.b, i + 1);
    }

    static const uint8_t bad_ver_cmd[] = {0x01, 0x11, 0x10, 0x31, 0xF1, 0x22, 0x2F, 0x23, 0x02};
    for (size_t i = 0; i < sizeof bad_ver_cmd; i++) {
        v = good;
        v.b[12] = bad_ver_cmd[i];
        char name[64];
        snprintf(name, sizeof name, "v2 version/command 0x%02x", bad_ver_cmd[i]);
        expect_invalid(name, v.b, v.n);
        expect_invalid("v2 bad version/command, judged on arrival", v.b, 13);
    }

    static const uint8_t bad_fam[] = {0x01, 0x02, 0x10, 0x13, 0x20, 0x23, 0x30, 0x33, 0x40, 0x41, 0xFF};
    for (size_t i = 0; i < sizeof bad_fam; i++) {
        v = good;
        v.b[13] = bad_fam[i];
        char name[64];
        snprintf(name, sizeof name, "v2 family 0x%02x", bad_fam[i]);
        expect_invalid(name, v.b, v.n);
        expect_invalid("v2 bad family, judged on arrival", v.b, 14);
    }

    /* The length must cover the addresses. */
    v = good;
    v2_set_len(&v, 11);
    expect_invalid("v2 IPv4 length 11", v.b, v.n);
    expect_invalid("v2 IPv4 length 11, judged on arrival", v.b, 16);
    v2_set_len(&v, 0);
    expect_invalid("v2 IPv4 length 0", v.b, v.n);
    v2_begin(&v, 0x21, 0x21);
    v2_addr(&v, 6, "2001:db8::7", "2001:db8::1", 443, 7000);
    v2_set_len(&v, 35);
    expect_invalid("v2 IPv6 length 35", v.b, 16 + 35);
    v2_set_len(&v, 12);
    expect_invalid("v2 IPv6 with an IPv4-sized block", v.b, 16 + 12);
    v2_begin(&v, 0x21, 0x31);
    memset(v.b + 16, 0, 215);
    v2_set_len(&v, 215);
    expect_invalid("v2 UNIX length 215", v.b, 16 + 215);

    /* Oversized, refused as soon as the length field is in. */
    v2_begin(&v, 0x21, 0x11);
    v2_set_len(&v, FE_PROXY_MAX_HEADER - 16 + 1);
    expect_invalid("v2 of FE_PROXY_MAX_HEADER + 1 bytes", v.b, 16);
    v2_set_len(&v, 0xFFFF);
    expect_invalid("v2 length 65535", v.b, 16);
    v2_begin(&v, 0x20, 0x00);
    v2_set_len(&v, FE_PROXY_MAX_HEADER - 16 + 1);
    expect_invalid("v2 LOCAL of FE_PROXY_MAX_HEADER + 1 bytes", v.b, 16);

    /* TLVs that do not fill the rest exactly. */
    v = good;
    v2_tlv(&v, 0x01, "h2", 2);
    v2_set_len(&v, (unsigned)(v.n - 16 - 1));
    expect_invalid("v2 TLV one byte past the end", v.b, v.n - 1);
    v = good;
    v2_tlv(&v, 0x01, "h2", 2);
    v2_put(&v, "\x01\x00", 2); /* 2 bytes: no room for a TLV header */
    v2_end(&v);
    expect_invalid("v2 2 stray bytes after the TLVs", v.b, v.n);
    v = good;
    v2_put(&v, "\x04", 1);
    v2_end(&v);
    expect_invalid("v2 1 stray byte after the addresses", v.b, v.n);
    v = good;
    v2_tlv(&v, 0x02, "echo.example.com", 16);
    v.b[good.n + 2] = 17; /* the value claims a byte more than there is */
    v2_end(&v);
    expect_invalid("v2 TLV value longer than the header", v.b, v.n);
    expect_invalid("v2 bad TLV length, judged on arrival", v.b, good.n + 3);
    v = good;
    v2_tlv(&v, 0x20, "\x01\x00\x00\x00\x00", 5);
    v.b[good.n + 1] = 0xFF; /* 0xFF05 */
    v2_end(&v);
    expect_invalid("v2 SSL TLV with a huge length", v.b, v.n);

    /* CRC32C with a wrong size, or twice. */
    v = good;
    v2_tlv(&v, 0x03, "\0\0\0", 3);
    v2_end(&v);
    expect_invalid("v2 CRC32C of 3 bytes", v.b, v.n);
    v = good;
    v2_tlv(&v, 0x03, "\0\0\0\0\0", 5);
    v2_end(&v);
    expect_invalid("v2 CRC32C of 5 bytes", v.b, v.n);
    v = good;
    size_t at1 = v.n + 3;
    v2_tlv(&v, 0x03, "\0\0\0\0", 4);
    size_t at2 = v.n + 3;
    v2_tlv(&v, 0x03, "\0\0\0\0", 4);
    v2_end(&v);
    uint32_t c = crc32c(v.b, v.n);
    for (int i = 0; i < 4; i++)
        v.b[at1 + (size_t)i] = v.b[at2 + (size_t)i] = (uint8_t)(c >> (24 - 8 * i));
    expect_invalid("v2 two CRC32C TLVs", v.b, v.n);

    /* Truncated, then the connection closes: the caller sees INCOMPLETE
     * until its timeout or the FIN; never DONE. */
    expect_status("v2 truncated in the addresses", good.b, good.n - 1, FE_PROXY_INCOMPLETE);
}

static void crc_known_answer(void)
{
    /* RFC 3720 B.4's check value, which the test's own CRC must match. */
    check(crc32c((const uint8_t *)"123456789", 9) == 0xE3069283u, "crc32c check value", "0x%08x",
          crc32c((const uint8_t *)"123456789", 9));
}

int main(void)
{
    crc_init();
    crc_known_answer();
    v1_valid();
    v1_invalid();
    early_refusal();
    v2_valid();
    v2_invalid();
    return check_summary();
}
