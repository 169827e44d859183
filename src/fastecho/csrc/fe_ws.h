/*
 * fe_ws.h - WebSocket listeners: what the server keeps for them (the path,
 * the origins, the page) and what a connection keeps (the request parse,
 * then the frame decoder). The protocol itself lives in two pure codecs,
 * fe_ws_http.h (the upgrade request) and fe_ws_frame.h (frames); fe_conn.c
 * drives them, and this file holds the tables the counters use.
 */
#ifndef FE_WS_H
#define FE_WS_H

#include "fe_internal.h"
#include "fe_ws_frame.h"
#include "fe_ws_http.h"

/* A ws connection's own state, allocated when it is created. */
typedef struct fe_ws_conn {
    fe_ws_request req; /* the request head's parse, resumed on each read */
    fe_ws_decoder dec; /* once upgraded */
    bool upgraded;
    bool going_away;   /* the stop's close 1001 waits for a streamed frame's echo to end */
} fe_ws_conn;

/* The counter slot (fe_stats.ws_http) of a final parse answer. */
enum fe_ws_http_kind fe_ws_http_kind_of(enum fe_ws_answer answer);

/* The counter slot (fe_stats.ws_closes) of a close frame's code (0: none). */
int fe_ws_close_slot(uint16_t code);

/* Checks cfg's WebSocket fields. Returns 0, or -1 with a message in err. */
int fe_ws_validate_config(const fe_config *cfg, char *err, size_t errlen);

/* Copies cfg's path and origins into s, builds s->ws_policy and the page
 * with the path filled in. Returns NULL, or what could not be allocated;
 * fe_ws_server_release frees whatever was. */
const char *fe_ws_server_init(fe_server *s, const fe_config *cfg);
void fe_ws_server_release(fe_server *s);

#endif /* FE_WS_H */
