/*
 * fe_line.h - line mode, the original server's reply format: each line comes
 * back with a suffix inserted before its terminator, which is kept as the
 * client sent it ("hello\n" -> "hello server[echo]\n",
 * "hello\r\n" -> "hello server[echo]\r\n").
 *
 * A line ends at "\n"; a "\r" just before that "\n" belongs to the
 * terminator ("\r\n", as telnet and nc -C send). Any other "\r" is ordinary
 * line content.
 *
 * Line length: a line's length excludes its terminator ("\r\n" or "\n"), and
 * a line longer than max_line is refused. A "\r" that arrives after max_line
 * bytes of content is therefore held, not refused, because a "\n" may still
 * follow it in a later read; it is refused once anything other than "\n"
 * follows it. At end of stream there is no terminator and nothing more can
 * follow: the held tail, which may be max_line bytes plus such a final "\r",
 * comes back whole, the "\r" as content.
 *
 * Pure functions of their input, with no I/O, so they can be fuzzed alone
 * (tests/fuzz/fuzz_line.c checks them against a whole-input model).
 */
#ifndef FE_LINE_H
#define FE_LINE_H

#include "fe_buf.h"

#include <stddef.h>

typedef struct fe_line_format {
    const char *suffix;
    size_t suffix_len;
    size_t max_line; /* longest line accepted, its "\n" or "\r\n" excluded (>= 1) */
} fe_line_format;

enum fe_line_result {
    FE_LINE_OK = 0,
    FE_LINE_TOO_LONG = 1, /* an error line was appended; close after sending it */
    FE_LINE_NO_MEMORY = -1,
};

/* Frames n input bytes. Complete lines are appended to out with the suffix
 * inserted before each terminator ("\n" or "\r\n", kept as sent); an
 * unterminated tail is kept in partial until its newline arrives. partial
 * holds at most max_line bytes, or max_line + 1 when its last byte is a "\r"
 * that may begin a "\r\n". The output of one call is at most
 * partial->len + n * (1 + suffix_len) bytes. When a line grows past max_line,
 * appends one error line to out, empties partial and returns
 * FE_LINE_TOO_LONG; the rest of the input is ignored. */
int fe_line_feed(const fe_line_format *fmt, fe_buf *partial, const char *in, size_t n, fe_buf *out);

/* At end of stream: a pending unterminated line still comes back, with the
 * suffix appended (there is no newline to put it before; a final "\r" is
 * content). Returns FE_LINE_OK or FE_LINE_NO_MEMORY; partial is empty
 * afterwards. */
int fe_line_finish(const fe_line_format *fmt, fe_buf *partial, fe_buf *out);

#endif /* FE_LINE_H */
