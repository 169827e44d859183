/*
 * bench_ws.c - a microbenchmark, not a test: ns per masked binary frame
 * (1 KiB by default) through fe_ws_feed, the hot case of a WebSocket echo.
 * Each iteration feeds one whole frame and consumes the echo, as a
 * connection that reads a frame and sends its echo would, so out's memory
 * is reused (fe_buf_consume frees it when emptied, so the allocation of
 * out is part of the cost; a kept buffer is measured too).
 *
 * Usage: bench_ws [PAYLOAD_BYTES [FRAMES]]   (default 1024 and 2000000)
 */
#include "fe_ws_frame.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    size_t len = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
    long frames = argc > 2 ? strtol(argv[2], NULL, 10) : 2000000;
    uint8_t *in = malloc(len + 14);
    if (in == NULL)
        return 1;
    size_t h = 0;
    in[h++] = 0x82;
    if (len < 126) {
        in[h++] = (uint8_t)(0x80 | len);
    } else if (len <= 0xFFFF) {
        in[h++] = 0x80 | 126;
        in[h++] = (uint8_t)(len >> 8);
        in[h++] = (uint8_t)len;
    } else {
        in[h++] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            in[h++] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    }
    static const uint8_t mask[4] = {0x12, 0x34, 0x56, 0x78};
    memcpy(in + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < len; i++)
        in[h + i] = (uint8_t)(i ^ mask[i & 3]);
    size_t n = h + len;

    for (int kept = 0; kept < 2; kept++) {
        fe_ws_decoder d;
        fe_ws_decoder_init(&d, 1 << 20);
        fe_buf out = {0};
        fe_ws_feed_info info;
        unsigned long long sink = 0;
        double t0 = now_ns();
        for (long f = 0; f < frames; f++) {
            if (fe_ws_feed(&d, in, n, &out, &info) != FE_WS_OK)
                return 1;
            sink += (uint8_t)out.data[out.start + out.len - 1];
            if (kept)
                out.len = 0; /* as if sent, keeping the memory */
            else
                fe_buf_consume(&out, out.len);
        }
        double t1 = now_ns();
        printf("%zu-byte masked binary frame, %s out buffer: %.1f ns/frame (%.2f GB/s)  [%llu]\n", len,
               kept ? "kept" : "freed", (t1 - t0) / (double)frames, (double)len * (double)frames / (t1 - t0),
               sink);
        fe_buf_free(&out);
        fe_ws_decoder_free(&d);
    }
    free(in);
    return 0;
}
