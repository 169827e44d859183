/*
 * fuzz_line.c - libFuzzer target for line mode (fe_line_feed).
 *
 * Input layout: byte 0 picks max_line (1..64), byte 1 picks the suffix
 * length (0..7), the rest is the client's byte stream. The stream is fed in
 * pieces whose sizes come from the data itself, and the output is compared
 * with a whole-input reference model (the stream then ends, as with a
 * client's FIN), so a framing bug at any read boundary (such as a "\r\n"
 * split between two reads) shows up as a mismatch, not only as a crash.
 */
#include "fe_line.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char suffixes[] = " srv[e]";

/* What line mode must produce for the whole input at once. Returns the
 * output length; *too_long says an error line ended it.
 *
 * The rule (fe_line.h): a line ends at "\n", and a "\r" just before it is
 * part of its terminator; the reply is the line, the suffix, then the line's
 * own terminator. A line longer than max_line, its terminator excluded, is
 * refused. The unterminated tail at end of stream comes back whole with the
 * suffix appended; a final "\r" there is content, but is not counted against
 * max_line (while it was pending a "\n" could still have followed it). */
static size_t reference(const uint8_t *in, size_t n, size_t max_line, const char *sfx,
                        size_t sfx_len, char *out, int *too_long)
{
    size_t o = 0, start = 0;
    *too_long = 0;
    while (start < n) {
        const uint8_t *newline = memchr(in + start, '\n', n - start);
        size_t len = (newline ? (size_t)(newline - in) : n) - start;
        size_t cr = len > 0 && in[start + len - 1] == '\r';
        if (len - cr > max_line) {
            *too_long = 1;
            break;
        }
        size_t content = newline ? len - cr : len; /* at end of stream the "\r" is content */
        memcpy(out + o, in + start, content);
        o += content;
        memcpy(out + o, sfx, sfx_len);
        o += sfx_len;
        if (newline == NULL)
            break;
        if (cr)
            out[o++] = '\r';
        out[o++] = '\n';
        start += len + 1;
    }
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t max_line = 1 + data[0] % 64;
    size_t sfx_len = data[1] % 8;
    fe_line_format fmt = {suffixes, sfx_len, max_line};
    const uint8_t *in = data + 2;
    size_t n = size - 2;

    char *want = malloc(n * (1 + sfx_len) + sfx_len + 1);
    int too_long = 0;
    size_t want_len = reference(in, n, max_line, suffixes, sfx_len, want, &too_long);

    fe_buf partial = {0}, out = {0};
    int rc = FE_LINE_OK;
    size_t pos = 0, step = 0;
    while (pos < n && rc == FE_LINE_OK) {
        size_t piece = 1 + (size_t)in[(step++ * 7) % n] % 13; /* 1..13 bytes */
        if (piece > n - pos)
            piece = n - pos;
        rc = fe_line_feed(&fmt, &partial, (const char *)in + pos, piece, &out);
        /* The pending line is bounded: max_line bytes, plus one "\r" that
         * may begin a "\r\n". */
        if (partial.len > max_line + 1 ||
            (partial.len == max_line + 1 && partial.data[partial.start + partial.len - 1] != '\r'))
            abort();
        pos += piece;
    }
    if (rc == FE_LINE_OK)
        rc = fe_line_finish(&fmt, &partial, &out); /* the client's end of stream */
    if (rc == FE_LINE_NO_MEMORY || partial.len != 0)
        abort();
    if ((rc == FE_LINE_TOO_LONG) != too_long)
        abort();
    /* Same replies; after an overlong line, exactly one error line follows. */
    if (out.len < want_len || (want_len && memcmp(out.data + out.start, want, want_len) != 0))
        abort();
    if (!too_long && out.len != want_len)
        abort();
    if (too_long && (out.len == want_len || memcmp(out.data + out.start + want_len, "error: ", 7) != 0 ||
                     out.data[out.start + out.len - 1] != '\n'))
        abort();
    fe_buf_free(&partial);
    fe_buf_free(&out);
    free(want);
    return 0;
}
