/*
 * fe_ws_http.c - the WebSocket opening handshake (see fe_ws_http.h for what
 * is accepted and in which order answers are decided).
 *
 * The request line is judged byte by byte (so garbage is refused on its
 * first byte); header lines are judged whole, when their LF arrives, which
 * a memchr finds. req->scanned is where the scan stopped: only the bytes
 * after it are looked at on the next call, so a head trickled byte by byte
 * costs O(n) in all. Every check looks only at bytes before the point where
 * it is made, in order, which is why the answer does not depend on how the
 * bytes were split between calls.
 */
#include "fe_ws_http.h"

#include <stdio.h>
#include <string.h>

#ifdef FE_WITH_TLS
#include <openssl/evp.h>
#endif

enum phase { PH_METHOD, PH_TARGET, PH_VERSION, PH_HEADERS };

static const char http11[] = "HTTP/1.1";

/* RFC 9110 5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" /
 * "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA */
static bool is_tchar(uint8_t c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool is_ows(uint8_t c)
{
    return c == ' ' || c == '\t';
}

static uint8_t lower(uint8_t c)
{
    return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
}

/* Whether b[0, n) equals the lowercase ASCII word, ignoring case. */
static bool equal_nocase(const uint8_t *b, size_t n, const char *word)
{
    size_t wn = strlen(word);
    if (n != wn)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lower(b[i]) != (uint8_t)word[i])
            return false;
    return true;
}

/* Whether the comma-separated list b[0, n) holds the token word, any case
 * (empty elements and OWS around elements are allowed, RFC 9110 5.6.1). */
static bool list_has(const uint8_t *b, size_t n, const char *word)
{
    size_t s = 0;
    while (s <= n) {
        size_t e = s;
        while (e < n && b[e] != ',')
            e++;
        size_t a = s, z = e;
        while (a < z && is_ows(b[a]))
            a++;
        while (z > a && is_ows(b[z - 1]))
            z--;
        if (equal_nocase(b + a, z - a, word))
            return true;
        s = e + 1;
    }
    return false;
}

static bool is_base64(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

/* A Sec-WebSocket-Key is 16 bytes in base64: 22 characters, then "==". */
static bool key_well_formed(const uint8_t *b, size_t n)
{
    if (n != 24 || b[22] != '=' || b[23] != '=')
        return false;
    for (size_t i = 0; i < 22; i++)
        if (!is_base64(b[i]))
            return false;
    return true;
}

static uint8_t bump(uint8_t count)
{
    return count < 2 ? (uint8_t)(count + 1) : count; /* only 0, 1 and "more" matter */
}

static enum fe_ws_answer decide(fe_ws_request *req, enum fe_ws_answer answer, const char *why)
{
    req->answer = answer;
    req->why = why;
    return answer;
}

/* Judges one header line b[s, e) (its line end excluded) and notes what it
 * says. Returns NULL, or why it is malformed. */
static const char *header_line(const fe_ws_policy *p, const uint8_t *b, size_t s, size_t e,
                               fe_ws_request *req)
{
    if (is_ows(b[s]))
        return "obs-fold (a header line starting with whitespace)";
    size_t colon = s;
    while (colon < e && is_tchar(b[colon]))
        colon++;
    if (colon == s || colon == e || b[colon] != ':')
        return "malformed header line";
    for (size_t i = colon + 1; i < e; i++) {
        uint8_t c = b[i];
        if ((c < 0x20 && c != '\t') || c == 0x7F)
            return "control character in a header value"; /* a bare CR and NUL included */
    }
    size_t vs = colon + 1, ve = e;
    while (vs < ve && is_ows(b[vs]))
        vs++;
    while (ve > vs && is_ows(b[ve - 1]))
        ve--;
    const uint8_t *name = b + s, *v = b + vs;
    size_t name_len = colon - s, vn = ve - vs;
    if (equal_nocase(name, name_len, "host")) {
        req->host_count = bump(req->host_count);
    } else if (equal_nocase(name, name_len, "upgrade")) {
        if (list_has(v, vn, "websocket"))
            req->upgrade_websocket = true;
    } else if (equal_nocase(name, name_len, "connection")) {
        if (list_has(v, vn, "upgrade"))
            req->connection_upgrade = true;
    } else if (equal_nocase(name, name_len, "sec-websocket-version")) {
        req->version_count = bump(req->version_count);
        req->version_13 = vn == 2 && v[0] == '1' && v[1] == '3';
    } else if (equal_nocase(name, name_len, "sec-websocket-key")) {
        req->key_count = bump(req->key_count);
        req->key_valid = key_well_formed(v, vn);
        if (req->key_valid)
            memcpy(req->key, v, sizeof req->key);
    } else if (equal_nocase(name, name_len, "origin")) {
        req->origin_count = bump(req->origin_count);
        req->origin_allowed = false;
        for (size_t i = 0; p != NULL && i < p->origin_count; i++)
            if (p->origin_lens[i] == vn && memcmp(p->origins[i], v, vn) == 0)
                req->origin_allowed = true;
    }
    return NULL;
}

/* The answer for a whole, well-formed head (the order is fe_ws_http.h's). */
static enum fe_ws_answer decide_head(const fe_ws_policy *p, const uint8_t *b, fe_ws_request *req)
{
    if (req->host_count != 1)
        return decide(req, FE_WS_ANSWER_BAD_REQUEST, req->host_count ? "duplicate Host" : "missing Host");
    const uint8_t *path = b + req->method_len + 1;
    size_t path_len = 0;
    while (path + path_len < b + req->target_end && path[path_len] != '?')
        path_len++;
    bool get = req->method_len == 3 && memcmp(b, "GET", 3) == 0;
    if (!get || !req->upgrade_websocket) {
        if (!get && !req->head_method)
            return decide(req, FE_WS_ANSWER_METHOD, "method not allowed");
        if ((path_len == 1 && path[0] == '/') || (path_len == 11 && memcmp(path, "/index.html", 11) == 0))
            return decide(req, req->head_method ? FE_WS_ANSWER_PAGE_HEAD : FE_WS_ANSWER_PAGE, "page");
        return decide(req, FE_WS_ANSWER_NOT_FOUND, "not found");
    }
    if (p != NULL && p->path != NULL && (p->path_len != path_len || memcmp(p->path, path, path_len) != 0))
        return decide(req, FE_WS_ANSWER_NOT_FOUND, "no WebSocket at this path");
    if (!req->connection_upgrade)
        return decide(req, FE_WS_ANSWER_BAD_REQUEST, "Connection header lacks upgrade");
    if (req->version_count != 1)
        return decide(req, FE_WS_ANSWER_BAD_REQUEST,
                      req->version_count ? "duplicate Sec-WebSocket-Version" : "missing Sec-WebSocket-Version");
    if (!req->version_13)
        return decide(req, FE_WS_ANSWER_VERSION, "unsupported Sec-WebSocket-Version (13 only)");
    if (req->key_count != 1)
        return decide(req, FE_WS_ANSWER_BAD_REQUEST,
                      req->key_count ? "duplicate Sec-WebSocket-Key" : "missing Sec-WebSocket-Key");
    if (!req->key_valid)
        return decide(req, FE_WS_ANSWER_BAD_REQUEST, "invalid Sec-WebSocket-Key");
    if (p != NULL && p->origin_count > 0) {
        if (req->origin_count != 1)
            return decide(req, FE_WS_ANSWER_FORBIDDEN, req->origin_count ? "duplicate Origin" : "missing Origin");
        if (!req->origin_allowed)
            return decide(req, FE_WS_ANSWER_FORBIDDEN, "Origin not allowed");
    }
    return decide(req, FE_WS_ANSWER_UPGRADE, "upgrade");
}

/* Judges request-line bytes from *pos, up to limit. Returns NULL with *pos
 * advanced (to the first header line, or to where more bytes are needed),
 * or why the line is malformed. */
static const char *request_line(const uint8_t *b, size_t limit, size_t *pos, fe_ws_request *req)
{
    size_t i = *pos;
    const char *why = NULL;
    while (i < limit && req->phase != PH_HEADERS && why == NULL) {
        uint8_t c = b[i];
        switch (req->phase) {
        case PH_METHOD:
            if (is_tchar(c)) {
                i++;
            } else if (c == ' ' && i > 0) {
                req->method_len = i++;
                req->head_method = req->method_len == 4 && memcmp(b, "HEAD", 4) == 0;
                req->phase = PH_TARGET;
            } else {
                why = "malformed request line";
            }
            break;
        case PH_TARGET:
            if (i == req->method_len + 1 && c != '/') {
                why = "request-target not in origin-form";
            } else if (c == ' ') {
                req->target_end = i++;
                req->phase = PH_VERSION;
            } else if (c >= 0x21 && c <= 0x7E) {
                i++;
            } else {
                why = "invalid byte in request-target";
            }
            break;
        default: /* PH_VERSION */
            if (req->version_matched < sizeof http11 - 1) {
                if (c != (uint8_t)http11[req->version_matched])
                    why = "unsupported HTTP version (HTTP/1.1 only)";
                req->version_matched++;
                i++;
            } else if (c == '\n') {
                req->phase = PH_HEADERS;
                req->line_start = ++i;
            } else if (c == '\r') {
                if (i + 1 == limit) {
                    *pos = i; /* look again when the next byte is in */
                    return NULL;
                }
                if (b[i + 1] != '\n')
                    why = "bare CR";
                i += 2;
                req->phase = PH_HEADERS;
                req->line_start = i;
            } else {
                why = "unsupported HTTP version (HTTP/1.1 only)";
            }
            break;
        }
    }
    *pos = i;
    return why;
}

enum fe_ws_answer fe_ws_http_parse(const fe_ws_policy *p, const char *buf, size_t len, fe_ws_request *req)
{
    if (req->scanned == 0) {
        memset(req, 0, sizeof *req); /* nothing has been scanned: start afresh */
    } else if (req->answer != FE_WS_ANSWER_NONE) {
        return req->answer;
    }
    const uint8_t *b = (const uint8_t *)buf;
    size_t max = p != NULL && p->max_header > 0 ? p->max_header : FE_WS_DEFAULT_MAX_HEADER;
    size_t limit = len < max ? len : max; /* past max_header nothing can end the head */
    size_t i = req->scanned;
    enum fe_ws_answer answer = FE_WS_ANSWER_NONE;

    if (req->phase != PH_HEADERS) {
        const char *why = request_line(b, limit, &i, req);
        if (why != NULL)
            answer = decide(req, FE_WS_ANSWER_BAD_REQUEST, why);
    }
    while (answer == FE_WS_ANSWER_NONE && req->phase == PH_HEADERS && i < limit) {
        const uint8_t *lf = memchr(b + i, '\n', limit - i);
        if (lf == NULL) {
            i = limit;
            break;
        }
        size_t s = req->line_start, e = (size_t)(lf - b);
        i = e + 1;
        if (e > s && b[e - 1] == '\r')
            e--;
        if (e == s) { /* the blank line: the head is whole */
            req->head_len = i;
            answer = decide_head(p, b, req);
            break;
        }
        const char *why = header_line(p, b, s, e, req);
        if (why != NULL)
            answer = decide(req, FE_WS_ANSWER_BAD_REQUEST, why);
        req->line_start = i;
    }
    if (answer == FE_WS_ANSWER_NONE && len >= max)
        answer = decide(req, FE_WS_ANSWER_BAD_REQUEST, "request head too large");
    req->scanned = i;
    if (answer != FE_WS_ANSWER_NONE && i == 0)
        req->scanned = 1; /* refused on its first byte: keep the answer, not a fresh start */
    return answer;
}

/* ---- answers ------------------------------------------------------------- */

int fe_ws_accept_key(const char key[24], char accept[29])
{
#ifdef FE_WITH_TLS
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"; /* RFC 6455 1.3 */
    unsigned char text[24 + sizeof guid - 1];
    memcpy(text, key, 24);
    memcpy(text + 24, guid, sizeof guid - 1);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (EVP_Digest(text, sizeof text, md, &md_len, EVP_sha1(), NULL) != 1 || md_len != 20)
        return -1;
    /* 20 bytes make 28 base64 characters; EVP_EncodeBlock adds the NUL. */
    return EVP_EncodeBlock((unsigned char *)accept, md, 20) == 28 ? 0 : -1;
#else
    (void)key;
    accept[0] = '\0';
    return -1;
#endif
}

bool fe_ws_available(void)
{
#ifdef FE_WITH_TLS
    return true;
#else
    return false;
#endif
}

static const char *status_line(enum fe_ws_answer a)
{
    switch (a) {
    case FE_WS_ANSWER_UPGRADE:
        return "101 Switching Protocols";
    case FE_WS_ANSWER_PAGE:
    case FE_WS_ANSWER_PAGE_HEAD:
        return "200 OK";
    case FE_WS_ANSWER_BAD_REQUEST:
        return "400 Bad Request";
    case FE_WS_ANSWER_FORBIDDEN:
        return "403 Forbidden";
    case FE_WS_ANSWER_NOT_FOUND:
        return "404 Not Found";
    case FE_WS_ANSWER_METHOD:
        return "405 Method Not Allowed";
    case FE_WS_ANSWER_VERSION:
        return "426 Upgrade Required";
    default:
        return NULL;
    }
}

int fe_ws_http_answer(const fe_ws_request *req, const char *page, size_t page_len, fe_buf *out)
{
    const char *status = status_line(req->answer);
    if (status == NULL)
        return -1;
    char head[FE_WS_ANSWER_HEAD_MAX];
    int hn;
    const char *body = NULL;
    size_t body_len = 0, content_length = 0;
    if (req->answer == FE_WS_ANSWER_UPGRADE) {
        char accept[29];
        if (fe_ws_accept_key(req->key, accept) != 0)
            return -1;
        hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: %s\r\n\r\n",
                      status, accept);
    } else if (req->answer == FE_WS_ANSWER_PAGE || req->answer == FE_WS_ANSWER_PAGE_HEAD) {
        content_length = page_len;
        if (req->answer == FE_WS_ANSWER_PAGE) {
            body = page;
            body_len = page_len;
        }
        hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %s\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: %zu\r\n"
                      "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                      status, content_length);
    } else {
        const char *why = req->why != NULL ? req->why : "";
        content_length = strlen(why) + 1; /* why, then "\n" */
        const char *extra = "";
        const char *connection = "close";
        if (req->answer == FE_WS_ANSWER_METHOD) {
            extra = "Allow: GET, HEAD\r\n";
        } else if (req->answer == FE_WS_ANSWER_VERSION) {
            /* RFC 6455 4.4 names the version; RFC 9110 15.5.22 asks 426 for
             * Upgrade, and 7.8 for "upgrade" in Connection with it. */
            extra = "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n";
            connection = "Upgrade, close";
        }
        hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s"
                      "Connection: %s\r\n\r\n%s%s",
                      status, content_length, extra, connection, req->head_method ? "" : why,
                      req->head_method ? "" : "\n");
    }
    if (hn < 0 || (size_t)hn >= sizeof head)
        return -1; /* cannot happen: the reasons are short and static */
    /* One extend for the whole answer: a failure leaves nothing half sent. */
    char *dst = fe_buf_extend(out, (size_t)hn + body_len);
    if (dst == NULL)
        return -1;
    memcpy(dst, head, (size_t)hn);
    if (body_len)
        memcpy(dst + hn, body, body_len);
    return 0;
}
