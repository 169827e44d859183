/*
 * fe_tls.h - the core's side of TLS certificates (fe_tls.c): the context a
 * new connection's TLS session is made from. The public half (loading a
 * certificate, rotating it) is in fe.h; the per-connection transport is
 * fe_tp_tls.c (fe_transport.h).
 */
#ifndef FE_TLS_H
#define FE_TLS_H

#include "fe_internal.h"

struct ssl_st; /* OpenSSL's SSL, kept opaque outside the TLS files */

/* A TLS session for the accepted socket fd, server side, from the server's
 * current certificate (fe_server_set_tls). NULL when out of memory or when
 * the server has none. Called by workers; takes the server's tls_lock for
 * the moment it reads the current certificate. */
struct ssl_st *fe_tls_accept(fe_server *s, int fd);

/* Drops the server's reference to its certificate (at destroy). */
void fe_tls_server_release(fe_server *s);

/* Writes an X509_NAME (const X509_NAME *) into out in RFC 2253 form, with
 * control and non-ASCII bytes escaped, cut with "..." when too long. */
void fe_tls_name_text(const void *x509_name, char *out, size_t outlen);

#endif /* FE_TLS_H */
