/*
 * fuzz_ws_http.c - libFuzzer target for the WebSocket handshake parser
 * (fe_ws_http_parse) and its answers (fe_ws_http_answer), checked against
 * the contract, not only for crashes.
 *
 * Input layout: byte 0 picks the policy (a path or none, an origin allow
 * list or none, max_header 8192, 64, 200 or 1024), byte 1 how the request is
 * split; the rest is the request.
 *
 * Checked:
 * - Split invariance: fed byte by byte to one kept struct, the answer is
 *   NONE up to some length D and then final; a fresh parse of D - 1 bytes
 *   is NONE and of D bytes (and of the whole input) is that same answer,
 *   with the same head_len, key, why and head_method; fed in pieces the
 *   input picks, the same again. Every parse reads a heap copy of exactly
 *   its length.
 * - Finality: after the final answer, more bytes change nothing.
 * - Invariants: NONE only while len < max_header; head_len <= len and
 *   <= max_header, and a head that ended ends in a blank line; UPGRADE only
 *   for a GET with a key of 22 base64 characters and "==" that decodes to 16
 *   bytes; PAGE only for GET, PAGE_HEAD only for HEAD, of / or /index.html;
 *   405 only for other methods.
 * - The answer: fe_ws_http_answer gives the right status line, a head that
 *   ends in a blank line, and a Content-Length equal to the body (no body
 *   for HEAD).
 */
#include "fe_ws_http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, size_t k)
{
    fprintf(stderr, "fuzz_ws_http: %s (at %zu bytes)\n", what, k);
    abort();
}

static enum fe_ws_answer parse_copy(const fe_ws_policy *p, const uint8_t *buf, size_t n, fe_ws_request *req)
{
    char *copy = malloc(n ? n : 1);
    if (copy == NULL)
        abort();
    if (n)
        memcpy(copy, buf, n);
    enum fe_ws_answer a = fe_ws_http_parse(p, n ? copy : NULL, n, req);
    free(copy);
    return a;
}

static bool same(const fe_ws_request *a, const fe_ws_request *b)
{
    return a->answer == b->answer && a->head_len == b->head_len && a->why == b->why &&
           a->head_method == b->head_method &&
           (a->answer != FE_WS_ANSWER_UPGRADE || memcmp(a->key, b->key, 24) == 0);
}

/* Decodes 24 base64 characters by table lookup; returns the byte count,
 * or -1 if a character is not base64 or padding is misplaced. */
static int base64_decoded_len(const char *k)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    int pad = 0;
    for (int i = 0; i < 24; i++) {
        if (k[i] == '=') {
            pad++;
            continue;
        }
        if (pad || k[i] == '\0' || strchr(alphabet, k[i]) == NULL)
            return -1;
    }
    if (pad > 2)
        return -1;
    return 18 - pad;
}

static const char *status_of(enum fe_ws_answer a)
{
    switch (a) {
    case FE_WS_ANSWER_UPGRADE:
        return "HTTP/1.1 101 ";
    case FE_WS_ANSWER_PAGE:
    case FE_WS_ANSWER_PAGE_HEAD:
        return "HTTP/1.1 200 ";
    case FE_WS_ANSWER_BAD_REQUEST:
        return "HTTP/1.1 400 ";
    case FE_WS_ANSWER_FORBIDDEN:
        return "HTTP/1.1 403 ";
    case FE_WS_ANSWER_NOT_FOUND:
        return "HTTP/1.1 404 ";
    case FE_WS_ANSWER_METHOD:
        return "HTTP/1.1 405 ";
    case FE_WS_ANSWER_VERSION:
        return "HTTP/1.1 426 ";
    default:
        return NULL;
    }
}

static void check_answer(const fe_ws_request *r, size_t k)
{
    static const char page[] = "<!doctype html><title>echo</title>";
    fe_buf out = {0};
    int rc = fe_ws_http_answer(r, page, sizeof page - 1, &out);
#ifndef FE_WITH_TLS
    if (r->answer == FE_WS_ANSWER_UPGRADE) {
        if (rc != -1 || out.len != 0)
            fail("101 without libcrypto", k);
        return;
    }
#endif
    if (rc != 0)
        fail("fe_ws_http_answer failed", k);
    const char *s = out.data + out.start;
    const char *status = status_of(r->answer);
    if (out.len < 13 || memcmp(s, status, 13) != 0)
        fail("wrong status line", k);
    const char *end = NULL;
    for (size_t i = 0; i + 4 <= out.len; i++)
        if (memcmp(s + i, "\r\n\r\n", 4) == 0) {
            end = s + i + 4;
            break;
        }
    if (end == NULL)
        fail("answer head without a blank line", k);
    size_t head = (size_t)(end - s), body = out.len - head;
    if (r->answer == FE_WS_ANSWER_UPGRADE) {
        if (body != 0 || head != 129)
            fail("101 of the wrong shape", k);
    } else {
        const char *cl = NULL;
        for (size_t i = 0; i + 16 <= head; i++)
            if (memcmp(s + i, "Content-Length: ", 16) == 0) {
                cl = s + i + 16;
                break;
            }
        if (cl == NULL)
            fail("no Content-Length", k);
        size_t stated = strtoul(cl, NULL, 10);
        if (r->head_method ? body != 0 : body != stated)
            fail("Content-Length does not match the body", k);
        if (!r->head_method && r->answer != FE_WS_ANSWER_PAGE && (body != strlen(r->why) + 1 || memcmp(end, r->why, body - 1) != 0))
            fail("error body is not why", k);
    }
    fe_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    static const char *const origins[] = {"http://a", "https://example.org"};
    static const size_t origin_lens[] = {8, 19};
    static const size_t maxes[] = {0, 64, 200, 1024};
    fe_ws_policy pol = {0};
    if (data[0] & 1) {
        pol.path = "/ws";
        pol.path_len = 3;
    }
    if (data[0] & 2) {
        pol.origins = origins;
        pol.origin_lens = origin_lens;
        pol.origin_count = 2;
    }
    pol.max_header = maxes[(data[0] >> 2) & 3];
    size_t max = pol.max_header ? pol.max_header : FE_WS_DEFAULT_MAX_HEADER;
    const fe_ws_policy *p = (data[0] & 0x30) == 0x30 ? NULL : &pol;
    if (p == NULL)
        max = FE_WS_DEFAULT_MAX_HEADER;
    const uint8_t *in = data + 2;
    size_t n = size - 2;

    fe_ws_request whole;
    whole.scanned = 0;
    enum fe_ws_answer w = parse_copy(p, in, n, &whole);
    if (w == FE_WS_ANSWER_NONE && n >= max)
        fail("NONE at or past max_header", n);
    if (w != FE_WS_ANSWER_NONE && whole.why == NULL)
        fail("a final answer without why", n);

    /* Byte by byte, one kept struct: find D. */
    fe_ws_request inc;
    inc.scanned = 0;
    size_t decided = 0;
    for (size_t k = 1; k <= n; k++) {
        enum fe_ws_answer a = parse_copy(p, in, k, &inc);
        if (a != FE_WS_ANSWER_NONE) {
            decided = k;
            break;
        }
    }
    if ((decided == 0) != (w == FE_WS_ANSWER_NONE))
        fail("byte by byte and whole disagree on finality", n);
    if (decided) {
        if (!same(&inc, &whole))
            fail("byte by byte answer differs from the whole", decided);
        fe_ws_request r;
        r.scanned = 0;
        if (parse_copy(p, in, decided - 1, &r) != FE_WS_ANSWER_NONE)
            fail("decided before D fresh", decided - 1);
        r.scanned = 0;
        parse_copy(p, in, decided, &r);
        if (!same(&r, &whole))
            fail("fresh parse at D differs", decided);
        /* Final is final. */
        fe_ws_request kept = inc;
        parse_copy(p, in, n, &kept);
        if (!same(&kept, &whole))
            fail("answer changed after final", n);
    }

    /* In pieces the input picks. */
    uint64_t rng = 0x9E3779B97F4A7C15u ^ data[1] ^ ((uint64_t)n << 20);
    size_t max_piece = 1 + (size_t)data[1] % 97;
    fe_ws_request pc;
    pc.scanned = 0;
    size_t at = 0;
    enum fe_ws_answer a = FE_WS_ANSWER_NONE;
    while (at < n && a == FE_WS_ANSWER_NONE) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        at += 1 + (size_t)(rng % max_piece);
        if (at > n)
            at = n;
        a = parse_copy(p, in, at, &pc);
    }
    if (a != w || (a != FE_WS_ANSWER_NONE && !same(&pc, &whole)))
        fail("pieces differ from the whole", at);

    if (w == FE_WS_ANSWER_NONE)
        return 0;
    /* Invariants of the final answer. */
    if (whole.head_len > n || whole.head_len > max)
        fail("head_len out of range", whole.head_len);
    if (whole.head_len > 0) {
        size_t h = whole.head_len;
        if (h < 2 || in[h - 1] != '\n' || !(in[h - 2] == '\n' || (h >= 3 && in[h - 2] == '\r' && in[h - 3] == '\n')))
            fail("head does not end in a blank line", h);
    } else if (w != FE_WS_ANSWER_BAD_REQUEST) {
        fail("a final answer other than 400 without a head", n);
    }
    bool get = n >= 4 && memcmp(in, "GET ", 4) == 0, head = n >= 5 && memcmp(in, "HEAD ", 5) == 0;
    if (w == FE_WS_ANSWER_UPGRADE) {
        if (!get || base64_decoded_len(whole.key) != 16)
            fail("UPGRADE without GET or a 16-byte key", n);
    }
    if (w == FE_WS_ANSWER_PAGE || w == FE_WS_ANSWER_PAGE_HEAD) {
        const uint8_t *t = in + (get ? 4 : 5);
        size_t left = n - (size_t)(t - in);
        bool root = left >= 2 && t[0] == '/' && (t[1] == ' ' || t[1] == '?');
        bool index = left >= 12 && memcmp(t, "/index.html", 11) == 0 && (t[11] == ' ' || t[11] == '?');
        if ((w == FE_WS_ANSWER_PAGE ? !get : !head) || !(root || index))
            fail("page for something else", n);
    }
    if (w == FE_WS_ANSWER_METHOD && (get || head))
        fail("405 for GET or HEAD", n);
    check_answer(&whole, n);
    return 0;
}
