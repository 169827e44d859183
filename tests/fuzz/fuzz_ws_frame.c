/*
 * fuzz_ws_frame.c - libFuzzer target for the WebSocket frame codec
 * (fe_ws_feed, fe_ws_close), checked against a model, not only for crashes.
 *
 * Input layout: byte 0 picks max_message from a table of edges; byte 1
 * picks how the client stream is made and split; the rest is either the
 * client's byte stream itself (raw mode) or a list of frame descriptions
 * that the harness encodes (masking, length forms, payloads of up to 70000
 * bytes from a few patterns), so that long frames, edge lengths and valid
 * UTF-8 are reached too.
 *
 * The model, reference() below, is written separately and plainly: it
 * takes the whole stream at once, walks the frames in order, unmasks byte by
 * byte, and checks UTF-8 by decoding code points (a prefix is acceptable
 * when the interval of code points its last, incomplete sequence can still
 * become holds a valid one). Its output must equal the codec's for the
 * stream fed in pieces whose sizes the input picks. Also checked: each
 * call's output bound (fe_ws_frame.h), the counts and close code, that
 * nothing comes after FE_WS_CLOSE, that held memory stays within
 * max_message and is 0 when no message is part-way, and fe_ws_close at the
 * end (appended at once, or deferred exactly when a streamed echo is
 * part-way).
 */
#include "fe_ws_frame.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_ws_frame: %s\n", what);
    abort();
}

/* ---- the model ----------------------------------------------------------- */

typedef struct model_out {
    uint8_t *bytes;
    size_t len, cap;
    bool closed, peer_closed;
    uint16_t close_code;
    uint32_t messages, pings;
    bool streaming_cut; /* the stream ends inside a streamed frame's payload */
    bool holding;       /* the stream ends with a text or fragmented message part-way */
} model_out;

static void put(model_out *m, const void *p, size_t n)
{
    if (m->len + n > m->cap) {
        m->cap = (m->len + n) * 2 + 64;
        m->bytes = realloc(m->bytes, m->cap);
        if (m->bytes == NULL)
            abort();
    }
    if (n)
        memcpy(m->bytes + m->len, p, n);
    m->len += n;
}

static void put_header(model_out *m, int opcode, uint64_t len)
{
    uint8_t h[10];
    size_t k = 0;
    h[k++] = (uint8_t)(0x80 | opcode);
    if (len <= 125) {
        h[k++] = (uint8_t)len;
    } else if (len <= 65535) {
        h[k++] = 126;
        h[k++] = (uint8_t)(len / 256);
        h[k++] = (uint8_t)(len % 256);
    } else {
        h[k++] = 127;
        for (int b = 7; b >= 0; b--)
            h[k++] = (uint8_t)(len >> (8 * b));
    }
    put(m, h, k);
}

static void put_close(model_out *m, unsigned code, bool peer)
{
    put_header(m, 8, code ? 2 : 0);
    if (code) {
        uint8_t c[2] = {(uint8_t)(code / 256), (uint8_t)(code % 256)};
        put(m, c, 2);
    }
    m->closed = true;
    m->close_code = (uint16_t)code;
    m->peer_closed = peer;
}

/* Whether s[0, n) is UTF-8 (when final) or can still become it (when not),
 * by decoding code points. */
static bool utf8_ok(const uint8_t *s, size_t n, bool final)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if ((c >> 5) == 6) {
            len = 2;
            cp = c & 0x1F;
        } else if ((c >> 4) == 14) {
            len = 3;
            cp = c & 0x0F;
        } else if ((c >> 3) == 30) {
            len = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        size_t have = n - i < len ? n - i : len;
        for (size_t k = 1; k < have; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        size_t missing = len - have;
        uint32_t lo = cp << (6 * missing), hi = lo | ((1u << (6 * missing)) - 1);
        uint32_t least = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
        uint32_t a = lo > least ? lo : least, b = hi < 0x10FFFF ? hi : 0x10FFFF;
        if (a > b || (a >= 0xD800 && b <= 0xDFFF))
            return false;
        if (missing > 0)
            return !final;
        i += len;
    }
    return true;
}

static bool close_code_ok(unsigned c)
{
    if (c < 1000 || c >= 5000)
        return false;
    if (c >= 3000)
        return true;
    return c <= 1014 && c != 1004 && c != 1005 && c != 1006;
}

/* The whole stream at once. */
static void reference(const uint8_t *in, size_t n, uint64_t max_message, model_out *m)
{
    size_t pos = 0;
    bool active = false;
    int msg_op = 0;
    uint8_t *msg = NULL;
    size_t msg_len = 0;
    for (;;) {
        if (n - pos < 2)
            break;
        int fin = in[pos] >> 7, rsv = (in[pos] >> 4) & 7, op = in[pos] & 15;
        int masked = in[pos + 1] >> 7, len7 = in[pos + 1] & 127;
        bool control = op == 8 || op == 9 || op == 10;
        bool known = op <= 2 || control;
        if (rsv || !masked || !known || (control && (!fin || len7 > 125)) || (op == 0 && !active) ||
            ((op == 1 || op == 2) && active)) {
            put_close(m, 1002, false);
            break;
        }
        size_t ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
        if (n - pos < 2 + ext)
            break;
        uint64_t len = (uint64_t)len7;
        if (ext) {
            len = 0;
            for (size_t k = 0; k < ext; k++)
                len = len * 256 + in[pos + 2 + k];
            if ((ext == 2 && len < 126) || (ext == 8 && (len >= (1ull << 63) || len < 65536))) {
                put_close(m, 1002, false);
                break;
            }
        }
        if (!control && (op == 0 ? msg_len : 0) + len > max_message) {
            put_close(m, 1009, false);
            break;
        }
        size_t hl = 2 + ext + 4;
        if (n - pos < hl)
            break;
        const uint8_t *key = in + pos + 2 + ext;
        size_t avail = n - pos - hl < len ? n - pos - hl : (size_t)len;
        uint8_t *p = malloc(avail + 1);
        if (p == NULL)
            abort();
        for (size_t k = 0; k < avail; k++)
            p[k] = in[pos + hl + k] ^ key[k % 4];
        bool whole = avail == len;
        bool stop = false;
        if ((op == 2 && fin && !active) || op == 9) {
            put_header(m, op == 9 ? 10 : 2, len);
            put(m, p, avail);
            if (whole && op == 9)
                m->pings++;
            else if (whole)
                m->messages++;
            else
                m->streaming_cut = true;
        } else if (op == 10) {
            /* ignored */
        } else if (op == 8) {
            if (!whole) {
                stop = true;
            } else if (len == 0) {
                put_close(m, 0, true);
            } else if (len == 1) {
                put_close(m, 1002, false);
            } else if (!close_code_ok(p[0] * 256u + p[1])) {
                put_close(m, 1002, false);
            } else if (!utf8_ok(p + 2, avail - 2, true)) {
                put_close(m, 1007, false);
            } else {
                put_close(m, p[0] * 256u + p[1], true);
            }
        } else {
            if (op != 0) {
                active = true;
                msg_op = op;
                msg_len = 0;
            }
            msg = realloc(msg, msg_len + avail + 1);
            if (msg == NULL)
                abort();
            memcpy(msg + msg_len, p, avail);
            msg_len += avail;
            if (msg_op == 1 && !utf8_ok(msg, msg_len, false)) {
                put_close(m, 1007, false);
            } else if (whole && fin) {
                if (msg_op == 1 && !utf8_ok(msg, msg_len, true)) {
                    put_close(m, 1007, false);
                } else {
                    put_header(m, msg_op, msg_len);
                    put(m, msg, msg_len);
                    m->messages++;
                    active = false;
                    msg_len = 0;
                }
            }
        }
        free(p);
        if (m->closed || stop || !whole)
            break;
        pos += hl + (size_t)len;
    }
    m->holding = active && !m->closed;
    free(msg);
}

/* ---- building a client stream from descriptions ------------------------- */

typedef struct stream {
    uint8_t *b;
    size_t len, cap;
} stream;

static void sput(stream *s, const void *p, size_t n)
{
    if (n == 0)
        return;
    if (s->len + n > s->cap) {
        s->cap = (s->len + n) * 2 + 64;
        s->b = realloc(s->b, s->cap);
        if (s->b == NULL)
            abort();
    }
    memcpy(s->b + s->len, p, n);
    s->len += n;
}

static const char utf8_pattern[] = "a\xc3\xa9\xe2\x82\xac\xf0\x90\x8d\x88z"; /* a é € 𐍈 z */

/* Each description: b0 (FIN, RSV, opcode), flags, a length pick, a payload
 * pick, then 4 mask bytes; payload bytes come from the data when picked. */
static void build(const uint8_t *d, size_t n, stream *s)
{
    static const size_t edges[] = {125, 126, 127, 200, 1000, 65535, 65536, 70000};
    size_t i = 0;
    while (n - i >= 8 && s->len < 200000) {
        uint8_t b0 = d[i], flags = d[i + 1], lpick = d[i + 2], ppick = d[i + 3];
        const uint8_t *mask = d + i + 4;
        i += 8;
        if (!(flags & 0x40))
            b0 &= 0x8F; /* RSV bits only now and then */
        size_t len = lpick < 200 ? lpick % 130 : edges[lpick % 8];
        int form = flags & 3; /* 0, 3: minimal; 1: force 126; 2: force 127 */
        bool unmasked = (flags & 0x3C) == 0x3C;
        uint8_t h[14];
        size_t k = 0;
        h[k++] = b0;
        uint8_t mbit = unmasked ? 0 : 0x80;
        if ((form == 0 || form == 3) && len < 126) {
            h[k++] = (uint8_t)(mbit | len);
        } else if ((form == 0 || form == 3 || form == 1) && len <= 0xFFFF) {
            h[k++] = mbit | 126;
            h[k++] = (uint8_t)(len >> 8);
            h[k++] = (uint8_t)len;
        } else {
            h[k++] = mbit | 127;
            for (int b = 7; b >= 0; b--)
                h[k++] = (uint8_t)((uint64_t)len >> (8 * b));
            if (flags & 0x80)
                h[2] |= 0x80; /* the forbidden top bit */
        }
        if (!unmasked) {
            memcpy(h + k, mask, 4);
            k += 4;
        }
        sput(s, h, k);
        uint8_t *p = malloc(len + 1);
        if (p == NULL)
            abort();
        switch (ppick % 4) {
        case 0: /* from the data (what is left of it) */
            for (size_t j = 0; j < len; j++)
                p[j] = i + j < n ? d[i + j] : (uint8_t)j;
            i += len < n - i ? len : n - i;
            break;
        case 1:
            for (size_t j = 0; j < len; j++)
                p[j] = (uint8_t)('a' + j % 26);
            break;
        case 2: /* valid UTF-8, cut anywhere, starting anywhere in the pattern */
            for (size_t j = 0; j < len; j++)
                p[j] = (uint8_t)utf8_pattern[(j + ppick / 4) % (sizeof utf8_pattern - 1)];
            break;
        default: /* a close code then reason, or pattern bytes */
            for (size_t j = 0; j < len; j++)
                p[j] = (uint8_t)utf8_pattern[j % (sizeof utf8_pattern - 1)];
            if (len >= 2) {
                unsigned code = 990 + (unsigned)(ppick / 4) * 17 + (ppick > 200 ? 2000 : 0);
                p[0] = (uint8_t)(code >> 8);
                p[1] = (uint8_t)code;
            }
            break;
        }
        for (size_t j = 0; j < len; j++)
            p[j] ^= unmasked ? 0 : mask[j % 4];
        sput(s, p, len);
        free(p);
    }
}

/* ---- the harness --------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint64_t maxes[] = {0, 1, 5, 125, 126, 127, 200, 1000, 65535, 65536, 70000, UINT64_MAX};
    if (size < 2)
        return 0;
    uint64_t max_message = maxes[data[0] % 12];
    uint8_t mode = data[1];
    stream s = {0};
    if (mode & 1) {
        build(data + 2, size - 2, &s);
        if ((mode & 6) == 6 && s.len > 0)
            s.len -= (data[size - 1] % 64) < s.len ? (data[size - 1] % 64) : s.len; /* cut the end off */
    } else {
        sput(&s, data + 2, size - 2 ? size - 2 : 0);
    }
    const uint8_t *in = s.b;
    size_t n = s.len;

    model_out want = {0};
    reference(in, n, max_message > SIZE_MAX / 2 ? SIZE_MAX / 2 : max_message, &want);

    static const size_t max_pieces[] = {1, 2, 3, 7, 64, 1000, 100000, 0};
    size_t max_piece = max_pieces[(mode >> 3) % 8];
    if (n > 8192 && max_piece && max_piece < 1000)
        max_piece = 1000; /* long streams in small pieces only cost time: small pieces are tried on short ones */
    uint64_t rng = 0x243F6A8885A308D3u ^ ((uint64_t)size << 17) ^ mode;

    fe_ws_decoder d;
    fe_ws_decoder_init(&d, max_message);
    fe_buf out = {0};
    uint32_t messages = 0, pings = 0;
    int last = FE_WS_OK;
    uint16_t close_code = 0;
    bool peer_closed = false;
    size_t at = 0;
    do {
        size_t piece = n - at;
        if (max_piece) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            size_t p = 1 + (size_t)(rng % max_piece);
            if (p < piece)
                piece = p;
        }
        uint8_t *copy = malloc(piece ? piece : 1);
        if (copy == NULL)
            abort();
        if (piece)
            memcpy(copy, in + at, piece);
        /* The bound as fe_ws_frame.h states it: L is the held message's
         * payload (d.msg_len, at most what fe_ws_decoder_held reports). */
        size_t held = d.msg_len, before = out.len;
        if (held > fe_ws_decoder_held(&d))
            fail("held message longer than fe_ws_decoder_held");
        fe_ws_feed_info info;
        int rc = fe_ws_feed(&d, piece ? copy : NULL, piece, &out, &info);
        free(copy);
        if (rc == FE_WS_NO_MEMORY)
            fail("out of memory");
        if (out.len - before > piece + held + FE_WS_FEED_SLACK)
            fail("output bound exceeded");
        if (last == FE_WS_CLOSE && (rc != FE_WS_CLOSE || out.len != before || info.messages || info.pings))
            fail("output after FE_WS_CLOSE");
        if (rc == FE_WS_CLOSE && last != FE_WS_CLOSE) {
            close_code = info.close_code;
            peer_closed = info.peer_closed;
        }
        if (last == FE_WS_CLOSE && (info.close_code != close_code || info.peer_closed != peer_closed))
            fail("close info changed");
        messages += info.messages;
        pings += info.pings;
        if (fe_ws_decoder_held(&d) > max_message)
            fail("held more than max_message");
        last = rc;
        at += piece;
    } while (at < n);

    if (out.len != want.len || (want.len && memcmp(out.data + out.start, want.bytes, want.len) != 0)) {
        fprintf(stderr, "codec %zu bytes, model %zu bytes\n", out.len, want.len);
        fail("output differs from the model");
    }
    if ((last == FE_WS_CLOSE) != want.closed || fe_ws_closing(&d) != want.closed)
        fail("closed state differs");
    if (want.closed && (close_code != want.close_code || peer_closed != want.peer_closed))
        fail("close code differs");
    if (messages != want.messages || pings != want.pings)
        fail("counts differ");
    if (!want.holding && fe_ws_decoder_held(&d) != 0)
        fail("holds memory with no message part-way");

    /* The server's own close. */
    if (!want.closed) {
        size_t before = out.len;
        int rc = fe_ws_close(&d, 1001, "going away", &out);
        if (want.streaming_cut) {
            if (rc != 1 || out.len != before || fe_ws_closing(&d))
                fail("fe_ws_close not deferred mid-stream");
        } else {
            static const uint8_t frame[] = {0x88, 12, 0x03, 0xE9, 'g', 'o', 'i', 'n', 'g', ' ', 'a', 'w', 'a', 'y'};
            if (rc != 0 || out.len != before + sizeof frame ||
                memcmp(out.data + out.start + before, frame, sizeof frame) != 0 || !fe_ws_closing(&d) ||
                fe_ws_decoder_held(&d) != 0)
                fail("fe_ws_close");
        }
    }
    fe_ws_decoder_free(&d);
    fe_buf_free(&out);
    free(want.bytes);
    free(s.b);
    return 0;
}
