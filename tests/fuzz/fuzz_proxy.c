/*
 * fuzz_proxy.c - libFuzzer target for the PROXY protocol parser
 * (fe_proxy_parse), checking its contract, not only that it does not crash.
 *
 * Each input is used twice:
 *
 * 1. As a connection's first bytes. The input is parsed at every prefix
 *    length k = 0, 1, ..., size (each from a heap copy of exactly k bytes, so
 *    AddressSanitizer sees a read past the end), and the answers must form
 *    INCOMPLETE... then either DONE... or INVALID...:
 *    - a DONE header's length equals the first k that gave DONE (so every
 *      shorter prefix was INCOMPLETE), is at most FE_PROXY_MAX_HEADER (107 for
 *      v1), and every longer input gives the same header (bytes after it are
 *      the client's);
 *    - INVALID is final: every longer input is INVALID too;
 *    - INCOMPLETE never comes at or past the version's limit;
 *    - a header that is not local has families 4 or 6, a local one none;
 *      *out is zeroed unless DONE.
 *    Once the answer is final, later lengths are sampled (the next few, then
 *    a stride, then the whole input and the input followed by itself).
 *
 * 2. As a description of a header: its bytes pick a version, addresses,
 *    ports, TLVs (with a right CRC32c or not), and sometimes a size at the
 *    edge of a limit (v1 106-108 bytes, v2 4094-4098 bytes). The header is
 *    built by code independent of the parser's, and the parser must give
 *    exactly the fields it was built with (or INVALID where the size is past
 *    the limit), with every shorter prefix INCOMPLETE.
 *
 * Any violation prints what failed and calls abort().
 */
#include "fe_proxy.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, size_t k)
{
    fprintf(stderr, "fuzz_proxy: %s (at %zu bytes)\n", what, k);
    abort();
}

/* Parses a heap copy of exactly n bytes. */
static int parse_copy(const uint8_t *p, size_t n, fe_proxy_header *h)
{
    uint8_t *copy = malloc(n ? n : 1);
    if (copy == NULL)
        abort();
    if (n > 0)
        memcpy(copy, p, n);
    int rc = fe_proxy_parse(n ? copy : NULL, n, h);
    free(copy);
    return rc;
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

static int peer_is_zero(const fe_peer *p)
{
    static const fe_peer zero;
    return peer_equal(p, &zero);
}

static void check_peer(const fe_peer *p, size_t k)
{
    if (p->family != 4 && p->family != 6)
        fail("address family not 4 or 6", k);
    if (p->family == 4) {
        static const uint8_t zeros[12];
        if (memcmp(p->addr + 4, zeros, 12) != 0)
            fail("IPv4 address with bytes past its 4", k);
    }
}

/* What any single answer must satisfy on its own. */
static void check_answer(const uint8_t *data, int rc, const fe_proxy_header *h, size_t k)
{
    static const fe_proxy_header zero;
    if (rc != FE_PROXY_DONE) {
        if (rc != FE_PROXY_INCOMPLETE && rc != FE_PROXY_INVALID)
            fail("unknown status", k);
        if (!header_equal(h, &zero))
            fail("*out not zeroed", k);
        return;
    }
    if (h->length > k || h->length > FE_PROXY_MAX_HEADER)
        fail("DONE length past the input or the maximum", k);
    if (h->version == 1) {
        if (data[0] != 'P' || h->length > FE_PROXY_V1_MAX_HEADER || h->length < 15)
            fail("v1 header of impossible length", k);
        if (data[h->length - 2] != '\r' || data[h->length - 1] != '\n')
            fail("v1 header not ending in CRLF", k);
    } else if (h->version == 2) {
        if (data[0] != '\r' || h->length < FE_PROXY_V2_MIN_HEADER)
            fail("v2 header of impossible length", k);
        if (h->length != FE_PROXY_V2_MIN_HEADER + ((size_t)data[14] << 8 | data[15]))
            fail("v2 length not 16 + its length field", k);
    } else {
        fail("version not 1 or 2", k);
    }
    if (h->local) {
        if (!peer_is_zero(&h->source) || !peer_is_zero(&h->destination))
            fail("local header with addresses", k);
    } else {
        check_peer(&h->source, k);
        check_peer(&h->destination, k);
    }
}

/* Part 1: the input as a connection's first bytes. */
static void check_stream(const uint8_t *data, size_t size)
{
    int final_rc = FE_PROXY_INCOMPLETE;
    size_t final_at = 0;
    fe_proxy_header first = {0};
    for (size_t k = 0; k <= size; k++) {
        if (final_rc != FE_PROXY_INCOMPLETE && k != size && k - final_at > 8 && (k - final_at) % 61 != 0)
            continue; /* sampled once the answer is final */
        fe_proxy_header h;
        int rc = parse_copy(data, k, &h);
        check_answer(data, rc, &h, k);
        if (rc == FE_PROXY_INCOMPLETE) {
            if (final_rc != FE_PROXY_INCOMPLETE)
                fail("INCOMPLETE after a final answer", k);
            if (k >= FE_PROXY_MAX_HEADER || (k >= FE_PROXY_V1_MAX_HEADER && data[0] == 'P'))
                fail("INCOMPLETE at or past the limit", k);
        } else if (final_rc == FE_PROXY_INCOMPLETE) {
            final_rc = rc;
            final_at = k;
            first = h;
            if (rc == FE_PROXY_DONE && h.length != k)
                fail("DONE before the header's last byte, or after it", k);
        } else if (rc != final_rc) {
            fail(rc == FE_PROXY_DONE ? "INVALID became DONE" : "DONE became INVALID", k);
        } else if (rc == FE_PROXY_DONE && !header_equal(&h, &first)) {
            fail("bytes after a header changed it", k);
        }
    }
    /* The input followed by itself: more of the same after a final answer. */
    if (final_rc != FE_PROXY_INCOMPLETE && size > 0) {
        uint8_t *twice = malloc(2 * size);
        memcpy(twice, data, size);
        memcpy(twice + size, data, size);
        fe_proxy_header h;
        int rc = parse_copy(twice, 2 * size, &h);
        free(twice);
        if (rc != final_rc || (rc == FE_PROXY_DONE && !header_equal(&h, &first)))
            fail("appending bytes changed a final answer", 2 * size);
    }
}

/* ---- part 2: headers built from a description ---------------------------- */

typedef struct {
    const uint8_t *p;
    size_t n, at;
} reader;

static unsigned next(reader *r)
{
    return r->at < r->n ? r->p[r->at++] : 0;
}

static uint32_t crc_table[256];

static uint32_t crc32c(const uint8_t *p, size_t n)
{
    if (crc_table[1] == 0) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            crc_table[i] = c;
        }
    }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++)
        c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* Draws an address of the family (sometimes IPv4-mapped IPv6) and what the
 * parser must report for it. */
static void draw_peer(reader *r, int family, uint8_t raw[16], fe_peer *want)
{
    memset(raw, 0, 16);
    memset(want, 0, sizeof *want);
    unsigned shape = next(r);
    for (int i = 0; i < 16; i++)
        raw[i] = (uint8_t)next(r);
    if (family == 6 && shape % 4 == 0) {
        memcpy(raw, v4_mapped_prefix, 12);
    } else if (family == 6 && shape % 4 == 1) {
        memset(raw + 2, 0, 12); /* runs of zeros, for "::" */
    }
    want->port = (uint16_t)(next(r) << 8 | next(r));
    if (family == 4) {
        want->family = 4;
        memcpy(want->addr, raw, 4);
    } else if (memcmp(raw, v4_mapped_prefix, 12) == 0) {
        want->family = 4;
        memcpy(want->addr, raw + 12, 4);
    } else {
        want->family = 6;
        memcpy(want->addr, raw, 16);
    }
}

static size_t put_text(uint8_t *out, size_t at, const char *s)
{
    size_t n = strlen(s);
    memcpy(out + at, s, n);
    return at + n;
}

/* Builds a header into out (room for FE_PROXY_MAX_HEADER + 8 bytes);
 * returns its length, with *want what the parser must answer (INVALID when
 * the size was drawn past a limit). */
static size_t build(reader *r, uint8_t *out, fe_proxy_header *want, int *want_rc)
{
    memset(want, 0, sizeof *want);
    *want_rc = FE_PROXY_DONE;
    unsigned kind = next(r) % 6;
    size_t n = 0;
    if (kind <= 1) { /* v1 TCP4 / TCP6 */
        int family = kind == 0 ? 4 : 6;
        uint8_t src[16], dst[16];
        draw_peer(r, family, src, &want->source);
        draw_peer(r, family, dst, &want->destination);
        unsigned upper = next(r) & 1;
        char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN], line[160];
        inet_ntop(family == 4 ? AF_INET : AF_INET6, src, a, sizeof a);
        inet_ntop(family == 4 ? AF_INET : AF_INET6, dst, b, sizeof b);
        if (upper) {
            for (char *c = a; *c; c++)
                if (*c >= 'a' && *c <= 'f')
                    *c = (char)(*c - 'a' + 'A');
        }
        snprintf(line, sizeof line, "PROXY TCP%d %s %s %u %u\r\n", family, a, b, want->source.port,
                 want->destination.port);
        n = put_text(out, 0, line);
        want->version = 1;
    } else if (kind == 2) { /* v1 UNKNOWN, sometimes at the 107-byte edge */
        unsigned t = next(r);
        size_t tail = t & 0x80 ? (size_t)(90 + t % 3) : (size_t)(t % 92); /* 90-92: 106-108 bytes */
        if (next(r) & 1 && tail == 0) {
            n = put_text(out, 0, "PROXY UNKNOWN\r\n");
        } else {
            n = put_text(out, 0, "PROXY UNKNOWN ");
            for (size_t i = 0; i < tail; i++) {
                uint8_t c = (uint8_t)next(r);
                out[n++] = c == '\r' || c == '\n' ? 'x' : c;
            }
            n = put_text(out, n, "\r\n");
        }
        want->local = true;
        want->version = 1;
        if (n > FE_PROXY_V1_MAX_HEADER)
            *want_rc = FE_PROXY_INVALID;
    } else { /* v2: 3 PROXY with addresses, 4 LOCAL, 5 PROXY UNSPEC */
        static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
        static const uint8_t fams[] = {0x11, 0x12, 0x21, 0x22, 0x31, 0x32};
        memcpy(out, sig, 12);
        n = 16;
        want->version = 2;
        size_t crc_at = 0;
        if (kind == 3) {
            uint8_t fam = fams[next(r) % sizeof fams];
            out[12] = 0x21;
            out[13] = fam;
            if (fam >> 4 == 3) {
                for (int i = 0; i < 216; i++)
                    out[n++] = (uint8_t)next(r);
                want->local = true;
            } else {
                int family = fam >> 4 == 1 ? 4 : 6;
                size_t alen = family == 4 ? 4 : 16;
                uint8_t src[16], dst[16];
                draw_peer(r, family, src, &want->source);
                draw_peer(r, family, dst, &want->destination);
                memcpy(out + n, src, alen);
                memcpy(out + n + alen, dst, alen);
                n += 2 * alen;
                out[n++] = (uint8_t)(want->source.port >> 8);
                out[n++] = (uint8_t)want->source.port;
                out[n++] = (uint8_t)(want->destination.port >> 8);
                out[n++] = (uint8_t)want->destination.port;
            }
            unsigned tlvs = next(r) % 5, crc_slot = next(r) % 6;
            for (unsigned t = 0; t <= tlvs; t++) {
                if (t == crc_slot) {
                    out[n] = 0x03;
                    out[n + 1] = 0;
                    out[n + 2] = 4;
                    crc_at = n + 3;
                    memset(out + n + 3, 0, 4);
                    n += 7;
                }
                if (t == tlvs)
                    break;
                uint8_t type = (uint8_t)next(r);
                size_t len = next(r) % 40;
                out[n] = type == 0x03 ? 0x04 : type;
                out[n + 1] = 0;
                out[n + 2] = (uint8_t)len;
                n += 3;
                for (size_t i = 0; i < len; i++)
                    out[n++] = (uint8_t)next(r);
            }
        } else {
            out[12] = kind == 4 ? 0x20 : 0x21;
            out[13] = kind == 4 ? (uint8_t)next(r) : 0x00; /* LOCAL ignores it */
            size_t len = next(r) % 64;
            for (size_t i = 0; i < len; i++)
                out[n++] = (uint8_t)next(r);
            want->local = true;
        }
        /* Sometimes a last TLV (or, unread, block bytes) takes the header to
         * 4094-4098 bytes. */
        unsigned edge = next(r);
        if (edge & 0x80) {
            size_t target = FE_PROXY_MAX_HEADER - 2 + edge % 5;
            if (kind == 3) {
                size_t len = target - n - 3;
                out[n] = 0x04;
                out[n + 1] = (uint8_t)(len >> 8);
                out[n + 2] = (uint8_t)len;
                memset(out + n + 3, 0xEE, len);
            } else {
                memset(out + n, 0xEE, target - n);
            }
            n = target;
        }
        out[14] = (uint8_t)((n - 16) >> 8);
        out[15] = (uint8_t)(n - 16);
        if (crc_at != 0) {
            uint32_t c = crc32c(out, n);
            if (next(r) % 8 == 0) {
                c ^= 1u << (next(r) % 32); /* a wrong checksum */
                *want_rc = FE_PROXY_INVALID;
            }
            out[crc_at] = (uint8_t)(c >> 24);
            out[crc_at + 1] = (uint8_t)(c >> 16);
            out[crc_at + 2] = (uint8_t)(c >> 8);
            out[crc_at + 3] = (uint8_t)c;
        }
        if (n > FE_PROXY_MAX_HEADER)
            *want_rc = FE_PROXY_INVALID;
    }
    if (*want_rc == FE_PROXY_DONE)
        want->length = n;
    else
        memset(want, 0, sizeof *want);
    return n;
}

static void check_built(const uint8_t *data, size_t size)
{
    static uint8_t out[FE_PROXY_MAX_HEADER + 8 + 64];
    reader r = {data, size, 0};
    fe_proxy_header want, got;
    int want_rc;
    size_t n = build(&r, out, &want, &want_rc);
    int rc = parse_copy(out, n, &got);
    if (rc != want_rc || !header_equal(&got, &want))
        fail(want_rc == FE_PROXY_DONE ? "a built header parsed wrong" : "a built header past a limit was not refused",
             n);
    /* With client bytes after it (the rest of the input): the same. */
    size_t extra = size - r.at < 64 ? size - r.at : 64;
    memcpy(out + n, data + r.at, extra);
    rc = parse_copy(out, n + extra, &got);
    if (rc != want_rc || !header_equal(&got, &want))
        fail("a built header followed by client bytes parsed wrong", n + extra);
    if (want_rc != FE_PROXY_DONE)
        return;
    /* Every truncation waits for more. Long v2 headers: sampled, and every
     * length near the end and near the TLVs' start. */
    for (size_t k = 0; k < n; k++) {
        if (n > 512 && k > 300 && k + 64 < n && k % 97 != 0)
            continue;
        rc = parse_copy(out, k, &got);
        if (rc != FE_PROXY_INCOMPLETE)
            fail("a truncated built header was not INCOMPLETE", k);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_stream(data, size);
    check_built(data, size);
    return 0;
}
