/*
 * fe_ws_http.h - the HTTP/1.1 request that opens a ws:// or wss://
 * connection (RFC 6455 section 4.2), parsed by a pure function (no I/O, no
 * allocation, no global state), and the server's answers to it. Fuzzed
 * alone: tests/fuzz/fuzz_ws_http.c.
 *
 * Syntax (RFC 9112; anything else is 400, decided as soon as the offending
 * byte or line has arrived):
 * - The request line is exactly METHOD SP TARGET SP "HTTP/1.1": the method a
 *   token, the target in origin-form (it starts with "/") of visible ASCII
 *   (0x21-0x7E), the version exactly HTTP/1.1 (HTTP/1.0 and others are 400:
 *   the page needs no HTTP/1.0 client, and one rule keeps it simple). It is
 *   judged byte by byte, so bytes that cannot begin a request (a TLS
 *   ClientHello sent to a ws:// port, say) are refused at once. Empty lines
 *   before it are not skipped.
 * - Lines end in CRLF, or a bare LF (RFC 9112 2.2). A CR anywhere else, and a
 *   NUL, are 400.
 * - A header line is NAME ":" OWS VALUE OWS: the name a non-empty token
 *   (so whitespace before ":" is 400), the value of visible ASCII, SP, HTAB
 *   and obs-text (0x80-0xFF); other control characters are 400. A line
 *   starting with SP or HTAB (obs-fold) is 400.
 * - The head, its final blank line included, is at most policy->max_header
 *   bytes: once len >= max_header without the blank line within them, 400.
 * - Host must appear exactly once (RFC 9112 3.2), in every request.
 * A request body (Content-Length, Transfer-Encoding) is never read: every
 * answer but 101 closes the connection, and a 101 request has no body.
 *
 * Meaning, decided at the blank line, in this order:
 * 1. Host missing or repeated: 400.
 * 2. An upgrade is a GET whose Upgrade header (all of them, as one
 *    comma-separated list) holds the token "websocket", any case. An Upgrade
 *    that does not name websocket, or one on another method, is ignored (RFC
 *    9110 7.8 lets a server ignore it). Without an upgrade: GET or HEAD of
 *    "/" or "/index.html" (query ignored) is the page (PAGE, PAGE_HEAD),
 *    even when policy->path is elsewhere; GET or HEAD of another path 404;
 *    another method 405.
 * 3. An upgrade, checked in this order: at a path other than policy->path
 *    (query ignored): 404. Connection (all of them, one list) lacking the
 *    token "upgrade", any case: 400. Sec-WebSocket-Version missing or
 *    repeated: 400; not "13": 426. Sec-WebSocket-Key missing, repeated, or
 *    not 22 base64 characters then "==" (16 bytes): 400. With an allow list,
 *    Origin missing, repeated, or not one of the list (exact bytes after
 *    trimming OWS): 403. Otherwise UPGRADE.
 * Sec-WebSocket-Extensions and Sec-WebSocket-Protocol are not answered:
 * permessage-deflate and subprotocols are declined by silence (RFC 6455
 * 9.1, 11.3.4).
 */
#ifndef FE_WS_HTTP_H
#define FE_WS_HTTP_H

#include "fe_buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    FE_WS_DEFAULT_MAX_HEADER = 8192,
    /* Room for an answer's status line and headers, its body apart. */
    FE_WS_ANSWER_HEAD_MAX = 512,
};

typedef struct fe_ws_policy {
    const char *path; size_t path_len;   /* upgrade only at this exact path (query string ignored); NULL: any path */
    const char *const *origins; const size_t *origin_lens; size_t origin_count; /* allowed Origin header values, exact byte match after trimming OWS; 0: any origin (and a request without Origin is fine) */
    size_t max_header;                   /* most bytes of the request head, its final blank line included (0: FE_WS_DEFAULT_MAX_HEADER) */
} fe_ws_policy;

enum fe_ws_answer {
    FE_WS_ANSWER_NONE = 0,   /* not yet decided: the head is incomplete */
    FE_WS_ANSWER_UPGRADE,    /* 101 Switching Protocols: a valid upgrade; req->key holds Sec-WebSocket-Key */
    FE_WS_ANSWER_PAGE,       /* 200 with the built-in page: GET / (or /index.html) without Upgrade */
    FE_WS_ANSWER_PAGE_HEAD,  /* 200, headers only: HEAD of the page */
    FE_WS_ANSWER_BAD_REQUEST,/* 400: malformed, or too large, or an upgrade request missing/botching a required header */
    FE_WS_ANSWER_FORBIDDEN,  /* 403: Origin not in the allow list */
    FE_WS_ANSWER_NOT_FOUND,  /* 404: a GET/HEAD of any other path, or an upgrade at a path other than policy->path */
    FE_WS_ANSWER_METHOD,     /* 405 (Allow: GET, HEAD): a well-formed request with another method */
    FE_WS_ANSWER_VERSION,    /* 426 with Sec-WebSocket-Version: 13: an upgrade asking for another version */
};

typedef struct fe_ws_request {
    enum fe_ws_answer answer;
    size_t head_len;   /* bytes of buf that are the request head (through its blank line); what follows is WebSocket frames. 0 for a 400 decided before the blank line */
    size_t scanned;    /* the caller passes 0 first and keeps the struct between calls: parsing resumes, never O(n^2) over a trickled head */
    char key[24];      /* Sec-WebSocket-Key, 24 base64 chars as sent (when UPGRADE) */
    const char *why;   /* static short reason, used as the body of error answers ("missing Sec-WebSocket-Key", ...); set with every final answer */
    bool head_method;  /* the method was HEAD: answers carry no body */

    /* Private: where the parse stands (scanned == 0 resets all of it). */
    size_t line_start;       /* where the line being scanned begins */
    size_t method_len;       /* the method is buf[0, method_len) */
    size_t target_end;       /* the target is buf[method_len + 1, target_end) */
    uint8_t phase;           /* request line part, or headers */
    uint8_t version_matched; /* bytes of "HTTP/1.1" matched */
    uint8_t host_count, key_count, version_count, origin_count;
    bool upgrade_websocket;  /* an Upgrade header named websocket */
    bool connection_upgrade; /* a Connection header named upgrade */
    bool version_13;         /* the Sec-WebSocket-Version header said 13 */
    bool key_valid;          /* the Sec-WebSocket-Key header was well formed */
    bool origin_allowed;     /* the Origin header matched the allow list */
} fe_ws_request;

/* Parses the request head in buf[0, len): everything received so far (buf
 * may be NULL when len is 0). The caller sets req->scanned to 0 before the
 * first call, then keeps req and calls again with the same bytes plus more;
 * each byte is scanned once, however the head is trickled. p may be NULL
 * (any path, any origin, the default size). Returns req->answer:
 * FE_WS_ANSWER_NONE while the head is incomplete and len < max_header, else
 * the final answer, with req->why set (and head_len, key as documented):
 * final means more bytes never change it, and the answer is the same
 * however buf was split between calls. Only buf[0, head_len) is read for a
 * head that ended (and at most max_header bytes in any case): the bytes
 * after it are the client's first frames. */
enum fe_ws_answer fe_ws_http_parse(const fe_ws_policy *p, const char *buf, size_t len, fe_ws_request *req);

/* Appends the whole HTTP answer for req (a final answer) to out.
 * For UPGRADE: 101 with Upgrade: websocket, Connection: Upgrade and
 * Sec-WebSocket-Accept (no extension, no subprotocol). For PAGE and
 * PAGE_HEAD: 200 with Content-Type: text/html; charset=utf-8,
 * Content-Length, Cache-Control: no-store, Connection: close, and
 * page[0, page_len) unless HEAD. Errors: the status line, Content-Type:
 * text/plain, Content-Length, Connection: close, Allow: GET, HEAD (405),
 * Sec-WebSocket-Version: 13 with Upgrade: websocket (426, whose Connection
 * is then "Upgrade, close", as RFC 9110 7.8 asks of a sender of Upgrade),
 * and req->why plus "\n" as the body, left out for a HEAD request. Returns 0, or -1:
 * ENOMEM (nothing appended), no libcrypto for UPGRADE, or req->answer is
 * FE_WS_ANSWER_NONE. */
int fe_ws_http_answer(const fe_ws_request *req, const char *page, size_t page_len, fe_buf *out);

/* Sec-WebSocket-Accept for a 24-char key: base64(SHA-1(key + the RFC 6455
 * GUID)), 28 chars + NUL into accept. Returns 0, or -1 when built without
 * libcrypto (FE_WITH_TLS). */
int fe_ws_accept_key(const char key[24], char accept[29]);

/* Whether the core can answer upgrades (built with libcrypto): the check
 * to refuse WebSocket listeners at start. */
bool fe_ws_available(void);

#endif /* FE_WS_HTTP_H */
