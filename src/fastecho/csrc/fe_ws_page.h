/*
 * fe_ws_page.h: the page a plain HTTP GET of / on a ws or wss listener
 * returns. Its source is fe_ws_page.html; the build turns that file into
 * fe_ws_page.c (cmake/embed_file.cmake), so the page is compiled in and
 * needs nothing at run time.
 *
 * The page is self-contained HTML + JavaScript (no external resources): it
 * opens a WebSocket back to the listener that served it, echoes messages of
 * several sizes and types, checks each echo, then shows live round-trip
 * latency (p50, p99) and messages per second. Tests read its verdict from
 * `<output id="result">` ("PASS <n> messages checked" or "FAIL <reason>",
 * with data-state "running", "pass" or "fail").
 *
 * Before serving it, the server replaces the one occurrence of
 * FE_WS_PAGE_PATH_MARKER, which sits inside a double-quoted JavaScript
 * string (`const WS_PATH = "__FE_WS_PATH__";`), with the listener's upgrade
 * path (default "/"), escaped for a JSON string.
 */
#ifndef FASTECHO_FE_WS_PAGE_H
#define FASTECHO_FE_WS_PAGE_H

#include <stddef.h>

#define FE_WS_PAGE_PATH_MARKER "__FE_WS_PATH__"

/* The page's bytes (UTF-8), fe_ws_page_len of them, followed by one '\0'
 * that is not part of the page (so it can be searched as a C string). */
extern const char fe_ws_page[];
extern const size_t fe_ws_page_len;

#endif /* FASTECHO_FE_WS_PAGE_H */
