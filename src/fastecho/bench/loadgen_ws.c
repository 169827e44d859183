/*
 * loadgen_ws.c: the load generator's WebSocket client codec. The contract
 * is in loadgen_ws.h; loadgen.c drives it.
 *
 * Why it looks like this:
 * - Strict on what the server sends. The generator measures servers, so
 *   anything RFC 6455 forbids a server to send (a masked frame, reserved
 *   bits, a length in more bytes than needed, a fragmented or oversized
 *   control frame) fails the run with the offset where it happened, rather
 *   than being tolerated. Unsolicited pongs are allowed by the RFC and
 *   skipped.
 * - Message boundaries are checked, not just bytes: an echo must come back
 *   as messages of exactly the size sent (in one frame or in fragments), so
 *   a server that merges or splits messages is caught even when the bytes
 *   line up.
 * - Frames are produced by byte range (lg_ws_encode) so that loadgen.c can
 *   resend the rest of a partly sent frame by computing it again from the
 *   pattern and the frame's mask; nothing is buffered per connection.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "loadgen_ws.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#ifdef LG_WITH_TLS
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#endif

/* RFC 6455 section 1.3: appended to the key before hashing. */
static const char LG_WS_GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

enum {
    LG_WS_OP_CONTINUATION = 0x0,
    LG_WS_OP_TEXT = 0x1,
    LG_WS_OP_BINARY = 0x2,
    LG_WS_OP_CLOSE = 0x8,
    LG_WS_OP_PING = 0x9,
    LG_WS_OP_PONG = 0xa,
};

__attribute__((format(printf, 3, 4)))
static int lg_ws_error(char *error, size_t error_size, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(error, error_size, format, args);
    va_end(args);
    return -1;
}

#ifdef LG_WITH_TLS

int lg_ws_available(void)
{
    return 1;
}

int lg_ws_random(void *bytes, size_t length, char *error, size_t error_size)
{
    if (RAND_bytes(bytes, (int)length) != 1) {
        ERR_clear_error();
        return lg_ws_error(error, error_size, "RAND_bytes failed: no randomness for WebSocket keys and masks");
    }
    return 0;
}

int lg_ws_handshake_new(lg_ws_handshake *handshake, char *error, size_t error_size)
{
    unsigned char nonce[16];
    if (lg_ws_random(nonce, sizeof nonce, error, error_size) < 0)
        return -1;
    EVP_EncodeBlock((unsigned char *)handshake->key, nonce, (int)sizeof nonce);
    char keyed[LG_WS_KEY_SIZE + sizeof LG_WS_GUID];
    memcpy(keyed, handshake->key, LG_WS_KEY_SIZE);
    memcpy(keyed + LG_WS_KEY_SIZE, LG_WS_GUID, sizeof LG_WS_GUID - 1);
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_size = 0;
    if (EVP_Digest(keyed, LG_WS_KEY_SIZE + sizeof LG_WS_GUID - 1, digest, &digest_size, EVP_sha1(), NULL) != 1 ||
        digest_size != 20) {
        ERR_clear_error();
        return lg_ws_error(error, error_size, "SHA-1 is not available from libcrypto");
    }
    EVP_EncodeBlock((unsigned char *)handshake->accept, digest, 20);
    return 0;
}

#else /* no libcrypto: no SHA-1 for Sec-WebSocket-Accept */

int lg_ws_available(void)
{
    return 0;
}

int lg_ws_random(void *bytes, size_t length, char *error, size_t error_size)
{
    (void)bytes;
    (void)length;
    return lg_ws_error(error, error_size, "this load generator was built without OpenSSL, so without WebSocket");
}

int lg_ws_handshake_new(lg_ws_handshake *handshake, char *error, size_t error_size)
{
    (void)handshake;
    return lg_ws_random(NULL, 0, error, error_size);
}

#endif

int lg_ws_check_path(const char *path, char *error, size_t error_size)
{
    size_t length = path ? strlen(path) : 0;
    if (length == 0 || path[0] != '/')
        return lg_ws_error(error, error_size, "ws_path must start with '/'");
    if (length > LG_WS_MAX_PATH)
        return lg_ws_error(error, error_size, "ws_path is longer than %d bytes", LG_WS_MAX_PATH);
    for (size_t i = 0; i < length; i++)
        if (path[i] <= ' ' || path[i] > '~')
            return lg_ws_error(error, error_size, "ws_path has a space or a control or non-ASCII byte at %zu", i);
    return 0;
}

size_t lg_ws_request(char *buffer, size_t size, const char *host, int port, const char *path,
                     const lg_ws_handshake *handshake)
{
    int n = snprintf(buffer, size,
                     "GET %s HTTP/1.1\r\n"
                     "Host: %s:%d\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n"
                     "User-Agent: fastecho-loadgen\r\n"
                     "\r\n",
                     path, host, port, handshake->key);
    return n > 0 && (size_t)n < size ? (size_t)n : 0;
}

/* Whether the comma-separated header value holds `token`, case-insensitively. */
static int lg_ws_has_token(const char *value, size_t length, const char *token)
{
    size_t token_length = strlen(token);
    size_t i = 0;
    while (i < length) {
        while (i < length && (value[i] == ' ' || value[i] == '\t' || value[i] == ','))
            i++;
        size_t start = i;
        while (i < length && value[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (value[end - 1] == ' ' || value[end - 1] == '\t'))
            end--;
        if (end - start == token_length && strncasecmp(value + start, token, token_length) == 0)
            return 1;
    }
    return 0;
}

/* A header line's text for an error message: printable, and cut short. */
static void lg_ws_quote(char *out, size_t out_size, const char *text, size_t length)
{
    size_t n = 0;
    for (size_t i = 0; i < length && n + 1 < out_size && n < 80; i++)
        out[n++] = text[i] >= ' ' && text[i] <= '~' ? text[i] : '?';
    out[n] = '\0';
}

long lg_ws_check_response(const char *bytes, size_t length, const lg_ws_handshake *handshake, char *error,
                          size_t error_size)
{
    const char *end = memmem(bytes, length, "\r\n\r\n", 4);
    if (!end) {
        if (length >= LG_WS_RESPONSE_MAX)
            return lg_ws_error(error, error_size, "the server's upgrade response has no end within %d bytes",
                               LG_WS_RESPONSE_MAX);
        return 0;
    }
    size_t header_length = (size_t)(end - bytes) + 4;
    const char *line_end = memmem(bytes, header_length, "\r\n", 2);
    size_t line_length = (size_t)(line_end - bytes);
    char quoted[96];
    lg_ws_quote(quoted, sizeof quoted, bytes, line_length);
    if (line_length < 12 || strncmp(bytes, "HTTP/1.1 101", 12) != 0 || (line_length > 12 && bytes[12] != ' '))
        return lg_ws_error(error, error_size, "the server answered the upgrade with \"%s\", not 101", quoted);
    int upgrade = 0, connection = 0, accepted = 0;
    for (const char *line = line_end + 2; line < end; line = line_end + 2) {
        line_end = memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
        const char *colon = memchr(line, ':', (size_t)(line_end - line));
        if (!colon) {
            lg_ws_quote(quoted, sizeof quoted, line, (size_t)(line_end - line));
            return lg_ws_error(error, error_size, "the server's upgrade response has a malformed line \"%s\"", quoted);
        }
        size_t name_length = (size_t)(colon - line);
        const char *value = colon + 1;
        while (value < line_end && (*value == ' ' || *value == '\t'))
            value++;
        size_t value_length = (size_t)(line_end - value);
        while (value_length > 0 && (value[value_length - 1] == ' ' || value[value_length - 1] == '\t'))
            value_length--;
#define LG_WS_IS(name) (name_length == sizeof(name) - 1 && strncasecmp(line, name, name_length) == 0)
        if (LG_WS_IS("Upgrade")) {
            upgrade = lg_ws_has_token(value, value_length, "websocket");
        } else if (LG_WS_IS("Connection")) {
            connection = lg_ws_has_token(value, value_length, "upgrade");
        } else if (LG_WS_IS("Sec-WebSocket-Accept")) {
            accepted = value_length == LG_WS_ACCEPT_SIZE && memcmp(value, handshake->accept, LG_WS_ACCEPT_SIZE) == 0;
            if (!accepted) {
                lg_ws_quote(quoted, sizeof quoted, value, value_length);
                return lg_ws_error(error, error_size, "Sec-WebSocket-Accept is \"%s\", expected \"%s\"", quoted,
                                   handshake->accept);
            }
        } else if (LG_WS_IS("Sec-WebSocket-Extensions") || LG_WS_IS("Sec-WebSocket-Protocol")) {
            lg_ws_quote(quoted, sizeof quoted, line, (size_t)(line_end - line));
            return lg_ws_error(error, error_size, "the server chose \"%s\", which the client did not offer", quoted);
        }
#undef LG_WS_IS
    }
    if (!upgrade)
        return lg_ws_error(error, error_size, "the server's 101 response lacks \"Upgrade: websocket\"");
    if (!connection)
        return lg_ws_error(error, error_size, "the server's 101 response lacks \"Connection: Upgrade\"");
    if (!accepted)
        return lg_ws_error(error, error_size, "the server's 101 response lacks Sec-WebSocket-Accept");
    return (long)header_length;
}

size_t lg_ws_header_size(uint64_t payload_size)
{
    return (payload_size < 126 ? 2u : payload_size <= 0xffff ? 4u : 10u) + 4u;
}

/* The frame's header: FIN + binary, MASK + the shortest length form, the mask. */
static size_t lg_ws_header(uint8_t header[LG_WS_MAX_HEADER], uint64_t payload_size, const uint8_t mask[4])
{
    size_t n = 2;
    header[0] = 0x80 | LG_WS_OP_BINARY;
    if (payload_size < 126) {
        header[1] = (uint8_t)(0x80 | payload_size);
    } else if (payload_size <= 0xffff) {
        header[1] = 0x80 | 126;
        header[n++] = (uint8_t)(payload_size >> 8);
        header[n++] = (uint8_t)payload_size;
    } else {
        header[1] = 0x80 | 127;
        for (int shift = 56; shift >= 0; shift -= 8)
            header[n++] = (uint8_t)(payload_size >> shift);
    }
    memcpy(header + n, mask, 4);
    return n + 4;
}

void lg_ws_encode(uint8_t *out, uint64_t offset, size_t length, const uint8_t *payload, uint64_t payload_size,
                  const uint8_t mask[4])
{
    uint8_t header[LG_WS_MAX_HEADER];
    size_t header_size = lg_ws_header(header, payload_size, mask);
    while (length > 0 && offset < header_size) {
        *out++ = header[offset++];
        length--;
    }
    uint64_t at = offset - header_size; /* into the payload */
    for (size_t i = 0; i < length; i++, at++)
        out[i] = payload[at] ^ mask[at & 3];
}

void lg_ws_reader_init(lg_ws_reader *reader, uint64_t message_size)
{
    memset(reader, 0, sizeof *reader);
    reader->message_size = message_size;
}

static const char *lg_ws_opcode_name(unsigned opcode)
{
    switch (opcode) {
    case LG_WS_OP_TEXT: return "text";
    case LG_WS_OP_CLOSE: return "close";
    case LG_WS_OP_PING: return "ping";
    case LG_WS_OP_PONG: return "pong";
    default: return "reserved";
    }
}

/* The header is complete (reader->header_have bytes); check it and start its payload. */
static int lg_ws_start_frame(lg_ws_reader *r, uint64_t length, uint64_t at, char *error, size_t error_size)
{
    unsigned fin = r->header[0] & 0x80, opcode = r->header[0] & 0x0f;
    if (opcode >= 0x8) {
        if (!fin || length > 125)
            return lg_ws_error(error, error_size,
                               "a %s frame at byte %llu of the server's stream is %s (control frames are whole and "
                               "at most 125 bytes)", lg_ws_opcode_name(opcode), (unsigned long long)at,
                               !fin ? "fragmented" : "longer than 125 bytes");
        if (opcode != LG_WS_OP_CLOSE && opcode != LG_WS_OP_PONG)
            return lg_ws_error(error, error_size,
                               "the server sent a %s frame (opcode 0x%x) at byte %llu of its stream; the generator "
                               "expects only echoes", lg_ws_opcode_name(opcode), opcode, (unsigned long long)at);
    } else if (opcode == LG_WS_OP_BINARY || opcode == LG_WS_OP_CONTINUATION) {
        if (opcode == LG_WS_OP_BINARY && r->in_message)
            return lg_ws_error(error, error_size,
                               "a new binary frame at byte %llu of the server's stream interrupts a fragmented "
                               "message (%llu of its %llu bytes still to come)", (unsigned long long)at,
                               (unsigned long long)r->message_left, (unsigned long long)r->message_size);
        if (opcode == LG_WS_OP_CONTINUATION && !r->in_message)
            return lg_ws_error(error, error_size,
                               "a continuation frame at byte %llu of the server's stream continues no message",
                               (unsigned long long)at);
        if (opcode == LG_WS_OP_BINARY) {
            r->in_message = 1;
            r->message_left = r->message_size;
        }
        if (length > r->message_left || (fin && length != r->message_left))
            return lg_ws_error(error, error_size,
                               "a %s frame at byte %llu of the server's stream makes a %llu-byte message out of "
                               "%llu-byte ones (its payload is %llu bytes with %llu of the message left%s)",
                               fin ? "final" : "non-final", (unsigned long long)at,
                               (unsigned long long)(r->message_size - r->message_left + length),
                               (unsigned long long)r->message_size, (unsigned long long)length,
                               (unsigned long long)r->message_left, fin ? "" : ", more to follow");
        r->message_left -= length;
        if (fin)
            r->in_message = 0;
    } else {
        return lg_ws_error(error, error_size, "a %s frame (opcode 0x%x) at byte %llu of the server's stream, where "
                           "binary frames were sent", lg_ws_opcode_name(opcode), opcode, (unsigned long long)at);
    }
    r->opcode = (uint8_t)opcode;
    r->payload_left = length;
    r->control_have = 0;
    r->header_have = 0;
    return 0;
}

/* The close frame is all read: say what it said. */
static int lg_ws_closed(const lg_ws_reader *r, char *error, size_t error_size)
{
    if (r->control_have < 2)
        return lg_ws_error(error, error_size, "the server sent a close frame (no status code)");
    unsigned code = (unsigned)r->control[0] << 8 | r->control[1];
    char reason[96];
    lg_ws_quote(reason, sizeof reason, (const char *)r->control + 2, r->control_have - 2);
    return lg_ws_error(error, error_size, "the server sent a close frame (code %u%s%s%s)", code,
                       reason[0] ? ", \"" : "", reason, reason[0] ? "\"" : "");
}

/* How many header bytes a frame needs, judging by what has been read of it. */
static size_t lg_ws_header_needed(const lg_ws_reader *r)
{
    if (r->header_have < 2)
        return 2;
    unsigned length7 = r->header[1] & 0x7f;
    return 2 + (length7 == 126 ? 2u : length7 == 127 ? 8u : 0u);
}

int lg_ws_read(lg_ws_reader *r, const uint8_t *data, size_t length, size_t *used, const uint8_t **payload,
               size_t *payload_length, char *error, size_t error_size)
{
    size_t i = 0;
    *payload_length = 0;
    while (i < length) {
        if (r->payload_left == 0) {
            /* Reading a header (a frame with an empty payload is done once it is read). */
            uint64_t frame_at = r->offset + i - r->header_have;
            size_t needed = lg_ws_header_needed(r);
            while (r->header_have < needed && i < length) {
                r->header[r->header_have++] = data[i++];
                needed = lg_ws_header_needed(r);
            }
            if (r->header_have < needed)
                break;
            if (r->header[0] & 0x70)
                return lg_ws_error(error, error_size, "a frame at byte %llu of the server's stream sets reserved "
                                   "bits 0x%02x (no extension was agreed)", (unsigned long long)frame_at,
                                   r->header[0] & 0x70);
            if (r->header[1] & 0x80)
                return lg_ws_error(error, error_size, "a frame at byte %llu of the server's stream is masked "
                                   "(a server must not mask)", (unsigned long long)frame_at);
            uint64_t frame_length = r->header[1] & 0x7f;
            if (needed > 2) {
                frame_length = 0;
                for (size_t k = 2; k < needed; k++)
                    frame_length = frame_length << 8 | r->header[k];
                int minimal = needed == 4 ? frame_length >= 126 : frame_length > 0xffff;
                if (!minimal || frame_length >> 63)
                    return lg_ws_error(error, error_size, "a frame at byte %llu of the server's stream gives its "
                                       "length %llu in %zu bytes (not the shortest form)",
                                       (unsigned long long)frame_at, (unsigned long long)frame_length, needed - 2);
            }
            if (lg_ws_start_frame(r, frame_length, frame_at, error, error_size) < 0)
                return -1;
            if (frame_length == 0 && r->opcode == LG_WS_OP_CLOSE)
                return lg_ws_closed(r, error, error_size);
            continue;
        }
        /* Reading a payload. */
        size_t take = length - i;
        if (take > r->payload_left)
            take = (size_t)r->payload_left;
        if (r->opcode >= 0x8) {
            memcpy(r->control + r->control_have, data + i, take);
            r->control_have += take;
            r->payload_left -= take;
            i += take;
            if (r->payload_left == 0 && r->opcode == LG_WS_OP_CLOSE)
                return lg_ws_closed(r, error, error_size);
            continue;
        }
        *payload = data + i;
        *payload_length = take;
        r->payload_left -= take;
        i += take;
        break;
    }
    r->offset += i;
    *used = i;
    return 0;
}
