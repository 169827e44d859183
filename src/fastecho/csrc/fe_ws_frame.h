/*
 * fe_ws_frame.h - the WebSocket frame codec (RFC 6455 section 5) of an echo
 * server: fed the client's bytes, it appends the server's answer (echoed
 * messages, pongs, at most one close frame) to an fe_buf. Pure: no I/O, no
 * locks, no global state; it allocates only to hold a message that cannot be
 * echoed before it is complete. Fuzzed against a whole-input model
 * (tests/fuzz/fuzz_ws_frame.c).
 *
 * What comes back (the server's frames are unmasked, FIN set):
 * - Every text or binary message comes back as one frame of the same type
 *   and content, however the client fragmented it.
 * - An unfragmented binary frame is streamed: its echo's header is appended
 *   as soon as its own header has arrived (and passed the size check), and
 *   each piece of its payload is unmasked straight into out as it arrives.
 *   Such a frame is never held whole, whatever its size.
 * - A text frame, and a fragmented message of either type, is held until its
 *   last byte (text must be valid UTF-8 before any of it is sent, so that an
 *   invalid one gets only a close 1007), then echoed and its buffer freed.
 * - A ping is answered by a pong with the same payload, streamed like a
 *   binary frame (so it goes out at once, even between the fragments of a
 *   message). A pong from the client is ignored.
 * - A client's close is answered by a close with the same code (the reason is
 *   checked but not echoed) or, when it carried no code, an empty close.
 *
 * When the connection is failed (a close frame with the code, no reason,
 * then FE_WS_CLOSE; judged as soon as the deciding byte arrives):
 *   1002 unmasked client frame; an RSV bit set (no extension is negotiated);
 *        an unknown opcode (3-7, 11-15); a control frame with FIN clear or a
 *        payload over 125 bytes; a continuation with no message in progress;
 *        a new text or binary frame while a fragmented message is in
 *        progress; a non-minimal length (126 form below 126, 127 form below
 *        65536) or a 64-bit length with its top bit set; a close payload of
 *        1 byte or with a code not allowed on the wire (below 1000, 1004,
 *        1005, 1006, 1015-2999, 5000 and above).
 *   1007 text that is not UTF-8 (RFC 3629: no overlongs, surrogates or code
 *        points above U+10FFFF), failed at the first byte that makes the
 *        message's prefix invalid, even before its FIN; an incomplete
 *        sequence at the end of the final fragment; a close reason that is
 *        not UTF-8.
 *   1009 a message larger than max_message (the sum of its fragments'
 *        payloads, or one frame's), failed when the frame header whose length
 *        exceeds it has arrived, before any of that payload is held.
 * The checks on a frame's first two bytes are made when both have arrived,
 * those on its length when the extended length has.
 *
 * Output bound (what backpressure relies on). Let L be the payload bytes of
 * the message held at the start of a call (d->msg_len, at most
 * fe_ws_decoder_held(d)).
 * One fe_ws_feed of n bytes appends at most n + L + 14 bytes:
 * - every frame's echo is no longer than the client's frame (the mask's 4
 *   bytes pay for any difference in length encoding), except that a held
 *   message's echo may carry a 10-byte header whose client header arrived in
 *   an earlier call, and that the bytes of a unit that began in an earlier
 *   call (at most L payload bytes and a frame header) come out now;
 * - plus one close frame of our own, 4 bytes (code, no reason).
 * So out grows by at most n + fe_ws_decoder_held(d) + 14, and over a whole
 * connection by at most the bytes fed plus 4. fe_ws_close's frame is at
 * most 4 + 123 bytes, and comes on top of that bound in the one fe_ws_feed
 * call that appends it when it was deferred.
 */
#ifndef FE_WS_FRAME_H
#define FE_WS_FRAME_H

#include "fe_buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    FE_WS_MAX_FRAME_HEADER = 14, /* 2 + 8-byte length + 4-byte mask */
    FE_WS_MAX_CONTROL = 125,     /* largest control frame payload */
    FE_WS_FEED_SLACK = 14,       /* see the output bound above */
};

/* Close codes this codec sends (RFC 6455 7.4.1). */
enum {
    FE_WS_CLOSE_NORMAL = 1000,
    FE_WS_CLOSE_GOING_AWAY = 1001,
    FE_WS_CLOSE_PROTOCOL = 1002,
    FE_WS_CLOSE_BAD_DATA = 1007,
    FE_WS_CLOSE_TOO_BIG = 1009,
};

/* One connection's decoder. Fully defined so that it can be embedded in a
 * connection; its fields are private to fe_ws_frame.c. */
typedef struct fe_ws_decoder {
    uint64_t max_message;  /* largest message accepted, in payload bytes */
    uint64_t remaining;    /* payload bytes of the current frame still to come */
    uint8_t *msg;          /* the held message's payload (text, or fragmented) */
    size_t msg_len;        /* its bytes so far */
    size_t msg_cap;        /* bytes allocated at msg (0: none) */
    uint32_t utf8;         /* the held text's UTF-8 validator state (0: between characters) */
    uint8_t hdr[FE_WS_MAX_FRAME_HEADER]; /* the frame header being gathered */
    uint8_t hdr_len;       /* its bytes so far */
    uint8_t hdr_need;      /* its length as known so far (2 until the second byte) */
    uint8_t mask[4];       /* the current frame's masking key */
    uint8_t mask_off;      /* payload bytes of the current frame consumed, mod 4 */
    uint8_t in_payload;    /* 1: in a frame's payload, 0: gathering a header */
    uint8_t sink;          /* where the current payload goes (fe_ws_frame.c) */
    uint8_t opcode;        /* the current frame's opcode */
    uint8_t fin;           /* the current frame's FIN bit */
    uint8_t msg_opcode;    /* 1 or 2: a held message is in progress; 0: none */
    uint8_t ctl_len;       /* close payload bytes held */
    uint8_t ctl[FE_WS_MAX_CONTROL]; /* the client's close payload */
    bool closing;          /* a close frame has been appended: input is ignored */
    bool close_deferred;   /* fe_ws_close waits for a streamed echo to end (code, reason in ctl) */
    bool peer_closed;      /* ... and it echoed the client's */
    bool broken;           /* an allocation failed: the decoder is unusable */
    uint16_t close_code;   /* the code in the close frame appended (0: none) */
} fe_ws_decoder;

typedef struct fe_ws_feed_info {
    uint32_t messages;   /* data messages completed (and echoed) in this call */
    uint32_t pings;      /* pings answered in this call */
    uint16_t close_code; /* when FE_WS_CLOSE: the code in the close frame appended (0: a close frame without a code) */
    bool peer_closed;    /* when FE_WS_CLOSE: the client's close frame started it (we echoed it); false: we failed the connection */
} fe_ws_feed_info;

enum fe_ws_result { FE_WS_OK = 0, FE_WS_CLOSE = 1, FE_WS_NO_MEMORY = -1 };

/* Makes d a fresh decoder that accepts messages of up to max_message payload
 * bytes (the sum over a fragmented message's frames). Holds no heap. */
void fe_ws_decoder_init(fe_ws_decoder *d, uint64_t max_message);

/* Frees d's buffer (a message being held is dropped). d must be initialized
 * again before it is fed again. */
void fe_ws_decoder_free(fe_ws_decoder *d);

/* Bytes of heap d holds now (the capacity of its message buffer), for the
 * memory budget: 0 whenever no text or fragmented message is part-way in.
 * Never more than max_message. */
size_t fe_ws_decoder_held(const fe_ws_decoder *d);

/* Payload bytes the held message's buffer can still take without growing
 * (0 when none is held): under a spent memory budget, a connection holding
 * a message may read into that room, and no further. */
size_t fe_ws_decoder_room(const fe_ws_decoder *d);

/* Feeds the next n client bytes (in may be NULL when n is 0). Appends to out
 * the echo of every message completed, a pong for every ping, and at most
 * one close frame over the decoder's life; *info says what happened in this
 * call. Returns:
 * - FE_WS_OK: all n bytes consumed; keep reading.
 * - FE_WS_CLOSE: a close frame has been appended (in this call, or in an
 *   earlier one: further input is then ignored and nothing is appended;
 *   info's close_code and peer_closed repeat the close appended). Send out,
 *   then close the connection.
 * - FE_WS_NO_MEMORY: an allocation failed. out may end in a partial frame:
 *   abort the connection without sending it. Every later call returns
 *   FE_WS_NO_MEMORY.
 * The output is the same however the client's bytes are split between
 * calls. One call appends at most n + fe_ws_decoder_held(d) + 14 bytes (see
 * the top of this file). */
int fe_ws_feed(fe_ws_decoder *d, const uint8_t *in, size_t n, fe_buf *out, fe_ws_feed_info *info);

/* Closes from the server's side: a close frame with code and a short reason
 * (NULL: none; e.g. 1001 "going away" when the server drains), cut to 123
 * bytes at a UTF-8 character boundary. Any message held is dropped (its
 * buffer freed). Returns:
 *  0  the close frame has been appended (or one already had been: nothing
 *     more is appended). Input is ignored from now on, as after FE_WS_CLOSE.
 *  1  deferred: a streamed frame's echo (a binary frame or a pong) is
 *     part-way out, and a close frame cannot go inside it. The fe_ws_feed
 *     call that completes that frame appends the close right after it and
 *     returns FE_WS_CLOSE (peer_closed false, this code); input after that
 *     frame is ignored. Keep reading (with a deadline), or abort.
 * -1  ENOMEM: nothing appended; the decoder is unusable, as after
 *     FE_WS_NO_MEMORY. */
int fe_ws_close(fe_ws_decoder *d, uint16_t code, const char *reason, fe_buf *out);

/* Whether a close frame has been appended (the connection is closing); false
 * while fe_ws_close's frame is deferred. */
bool fe_ws_closing(const fe_ws_decoder *d);

/* Whether bytes[0, n) is whole, valid UTF-8 (RFC 3629). Exposed for the
 * tests and for whoever else must check text. */
bool fe_ws_utf8_valid(const uint8_t *bytes, size_t n);

#endif /* FE_WS_FRAME_H */
