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

/* The last byte of the pending line followed by the first `segment` bytes of
 * in, or 0 when both are empty. */
static char last_byte(const fe_buf *partial, const char *in, size_t segment)
{
    if (segment > 0)
        return in[segment - 1];
    return partial->len > 0 ? partial->data[partial->start + partial->len - 1] : 0;
}

int fe_line_feed(const fe_line_format *fmt, fe_buf *partial, const char *in, size_t n, fe_buf *out)
{
    while (n > 0) {
        const char *newline = memchr(in, '\n', n);
        size_t segment = newline ? (size_t)(newline - in) : n;
        /* A final "\r" is not counted: before a "\n" it is part of the
         * terminator, and at the end of the input a "\n" may still follow it
         * in the next read. Anything after it makes it content, and counted. */
        size_t cr = last_byte(partial, in, segment) == '\r';
        if (partial->len + segment - cr > fmt->max_line)
            return append_error_line(fmt, partial, out);
        if (newline == NULL) /* keep the tail until its newline comes */
            return fe_buf_append(partial, in, segment) == 0 ? FE_LINE_OK : FE_LINE_NO_MEMORY;
        /* The line is partial then segment, less the "\r" of a "\r\n", which
         * is the segment's last byte, or the pending line's if the segment is
         * empty (the "\r" ended the previous read). */
        size_t from_partial = partial->len, from_in = segment;
        if (cr && from_in > 0)
            from_in--;
        else if (cr)
            from_partial--;
        const char *terminator = cr ? "\r\n" : "\n"; /* the line's own */
        if ((from_partial && fe_buf_append(out, partial->data + partial->start, from_partial) != 0) ||
            fe_buf_append(out, in, from_in) != 0 ||
            fe_buf_append(out, fmt->suffix, fmt->suffix_len) != 0 ||
            fe_buf_append(out, terminator, 1 + cr) != 0)
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
