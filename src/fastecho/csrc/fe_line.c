#include "fe_line.h"

#include <stdio.h>
#include <string.h>

static int append_error_line(const fe_line_format *fmt, fe_buf *partial, fe_buf *out)
{
    char msg[96];
    int n = snprintf(msg, sizeof msg, "error: line longer than %zu bytes\n", fmt->max_line);
    fe_buf_free(partial);
    return fe_buf_append(out, msg, (size_t)n) == 0 ? FE_LINE_TOO_LONG : FE_LINE_NO_MEMORY;
}

int fe_line_feed(const fe_line_format *fmt, fe_buf *partial, const char *in, size_t n, fe_buf *out)
{
    while (n > 0) {
        const char *newline = memchr(in, '\n', n);
        size_t segment = newline ? (size_t)(newline - in) : n;
        if (partial->len + segment > fmt->max_line)
            return append_error_line(fmt, partial, out);
        if (newline == NULL) /* keep the tail until its newline comes */
            return fe_buf_append(partial, in, segment) == 0 ? FE_LINE_OK : FE_LINE_NO_MEMORY;
        if ((partial->len && fe_buf_append(out, partial->data + partial->start, partial->len) != 0) ||
            fe_buf_append(out, in, segment) != 0 ||
            fe_buf_append(out, fmt->suffix, fmt->suffix_len) != 0 ||
            fe_buf_append(out, "\n", 1) != 0)
            return FE_LINE_NO_MEMORY;
        if (partial->len)
            fe_buf_free(partial);
        in += segment + 1;
        n -= segment + 1;
    }
    return FE_LINE_OK;
}


int fe_line_finish(const fe_line_format *fmt, fe_buf *partial, fe_buf *out)
{
    if (partial->len == 0)
        return FE_LINE_OK;
    int ok = fe_buf_append(out, partial->data + partial->start, partial->len) == 0 &&
             fe_buf_append(out, fmt->suffix, fmt->suffix_len) == 0;
    fe_buf_free(partial);
    return ok ? FE_LINE_OK : FE_LINE_NO_MEMORY;
}
