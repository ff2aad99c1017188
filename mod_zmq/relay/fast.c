/*
 * fast.c - see fast.h and relay.h. Built into libmodzmq.so by cgo.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "relay.h"

/* Idle connections kept per endpoint, at most: enough for every thread of a
 * child (ThreadsPerChild) to have one, so a busy child does not reconnect.
 * Fewer are kept in practice: this pool is the client's only one (Go takes
 * from it too, see main.go), and a connection is made only when none is
 * idle, so an endpoint never has more connections than it had requests in
 * flight at once. */
#define FAST_MAX_IDLE 256
/* How often, at most, taking from a pool also looks at the rest of it for
 * connections the worker closed (one poll() over all of them). */
#define FAST_SWEEP_NS 1000000000
/* How long the fast path waits before handing the request to Go, which then
 * also watches for a lost worker (bridge's watchSlice). */
#define FAST_SLICE_MS 100

typedef struct fast_ep {
    int up;             /* atomic: the watch connection is up */
    uint64_t epoch;     /* atomic: grows at every disconnect */
    int64_t in_flight;  /* atomic */
    pthread_mutex_t mu; /* guards the idle connections and swept_ns */
    int nidle;          /* idle[0] is the longest idle, idle[nidle-1] the last put */
    int64_t swept_ns;   /* when sweep last ran */
    zmtp_conn *idle[FAST_MAX_IDLE];
} fast_ep;

struct modzmq_fast {
    int client, nendpoints;
    int64_t timeout_ms, connect_timeout_ms, max_reply;
    int64_t stream_window; /* > 0: requests say their reply may be streamed */
    int notices;           /* requests say their worker gets cancel notices */
    int64_t bounds_ns[MODZMQ_STATS_BUCKETS - 1];
    char prefix[32];
    uint64_t seq, rr;                    /* atomic */
    int64_t stats[MODZMQ_STATS_BACKEND]; /* atomic; the layout of a backend block */
    fast_ep ep[];
};

/* The fast path of each client, by its handle (modzmq.h); set once, when Go
 * makes the client, before the requests that use it. */
static modzmq_fast *fasts[MODZMQ_MAX_CLIENTS + 1];

modzmq_fast *modzmq_fast_new(int client, int nendpoints, int64_t timeout_ms, int64_t connect_timeout_ms,
                             int64_t max_reply, int64_t stream_window, int notices, const int64_t *bounds_ns,
                             const char *prefix)
{
    modzmq_fast *f = calloc(1, sizeof(*f) + (size_t)nendpoints * sizeof(fast_ep));
    int i;

    if (f == NULL) {
        return NULL;
    }
    f->client = client;
    f->nendpoints = nendpoints;
    f->timeout_ms = timeout_ms;
    f->connect_timeout_ms = connect_timeout_ms;
    f->max_reply = max_reply;
    f->stream_window = stream_window;
    f->notices = notices;
    memcpy(f->bounds_ns, bounds_ns, sizeof(f->bounds_ns));
    snprintf(f->prefix, sizeof(f->prefix), "%s", prefix);
    for (i = 0; i < nendpoints; i++) {
        pthread_mutex_init(&f->ep[i].mu, NULL);
    }
    return f;
}

/* ---- the pool --------------------------------------------------------- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Moves the idle connections the worker closed (or that hold a stray
 * message, as take_idle rules) from e's list to gone, keeping the order of
 * the rest, and returns how many; e->mu is held. One poll() looks at every
 * descriptor; only those with something to read are read. */
static int sweep(fast_ep *e, zmtp_conn **gone)
{
    struct pollfd pfd[FAST_MAX_IDLE];
    int i, kept = 0, ngone = 0;

    if (e->nidle == 0) {
        return 0;
    }
    for (i = 0; i < e->nidle; i++) {
        pfd[i].fd = zmtp_fd(e->idle[i]);
        pfd[i].events = POLLIN;
        pfd[i].revents = 0;
    }
    if (poll(pfd, (nfds_t)e->nidle, 0) <= 0) {
        return 0;
    }
    for (i = 0; i < e->nidle; i++) {
        if (pfd[i].revents != 0 && zmtp_check(e->idle[i]) != 0) {
            gone[ngone++] = e->idle[i];
        }
        else {
            e->idle[kept++] = e->idle[i];
        }
    }
    e->nidle = kept;
    return ngone;
}

/* The calls into Go (relay.h), set once before the first request. */
static relay_callbacks go;

/* Names, through Go's log (debug), the request a message waiting on the
 * idle connection sock answers, if one does. */
static void stale_reply(modzmq_fast *f, zmtp_conn *sock)
{
    const char *frame[MODZMQ_MAX_FRAMES];
    size_t len[MODZMQ_MAX_FRAMES];
    int n = 0;
    if (go.stale != NULL && zmtp_recv(sock, 0, frame, len, &n) > 0 && n > 0) {
        go.stale(f->client, (char *)frame[0], len[0]);
    }
}

/* Takes the most recently pooled connection of endpoint i that the worker
 * has not closed, or NULL when there is none. Once a second at most, and
 * whenever the one taken turns out closed (a restarted worker closed them
 * all), the rest of the list is swept first, so connections a worker closed
 * do not linger in CLOSE_WAIT below those in use. */
static zmtp_conn *take_idle(modzmq_fast *f, int i, int64_t now)
{
    fast_ep *e = &f->ep[i];
    zmtp_conn *sock, *gone[FAST_MAX_IDLE];
    int k, ngone, force = 0;

    for (;;) {
        sock = NULL;
        ngone = 0;
        pthread_mutex_lock(&e->mu);
        if (force || now - e->swept_ns >= FAST_SWEEP_NS) {
            ngone = sweep(e, gone);
            e->swept_ns = now;
        }
        if (e->nidle > 0) {
            sock = e->idle[--e->nidle];
        }
        pthread_mutex_unlock(&e->mu);
        for (k = 0; k < ngone; k++) {
            stale_reply(f, gone[k]);
            zmtp_close(gone[k]);
        }
        if (sock == NULL || zmtp_check(sock) == 0) {
            return sock;
        }
        /* Closed by the worker while idle, or a stray message: a late reply
         * to a request whose client went away, which the log names. */
        stale_reply(f, sock);
        zmtp_close(sock);
        force = 1;
    }
}

zmtp_conn *modzmq_fast_take(modzmq_fast *f, int endpoint)
{
    if (endpoint < 0 || endpoint >= f->nendpoints) {
        return NULL;
    }
    return take_idle(f, endpoint, now_ns());
}

int modzmq_fast_put(modzmq_fast *f, int i, zmtp_conn *sock)
{
    fast_ep *e;
    int taken = 0;
    if (i < 0 || i >= f->nendpoints) {
        return 0;
    }
    e = &f->ep[i];
    pthread_mutex_lock(&e->mu);
    if (e->nidle < FAST_MAX_IDLE) {
        e->idle[e->nidle++] = sock;
        taken = 1;
    }
    pthread_mutex_unlock(&e->mu);
    return taken;
}

void modzmq_fast_set_state(modzmq_fast *f, int endpoint, int up, uint64_t epoch)
{
    fast_ep *e;
    zmtp_conn *gone[FAST_MAX_IDLE];
    int k, ngone = 0;
    uint64_t was_epoch;
    int was_up;

    if (endpoint < 0 || endpoint >= f->nendpoints) {
        return;
    }
    e = &f->ep[endpoint];
    was_epoch = __atomic_exchange_n(&e->epoch, epoch, __ATOMIC_SEQ_CST);
    was_up = __atomic_exchange_n(&e->up, up, __ATOMIC_SEQ_CST);
    if (was_epoch != epoch) {
        modzmq_epochs_bump();
    }
    if (up || (!was_up && was_epoch == epoch)) {
        return;
    }
    /* The endpoint went down (or lost its connection again): its idle
     * connections are to a worker that is gone or unreachable. */
    pthread_mutex_lock(&e->mu);
    for (; e->nidle > 0; e->nidle--) {
        gone[ngone++] = e->idle[e->nidle - 1];
    }
    pthread_mutex_unlock(&e->mu);
    for (k = 0; k < ngone; k++) {
        zmtp_close(gone[k]);
    }
}

void modzmq_fast_add_stats(modzmq_fast *f, int64_t *sums)
{
    int i;
    for (i = 0; i < MODZMQ_STATS_BACKEND; i++) {
        sums[i] += __atomic_load_n(&f->stats[i], __ATOMIC_RELAXED);
    }
    for (i = 0; i < f->nendpoints; i++) {
        int64_t n = __atomic_load_n(&f->ep[i].in_flight, __ATOMIC_RELAXED);
        sums[MODZMQ_STATS_OFF_INFLIGHT] += n;
        if (i < MODZMQ_STATS_ENDPOINTS) {
            sums[MODZMQ_STATS_OFF_EP + i * MODZMQ_STATS_EP_FIELDS + MODZMQ_EP_INFLIGHT] += n;
        }
    }
}

/* ---- which fast path serves a request ---------------------------------- */

void modzmq_fast_count(modzmq_fast *f, int j, int64_t n)
{
    if (f != NULL && j >= 0 && j < MODZMQ_STATS_BACKEND) {
        __atomic_fetch_add(&f->stats[j], n, __ATOMIC_RELAXED);
    }
}

void relay_set_callbacks(const relay_callbacks *cb) { go = *cb; }

void modzmq_fast_publish(modzmq_fast *f)
{
    if (f->client >= 1 && f->client <= MODZMQ_MAX_CLIENTS) {
        __atomic_store_n(&fasts[f->client], f, __ATOMIC_RELEASE);
    }
}

static modzmq_fast *fast_at(int client)
{
    return client >= 1 && client <= MODZMQ_MAX_CLIENTS ? __atomic_load_n(&fasts[client], __ATOMIC_ACQUIRE) : NULL;
}

/* ---- the reply --------------------------------------------------------- */

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int is_token_char(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit((char)c)) {
        return 1;
    }
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_dropped(const char *name, size_t n)
{
    static const char *const dropped[] = {"connection", "keep-alive", "transfer-encoding", "te", "trailer",
                                          "upgrade", "content-length"};
    size_t i;
    if (n >= 6 && strncasecmp(name, "proxy-", 6) == 0) {
        return 1;
    }
    for (i = 0; i < sizeof(dropped) / sizeof(dropped[0]); i++) {
        if (strlen(dropped[i]) == n && strncasecmp(name, dropped[i], n) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Header lines as bridge.ParseHeaderLines reads them; 0 also when a field
 * must be removed (bridge.filterReplyHeaders rewrites those in Go). */
static int headers_ok(const char *b, size_t n)
{
    const char *end = b + n;
    while (b < end) {
        const char *eol = b, *colon, *v, *ve;
        while (eol < end && !(eol[0] == '\r' && eol + 1 < end && eol[1] == '\n')) {
            eol++;
        }
        if (eol == b) {
            return 0; /* empty line */
        }
        colon = memchr(b, ':', (size_t)(eol - b));
        if (colon == NULL || colon == b || is_dropped(b, (size_t)(colon - b))) {
            return 0;
        }
        for (v = b; v < colon; v++) {
            if (!is_token_char((unsigned char)*v)) {
                return 0;
            }
        }
        for (v = colon + 1; v < eol && (*v == ' ' || *v == '\t'); v++) {
        }
        for (ve = eol; ve > v && (ve[-1] == ' ' || ve[-1] == '\t'); ve--) {
        }
        for (; v < ve; v++) {
            unsigned char c = (unsigned char)*v;
            if ((c < 0x20 && c != '\t') || c == 0x7f) {
                return 0;
            }
        }
        b = eol < end ? eol + 2 : end;
    }
    return 1;
}

int modzmq_fast_decode(const char *const *frame, const size_t *len, int n, int64_t max_reply, int *status,
                       const char **reason, size_t *reason_len, const char **headers, size_t *headers_len,
                       const char **body, size_t *body_len)
{
    const char *s;
    size_t i, total = 0;

    if (n < 1 || n > 3) {
        return 0;
    }
    for (i = 0; i < (size_t)n; i++) {
        total += len[i];
    }
    if (max_reply > 0 && total > (uint64_t)max_reply) {
        return 0;
    }
    *status = 200;
    *reason = *headers = NULL;
    *reason_len = *headers_len = 0;
    *body = frame[n - 1];
    *body_len = len[n - 1];
    if (n == 1) {
        return 1;
    }
    s = frame[0];
    if (len[0] < 3 || !is_digit(s[0]) || !is_digit(s[1]) || !is_digit(s[2])) {
        return 0;
    }
    *status = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
    if (*status < 200 || *status > 599) {
        return 0;
    }
    if (len[0] > 3) {
        if (s[3] != ' ') {
            return 0;
        }
        for (i = 4; i < len[0]; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c != ' ' && c != '\t' && (c < 0x21 || c == 0x7f)) {
                return 0;
            }
        }
        if (len[0] > 4) {
            *reason = s + 4;
            *reason_len = len[0] - 4;
        }
    }
    if (n == 3) {
        if (!headers_ok(frame[1], len[1])) {
            return 0;
        }
        if (len[1] > 0) {
            *headers = frame[1];
            *headers_len = len[1];
        }
    }
    return 1;
}

/* ---- the request ------------------------------------------------------- */

/* The endpoint a request goes to: among those up, the one with the fewest
 * requests in flight, ties round-robin; -1 when none is up. */
static int pick(modzmq_fast *f)
{
    int k, best = -1, start = (int)(__atomic_fetch_add(&f->rr, 1, __ATOMIC_RELAXED) % (uint64_t)f->nendpoints);
    int64_t best_load = 0;
    for (k = 0; k < f->nendpoints; k++) {
        int i = (start + k) % f->nendpoints;
        int64_t load;
        if (!__atomic_load_n(&f->ep[i].up, __ATOMIC_ACQUIRE)) {
            continue;
        }
        load = __atomic_load_n(&f->ep[i].in_flight, __ATOMIC_RELAXED);
        if (best < 0 || load < best_load) {
            best = i;
            best_load = load;
        }
    }
    return best;
}

static void count(modzmq_fast *f, int i, int status, int64_t d)
{
    int b = 0;
    while (b < MODZMQ_STATS_BUCKETS - 1 && d > f->bounds_ns[b]) {
        b++;
    }
    __atomic_fetch_add(&f->stats[MODZMQ_STATS_OFF_CODES + status], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&f->stats[MODZMQ_STATS_OFF_BUCKETS + b], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&f->stats[MODZMQ_STATS_OFF_SUM_NS], d, __ATOMIC_RELAXED);
    if (i < MODZMQ_STATS_ENDPOINTS) {
        int64_t *ep = &f->stats[MODZMQ_STATS_OFF_EP + i * MODZMQ_STATS_EP_FIELDS];
        __atomic_fetch_add(&ep[MODZMQ_EP_REQUESTS], 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&ep[MODZMQ_EP_REPLIES], 1, __ATOMIC_RELAXED);
    }
}

int modzmq_fast_encode(const modzmq_request *req, const char *id, size_t id_len, int64_t stream_window, int notices,
                       char *stack, size_t stack_size, char **heap, const void **p, size_t *len)
{
    static const char cancel_line[] = "notices: cancel\r\n";
    char credits[48];
    size_t credits_len = stream_window > 0 ? (size_t)snprintf(credits, sizeof(credits), "stream-credits: %" PRId64 "\r\n",
                                                              stream_window) : 0;
    size_t notices_len = notices ? sizeof(cancel_line) - 1 : 0;
    size_t meta_len = sizeof("request-id: ") - 1 + id_len + 2 + req->meta_len + credits_len + notices_len, at;
    char *meta = stack;

    *heap = NULL;
    if (meta_len > stack_size && (meta = *heap = malloc(meta_len)) == NULL) {
        return ENOMEM;
    }
    memcpy(meta, "request-id: ", 12);
    memcpy(meta + 12, id, id_len);
    memcpy(meta + 12 + id_len, "\r\n", 2);
    at = 14 + id_len;
    if (req->meta_len) {
        memcpy(meta + at, req->meta, req->meta_len);
        at += req->meta_len;
    }
    if (credits_len) {
        memcpy(meta + at, credits, credits_len);
        at += credits_len;
    }
    if (notices_len) {
        memcpy(meta + at, cancel_line, notices_len);
    }
    p[0] = id, len[0] = id_len;
    p[1] = "", len[1] = 0;
    p[2] = "MZMQ/1", len[2] = 6;
    p[3] = req->method, len[3] = req->method_len;
    p[4] = req->target, len[4] = req->target_len;
    p[5] = req->headers, len[5] = req->headers_len;
    p[6] = meta, len[6] = meta_len;
    p[7] = req->body, len[7] = req->body_len;
    return 0;
}

/* Sends the MZMQ/1 request with its request id within timeout_ms; 0 or an
 * errno value. */
static int send_request(modzmq_fast *f, zmtp_conn *conn, int timeout_ms, const modzmq_request *req, const char *id,
                        size_t id_len)
{
    char stack[2048], *heap;
    const void *p[8];
    size_t len[8];
    int err = modzmq_fast_encode(req, id, id_len, f->stream_window, f->notices, stack, sizeof(stack), &heap, p, len);

    if (err == 0) {
        err = zmtp_send(conn, timeout_ms, 8, p, len);
    }
    free(heap);
    return err;
}

/* The common case, from start (now_ns); returns -1 to leave the request to
 * Go (nothing sent), or a code of modzmq_relay. */
static int fast_relay(modzmq_fast *f, modzmq_request *req, modzmq_response *resp, int64_t start)
{
    modzmq_call *st = MODZMQ_CALL(resp);
    int i = pick(f), want;
    int64_t timeout_ms = req->timeout_ms > 0 ? req->timeout_ms : f->timeout_ms;
    zmtp_conn *sock;
    fast_ep *e;

    if (i < 0) {
        return -1;
    }
    if ((sock = take_idle(f, i, start)) == NULL) {
        /* Rare once warm: Go makes the connection, with the client's options. */
        if ((sock = go.dial(f->client, i, timeout_ms)) == NULL) {
            return -1;
        }
    }
    e = &f->ep[i];
    st->endpoint = i;
    want = (int)(timeout_ms < f->connect_timeout_ms ? timeout_ms : f->connect_timeout_ms);
    if (want < 1) {
        want = 1;
    }
    st->id_len = (size_t)snprintf(st->id, sizeof(st->id), "%s%" PRIu64, f->prefix,
                                    __atomic_add_fetch(&f->seq, 1, __ATOMIC_RELAXED));
    st->epoch = __atomic_load_n(&e->epoch, __ATOMIC_ACQUIRE);
    __atomic_fetch_add(&e->in_flight, 1, __ATOMIC_RELAXED);
    if (send_request(f, sock, want, req, st->id, st->id_len) != 0) {
        /* The worker did not take it (the connection is closed, and a
         * worker discards an incomplete message): Go tries again, by its
         * rules. */
        __atomic_fetch_sub(&e->in_flight, 1, __ATOMIC_RELAXED);
        zmtp_close(sock);
        return -1;
    }
    modzmq_zreceive(sock, timeout_ms < FAST_SLICE_MS ? (int)timeout_ms : FAST_SLICE_MS, resp);
    __atomic_fetch_sub(&e->in_flight, 1, __ATOMIC_RELAXED);
    if (st->nframes >= 3 && st->frame_len[0] == st->id_len &&
        memcmp(st->frame[0], st->id, st->id_len) == 0 && st->frame_len[1] == 0 &&
        modzmq_fast_decode(st->frame + 2, st->frame_len + 2, st->nframes - 2, f->max_reply, &resp->status,
                           &resp->reason, &resp->reason_len, &resp->headers, &resp->headers_len, &resp->body,
                           &resp->body_len)) {
        if (!modzmq_fast_put(f, i, sock)) {
            zmtp_close(sock);
        }
        count(f, i, resp->status, now_ns() - start);
        return MODZMQ_OK;
    }
    /* No reply yet, or one Go must look at (stale, invalid, a header to
     * remove): Go takes the request over, with what was received. */
    st->client = f->client;
    st->endpoint = i;
    st->zconn = sock;
    st->elapsed_ns = now_ns() - start;
    st->remaining_ns = timeout_ms * 1000000 - st->elapsed_ns;
    return go.adopt(req, resp);
}

void modzmq_control_frames(const char *id, size_t id_len, const char *method, const char *target, size_t target_len,
                           const void *body, size_t body_len, char *meta, const void **p, size_t *len)
{
    memcpy(meta, "request-id: ", 12);
    memcpy(meta + 12, id, id_len);
    memcpy(meta + 12 + id_len, "\r\n", 2);
    p[0] = id, len[0] = id_len;
    p[1] = "", len[1] = 0;
    p[2] = "MZMQ/1", len[2] = 6;
    p[3] = method, len[3] = strlen(method);
    p[4] = target, len[4] = target_len;
    p[5] = "", len[5] = 0;
    p[6] = meta, len[6] = 14 + id_len;
    p[7] = body, len[7] = body_len;
}

/* A part of a streamed body, sent as bridge.Call.SendBody sends it, when Go
 * lent the body (modzmq_body_lent) and nothing calls for Go first: the
 * part within the credit, the connection sound, no message received that
 * Go has not seen, the call not due, no new epoch. It goes out within the
 * send timeout and what is left of the call's. MODZMQ_PENDING, or -1 for
 * Go. */
static int body_fast(modzmq_response *resp, const char *data, size_t len, int last)
{
    modzmq_call *st = MODZMQ_CALL(resp);
    modzmq_body_lent *b = &st->body;
    int64_t cost = (int64_t)len + MODZMQ_PART_COST;
    char meta[MODZMQ_CONTROL_META];
    const void *f[8];
    size_t l[8];

    int64_t now = zmtp_now_ms(), left = st->due_ms - now;

    if (!b->on || modzmq_go_first(resp, now) || cost > resp->body_credit || st->id_len == 0 ||
        st->id_len > sizeof(st->id) || (st->nframes > 0 && !st->delivered)) {
        return -1;
    }
    modzmq_control_frames(st->id, st->id_len, last ? "@body-end" : "@body", "", 0, data, len, meta, f, l);
    if (zmtp_send(st->zconn, left < b->send_timeout_ms ? (int)left : b->send_timeout_ms, 8, f, l) != 0) {
        return -1; /* Go's send meets the broken connection and ends the call */
    }
    resp->body_credit -= cost;
    modzmq_fast_count(b->fast, MODZMQ_STATS_OFF_STREAMS + MODZMQ_ST_BODY_PARTS, 1);
    modzmq_fast_count(b->fast, MODZMQ_STATS_OFF_STREAMS + MODZMQ_ST_BODY_BYTES, (int64_t)len);
    return MODZMQ_PENDING;
}

int modzmq_send_body(modzmq_response *resp, char *data, size_t len, int last)
{
    int rc = body_fast(resp, data, len, last);
    return rc >= 0 ? rc : go.send_body(resp, data, len, last);
}

/* Sends the worker the credit its client earned back, as
 * bridge.Stream.grant does, once what is owed reaches at: 0, or -1 when the
 * send failed (Go's step meets the broken connection). */
static int stream_grant(modzmq_call *st, int64_t at)
{
    modzmq_stream_lent *s = &st->stream;
    char n[24], meta[MODZMQ_CONTROL_META];
    const void *f[8];
    size_t l[8];
    int n_len;

    if (s->owed == 0 || s->owed < at) {
        return 0;
    }
    n_len = snprintf(n, sizeof(n), "%" PRId64, s->owed);
    modzmq_control_frames(st->id, st->id_len, "@credit", n, (size_t)n_len, NULL, 0, meta, f, l);
    if (zmtp_send(st->zconn, s->send_timeout_ms, 8, f, l) != 0) {
        return -1;
    }
    modzmq_fast_count(s->fast, MODZMQ_STATS_OFF_STREAMS + MODZMQ_ST_BUFFERED, -s->owed);
    s->credit += s->owed;
    s->owed = 0;
    return 0;
}

int modzmq_stream_kind(const char *const *f, const size_t *l, int n, const char *id, size_t id_len, int64_t credit,
                       const char **data, size_t *len)
{
    int kind = 0;

    if (n != 4 || l[0] != id_len || memcmp(f[0], id, id_len) != 0 || l[1] != 0) {
        return 0;
    }
    *data = NULL;
    *len = 0;
    if (l[2] == 5 && memcmp(f[2], "@data", 5) == 0) {
        *data = f[3];
        *len = l[3];
        kind = 1;
    }
    else if (l[2] == 11 && memcmp(f[2], "@keep-alive", 11) == 0) {
        kind = 2;
    }
    return kind != 0 && (int64_t)*len + MODZMQ_PART_COST <= credit ? kind : 0;
}

/* A streamed reply's step, as bridge.Stream.Step takes it, while Go lends
 * the stream (modzmq_stream_lent): the client took the part before, which
 * may earn the worker credit; then the parts of data and keep-alives that
 * are queued, within the credit. MODZMQ_PART with the part in resp->body
 * (where it arrived, valid until the connection is read again),
 * MODZMQ_PENDING when nothing is queued, or -1 for Go: anything else that
 * came, a failed connection, the stream due (its idle timeout), a worker
 * lost somewhere. */
static int stream_fast(modzmq_response *resp)
{
    modzmq_call *st = MODZMQ_CALL(resp);
    modzmq_stream_lent *s = &st->stream;
    int64_t now = zmtp_now_ms();

    if (!s->on || !st->keep || modzmq_go_first(resp, now) || st->id_len == 0 || st->id_len > sizeof(st->id)) {
        return -1;
    }
    if (stream_grant(st, s->grant_queued) != 0) {
        return -1;
    }
    for (;;) {
        const char *data;
        size_t len;
        int kind;
        int64_t cost;

        if (st->nframes == 0 || st->delivered) {
            int rc = modzmq_zreceive(st->zconn, -1, resp);
            if (rc < 0) {
                return -1;
            }
            if (rc == 0) {
                /* Nothing queued: the worker may be waiting for credit. */
                return stream_grant(st, s->grant_at) == 0 ? MODZMQ_PENDING : -1;
            }
        }
        kind = modzmq_stream_kind(st->frame, st->frame_len, st->nframes, st->id, st->id_len, s->credit, &data, &len);
        if (kind == 0) {
            return -1;
        }
        st->delivered = 1;
        cost = (int64_t)len + MODZMQ_PART_COST;
        s->credit -= cost;
        s->owed += cost;
        s->heard_ms = now;
        st->due_ms = now + s->idle_ms + 1;
        st->wait_ms = s->wait_ms;
        modzmq_fast_count(s->fast, MODZMQ_STATS_OFF_STREAMS + MODZMQ_ST_BUFFERED, cost);
        if (kind == 2 || len == 0) {
            continue; /* nothing for the client */
        }
        modzmq_fast_count(s->fast, MODZMQ_STATS_OFF_STREAMS + MODZMQ_ST_PARTS, 1);
        modzmq_fast_count(s->fast, MODZMQ_STATS_OFF_STREAMS + MODZMQ_ST_BYTES, (int64_t)len);
        resp->body = data;
        resp->body_len = len;
        /* Wait for the next part before the next step unless the client's
         * taking this one earns the worker a grant (bridge.Stream.Owes). */
        resp->wait_first = s->owed < s->grant_at;
        return MODZMQ_PART;
    }
}

int modzmq_resume(modzmq_response *resp)
{
    int rc = stream_fast(resp);
    return rc >= 0 ? rc : go.resume(resp);
}

int modzmq_ws_step(modzmq_response *resp, modzmq_ws_io *io)
{
    int rc = modzmq_ws_fast(resp, io);
    return rc >= 0 ? rc : go.ws_step(resp, io);
}

/* Hands Go a request the fast path gave up on (no connection, or one the
 * request could not go out on), with what is left of its timeout since
 * start: a dial and a send that failed slowly count against it, and the
 * request never outlives its deadline. */
static int relay_rest(const modzmq_fast *f, const modzmq_request *req, modzmq_response *resp, int64_t start)
{
    modzmq_request rest = *req;
    int64_t timeout_ms = req->timeout_ms > 0 ? req->timeout_ms : f->timeout_ms;
    int64_t left = timeout_ms - (now_ns() - start) / 1000000;

    rest.timeout_ms = left < 1 ? 1 : left;
    return go.relay(f->client, &rest, resp);
}

int modzmq_relay(int client, modzmq_request *req, modzmq_response *resp)
{
    modzmq_fast *f = fast_at(client);

    memset(MODZMQ_CALL(resp), 0, sizeof(modzmq_call));
    resp->body_credit = 0;
    /* A streamed body is sent by Go, part by part; a WebSocket handshake is
     * checked and its WebSocket kept by Go. */
    if (f != NULL && !req->stream_body && !req->websocket) {
        int64_t start = now_ns();
        int rc = fast_relay(f, req, resp, start);
        if (rc >= 0) {
            return rc;
        }
        return relay_rest(f, req, resp, start);
    }
    return go.relay(client, req, resp);
}
