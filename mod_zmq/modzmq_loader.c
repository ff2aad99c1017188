/*
 * modzmq_loader.c - loading libmodzmq.so, the Go half, in each child.
 *
 * Rules (see docs/ARCHITECTURE notes in README and docs/ERRORS.md):
 *  - mod_zmq.so has no DT_NEEDED on the Go library; it is dlopen()ed in
 *    child_init, after fork and setuid, with RTLD_NODELETE, and never closed.
 *  - Asynchronous signals are blocked around dlopen and the first Go calls,
 *    so the threads Go starts never take SIGTERM/SIGHUP meant for httpd.
 *  - A pid guard refuses to use a runtime loaded in another process.
 *  - Any failure is logged once and leaves requests answering 503.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "ap_mpm.h"
#include "apr_strings.h"

#include "mod_zmq.h"

APLOG_USE_MODULE(zmq);

static struct {
    pid_t pid;             /* process that loaded the library */
    modzmq_relay_fn relay; /* NULL until loaded */
    const char *failure;   /* why relay is NULL, for request log lines */
    int *handles;          /* library handle per registry index (1-based) */
    int nhandles;
} rt;

static server_rec *log_server;

/* Log callback handed to the Go library; msg carries its own code. */
static void modzmq_log(int level, const char *msg)
{
    ap_log_error(APLOG_MARK, level, 0, log_server, "%s", msg);
}

void modzmq_loader_check(apr_pool_t *ptemp, server_rec *s)
{
    const char *path = modzmq_config_library();
    if (access(path, R_OK) != 0) {
        ap_log_error(APLOG_MARK, APLOG_ERR, errno, s,
                     "MODZMQ0001: " MODZMQ_DIR_LIBRARY " %s cannot be read; requests to "
                     "zmq locations will get 503 until it can (run make install, or "
                     "set " MODZMQ_DIR_LIBRARY ")", path);
    }
}

static void *need_symbol(void *lib, const char *name, const char **why, apr_pool_t *p)
{
    void *sym = dlsym(lib, name);
    if (sym == NULL && *why == NULL) {
        *why = apr_psprintf(p, "MODZMQ0003: %s has no symbol %s: not a mod_zmq library, "
                            "or one from another release", modzmq_config_library(), name);
    }
    return sym;
}

/* Go's threads keep only the synchronous signals the runtime needs. */
static void block_async_signals(sigset_t *old)
{
    sigset_t all;
    sigfillset(&all);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGILL);
    pthread_sigmask(SIG_BLOCK, &all, old);
}

static int go_max_procs(void)
{
    int threaded = 0;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    ap_mpm_query(AP_MPMQ_IS_THREADED, &threaded);
    if (threaded == AP_MPMQ_NOT_SUPPORTED) {
        return 1; /* prefork: one request at a time per child */
    }
    return ncpu < 1 ? 1 : (ncpu > 4 ? 4 : (int)ncpu);
}

static const char *load(apr_pool_t *p, server_rec *s)
{
    const char *path = modzmq_config_library();
    const apr_array_header_t *eps = modzmq_config_backends();
    const char *why = NULL;
    modzmq_abi_version_fn abi;
    modzmq_init_fn init;
    modzmq_backend_open_fn open_backend;
    modzmq_relay_fn relay;
    void *lib;
    int i;

    lib = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (lib == NULL) {
        return apr_psprintf(p, "MODZMQ0002: cannot load %s: %s", path, dlerror());
    }
    abi = (modzmq_abi_version_fn)need_symbol(lib, "modzmq_abi_version", &why, p);
    init = (modzmq_init_fn)need_symbol(lib, "modzmq_init", &why, p);
    open_backend = (modzmq_backend_open_fn)need_symbol(lib, "modzmq_backend_open", &why, p);
    relay = (modzmq_relay_fn)need_symbol(lib, "modzmq_relay", &why, p);
    if (why) {
        return why;
    }
    if (abi() != MODZMQ_ABI_VERSION) {
        return apr_psprintf(p, "MODZMQ0003: %s speaks ABI %d, this mod_zmq.so needs %d: "
                            "install both from the same build", path, abi(), MODZMQ_ABI_VERSION);
    }
    if (init(modzmq_log, ap_get_server_module_loglevel(s, APLOG_MODULE_INDEX), go_max_procs()) != 0) {
        return apr_psprintf(p, "MODZMQ0004: %s refused to start", path);
    }
    rt.nhandles = eps ? eps->nelts : 0;
    rt.handles = apr_pcalloc(p, (rt.nhandles + 1) * sizeof(int));
    for (i = 0; i < rt.nhandles; i++) {
        char err[256] = "";
        char *endpoints = apr_pstrdup(p, APR_ARRAY_IDX(eps, i, const char *));
        rt.handles[i + 1] = open_backend(endpoints, 0, err, sizeof(err));
        if (rt.handles[i + 1] == 0) {
            /* Only this backend's locations answer 503; the rest work. */
            ap_log_error(APLOG_MARK, APLOG_ERR, 0, s,
                         "MODZMQ0005: " MODZMQ_DIR_BACKEND " %s unusable: %s", endpoints, err);
        }
    }
    rt.relay = relay;
    return NULL;
}

void modzmq_loader_child_init(apr_pool_t *pchild, server_rec *s)
{
    sigset_t old;

    log_server = s;
    rt.pid = getpid();
    block_async_signals(&old);
    rt.failure = load(pchild, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rt.failure) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, s, "%s; requests to zmq locations get 503", rt.failure);
        return;
    }
    ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, s, "MODZMQ0006: loaded %s in child %" APR_PID_T_FMT
                 " with %d backend(s)", modzmq_config_library(), rt.pid, rt.nhandles);
}

modzmq_relay_fn modzmq_loader_relay(const char **why)
{
    if (rt.relay == NULL) {
        *why = rt.failure ? rt.failure : "MODZMQ0011: the Go library was not loaded in this process";
        return NULL;
    }
    if (getpid() != rt.pid) {
        *why = "MODZMQ0012: the Go library was loaded in another process (the parent?); "
               "only children may use it";
        return NULL;
    }
    return rt.relay;
}

int modzmq_loader_backend(int i)
{
    return (i >= 1 && i <= rt.nhandles) ? rt.handles[i] : 0;
}
