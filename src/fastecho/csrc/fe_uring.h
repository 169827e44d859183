/*
 * fe_uring.h - the io_uring backend's per-worker resources (fe_loop_uring.c):
 * its ring and its provided buffers, made by fe_server_create in the
 * caller's thread so that a refusal is reported there, and enabled by the
 * worker thread, which becomes the ring's only submitter.
 */
#ifndef FE_URING_H
#define FE_URING_H

#include "fe_internal.h"

/* Makes w's ring (disabled until its worker runs) and registers its
 * provided buffers. Returns 0, or -1 with errno and a message in err. */
int fe_uring_worker_init(fe_worker *w, char *err, size_t errlen);

/* The most buffer capacity one io_uring worker's multishot receives can add
 * in one batch, past any limit: its whole pool of provided buffers (1 MiB),
 * each buffer's bytes copied into a buffer of their own. */
size_t fe_uring_pool_growth(const fe_config *cfg);

/* Frees what fe_uring_worker_init made (w->uring NULL: no-op). Only once
 * the worker thread has exited, or never ran. */
void fe_uring_worker_free(fe_worker *w);

#endif /* FE_URING_H */
