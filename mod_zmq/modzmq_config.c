/*
 * modzmq_config.c - directives, per-directory records and merging.
 *
 * Directive handlers only validate and store: they never log and never touch
 * the Go library, so `apachectl configtest` reports every mistake on its own.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "apr_strings.h"

#include "mod_zmq.h"

/* Process-wide settings, rebuilt from scratch on every configuration pass. */
static const char *library_path;
static apr_array_header_t *backends; /* of modzmq_backend_entry: distinct ZmqBackend argument lists */
static apr_array_header_t *clients;  /* of modzmq_client_config: distinct (registry index, options) */

void modzmq_config_reset(apr_pool_t *pconf)
{
    library_path = MODZMQ_DEFAULT_LIBRARY;
    backends = apr_array_make(pconf, 4, sizeof(modzmq_backend_entry));
    clients = apr_array_make(pconf, 4, sizeof(modzmq_client_config));
}

const char *modzmq_config_library(void) { return library_path; }

const apr_array_header_t *modzmq_config_backends(void) { return backends; }

const apr_array_header_t *modzmq_config_clients(void) { return clients; }

/* Returns the 1-based registry index of endpoints, adding it if new. */
static int register_backend(apr_pool_t *p, const char *endpoints)
{
    modzmq_backend_entry *e;
    int i;
    if (backends == NULL) {
        modzmq_config_reset(p);
    }
    for (i = 0; i < backends->nelts; i++) {
        e = &APR_ARRAY_IDX(backends, i, modzmq_backend_entry);
        if (strcmp(e->endpoints, endpoints) == 0) {
            return i + 1;
        }
    }
    e = &APR_ARRAY_PUSH(backends, modzmq_backend_entry);
    memset(e, 0, sizeof(*e));
    e->endpoints = endpoints;
    return backends->nelts;
}

/* list with word added at its end, unless it has it: words separated by
 * spaces. */
static const char *add_word(apr_pool_t *p, const char *list, const char *word)
{
    size_t n = strlen(word);
    const char *at;
    if (list == NULL || *list == '\0') {
        return word;
    }
    for (at = strstr(list, word); at != NULL; at = strstr(at + 1, word)) {
        if ((at == list || at[-1] == ' ') && (at[n] == ' ' || at[n] == '\0')) {
            return list;
        }
    }
    return apr_pstrcat(p, list, " ", word, NULL);
}

/* Notes, for status pages and metrics labels, that conf (a section of sv,
 * or sv's own settings) names its backend: the section's path (or
 * "(server)") and the virtual host (name:port; name:* for the main server
 * when no port is set for it, as it then answers on every Listen port that
 * no virtual host claims). */
static void note_route(server_rec *sv, const modzmq_dir_conf *conf)
{
    modzmq_backend_entry *e;
    apr_pool_t *p = backends->pool;
    const char *name = sv->server_hostname ? sv->server_hostname : "localhost";
    unsigned port = sv->port ? sv->port : (sv->addrs ? sv->addrs->host_port : 0);
    if (conf->backend < 1 || conf->backend > backends->nelts) {
        return;
    }
    e = &APR_ARRAY_IDX(backends, conf->backend - 1, modzmq_backend_entry);
    e->routes = add_word(p, e->routes, conf->route ? conf->route : "(server)");
    e->vhosts = add_word(p, e->vhosts, port ? apr_psprintf(p, "%s:%u", name, port) : apr_pstrcat(p, name, ":*", NULL));
}

void *modzmq_create_dir_conf(apr_pool_t *p, char *dir)
{
    modzmq_dir_conf *conf = apr_pcalloc(p, sizeof(*conf));
    conf->route = dir;
    conf->backend = 0;
    conf->timeout_ms = MODZMQ_UNSET;
    conf->max_body = MODZMQ_UNSET;
    conf->heartbeat_ms = MODZMQ_UNSET;
    conf->retries = MODZMQ_UNSET;
    conf->retry_all = MODZMQ_UNSET;
    conf->max_in_flight = MODZMQ_UNSET;
    conf->max_reply = MODZMQ_UNSET;
    conf->notices = MODZMQ_UNSET;
    conf->stream_window = MODZMQ_UNSET;
    conf->stream_idle_ms = MODZMQ_UNSET;
    conf->max_streams = MODZMQ_UNSET;
    conf->stream_body = MODZMQ_UNSET;
    conf->websocket = MODZMQ_UNSET;
    conf->ws_max_message = MODZMQ_UNSET;
    return conf;
}

void *modzmq_merge_dir_conf(apr_pool_t *p, void *basev, void *addv)
{
    const modzmq_dir_conf *base = basev, *add = addv;
    modzmq_dir_conf *conf = apr_palloc(p, sizeof(*conf));

    conf->route = add->route ? add->route : base->route;
    if (add->backend) {
        conf->backend = add->backend;
        conf->endpoints = add->endpoints;
    }
    else {
        conf->backend = base->backend;
        conf->endpoints = base->endpoints;
    }
    conf->timeout_ms = add->timeout_ms != MODZMQ_UNSET ? add->timeout_ms : base->timeout_ms;
    conf->max_body = add->max_body != MODZMQ_UNSET ? add->max_body : base->max_body;
    if (add->heartbeat_ms != MODZMQ_UNSET) {
        conf->heartbeat_ms = add->heartbeat_ms;
        conf->heartbeat_timeout_ms = add->heartbeat_timeout_ms;
    }
    else {
        conf->heartbeat_ms = base->heartbeat_ms;
        conf->heartbeat_timeout_ms = base->heartbeat_timeout_ms;
    }
    if (add->retries != MODZMQ_UNSET) {
        conf->retries = add->retries;
        conf->retry_all = add->retry_all;
    }
    else {
        conf->retries = base->retries;
        conf->retry_all = base->retry_all;
    }
    conf->max_reply = add->max_reply != MODZMQ_UNSET ? add->max_reply : base->max_reply;
    conf->notices = add->notices != MODZMQ_UNSET ? add->notices : base->notices;
    conf->stream_body = add->stream_body != MODZMQ_UNSET ? add->stream_body : base->stream_body;
    conf->websocket = add->websocket != MODZMQ_UNSET ? add->websocket : base->websocket;
    conf->ws_max_message = add->ws_max_message != MODZMQ_UNSET ? add->ws_max_message : base->ws_max_message;
    conf->ws_origins = add->ws_origins ? add->ws_origins : base->ws_origins;
    conf->request_id_header = add->request_id_header ? add->request_id_header : base->request_id_header;
    conf->stream_window = add->stream_window != MODZMQ_UNSET ? add->stream_window : base->stream_window;
    conf->stream_idle_ms = add->stream_idle_ms != MODZMQ_UNSET ? add->stream_idle_ms : base->stream_idle_ms;
    if (add->max_streams != MODZMQ_UNSET) {
        conf->max_streams = add->max_streams;
        conf->streams = add->streams;
    }
    else {
        conf->max_streams = base->max_streams;
        conf->streams = base->streams;
    }
    if (add->curve_server_cert) {
        conf->curve_server_cert = add->curve_server_cert;
        conf->curve_client_cert = add->curve_client_cert;
    }
    else {
        conf->curve_server_cert = base->curve_server_cert;
        conf->curve_client_cert = base->curve_client_cert;
    }
    if (add->max_in_flight != MODZMQ_UNSET) {
        conf->max_in_flight = add->max_in_flight;
        conf->in_flight = add->in_flight;
    }
    else {
        conf->max_in_flight = base->max_in_flight;
        conf->in_flight = base->in_flight;
    }
    return conf;
}

apr_int64_t modzmq_conf_timeout_ms(const modzmq_dir_conf *conf)
{
    return conf->timeout_ms != MODZMQ_UNSET ? conf->timeout_ms : MODZMQ_DEFAULT_TIMEOUT_MS;
}

apr_off_t modzmq_conf_max_body(const modzmq_dir_conf *conf)
{
    return conf->max_body != MODZMQ_UNSET ? conf->max_body : MODZMQ_DEFAULT_MAX_BODY;
}

apr_off_t modzmq_conf_max_reply(const modzmq_dir_conf *conf)
{
    return conf->max_reply != MODZMQ_UNSET ? conf->max_reply : MODZMQ_DEFAULT_MAX_REPLY;
}

apr_int64_t modzmq_conf_ws_max_message(const modzmq_dir_conf *conf)
{
    return conf->ws_max_message != MODZMQ_UNSET ? conf->ws_max_message : MODZMQ_DEFAULT_WS_MAX_MESSAGE;
}

/* ---- clients: (backend, options) ---------------------------------------- */

void modzmq_conf_client(const modzmq_dir_conf *conf, modzmq_client_config *out)
{
    memset(out, 0, sizeof(*out));
    out->backend = conf->backend;
    out->heartbeat_ms = conf->heartbeat_ms == MODZMQ_OFF ? -1 : (conf->heartbeat_ms > 0 ? conf->heartbeat_ms : 0);
    out->heartbeat_timeout_ms = out->heartbeat_ms > 0 ? conf->heartbeat_timeout_ms : 0;
    out->retries = conf->retries > 0 ? conf->retries : 0;
    out->retry_all = conf->retry_all == 1;
    out->max_reply = modzmq_conf_max_reply(conf);
    if (conf->curve_server_cert && *conf->curve_server_cert) {
        out->curve_server_cert = conf->curve_server_cert;
        out->curve_client_cert = conf->curve_client_cert;
    }
    out->notices = conf->notices == 1;
    out->stream_window = conf->stream_window != MODZMQ_UNSET ? conf->stream_window : MODZMQ_DEFAULT_STREAM_WINDOW;
    out->stream_idle_ms = conf->stream_idle_ms != MODZMQ_UNSET ? conf->stream_idle_ms : 0;
}

static int same_string(const char *a, const char *b) { return (a == NULL || b == NULL) ? a == b : strcmp(a, b) == 0; }

int modzmq_same_client(const modzmq_client_config *a, const modzmq_client_config *b)
{
    return a->backend == b->backend && a->heartbeat_ms == b->heartbeat_ms &&
           a->heartbeat_timeout_ms == b->heartbeat_timeout_ms && a->retries == b->retries &&
           a->retry_all == b->retry_all && a->max_reply == b->max_reply &&
           same_string(a->curve_server_cert, b->curve_server_cert) &&
           same_string(a->curve_client_cert, b->curve_client_cert) && a->notices == b->notices &&
           a->stream_window == b->stream_window && a->stream_idle_ms == b->stream_idle_ms;
}

int modzmq_config_client(const modzmq_client_config *want)
{
    int i;
    for (i = 0; clients != NULL && i < clients->nelts; i++) {
        if (modzmq_same_client(&APR_ARRAY_IDX(clients, i, modzmq_client_config), want)) {
            return i + 1;
        }
    }
    return 0;
}

/* Numbers the client of conf merged over defaults, if it names a backend. */
static int add_client(apr_pool_t *ptemp, const modzmq_dir_conf *defaults, const modzmq_dir_conf *conf)
{
    modzmq_client_config c;
    const modzmq_dir_conf *merged = conf == defaults ? conf : modzmq_merge_dir_conf(ptemp, (void *)defaults, (void *)conf);

    if (merged->backend == 0) {
        return 0;
    }
    modzmq_conf_client(merged, &c);
    if (modzmq_config_client(&c) != 0) {
        return 0;
    }
    if (clients->nelts >= MODZMQ_MAX_CLIENTS) {
        return -1;
    }
    APR_ARRAY_PUSH(clients, modzmq_client_config) = c;
    return 0;
}

/* The sections a request's configuration is merged from: directories and
 * locations (with the server's own settings under each); a request whose
 * sections nest, each setting some of the options, may merge into a client
 * found here as none, which the child then adds (modzmq_loader_client). */
int modzmq_config_number_clients(apr_pool_t *ptemp, server_rec *s)
{
    server_rec *sv;
    for (sv = s; sv != NULL; sv = sv->next) {
        const modzmq_dir_conf *defaults = ap_get_module_config(sv->lookup_defaults, &zmq_module);
        core_server_config *core = ap_get_core_module_config(sv->module_config);
        apr_array_header_t *sections[2];
        int i, j;

        sections[0] = core->sec_dir;
        sections[1] = core->sec_url;
        if (add_client(ptemp, defaults, defaults) != 0) {
            goto full;
        }
        note_route(sv, defaults);
        for (i = 0; i < 2; i++) {
            for (j = 0; sections[i] != NULL && j < sections[i]->nelts; j++) {
                ap_conf_vector_t *sec = APR_ARRAY_IDX(sections[i], j, ap_conf_vector_t *);
                const modzmq_dir_conf *conf = ap_get_module_config(sec, &zmq_module);
                if (conf != NULL && add_client(ptemp, defaults, conf) != 0) {
                    goto full;
                }
                if (conf != NULL) {
                    note_route(sv, conf);
                }
            }
        }
    }
    return OK;
full:
    ap_log_error(APLOG_MARK, APLOG_ERR, 0, s, "MODZMQ0007: more than %d distinct " MODZMQ_DIR_BACKEND
                 " and option sets; merge locations that differ only in options", MODZMQ_MAX_CLIENTS);
    return HTTP_INTERNAL_SERVER_ERROR;
}

/* Checks the source part of tcp://source;host:port, src[0:n]: "*" or a
 * numeric IP address (IPv6 in brackets when a port follows), then ":port",
 * ":*" or nothing, as the library reads it (bridge.sourceAddr, zmtp.c). */
static int source_ok(const char *src, size_t n)
{
    char host[64];
    const char *port = NULL, *h = src, *c1;
    size_t hlen = n;
    unsigned char addr[16];

    if (n > 0 && src[0] == '[') {
        const char *end = memchr(src, ']', n);
        if (end == NULL || (end + 1 < src + n && end[1] != ':')) {
            return 0;
        }
        h = src + 1;
        hlen = (size_t)(end - h);
        port = end + 1 < src + n ? end + 2 : NULL;
    }
    else if ((c1 = memchr(src, ':', n)) != NULL && memchr(c1 + 1, ':', (size_t)(src + n - c1 - 1)) == NULL) {
        hlen = (size_t)(c1 - src);
        port = c1 + 1;
    }
    if (hlen == 0 || hlen >= sizeof(host)) {
        return 0;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    if (strcmp(host, "*") != 0 && inet_pton(AF_INET, host, addr) != 1 && inet_pton(AF_INET6, host, addr) != 1) {
        return 0;
    }
    if (port != NULL && !(src + n - port == 1 && *port == '*')) {
        long v = 0;
        const char *q;
        if (port == src + n || src + n - port > 5) {
            return 0; /* one to five digits */
        }
        for (q = port; q < src + n; q++) {
            if (*q < '0' || *q > '9' || (v = v * 10 + (*q - '0')) > 65535) {
                return 0;
            }
        }
    }
    return 1;
}

/* Checks one endpoint: tcp://host:port, tcp://source;host:port or
 * ipc://path. */
static const char *check_endpoint(apr_pool_t *p, const char *ep)
{
    if (strncmp(ep, "tcp://", 6) == 0) {
        const char *semi = strchr(ep + 6, ';');
        const char *colon = strrchr(ep + 6, ':');
        if (semi != NULL) {
            if (!source_ok(ep + 6, (size_t)(semi - ep - 6))) {
                return apr_psprintf(p, MODZMQ_DIR_BACKEND " %s: the source address must be * or a numeric IP "
                                    "address, with :port or not (an interface name is not supported)", ep);
            }
            if (colon != NULL && colon < semi) {
                colon = NULL;
            }
        }
        char *end;
        long port;
        if (colon == NULL || colon == ep + 6 || (semi != NULL && colon == semi + 1)) {
            return apr_psprintf(p, MODZMQ_DIR_BACKEND " %s: tcp:// needs host:port", ep);
        }
        errno = 0;
        port = strtol(colon + 1, &end, 10);
        if (errno || *end || end == colon + 1 || port < 1 || port > 65535) {
            return apr_psprintf(p, MODZMQ_DIR_BACKEND " %s: port must be 1-65535", ep);
        }
        return NULL;
    }
    if (strncmp(ep, "ipc://", 6) == 0) {
        return ep[6] ? NULL : apr_psprintf(p, MODZMQ_DIR_BACKEND " %s: ipc:// needs a path", ep);
    }
    return apr_psprintf(p, MODZMQ_DIR_BACKEND " %s: the endpoint must start with tcp:// or ipc://", ep);
}

static const char *set_backend(cmd_parms *cmd, void *dconf, int argc, char *const argv[])
{
    modzmq_dir_conf *conf = dconf;
    const char *joined = "";
    int i;

    if (argc == 0) {
        return MODZMQ_DIR_BACKEND " needs at least one tcp:// or ipc:// endpoint";
    }
    for (i = 0; i < argc; i++) {
        const char *err = check_endpoint(cmd->pool, argv[i]);
        if (err) {
            return err;
        }
        joined = i ? apr_pstrcat(cmd->pool, joined, " ", argv[i], NULL) : argv[i];
    }
    conf->endpoints = joined;
    conf->backend = register_backend(cmd->pool, joined);
    return NULL;
}

/* Parses "10" or "10s" (seconds) or "250ms" into milliseconds; directive
 * names the directive in the error. */
static const char *parse_duration(apr_pool_t *p, const char *directive, const char *arg, apr_int64_t *ms)
{
    char *end;
    apr_int64_t n;

    errno = 0;
    n = apr_strtoi64(arg, &end, 10);
    if (errno || end == arg || n <= 0) {
        return apr_psprintf(p, "%s %s: expected a positive number of seconds, "
                            "or milliseconds with the suffix ms (e.g. 30 or 250ms)", directive, arg);
    }
    if (strcmp(end, "ms") == 0) {
        /* already milliseconds */
    }
    else if (*end == '\0' || strcmp(end, "s") == 0) {
        n *= 1000;
    }
    else {
        return apr_psprintf(p, "%s %s: unknown unit \"%s\" (use seconds, or ms)", directive, arg, end);
    }
    if (n > APR_INT64_C(86400000)) {
        return apr_psprintf(p, "%s %s: at most one day", directive, arg);
    }
    *ms = n;
    return NULL;
}

static const char *set_timeout(cmd_parms *cmd, void *dconf, const char *arg)
{
    modzmq_dir_conf *conf = dconf;
    return parse_duration(cmd->pool, MODZMQ_DIR_TIMEOUT, arg, &conf->timeout_ms);
}

/* ZmqHeartbeat off | interval [timeout] */
static const char *set_heartbeat(cmd_parms *cmd, void *dconf, const char *ivl, const char *timeout)
{
    modzmq_dir_conf *conf = dconf;
    const char *err;

    if (strcasecmp(ivl, "off") == 0) {
        if (timeout) {
            return MODZMQ_DIR_HEARTBEAT " off takes no timeout";
        }
        conf->heartbeat_ms = MODZMQ_OFF;
        conf->heartbeat_timeout_ms = 0;
        return NULL;
    }
    if ((err = parse_duration(cmd->pool, MODZMQ_DIR_HEARTBEAT, ivl, &conf->heartbeat_ms))) {
        return err;
    }
    conf->heartbeat_timeout_ms = 0;
    if (timeout) {
        if ((err = parse_duration(cmd->pool, MODZMQ_DIR_HEARTBEAT, timeout, &conf->heartbeat_timeout_ms))) {
            return err;
        }
        if (conf->heartbeat_timeout_ms <= conf->heartbeat_ms) {
            return apr_psprintf(cmd->pool, MODZMQ_DIR_HEARTBEAT " %s %s: the timeout must be longer than "
                                "the interval", ivl, timeout);
        }
    }
    return NULL;
}

static const char *parse_count(apr_pool_t *p, const char *directive, const char *arg, int max, int *out)
{
    char *end;
    long n;

    errno = 0;
    n = strtol(arg, &end, 10);
    if (errno || end == arg || *end || n < 0 || n > max) {
        return apr_psprintf(p, "%s %s: expected a whole number from 0 to %d", directive, arg, max);
    }
    *out = (int)n;
    return NULL;
}

/* ZmqRetries N [all] */
static const char *set_retries(cmd_parms *cmd, void *dconf, const char *n, const char *all)
{
    modzmq_dir_conf *conf = dconf;
    const char *err = parse_count(cmd->pool, MODZMQ_DIR_RETRIES, n, 10, &conf->retries);
    if (err) {
        return err;
    }
    if (all && strcasecmp(all, "all") != 0) {
        return apr_psprintf(cmd->pool, MODZMQ_DIR_RETRIES " %s %s: the only word allowed after the "
                            "count is \"all\" (retry every method, not only idempotent ones)", n, all);
    }
    conf->retry_all = all != NULL;
    return NULL;
}

/* A per-location limit (ZmqMaxInFlight, ZmqMaxStreams) and the counter
 * the threads of a child share for it. */
static const char *set_limit(cmd_parms *cmd, const char *directive, const char *arg, int *limit, apr_uint32_t **count)
{
    const char *err = parse_count(cmd->pool, directive, arg, 1000000, limit);
    if (err) {
        return err;
    }
    *count = apr_pcalloc(cmd->pool, sizeof(**count));
    return NULL;
}

static const char *set_max_in_flight(cmd_parms *cmd, void *dconf, const char *arg)
{
    modzmq_dir_conf *conf = dconf;
    return set_limit(cmd, MODZMQ_DIR_MAXINFLIGHT, arg, &conf->max_in_flight, &conf->in_flight);
}

static const char *set_stream_window(cmd_parms *cmd, void *dconf, const char *arg)
{
    modzmq_dir_conf *conf = dconf;
    char *end;
    apr_int64_t n;

    errno = 0;
    n = apr_strtoi64(arg, &end, 10);
    if (errno || end == arg || *end || n < 4096 || n > 64 * 1024 * 1024) {
        return apr_psprintf(cmd->pool, MODZMQ_DIR_STREAMWINDOW " %s: expected a number of bytes from 4096 to 67108864", arg);
    }
    conf->stream_window = n;
    return NULL;
}

static const char *set_stream_idle(cmd_parms *cmd, void *dconf, const char *arg)
{
    return parse_duration(cmd->pool, MODZMQ_DIR_STREAMIDLE, arg, &((modzmq_dir_conf *)dconf)->stream_idle_ms);
}

static const char *set_max_streams(cmd_parms *cmd, void *dconf, const char *arg)
{
    modzmq_dir_conf *conf = dconf;
    return set_limit(cmd, MODZMQ_DIR_MAXSTREAMS, arg, &conf->max_streams, &conf->streams);
}

static const char *set_ws_max_message(cmd_parms *cmd, void *dconf, const char *arg)
{
    modzmq_dir_conf *conf = dconf;
    char *end;
    apr_int64_t n;

    errno = 0;
    n = apr_strtoi64(arg, &end, 10);
    if (errno || end == arg || *end || n < 1 || n > 1024 * 1024 * 1024) {
        return apr_psprintf(cmd->pool, MODZMQ_DIR_WSMAXMESSAGE " %s: expected a number of bytes from 1 to 1073741824", arg);
    }
    conf->ws_max_message = n;
    return NULL;
}

/* ZmqWebSocketOrigins origin... | *: the Origins a handshake may carry
 * (scheme://host[:port], as browsers send them), or any. */
static const char *set_request_id_header(cmd_parms *cmd, void *dconf, const char *arg)
{
    modzmq_dir_conf *conf = dconf;
    if (strcasecmp(arg, "off") == 0) {
        conf->request_id_header = "";
        return NULL;
    }
    if (*arg == '\0' || *ap_scan_http_token(arg) != '\0') {
        return apr_psprintf(cmd->pool, MODZMQ_DIR_REQUESTIDHEADER " %s: a header name (letters, digits, -) or off", arg);
    }
    conf->request_id_header = arg;
    return NULL;
}

static const char *set_ws_origins(cmd_parms *cmd, void *dconf, int argc, char *const argv[])
{
    modzmq_dir_conf *conf = dconf;
    const char *list = "";
    int i;

    if (argc == 0) {
        return MODZMQ_DIR_WSORIGINS " needs at least one origin (scheme://host[:port]), or *";
    }
    if (argc == 1 && strcmp(argv[0], "*") == 0) {
        conf->ws_origins = "";
        return NULL;
    }
    for (i = 0; i < argc; i++) {
        const char *o = argv[i], *c;
        if (ap_strstr_c(o, "://") == NULL || strcmp(o, "*") == 0) {
            return apr_psprintf(cmd->pool, MODZMQ_DIR_WSORIGINS " %s: an origin is scheme://host[:port] "
                                "(as a browser's Origin header), or * alone for any", o);
        }
        for (c = o; *c; c++) {
            if ((unsigned char)*c <= 0x20 || *c == 0x7f) {
                return apr_psprintf(cmd->pool, MODZMQ_DIR_WSORIGINS " %s: no spaces or control characters", o);
            }
        }
        list = *list ? apr_pstrcat(cmd->pool, list, " ", o, NULL) : apr_pstrdup(cmd->pool, o);
    }
    conf->ws_origins = list;
    return NULL;
}

static const char *set_max_body(cmd_parms *cmd, void *dconf, const char *arg)
{
    modzmq_dir_conf *conf = dconf;
    char *end;
    apr_off_t n;

    if (apr_strtoff(&n, arg, &end, 10) != APR_SUCCESS || end == arg || *end || n < 0) {
        return apr_psprintf(cmd->pool, MODZMQ_DIR_MAXBODY " %s: expected a number of bytes, 0 for no limit", arg);
    }
    conf->max_body = n;
    return NULL;
}

static const char *set_max_reply(cmd_parms *cmd, void *dconf, const char *arg)
{
    modzmq_dir_conf *conf = dconf;
    char *end;
    apr_off_t n;

    if (apr_strtoff(&n, arg, &end, 10) != APR_SUCCESS || end == arg || *end || n < 0) {
        return apr_psprintf(cmd->pool, MODZMQ_DIR_MAXREPLY " %s: expected a number of bytes, 0 for no limit", arg);
    }
    conf->max_reply = n;
    return NULL;
}

/* Checks that path is a readable zcert certificate with the key named. The
 * children read it again after dropping root: it must stay readable by the
 * Apache User. */
static const char *check_cert(apr_pool_t *p, const char *path, const char *key)
{
    apr_file_t *f;
    char line[512];
    int found = 0;

    if (apr_file_open(&f, path, APR_FOPEN_READ, 0, p) != APR_SUCCESS) {
        return apr_psprintf(p, MODZMQ_DIR_CURVE ": cannot read %s", path);
    }
    while (!found && apr_file_gets(line, sizeof(line), f) == APR_SUCCESS) {
        const char *s = line;
        while (*s == ' ' || *s == '\t') {
            s++;
        }
        found = strncmp(s, key, strlen(key)) == 0;
    }
    apr_file_close(f);
    return found ? NULL : apr_psprintf(p, MODZMQ_DIR_CURVE ": %s has no %s: not the right zcert "
                                       "certificate (worker: its .key; bridge: its .key_secret)", path, key);
}

/* ZmqCurve SERVER_CERT CLIENT_SECRET_CERT | off */
static const char *set_curve(cmd_parms *cmd, void *dconf, const char *server, const char *client)
{
    modzmq_dir_conf *conf = dconf;
    const char *err;

    if (strcasecmp(server, "off") == 0 && client == NULL) {
        conf->curve_server_cert = conf->curve_client_cert = "";
        return NULL;
    }
    if (client == NULL) {
        return MODZMQ_DIR_CURVE " needs the worker's public certificate and the bridge's secret "
               "certificate (or off)";
    }
    server = ap_server_root_relative(cmd->pool, server);
    client = ap_server_root_relative(cmd->pool, client);
    if ((err = check_cert(cmd->pool, server, "public-key")) || (err = check_cert(cmd->pool, client, "secret-key"))) {
        return err;
    }
    conf->curve_server_cert = server;
    conf->curve_client_cert = client;
    return NULL;
}

static const char *set_library(cmd_parms *cmd, void *dconf, const char *arg)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    if (err) {
        return err;
    }
    if (*arg != '/') {
        return apr_psprintf(cmd->pool, MODZMQ_DIR_LIBRARY " %s: give an absolute path", arg);
    }
    library_path = apr_pstrdup(cmd->pool, arg);
    return NULL;
}

const command_rec modzmq_cmds[] = {
    AP_INIT_TAKE_ARGV(MODZMQ_DIR_BACKEND, set_backend, NULL, RSRC_CONF | ACCESS_CONF,
                      "ZeroMQ endpoints (tcp://host:port or ipc://path) of the workers; several are load-balanced"),
    AP_INIT_TAKE1(MODZMQ_DIR_TIMEOUT, set_timeout, NULL, RSRC_CONF | ACCESS_CONF,
                  "Time a worker has to answer, in seconds or with the suffix ms; 504 after it (default 30)"),
    AP_INIT_TAKE1(MODZMQ_DIR_MAXBODY, set_max_body, NULL, RSRC_CONF | ACCESS_CONF,
                  "Largest request body relayed, in bytes; larger ones get 413 (default 8 MiB, 0 = no limit)"),
    AP_INIT_TAKE12(MODZMQ_DIR_HEARTBEAT, set_heartbeat, NULL, RSRC_CONF | ACCESS_CONF,
                   "ZMTP heartbeat interval and optional timeout (default 1 3), or off for workers "
                   "whose ZeroMQ library does not answer PINGs"),
    AP_INIT_TAKE12(MODZMQ_DIR_RETRIES, set_retries, NULL, RSRC_CONF | ACCESS_CONF,
                   "Extra attempts for idempotent requests whose worker was unreachable or lost; "
                   "add \"all\" to retry every method (default 0)"),
    AP_INIT_TAKE1(MODZMQ_DIR_MAXINFLIGHT, set_max_in_flight, NULL, RSRC_CONF | ACCESS_CONF,
                  "Most requests in flight per location and process; more get 503 with Retry-After (default 0 = no limit)"),
    AP_INIT_TAKE1(MODZMQ_DIR_MAXREPLY, set_max_reply, NULL, RSRC_CONF | ACCESS_CONF,
                  "Largest reply accepted from a worker, in bytes; larger ones get 502 (default 64 MiB, 0 = no limit)"),
    AP_INIT_TAKE12(MODZMQ_DIR_CURVE, set_curve, NULL, RSRC_CONF | ACCESS_CONF,
                   "CurveZMQ to the workers: the worker's public certificate (.key) and the bridge's "
                   "secret certificate (.key_secret), or off"),
    AP_INIT_FLAG(MODZMQ_DIR_NOTICES, ap_set_flag_slot, (void *)APR_OFFSETOF(modzmq_dir_conf, notices), RSRC_CONF | ACCESS_CONF,
                 "on: the workers get a cancel notice when a client goes away before its reply or stream "
                 "ended (ROUTER or DEALER workers only; default off)"),
    AP_INIT_TAKE1(MODZMQ_DIR_STREAMWINDOW, set_stream_window, NULL, RSRC_CONF | ACCESS_CONF,
                  "Credit a streamed reply starts with, and the most held for one stream, in bytes (default 262144)"),
    AP_INIT_TAKE1(MODZMQ_DIR_STREAMIDLE, set_stream_idle, NULL, RSRC_CONF | ACCESS_CONF,
                  "A streamed reply with no part for this long ends abnormally (default 60)"),
    AP_INIT_TAKE1(MODZMQ_DIR_MAXSTREAMS, set_max_streams, NULL, RSRC_CONF | ACCESS_CONF,
                  "Most streamed replies open at once per location and process; more get 503 with Retry-After "
                  "(default 0 = no limit)"),
    AP_INIT_FLAG(MODZMQ_DIR_STREAMBODY, ap_set_flag_slot, (void *)APR_OFFSETOF(modzmq_dir_conf, stream_body), RSRC_CONF | ACCESS_CONF,
                 "on: request bodies go to the worker in parts as it asks for them (ROUTER or DEALER "
                 "workers only; default off)"),
    AP_INIT_FLAG(MODZMQ_DIR_WEBSOCKET, ap_set_flag_slot, (void *)APR_OFFSETOF(modzmq_dir_conf, websocket), RSRC_CONF | ACCESS_CONF,
                 "on: WebSocket handshakes (Upgrade: websocket; RFC 8441 over HTTP/2 with H2WebSockets on) go to "
                 "the workers, each message relayed both ways (ROUTER or DEALER workers only; default off)"),
    AP_INIT_TAKE1(MODZMQ_DIR_WSMAXMESSAGE, set_ws_max_message, NULL, RSRC_CONF | ACCESS_CONF,
                  "Largest WebSocket message either way, in bytes; a client's larger one closes with 1009 (default 16 MiB)"),
    AP_INIT_TAKE_ARGV(MODZMQ_DIR_WSORIGINS, set_ws_origins, NULL, RSRC_CONF | ACCESS_CONF,
                      "The Origins a WebSocket handshake may come from (scheme://host[:port] ...), or * for any "
                      "(the default); others get 403"),
    AP_INIT_TAKE1(MODZMQ_DIR_REQUESTIDHEADER, set_request_id_header, NULL, RSRC_CONF | ACCESS_CONF,
                  "A response header that carries the request id the workers saw (e.g. X-Request-Id), or off "
                  "(the default); the id is always in the notes zmq-request-id and zmq-endpoint"),
    AP_INIT_TAKE1(MODZMQ_DIR_LIBRARY, set_library, NULL, RSRC_CONF,
                  "Path of libmodzmq.so, the Go half of mod_zmq (server config only)"),
    {NULL}
};
