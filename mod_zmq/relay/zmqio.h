/*
 * zmqio.h - the request path's connection work in C (no Apache thread
 * blocks inside the Go runtime while it waits): sending a request, waiting
 * for and receiving its reply into a modzmq_response, releasing it.
 */
#ifndef MODZMQ_ZMQIO_H
#define MODZMQ_ZMQIO_H

#include <stddef.h>
#include <stdint.h>

#include "modzmq.h"

/* An open WebSocket's credit, lent by Go to the C step (wsfast.h) while
 * the WebSocket is in its common state, and taken back at Go's next step
 * (bridge.Flow). */
typedef struct modzmq_ws_lent {
    int         on;                             /* lent: the C step relays the common messages */
    int         send_timeout_ms;                /* a message to the worker goes out within this */
    void       *fast;                           /* the client's fast path (modzmq_fast), for counters */
    int64_t     sendable;                       /* the front may send the worker messages costing this */
    int64_t     credit;                         /* the worker may send messages costing this */
    int64_t     owed;                           /* the client took this, not granted back yet */
    int64_t     grant_at;                       /* Go grants credit back once owed reaches this */
    int64_t     max;                            /* the largest message either way */
    int64_t     heard_ms;                       /* zmtp_now_ms of the client's last message relayed
                                                   in C; 0: none since lent */
} modzmq_ws_lent;

/* A request's streamed body, whose parts the C path (fast.c:
 * modzmq_send_body) sends while Go lends it the body's credit (in the
 * response's body_credit), once the first part went out through Go. */
typedef struct modzmq_body_lent {
    int         on;                             /* lent */
    int         send_timeout_ms;                /* a part goes out within this */
    void       *fast;                           /* the client's fast path (modzmq_fast), for counters */
} modzmq_body_lent;

/* A streamed reply's credit, lent by Go to the C step (fast.c:
 * stream_fast) while the stream is open, and taken back at Go's next step
 * (bridge.Stream.Lend, Return). The C step takes the worker's @data and
 * @keep-alive within the credit and grants credit back as
 * bridge.Stream.Step does. */
typedef struct modzmq_stream_lent {
    int         on;                             /* lent */
    int         send_timeout_ms;                /* a grant goes out within this */
    void       *fast;                           /* the client's fast path (modzmq_fast), for counters */
    int64_t     credit;                         /* the worker may send parts costing this */
    int64_t     owed;                           /* the client took this, not granted back yet */
    int64_t     grant_at;                       /* a grant once owed reaches this and nothing is queued */
    int64_t     grant_queued;                   /* and this while parts are queued */
    int64_t     idle_ms;                        /* the stream ends after this long without a message */
    int         wait_ms;                        /* after a message, modzmq_wait waits this long at a time */
    int64_t     heard_ms;                       /* zmtp_now_ms of the last message taken in C; 0: none
                                                   since lent */
} modzmq_stream_lent;

/* The library's state of a call in progress, kept in a modzmq_response's
 * state (MODZMQ_CALL): what modzmq_wait received, the Go call to resume,
 * what the fast path hands over to Go, and the credit Go lent an open
 * WebSocket, a streamed body or a streamed reply. */
typedef struct modzmq_call {
    char       *block;                          /* malloc()ed for reply parts not inside the frames */
    char       *zbuf;                           /* malloc()ed: holds the frames */
    uint64_t    call;                           /* the Go call in progress (a cgo.Handle) */
    void       *zconn;                          /* the ZMTP connection (zmtp.h) its reply comes on, or
                                                   NULL when Go waits on the call's connection itself */
    int         wait_ms;                        /* how long modzmq_wait may wait */
    int64_t     due_ms;                         /* when Go must step the call though nothing arrived
                                                   (zmtp_now_ms); 0: after every wait */
    uint64_t    epochs;                         /* modzmq_epochs when Go last stepped it */
    int         nframes;                        /* frames of the message received */
    int         delivered;                      /* they were handed to Go's call */
    int         keep;                           /* a stream's parts: the frames stay in the
                                                   connection's buffer (no zmtp_detach, no
                                                   copy), valid until it is read again */
    const char *frame[MODZMQ_MAX_FRAMES];
    size_t      frame_len[MODZMQ_MAX_FRAMES];
    /* A request the C fast path sent and hands over to Go. */
    int         client, endpoint;
    uint64_t    epoch;
    int64_t     elapsed_ns, remaining_ns;
    size_t      id_len;
    char        id[64];                         /* the request's id: the fast path's, or the lent
                                                   WebSocket's, body's or stream's */
    modzmq_ws_lent ws;
    modzmq_body_lent body;
    modzmq_stream_lent stream;
} modzmq_call;

_Static_assert(sizeof(modzmq_call) <= MODZMQ_CALL_STATE, "a call's state fits a modzmq_response");

/* The call state of resp. */
#define MODZMQ_CALL(resp) ((modzmq_call *)(void *)(resp)->state.bytes)

/* Writes one message of n frames (n <= 8) on a ZMTP connection (zmtp.h)
 * within timeout_ms. The frames are arguments because Go may not pass an
 * array of pointers to its memory. Returns 0 or an errno value (the
 * connection is then unusable). */
int modzmq_send(void *conn, int timeout_ms, int n,
                const void *p0, size_t l0, const void *p1, size_t l1,
                const void *p2, size_t l2, const void *p3, size_t l3,
                const void *p4, size_t l4, const void *p5, size_t l5,
                const void *p6, size_t l6, const void *p7, size_t l7);

/* Waits up to timeout_ms for a message on a ZMTP connection and receives
 * it into resp, which then owns the buffer its frames are in; with keep
 * set (a stream's parts) the frames stay in the connection's buffer, which
 * the connection goes on reading into: one buffer for the whole stream. */
int modzmq_zreceive(void *conn, int timeout_ms, modzmq_response *resp);

/* Counts the new epochs of every endpoint of the process (a worker's
 * connection lost): a call that waits in C, and is not due, needs Go's step
 * only when a message comes or this count moves (modzmq_wait). */
void modzmq_epochs_bump(void);

/* Notes, as Go steps the call in resp, when it must step it again though
 * nothing arrives: in due_ms milliseconds (rounded up), or after every wait
 * when due_ms < 0 (Go waits on the call's connection itself). */
void modzmq_set_due(modzmq_response *resp, int64_t due_ms);

/* Whether a C path (a WebSocket's step, a body's part, a stream's step)
 * must leave the call in resp to Go's step: its connection failed (Go
 * meets the failure), it is due (now >= due_ms), or an endpoint began a
 * new epoch since Go last stepped it (modzmq_set_due; Go looks whether its
 * worker was lost). */
int modzmq_go_first(const modzmq_response *resp, int64_t now);

/* What a part or message costs beyond its bytes, each way (bridge.PartCost),
 * and the most credit one side may hold (bridge's maxCredit). */
#define MODZMQ_PART_COST 64
#define MODZMQ_MAX_CREDIT ((int64_t)1 << 40)

/* The request path's wait and release, exported from the library; see
 * modzmq.h. */
int modzmq_wait(modzmq_response *resp);
int modzmq_ready(modzmq_response *resp);
int modzmq_call_info(const modzmq_response *resp, const char **id, size_t *id_len, int *endpoint);
int modzmq_waits(const modzmq_response *resp);
void modzmq_release(modzmq_response *resp);

#endif
