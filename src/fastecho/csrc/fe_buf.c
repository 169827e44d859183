#include "fe_buf.h"

#include <stdlib.h>
#include <string.h>

enum { FE_BUF_MIN_CAPACITY = 4096 };

size_t fe_buf_capacity_after(const fe_buf *b, size_t n)
{
    if (n == 0 || b->len + n <= b->capacity)
        return b->capacity;
    size_t cap = b->capacity ? b->capacity : FE_BUF_MIN_CAPACITY;
    while (cap < b->len + n) /* a few doublings at most: appends are at most a read */
        cap *= 2;
    return cap;
}

char *fe_buf_extend(fe_buf *b, size_t n)
{
    if (n == 0)
        return NULL;
    if (b->start + b->len + n > b->capacity) {
        if (b->start > 0) { /* reclaim the consumed prefix before growing */
            memmove(b->data, b->data + b->start, b->len);
            b->start = 0;
        }
        if (b->len + n > b->capacity) {
            size_t cap = fe_buf_capacity_after(b, n);
            char *grown = realloc(b->data, cap);
            if (grown == NULL)
                return NULL;
            b->data = grown;
            b->capacity = cap;
        }
    }
    char *tail = b->data + b->start + b->len;
    b->len += n;
    return tail;
}

int fe_buf_append(fe_buf *b, const void *bytes, size_t n)
{
    if (n == 0)
        return 0;
    char *tail = fe_buf_extend(b, n);
    if (tail == NULL)
        return -1;
    memcpy(tail, bytes, n);
    return 0;
}

void fe_buf_consume(fe_buf *b, size_t n)
{
    b->start += n;
    b->len -= n;
    if (b->len == 0)
        fe_buf_free(b);
}

void fe_buf_free(fe_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->start = 0;
    b->len = 0;
    b->capacity = 0;
}
