/*
 * fe_line.h - line mode, the original server's reply format: each
 * newline-terminated line comes back with a suffix inserted before its
 * newline ("hello\n" -> "hello server[echo]\n").
 *
 * A pure function of its input, with no I/O, so it can be fuzzed alone.
 */
#ifndef FE_LINE_H
#define FE_LINE_H

#include "fe_buf.h"

#include <stddef.h>

typedef struct fe_line_format {
    const char *suffix;
    size_t suffix_len;
    size_t max_line; /* longest line accepted, newline excluded (>= 1) */
} fe_line_format;

enum fe_line_result {
    FE_LINE_OK = 0,
    FE_LINE_TOO_LONG = 1, /* an error line was appended; close after sending it */
    FE_LINE_NO_MEMORY = -1,
};

/* Frames n input bytes. Complete lines are appended to out with the suffix
 * inserted before each newline; an unterminated tail is kept in partial
 * (at most max_line bytes) until its newline arrives. When a line grows past
 * max_line, appends one error line to out, empties partial and returns
 * FE_LINE_TOO_LONG; the rest of the input is ignored. */
int fe_line_feed(const fe_line_format *fmt, fe_buf *partial, const char *in, size_t n, fe_buf *out);

/* At end of stream: a pending unterminated line still comes back, with the
 * suffix appended (there is no newline to put it before). Returns FE_LINE_OK
 * or FE_LINE_NO_MEMORY; partial is empty afterwards. */
int fe_line_finish(const fe_line_format *fmt, fe_buf *partial, fe_buf *out);

#endif /* FE_LINE_H */
