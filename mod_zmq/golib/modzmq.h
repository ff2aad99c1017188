/*
 * modzmq.h - the interface of libmodzmq.so, the Go half of mod_zmq.
 *
 * mod_zmq.so never links against libmodzmq.so: it dlopen()s the library in
 * child_init and looks each function up with dlsym(), so this header declares
 * the data types and one function-pointer type per export, never prototypes.
 *
 * Memory rule: the caller owns every buffer it passes in; the library keeps
 * a pointer to the request only while the call is in progress. What a reply
 * holds (the buffer its frames were read into, a malloc()ed block) is freed by
 * modzmq_release().
 *
 * The request path is C first: modzmq_relay (fast.c) sends, waits and checks
 * the common request without entering Go, and hands anything else to the Go
 * bridge. Waits are plain C in the library (modzmq_wait), so an Apache
 * thread does not wait inside the Go runtime, except on CurveZMQ
 * connections, which Go speaks and waits on (in modzmq_resume).
 */
#ifndef MODZMQ_H
#define MODZMQ_H

#include <stddef.h>
#include <stdint.h>

/* The ABI this header describes; modzmq_abi_version() must return it. */
#define MODZMQ_ABI_VERSION 22

/* Return codes of modzmq_relay(). */
#define MODZMQ_OK         0 /* reply in *resp */
#define MODZMQ_ENOWORKER  1 /* no worker took the request in time: 503 */
#define MODZMQ_ETIMEOUT   2 /* no reply before the timeout: 504 */
#define MODZMQ_EPROTOCOL  3 /* the reply broke MZMQ/1: 502 */
#define MODZMQ_EBACKEND   4 /* unknown client handle: 500 */
#define MODZMQ_EINTERNAL  5 /* anything else, including a recovered panic: 500 */
#define MODZMQ_PENDING    6 /* sent: call modzmq_wait(resp), then (when it says so) modzmq_resume(resp) */
#define MODZMQ_EOVERLOAD  7 /* over the client's stream limit: 503 with Retry-After */
/* A streamed reply (docs/PROTOCOL.md): the head comes first, with status,
 * reason and headers set; then parts, each in body; the last one ends it.
 * After each, the caller writes it to the client and calls modzmq_resume
 * (no wait) for what follows; after a part with resp->wait_first set, it
 * may instead wait first, as for MODZMQ_PENDING (nothing is owed to the
 * worker that only a step would grant). Any other code after a head means
 * the stream broke: the caller ends the response abnormally. */
#define MODZMQ_HEAD       8
#define MODZMQ_PART       9
#define MODZMQ_END        10
/* A WebSocket handshake (docs/PROTOCOL.md, "WebSockets"; req->websocket).
 * MODZMQ_UPGRADE: the worker accepted it: status 101, headers the answer's
 * lines (the worker's and Sec-WebSocket-Accept; the caller adds Upgrade and
 * Connection). The caller answers it, then calls modzmq_ws_step until that
 * returns other than MODZMQ_PENDING. MODZMQ_EREFUSED: the front refuses it
 * itself (it breaks RFC 6455, or its Origin is not allowed): answer status
 * with headers; error says why. No worker saw it. */
#define MODZMQ_UPGRADE    11
#define MODZMQ_EREFUSED   12

/* Log severities are Apache's (APLOG_ERR = 3 ... APLOG_DEBUG = 7). */
typedef void (*modzmq_log_fn)(int level, const char *msg);

/* One request. Every pointer may be NULL when its length is 0. */
typedef struct modzmq_request {
    const char *method;  size_t method_len;
    const char *target;  size_t target_len;  /* as the client sent it */
    const char *headers; size_t headers_len; /* "Name: value\r\n" lines */
    const char *meta;    size_t meta_len;    /* trusted lines, no request-id */
    const char *body;    size_t body_len;
    int64_t timeout_ms;                      /* whole exchange, retries included; 0 = default */
    int     stream_body;                     /* non-zero: body is empty; the caller sends the body in
                                                parts the worker asks for (modzmq_send_body) */
    int     websocket;                       /* non-zero: a WebSocket handshake (an Upgrade: websocket
                                                request at a location that takes them) */
    int64_t ws_max_message;                  /* its largest message either way, bytes; 0 = 16 MiB */
    const char *ws_origins;                  /* the Origins it allows, separated by spaces,
                                                NUL-terminated; NULL = any */
} modzmq_request;

/*
 * One client: a ZmqBackend with one set of the options that shape its
 * connections and calls. The shim numbers each distinct (backend, options)
 * once, when Apache reads its configuration (modzmq_config.c); that number is
 * the client's handle in the shim, in the library's C (fast.c) and in its Go
 * (main.go). A new per-location option is a field here, filled in
 * modzmq_config.c: modzmq_conf_client and read in main.go: clientOptions.
 */
typedef struct modzmq_client_config {
    int     backend;                         /* modzmq_backend_open's handle */
    int64_t heartbeat_ms;                    /* ZMTP heartbeat interval; 0 = default, -1 = off */
    int64_t heartbeat_timeout_ms;            /* 0 = default */
    int     retries;                         /* extra attempts for idempotent methods */
    int     retry_all;                       /* non-zero: retries apply to every method */
    int64_t max_reply;                       /* bytes; 0 = no limit */
    const char *curve_server_cert;           /* NUL-terminated paths, or NULL: CurveZMQ off */
    const char *curve_client_cert;
    int     notices;                         /* non-zero: workers get cancel notices */
    int64_t stream_window;                   /* bytes of credit a streamed reply starts with; 0 = no streams */
    int64_t stream_idle_ms;                  /* a stream with no part for this long ends; 0 = default */
} modzmq_client_config;

/* The most clients a process has (the shim refuses more at configuration). */
#define MODZMQ_MAX_CLIENTS 1024

/* The most frames of a reply modzmq_wait keeps (MZMQ/1 replies have 3 to 5). */
#define MODZMQ_MAX_FRAMES 8

/*
 * One reply. On MODZMQ_OK, status is set and body, headers (the validated
 * "Name: value\r\n" lines, hop-by-hop fields removed) and reason (possibly
 * empty) point into the reply's frames or a block of the library's; they stay valid until
 * modzmq_release(resp). On any other code, error holds a NUL-terminated
 * "MODZMQnnnn: ..." line.
 *
 * The caller declares the struct and never touches state: it carries the
 * call in progress between the library's functions (the reply's frames,
 * read into a buffer it holds without a copy; modzmq_release frees it).
 */
#define MODZMQ_CALL_STATE 512
typedef struct modzmq_response {
    int         status;
    const char *body;    size_t body_len;
    const char *headers; size_t headers_len;
    const char *reason;  size_t reason_len;
    char        error[256];
    int64_t     body_credit;                    /* MODZMQ_PENDING with a streamed body: bytes of parts the
                                                   worker asked for (each costs 64 more than its data) */
    int         wait_first;                     /* MODZMQ_PART: the caller may wait (modzmq_wait) before
                                                   it resumes */
    struct {                                    /* set by the caller: descriptors modzmq_wait also waits
                                                   on, for these poll(2) events (0: none), e.g. the
                                                   client's socket for POLLRDHUP; one that is ready */
        int   fd;                               /* ends the wait, for the caller to look at */
        short events;
    } wake[2];
    union {                                     /* the library's own */
        unsigned char bytes[MODZMQ_CALL_STATE];
        void         *align_ptr;
        int64_t       align_int;
    } state;
} modzmq_response;

/*
 * Shared statistics. The parent creates one shared memory segment per
 * configuration; each child owns a slot (slot 0 collects the counters of
 * children that have exited). A slot is MODZMQ_STATS_HEADER int64 values
 * (the owner's pid, then reserved), then MODZMQ_STATS_BACKEND int64 values per
 * backend, laid out as the offsets below. The library publishes its counters
 * into its slot twice a second; the shim adds the overload count itself.
 * Fields marked gauge are current values, not totals: they are neither
 * summed over exited children nor folded into slot 0.
 */
#define MODZMQ_STATS_HEADER        2
#define MODZMQ_STATS_CODES         600 /* responses by status code */
#define MODZMQ_STATS_BUCKETS       17  /* latency histogram, bridge.LatencyBuckets + Inf */
#define MODZMQ_STATS_ENDPOINTS     16  /* endpoints counted per backend */
#define MODZMQ_STATS_EP_FIELDS     16
#define MODZMQ_STATS_OFF_CODES     0
#define MODZMQ_STATS_OFF_BUCKETS   600
#define MODZMQ_STATS_OFF_SUM_NS    617
#define MODZMQ_STATS_OFF_RETRIES   618
#define MODZMQ_STATS_OFF_OVERLOADS 619 /* written by the shim */
#define MODZMQ_STATS_OFF_INFLIGHT  620 /* gauge */
#define MODZMQ_STATS_OFF_GO_ENTRIES 621 /* calls from Apache threads into Go */
#define MODZMQ_STATS_OFF_GO_WAITS  622 /* of those, calls that may wait inside Go */
#define MODZMQ_STATS_OFF_EP        624
#define MODZMQ_STATS_OFF_STREAMS   (MODZMQ_STATS_OFF_EP + MODZMQ_STATS_ENDPOINTS * MODZMQ_STATS_EP_FIELDS)
#define MODZMQ_STATS_STREAM_FIELDS 12
#define MODZMQ_STATS_BACKEND       (MODZMQ_STATS_OFF_STREAMS + MODZMQ_STATS_STREAM_FIELDS)
/* Fields of one endpoint, from MODZMQ_STATS_OFF_EP + i * MODZMQ_STATS_EP_FIELDS. */
enum {
    MODZMQ_EP_REQUESTS, MODZMQ_EP_REPLIES, MODZMQ_EP_TIMEOUTS, MODZMQ_EP_NOWORKER, MODZMQ_EP_LOST,
    MODZMQ_EP_BADREPLIES, MODZMQ_EP_INFLIGHT /* gauge */, MODZMQ_EP_CONNECTED, MODZMQ_EP_DISCONNECTED,
    MODZMQ_EP_RETRIED, MODZMQ_EP_HSFAILED, MODZMQ_EP_UP /* gauge: 1 when up */
};
/* Stream fields, from MODZMQ_STATS_OFF_STREAMS: open (a gauge), parts and
 * bytes to clients, cancel notices, bytes buffered (a gauge,
 * bridge.StreamStats.Buffered), parts and bytes of streamed request bodies,
 * then ends by cause (bridge.StreamEnd: end, client_gone, aborted, idle,
 * broken). */
enum {
    MODZMQ_ST_OPEN, MODZMQ_ST_PARTS, MODZMQ_ST_BYTES, MODZMQ_ST_CANCELS, MODZMQ_ST_BUFFERED, MODZMQ_ST_BODY_PARTS,
    MODZMQ_ST_BODY_BYTES, MODZMQ_ST_ENDS
};
/* Whether field j of a backend block is a gauge. */
#define MODZMQ_STATS_IS_GAUGE(j) ((j) == MODZMQ_STATS_OFF_INFLIGHT || (j) == MODZMQ_STATS_OFF_STREAMS + MODZMQ_ST_OPEN || \
    (j) == MODZMQ_STATS_OFF_STREAMS + MODZMQ_ST_BUFFERED || \
    ((j) >= MODZMQ_STATS_OFF_EP && (j) < MODZMQ_STATS_OFF_STREAMS && \
     (((j) - MODZMQ_STATS_OFF_EP) % MODZMQ_STATS_EP_FIELDS == MODZMQ_EP_INFLIGHT || \
                                    ((j) - MODZMQ_STATS_OFF_EP) % MODZMQ_STATS_EP_FIELDS == MODZMQ_EP_UP)))

/* Status page formats. */
#define MODZMQ_STATUS_TEXT    0
#define MODZMQ_STATUS_JSON    1
#define MODZMQ_STATUS_METRICS 2

/*
 * void modzmq_stats_attach(int64_t *slot, int nbackends, int64_t *watchers):
 * publish counters into this slot's backend blocks from now on. watchers
 * (nbackends words shared by all children, zero at start) names, per
 * backend, the child that watches its endpoints from its start: a child
 * claims a backend no live child holds and makes its first client at once,
 * so endpoint state is known before any request.
 */
typedef void (*modzmq_stats_attach_fn)(int64_t *slot, int nbackends, int64_t *watchers);

/*
 * void modzmq_stats_flush(void): publishes the counters into the slot at
 * once (the child exits: what it counted since the last publish would be
 * lost otherwise).
 */
typedef void (*modzmq_stats_flush_fn)(void);

/*
 * int modzmq_status_render(int format, int64_t *sums, int nbackends,
 *                          int processes, char **out, size_t *out_len):
 * renders summed backend blocks as MODZMQ_STATUS_*; *out is malloc()ed.
 */
typedef int (*modzmq_status_render_fn)(int format, int64_t *sums, int nbackends, int processes,
                                       char **out, size_t *out_len);

/* int modzmq_abi_version(void): MODZMQ_ABI_VERSION of the library. */
typedef int (*modzmq_abi_version_fn)(void);

/*
 * int modzmq_init(modzmq_log_fn log, int log_level, int max_procs):
 * call once per process before anything else. Lines above log_level are not
 * produced; max_procs > 0 sets GOMAXPROCS. Returns 0, or -1 if called twice.
 */
typedef int (*modzmq_init_fn)(modzmq_log_fn log, int log_level, int max_procs);

/*
 * int modzmq_backend_open(const char *endpoints, const char *routes, const char *vhosts,
 *                         int64_t connect_timeout_ms, char *err, size_t err_len):
 * routes names the <Location>s using it and vhosts their virtual hosts
 * (name:port), both space-separated, for status pages and metrics labels.
 * endpoints are separated by spaces. (Parameters are not const because the
 * prototypes cgo generates are not; the library only reads them.) Returns a handle > 0, or 0 with a
 * NUL-terminated reason in err.
 */
typedef int (*modzmq_backend_open_fn)(char *endpoints, char *routes, char *vhosts, int64_t connect_timeout_ms,
                                      char *err, size_t err_len);

/*
 * int modzmq_clients_open(int first, int n, modzmq_client_config *cfg):
 * numbers clients first .. first+n-1 (1 <= handle <= MODZMQ_MAX_CLIENTS)
 * with cfg[0] .. cfg[n-1]. Each is made on its first request (its
 * connections and the watch of its endpoints start then), so a child
 * connects only to the backends it serves. A client whose options cannot
 * be used (a CURVE certificate that cannot be read) fails its requests
 * with MODZMQ_ENOWORKER and the reason.
 * Returns 0, or -1 when a handle is out of range or already made.
 */
typedef int (*modzmq_clients_open_fn)(int first, int n, modzmq_client_config *cfg);

/*
 * int modzmq_relay(int client, const modzmq_request *req,
 *                  modzmq_response *resp):
 * relays one request: the common case (a worker up, its reply within 100 ms)
 * ends here with MODZMQ_OK; otherwise it returns MODZMQ_PENDING while the
 * reply is awaited, or a final code. The caller waits outside Go (an Apache thread
 * must never park inside the Go runtime): modzmq_wait(resp), then, when it
 * returns nonzero, modzmq_resume(resp), until the code is not
 * MODZMQ_PENDING; then it uses the
 * reply and calls modzmq_release(resp), whatever the code. req must stay
 * valid until then (a retry sends it again). Thread-safe.
 */
typedef int (*modzmq_relay_fn)(int client, modzmq_request *req, modzmq_response *resp);

/*
 * int modzmq_wait(modzmq_response *resp): waits up to resp->wait_ms for the
 * reply and receives it into resp. Plain C inside the library (poll on the
 * ZMTP connection): it never enters the Go runtime. On a CurveZMQ
 * connection it returns at once: modzmq_resume waits there. Returns
 * nonzero when the call needs its step (modzmq_resume, modzmq_ws_step):
 * something arrived or failed, a timer of the call's is due, or a worker was
 * lost; 0 when it does not, and the caller may look at its client and wait
 * again (a held stream costs no step of Go's while it is quiet). While the
 * caller's wake descriptors watch its client, a wait lasts until the call
 * is due, a second at most (how late a worker lost to the watch is noticed),
 * rather than resp->wait_ms.
 */
typedef int (*modzmq_wait_fn)(modzmq_response *resp);

/*
 * int modzmq_ready(modzmq_response *resp): modzmq_wait without the wait:
 * receives what has already arrived and says, as modzmq_wait does, whether
 * the call needs its step. A caller with input of its own in hand (a part
 * of a streamed body) looks here first, so that nothing it sends follows
 * an answer that has already come. Plain C.
 */
typedef int (*modzmq_ready_fn)(modzmq_response *resp);

/*
 * int modzmq_resume(modzmq_response *resp): advances the call in resp->call
 * with what modzmq_wait received, without blocking (on a CurveZMQ
 * connection, waiting up to resp->wait_ms for the reply); returns as
 * modzmq_relay does.
 */
typedef int (*modzmq_resume_fn)(modzmq_response *resp);

/*
 * void modzmq_release(modzmq_response *resp): frees what resp holds (the
 * reply's frames, block). Plain C; safe to call more than once.
 */
typedef void (*modzmq_release_fn)(modzmq_response *resp);

/*
 * void modzmq_cancel(modzmq_response *resp): the client of the call in
 * resp (pending, or a stream after its head) went away: the call ends, and
 * its worker gets a cancel notice when its client takes notices. The
 * caller then calls modzmq_release(resp).
 */
typedef void (*modzmq_cancel_fn)(modzmq_response *resp);

/*
 * int modzmq_call_info(const modzmq_response *resp, const char **id,
 * size_t *id_len, int *endpoint): the request id the call in resp sent its
 * latest attempt with, and that attempt's endpoint (an index in the
 * backend's endpoints); 0 when no attempt went out. Valid after
 * modzmq_release too, until resp is used for another call. Plain C.
 */
typedef int (*modzmq_call_info_fn)(const modzmq_response *resp, const char **id, size_t *id_len, int *endpoint);

/*
 * int modzmq_waits(const modzmq_response *resp): 1 when modzmq_wait waits
 * on the connection of the call in resp itself, so that a caller can wait
 * for its client and the worker at once (its wake descriptors); 0 when it
 * returns at once and modzmq_resume waits (a CurveZMQ connection), or no
 * call is pending. Plain C.
 */
typedef int (*modzmq_waits_fn)(const modzmq_response *resp);

/*
 * int modzmq_send_body(modzmq_response *resp, const char *data, size_t len, int last):
 * sends a part of a streamed request body (the last one when last) for the
 * call in resp, pending with body_credit at least len + 64; returns as
 * modzmq_resume does (no wait).
 */
typedef int (*modzmq_send_body_fn)(modzmq_response *resp, char *data, size_t len, int last);

/* The largest part of a streamed request body the shim reads and sends at
 * once, as bridge.BodyPart: 1 KiB under 64 KiB, so a part's message, its
 * frames included, fits one 64 KiB TCP segment on loopback. */
#define MODZMQ_BODY_PART (63 * 1024)

/*
 * An open WebSocket, after MODZMQ_UPGRADE: the caller owns both connections
 * and waits on them itself; the library frames, checks and relays. Each
 * call of modzmq_ws_step takes what the caller read from the client and
 * what modzmq_wait received from the worker, never waits, and says what to
 * write to the client and what to wait for next.
 */
#define MODZMQ_WS_HEAD 1024
typedef struct modzmq_ws_io {
    /* In, set by the caller before each step. */
    char   *in;  size_t in_len;              /* bytes read from the client since the last step (the
                                                step may change them: it unmasks payloads in place) */
    int     client_gone;                     /* the client's connection ended (EOF, reset, error) */
    int     stopping;                        /* the server is stopping: close with 1001 */
    /* Out. Write head[0:head_len], then resp->body[0:body_len] (the payload
     * of head's last frame), to the client before anything else, and flush
     * it before waiting (while again is 2, it may wait for the next step's
     * output; head and resp->body are valid until the next modzmq_wait). */
    char    head[MODZMQ_WS_HEAD];
    size_t  head_len;
    int64_t read_max;                        /* read at most this much from the client before the
                                                next step; 0: do not read now */
    int     fd;                              /* wait for input on this descriptor (the worker's
                                                connection), then modzmq_wait and step; -1: none */
    int     wait_ms;                         /* step again after this long at the latest; between,
                                                step when modzmq_wait says so (a worker lost) */
    int     again;                           /* modzmq_wait and step again at once, without waiting;
                                                2: and the worker's next message has begun to
                                                arrive, so the output may wait for its */
    int     close_code;                      /* on the last step: the code the client was closed with
                                                (0: none sent) */
    int     client_error;                    /* on the last step: non-zero when the client broke
                                                RFC 6455 (close_code says how; resp->error why) */
    int     idle;                            /* on the last step: the client answered nothing within
                                                the idle timeout */
} modzmq_ws_io;

/*
 * int modzmq_ws_step(modzmq_response *resp, modzmq_ws_io *io): advances the
 * WebSocket in resp. MODZMQ_PENDING: go on; MODZMQ_END: it closed (write
 * the output, then end the connection); any other code: the worker broke
 * it or was lost, resp->error says how, and the output closes the client
 * with 1011. After the last step the caller calls modzmq_release(resp).
 */
typedef int (*modzmq_ws_step_fn)(modzmq_response *resp, modzmq_ws_io *io);

#endif /* MODZMQ_H */
