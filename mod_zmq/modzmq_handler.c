/*
 * modzmq_handler.c - the request path.
 *
 * One pass: check the handler, read the body (bounded by ZmqMaxBody), pack
 * headers and trusted metadata, relay the request through the library
 * (modzmq_relay, then modzmq_wait and modzmq_resume while it is pending),
 * write the reply. Errors map to one status each: no worker 503, timeout 504,
 * bad reply 502, body too large 413; a client that went away gets no error
 * line.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* POLLRDHUP */
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "http_core.h"
#include "ap_expr.h"
#include "ap_mpm.h"
#include "util_filter.h"
#include "apr_buckets.h"
#include "apr_strings.h"

#include "mod_zmq.h"

APLOG_USE_MODULE(zmq);

/* ---- request body ---------------------------------------------------- */

/* Largest first body buffer: whatever Content-Length claims, no more is
 * allocated until received bytes fill it. */
#define MODZMQ_BODY_FIRST 65536

/* The size of the next body buffer, which must hold need bytes: doubling from
 * MODZMQ_BODY_FIRST, never past claim (the Content-Length, -1 if none) while
 * the bytes received stay within it. */
static apr_size_t body_size(apr_size_t cap, apr_size_t need, apr_off_t claim)
{
    apr_size_t size = cap ? cap : MODZMQ_BODY_FIRST;
    while (size < need) {
        size = size > APR_SIZE_MAX / 2 ? need : size * 2;
    }
    if (claim >= 0 && (apr_off_t)need <= claim && (apr_off_t)size > claim) {
        size = (apr_size_t)claim;
    }
    return size;
}

/* Reads the whole body into one buffer. Returns OK or a status.
 *
 * Content-Length never sizes an allocation alone: the first buffer, from
 * r->pool, is allocated when the first bytes arrive and holds min(Content-
 * Length, 64 KiB) (64 KiB without a length); it doubles as bytes fill it,
 * never past an honest Content-Length. A grown buffer lives in its own
 * subpool of r->pool, destroyed when the next one takes over, so a large body
 * leaves only its last buffer and the first 64 KiB with the request. */
static int read_body(request_rec *r, apr_off_t max, const char **out, apr_size_t *outlen)
{
    const char *clen = apr_table_get(r->headers_in, "Content-Length");
    apr_bucket_brigade *bb;
    apr_pool_t *bp = NULL; /* holds buf */
    apr_size_t cap = 0, len = 0;
    apr_off_t claim = -1;
    char *buf = NULL;
    int eos = 0;

    *out = NULL;
    *outlen = 0;
    if (clen) {
        apr_off_t n;
        char *end;
        if (apr_strtoff(&n, clen, &end, 10) == APR_SUCCESS && *end == '\0' && n >= 0) {
            if (max > 0 && n > max) {
                ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "MODZMQ0013: request body of %" APR_OFF_T_FMT
                              " bytes (Content-Length) is over " MODZMQ_DIR_MAXBODY " %" APR_OFF_T_FMT,
                              n, max);
                return HTTP_REQUEST_ENTITY_TOO_LARGE;
            }
            claim = n;
        }
    }
    bb = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    while (!eos) {
        apr_bucket *b;
        apr_status_t rv = ap_get_brigade(r->input_filters, bb, AP_MODE_READBYTES, APR_BLOCK_READ, 65536);
        if (rv != APR_SUCCESS) {
            int status = ap_map_http_request_error(rv, HTTP_BAD_REQUEST);
            if (rv == AP_FILTER_ERROR) {
                /* An input filter refused the body (LimitRequestBody, broken
                 * chunking) and has answered the client itself. */
                ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "MODZMQ0015: reading the request body failed: "
                              "an input filter refused it (LimitRequestBody, or a malformed body)");
            }
            else {
                ap_log_rerror(APLOG_MARK, APLOG_INFO, rv, r, "MODZMQ0015: reading the request body failed (%d)", status);
            }
            return status;
        }
        for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb); b = APR_BUCKET_NEXT(b)) {
            const char *data;
            apr_size_t n;
            if (APR_BUCKET_IS_EOS(b)) {
                eos = 1;
                break;
            }
            if (APR_BUCKET_IS_METADATA(b)) {
                continue;
            }
            rv = apr_bucket_read(b, &data, &n, APR_BLOCK_READ);
            if (rv != APR_SUCCESS) {
                ap_log_rerror(APLOG_MARK, APLOG_INFO, rv, r, "MODZMQ0015: reading the request body failed");
                return HTTP_BAD_REQUEST;
            }
            if (max > 0 && (apr_off_t)(len + n) > max) {
                ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "MODZMQ0014: request body is over "
                              MODZMQ_DIR_MAXBODY " %" APR_OFF_T_FMT " bytes", max);
                return HTTP_REQUEST_ENTITY_TOO_LARGE;
            }
            if (!buf) {
                cap = body_size(0, n, claim);
                buf = apr_palloc(r->pool, cap);
            } else if (len + n > cap) {
                apr_pool_t *np;
                char *nbuf;
                cap = body_size(cap, len + n, claim);
                apr_pool_create(&np, r->pool);
                apr_pool_tag(np, "modzmq_body");
                nbuf = apr_palloc(np, cap);
                memcpy(nbuf, buf, len);
                if (bp) {
                    apr_pool_destroy(bp);
                }
                bp = np;
                buf = nbuf;
            }
            memcpy(buf + len, data, n);
            len += n;
        }
        apr_brigade_cleanup(bb);
    }
    *out = buf;
    *outlen = len;
    return OK;
}

/* ---- headers and metadata -------------------------------------------- */

typedef struct {
    char *buf;     /* NULL while sizing */
    apr_size_t len;
} line_buf;

/* apr_table_do callback: sizes, then writes, one "Name: value\r\n" line. */
static int add_line(void *rec, const char *key, const char *value)
{
    line_buf *lb = rec;
    apr_size_t klen = strlen(key), vlen = strlen(value);
    if (lb->buf) {
        char *p = lb->buf + lb->len;
        memcpy(p, key, klen);
        p[klen] = ':';
        p[klen + 1] = ' ';
        memcpy(p + klen + 2, value, vlen);
        p[klen + 2 + vlen] = '\r';
        p[klen + 3 + vlen] = '\n';
    }
    lb->len += klen + vlen + 4;
    return 1;
}

static const char *pack_headers(request_rec *r, apr_size_t *len)
{
    line_buf lb = {NULL, 0};
    apr_table_do(add_line, &lb, r->headers_in, NULL);
    lb.buf = apr_palloc(r->pool, lb.len + 1);
    *len = lb.len;
    lb.len = 0;
    apr_table_do(add_line, &lb, r->headers_in, NULL);
    return lb.buf;
}

/* A value with a control character cannot be a meta line; it is left out. */
static int safe_value(const char *v)
{
    for (; *v; v++) {
        if ((unsigned char)*v < 0x20 || *v == 0x7f) {
            return 0;
        }
    }
    return 1;
}

/* Per-process, per-connection id: "<pid>-<n>", assigned on first use. */
static const char *connection_id(conn_rec *c)
{
    static apr_uint64_t next;
    const char *id = ap_get_module_config(c->conn_config, &zmq_module);
    if (id == NULL) {
        apr_uint64_t n = __atomic_add_fetch(&next, 1, __ATOMIC_RELAXED);
        id = apr_psprintf(c->pool, "%" APR_PID_T_FMT "-%" APR_UINT64_T_FMT, getpid(), n);
        ap_set_module_config(c->conn_config, &zmq_module, (void *)id);
    }
    return id;
}

static const char *pack_meta(request_rec *r, const modzmq_dir_conf *conf, int websocket, apr_size_t *len)
{
    const char *protocols = websocket ? apr_table_get(r->headers_in, "Sec-WebSocket-Protocol") : NULL;
    apr_port_t port = r->useragent_addr ? r->useragent_addr->port : r->connection->client_addr->port;
    const char *meta = apr_psprintf(r->pool,
        "remote-addr: %s\r\n"
        "remote-port: %u\r\n"
        "scheme: %s\r\n"
        "host: %s\r\n"
        "server-name: %s\r\n"
        "protocol: %s\r\n"
        "route: %s\r\n"
        "connection-id: %s\r\n",
        r->useragent_ip, (unsigned)port, ap_http_scheme(r),
        r->hostname ? r->hostname : "", r->server->server_hostname ? r->server->server_hostname : "",
        r->protocol, conf->route ? conf->route : "/", connection_id(r->connection));
    if (r->user && safe_value(r->user)) {
        meta = apr_pstrcat(r->pool, meta, "remote-user: ", r->user, "\r\n", NULL);
    }
    if (protocols && *protocols && safe_value(protocols)) {
        meta = apr_pstrcat(r->pool, meta, "websocket-protocols: ", protocols, "\r\n", NULL);
    }
    *len = strlen(meta);
    return meta;
}

/* ---- the reply --------------------------------------------------------- */

/* Adds "Name: value\r\n" lines to t (Content-Type, in headers_out, as the
 * content type); the library validated them, so splitting them needs no
 * further checks. */
static void add_lines(request_rec *r, apr_table_t *t, const char *p, apr_size_t len)
{
    const char *end = p + len;

    while (p < end) {
        const char *eol = memchr(p, '\r', end - p);
        const char *colon = memchr(p, ':', end - p);
        const char *v;
        char *name, *value;
        if (eol == NULL) {
            eol = end;
        }
        name = apr_pstrmemdup(r->pool, p, colon - p);
        for (v = colon + 1; v < eol && (*v == ' ' || *v == '\t'); v++) {
        }
        value = apr_pstrmemdup(r->pool, v, eol - v);
        if (t == r->headers_out && strcasecmp(name, "Content-Type") == 0) {
            ap_set_content_type(r, value);
        }
        else {
            apr_table_addn(t, name, value);
        }
        p = eol + 2;
    }
}

/* Sets status and headers from resp. */
static void set_reply_headers(request_rec *r, const modzmq_response *resp)
{
    r->status = resp->status;
    if (resp->reason_len) {
        r->status_line = apr_psprintf(r->pool, "%d %.*s", resp->status, (int)resp->reason_len, resp->reason);
    }
    add_lines(r, r->headers_out, resp->headers, resp->headers_len);
}

/* Writes the reply. The body is passed as a transient bucket, straight from
 * the buffer the reply was read into: the output filters copy it only if they must
 * keep it past this call, and the caller releases the frames after. */
static int write_reply(request_rec *r, const modzmq_response *resp)
{
    conn_rec *c = r->connection;
    apr_bucket_brigade *bb = apr_brigade_create(r->pool, c->bucket_alloc);
    apr_status_t rv;

    set_reply_headers(r, resp);
    ap_set_content_length(r, resp->body_len);
    if (!r->header_only && resp->body_len) {
        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_transient_create(resp->body, resp->body_len, c->bucket_alloc));
    }
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_eos_create(c->bucket_alloc));
    rv = ap_pass_brigade(r->output_filters, bb);
    if (rv != APR_SUCCESS) {
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, rv, r, "MODZMQ0016: the client went away during the reply");
    }
    return OK;
}

/* ---- streamed replies and clients that leave --------------------------- */

/* The read end of a pipe that becomes readable when this child begins to
 * stop (nothing drains it): requests, open streams and WebSockets wait on
 * it. -1 before child_init, or when it could not be made. stop_now: the
 * stop is not graceful (apachectl stop): requests waiting for their
 * workers end too. */
static int stop_fd = -1, stop_wfd = -1, stop_now;

void modzmq_handler_child_init(apr_pool_t *pchild)
{
    int fds[2];
    (void)pchild;
    if (stop_fd < 0 && pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0) {
        stop_fd = fds[0];
        stop_wfd = fds[1];
    }
}

void modzmq_handler_child_stopping(int graceful)
{
    if (!graceful) {
        __atomic_store_n(&stop_now, 1, __ATOMIC_SEQ_CST);
    }
    if (stop_wfd >= 0 && write(stop_wfd, "x", 1) < 0) {
        /* full already: it is readable */
    }
}

/* The client's socket, for a wait to watch for its hangup (POLLRDHUP), on
 * HTTP/1.x; -1 for an HTTP/2 stream (whose reset only c->aborted shows) or
 * without one. */
static int client_fd(request_rec *r)
{
    apr_socket_t *sock;
    apr_os_sock_t fd;

    if (r->connection->master != NULL) {
        return -1;
    }
    sock = ap_get_conn_socket(r->connection);
    if (sock == NULL || apr_os_sock_get(&fd, sock) != APR_SUCCESS) {
        return -1;
    }
    return fd;
}

/* Whether the client went away: mod_http2 marks the secondary connection
 * of a reset stream (or of a session that ended) aborted; over HTTP/1.x the
 * socket tells, by a hangup or the peer shutting its side (a pipelined
 * request is data, not a close). */
static int client_gone(request_rec *r)
{
    struct pollfd p;
    int fd;

    if (r->connection->aborted) {
        return 1;
    }
    if ((fd = client_fd(r)) < 0) {
        return 0; /* an HTTP/2 stream: its socket is the session's, not the client's alone */
    }
    p.fd = fd;
    p.events = POLLRDHUP;
    p.revents = 0;
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

/* Whether this child is stopping (a stop, a graceful restart that replaces
 * it): an open stream then ends, or the child would wait for it until the
 * parent kills it. */
static int child_stopping(void)
{
    int state = AP_MPMQ_RUNNING;
    return ap_mpm_query(AP_MPMQ_MPM_STATE, &state) == APR_SUCCESS && state == AP_MPMQ_STOPPING;
}

/* Ends a request whose client went away: the access log shows 499, and
 * nothing more is written. */
static int client_left(request_rec *r)
{
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "MODZMQ0019: the client went away before the reply ended");
    r->status = 499;
    r->connection->aborted = 1;
    return DONE;
}

/* Passes what bb holds, with e (flush or EOS) after it, and empties bb. */
static apr_status_t pass(request_rec *r, apr_bucket_brigade *bb, apr_bucket *e)
{
    apr_status_t rv;
    APR_BRIGADE_INSERT_TAIL(bb, e);
    rv = ap_pass_brigade(r->output_filters, bb);
    apr_brigade_cleanup(bb);
    return rv;
}

/* Sends a streamed reply's head: status and headers, no length (HTTP/1.1
 * chunks the body, HTTP/2 sends DATA frames), flushed at once. */
static apr_status_t write_head(request_rec *r, const modzmq_response *resp, apr_bucket_brigade *bb)
{
    set_reply_headers(r, resp);
    return pass(r, bb, apr_bucket_flush_create(r->connection->bucket_alloc));
}

/* Sends a part of a streamed reply, flushed through every filter (mod_deflate
 * included), or the last part and the end. */
static apr_status_t write_part(request_rec *r, const modzmq_response *resp, int last, apr_bucket_brigade *bb)
{
    apr_bucket_alloc_t *ba = r->connection->bucket_alloc;
    if (resp->body_len) {
        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_transient_create(resp->body, resp->body_len, ba));
    }
    return pass(r, bb, last ? apr_bucket_eos_create(ba) : apr_bucket_flush_create(ba));
}

/* Ends a streamed reply abnormally, as mod_proxy does for a backend that
 * broke: an error bucket makes the chunk filter leave out the last chunk
 * and close the connection (HTTP/1.1), and mod_http2 reset the stream. */
static void break_stream(request_rec *r, apr_bucket_brigade *bb)
{
    conn_rec *c = r->connection;
    r->no_cache = 1;
    c->keepalive = AP_CONN_CLOSE;
    APR_BRIGADE_INSERT_TAIL(bb, ap_bucket_error_create(HTTP_BAD_GATEWAY, NULL, c->pool, c->bucket_alloc));
    pass(r, bb, apr_bucket_eos_create(c->bucket_alloc));
}

/* ---- WebSockets -------------------------------------------------------- */

/* The most read from the client for one step, and how often an open
 * WebSocket looks at its client (gone, reset), at the child (stopping)
 * and at its worker (lost to the watch: modzmq_wait) while nothing
 * happens: over HTTP/1.x its poll sees the client's hangup and the child's
 * stop as they come; an HTTP/2 stream's reset only shows in c->aborted. */
#define WS_READ (64 * 1024)
#define WS_TICK_MS 1000
#define WS_TICK_H2_MS 250

/* How much of a WebSocket's output may wait unflushed in the filters for
 * the next step's (ws_write). */
#define WS_COALESCE (16 * 1024)

/* Whether r asks for a WebSocket at a location that takes them: its
 * Upgrade header names websocket (HTTP/1.1, or the GET mod_http2 makes of
 * an RFC 8441 extended CONNECT). The library checks the rest. */
static int wants_websocket(request_rec *r, const modzmq_dir_conf *conf)
{
    const char *up;

    if (conf->websocket != 1 || r->proto_num < HTTP_VERSION(1, 1)) {
        return 0;
    }
    up = apr_table_get(r->headers_in, "Upgrade");
    return up != NULL && ap_find_token(r->pool, up, "websocket");
}

/* Writes a step's output to the client: the frames in head, then the
 * payload in resp->body. It is flushed unless more follows at once (more:
 * the step said again 2, the worker's next message has begun to arrive)
 * and what waits unflushed (*held bytes) stays under WS_COALESCE: the
 * worker's messages that came together go out in one write, as a tunnel
 * forwards what one read brought. The buckets are transient, so the
 * filters that keep them copy them (head is rewritten by the next step,
 * and the payload lies in the worker's connection's buffer, which the next
 * wait reads into). */
static apr_status_t ws_write(conn_rec *c, apr_bucket_brigade *bb, const modzmq_ws_io *io,
                             const modzmq_response *resp, int more, apr_size_t *held)
{
    apr_bucket_alloc_t *ba = c->bucket_alloc;
    apr_status_t rv;

    *held += io->head_len + resp->body_len;
    if (io->head_len == 0 && resp->body_len == 0 && (more || *held == 0)) {
        return APR_SUCCESS;
    }
    if (io->head_len) {
        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_transient_create(io->head, io->head_len, ba));
    }
    if (resp->body_len) {
        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_transient_create(resp->body, resp->body_len, ba));
    }
    if (!more || *held >= WS_COALESCE) {
        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_flush_create(ba));
        *held = 0;
    }
    rv = ap_pass_brigade(c->output_filters, bb);
    apr_brigade_cleanup(bb);
    return rv;
}

/* Reads what the client sent, at most max bytes, without waiting, from the
 * connection's input filters (mod_ssl's, mod_http2's stream): *n bytes into
 * buf. Returns 1 when the client's side ended (end of file, reset, error).
 * Metadata is skipped: mod_http2 puts an EOS before an upgraded stream's
 * data. */
static int ws_read(conn_rec *c, apr_bucket_brigade *bb, char *buf, apr_size_t max, apr_size_t *n)
{
    int empty = 0;

    *n = 0;
    while (*n < max && empty < 2) {
        apr_size_t len = max - *n;
        apr_status_t rv = ap_get_brigade(c->input_filters, bb, AP_MODE_READBYTES, APR_NONBLOCK_READ, len);
        if (APR_STATUS_IS_EAGAIN(rv)) {
            apr_brigade_cleanup(bb);
            return 0;
        }
        if (rv != APR_SUCCESS) {
            apr_brigade_cleanup(bb);
            return 1;
        }
        rv = apr_brigade_flatten(bb, buf + *n, &len);
        apr_brigade_cleanup(bb);
        if (rv != APR_SUCCESS) {
            return 1;
        }
        empty = len == 0 ? empty + 1 : 0;
        *n += len;
    }
    return 0;
}

/* The descriptor that shows the client's input: its socket, or under
 * HTTP/2 the pipe mod_http2 signals its stream's input on
 * (ap_get_pollfd_from_conn); -1 when there is none. */
static int client_input_fd(request_rec *r)
{
    apr_pollfd_t pfd;
    apr_interval_time_t timeout = -1;
    apr_os_sock_t s;
    apr_os_file_t f;

    memset(&pfd, 0, sizeof(pfd));
    pfd.p = r->pool;
    pfd.desc_type = APR_NO_DESC;
    if (ap_get_pollfd_from_conn(r->connection, &pfd, &timeout) != APR_SUCCESS) {
        return -1;
    }
    if (pfd.desc_type == APR_POLL_SOCKET && apr_os_sock_get(&s, pfd.desc.s) == APR_SUCCESS) {
        return s;
    }
    if (pfd.desc_type == APR_POLL_FILE && apr_os_file_get(&f, pfd.desc.f) == APR_SUCCESS) {
        return f;
    }
    return -1;
}

/* Answers an accepted handshake (101; mod_http2 makes it the 200 of RFC
 * 8441) and relays the WebSocket until it closes, on this thread: it waits
 * in poll() on the client and on the worker's connection, reads the client
 * without blocking, and steps the library (which never waits) when either
 * has something or a timer is due. The access log shows 101. */
static int run_websocket(request_rec *r, const modzmq_dir_conf *conf, const modzmq_calls *lib, modzmq_response *resp)
{
    conn_rec *c = r->connection;
    apr_bucket_brigade *in_bb, *out_bb;
    modzmq_ws_io io;
    char *buf;
    /* gone: the client's side ended (its input, or the connection);
     * dead: nothing can be written to it any more. A client that closes
     * its side after its close frame still gets the answer. */
    int cfd, rc, tick, gone = 0, dead = 0, stopped = 0, readable = 1;
    apr_size_t held = 0; /* output written, not flushed yet */

    set_reply_headers(r, resp);
    apr_table_setn(r->headers_out, "Upgrade", "websocket");
    apr_table_setn(r->headers_out, "Connection", "Upgrade");
    if (conf->request_id_header != NULL && *conf->request_id_header != '\0') {
        /* note_call put it with the headers of any answer; an interim
         * answer sends only headers_out. */
        const char *id = apr_table_get(r->err_headers_out, conf->request_id_header);
        if (id != NULL) {
            apr_table_setn(r->headers_out, conf->request_id_header, id);
        }
    }
    ap_send_interim_response(r, 1);
    lib->release(resp);

    /* The connection is the WebSocket's from here, as in mod_proxy's
     * tunnels: connection filters only, no request timeouts, and no
     * keep-alive after it. */
    ap_remove_input_filter_byhandle(c->input_filters, "reqtimeout");
    r->input_filters = r->proto_input_filters = c->input_filters;
    r->output_filters = r->proto_output_filters = c->output_filters;
    c->keepalive = AP_CONN_CLOSE;
    cfd = client_input_fd(r);
    tick = c->master == NULL ? WS_TICK_MS : WS_TICK_H2_MS;
    resp->wake[0].events = resp->wake[1].events = 0; /* modzmq_wait must not wait here */
    in_bb = apr_brigade_create(r->pool, c->bucket_alloc);
    out_bb = apr_brigade_create(r->pool, c->bucket_alloc);
    buf = apr_palloc(r->pool, WS_READ);

    memset(&io, 0, sizeof(io));
    rc = lib->ws_step(resp, &io);
    for (;;) {
        apr_time_t due;
        int more = rc == MODZMQ_PENDING && io.again == 2 && !gone;
        if (!dead && (c->aborted || ws_write(c, out_bb, &io, resp, more, &held) != APR_SUCCESS)) {
            gone = dead = 1;
        }
        if (rc != MODZMQ_PENDING) {
            break;
        }
        io.in = NULL;
        io.in_len = 0;
        if (!io.stopping && child_stopping()) {
            io.stopping = stopped = 1;
        }
        if (io.again && !gone) {
            lib->wait(resp);
            rc = lib->ws_step(resp, &io);
            continue;
        }
        due = apr_time_now() + apr_time_from_msec(io.wait_ms);
        while (!gone) {
            struct pollfd p[3];
            int np = 0, ci = -1, wi = -1, worker = 0, client = 0, n;
            apr_interval_time_t left = due - apr_time_now();
            int reading = io.read_max > 0;
            if (cfd >= 0 && (reading || c->master == NULL)) {
                p[np].fd = cfd;
                p[np].events = reading ? POLLIN : POLLRDHUP;
                p[np].revents = 0;
                ci = np++;
            }
            if (io.fd >= 0) {
                p[np].fd = io.fd;
                p[np].events = POLLIN;
                p[np].revents = 0;
                wi = np++;
            }
            if (stop_fd >= 0 && !io.stopping) {
                p[np].fd = stop_fd;
                p[np].events = POLLIN;
                p[np].revents = 0;
                np++;
            }
            n = poll(p, np, reading && readable ? 0 :
                     (int)(left <= 0 ? 0 : apr_time_as_msec(left) < tick ? apr_time_as_msec(left) + 1 : tick));
            if (n < 0 && errno != EINTR) {
                gone = 1;
                break;
            }
            worker = n > 0 && wi >= 0 && p[wi].revents != 0;
            /* Without a descriptor that shows the client's input (a
             * mod_http2 that offers none), the client is read without
             * waiting on every turn: at least once a tick. */
            client = reading && (readable || cfd < 0 || (n > 0 && ci >= 0 && p[ci].revents != 0));
            if (client) {
                apr_size_t want = io.read_max < WS_READ ? (apr_size_t)io.read_max : WS_READ, got = 0;
                gone = ws_read(c, in_bb, buf, want, &got);
                readable = !gone && got == want; /* more may wait in the filters */
                io.in = buf;
                io.in_len = got;
            }
            else if (ci >= 0 && c->master == NULL) {
                /* The poll watched the client's socket, whose end shows
                 * there (POLLRDHUP, POLLHUP, POLLERR; POLLIN when it was
                 * read, which the branch above took). */
                gone = c->aborted || (n > 0 && p[ci].revents != 0);
            }
            else if (client_gone(r)) {
                gone = 1;
            }
            if (worker) {
                lib->wait(resp);
            }
            else if (n == 0 && !client && lib->wait(resp)) {
                break; /* a worker was lost somewhere: the step looks whether it was ours */
            }
            if (!io.stopping && child_stopping()) {
                io.stopping = stopped = 1;
                break;
            }
            if (io.in_len > 0 || worker || gone || apr_time_now() >= due) {
                break;
            }
        }
        io.client_gone = gone;
        rc = lib->ws_step(resp, &io);
    }
    lib->release(resp);
    if (rc != MODZMQ_END) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "MODZMQ0029: the WebSocket broke: %s (" MODZMQ_DIR_BACKEND
                      " %s): the client got close 1011", resp->error, conf->endpoints);
    }
    else if (io.client_error) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "MODZMQ0030: the WebSocket's client broke RFC 6455 (%s): "
                      "closed with %d", resp->error, io.close_code);
    }
    else if (io.idle) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "MODZMQ0031: the WebSocket's client answered nothing within "
                      MODZMQ_DIR_STREAMIDLE ": closed");
    }
    else if (stopped && io.close_code == 1001) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "MODZMQ0032: the child is stopping: an open WebSocket "
                      "closed with 1001 (a client reconnects)");
    }
    return OK;
}

/* ---- the handler ------------------------------------------------------- */

/* A zmq location names no file: like mod_proxy's locations, it skips the
 * core's walk of the filesystem (a stat and an .htaccess lookup per path
 * component, on every request). <Location> sections still apply; <Directory>
 * sections and .htaccess files do not. The location's SetHandler is only
 * visible before map_to_storage (which runs on the server's defaults), so
 * translate_name, run after mod_rewrite's and mod_alias's, notes it: only a
 * SetHandler zmq seen by the location walk counts, one set in <Directory>
 * or <Files> leaves the walk in place. */
int modzmq_translate_name(request_rec *r)
{
    core_dir_config *core = ap_get_core_module_config(r->per_dir_config);
    const char *handler, *err = NULL;

    if (core == NULL || core->expr_handler == NULL) {
        return DECLINED;
    }
    handler = ap_expr_str_exec(r, core->expr_handler, &err);
    if (err != NULL || handler == NULL || strcmp(handler, MODZMQ_HANDLER) != 0) {
        return DECLINED;
    }
    r->filename = apr_pstrcat(r->pool, "zmq:", r->uri, NULL);
    ap_set_module_config(r->request_config, &zmq_module, (void *)1);
    return OK;
}

int modzmq_map_to_storage(request_rec *r)
{
    return ap_get_module_config(r->request_config, &zmq_module) != NULL ? OK : DECLINED;
}

static int relay_request(request_rec *r, const modzmq_dir_conf *conf, const modzmq_calls *lib, int handle,
                         modzmq_response *resp);

/* Notes mod_log_config reads: %{zmq-request-id}n and %{zmq-endpoint}n. */
#define NOTE_REQUEST_ID "zmq-request-id"
#define NOTE_ENDPOINT "zmq-endpoint"

/* The i-th (0-based) of the space-separated endpoints, or "-". */
static const char *nth_endpoint(apr_pool_t *p, const char *endpoints, int i)
{
    const char *s = endpoints, *end;
    while (s != NULL && *s == ' ') {
        s++;
    }
    for (; s != NULL && *s != '\0' && i > 0; i--) {
        s = strchr(s, ' ');
        while (s != NULL && *s == ' ') {
            s++;
        }
    }
    if (s == NULL || *s == '\0' || i != 0) {
        return "-";
    }
    end = strchr(s, ' ');
    return end ? apr_pstrmemdup(p, s, (apr_size_t)(end - s)) : s;
}

/* Records the request id and endpoint of the call in resp, once: as notes,
 * and as the response header the location names (ZmqRequestIdHeader). Called
 * before the answer's head goes out, and after the relay for the answers
 * Apache writes itself (errors). */
static void note_call(request_rec *r, const modzmq_dir_conf *conf, const modzmq_calls *lib, const modzmq_response *resp)
{
    const char *id, *ids;
    size_t id_len;
    int endpoint;

    if (apr_table_get(r->notes, NOTE_REQUEST_ID) != NULL || !lib->call_info(resp, &id, &id_len, &endpoint)) {
        return;
    }
    ids = apr_pstrmemdup(r->pool, id, id_len);
    apr_table_setn(r->notes, NOTE_REQUEST_ID, ids);
    apr_table_setn(r->notes, NOTE_ENDPOINT, nth_endpoint(r->pool, conf->endpoints, endpoint));
    if (conf->request_id_header != NULL && *conf->request_id_header != '\0') {
        apr_table_setn(r->err_headers_out, conf->request_id_header, ids);
    }
}

/* At LogLevel zmq:debug, one line per request: its id, endpoint, status,
 * time taken and bytes sent. */
static void log_request(request_rec *r, int status)
{
    const char *id = apr_table_get(r->notes, NOTE_REQUEST_ID), *ep = apr_table_get(r->notes, NOTE_ENDPOINT);
    if (status == OK) {
        status = r->status;
    }
    else if (status == DONE) {
        status = 499;
    }
    ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, "MODZMQ0033: %s %s: request %s to %s answered %d in %"
                  APR_TIME_T_FMT " us, %" APR_OFF_T_FMT " bytes", r->method, r->uri, id ? id : "-", ep ? ep : "-",
                  status, apr_time_now() - r->request_time, r->bytes_sent);
}

/* Relays r and records what it did: notes, the id header, the debug line. */
static int relay_and_note(request_rec *r, const modzmq_dir_conf *conf, const modzmq_calls *lib, int handle)
{
    modzmq_response resp;
    int status;

    memset(&resp, 0, sizeof(resp));
    status = relay_request(r, conf, lib, handle, &resp);
    note_call(r, conf, lib, &resp);
    if (APLOGrdebug(r)) {
        log_request(r, status);
    }
    return status;
}

int modzmq_handler(request_rec *r)
{
    const modzmq_dir_conf *conf;
    const modzmq_calls *lib;
    const char *why = NULL;
    int handle, status;

    if (r->handler == NULL || strcmp(r->handler, MODZMQ_HANDLER) != 0) {
        return DECLINED;
    }
    conf = ap_get_module_config(r->per_dir_config, &zmq_module);
    if (conf->backend == 0) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "MODZMQ0010: SetHandler " MODZMQ_HANDLER
                      " without " MODZMQ_DIR_BACKEND " for %s", conf->route ? conf->route : r->uri);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    lib = modzmq_loader_calls(&why);
    if (lib == NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "%s", why);
        return HTTP_SERVICE_UNAVAILABLE;
    }
    if (modzmq_loader_backend(conf->backend) == 0) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "MODZMQ0018: " MODZMQ_DIR_BACKEND " %s "
                      "could not be opened in this process (see MODZMQ0005 at start)", conf->endpoints);
        return HTTP_SERVICE_UNAVAILABLE;
    }
    if ((handle = modzmq_loader_client(conf, &why)) == 0) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "%s", why);
        return HTTP_SERVICE_UNAVAILABLE;
    }

    if (conf->max_in_flight > 0) {
        apr_uint32_t now = __atomic_add_fetch(conf->in_flight, 1, __ATOMIC_RELAXED);
        if (now > (apr_uint32_t)conf->max_in_flight) {
            __atomic_sub_fetch(conf->in_flight, 1, __ATOMIC_RELAXED);
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, "MODZMQ0020: " MODZMQ_DIR_MAXINFLIGHT
                          " %d reached for %s: answered 503", conf->max_in_flight, conf->route ? conf->route : r->uri);
            apr_table_setn(r->err_headers_out, "Retry-After", "1");
            modzmq_stats_overload(conf->backend);
            return HTTP_SERVICE_UNAVAILABLE;
        }
        status = relay_and_note(r, conf, lib, handle);
        __atomic_sub_fetch(conf->in_flight, 1, __ATOMIC_RELAXED);
        return status;
    }
    return relay_and_note(r, conf, lib, handle);
}

/* Reads the body, relays the request and writes the reply or error. */
/* Whether r has a body: a Content-Length above 0, or chunked. */
static int has_body(request_rec *r)
{
    const char *clen = apr_table_get(r->headers_in, "Content-Length");
    return apr_table_get(r->headers_in, "Transfer-Encoding") != NULL || (clen != NULL && strcmp(clen, "0") != 0);
}

/* Reads up to want bytes of the request body into buf: *n of them, *eos once
 * the body has ended; without waiting for the client when block is
 * APR_NONBLOCK_READ (then *n is 0 and *eos 0 when it has sent nothing more
 * yet). OK, or the status to answer. */
static int read_part(request_rec *r, apr_bucket_brigade *bb, char *buf, apr_size_t want, apr_read_type_e block,
                     apr_size_t *n, int *eos)
{
    apr_status_t rv = ap_get_brigade(r->input_filters, bb, AP_MODE_READBYTES, block, want);
    apr_size_t len = want;

    if (block == APR_NONBLOCK_READ && APR_STATUS_IS_EAGAIN(rv)) {
        apr_brigade_cleanup(bb);
        *n = 0;
        *eos = 0;
        return OK;
    }
    if (rv != APR_SUCCESS) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, rv, r, "MODZMQ0015: reading the request body failed");
        apr_brigade_cleanup(bb);
        return ap_map_http_request_error(rv, HTTP_BAD_REQUEST);
    }
    *eos = !APR_BRIGADE_EMPTY(bb) && APR_BUCKET_IS_EOS(APR_BRIGADE_LAST(bb));
    rv = apr_brigade_flatten(bb, buf, &len);
    apr_brigade_cleanup(bb);
    if (rv != APR_SUCCESS) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, rv, r, "MODZMQ0015: reading the request body failed");
        return HTTP_BAD_REQUEST;
    }
    *n = len;
    return OK;
}

/* Lets go of a stream's place under ZmqMaxStreams, if it took one. */
static void stream_done(const modzmq_dir_conf *conf, int counted)
{
    if (counted) {
        __atomic_sub_fetch(conf->streams, 1, __ATOMIC_RELAXED);
    }
}

/* Takes a place under ZmqMaxStreams for a stream or a WebSocket (*counted
 * then says so): OK, or 503 with Retry-After when none is left. */
static int take_stream_place(request_rec *r, const modzmq_dir_conf *conf, int *counted)
{
    apr_uint32_t open;

    if (conf->max_streams <= 0) {
        return OK;
    }
    open = __atomic_add_fetch(conf->streams, 1, __ATOMIC_RELAXED);
    *counted = 1;
    if (open <= (apr_uint32_t)conf->max_streams) {
        return OK;
    }
    stream_done(conf, 1);
    *counted = 0;
    ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, "MODZMQ0024: " MODZMQ_DIR_MAXSTREAMS " %d reached "
                  "for %s: answered 503", conf->max_streams, conf->route ? conf->route : r->uri);
    apr_table_setn(r->err_headers_out, "Retry-After", "1");
    modzmq_stats_overload(conf->backend);
    return HTTP_SERVICE_UNAVAILABLE;
}

/* Ends a request still waiting for its worker when its child stops, not
 * gracefully: 503. */
static int end_for_stop(request_rec *r, const modzmq_dir_conf *conf, const modzmq_calls *lib,
                        modzmq_response *resp, int counted)
{
    lib->cancel(resp);
    lib->release(resp);
    stream_done(conf, counted);
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "MODZMQ0034: the child is stopping (not gracefully): the "
                  "request waiting for its worker ends");
    return HTTP_SERVICE_UNAVAILABLE;
}

static int relay_request(request_rec *r, const modzmq_dir_conf *conf, const modzmq_calls *lib, int handle,
                         modzmq_response *resp)
{
    modzmq_request req;
    apr_bucket_brigade *bb = NULL;
    apr_status_t rv = APR_SUCCESS;
    apr_bucket_brigade *body_bb = NULL;
    apr_off_t body_total = 0, max_body = modzmq_conf_max_body(conf);
    apr_time_t body_heard = 0;
    char *part = NULL;
    int body_fd = -1, held = 0, held_eos = 0; /* held: a part read, not yet sent */
    apr_size_t n, held_len = 0;
    int rc, status, streaming = 0, counted = 0, body_done = 0, websocket = wants_websocket(r, conf);

    memset(&req, 0, sizeof(req));
    if (websocket) {
        /* A handshake: no body; open WebSockets count under ZmqMaxStreams
         * from the start, so one over it never reaches a worker. */
        if ((status = take_stream_place(r, conf, &counted)) != OK) {
            return status;
        }
        req.websocket = 1;
        req.ws_max_message = modzmq_conf_ws_max_message(conf);
        req.ws_origins = conf->ws_origins && *conf->ws_origins ? conf->ws_origins : NULL;
        n = 0;
    }
    else if (conf->stream_body == 1 && has_body(r)) {
        /* The worker asks for the body in parts (the loop below). */
        req.stream_body = 1;
        n = 0;
    }
    else if ((status = read_body(r, modzmq_conf_max_body(conf), &req.body, &n)) != OK) {
        return status;
    }
    req.body_len = n;
    req.method = r->method;
    req.method_len = strlen(r->method);
    req.target = r->unparsed_uri;
    req.target_len = strlen(r->unparsed_uri);
    req.headers = pack_headers(r, &req.headers_len);
    req.meta = pack_meta(r, conf, websocket, &req.meta_len);
    req.timeout_ms = modzmq_conf_timeout_ms(conf);

    resp->error[0] = '\0';
    /* The waits watch the client's socket for its hangup (and, once a
     * stream is open, the child's stop), so they need not wake to look. */
    resp->wake[0].fd = client_fd(r);
    resp->wake[0].events = resp->wake[0].fd >= 0 ? POLLRDHUP : 0;
    resp->wake[1].fd = stop_fd;
    resp->wake[1].events = stop_fd >= 0 ? POLLIN : 0;
    rc = lib->relay(handle, &req, resp);
    /* Wait here, in C (modzmq_wait is plain C in the library): an Apache
     * thread parked inside Go costs the Go scheduler a hand-off on every
     * request, and so does each step, which only comes when modzmq_wait
     * asks for one. Between waits (100 ms at most), look for a client that
     * left. */
    for (;;) {
        if (rc == MODZMQ_PENDING && req.stream_body && !body_done && resp->body_credit > 64) {
            /* The worker has room for a part: read one, at most MODZMQ_BODY_PART. */
            apr_size_t want = resp->body_credit - 64 < MODZMQ_BODY_PART ? (apr_size_t)(resp->body_credit - 64)
                                                                        : MODZMQ_BODY_PART;
            int watch;
            if (part == NULL) {
                part = apr_palloc(r->pool, MODZMQ_BODY_PART);
                body_bb = apr_brigade_create(r->pool, r->connection->bucket_alloc);
                /* What shows the client's input: its socket, or under
                 * HTTP/2 the pipe mod_http2 signals its stream's input on. */
                body_fd = resp->wake[0].fd >= 0 ? resp->wake[0].fd : client_input_fd(r);
                /* The worker is ready for the body: a client that asked
                 * (Expect: 100-continue) is told to send it. A read that
                 * does not wait never sends the 100 itself. */
                if (r->expecting_100 && r->proto_num >= HTTP_VERSION(1, 1)) {
                    int saved = r->status;
                    r->status = HTTP_CONTINUE;
                    ap_send_interim_response(r, 0);
                    r->status = saved;
                }
            }
            if (child_stopping()) {
                if (__atomic_load_n(&stop_now, __ATOMIC_SEQ_CST)) {
                    return end_for_stop(r, conf, lib, resp, counted);
                }
                resp->wake[1].events = 0; /* a graceful stop: the body goes on */
            }
            /* What the client has sent is read first, without waiting:
             * bytes Apache already holds (sent with the head, decrypted
             * TLS) do not show on the descriptor. With a part in hand, a
             * message the worker has sent (an answer before the body is
             * complete, a 413 or a 403, or more credit) is taken first, so
             * no part goes out after an answer the front has received. With
             * nothing to read, the wait is for the worker and the client
             * at once, so a client that pauses gets the answer at once.
             * Without a descriptor to watch, or when the wait cannot watch
             * the worker (modzmq_waits: CurveZMQ, whose step waits in Go),
             * the read waits for the client. */
            watch = body_fd >= 0 && lib->waits(resp);
            if (!held) {
                status = read_part(r, body_bb, part, want, watch ? APR_NONBLOCK_READ : APR_BLOCK_READ,
                                   &held_len, &held_eos);
                if (status == OK && held_len == 0 && !held_eos) {
                    if (body_heard == 0) {
                        body_heard = apr_time_now();
                    }
                    else if (apr_time_now() - body_heard > r->server->timeout) {
                        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "MODZMQ0015: reading the request body "
                                      "failed: the client sent nothing for %" APR_TIME_T_FMT " s (Timeout)",
                                      apr_time_sec(r->server->timeout));
                        lib->cancel(resp);
                        lib->release(resp);
                        return HTTP_REQUEST_TIME_OUT;
                    }
                    if (watch) {
                        int step, fd = resp->wake[0].fd;
                        short events = resp->wake[0].events;
                        resp->wake[0].fd = body_fd;
                        resp->wake[0].events = events | POLLIN;
                        step = lib->wait(resp);
                        resp->wake[0].fd = fd;
                        resp->wake[0].events = events;
                        if (step) {
                            rc = lib->resume(resp);
                        }
                    }
                    continue;
                }
                body_heard = 0;
                body_total += held_len;
                if (status == OK && max_body > 0 && body_total > max_body) {
                    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "MODZMQ0014: request body is over "
                                  MODZMQ_DIR_MAXBODY " %" APR_OFF_T_FMT " bytes", max_body);
                    status = HTTP_REQUEST_ENTITY_TOO_LARGE;
                }
                if (status != OK) {
                    lib->cancel(resp);
                    lib->release(resp);
                    return status;
                }
                held = 1;
            }
            if (watch && lib->ready(resp)) {
                rc = lib->resume(resp);
                continue;
            }
            held = 0;
            body_done = held_eos;
            rc = lib->send_body(resp, part, held_len, held_eos);
            continue;
        }
        if (rc == MODZMQ_PENDING) {
            int step = lib->wait(resp);
            if (client_gone(r)) {
                lib->cancel(resp);
                lib->release(resp);
                stream_done(conf, counted);
                return client_left(r);
            }
            if (streaming && child_stopping()) {
                lib->cancel(resp);
                lib->release(resp);
                stream_done(conf, counted);
                ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "MODZMQ0026: the child is stopping: its open stream "
                              "ends (an EventSource client reconnects)");
                break_stream(r, bb);
                return OK;
            }
            if (!streaming && child_stopping()) {
                /* Looked at on every pass: a graceful stop may turn into
                 * one that is not (graceful-stop, then stop). */
                if (__atomic_load_n(&stop_now, __ATOMIC_SEQ_CST)) {
                    return end_for_stop(r, conf, lib, resp, counted);
                }
                resp->wake[1].events = 0; /* a graceful stop: the reply is waited for */
            }
            if (step) {
                rc = lib->resume(resp);
            }
            continue;
        }
        if (rc != MODZMQ_HEAD && rc != MODZMQ_PART && rc != MODZMQ_END) {
            break;
        }
        if (bb == NULL) {
            bb = apr_brigade_create(r->pool, r->connection->bucket_alloc);
        }
        if (rc == MODZMQ_HEAD) {
            if ((status = take_stream_place(r, conf, &counted)) != OK) {
                lib->cancel(resp);
                lib->release(resp);
                return status;
            }
            streaming = 1;
            if (stop_fd >= 0) {
                resp->wake[1].fd = stop_fd;
                resp->wake[1].events = POLLIN;
            }
            note_call(r, conf, lib, resp);
            rv = write_head(r, resp, bb);
            lib->release(resp);
            if (rv == APR_SUCCESS && r->header_only) {
                lib->cancel(resp); /* HEAD: the head only */
                pass(r, bb, apr_bucket_eos_create(r->connection->bucket_alloc));
                stream_done(conf, counted);
                return OK;
            }
        }
        else {
            rv = write_part(r, resp, rc == MODZMQ_END, bb);
            lib->release(resp);
            if (rc == MODZMQ_END) {
                stream_done(conf, counted);
                return OK;
            }
        }
        if (rv != APR_SUCCESS || client_gone(r)) {
            lib->cancel(resp);
            lib->release(resp);
            stream_done(conf, counted);
            return client_left(r);
        }
        /* After a part the library may let the next one be waited for in
         * C: one step of Go's per part, not two. */
        rc = rc == MODZMQ_PART && resp->wait_first ? MODZMQ_PENDING : lib->resume(resp);
    }
    if (streaming) {
        lib->release(resp);
        stream_done(conf, counted);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "MODZMQ0025: the stream ended abnormally after its head: %s ("
                      MODZMQ_DIR_BACKEND " %s)", resp->error, conf->endpoints);
        break_stream(r, bb);
        return OK;
    }
    switch (rc) {
    case MODZMQ_OK:
        note_call(r, conf, lib, resp);
        status = write_reply(r, resp);
        lib->release(resp);
        stream_done(conf, counted);
        return status;
    case MODZMQ_UPGRADE:
        note_call(r, conf, lib, resp);
        status = run_websocket(r, conf, lib, resp);
        stream_done(conf, counted);
        return status;
    case MODZMQ_EREFUSED:
        status = resp->status;
        add_lines(r, r->err_headers_out, resp->headers, resp->headers_len);
        lib->release(resp);
        stream_done(conf, counted);
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "MODZMQ0028: refused a WebSocket handshake: %s (answered %d)",
                      resp->error, status);
        return status;
    case MODZMQ_ENOWORKER:
        status = HTTP_SERVICE_UNAVAILABLE;
        break;
    case MODZMQ_EOVERLOAD:
        apr_table_setn(r->err_headers_out, "Retry-After", "1");
        status = HTTP_SERVICE_UNAVAILABLE;
        break;
    case MODZMQ_ETIMEOUT:
        status = HTTP_GATEWAY_TIME_OUT;
        break;
    case MODZMQ_EPROTOCOL:
        status = HTTP_BAD_GATEWAY;
        break;
    default:
        status = HTTP_INTERNAL_SERVER_ERROR;
        break;
    }
    lib->release(resp);
    stream_done(conf, counted);
    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "%s (" MODZMQ_DIR_BACKEND " %s, answered %d)",
                  resp->error, conf->endpoints, status);
    return status;
}
