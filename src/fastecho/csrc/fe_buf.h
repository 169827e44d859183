/*
 * fe_buf.h - a growable byte buffer with a consumed prefix: what a
 * connection still has to send. An empty buffer owns no memory.
 */
#ifndef FE_BUF_H
#define FE_BUF_H

#include <stddef.h>

typedef struct fe_buf {
    char *data; /* unsent bytes are data[start, start + len) */
    size_t start;
    size_t len;
    size_t capacity;
} fe_buf;

/* Appends n bytes, growing by doubling. Returns 0, or -1 (ENOMEM) leaving
 * the buffer unchanged. */
int fe_buf_append(fe_buf *b, const void *bytes, size_t n);

/* Appends n (> 0) bytes left uninitialized, growing exactly as fe_buf_append
 * does, and returns a pointer to them for the caller to fill (so a codec can
 * write its output in place, e.g. unmask a WebSocket payload straight into
 * it, instead of through a bounce buffer). The pointer is valid until the
 * next call that changes b. Returns NULL (ENOMEM) leaving the buffer
 * unchanged; also NULL, appending nothing, when n is 0. */
char *fe_buf_extend(fe_buf *b, size_t n);

/* The capacity b would have after appending n bytes (its capacity now when
 * they fit): what an append may allocate, for memory budgets. Pure. */
size_t fe_buf_capacity_after(const fe_buf *b, size_t n);

/* Drops the first n (<= len) bytes; frees the memory once empty, so that an
 * idle connection holds no buffer. */
void fe_buf_consume(fe_buf *b, size_t n);

/* Frees the memory. The buffer is empty and reusable afterwards. */
void fe_buf_free(fe_buf *b);

#endif /* FE_BUF_H */
