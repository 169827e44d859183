/*
 * fuzz_line.c - libFuzzer target for line mode (fe_line_feed).
 *
 * Input layout: byte 0 picks max_line (1..64), byte 1 picks the suffix
 * length (0..7), the rest is the client's byte stream. The stream is fed in
 * pieces whose sizes come from the data itself, and the output is compared
 * with a whole-input reference model (the stream then ends, as with a
 * client's FIN), so a framing bug at any read boundary shows up as a
 * mismatch, not only as a crash.
 */
#include "fe_line.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char suffixes[] = " srv[e]";

/* What line mode must produce for the whole input at once. Returns the
 * output length; *too_long says an error line ended it. */
static size_t reference(const uint8_t *in, size_t n, size_t max_line, const char *sfx,
                        size_t sfx_len, char *out, int *too_long)
{
    size_t o = 0, start = 0;
    *too_long = 0;
    for (size_t i = 0; i <= n; i++) {
        int at_end = i == n;
        if (!at_end && in[i] != '\n') {
            if (i - start + 1 > max_line) {
                *too_long = 1;
                break;
            }
            continue;
        }
        if (at_end) { /* at end of stream the unterminated tail gets the suffix */
            if (i > start) {
                memcpy(out + o, in + start, i - start);
                o += i - start;
                memcpy(out + o, sfx, sfx_len);
                o += sfx_len;
            }
            break;
        }
        memcpy(out + o, in + start, i - start);
        o += i - start;
        memcpy(out + o, sfx, sfx_len);
        o += sfx_len;
        out[o++] = '\n';
        start = i + 1;
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
        if (partial.len > max_line)
            abort(); /* the pending line is bounded */
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
