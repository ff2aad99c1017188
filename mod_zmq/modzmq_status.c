/*
 * modzmq_status.c - SetHandler zmq-status: per backend and endpoint, the
 * totals of all Apache children (from shared memory), as text, ?json, or
 * ?metrics (Prometheus text format); SetHandler zmq-metrics: the metrics at
 * the location itself, the URL Prometheus scrapes with a plain metrics_path.
 * Protect both like server-status.
 */
#include <stdlib.h>
#include <string.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "http_protocol.h"
#include "apr_buckets.h"
#include "apr_strings.h"

#include "mod_zmq.h"

APLOG_USE_MODULE(zmq);

static void free_text(void *p) { free(p); }

int modzmq_status_handler(request_rec *r)
{
    modzmq_status_render_fn render;
    apr_bucket_brigade *bb;
    apr_int64_t *sums;
    char *text = NULL;
    size_t len = 0;
    int n, live, metrics_handler, format = MODZMQ_STATUS_TEXT;
    const char *type = "text/plain; charset=utf-8";

    if (r->handler == NULL) {
        return DECLINED;
    }
    metrics_handler = strcmp(r->handler, MODZMQ_METRICS_HANDLER) == 0;
    if (!metrics_handler && strcmp(r->handler, MODZMQ_STATUS_HANDLER) != 0) {
        return DECLINED;
    }
    if (r->method_number != M_GET) {
        return HTTP_METHOD_NOT_ALLOWED;
    }
    /* zmq-metrics ignores the query: a scraper may add parameters. */
    if (metrics_handler || (r->args && strcmp(r->args, "metrics") == 0)) {
        format = MODZMQ_STATUS_METRICS;
        type = "text/plain; version=0.0.4; charset=utf-8";
    }
    else if (r->args && strcmp(r->args, "json") == 0) {
        format = MODZMQ_STATUS_JSON;
        type = "application/json";
    }
    render = modzmq_loader_render();
    n = modzmq_stats_backends();
    if (render == NULL || n == 0) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "MODZMQ0022: %s has nothing to show: %s", r->handler,
                      render ? "no ZmqBackend is configured" : "the Go library is not loaded in this process");
        return HTTP_SERVICE_UNAVAILABLE;
    }
    sums = apr_palloc(r->pool, (apr_size_t)n * MODZMQ_STATS_BACKEND * sizeof(*sums));
    live = modzmq_stats_sum(sums);
    if (render(format, sums, n, live, &text, &len) != 0 || text == NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "MODZMQ0023: rendering zmq-status failed");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    ap_set_content_type(r, type);
    ap_set_content_length(r, len);
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    bb = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    if (!r->header_only && len) {
        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_heap_create(text, len, free_text, r->connection->bucket_alloc));
    }
    else {
        free(text);
    }
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_eos_create(r->connection->bucket_alloc));
    ap_pass_brigade(r->output_filters, bb);
    return OK;
}
