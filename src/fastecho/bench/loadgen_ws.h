/*
 * loadgen_ws.h: the load generator's WebSocket client codec (RFC 6455),
 * which loadgen.c drives from its epoll loop (lg_config.ws). Internal to the
 * load generator. Pure functions over bytes: no sockets, no clock.
 *
 * - The opening handshake: a random Sec-WebSocket-Key, the upgrade request,
 *   and a check of the server's 101 response, Sec-WebSocket-Accept included
 *   (SHA-1 from libcrypto).
 * - Client frames: binary, FIN set, masked with the caller's 4-byte mask;
 *   any byte range of a frame can be produced on its own (lg_ws_encode), so
 *   the sender keeps no copy of what it has not sent yet.
 * - The server's frames: lg_ws_read() takes them from a byte stream in any
 *   split or coalescing and hands back the payload, after checking that
 *   every frame is well formed and unmasked, that data frames are binary
 *   (continuations allowed) and that each message is exactly
 *   message_size bytes. Unsolicited pongs are skipped; a close frame, a
 *   ping, a text frame or anything malformed is an error.
 *
 * Built only with libcrypto (LG_WITH_TLS); without it lg_ws_available()
 * is 0 and lg_ws_handshake_new() fails with the reason.
 *
 * Errors: a function that can fail writes a one-line reason into the
 * caller's `error` buffer and returns -1.
 */
#ifndef FASTECHO_LOADGEN_WS_H
#define FASTECHO_LOADGEN_WS_H

#include <stddef.h>
#include <stdint.h>

#define LG_WS_KEY_SIZE 24      /* base64 of 16 random bytes */
#define LG_WS_ACCEPT_SIZE 28   /* base64 of a 20-byte SHA-1 */
#define LG_WS_REQUEST_MAX 512  /* the upgrade request, host and path included */
#define LG_WS_RESPONSE_MAX 4096 /* a 101 response whose header is longer is refused */
#define LG_WS_MAX_HEADER 14    /* 2 + 8 (64-bit length) + 4 (mask) */
#define LG_WS_MAX_PATH 256

/* 1 when this build can speak WebSocket (it has libcrypto), else 0. */
int lg_ws_available(void);

/* Fill `length` bytes with randomness from the system (RAND_bytes). */
int lg_ws_random(void *bytes, size_t length, char *error, size_t error_size);

/* One connection's opening handshake: its key and the answer it expects. */
typedef struct lg_ws_handshake {
    char key[LG_WS_KEY_SIZE + 1];
    char accept[LG_WS_ACCEPT_SIZE + 1];
} lg_ws_handshake;

/* A fresh random key and the Sec-WebSocket-Accept it calls for. */
int lg_ws_handshake_new(lg_ws_handshake *handshake, char *error, size_t error_size);

/*
 * Write the upgrade request for ws://host:port/path into `buffer` (no NUL);
 * returns its length, or 0 when it does not fit in `size` bytes. `path`
 * must pass lg_ws_check_path().
 */
size_t lg_ws_request(char *buffer, size_t size, const char *host, int port, const char *path,
                     const lg_ws_handshake *handshake);

/* 0 when `path` is a request path the generator can send ("/" followed by
 * visible ASCII, at most LG_WS_MAX_PATH bytes), else -1 with the reason. */
int lg_ws_check_path(const char *path, char *error, size_t error_size);

/*
 * Look at the first `length` bytes the server sent after the request.
 * Returns 0 while the response's header is incomplete (read more, up to
 * LG_WS_RESPONSE_MAX bytes), its length (> 0) once it is complete and a
 * valid 101 that accepts `handshake` (bytes after it are frames), or -1
 * with the reason (another status, a missing or wrong header, an extension
 * or subprotocol nobody asked for).
 */
long lg_ws_check_response(const char *bytes, size_t length, const lg_ws_handshake *handshake, char *error,
                          size_t error_size);

/* The length of the header of a masked frame with `payload_size` bytes: 6, 8 or 14. */
size_t lg_ws_header_size(uint64_t payload_size);

/*
 * Bytes [offset, offset + length) of the masked binary frame that carries
 * `payload` (payload_size bytes) under `mask`, written to `out`. The frame
 * is lg_ws_header_size(payload_size) + payload_size bytes long, and the
 * range must lie within it.
 */
void lg_ws_encode(uint8_t *out, uint64_t offset, size_t length, const uint8_t *payload, uint64_t payload_size,
                  const uint8_t mask[4]);

/* The reader of one connection's server-to-client stream. */
typedef struct lg_ws_reader {
    uint64_t message_size;    /* every echoed message must be exactly this long */
    uint64_t message_left;    /* bytes of the message under way still to come */
    int in_message;           /* a message has begun and its FIN frame has not */
    uint8_t header[LG_WS_MAX_HEADER];
    size_t header_have;       /* bytes of the current frame header read so far */
    uint8_t opcode;           /* of the frame whose payload is being read */
    uint64_t payload_left;    /* bytes of that payload still to come */
    uint8_t control[125];     /* a control frame's payload (a close's code and reason) */
    size_t control_have;
    uint64_t offset;          /* bytes of the stream taken so far, for error messages */
} lg_ws_reader;

void lg_ws_reader_init(lg_ws_reader *reader, uint64_t message_size);

/*
 * Take bytes from the front of data[0..length): frame headers and at most
 * one run of message payload. Sets *used to the bytes taken and, when it
 * took payload, *payload and *payload_length to it (within `data`; the
 * caller checks them), else *payload_length to 0. Call again with the
 * rest until all is used. Returns 0, or -1 with the reason, which names the
 * offset in the server's stream.
 */
int lg_ws_read(lg_ws_reader *reader, const uint8_t *data, size_t length, size_t *used, const uint8_t **payload,
               size_t *payload_length, char *error, size_t error_size);

#endif /* FASTECHO_LOADGEN_WS_H */
