/*
 * fe_ws.c - WebSocket listeners' server-wide state and counter tables (see
 * fe_ws.h).
 */
#include "fe_ws.h"
#include "fe_ws_page.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Where the page names the path it opens its WebSocket on. */
static const char page_marker[] = FE_WS_PAGE_PATH_MARKER;

static const int http_status[FE_WS_HTTP_COUNT] = {
    [FE_WS_HTTP_UPGRADE] = 101, [FE_WS_HTTP_PAGE] = 200,      [FE_WS_HTTP_BAD_REQUEST] = 400,
    [FE_WS_HTTP_FORBIDDEN] = 403, [FE_WS_HTTP_NOT_FOUND] = 404, [FE_WS_HTTP_METHOD] = 405,
    [FE_WS_HTTP_VERSION] = 426,
};

int fe_ws_http_status(int kind)
{
    return kind >= 0 && kind < FE_WS_HTTP_COUNT ? http_status[kind] : 0;
}

enum fe_ws_http_kind fe_ws_http_kind_of(enum fe_ws_answer answer)
{
    switch (answer) {
    case FE_WS_ANSWER_UPGRADE:
        return FE_WS_HTTP_UPGRADE;
    case FE_WS_ANSWER_PAGE:
    case FE_WS_ANSWER_PAGE_HEAD:
        return FE_WS_HTTP_PAGE;
    case FE_WS_ANSWER_FORBIDDEN:
        return FE_WS_HTTP_FORBIDDEN;
    case FE_WS_ANSWER_NOT_FOUND:
        return FE_WS_HTTP_NOT_FOUND;
    case FE_WS_ANSWER_METHOD:
        return FE_WS_HTTP_METHOD;
    case FE_WS_ANSWER_VERSION:
        return FE_WS_HTTP_VERSION;
    default:
        return FE_WS_HTTP_BAD_REQUEST;
    }
}

int fe_ws_close_slot(uint16_t code)
{
    if (code == 0)
        return FE_WS_CLOSE_NONE;
    if (code >= 1000 && code < 1000 + FE_WS_CLOSE_APPLICATION)
        return code - 1000;
    return FE_WS_CLOSE_APPLICATION;
}

/* A path byte the page can carry inside a JavaScript string literal in HTML
 * as it is: printable ASCII but for quotes, backslash and angle brackets. */
static bool plain_path_byte(char ch)
{
    return ch > ' ' && ch < 0x7f && ch != '"' && ch != '\'' && ch != '\\' && ch != '<' && ch != '>';
}

int fe_ws_validate_config(const fe_config *cfg, char *err, size_t errlen)
{
    if (cfg->ws_path != NULL) {
        if (cfg->ws_path_len == 0 || cfg->ws_path[0] != '/' || cfg->ws_path_len > 1024) {
            snprintf(err, errlen, "the WebSocket path must start with '/' and be at most 1024 bytes");
            return -1;
        }
        for (size_t i = 0; i < cfg->ws_path_len; i++) {
            if (!plain_path_byte(cfg->ws_path[i]) || cfg->ws_path[i] == '?' || cfg->ws_path[i] == '#') {
                snprintf(err, errlen, "the WebSocket path may hold printable ASCII only, without ? # \" ' \\ < >");
                return -1;
            }
        }
    }
    if (cfg->ws_origin_count > 0 && (cfg->ws_origins == NULL || cfg->ws_origin_lens == NULL)) {
        snprintf(err, errlen, "ws_origin_count is set but ws_origins is NULL");
        return -1;
    }
    for (size_t i = 0; i < cfg->ws_origin_count; i++) {
        if (cfg->ws_origins[i] == NULL || cfg->ws_origin_lens[i] == 0 || cfg->ws_origin_lens[i] > 1024) {
            snprintf(err, errlen, "WebSocket origin %zu must be 1 to 1024 bytes", i);
            return -1;
        }
    }
    if (cfg->ws_max_message < 1 || cfg->ws_max_message > ((uint64_t)1 << 40)) {
        snprintf(err, errlen, "the largest WebSocket message must be between 1 byte and 1 TiB");
        return -1;
    }
    if (cfg->ws_max_header < 256 || cfg->ws_max_header > (1u << 20)) {
        snprintf(err, errlen, "the largest WebSocket request head must be between 256 bytes and 1 MiB");
        return -1;
    }
    if (cfg->ws_handshake_timeout_ms < 1 || cfg->ws_handshake_timeout_ms > 1000LL * 1000 * 1000) {
        snprintf(err, errlen, "the WebSocket handshake timeout must be between 1 and 1000000000 ms");
        return -1;
    }
    return 0;
}

/* The page with its marker replaced by path (path_len bytes). */
static char *render_page(const char *path, size_t path_len, size_t *len)
{
    const char *at = memmem(fe_ws_page, fe_ws_page_len, page_marker, sizeof page_marker - 1);
    size_t before = at ? (size_t)(at - fe_ws_page) : fe_ws_page_len;
    size_t after = at ? fe_ws_page_len - before - (sizeof page_marker - 1) : 0;
    size_t fill = at ? path_len : 0;
    char *page = malloc(before + fill + after + 1);
    if (page == NULL)
        return NULL;
    memcpy(page, fe_ws_page, before);
    memcpy(page + before, path, fill);
    memcpy(page + before + fill, fe_ws_page + fe_ws_page_len - after, after);
    *len = before + fill + after;
    page[*len] = '\0';
    return page;
}

const char *fe_ws_server_init(fe_server *s, const fe_config *cfg)
{
    s->cfg.ws_path = NULL;
    s->cfg.ws_origins = NULL;
    s->cfg.ws_origin_lens = NULL;
    if (cfg->ws_path != NULL) {
        if ((s->ws_path = malloc(cfg->ws_path_len)) == NULL)
            return "copying the WebSocket path";
        memcpy(s->ws_path, cfg->ws_path, cfg->ws_path_len);
        s->cfg.ws_path = s->ws_path;
    }
    if (cfg->ws_origin_count > 0) {
        s->ws_origins = calloc(cfg->ws_origin_count, sizeof *s->ws_origins);
        s->ws_origin_lens = calloc(cfg->ws_origin_count, sizeof *s->ws_origin_lens);
        if (s->ws_origins == NULL || s->ws_origin_lens == NULL)
            return "copying the WebSocket origins";
        for (size_t i = 0; i < cfg->ws_origin_count; i++) {
            if ((s->ws_origins[i] = malloc(cfg->ws_origin_lens[i])) == NULL)
                return "copying the WebSocket origins";
            memcpy(s->ws_origins[i], cfg->ws_origins[i], cfg->ws_origin_lens[i]);
            s->ws_origin_lens[i] = cfg->ws_origin_lens[i];
        }
        s->cfg.ws_origins = (const char *const *)s->ws_origins;
        s->cfg.ws_origin_lens = s->ws_origin_lens;
    }
    s->ws_policy = (fe_ws_policy){
        .path = s->cfg.ws_path,
        .path_len = s->cfg.ws_path ? cfg->ws_path_len : 0,
        .origins = s->cfg.ws_origins,
        .origin_lens = s->cfg.ws_origin_lens,
        .origin_count = cfg->ws_origin_count,
        .max_header = cfg->ws_max_header,
    };
    s->ws_page = s->cfg.ws_path ? render_page(s->cfg.ws_path, cfg->ws_path_len, &s->ws_page_len)
                                : render_page("/", 1, &s->ws_page_len);
    return s->ws_page ? NULL : "rendering the WebSocket page";
}

void fe_ws_server_release(fe_server *s)
{
    free(s->ws_path);
    if (s->ws_origins != NULL) {
        for (size_t i = 0; i < s->cfg.ws_origin_count; i++)
            free(s->ws_origins[i]);
    }
    free(s->ws_origins);
    free(s->ws_origin_lens);
    free(s->ws_page);
}
