/*
 * test_ws.c - known vectors for the WebSocket handshake parser
 * (fe_ws_http.c) and frame codec (fe_ws_frame.c).
 *
 * Requests: each parsed whole, then fed byte by byte and in random pieces
 * to one kept struct (the answer must be NONE until it is final, then the
 * same as the whole parse), and parsed fresh at every prefix length (NONE,
 * then from some length on the final answer, never anything else). Inputs
 * are heap copies of exactly their length, so AddressSanitizer sees any
 * read past the bytes given.
 *
 * Frames: each input fed whole, byte by byte and in random pieces must give
 * the same output, result and counts; every call's output is checked
 * against the bound in fe_ws_frame.h.
 *
 * Prints each failure, then "N passed, M failed"; exits 0 only when M is 0.
 */
#include "fe_ws_frame.h"
#include "fe_ws_http.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15u;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        abort();
    return p;
}

/* ==== the handshake ====================================================== */

static const char *answer_name(enum fe_ws_answer a)
{
    static const char *const names[] = {"NONE", "UPGRADE", "PAGE", "PAGE_HEAD", "400", "403", "404", "405", "426"};
    return (unsigned)a < sizeof names / sizeof names[0] ? names[a] : "?";
}

/* Parses a heap copy of buf[0, n) with req (kept by the caller). */
static enum fe_ws_answer parse_copy(const fe_ws_policy *p, const char *buf, size_t n, fe_ws_request *req)
{
    char *copy = xmalloc(n);
    memcpy(copy, buf, n);
    enum fe_ws_answer a = fe_ws_http_parse(p, n ? copy : NULL, n, req);
    free(copy);
    return a;
}

static int same_result(const fe_ws_request *a, const fe_ws_request *b)
{
    return a->answer == b->answer && a->head_len == b->head_len && a->why == b->why &&
           a->head_method == b->head_method &&
           (a->answer != FE_WS_ANSWER_UPGRADE || memcmp(a->key, b->key, 24) == 0);
}

/* Feeds buf[0, n) in pieces (sizes from next_piece) to one kept struct.
 * Returns the first final answer's struct in *got (NONE if none). */
static void feed_pieces(const fe_ws_policy *p, const char *buf, size_t n, size_t max_piece, fe_ws_request *got,
                        const char *name)
{
    fe_ws_request req;
    req.scanned = 0;
    size_t at = 0;
    enum fe_ws_answer a = FE_WS_ANSWER_NONE;
    while (at < n && a == FE_WS_ANSWER_NONE) {
        size_t piece = max_piece == 1 ? 1 : 1 + (size_t)(rng() % max_piece);
        at = at + piece > n ? n : at + piece;
        a = parse_copy(p, buf, at, &req);
    }
    if (a != FE_WS_ANSWER_NONE) {
        /* Final is final: more bytes change nothing. */
        fe_ws_request again = req;
        enum fe_ws_answer b = parse_copy(p, buf, n, &again);
        check(b == a && same_result(&again, &req), name, "answer changed after final: %s then %s",
              answer_name(a), answer_name(b));
    }
    *got = req;
}

/* The whole request, then every split, must give want. Returns the whole
 * parse in *out (may be NULL). */
static void expect_request_p(const char *name, const fe_ws_policy *p, const char *text, size_t n,
                             enum fe_ws_answer want, fe_ws_request *out)
{
    fe_ws_request whole;
    whole.scanned = 0;
    enum fe_ws_answer a = parse_copy(p, text, n, &whole);
    check(a == want, name, "whole: %s, want %s (%s)", answer_name(a), answer_name(want),
          whole.why ? whole.why : "-");
    check(whole.head_len <= n, name, "head_len %zu past %zu", whole.head_len, n);
    if (out)
        *out = whole;

    fe_ws_request got;
    feed_pieces(p, text, n, 1, &got, name);
    check(same_result(&got, &whole), name, "byte by byte: %s (%s), whole %s", answer_name(got.answer),
          got.why ? got.why : "-", answer_name(whole.answer));
    for (int r = 0; r < 8; r++) {
        feed_pieces(p, text, n, 1 + (size_t)(rng() % 40), &got, name);
        check(same_result(&got, &whole), name, "random pieces: %s, whole %s", answer_name(got.answer),
              answer_name(whole.answer));
    }
    /* Fresh parses of every prefix: NONE, then the final answer. */
    size_t bad = 0, first_bad = 0;
    int decided = 0;
    for (size_t k = 0; k <= n; k++) {
        fe_ws_request r;
        r.scanned = 0;
        enum fe_ws_answer b = parse_copy(p, text, k, &r);
        int ok = decided ? same_result(&r, &whole) : (b == FE_WS_ANSWER_NONE || same_result(&r, &whole));
        if (b != FE_WS_ANSWER_NONE)
            decided = 1;
        if (!ok && bad++ == 0)
            first_bad = k;
    }
    check(bad == 0, name, "%zu prefixes disagree, the first at %zu bytes", bad, first_bad);
    /* Frames after a whole head are not its business. */
    if (whole.head_len > 0) {
        char *more = xmalloc(n + 9);
        memcpy(more, text, n);
        memcpy(more + n, "\x81\x83\r\n\r\n\0xy", 9);
        fe_ws_request r;
        r.scanned = 0;
        parse_copy(p, more, n + 9, &r);
        check(same_result(&r, &whole), name, "bytes after the head changed the answer");
        free(more);
    }
}

static void expect_request(const char *name, const fe_ws_policy *p, const char *text, enum fe_ws_answer want)
{
    expect_request_p(name, p, text, strlen(text), want, NULL);
}

#define CHROME_HEAD                                                                                   \
    "GET /chat HTTP/1.1\r\n"                                                                          \
    "Host: localhost:9000\r\n"                                                                        \
    "Connection: Upgrade\r\n"                                                                         \
    "Pragma: no-cache\r\n"                                                                            \
    "Cache-Control: no-cache\r\n"                                                                     \
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "             \
    "Chrome/124.0.0.0 Safari/537.36\r\n"                                                              \
    "Upgrade: websocket\r\n"                                                                          \
    "Origin: http://localhost:9000\r\n"                                                               \
    "Sec-WebSocket-Version: 13\r\n"                                                                   \
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"                                                    \
    "Accept-Language: en-US,en;q=0.9\r\n"                                                             \
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"                                                 \
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"

/* A minimal upgrade with one header line replaced (or added): base lines,
 * with the line starting with `drop` left out and `add` appended. */
static void upgrade_variant(char *dst, size_t cap, const char *target, const char *drop, const char *add)
{
    static const char *const lines[] = {
        "Host: example.com\r\n",
        "Upgrade: websocket\r\n",
        "Connection: Upgrade\r\n",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "Sec-WebSocket-Version: 13\r\n",
    };
    snprintf(dst, cap, "GET %s HTTP/1.1\r\n", target);
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        if (drop == NULL || strncmp(lines[i], drop, strlen(drop)) != 0)
            strncat(dst, lines[i], cap - strlen(dst) - 1);
    if (add)
        strncat(dst, add, cap - strlen(dst) - 1);
    strncat(dst, "\r\n", cap - strlen(dst) - 1);
}

static void http_requests(void)
{
    fe_ws_request r;
    /* A browser's request, with and without an allow list and a path. */
    expect_request_p("chrome", NULL, CHROME_HEAD "\r\n", strlen(CHROME_HEAD "\r\n"), FE_WS_ANSWER_UPGRADE, &r);
    check(memcmp(r.key, "dGhlIHNhbXBsZSBub25jZQ==", 24) == 0, "chrome", "key not kept");
    check(r.head_len == strlen(CHROME_HEAD "\r\n"), "chrome", "head_len %zu", r.head_len);
    const char *origins[] = {"https://example.org", "http://localhost:9000"};
    const size_t origin_lens[] = {19, 21};
    fe_ws_policy pol = {"/chat", 5, origins, origin_lens, 2, 0};
    expect_request("chrome, path and origin allowed", &pol, CHROME_HEAD "\r\n", FE_WS_ANSWER_UPGRADE);
    fe_ws_policy other_path = {"/ws", 3, NULL, NULL, 0, 0};
    expect_request("chrome, other path", &other_path, CHROME_HEAD "\r\n", FE_WS_ANSWER_NOT_FOUND);
    fe_ws_policy only_org = {NULL, 0, origins, origin_lens, 1, 0};
    expect_request("chrome, origin not allowed", &only_org, CHROME_HEAD "\r\n", FE_WS_ANSWER_FORBIDDEN);
    expect_request("chrome, query ignored", &pol,
                   "GET /chat?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                   "Origin:  https://example.org \t\r\n\r\n",
                   FE_WS_ANSWER_UPGRADE);
    expect_request("origin differs in case", &pol,
                   "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                   "Origin: https://Example.org\r\n\r\n",
                   FE_WS_ANSWER_FORBIDDEN);
    expect_request("two origins", &pol,
                   "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                   "Origin: https://example.org\r\nOrigin: https://example.org\r\n\r\n",
                   FE_WS_ANSWER_FORBIDDEN);

    char buf[1024];
    upgrade_variant(buf, sizeof buf, "/", NULL, NULL);
    expect_request("minimal upgrade", NULL, buf, FE_WS_ANSWER_UPGRADE);
    expect_request("minimal upgrade, no origin needed without a list", NULL, buf, FE_WS_ANSWER_UPGRADE);
    expect_request("minimal upgrade, origin missing", &pol, buf, FE_WS_ANSWER_NOT_FOUND); /* path first */
    upgrade_variant(buf, sizeof buf, "/chat", NULL, NULL);
    expect_request("minimal upgrade at the path, origin missing", &pol, buf, FE_WS_ANSWER_FORBIDDEN);

    /* Header lists, case and whitespace. */
    upgrade_variant(buf, sizeof buf, "/", "Connection", "Connection: keep-alive, Upgrade\r\n");
    expect_request("Connection: keep-alive, Upgrade (Firefox)", NULL, buf, FE_WS_ANSWER_UPGRADE);
    upgrade_variant(buf, sizeof buf, "/", "Connection", "connection: keep-alive\r\nCONNECTION:  ,UPGRADE ,\r\n");
    expect_request("Connection as two headers, odd case", NULL, buf, FE_WS_ANSWER_UPGRADE);
    upgrade_variant(buf, sizeof buf, "/", "Upgrade", "upgrade: h2c, WebSocket\r\n");
    expect_request("Upgrade list", NULL, buf, FE_WS_ANSWER_UPGRADE);
    upgrade_variant(buf, sizeof buf, "/", "Upgrade", "Upgrade: h2c\r\n");
    expect_request("Upgrade without websocket: the page", NULL, buf, FE_WS_ANSWER_PAGE);
    upgrade_variant(buf, sizeof buf, "/x", "Upgrade", "Upgrade: websockets\r\n");
    expect_request("Upgrade: websockets is not websocket", NULL, buf, FE_WS_ANSWER_NOT_FOUND);
    upgrade_variant(buf, sizeof buf, "/", "Connection", "Connection: keep-alive\r\n");
    expect_request("Connection without upgrade", NULL, buf, FE_WS_ANSWER_BAD_REQUEST);
    upgrade_variant(buf, sizeof buf, "/", "Connection", NULL);
    expect_request("no Connection", NULL, buf, FE_WS_ANSWER_BAD_REQUEST);
    upgrade_variant(buf, sizeof buf, "/", "Connection", "Connection: upgrades\r\n");
    expect_request("Connection: upgrades", NULL, buf, FE_WS_ANSWER_BAD_REQUEST);

    /* Host */
    upgrade_variant(buf, sizeof buf, "/", "Host", NULL);
    expect_request("no Host", NULL, buf, FE_WS_ANSWER_BAD_REQUEST);
    upgrade_variant(buf, sizeof buf, "/", NULL, "host: again\r\n");
    expect_request("two Hosts", NULL, buf, FE_WS_ANSWER_BAD_REQUEST);
    expect_request("page without Host", NULL, "GET / HTTP/1.1\r\n\r\n", FE_WS_ANSWER_BAD_REQUEST);

    /* Version */
    upgrade_variant(buf, sizeof buf, "/", "Sec-WebSocket-Version", "Sec-WebSocket-Version: 8\r\n");
    expect_request("version 8", NULL, buf, FE_WS_ANSWER_VERSION);
    upgrade_variant(buf, sizeof buf, "/", "Sec-WebSocket-Version", "Sec-WebSocket-Version: 13, 8\r\n");
    expect_request("version list", NULL, buf, FE_WS_ANSWER_VERSION);
    upgrade_variant(buf, sizeof buf, "/", "Sec-WebSocket-Version", "Sec-WebSocket-Version:\t13 \r\n");
    expect_request("version with OWS", NULL, buf, FE_WS_ANSWER_UPGRADE);
    upgrade_variant(buf, sizeof buf, "/", "Sec-WebSocket-Version", NULL);
    expect_request("no version", NULL, buf, FE_WS_ANSWER_BAD_REQUEST);
    upgrade_variant(buf, sizeof buf, "/", NULL, "Sec-WebSocket-Version: 13\r\n");
    expect_request("two versions", NULL, buf, FE_WS_ANSWER_BAD_REQUEST);

    /* Key */
    static const char *const bad_keys[] = {
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=\r\n",    /* 23 chars */
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ===\r\n",  /* 25 chars */
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n",     /* no padding */
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ===\r\n",   /* 15 bytes */
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ-=\r\n",   /* not base64 */
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSB*b25jZQ==\r\n",   /* not base64 */
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==x\r\n",  /* trailing */
        "Sec-WebSocket-Key: dGhlIHNhbXBs ZSBub25jZQ==\r\n",  /* space inside */
        "Sec-WebSocket-Key: \r\n",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==dGhlIHNhbXBsZSBub25jZQ==\r\n",
    };
    for (size_t i = 0; i < sizeof bad_keys / sizeof bad_keys[0]; i++) {
        upgrade_variant(buf, sizeof buf, "/", "Sec-WebSocket-Key", bad_keys[i]);
        expect_request(bad_keys[i], NULL, buf, FE_WS_ANSWER_BAD_REQUEST);
    }
    upgrade_variant(buf, sizeof buf, "/", "Sec-WebSocket-Key", "sec-websocket-key:   AAAAAAAAAAAAAAAAAAAAAA==  \r\n");
    expect_request_p("key with OWS", NULL, buf, strlen(buf), FE_WS_ANSWER_UPGRADE, &r);
    check(memcmp(r.key, "AAAAAAAAAAAAAAAAAAAAAA==", 24) == 0, "key with OWS", "key %.24s", r.key);
    upgrade_variant(buf, sizeof buf, "/", "Sec-WebSocket-Key", NULL);
    expect_request("no key", NULL, buf, FE_WS_ANSWER_BAD_REQUEST);
    upgrade_variant(buf, sizeof buf, "/", NULL, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
    expect_request("two keys", NULL, buf, FE_WS_ANSWER_BAD_REQUEST);

    /* Methods, paths, the page. */
    expect_request("page", &pol, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", FE_WS_ANSWER_PAGE);
    expect_request("page, LF only", &pol, "GET / HTTP/1.1\nHost: a\n\n", FE_WS_ANSWER_PAGE);
    expect_request("page, mixed line ends", &pol, "GET / HTTP/1.1\r\nHost: a\n\r\n", FE_WS_ANSWER_PAGE);
    expect_request("index.html", &pol, "GET /index.html?v=2 HTTP/1.1\r\nHost: a\r\n\r\n", FE_WS_ANSWER_PAGE);
    expect_request_p("HEAD page", &pol, "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", 28, FE_WS_ANSWER_PAGE_HEAD, &r);
    check(r.head_method, "HEAD page", "head_method not set");
    expect_request("HEAD elsewhere", NULL, "HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n", FE_WS_ANSWER_NOT_FOUND);
    expect_request("GET elsewhere", NULL, "GET /favicon.ico HTTP/1.1\r\nHost: a\r\n\r\n", FE_WS_ANSWER_NOT_FOUND);
    expect_request("POST", NULL, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
                   FE_WS_ANSWER_METHOD);
    expect_request("get is not GET", NULL, "get / HTTP/1.1\r\nHost: a\r\n\r\n", FE_WS_ANSWER_METHOD);
    upgrade_variant(buf, sizeof buf, "/", NULL, NULL);
    memcpy(buf, "PUT", 3);
    expect_request("PUT with Upgrade: websocket", NULL, buf, FE_WS_ANSWER_METHOD);

    /* Request line syntax. */
    static const char *const bad_lines[] = {
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
        "GET /  HTTP/1.1\r\nHost: a\r\n\r\n",
        " GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.10\r\nHost: a\r\n\r\n",
        "GET / http/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/2\r\nHost: a\r\n\r\n",
        "GET /\r\n\r\n",
        "GET\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\rHost: a\r\n\r\n",
        "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad_lines / sizeof bad_lines[0]; i++)
        expect_request(bad_lines[i], NULL, bad_lines[i], FE_WS_ANSWER_BAD_REQUEST);
    /* A NUL in the method. */
    expect_request_p("NUL in method", NULL, "GE\0 / HTTP/1.1\r\nHost: a\r\n\r\n", 27, FE_WS_ANSWER_BAD_REQUEST, &r);
    /* Refused early: on the first byte, at the bad version byte. */
    fe_ws_request e;
    e.scanned = 0;
    check(parse_copy(NULL, "\x16", 1, &e) == FE_WS_ANSWER_BAD_REQUEST, "TLS first byte", "not refused at once");
    e.scanned = 0;
    check(parse_copy(NULL, "GET / HTTP/1.0", 14, &e) == FE_WS_ANSWER_BAD_REQUEST, "HTTP/1.0", "not refused at once");

    /* Header syntax. */
    static const char *const bad_headers[] = {
        "Host : a\r\n",            /* whitespace before ':' */
        "Host\t: a\r\n",
        "Host a\r\n",              /* no ':' */
        ": a\r\n",                 /* empty name */
        " folded\r\n",             /* obs-fold */
        "\tfolded\r\n",
        "X-A: b\rc\r\n",           /* bare CR */
        "X-A: b\r\r\n",
        "X-A: b\x01\r\n",          /* control character */
        "X-A: b\x7f\r\n",
        "X(A): b\r\n",             /* not a token */
        "\r\r\n",
    };
    for (size_t i = 0; i < sizeof bad_headers / sizeof bad_headers[0]; i++) {
        upgrade_variant(buf, sizeof buf, "/", NULL, bad_headers[i]);
        expect_request(bad_headers[i], NULL, buf, FE_WS_ANSWER_BAD_REQUEST);
    }
    static const char nul_value[] = "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n";
    expect_request_p("NUL in a value", NULL, nul_value, sizeof nul_value - 1, FE_WS_ANSWER_BAD_REQUEST, &r);
    upgrade_variant(buf, sizeof buf, "/", NULL, "X-Empty:\r\nX-Utf8: caf\xc3\xa9\r\nX-Tab: a\tb\r\n");
    expect_request("empty value, obs-text, HTAB", NULL, buf, FE_WS_ANSWER_UPGRADE);

    /* max_header: the head, its blank line included, may be exactly max. */
    fe_ws_policy small = {NULL, 0, NULL, NULL, 0, 0};
    const char *page = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t plen = strlen(page);
    small.max_header = plen;
    expect_request("head of exactly max_header", &small, page, FE_WS_ANSWER_PAGE);
    small.max_header = plen - 1;
    expect_request("head one past max_header", &small, page, FE_WS_ANSWER_BAD_REQUEST);
    small.max_header = plen - 2;
    expect_request("head two past max_header", &small, page, FE_WS_ANSWER_BAD_REQUEST);
    small.max_header = 5;
    expect_request("max_header in the CRLF of the request line", &small, "GET /\r\n", FE_WS_ANSWER_BAD_REQUEST);
    /* The default, 8192. */
    char *big = xmalloc(9000);
    strcpy(big, "GET / HTTP/1.1\r\nHost: a\r\nX-Big: ");
    size_t bl = strlen(big);
    memset(big + bl, 'x', 8192 - bl - 4);
    memcpy(big + 8192 - 4, "\r\n\r\n", 4);
    expect_request_p("8192-byte head", NULL, big, 8192, FE_WS_ANSWER_PAGE, NULL);
    memmove(big + 100, big + 99, 8192 - 99);
    expect_request_p("8193-byte head", NULL, big, 8193, FE_WS_ANSWER_BAD_REQUEST, NULL);
    free(big);
}

static void http_answers(void)
{
    char accept[29];
#ifdef FE_WITH_TLS
    check(fe_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", accept) == 0 &&
              strcmp(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0,
          "accept key", "RFC 6455 example gives %s", accept);
    check(fe_ws_available(), "available", "not with libcrypto");
#else
    check(fe_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", accept) == -1, "accept key", "without libcrypto");
    check(!fe_ws_available(), "available", "without libcrypto");
#endif
    fe_ws_request r;
    fe_buf out = {0};
    const char *text = CHROME_HEAD "\r\n";
    r.scanned = 0;
    fe_ws_http_parse(NULL, text, strlen(text), &r);
    int rc = fe_ws_http_answer(&r, "<p>", 3, &out);
#ifdef FE_WITH_TLS
    const char *want101 = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    check(rc == 0 && out.len == strlen(want101) && memcmp(out.data + out.start, want101, out.len) == 0,
          "101", "got %.*s", (int)out.len, out.data ? out.data + out.start : "");
#else
    check(rc == -1 && out.len == 0, "101", "without libcrypto: rc %d", rc);
#endif
    fe_buf_free(&out);

    struct {
        const char *req;
        const char *want;
    } cases[] = {
        {"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
         "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 5\r\n"
         "Cache-Control: no-store\r\nConnection: close\r\n\r\n<p>x\n"},
        {"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
         "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 5\r\n"
         "Cache-Control: no-store\r\nConnection: close\r\n\r\n"},
        {"POST / HTTP/1.1\r\nHost: a\r\n\r\n",
         "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\nContent-Length: 19\r\n"
         "Allow: GET, HEAD\r\nConnection: close\r\n\r\nmethod not allowed\n"},
        {"GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
         "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n"
         "Connection: close\r\n\r\nnot found\n"},
        {"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n",
         "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n"
         "Connection: close\r\n\r\n"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
         "Sec-WebSocket-Version: 7\r\n\r\n",
         "HTTP/1.1 426 Upgrade Required\r\nContent-Type: text/plain\r\nContent-Length: 44\r\n"
         "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\r\n"
         "unsupported Sec-WebSocket-Version (13 only)\n"},
        {"GET / HTTP/1.1\r\n\r\n",
         "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
         "Connection: close\r\n\r\nmissing Host\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        r.scanned = 0;
        fe_ws_http_parse(NULL, cases[i].req, strlen(cases[i].req), &r);
        rc = fe_ws_http_answer(&r, "<p>x\n", 5, &out);
        check(rc == 0 && out.len == strlen(cases[i].want) &&
                  memcmp(out.data + out.start, cases[i].want, out.len) == 0,
              cases[i].req, "answer:\n%.*s", (int)out.len, out.data ? out.data + out.start : "");
        fe_buf_free(&out);
    }
    r.scanned = 0;
    fe_ws_http_parse(NULL, "GET", 3, &r);
    check(fe_ws_http_answer(&r, "", 0, &out) == -1 && out.len == 0, "answer NONE", "not refused");
}

/* ==== frames ============================================================= */

/* Appends a client frame to b: b0 is FIN|RSV|opcode; form picks the length
 * encoding (0: the minimal one, 126 or 127 to force one); masked or not. */
static size_t frame(uint8_t *b, uint8_t b0, const void *payload, size_t n, int form, int masked)
{
    static const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t h = 0;
    b[h++] = b0;
    uint8_t mbit = masked ? 0x80 : 0;
    if (form == 0)
        form = n < 126 ? 0 : n <= 0xFFFF ? 126 : 127;
    if (form == 0) {
        b[h++] = (uint8_t)(mbit | n);
    } else if (form == 126) {
        b[h++] = mbit | 126;
        b[h++] = (uint8_t)(n >> 8);
        b[h++] = (uint8_t)n;
    } else {
        b[h++] = mbit | 127;
        for (int i = 0; i < 8; i++)
            b[h++] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
    }
    if (masked) {
        memcpy(b + h, mask, 4);
        h += 4;
    }
    const uint8_t *p = payload;
    for (size_t i = 0; i < n; i++)
        b[h + i] = masked ? p[i] ^ mask[i & 3] : p[i];
    return h + n;
}

/* A server frame (what the echo should be). */
static size_t sframe(uint8_t *b, uint8_t opcode, const void *payload, size_t n)
{
    size_t h = 0;
    b[h++] = 0x80 | opcode;
    if (n < 126) {
        b[h++] = (uint8_t)n;
    } else if (n <= 0xFFFF) {
        b[h++] = 126;
        b[h++] = (uint8_t)(n >> 8);
        b[h++] = (uint8_t)n;
    } else {
        b[h++] = 127;
        for (int i = 0; i < 8; i++)
            b[h++] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
    }
    if (n)
        memcpy(b + h, payload, n);
    return h + n;
}

static size_t sclose(uint8_t *b, uint16_t code)
{
    b[0] = 0x88;
    if (code == 0) {
        b[1] = 0;
        return 2;
    }
    b[1] = 2;
    b[2] = (uint8_t)(code >> 8);
    b[3] = (uint8_t)code;
    return 4;
}

typedef struct run_result {
    fe_buf out;
    int rc;
    uint32_t messages, pings;
    uint16_t close_code;
    bool peer_closed;
    size_t max_held;
} run_result;

/* Feeds in[0, n) in pieces of 1..max_piece bytes (max_piece 0: whole). */
static void run(uint64_t max_message, const uint8_t *in, size_t n, size_t max_piece, run_result *res,
                const char *name)
{
    memset(res, 0, sizeof *res);
    fe_ws_decoder d;
    fe_ws_decoder_init(&d, max_message);
    size_t at = 0;
    res->rc = FE_WS_OK;
    do {
        size_t piece = max_piece == 0 ? n - at : max_piece == 1 ? 1 : 1 + (size_t)(rng() % max_piece);
        if (piece > n - at)
            piece = n - at;
        uint8_t *copy = xmalloc(piece);
        memcpy(copy, in + at, piece);
        size_t held = d.msg_len, before = res->out.len; /* L in fe_ws_frame.h's bound */
        fe_ws_feed_info info;
        int rc = fe_ws_feed(&d, copy, piece, &res->out, &info);
        free(copy);
        check(res->out.len - before <= piece + held + FE_WS_FEED_SLACK, name,
              "output bound: %zu bytes out of %zu in, %zu held", res->out.len - before, piece, held);
        res->messages += info.messages;
        res->pings += info.pings;
        if (fe_ws_decoder_held(&d) > res->max_held)
            res->max_held = fe_ws_decoder_held(&d);
        if (rc == FE_WS_CLOSE) {
            if (res->rc != FE_WS_CLOSE) {
                res->close_code = info.close_code;
                res->peer_closed = info.peer_closed;
            } else {
                check(info.messages == 0 && info.pings == 0 && res->out.len == before, name,
                      "output after the close");
            }
        }
        res->rc = rc;
        at += piece;
        if (rc == FE_WS_NO_MEMORY)
            break;
    } while (at < n);
    check(fe_ws_closing(&d) == (res->rc == FE_WS_CLOSE), name, "fe_ws_closing disagrees");
    if (res->rc == FE_WS_CLOSE)
        check(fe_ws_decoder_held(&d) == 0, name, "holds %zu bytes after the close", fe_ws_decoder_held(&d));
    check(res->max_held <= max_message, name, "held %zu > max_message", res->max_held);
    fe_ws_decoder_free(&d);
}

/* in gives want (and, if close_code >= 0, ends with that close). */
static void expect_frames(const char *name, uint64_t max_message, const uint8_t *in, size_t n,
                          const uint8_t *want, size_t want_len, int close_code, bool peer_closed,
                          uint32_t messages, uint32_t pings)
{
    run_result whole;
    run(max_message, in, n, 0, &whole, name);
    int want_rc = close_code >= 0 ? FE_WS_CLOSE : FE_WS_OK;
    check(whole.rc == want_rc, name, "rc %d, want %d", whole.rc, want_rc);
    check(whole.out.len == want_len && (want_len == 0 || memcmp(whole.out.data + whole.out.start, want, want_len) == 0),
          name, "output differs (%zu bytes, want %zu)", whole.out.len, want_len);
    if (close_code >= 0)
        check(whole.close_code == close_code && whole.peer_closed == peer_closed, name,
              "close %u peer %d, want %d peer %d", whole.close_code, whole.peer_closed, close_code, peer_closed);
    check(whole.messages == messages && whole.pings == pings, name, "%u messages %u pings, want %u %u",
          whole.messages, whole.pings, messages, pings);
    for (int r = 0; r < 6; r++) {
        size_t piece = r == 0 ? 1 : r == 1 ? 2 : r == 2 ? 7 : 1 + (size_t)(rng() % 300);
        run_result part;
        run(max_message, in, n, piece, &part, name);
        check(part.rc == whole.rc && part.out.len == whole.out.len &&
                  (part.out.len == 0 ||
                   memcmp(part.out.data + part.out.start, whole.out.data + whole.out.start, part.out.len) == 0) &&
                  part.close_code == whole.close_code && part.peer_closed == whole.peer_closed &&
                  part.messages == whole.messages && part.pings == whole.pings,
              name, "pieces of up to %zu bytes differ from the whole (rc %d, %zu bytes out)", piece, part.rc,
              part.out.len);
        fe_buf_free(&part.out);
    }
    fe_buf_free(&whole.out);
}

static uint8_t fin_b0(uint8_t op)
{
    return (uint8_t)(0x80 | op);
}

static void frames_valid(void)
{
    uint8_t in[70000 * 2], want[70000 * 2];
    size_t n, w;
    const char *hello = "Hello";

    n = frame(in, fin_b0(1), hello, 5, 0, 1);
    w = sframe(want, 1, hello, 5);
    expect_frames("text", 1 << 20, in, n, want, w, -1, false, 1, 0);

    n = frame(in, fin_b0(2), hello, 5, 0, 1);
    w = sframe(want, 2, hello, 5);
    expect_frames("binary", 1 << 20, in, n, want, w, -1, false, 1, 0);

    n = frame(in, fin_b0(1), "", 0, 0, 1);
    n += frame(in + n, fin_b0(2), "", 0, 0, 1);
    w = sframe(want, 1, "", 0);
    w += sframe(want + w, 2, "", 0);
    expect_frames("empty text and binary", 1 << 20, in, n, want, w, -1, false, 2, 0);

    /* Fragmented text with a ping and a pong between the fragments. */
    n = frame(in, 0x01, "Hel", 3, 0, 1);
    n += frame(in + n, fin_b0(9), "ping!", 5, 0, 1);
    n += frame(in + n, 0x00, "", 0, 0, 1);
    n += frame(in + n, fin_b0(10), "pong", 4, 0, 1);
    n += frame(in + n, fin_b0(0), "lo", 2, 0, 1);
    w = sframe(want, 10, "ping!", 5);
    w += sframe(want + w, 1, hello, 5);
    expect_frames("fragmented text, ping between", 1 << 20, in, n, want, w, -1, false, 1, 1);

    /* Fragmented binary: echoed whole. */
    static uint8_t big[70000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 7 + 3);
    n = frame(in, 0x02, big, 100, 0, 1);
    n += frame(in + n, 0x00, big + 100, 30000, 0, 1);
    n += frame(in + n, fin_b0(0), big + 30100, 39900, 0, 1);
    w = sframe(want, 2, big, 70000);
    expect_frames("fragmented binary, 70000 bytes", 1 << 20, in, n, want, w, -1, false, 1, 0);

    /* Length encodings at their edges. */
    size_t sizes[] = {125, 126, 127, 65535, 65536, 70000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "binary of %zu", sizes[i]);
        n = frame(in, fin_b0(2), big, sizes[i], 0, 1);
        w = sframe(want, 2, big, sizes[i]);
        expect_frames(name, 1 << 20, in, n, want, w, -1, false, 1, 0);
        /* Text of that size (ASCII). */
        static uint8_t txt[70000];
        memset(txt, 'a' + (int)i, sizes[i]);
        snprintf(name, sizeof name, "text of %zu", sizes[i]);
        n = frame(in, fin_b0(1), txt, sizes[i], 0, 1);
        w = sframe(want, 1, txt, sizes[i]);
        expect_frames(name, sizes[i], in, n, want, w, -1, false, 1, 0);
    }

    /* Pings: empty, 125 bytes. */
    n = frame(in, fin_b0(9), "", 0, 0, 1);
    n += frame(in + n, fin_b0(9), big, 125, 0, 1);
    w = sframe(want, 10, "", 0);
    w += sframe(want + w, 10, big, 125);
    expect_frames("pings", 1 << 20, in, n, want, w, -1, false, 0, 2);

    /* A ping's payload does not count against max_message. */
    n = frame(in, fin_b0(9), big, 125, 0, 1);
    w = sframe(want, 10, big, 125);
    expect_frames("ping past max_message", 1, in, n, want, w, -1, false, 0, 1);

    /* Close: echoed with its code (reason dropped); nothing after it. */
    uint8_t cl[64] = {0x03, 0xE8, 'b', 'y', 'e'};
    n = frame(in, fin_b0(8), cl, 5, 0, 1);
    n += frame(in + n, fin_b0(1), hello, 5, 0, 1);
    w = sclose(want, 1000);
    expect_frames("close 1000 with reason, then data", 1 << 20, in, n, want, w, 1000, true, 0, 0);
    n = frame(in, fin_b0(8), "", 0, 0, 1);
    w = sclose(want, 0);
    expect_frames("empty close", 1 << 20, in, n, want, w, 0, true, 0, 0);
    n = frame(in, fin_b0(8), "", 0, 0, 1);
    memcpy(in + n, "garbage after the close", 23);
    n += 23;
    expect_frames("garbage after a close", 1 << 20, in, n, want, w, 0, true, 0, 0);

    unsigned ok_codes[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999};
    for (size_t i = 0; i < sizeof ok_codes / sizeof ok_codes[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "close %u", ok_codes[i]);
        cl[0] = (uint8_t)(ok_codes[i] >> 8);
        cl[1] = (uint8_t)ok_codes[i];
        n = frame(in, fin_b0(8), cl, 2, 0, 1);
        w = sclose(want, (uint16_t)ok_codes[i]);
        expect_frames(name, 1 << 20, in, n, want, w, (int)ok_codes[i], true, 0, 0);
    }
    /* A close between fragments ends it all; the fragment is dropped. */
    n = frame(in, 0x01, "Hel", 3, 0, 1);
    cl[0] = 0x03;
    cl[1] = 0xE9;
    n += frame(in + n, fin_b0(8), cl, 2, 0, 1);
    n += frame(in + n, fin_b0(0), "lo", 2, 0, 1);
    w = sclose(want, 1001);
    expect_frames("close between fragments", 1 << 20, in, n, want, w, 1001, true, 0, 0);
    /* Messages then a close in one read. */
    n = frame(in, fin_b0(1), "a", 1, 0, 1);
    n += frame(in + n, fin_b0(2), "b", 1, 0, 1);
    n += frame(in + n, fin_b0(8), "", 0, 0, 1);
    w = sframe(want, 1, "a", 1);
    w += sframe(want + w, 2, "b", 1);
    w += sclose(want + w, 0);
    expect_frames("two messages and a close", 1 << 20, in, n, want, w, 0, true, 2, 0);
}

static void frames_invalid(void)
{
    uint8_t in[300], want[300];
    size_t n, w;
    const char *hello = "Hello";
    char name[80];

    /* Each failed on its own, and after a good message. */
    struct {
        const char *name;
        uint8_t b0;
        size_t len;
        int form, masked;
        uint16_t code;
    } cases[] = {
        {"unmasked text", 0x81, 5, 0, 0, 1002},
        {"RSV1", 0xC1, 5, 0, 1, 1002},
        {"RSV2", 0xA2, 5, 0, 1, 1002},
        {"RSV3", 0x92, 5, 0, 1, 1002},
        {"opcode 3", 0x83, 5, 0, 1, 1002},
        {"opcode 7", 0x87, 5, 0, 1, 1002},
        {"opcode 11", 0x8B, 5, 0, 1, 1002},
        {"opcode 15", 0x8F, 5, 0, 1, 1002},
        {"ping without FIN", 0x09, 5, 0, 1, 1002},
        {"close without FIN", 0x08, 2, 0, 1, 1002},
        {"pong without FIN", 0x0A, 5, 0, 1, 1002},
        {"ping of 126", 0x89, 126, 0, 1, 1002},
        {"continuation without a message", 0x80, 5, 0, 1, 1002},
        {"continuation (no FIN) without a message", 0x00, 5, 0, 1, 1002},
        {"126 form for 125", 0x82, 125, 126, 1, 1002},
        {"126 form for 0", 0x82, 0, 126, 1, 1002},
        {"127 form for 65535", 0x82, 200, 127, 1, 1002},
        {"text too big", 0x81, 101, 0, 1, 1009},
        {"binary too big", 0x82, 101, 0, 1, 1009},
        {"binary too big, 126 form", 0x82, 200, 0, 1, 1009},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t payload[256];
        memset(payload, 'x', sizeof payload);
        n = frame(in, cases[i].b0, payload, cases[i].len, cases[i].form, cases[i].masked);
        if (strcmp(cases[i].name, "127 form for 65535") == 0) {
            in[1] = 0x80 | 127; /* the 127 form saying 65535: recode its length */
            memset(in + 2, 0, 8);
            in[8] = 0xFF;
            in[9] = 0xFF;
        }
        w = sclose(want, cases[i].code);
        expect_frames(cases[i].name, 100, in, n, want, w, cases[i].code, false, 0, 0);
        /* After a good message. */
        uint8_t again[300];
        size_t m = frame(again, fin_b0(1), hello, 5, 0, 1);
        n = frame(again + m, cases[i].b0, payload, cases[i].len, cases[i].form, cases[i].masked);
        if (strcmp(cases[i].name, "127 form for 65535") == 0) {
            again[m + 1] = 0x80 | 127;
            memset(again + m + 2, 0, 8);
            again[m + 8] = 0xFF;
            again[m + 9] = 0xFF;
        }
        w = sframe(want, 1, hello, 5);
        w += sclose(want + w, cases[i].code);
        snprintf(name, sizeof name, "%s, after a message", cases[i].name);
        expect_frames(name, 100, again, m + n, want, w, cases[i].code, false, 1, 0);
        /* Judged on the header alone: the payload need not arrive. */
        size_t hdr = cases[i].code == 1009 || cases[i].form ? (cases[i].len >= 126 || cases[i].form ? 4 : 2) : 2;
        if (cases[i].form == 127)
            hdr = 10;
        w = sclose(want, cases[i].code);
        snprintf(name, sizeof name, "%s, header only", cases[i].name);
        expect_frames(name, 100, in, hdr, want, w, cases[i].code, false, 0, 0);
    }

    /* A 64-bit length with the top bit set. */
    n = frame(in, 0x82, "", 0, 127, 1);
    in[2] = 0x80;
    w = sclose(want, 1002);
    expect_frames("64-bit length, top bit", UINT64_MAX, in, n, want, w, 1002, false, 0, 0);

    /* A new data frame inside a fragmented message. */
    n = frame(in, 0x01, "a", 1, 0, 1);
    n += frame(in + n, 0x81, "b", 1, 0, 1);
    w = sclose(want, 1002);
    expect_frames("text inside a fragmented message", 100, in, n, want, w, 1002, false, 0, 0);
    n = frame(in, 0x02, "a", 1, 0, 1);
    n += frame(in + n, 0x82, "b", 1, 0, 1);
    expect_frames("binary inside a fragmented message", 100, in, n, want, w, 1002, false, 0, 0);

    /* 1009 across fragments: 60 + 41 > 100, before the 41 arrive. */
    uint8_t p[100];
    memset(p, 'q', sizeof p);
    n = frame(in, 0x02, p, 60, 0, 1);
    n += frame(in + n, 0x00, p, 41, 0, 1);
    w = sclose(want, 1009);
    expect_frames("fragments past max_message", 100, in, n - 41, want, w, 1009, false, 0, 0);
    n = frame(in, 0x01, p, 60, 0, 1);
    n += frame(in + n, 0x80, p, 40, 0, 1);
    w = sframe(want, 1, p, 100);
    expect_frames("fragments exactly max_message", 100, in, n, want, w, -1, false, 1, 0);

    /* Close payloads. */
    uint8_t cl[8] = {0x03};
    n = frame(in, 0x88, cl, 1, 0, 1);
    w = sclose(want, 1002);
    expect_frames("close of 1 byte", 100, in, n, want, w, 1002, false, 0, 0);
    unsigned bad_codes[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof bad_codes / sizeof bad_codes[0]; i++) {
        cl[0] = (uint8_t)(bad_codes[i] >> 8);
        cl[1] = (uint8_t)bad_codes[i];
        n = frame(in, 0x88, cl, 2, 0, 1);
        snprintf(name, sizeof name, "close with code %u", bad_codes[i]);
        expect_frames(name, 100, in, n, want, w, 1002, false, 0, 0);
    }
    cl[0] = 0x03;
    cl[1] = 0xE8;
    cl[2] = 0xC3;
    cl[3] = 0x28;
    n = frame(in, 0x88, cl, 4, 0, 1);
    w = sclose(want, 1007);
    expect_frames("close reason not UTF-8", 100, in, n, want, w, 1007, false, 0, 0);
    cl[2] = 0xE2;
    cl[3] = 0x82;
    n = frame(in, 0x88, cl, 4, 0, 1);
    expect_frames("close reason cut mid-character", 100, in, n, want, w, 1007, false, 0, 0);
    cl[2] = 0xC3;
    cl[3] = 0xA9;
    n = frame(in, 0x88, cl, 4, 0, 1);
    w = sclose(want, 1000);
    expect_frames("close reason UTF-8", 100, in, n, want, w, 1000, true, 0, 0);
}

/* ---- UTF-8 --------------------------------------------------------------- */

struct utf8_case {
    const char *bytes;
    size_t n;
    bool valid;       /* whole */
    size_t fail_at;   /* when invalid: the length of the shortest invalid prefix (0: only whole) */
};

#define U(s, v, f) {s, sizeof(s) - 1, v, f}
static const struct utf8_case utf8_cases[] = {
    U("", true, 0),
    U("plain ASCII", true, 0),
    U("\x7f", true, 0),
    U("\xc2\x80", true, 0),                 /* U+0080, smallest 2-byte */
    U("\xdf\xbf", true, 0),                 /* U+07FF */
    U("\xe0\xa0\x80", true, 0),             /* U+0800 */
    U("\xef\xbf\xbf", true, 0),             /* U+FFFF */
    U("\xed\x9f\xbf", true, 0),             /* U+D7FF */
    U("\xee\x80\x80", true, 0),             /* U+E000 */
    U("\xef\xbf\xbd", true, 0),             /* U+FFFD */
    U("\xf0\x90\x80\x80", true, 0),         /* U+10000 */
    U("\xf4\x8f\xbf\xbf", true, 0),         /* U+10FFFF, the largest */
    U("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", true, 0), /* Kuhn's "kosme" */
    U("\x80", false, 1),                    /* lone continuation */
    U("\xbf", false, 1),
    U("a\x80\xbf", false, 2),
    U("\xc0\x80", false, 1),                /* overlong NUL */
    U("\xc1\xbf", false, 1),                /* overlong */
    U("\xe0\x80\x80", false, 2),            /* overlong 3-byte NUL */
    U("\xe0\x9f\xbf", false, 2),            /* overlong U+07FF */
    U("\xf0\x80\x80\x80", false, 2),        /* overlong 4-byte */
    U("\xf0\x8f\xbf\xbf", false, 2),        /* overlong U+FFFF */
    U("\xed\xa0\x80", false, 2),            /* U+D800 */
    U("\xed\xbf\xbf", false, 2),            /* U+DFFF */
    U("\xed\xa0\x80\xed\xb0\x80", false, 2),/* a surrogate pair */
    U("\xf4\x90\x80\x80", false, 2),        /* U+110000 */
    U("\xf5\x80\x80\x80", false, 1),
    U("\xf8\x88\x80\x80\x80", false, 1),    /* 5-byte form */
    U("\xfc\x84\x80\x80\x80\x80", false, 1),/* 6-byte form */
    U("\xfe", false, 1),
    U("\xff", false, 1),
    U("\xc2", false, 0),                    /* cut */
    U("\xe0\xa0", false, 0),
    U("\xf4\x8f\xbf", false, 0),
    U("\xc2\x41", false, 2),                /* continuation missing */
    U("\xe1\x80\x41", false, 3),
    U("\xf1\x80\x80\xc0", false, 4),
    U("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64", false, 13),
};

static void utf8(void)
{
    uint8_t in[200], want[200];
    for (size_t c = 0; c < sizeof utf8_cases / sizeof utf8_cases[0]; c++) {
        const struct utf8_case *u = &utf8_cases[c];
        const uint8_t *b = (const uint8_t *)u->bytes;
        char name[96];
        snprintf(name, sizeof name, "utf8 case %zu", c);
        check(fe_ws_utf8_valid(b, u->n) == u->valid, name, "fe_ws_utf8_valid says %d", !u->valid);
        size_t w = u->valid ? sframe(want, 1, b, u->n) : sclose(want, 1007);
        /* One frame, and two fragments split at every point. */
        size_t n = frame(in, 0x81, b, u->n, 0, 1);
        expect_frames(name, 1000, in, n, want, w, u->valid ? -1 : 1007, false, u->valid, 0);
        for (size_t k = 0; k <= u->n; k++) {
            n = frame(in, 0x01, b, k, 0, 1);
            n += frame(in + n, 0x80, b + k, u->n - k, 0, 1);
            snprintf(name, sizeof name, "utf8 case %zu split at %zu", c, k);
            expect_frames(name, 1000, in, n, want, w, u->valid ? -1 : 1007, false, u->valid, 0);
        }
        /* Fail fast: the shortest invalid prefix, in an unfinished frame or
         * in a non-final fragment, already fails. */
        if (!u->valid && u->fail_at > 0) {
            n = frame(in, 0x81, b, u->n, 0, 1);
            size_t hdr = n - u->n;
            snprintf(name, sizeof name, "utf8 case %zu, first %zu bytes of a frame", c, u->fail_at);
            expect_frames(name, 1000, in, hdr + u->fail_at, want, w, 1007, false, 0, 0);
            n = frame(in, 0x01, b, u->fail_at, 0, 1);
            snprintf(name, sizeof name, "utf8 case %zu, non-final fragment", c);
            expect_frames(name, 1000, in, n, want, w, 1007, false, 0, 0);
            if (u->fail_at > 1) {
                n = frame(in, 0x81, b, u->n, 0, 1);
                snprintf(name, sizeof name, "utf8 case %zu, one byte short of failing", c);
                expect_frames(name, 1000, in, hdr + u->fail_at - 1, want, 0, -1, false, 0, 0);
            }
        }
    }
    /* All 2-byte sequences, against a plain rule. */
    for (unsigned a = 0x80; a <= 0xFF; a++)
        for (unsigned b2 = 0; b2 <= 0xFF; b2++) {
            uint8_t s[2] = {(uint8_t)a, (uint8_t)b2};
            bool want_ok = a >= 0xC2 && a <= 0xDF && b2 >= 0x80 && b2 <= 0xBF;
            if (fe_ws_utf8_valid(s, 2) != want_ok)
                check(0, "utf8 pairs", "%02x %02x", a, b2);
        }
    passed++;
    /* Every code point, encoded by hand, is valid; surrogates are not. */
    size_t bad = 0;
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        uint8_t s[4];
        size_t k;
        if (cp < 0x80) {
            s[0] = (uint8_t)cp;
            k = 1;
        } else if (cp < 0x800) {
            s[0] = (uint8_t)(0xC0 | cp >> 6);
            s[1] = (uint8_t)(0x80 | (cp & 0x3F));
            k = 2;
        } else if (cp < 0x10000) {
            s[0] = (uint8_t)(0xE0 | cp >> 12);
            s[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
            s[2] = (uint8_t)(0x80 | (cp & 0x3F));
            k = 3;
        } else {
            s[0] = (uint8_t)(0xF0 | cp >> 18);
            s[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
            s[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
            s[3] = (uint8_t)(0x80 | (cp & 0x3F));
            k = 4;
        }
        bool surrogate = cp >= 0xD800 && cp <= 0xDFFF;
        if (fe_ws_utf8_valid(s, k) == surrogate)
            bad++;
    }
    check(bad == 0, "every code point", "%zu wrong", bad);
}

/* ---- streaming, memory, fe_ws_close ------------------------------------- */

static void streaming(void)
{
    const size_t big = 1 << 20;
    uint8_t *payload = xmalloc(big), *in = xmalloc(big + 64), *want = xmalloc(big + 64);
    for (size_t i = 0; i < big; i++)
        payload[i] = (uint8_t)(rng() >> 24);
    size_t n = frame(in, 0x82, payload, big, 0, 1);
    size_t w = sframe(want, 2, payload, big);
    run_result r;
    run(big, in, n, 0, &r, "1 MiB binary, whole");
    check(r.out.len == w && memcmp(r.out.data + r.out.start, want, w) == 0 && r.messages == 1, "1 MiB binary",
          "output differs");
    check(r.max_held == 0, "1 MiB binary", "held %zu bytes", r.max_held);
    fe_buf_free(&r.out);
    run(big, in, n, 4093, &r, "1 MiB binary, in pieces");
    check(r.out.len == w && memcmp(r.out.data + r.out.start, want, w) == 0 && r.max_held == 0, "1 MiB binary, pieces",
          "output differs or held %zu", r.max_held);
    fe_buf_free(&r.out);

    /* The streamed echo's header goes out with the frame's header, and each
     * piece of payload as it comes. */
    fe_ws_decoder d;
    fe_ws_decoder_init(&d, big);
    fe_buf out = {0};
    fe_ws_feed_info info;
    fe_ws_feed(&d, in, 14, &out, &info);
    check(out.len == 10 && memcmp(out.data + out.start, want, 10) == 0, "streamed header", "%zu bytes out", out.len);
    fe_ws_feed(&d, in + 14, 1000, &out, &info);
    check(out.len == 1010 && memcmp(out.data + out.start, want, 1010) == 0 && fe_ws_decoder_held(&d) == 0,
          "streamed payload", "%zu bytes out", out.len);
    /* fe_ws_close mid-frame is deferred until the frame's echo is whole. */
    check(fe_ws_close(&d, 1001, "going away", &out) == 1 && !fe_ws_closing(&d) && out.len == 1010,
          "close mid-stream", "not deferred");
    check(fe_ws_close(&d, 1001, "going away", &out) == 1, "close mid-stream twice", "not deferred");
    int rc = fe_ws_feed(&d, in + 1014, n - 1014 + 0, &out, &info);
    uint8_t close_frame[14] = {0x88, 12, 0x03, 0xE9, 'g', 'o', 'i', 'n', 'g', ' ', 'a', 'w', 'a', 'y'};
    check(rc == FE_WS_CLOSE && info.close_code == 1001 && !info.peer_closed && info.messages == 1 &&
              out.len == w + 14 && memcmp(out.data + out.start, want, w) == 0 &&
              memcmp(out.data + out.start + w, close_frame, 14) == 0,
          "deferred close", "rc %d, %zu bytes out", rc, out.len);
    fe_buf_free(&out);
    fe_ws_decoder_free(&d);

    /* A held message is freed once echoed, and at fe_ws_close. */
    fe_ws_decoder_init(&d, 100000);
    n = frame(in, 0x01, payload, 0, 0, 1);
    memset(payload, 'z', 50000);
    n = frame(in, 0x01, payload, 50000, 0, 1);
    fe_ws_feed(&d, in, n, &out, &info);
    check(fe_ws_decoder_held(&d) >= 50000 && fe_ws_decoder_held(&d) <= 100000 && out.len == 0, "held fragment",
          "held %zu", fe_ws_decoder_held(&d));
    n = frame(in, 0x80, payload, 10, 0, 1);
    fe_ws_feed(&d, in, n, &out, &info);
    check(fe_ws_decoder_held(&d) == 0 && info.messages == 1 && out.len == 50010 + 4, "freed after echo",
          "held %zu", fe_ws_decoder_held(&d));
    fe_buf_free(&out);
    n = frame(in, 0x81, payload, 30000, 0, 1);
    fe_ws_feed(&d, in, 20000, &out, &info);
    check(fe_ws_decoder_held(&d) > 0 && fe_ws_decoder_held(&d) <= 30000, "held text", "held %zu",
          fe_ws_decoder_held(&d));
    check(fe_ws_close(&d, 1001, NULL, &out) == 0 && fe_ws_closing(&d) && fe_ws_decoder_held(&d) == 0 &&
              out.len == 4,
          "close drops the held text", "held %zu, %zu out", fe_ws_decoder_held(&d), out.len);
    check(fe_ws_close(&d, 1000, NULL, &out) == 0 && out.len == 4, "second close", "appended again");
    rc = fe_ws_feed(&d, in + 20000, n - 20000, &out, &info);
    check(rc == FE_WS_CLOSE && out.len == 4 && info.close_code == 1001, "input after fe_ws_close", "rc %d", rc);
    fe_buf_free(&out);
    fe_ws_decoder_free(&d);

    /* fe_ws_close's reason is cut to 123 bytes, not inside a character. */
    fe_ws_decoder_init(&d, 100);
    char reason[200];
    memset(reason, 'r', 122);
    strcpy(reason + 122, "\xc3\xa9tc");
    check(fe_ws_close(&d, 1001, reason, &out) == 0 && out.len == 4 + 122 &&
              (uint8_t)out.data[out.start + 1] == 124,
          "long reason", "%zu bytes", out.len);
    fe_buf_free(&out);
    fe_ws_decoder_free(&d);

    free(payload);
    free(in);
    free(want);
}

int main(void)
{
    http_requests();
    http_answers();
    frames_valid();
    frames_invalid();
    utf8();
    streaming();
    return check_summary();
}
