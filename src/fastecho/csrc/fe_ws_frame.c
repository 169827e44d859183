/*
 * fe_ws_frame.c - the WebSocket frame codec (see fe_ws_frame.h for what
 * comes back and when the connection is failed).
 *
 * A frame's header is gathered into d->hdr (at most 14 bytes, so a header
 * split across reads costs nothing to resume), judged, and then its payload
 * goes to one of four sinks: straight into out (a streamed binary frame, or a
 * ping's pong), the message buffer (text, fragmented messages), the close
 * buffer, or nowhere (a pong). Every byte is looked at once.
 */
#include "fe_ws_frame.h"

#include <stdlib.h>
#include <string.h>

enum {
    OP_CONT = 0x0,
    OP_TEXT = 0x1,
    OP_BINARY = 0x2,
    OP_CLOSE = 0x8,
    OP_PING = 0x9,
    OP_PONG = 0xA,
};

enum sink {
    SINK_OUT,     /* unmasked straight into out: a streamed binary frame or a ping's pong */
    SINK_MESSAGE, /* appended to the held message */
    SINK_CLOSE,   /* held in d->ctl until the close frame is whole */
    SINK_DROP,    /* a pong: skipped */
};

enum { MSG_MIN_CAPACITY = 4096 };

/* ---- UTF-8 (RFC 3629) ----------------------------------------------------
 * The state is 0 between characters; inside one it packs the continuation
 * bytes still due (bits 0-1) and the range the next byte must fall in (bits
 * 8-15 low, 16-23 high). Only the first continuation byte has a narrower
 * range than 80-BF, and it is what rules out overlongs (E0, F0), surrogates
 * (ED) and code points past U+10FFFF (F4); C0, C1 and F5-FF never start one. */

static uint32_t utf8_expect(uint32_t due, uint32_t lo, uint32_t hi)
{
    return due | lo << 8 | hi << 16;
}

/* Advances *state over p[0, n). Returns false at the first byte that makes
 * the text so far impossible to complete as UTF-8 (*state is then
 * meaningless); true otherwise, with *state where the text stands. */
static bool utf8_advance(uint32_t *state, const uint8_t *p, size_t n)
{
    uint32_t s = *state;
    size_t i = 0;
    while (i < n) {
        if (s == 0) {
            /* Text is mostly ASCII: skip it 8 bytes at a time. */
            while (n - i >= 8) {
                uint64_t w;
                memcpy(&w, p + i, 8);
                if (w & 0x8080808080808080u)
                    break;
                i += 8;
            }
            if (i == n)
                break;
            uint8_t c = p[i++];
            if (c < 0x80)
                continue;
            if (c >= 0xC2 && c <= 0xDF)
                s = utf8_expect(1, 0x80, 0xBF);
            else if (c == 0xE0)
                s = utf8_expect(2, 0xA0, 0xBF); /* below A0: overlong */
            else if (c == 0xED)
                s = utf8_expect(2, 0x80, 0x9F); /* above 9F: a surrogate */
            else if (c >= 0xE1 && c <= 0xEF)
                s = utf8_expect(2, 0x80, 0xBF);
            else if (c == 0xF0)
                s = utf8_expect(3, 0x90, 0xBF); /* below 90: overlong */
            else if (c >= 0xF1 && c <= 0xF3)
                s = utf8_expect(3, 0x80, 0xBF);
            else if (c == 0xF4)
                s = utf8_expect(3, 0x80, 0x8F); /* above 8F: past U+10FFFF */
            else
                return false;
        } else {
            uint8_t c = p[i++];
            if (c < ((s >> 8) & 0xFF) || c > (s >> 16))
                return false;
            uint32_t due = (s & 3) - 1;
            s = due ? utf8_expect(due, 0x80, 0xBF) : 0;
        }
    }
    *state = s;
    return true;
}

bool fe_ws_utf8_valid(const uint8_t *bytes, size_t n)
{
    uint32_t s = 0;
    return utf8_advance(&s, bytes, n) && s == 0;
}

/* ---- helpers ------------------------------------------------------------- */

#if defined(__GNUC__)
/* GCC's and clang's vector extension: 16 bytes a step in SSE2 or NEON
 * registers, without intrinsics per architecture. */
typedef uint64_t fe_u64x2 __attribute__((vector_size(16)));
#endif

/* dst[i] = src[i] ^ mask[(off + i) % 4] for i < n. dst and src must not
 * overlap. The mask, rotated to the frame offset, repeats every 4 bytes, so
 * one 64-bit word of it serves every 8-byte (or 16-byte) step: no per-byte
 * work but the last n % 8 bytes. */
static void unmask(uint8_t *restrict dst, const uint8_t *restrict src, size_t n, const uint8_t mask[4],
                   unsigned off)
{
    uint8_t m8[8];
    for (unsigned i = 0; i < 8; i++)
        m8[i] = mask[(off + i) & 3];
    uint64_t m;
    memcpy(&m, m8, 8);
    size_t i = 0;
#if defined(__GNUC__)
    fe_u64x2 mm = {m, m};
    for (; n - i >= 32; i += 32) {
        fe_u64x2 a, b;
        memcpy(&a, src + i, 16);
        memcpy(&b, src + i + 16, 16);
        a ^= mm;
        b ^= mm;
        memcpy(dst + i, &a, 16);
        memcpy(dst + i + 16, &b, 16);
    }
#endif
    for (; n - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= m;
        memcpy(dst + i, &w, 8);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ m8[i & 7];
}

/* Writes a server frame header (FIN set, unmasked, minimal length) for a
 * payload of len bytes into h; returns its length (2, 4 or 10). */
static size_t frame_header(uint8_t h[10], uint8_t opcode, uint64_t len)
{
    h[0] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        h[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xFFFF) {
        h[1] = 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++)
        h[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

static void drop_message(fe_ws_decoder *d)
{
    free(d->msg);
    d->msg = NULL;
    d->msg_len = 0;
    d->msg_cap = 0;
    d->msg_opcode = 0;
    d->utf8 = 0;
}

/* Appends a close frame with code (0: no payload) and marks d closing.
 * Returns FE_WS_CLOSE, or FE_WS_NO_MEMORY. */
static int append_close(fe_ws_decoder *d, uint16_t code, bool peer, fe_buf *out)
{
    uint8_t f[4] = {0x80 | OP_CLOSE, 0, (uint8_t)(code >> 8), (uint8_t)code};
    size_t n = 2;
    if (code != 0) {
        f[1] = 2;
        n = 4;
    }
    if (fe_buf_append(out, f, n) != 0) {
        d->broken = true;
        return FE_WS_NO_MEMORY;
    }
    drop_message(d);
    d->closing = true;
    d->peer_closed = peer;
    d->close_code = code;
    return FE_WS_CLOSE;
}

static bool close_code_allowed(unsigned code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

/* ---- frames -------------------------------------------------------------- */

/* Judges the first two header bytes. Returns 0, or the close code. Sets
 * d->hdr_need to the whole header's length. */
static uint16_t judge_first_bytes(fe_ws_decoder *d)
{
    uint8_t b0 = d->hdr[0], b1 = d->hdr[1];
    uint8_t op = b0 & 0x0F, len7 = b1 & 0x7F;
    d->hdr_need = (uint8_t)(2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + 4);
    if (b0 & 0x70)
        return FE_WS_CLOSE_PROTOCOL; /* RSV bits: no extension was negotiated */
    if (!(b1 & 0x80))
        return FE_WS_CLOSE_PROTOCOL; /* clients must mask */
    switch (op) {
    case OP_CONT:
        return d->msg_opcode ? 0 : FE_WS_CLOSE_PROTOCOL;
    case OP_TEXT:
    case OP_BINARY:
        return d->msg_opcode ? FE_WS_CLOSE_PROTOCOL : 0;
    case OP_CLOSE:
    case OP_PING:
    case OP_PONG:
        return (b0 & 0x80) && len7 <= FE_WS_MAX_CONTROL ? 0 : FE_WS_CLOSE_PROTOCOL;
    default:
        return FE_WS_CLOSE_PROTOCOL;
    }
}

/* Judges the payload length, once the extended length (if any) is in.
 * Returns 0 with d->remaining set, or the close code. */
static uint16_t judge_length(fe_ws_decoder *d)
{
    uint8_t len7 = d->hdr[1] & 0x7F;
    uint64_t len = len7;
    if (len7 == 126) {
        len = (uint64_t)d->hdr[2] << 8 | d->hdr[3];
        if (len < 126)
            return FE_WS_CLOSE_PROTOCOL;
    } else if (len7 == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | d->hdr[2 + i];
        if (len >> 63 || len <= 0xFFFF)
            return FE_WS_CLOSE_PROTOCOL;
    }
    uint8_t op = d->hdr[0] & 0x0F;
    if (op < OP_CLOSE) {
        /* msg_len <= max_message always, so this cannot wrap. */
        uint64_t before = op == OP_CONT ? d->msg_len : 0;
        if (len > d->max_message - before)
            return FE_WS_CLOSE_TOO_BIG;
    }
    d->remaining = len;
    return 0;
}

/* Starts the payload of a frame whose header is whole and judged: picks its
 * sink, and appends the streamed echo's header, with as much of its payload
 * as in[*pos, n) holds (one extend for both: the common whole small frame
 * costs one). Returns FE_WS_OK or FE_WS_NO_MEMORY. */
static int begin_payload(fe_ws_decoder *d, fe_buf *out, const uint8_t *in, size_t n, size_t *pos)
{
    uint8_t b0 = d->hdr[0];
    d->fin = b0 >> 7;
    d->opcode = b0 & 0x0F;
    memcpy(d->mask, d->hdr + d->hdr_need - 4, 4);
    d->mask_off = 0;
    d->in_payload = 1;
    d->hdr_len = 0;
    if (d->opcode == OP_PING || (d->opcode == OP_BINARY && d->fin)) {
        size_t hl = d->remaining < 126 ? 2 : d->remaining <= 0xFFFF ? 4 : 10;
        size_t take = n - *pos;
        if (take > d->remaining)
            take = (size_t)d->remaining;
        char *dst = fe_buf_extend(out, hl + take);
        if (dst == NULL)
            return FE_WS_NO_MEMORY;
        frame_header((uint8_t *)dst, d->opcode == OP_PING ? OP_PONG : OP_BINARY, d->remaining);
        unmask((uint8_t *)dst + hl, in + *pos, take, d->mask, 0);
        *pos += take;
        d->remaining -= take;
        d->mask_off = (uint8_t)(take & 3);
        d->sink = SINK_OUT;
        return FE_WS_OK;
    }
    switch (d->opcode) {
    case OP_TEXT:
    case OP_BINARY: /* the first fragment of a binary message */
        d->msg_opcode = d->opcode;
        d->msg_len = 0;
        d->utf8 = 0;
        d->sink = SINK_MESSAGE;
        return FE_WS_OK;
    case OP_CONT:
        d->sink = SINK_MESSAGE;
        return FE_WS_OK;
    case OP_CLOSE:
        d->ctl_len = 0;
        d->sink = SINK_CLOSE;
        return FE_WS_OK;
    default: /* OP_PONG */
        d->sink = SINK_DROP;
        return FE_WS_OK;
    }
}

/* Makes room for need bytes of message. Growth doubles but never past
 * max_message, nor past the message's known end when this is its final
 * frame, so one message never costs more than max_message bytes. */
static bool reserve_message(fe_ws_decoder *d, size_t need)
{
    if (need <= d->msg_cap)
        return true;
    uint64_t cap = d->msg_cap ? (uint64_t)d->msg_cap * 2 : MSG_MIN_CAPACITY;
    uint64_t limit = d->max_message;
    if (d->fin && d->msg_len + d->remaining < limit)
        limit = d->msg_len + d->remaining;
    if (cap > limit)
        cap = limit;
    if (cap < need)
        cap = need;
    uint8_t *grown = realloc(d->msg, (size_t)cap);
    if (grown == NULL)
        return false;
    d->msg = grown;
    d->msg_cap = (size_t)cap;
    return true;
}

/* The current frame's payload has all arrived: echo what it completes.
 * Returns FE_WS_OK, FE_WS_CLOSE or FE_WS_NO_MEMORY. */
static int end_frame(fe_ws_decoder *d, fe_buf *out, fe_ws_feed_info *info)
{
    d->in_payload = 0;
    d->hdr_need = 2;
    switch (d->sink) {
    case SINK_OUT:
        if (d->opcode == OP_PING)
            info->pings++;
        else
            info->messages++;
        return FE_WS_OK;
    case SINK_DROP:
        return FE_WS_OK;
    case SINK_CLOSE: {
        if (d->ctl_len == 0)
            return append_close(d, 0, true, out);
        if (d->ctl_len == 1)
            return append_close(d, FE_WS_CLOSE_PROTOCOL, false, out);
        unsigned code = (unsigned)d->ctl[0] << 8 | d->ctl[1];
        if (!close_code_allowed(code))
            return append_close(d, FE_WS_CLOSE_PROTOCOL, false, out);
        if (!fe_ws_utf8_valid(d->ctl + 2, d->ctl_len - 2u))
            return append_close(d, FE_WS_CLOSE_BAD_DATA, false, out);
        return append_close(d, (uint16_t)code, true, out);
    }
    default: /* SINK_MESSAGE */
        if (!d->fin)
            return FE_WS_OK;
        if (d->msg_opcode == OP_TEXT && d->utf8 != 0)
            return append_close(d, FE_WS_CLOSE_BAD_DATA, false, out); /* cut mid-character */
        uint8_t h[10];
        size_t hl = frame_header(h, d->msg_opcode, d->msg_len);
        /* One extend for header and payload: a failure leaves no half frame. */
        char *dst = fe_buf_extend(out, hl + d->msg_len);
        if (dst == NULL)
            return FE_WS_NO_MEMORY;
        memcpy(dst, h, hl);
        if (d->msg_len)
            memcpy(dst + hl, d->msg, d->msg_len);
        drop_message(d); /* an idle connection holds no heap */
        info->messages++;
        return FE_WS_OK;
    }
}

/* Consumes payload bytes in[0, take) (take <= d->remaining). Returns FE_WS_OK,
 * FE_WS_CLOSE (invalid text) or FE_WS_NO_MEMORY. */
static int take_payload(fe_ws_decoder *d, const uint8_t *in, size_t take, fe_buf *out)
{
    switch (d->sink) {
    case SINK_OUT: {
        char *dst = fe_buf_extend(out, take);
        if (dst == NULL)
            return FE_WS_NO_MEMORY;
        unmask((uint8_t *)dst, in, take, d->mask, d->mask_off);
        break;
    }
    case SINK_MESSAGE: {
        if (!reserve_message(d, d->msg_len + take))
            return FE_WS_NO_MEMORY;
        uint8_t *dst = d->msg + d->msg_len;
        unmask(dst, in, take, d->mask, d->mask_off);
        d->msg_len += take;
        if (d->msg_opcode == OP_TEXT && !utf8_advance(&d->utf8, dst, take))
            return append_close(d, FE_WS_CLOSE_BAD_DATA, false, out);
        break;
    }
    case SINK_CLOSE:
        unmask(d->ctl + d->ctl_len, in, take, d->mask, d->mask_off);
        d->ctl_len = (uint8_t)(d->ctl_len + take);
        break;
    default:
        break;
    }
    d->mask_off = (uint8_t)((d->mask_off + take) & 3);
    d->remaining -= take;
    return FE_WS_OK;
}

/* ---- the API ------------------------------------------------------------- */

void fe_ws_decoder_init(fe_ws_decoder *d, uint64_t max_message)
{
    memset(d, 0, sizeof *d);
    /* A message is held in one allocation: keep its size a size_t. */
    d->max_message = max_message > SIZE_MAX / 2 ? SIZE_MAX / 2 : max_message;
    d->hdr_need = 2;
}

void fe_ws_decoder_free(fe_ws_decoder *d)
{
    drop_message(d);
}

size_t fe_ws_decoder_held(const fe_ws_decoder *d)
{
    return d->msg_cap;
}

size_t fe_ws_decoder_room(const fe_ws_decoder *d)
{
    return d->msg_cap - d->msg_len;
}

bool fe_ws_closing(const fe_ws_decoder *d)
{
    return d->closing;
}

/* Appends the close frame fe_ws_close deferred (its code and reason wait in
 * d->ctl). Returns FE_WS_CLOSE or FE_WS_NO_MEMORY. */
static int append_deferred_close(fe_ws_decoder *d, fe_buf *out)
{
    uint8_t f[2] = {0x80 | OP_CLOSE, d->ctl_len};
    char *dst = fe_buf_extend(out, 2u + d->ctl_len);
    if (dst == NULL) {
        d->broken = true;
        return FE_WS_NO_MEMORY;
    }
    memcpy(dst, f, 2);
    memcpy(dst + 2, d->ctl, d->ctl_len);
    d->close_deferred = false;
    d->closing = true;
    d->peer_closed = false;
    d->close_code = (uint16_t)(d->ctl[0] << 8 | d->ctl[1]);
    return FE_WS_CLOSE;
}

int fe_ws_feed(fe_ws_decoder *d, const uint8_t *in, size_t n, fe_buf *out, fe_ws_feed_info *info)
{
    memset(info, 0, sizeof *info);
    if (d->broken)
        return FE_WS_NO_MEMORY;
    int rc = FE_WS_OK;
    size_t i = 0;
    while (rc == FE_WS_OK && !d->closing) {
        if (d->in_payload) {
            size_t take = n - i;
            if (take > d->remaining)
                take = (size_t)d->remaining;
            if (take > 0) {
                rc = take_payload(d, in + i, take, out);
                i += take;
            }
            if (rc == FE_WS_OK && d->remaining == 0) {
                rc = end_frame(d, out, info);
                if (rc == FE_WS_OK && d->close_deferred)
                    rc = append_deferred_close(d, out);
            } else if (i == n) {
                break;
            }
            continue;
        }
        if (i == n)
            break;
        uint16_t code = 0;
        if (d->hdr_len == 0 && n - i >= 2) {
            /* The common case: a whole header in this read. Judge it in one
             * go, with the same checks in the same order as below. */
            uint8_t len7 = in[i + 1] & 0x7F;
            size_t whole = 2u + (len7 == 126 ? 2u : len7 == 127 ? 8u : 0u) + 4u;
            if (n - i >= whole) {
                if (n - i >= FE_WS_MAX_FRAME_HEADER)
                    memcpy(d->hdr, in + i, FE_WS_MAX_FRAME_HEADER); /* a fixed size: no call */
                else
                    memcpy(d->hdr, in + i, whole);
                d->hdr_len = (uint8_t)whole;
                code = judge_first_bytes(d);
                if (code == 0)
                    code = judge_length(d);
                i += whole;
                if (code != 0)
                    rc = append_close(d, code, false, out);
                else
                    rc = begin_payload(d, out, in, n, &i);
                continue;
            }
        }
        if (d->hdr_len < 2) {
            /* The first two bytes say the header's length; judge them as
             * soon as both are in (a 7-bit length with them). */
            size_t want = 2u - d->hdr_len;
            if (want > n - i)
                want = n - i;
            memcpy(d->hdr + d->hdr_len, in + i, want);
            d->hdr_len = (uint8_t)(d->hdr_len + want);
            i += want;
            if (d->hdr_len < 2)
                break;
            code = judge_first_bytes(d);
            if (code == 0 && d->hdr_need == 6)
                code = judge_length(d);
            if (code != 0)
                rc = append_close(d, code, false, out);
            continue;
        }
        /* The extended length, judged once whole, then the mask. */
        size_t len_end = (size_t)d->hdr_need - 4, before = d->hdr_len;
        size_t want = (size_t)d->hdr_need - d->hdr_len;
        if (want > n - i)
            want = n - i;
        memcpy(d->hdr + d->hdr_len, in + i, want);
        d->hdr_len = (uint8_t)(d->hdr_len + want);
        i += want;
        if (before < len_end && d->hdr_len >= len_end)
            code = judge_length(d);
        if (code != 0)
            rc = append_close(d, code, false, out);
        else if (d->hdr_len == d->hdr_need)
            rc = begin_payload(d, out, in, n, &i);
    }
    if (rc == FE_WS_NO_MEMORY) {
        d->broken = true;
        return rc;
    }
    if (d->closing) {
        info->close_code = d->close_code;
        info->peer_closed = d->peer_closed;
        return FE_WS_CLOSE;
    }
    return FE_WS_OK;
}

int fe_ws_close(fe_ws_decoder *d, uint16_t code, const char *reason, fe_buf *out)
{
    if (d->closing || d->close_deferred)
        return d->closing ? 0 : 1;
    size_t rlen = reason ? strlen(reason) : 0;
    if (rlen > FE_WS_MAX_CONTROL - 2) {
        rlen = FE_WS_MAX_CONTROL - 2;
        while (rlen > 0 && ((uint8_t)reason[rlen] & 0xC0) == 0x80)
            rlen--; /* do not cut a character in two */
    }
    drop_message(d); /* a held message will never be echoed now */
    /* Kept in d->ctl: no close payload is being gathered (a client's close
     * ends the input), so it is free, and a deferred close needs it. */
    d->ctl[0] = (uint8_t)(code >> 8);
    d->ctl[1] = (uint8_t)code;
    if (rlen)
        memcpy(d->ctl + 2, reason, rlen);
    d->ctl_len = (uint8_t)(2 + rlen);
    d->close_deferred = true;
    if (d->in_payload && d->sink == SINK_OUT && d->remaining > 0)
        return 1; /* a frame's echo is part-way out: finish it first */
    return append_deferred_close(d, out) == FE_WS_CLOSE ? 0 : -1;
}
