/*
 * mod_zmq.h - shared declarations of the mod_zmq C shim.
 *
 * The shim does only Apache work: directives and merging (modzmq_config.c),
 * loading the Go library after fork (modzmq_loader.c) and the request path
 * (modzmq_handler.c); mod_zmq.c holds the module record and hooks.
 */
#ifndef MOD_ZMQ_H
#define MOD_ZMQ_H

#include "httpd.h"
#include "http_config.h"
#include "apr_tables.h"

#include "golib/modzmq.h"

/* Directive names, each spelled once. */
#define MODZMQ_DIR_BACKEND "ZmqBackend"
#define MODZMQ_DIR_TIMEOUT "ZmqTimeout"
#define MODZMQ_DIR_MAXBODY "ZmqMaxBody"
#define MODZMQ_DIR_LIBRARY "ZmqLibrary"
#define MODZMQ_DIR_HEARTBEAT "ZmqHeartbeat"
#define MODZMQ_DIR_RETRIES "ZmqRetries"
#define MODZMQ_DIR_MAXINFLIGHT "ZmqMaxInFlight"
#define MODZMQ_DIR_MAXREPLY "ZmqMaxReply"
#define MODZMQ_DIR_CURVE "ZmqCurve"
#define MODZMQ_DIR_NOTICES "ZmqNotices"
#define MODZMQ_DIR_STREAMWINDOW "ZmqStreamWindow"
#define MODZMQ_DIR_STREAMIDLE "ZmqStreamIdleTimeout"
#define MODZMQ_DIR_MAXSTREAMS "ZmqMaxStreams"
#define MODZMQ_DIR_STREAMBODY "ZmqStreamBody"
#define MODZMQ_DIR_WEBSOCKET "ZmqWebSocket"
#define MODZMQ_DIR_WSMAXMESSAGE "ZmqWebSocketMaxMessage"
#define MODZMQ_DIR_WSORIGINS "ZmqWebSocketOrigins"
#define MODZMQ_DIR_REQUESTIDHEADER "ZmqRequestIdHeader"

/* The handler names SetHandler accepts. */
#define MODZMQ_HANDLER "zmq"
#define MODZMQ_STATUS_HANDLER "zmq-status"
#define MODZMQ_METRICS_HANDLER "zmq-metrics" /* zmq-status?metrics at a plain URL, for Prometheus */

/* Defaults, in one place. */
#define MODZMQ_DEFAULT_TIMEOUT_MS  30000
#define MODZMQ_DEFAULT_MAX_BODY    (8 * 1024 * 1024)
#define MODZMQ_DEFAULT_MAX_REPLY   (64 * 1024 * 1024)
#define MODZMQ_DEFAULT_STREAM_WINDOW (256 * 1024)
#define MODZMQ_DEFAULT_WS_MAX_MESSAGE (16 * 1024 * 1024)
#ifndef MODZMQ_DEFAULT_LIBRARY
#define MODZMQ_DEFAULT_LIBRARY "/usr/lib/apache2/modules/libmodzmq.so"
#endif

/* "Unset" sentinel for the numeric fields of the per-directory record. */
#define MODZMQ_UNSET (-1)
/* ZmqHeartbeat off, as the library expects it. */
#define MODZMQ_OFF (-2)

typedef struct modzmq_dir_conf {
    const char *route;       /* the <Location>/<Directory> path, or NULL */
    int backend;             /* index into the backend registry, 0 = unset */
    const char *endpoints;   /* the ZmqBackend arguments, for log lines */
    apr_int64_t timeout_ms;  /* MODZMQ_UNSET or > 0 */
    apr_off_t max_body;      /* MODZMQ_UNSET, 0 (no limit) or > 0 */
    apr_int64_t heartbeat_ms;         /* MODZMQ_UNSET, MODZMQ_OFF or > 0 */
    apr_int64_t heartbeat_timeout_ms; /* 0 = the library's default for the interval */
    int retries;                      /* MODZMQ_UNSET or >= 0 */
    int retry_all;                    /* MODZMQ_UNSET, 0 or 1 */
    int max_in_flight;                /* MODZMQ_UNSET, 0 (no limit) or > 0 */
    apr_uint32_t *in_flight;          /* shared by the threads of a child; set with max_in_flight */
    apr_off_t max_reply;              /* MODZMQ_UNSET, 0 (no limit) or > 0 */
    const char *curve_server_cert;    /* NULL = unset; "" = ZmqCurve off */
    const char *curve_client_cert;
    int notices;                      /* MODZMQ_UNSET, 0 or 1 */
    apr_int64_t stream_window;        /* MODZMQ_UNSET or bytes */
    apr_int64_t stream_idle_ms;       /* MODZMQ_UNSET or > 0 */
    int max_streams;                  /* MODZMQ_UNSET, 0 (no limit) or > 0 */
    apr_uint32_t *streams;            /* open streams, shared by the threads of a child; set with max_streams */
    int stream_body;                  /* MODZMQ_UNSET, 0 or 1 */
    int websocket;                    /* MODZMQ_UNSET, 0 or 1 */
    apr_int64_t ws_max_message;       /* MODZMQ_UNSET or bytes */
    const char *ws_origins;           /* NULL = unset; "" = any; else origins separated by spaces */
    const char *request_id_header;    /* NULL = unset; "" = off; else the response header for the request id */
} modzmq_dir_conf;

/* One ZmqBackend endpoint list and the sections that name it. */
typedef struct modzmq_backend_entry {
    const char *endpoints;
    const char *routes; /* the sections that name it, separated by spaces (post_config) */
    const char *vhosts; /* their virtual hosts, name:port, separated by spaces */
} modzmq_backend_entry;

extern module AP_MODULE_DECLARE_DATA zmq_module;

/* modzmq_config.c */
extern const command_rec modzmq_cmds[];
void *modzmq_create_dir_conf(apr_pool_t *p, char *dir);
void *modzmq_merge_dir_conf(apr_pool_t *p, void *base, void *add);
void modzmq_config_reset(apr_pool_t *pconf);
const char *modzmq_config_library(void);
const apr_array_header_t *modzmq_config_backends(void); /* of modzmq_backend_entry */
/* Clients (modzmq.h) by handle - 1, their backend a registry index. */
const apr_array_header_t *modzmq_config_clients(void); /* of modzmq_client_config */
/* Numbers the client of every section (post_config); OK, or an error logged. */
int modzmq_config_number_clients(apr_pool_t *ptemp, server_rec *s);
/* The client conf asks for, with its backend a registry index; the one
 * place where per-location options become a client's. */
void modzmq_conf_client(const modzmq_dir_conf *conf, modzmq_client_config *out);
int modzmq_same_client(const modzmq_client_config *a, const modzmq_client_config *b);
/* The handle of the client numbered at configuration, or 0. */
int modzmq_config_client(const modzmq_client_config *want);
apr_int64_t modzmq_conf_timeout_ms(const modzmq_dir_conf *conf);
apr_off_t modzmq_conf_max_body(const modzmq_dir_conf *conf);
apr_off_t modzmq_conf_max_reply(const modzmq_dir_conf *conf);
apr_int64_t modzmq_conf_ws_max_message(const modzmq_dir_conf *conf);

/* modzmq_loader.c */
void modzmq_loader_check(apr_pool_t *ptemp, server_rec *s);
void modzmq_loader_child_init(apr_pool_t *pchild, server_rec *s);
/* The library's request path. */
typedef struct modzmq_calls {
    modzmq_relay_fn relay;
    modzmq_wait_fn wait;
    modzmq_resume_fn resume;
    modzmq_release_fn release;
    modzmq_cancel_fn cancel;
    modzmq_send_body_fn send_body;
    modzmq_ws_step_fn ws_step;
    modzmq_call_info_fn call_info;
    modzmq_waits_fn waits;
    modzmq_ready_fn ready;
} modzmq_calls;
/* Returns the library's request path, or NULL with a log code and reason in *why. */
const modzmq_calls *modzmq_loader_calls(const char **why);
/* The library's handle for registry index i (1-based), or 0. */
int modzmq_loader_backend(int i);
/* The client handle for conf's backend and options: one numbered at
 * configuration, or one this child adds; 0 with a log code and reason in
 * *why when there is none. */
int modzmq_loader_client(const modzmq_dir_conf *conf, const char **why);
/* Creates the shared statistics segment (parent, post_config). */
void modzmq_stats_create(apr_pool_t *pconf, server_rec *s);
/* Counts a request refused by ZmqMaxInFlight for registry index i. */
void modzmq_stats_overload(int i);
/* Number of backend blocks in the statistics, 0 when there are none. */
int modzmq_stats_backends(void);
/* Sums all children's blocks into sums; returns the live children. */
int modzmq_stats_sum(apr_int64_t *sums);
/* The library's status renderer, or NULL if it is not loaded here. */
modzmq_status_render_fn modzmq_loader_render(void);

/* modzmq_status.c */
int modzmq_status_handler(request_rec *r);

/* modzmq_handler.c */
/* Makes the pipe that tells this child's waiting streams and WebSockets
 * that it stops (child_init), and writes to it (child_stopping). */
void modzmq_handler_child_init(apr_pool_t *pchild);
void modzmq_handler_child_stopping(int graceful);
int modzmq_handler(request_rec *r);
int modzmq_translate_name(request_rec *r);
int modzmq_map_to_storage(request_rec *r);

#endif /* MOD_ZMQ_H */
