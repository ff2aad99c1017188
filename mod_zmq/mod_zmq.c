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
#include "mpm_common.h"
#include "http_core.h"
#include "http_request.h"

#include "apr_strings.h"

#include <elf.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

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

/* Why path cannot be ZmqLibrary: not readable, or not a shared library for
 * this machine's word size; NULL when it may be. The parent never loads the
 * library (see above), so this reads its ELF header only. */
static const char *library_problem(apr_pool_t *p, const char *path)
{
    unsigned char h[EI_NIDENT + 2];
    unsigned type;
    size_t n;
    FILE *f = fopen(path, "rb");

    if (f == NULL) {
        return apr_psprintf(p, "cannot be read (%s)", strerror(errno));
    }
    n = fread(h, 1, sizeof(h), f);
    fclose(f);
    if (n < sizeof(h) || memcmp(h, ELFMAG, SELFMAG) != 0) {
        return "is not an ELF shared library";
    }
    if (h[EI_CLASS] != (sizeof(void *) == 8 ? ELFCLASS64 : ELFCLASS32)) {
        return "is a library for another word size than this httpd";
    }
    type = h[EI_DATA] == ELFDATA2MSB ? (unsigned)h[EI_NIDENT] << 8 | h[EI_NIDENT + 1]
                                     : (unsigned)h[EI_NIDENT + 1] << 8 | h[EI_NIDENT];
    if (type != ET_DYN) {
        return "is an ELF file but not a shared library";
    }
    return NULL;
}

/* apachectl configtest (and so Debian's apache2ctl restart and graceful,
 * which run it first) fails on a ZmqLibrary that children could not load.
 * A normal start only warns (MODZMQ0001): zmq locations then answer 503. */
static int modzmq_check_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    const char *why;

    if (ap_state_query(AP_SQ_RUN_MODE) != AP_SQ_RM_CONFIG_TEST) {
        return OK;
    }
    why = library_problem(ptemp, modzmq_config_library());
    if (why != NULL) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, 0, NULL,
                     "MODZMQ0027: " MODZMQ_DIR_LIBRARY " %s %s: children could not load it, and every zmq "
                     "location would answer 503. Install libmodzmq.so there (make install, or the "
                     "libapache2-mod-zmq package), or point " MODZMQ_DIR_LIBRARY " at it",
                     modzmq_config_library(), why);
        return !OK;
    }
    return OK;
}

static void modzmq_child_init(apr_pool_t *pchild, server_rec *s)
{
    modzmq_handler_child_init(pchild);
    modzmq_loader_child_init(pchild, s);
}

#if AP_MODULE_MAGIC_AT_LEAST(20120211, 110)
/* The event and worker MPMs say when a child begins to stop; without the
 * hook (prefork, older httpd) streams see it within a second. */
static void modzmq_child_stopping(apr_pool_t *pchild, int graceful)
{
    (void)pchild;
    modzmq_handler_child_stopping(graceful);
}
#endif

static void modzmq_register_hooks(apr_pool_t *p)
{
    ap_hook_pre_config(modzmq_pre_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_check_config(modzmq_check_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(modzmq_post_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(modzmq_child_init, NULL, NULL, APR_HOOK_MIDDLE);
#if AP_MODULE_MAGIC_AT_LEAST(20120211, 110)
    ap_hook_child_stopping(modzmq_child_stopping, NULL, NULL, APR_HOOK_MIDDLE);
#endif
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
