/*
 * fast.h - the request path's common case, in C inside libmodzmq.so.
 *
 * Entering Go from an Apache thread costs far more than the Go code it runs:
 * on the 2-core VM of docs/BENCHMARKS.md one call into Go per request cut an
 * otherwise all-C relay's throughput by a third (the runtime's hand-offs of
 * its P and sysmon wake-ups). So a request whose worker is up, whose connection
 * is pooled, and whose reply comes within the first wait slice, valid and
 * needing no header rewrite, never enters Go: modzmq_relay (here) sends it,
 * waits, checks the reply and counts it. Anything else - a socket to dial,
 * a reply not there yet, a stale or invalid one, a lost worker, retries - is
 * handed to the Go bridge (bridge.Client.Adopt), which owns every rule; the
 * checks here only ever accept what the Go decoder accepts (fuzzed against
 * it in fast_test.go).
 */
#ifndef MODZMQ_FAST_H
#define MODZMQ_FAST_H

#include <stddef.h>
#include <stdint.h>

#include "modzmq.h"
#include "zmtp.h"

/* One client's fast path (modzmq_client_config: one ZmqBackend with one set
 * of options). */
typedef struct modzmq_fast modzmq_fast;

/* Made and updated by Go; modzmq_relay serves client (its handle) with it
 * once Go publishes it (modzmq_fast_publish), when the client is ready. bounds_ns holds MODZMQ_STATS_BUCKETS-1 latency bucket bounds;
 * prefix is the request id prefix. */
modzmq_fast *modzmq_fast_new(int client, int nendpoints, int64_t timeout_ms, int64_t connect_timeout_ms,
                             int64_t max_reply, int64_t stream_window, int notices, const int64_t *bounds_ns,
                             const char *prefix);
void modzmq_fast_publish(modzmq_fast *f);
/* Mirrors an endpoint's state; when it goes down (or its epoch grows while
 * down), its idle connections are closed. */
void modzmq_fast_set_state(modzmq_fast *f, int endpoint, int up, uint64_t epoch);
/* Offers an idle connection of endpoint i to the fast path's pool; 1 when
 * taken, 0 when the pool is full (the caller keeps it). */
int modzmq_fast_put(modzmq_fast *f, int endpoint, zmtp_conn *conn);
/* Takes an idle connection of endpoint from the pool, one the worker has
 * not closed; NULL when none is idle. */
zmtp_conn *modzmq_fast_take(modzmq_fast *f, int endpoint);
/* Adds the fast path's counters (a MODZMQ_STATS_BACKEND block) to sums. */
void modzmq_fast_add_stats(modzmq_fast *f, int64_t *sums);
/* Adds n to field j of the fast path's counters (a MODZMQ_STATS_BACKEND
 * block), for what the C step of a WebSocket relays (wsfast.h). */
void modzmq_fast_count(modzmq_fast *f, int j, int64_t n);

/* Builds the eight frames of an MZMQ/1 request with its envelope, as
 * bridge.EncodeRequest does (FuzzFastEncode compares them byte for byte):
 * p and len get [id, "", "MZMQ/1", method, target, headers, meta, body],
 * pointing into req and into the meta frame, which starts with the
 * request-id line, ends with the stream-credits line (stream_window > 0)
 * and the notices line (notices), and is written into stack when it fits
 * stack_size, else into *heap (malloc()ed, for the caller to free; NULL
 * otherwise). 0 or ENOMEM. */
int modzmq_fast_encode(const modzmq_request *req, const char *id, size_t id_len, int64_t stream_window, int notices,
                       char *stack, size_t stack_size, char **heap, const void **p, size_t *len);

/* Builds the eight frames of a request the bridge sends for a call in
 * progress, as bridge.ControlFrames does: p and len get [id, "",
 * "MZMQ/1", method, target, "", meta, body], meta the request-id line,
 * written into meta (room for MODZMQ_CONTROL_META bytes; id_len at most
 * 64). TestControlFrames holds it to ControlFrames. */
#define MODZMQ_CONTROL_META (sizeof("request-id: \r\n") - 1 + 64)
void modzmq_control_frames(const char *id, size_t id_len, const char *method, const char *target, size_t target_len,
                           const void *body, size_t body_len, char *meta, const void **p, size_t *len);

/* What a worker's message of n frames, f and l, is to the C step of a
 * stream of request id within credit: 1 a part of data (*data, *len;
 * possibly empty) or 2 a keep-alive (*len 0), either costing at most the
 * credit; else 0, Go's step's (@end, @abort, a message for another
 * request, one beyond the credit, one that breaks the rules).
 * bridge.Stream.Step and DecodePart are the rule; FuzzStreamKind holds
 * this to them. */
int modzmq_stream_kind(const char *const *f, const size_t *l, int n, const char *id, size_t id_len, int64_t credit,
                       const char **data, size_t *len);

/* Checks reply frames (the envelope removed) as bridge.DecodeReply does;
 * 1 with the parts set when valid and no header needs removing, else 0. */
int modzmq_fast_decode(const char *const *frame, const size_t *len, int n, int64_t max_reply, int *status,
                       const char **reason, size_t *reason_len, const char **headers, size_t *headers_len,
                       const char **body, size_t *body_len);

#endif
