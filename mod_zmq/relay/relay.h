/*
 * relay.h - the C relay: the request path on Apache threads, inside
 * libmodzmq.so, and the callbacks it makes into the Go that manages it.
 *
 * What it is:
 *   zmtp.h   a ZMTP 3.1 client (NULL mechanism) on a plain socket: connect
 *            and handshake, one sendmsg per message, a bounded incremental
 *            reader, PING/PONG; the Apache thread waits on it in poll().
 *   fast.h   the fast path: per client (modzmq_client_config) a pool of
 *            idle connections per endpoint, the endpoint picker, MZMQ/1
 *            request encoding (modzmq_fast_encode) and reply check
 *            (modzmq_fast_decode), counters; modzmq_relay, the library's
 *            entry point for a request.
 *   zmqio.h  the wait and the release (modzmq_wait, modzmq_release) and the
 *            call state a modzmq_response carries between them.
 *   wsfast.h an open WebSocket's common messages (modzmq_ws_step).
 *   fast.c   also a streamed body's parts after the first
 *            (modzmq_send_body) and a streamed reply's common parts
 *            (modzmq_resume), with the credit Go lends them.
 *
 * Why it is C: entering Go from an Apache thread costs more than the Go code
 * it runs (docs/BENCHMARKS.md, "Inside Apache"), so the common request - a
 * worker up, a pooled connection, a valid reply within the first wait - is
 * sent, waited for, checked and counted here, and Go is never entered.
 * Anything else goes to Go through the callbacks below, which package relay
 * registers when the library loads (relay_set_callbacks).
 */
#ifndef MODZMQ_RELAY_H
#define MODZMQ_RELAY_H

#include "modzmq.h"
#include "fast.h"
#include "wsfast.h"
#include "zmqio.h"
#include "zmtp.h"

/* The calls from the C relay into Go, by role. */
typedef struct relay_callbacks {
    /* relay: a request the fast path did not send (no fast path, no
     * endpoint up, no connection): Go relays it. Returns as modzmq_relay. */
    int (*relay)(int client, modzmq_request *req, modzmq_response *resp);
    /* dial: a new connection to endpoint of client, made with the client's
     * options within timeout_ms at most, or NULL (the request then goes to
     * relay). */
    void *(*dial)(int client, int endpoint, int64_t timeout_ms);
    /* adopt: a request the fast path sent but cannot finish (no reply within
     * its first wait, or one Go must look at), with what was received in
     * resp's call state. Returns as modzmq_relay. */
    int (*adopt)(modzmq_request *req, modzmq_response *resp);
    /* stale: a reply nobody waits for any more (request id, id_len) found
     * on a pooled connection of client, which is then closed; for the log. */
    void (*stale)(int client, char *id, size_t id_len);
    /* ws_step: an open WebSocket's step the C step (wsfast.h) leaves to
     * Go. Returns as modzmq_ws_step. */
    int (*ws_step)(modzmq_response *resp, modzmq_ws_io *io);
    /* resume: a step of a call in progress the C step of a streamed
     * reply (fast.c) leaves to Go. Returns as modzmq_resume. */
    int (*resume)(modzmq_response *resp);
    /* send_body: a part of a streamed body the C path does not send (the
     * first, one over the credit it holds, or when Go must look at the
     * call first). Returns as modzmq_send_body. */
    int (*send_body)(modzmq_response *resp, char *data, size_t len, int last);
} relay_callbacks;

/* Sets the callbacks; once, before the first request. */
void relay_set_callbacks(const relay_callbacks *cb);

/* Registers package relay's Go functions as the callbacks (callbacks.c). */
void relay_register_go(void);

#endif
