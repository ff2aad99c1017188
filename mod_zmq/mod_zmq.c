/*
 * mod_zmq.c - module record and hooks.
 *
 * mod_zmq relays HTTP requests to ZeroMQ workers. The Go library that speaks
 * ZeroMQ is loaded in each child after fork (see modzmq_loader.c), never in
 * the parent: a Go runtime started before httpd's daemonising fork hangs.
 */
#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "ap_mpm.h"
#include "http_core.h"
#include "http_request.h"

#include "mod_zmq.h"

static int modzmq_pre_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp)
{
    modzmq_config_reset(pconf);
    return OK;
}

static int modzmq_post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    /* The first pass only checks syntax; validate once, on the real one. */
    if (ap_state_query(AP_SQ_MAIN_STATE) != AP_SQ_MS_CREATE_PRE_CONFIG) {
        modzmq_loader_check(ptemp, s);
        modzmq_stats_create(pconf, s);
    }
    return modzmq_config_number_clients(ptemp, s);
}

static void modzmq_child_init(apr_pool_t *pchild, server_rec *s)
{
    modzmq_loader_child_init(pchild, s);
}

static void modzmq_register_hooks(apr_pool_t *p)
{
    ap_hook_pre_config(modzmq_pre_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(modzmq_post_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(modzmq_child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_translate_name(modzmq_translate_name, NULL, NULL, APR_HOOK_LAST);
    ap_hook_map_to_storage(modzmq_map_to_storage, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(modzmq_handler, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(modzmq_status_handler, NULL, NULL, APR_HOOK_MIDDLE);
}

AP_DECLARE_MODULE(zmq) = {
    STANDARD20_MODULE_STUFF,
    modzmq_create_dir_conf,
    modzmq_merge_dir_conf,
    NULL,
    NULL,
    modzmq_cmds,
    modzmq_register_hooks,
    AP_MODULE_FLAG_NONE
};
