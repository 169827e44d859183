/*
 * test_ws_page.c: the WebSocket page as the build compiled it in
 * (fe_ws_page.html -> fe_ws_page.c): complete, with exactly one upgrade-path
 * marker inside a JavaScript string, nothing loaded from elsewhere, and
 * small enough to send in one go. Exits 0 when all hold, else 1 after
 * printing each failure.
 */
#include "fe_ws_page.h"

#include <stdio.h>
#include <string.h>

enum { PAGE_MOST_BYTES = 12 * 1024 };

static int failures;

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "test_ws_page: FAIL: %s\n", what);
        failures++;
    }
}

static size_t count(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *at = strstr(text, needle); at; at = strstr(at + 1, needle))
        n++;
    return n;
}

int main(void)
{
    check(fe_ws_page_len > 0 && fe_ws_page_len < PAGE_MOST_BYTES, "the page is non-empty and under 12 KiB");
    check(strlen(fe_ws_page) == fe_ws_page_len, "the page holds no NUL byte and ends with one");
    check(strncmp(fe_ws_page, "<!DOCTYPE html>", 15) == 0, "the page starts with <!DOCTYPE html>");
    check(strstr(fe_ws_page, "</html>") != NULL, "the page is complete (</html>)");
    check(count(fe_ws_page, FE_WS_PAGE_PATH_MARKER) == 1, "the path marker occurs exactly once");
    check(strstr(fe_ws_page, "\"" FE_WS_PAGE_PATH_MARKER "\"") != NULL, "the marker sits in a JS string");
    check(strstr(fe_ws_page, "id=\"result\"") != NULL, "the page has its #result element");
    /* Self-contained: no http(s) URL and no src= of any kind. */
    check(strstr(fe_ws_page, "http://") == NULL && strstr(fe_ws_page, "https://") == NULL,
          "the page names no http(s) URL");
    check(strstr(fe_ws_page, "src=") == NULL && strstr(fe_ws_page, "<link") == NULL,
          "the page loads no external script, image or stylesheet");
    if (failures == 0)
        printf("test_ws_page: ok (%zu bytes)\n", fe_ws_page_len);
    return failures == 0 ? 0 : 1;
}
