/*
 * fe_proxy.c - the PROXY protocol header parser (see fe_proxy.h for what is
 * accepted and when each byte is judged).
 *
 * Both versions are parsed from buf[0] every call: the header is at most
 * FE_PROXY_MAX_HEADER bytes and arrives once per connection, so keeping no
 * state between calls costs little and leaves nothing to get out of step.
 */
#include "fe_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

enum {
    V2_SIG_LEN = 12,
    V2_CMD_LOCAL = 0x0,
    V2_CMD_PROXY = 0x1,
    V2_TYPE_CRC32C = 0x03,
    V2_UNIX_ADDR_LEN = 2 * 108,
    V1_V6_TEXT_MAX = 45, /* INET6_ADDRSTRLEN - 1: "ffff:...:ffff:255.255.255.255" */
};

static const uint8_t v2_signature[V2_SIG_LEN] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* Fills peer from 16 bytes of IPv6 address (network order) and a port,
 * reporting an IPv4-mapped address as IPv4, as fe_peer_from_sockaddr does. */
static void peer_from_v6(fe_peer *peer, const uint8_t addr[16], uint16_t port)
{
    memset(peer, 0, sizeof *peer);
    peer->port = port;
    if (memcmp(addr, v4_mapped_prefix, sizeof v4_mapped_prefix) == 0) {
        peer->family = 4;
        memcpy(peer->addr, addr + 12, 4);
    } else {
        peer->family = 6;
        memcpy(peer->addr, addr, 16);
    }
}

static void peer_from_v4(fe_peer *peer, const uint8_t addr[4], uint16_t port)
{
    memset(peer, 0, sizeof *peer);
    peer->family = 4;
    peer->port = port;
    memcpy(peer->addr, addr, 4);
}

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

/* ---- version 1 ---------------------------------------------------------- */

/* Matches the literal lit at b[*pos..n): 1 when it is all there (*pos moves
 * past it), 0 when the bytes there are a proper prefix of it, -1 when they
 * differ from it. */
static int match_literal(const uint8_t *b, size_t n, size_t *pos, const char *lit)
{
    size_t i = *pos;
    for (const char *l = lit; *l != '\0'; l++, i++) {
        if (i == n)
            return 0;
        if (b[i] != (uint8_t)*l)
            return -1;
    }
    *pos = i;
    return 1;
}

/* Checks IPv4 dotted-quad text s[0..n): four decimal parts 0-255 separated
 * by single dots, without leading zeros. When !whole, s is a field still
 * arriving, and the answer is whether it can begin such text. When whole
 * and valid, the address goes to out (network order). */
static bool v4_text(const uint8_t *s, size_t n, bool whole, uint8_t out[4])
{
    unsigned parts = 0, value = 0, digits = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] >= '0' && s[i] <= '9') {
            if (digits > 0 && value == 0)
                return false; /* a leading zero */
            value = value * 10 + (unsigned)(s[i] - '0');
            if (value > 255)
                return false;
            digits++;
        } else if (s[i] == '.') {
            if (digits == 0 || parts == 3)
                return false;
            out[parts++] = (uint8_t)value;
            value = digits = 0;
        } else {
            return false;
        }
    }
    if (!whole)
        return true;
    if (digits == 0 || parts != 3)
        return false;
    out[3] = (uint8_t)value;
    return true;
}

/* Checks IPv6 text s[0..n) (see v4_text for whole). Until the field is
 * whole only its characters and length are checked; then inet_pton judges
 * it. */
static bool v6_text(const uint8_t *s, size_t n, bool whole, uint8_t out[16])
{
    if (n > V1_V6_TEXT_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        if (!hex && c != ':' && c != '.')
            return false;
    }
    if (!whole)
        return true;
    char text[V1_V6_TEXT_MAX + 1];
    memcpy(text, s, n);
    text[n] = '\0';
    struct in6_addr a;
    if (inet_pton(AF_INET6, text, &a) != 1)
        return false;
    memcpy(out, a.s6_addr, 16);
    return true;
}

/* Checks a decimal port s[0..n): 0-65535, no sign, no leading zeros (see
 * v4_text for whole). */
static bool port_text(const uint8_t *s, size_t n, bool whole, uint16_t *out)
{
    unsigned value = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        if (i > 0 && value == 0)
            return false; /* a leading zero */
        value = value * 10 + (unsigned)(s[i] - '0');
        if (value > 65535)
            return false;
    }
    if (whole && n == 0)
        return false;
    *out = (uint16_t)value;
    return true;
}

enum v1_field { V1_ADDR4, V1_ADDR6, V1_PORT };

/* Reads one field at b[*pos..n) that must end with the byte end. Returns 1
 * when it is whole and valid (value in addr or port, *pos past end), 0 when
 * it is still arriving and can still be valid, -1 when it cannot. */
static int v1_field(const uint8_t *b, size_t n, size_t *pos, uint8_t end, enum v1_field kind,
                    uint8_t addr[16], uint16_t *port)
{
    size_t start = *pos, i = start;
    while (i < n && b[i] != end)
        i++;
    bool whole = i < n;
    bool ok;
    switch (kind) {
    case V1_ADDR4:
        ok = v4_text(b + start, i - start, whole, addr);
        break;
    case V1_ADDR6:
        ok = v6_text(b + start, i - start, whole, addr);
        break;
    default:
        ok = port_text(b + start, i - start, whole, port);
        break;
    }
    if (!ok)
        return -1;
    if (!whole)
        return 0;
    *pos = i + 1;
    return 1;
}

static int v1_parse(const uint8_t *b, size_t len, fe_proxy_header *h)
{
    /* Past the limit nothing can complete a header: running out of bytes
     * there is final. */
    size_t n = len < FE_PROXY_V1_MAX_HEADER ? len : FE_PROXY_V1_MAX_HEADER;
    const int out_of_bytes = len >= FE_PROXY_V1_MAX_HEADER ? FE_PROXY_INVALID : FE_PROXY_INCOMPLETE;
    size_t pos = 0;
    int r = match_literal(b, n, &pos, "PROXY ");
    if (r <= 0)
        return r < 0 ? FE_PROXY_INVALID : out_of_bytes;

    static const char *const protocols[] = {"TCP4 ", "TCP6 ", "UNKNOWN"};
    int protocol = -1;
    bool waiting = false;
    for (int p = 0; p < 3 && protocol < 0; p++) {
        size_t at = pos;
        r = match_literal(b, n, &at, protocols[p]);
        if (r > 0) {
            protocol = p;
            pos = at;
        } else if (r == 0) {
            waiting = true;
        }
    }
    if (protocol < 0)
        return waiting ? out_of_bytes : FE_PROXY_INVALID;

    size_t cr; /* where the CRLF starts */
    if (protocol == 2) {
        /* UNKNOWN: "\r\n" at once, or a space and anything up to CRLF. */
        if (pos == n)
            return out_of_bytes;
        if (b[pos] != ' ' && b[pos] != '\r')
            return FE_PROXY_INVALID;
        cr = pos;
        while (cr < n && b[cr] != '\r') {
            if (b[cr] == '\n')
                return FE_PROXY_INVALID; /* LF without CR */
            cr++;
        }
        if (cr == n)
            return out_of_bytes;
        h->local = true;
    } else {
        enum v1_field af = protocol == 0 ? V1_ADDR4 : V1_ADDR6;
        uint8_t src[16], dst[16];
        uint16_t sport = 0, dport = 0;
        if ((r = v1_field(b, n, &pos, ' ', af, src, NULL)) <= 0 ||
            (r = v1_field(b, n, &pos, ' ', af, dst, NULL)) <= 0 ||
            (r = v1_field(b, n, &pos, ' ', V1_PORT, NULL, &sport)) <= 0 ||
            (r = v1_field(b, n, &pos, '\r', V1_PORT, NULL, &dport)) <= 0)
            return r < 0 ? FE_PROXY_INVALID : out_of_bytes;
        cr = pos - 1;
        if (protocol == 0) {
            peer_from_v4(&h->source, src, sport);
            peer_from_v4(&h->destination, dst, dport);
        } else {
            peer_from_v6(&h->source, src, sport);
            peer_from_v6(&h->destination, dst, dport);
        }
    }
    /* b[cr] is the first CR; the line ends there, with a LF next. */
    if (cr + 1 == n)
        return out_of_bytes;
    if (b[cr + 1] != '\n')
        return FE_PROXY_INVALID;
    h->length = cr + 2;
    h->version = 1;
    return FE_PROXY_DONE;
}

/* ---- version 2 ---------------------------------------------------------- */

/* CRC32c (Castagnoli, reflected polynomial 0x82F63B78), RFC 4960 appendix
 * B. crc starts at 0xFFFFFFFF and is inverted at the end by the caller.
 * Bitwise: it runs at most once per connection, over at most
 * FE_PROXY_MAX_HEADER bytes. */
static uint32_t crc32c_update(uint32_t crc, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return crc;
}

/* The CRC32c of b[0..total) with the 4 bytes at value as zeros, compared
 * with the big-endian value those bytes hold. */
static bool crc32c_matches(const uint8_t *b, size_t total, size_t value)
{
    static const uint8_t zeros[4] = {0};
    uint32_t crc = 0xFFFFFFFFu;
    crc = crc32c_update(crc, b, value);
    crc = crc32c_update(crc, zeros, 4);
    crc = crc32c_update(crc, b + value + 4, total - value - 4);
    crc ^= 0xFFFFFFFFu;
    uint32_t sent = (uint32_t)b[value] << 24 | (uint32_t)b[value + 1] << 16 |
                    (uint32_t)b[value + 2] << 8 | (uint32_t)b[value + 3];
    return crc == sent;
}

static int v2_parse(const uint8_t *b, size_t len, fe_proxy_header *h)
{
    size_t sig = len < V2_SIG_LEN ? len : V2_SIG_LEN;
    if (memcmp(b, v2_signature, sig) != 0)
        return FE_PROXY_INVALID;
    if (len < V2_SIG_LEN + 1)
        return FE_PROXY_INCOMPLETE;
    unsigned version = b[12] >> 4, command = b[12] & 0x0F;
    if (version != 2 || (command != V2_CMD_LOCAL && command != V2_CMD_PROXY))
        return FE_PROXY_INVALID;
    if (len < V2_SIG_LEN + 2)
        return FE_PROXY_INCOMPLETE;

    /* What the block after the 16 fixed bytes holds: addresses of addr_len
     * bytes then TLVs (walk), or nothing this parser reads (!walk). */
    bool walk = false;
    size_t addr_len = 0;
    if (command == V2_CMD_PROXY) {
        switch (b[13]) {
        case 0x00: /* UNSPEC: ignore the address information */
            break;
        case 0x11: /* TCP over IPv4 */
        case 0x12: /* UDP over IPv4 */
            walk = true;
            addr_len = 2 * 4 + 2 * 2;
            break;
        case 0x21: /* TCP over IPv6 */
        case 0x22: /* UDP over IPv6 */
            walk = true;
            addr_len = 2 * 16 + 2 * 2;
            break;
        case 0x31: /* UNIX stream */
        case 0x32: /* UNIX datagram */
            walk = true;
            addr_len = V2_UNIX_ADDR_LEN;
            break;
        default:
            return FE_PROXY_INVALID;
        }
    } /* LOCAL: the family byte is ignored, as is the block. */
    if (len < FE_PROXY_V2_MIN_HEADER)
        return FE_PROXY_INCOMPLETE;

    size_t total = FE_PROXY_V2_MIN_HEADER + (size_t)be16(b + 14);
    if (total > FE_PROXY_MAX_HEADER)
        return FE_PROXY_INVALID;
    size_t crc_value = 0; /* where a CRC32C TLV's value starts; 0: none */
    if (walk) {
        if (total - FE_PROXY_V2_MIN_HEADER < addr_len)
            return FE_PROXY_INVALID;
        /* The TLVs must fill the rest exactly. Each is judged as soon as
         * its 3-byte TLV header has arrived. */
        size_t pos = FE_PROXY_V2_MIN_HEADER + addr_len;
        while (pos < total) {
            if (total - pos < 3)
                return FE_PROXY_INVALID;
            if (len < pos + 3)
                return FE_PROXY_INCOMPLETE;
            size_t value_len = be16(b + pos + 1);
            if (value_len > total - pos - 3)
                return FE_PROXY_INVALID;
            if (b[pos] == V2_TYPE_CRC32C) {
                if (value_len != 4 || crc_value != 0)
                    return FE_PROXY_INVALID;
                crc_value = pos + 3;
            }
            pos += 3 + value_len;
        }
    }
    if (len < total)
        return FE_PROXY_INCOMPLETE;
    if (crc_value != 0 && !crc32c_matches(b, total, crc_value))
        return FE_PROXY_INVALID;

    if (command == V2_CMD_PROXY && addr_len == 12) {
        const uint8_t *a = b + FE_PROXY_V2_MIN_HEADER;
        peer_from_v4(&h->source, a, be16(a + 8));
        peer_from_v4(&h->destination, a + 4, be16(a + 10));
    } else if (command == V2_CMD_PROXY && addr_len == 36) {
        const uint8_t *a = b + FE_PROXY_V2_MIN_HEADER;
        peer_from_v6(&h->source, a, be16(a + 32));
        peer_from_v6(&h->destination, a + 16, be16(a + 34));
    } else {
        h->local = true; /* LOCAL, UNSPEC or UNIX */
    }
    h->length = total;
    h->version = 2;
    return FE_PROXY_DONE;
}

/* ---- the entry point ---------------------------------------------------- */

int fe_proxy_parse(const uint8_t *buf, size_t len, fe_proxy_header *out)
{
    fe_proxy_header h;
    memset(&h, 0, sizeof h);
    int rc;
    if (len == 0)
        rc = FE_PROXY_INCOMPLETE;
    else if (buf[0] == 'P')
        rc = v1_parse(buf, len, &h);
    else if (buf[0] == v2_signature[0])
        rc = v2_parse(buf, len, &h);
    else
        rc = FE_PROXY_INVALID; /* neither "PROXY " nor the v2 signature */
    if (rc != FE_PROXY_DONE)
        memset(&h, 0, sizeof h);
    *out = h;
    return rc;
}
