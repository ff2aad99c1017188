/*
 * modzmq_loader.c - loading libmodzmq.so, the Go half, in each child.
 *
 * Rules (measured before the project began; README "How it works", and
 * docs/ERRORS.md for the codes):
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
#include "apr_shm.h"
#include "apr_strings.h"

#include "mod_zmq.h"

APLOG_USE_MODULE(zmq);

static struct {
    apr_int64_t *stats;    /* shared segment: nslots slots; slot 0 keeps exited children's totals */
    int nslots, nbackends;
    apr_int64_t *slot;     /* this child's slot, or NULL */
    modzmq_status_render_fn render;
    modzmq_stats_flush_fn flush;
    pid_t pid;             /* process that loaded the library */
    modzmq_calls calls;    /* relay is NULL until loaded */
    const char *failure;   /* why relay is NULL, for request log lines */
    int *handles;          /* library handle per registry index (1-based) */
    int nhandles;
    modzmq_clients_open_fn open_clients;
    /* Clients after those numbered at configuration: added by this child
     * for merged options no single section has (modzmq_loader_client). */
    pthread_mutex_t added_mu;
    modzmq_client_config *added; /* MODZMQ_MAX_CLIENTS entries, the first nconfigured unused */
    int nconfigured, nclients;   /* atomic nclients: handles 1 .. nclients exist */
    apr_pool_t *pool;            /* the child's, for added clients' strings */
} rt = {.added_mu = PTHREAD_MUTEX_INITIALIZER};

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

/* GOMAXPROCS for a child. Every Apache thread that enters Go needs a P; with
 * too few, threads queue for them and the Go scheduler hands Ps around on
 * every request (measured: 2 Ps for 32 busy threads ran at 0.7x of 8-16 Ps);
 * with too many, idle Ps cost GC work. An eighth of ThreadsPerChild, at
 * least the CPU count and at most 8 (on 2 cores, one child of 64 threads at
 * 32 connections: 2 Ps 7.6k req/s, 4 Ps 10.2k, 8 Ps 10.7k, 64 Ps 7.7k). */
static int go_max_procs(void)
{
    int threaded = 0, threads = 0, n;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    ap_mpm_query(AP_MPMQ_IS_THREADED, &threaded);
    if (threaded == AP_MPMQ_NOT_SUPPORTED) {
        return 1; /* prefork: one request at a time per child */
    }
    ap_mpm_query(AP_MPMQ_MAX_THREADS, &threads);
    n = threads / 8;
    if (n < ncpu) {
        n = (int)ncpu;
    }
    return n < 1 ? 1 : (n > 8 ? 8 : n);
}

/* ---- shared statistics ----------------------------------------------- */

static size_t slot_words(void)
{
    return MODZMQ_STATS_HEADER + (size_t)rt.nbackends * MODZMQ_STATS_BACKEND;
}

void modzmq_stats_create(apr_pool_t *pconf, server_rec *s)
{
    const apr_array_header_t *eps = modzmq_config_backends();
    apr_shm_t *shm;
    apr_status_t rv;
    int limit = 0;

    rt.stats = NULL;
    rt.nbackends = eps ? eps->nelts : 0;
    if (rt.nbackends == 0) {
        return;
    }
    ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &limit);
    rt.nslots = (limit > 0 ? limit : 16) + 1;
    /* The slots, then one word per backend: the child watching it. */
    rv = apr_shm_create(&shm, ((apr_size_t)rt.nslots * slot_words() + (apr_size_t)rt.nbackends) * sizeof(apr_int64_t),
                        NULL, pconf);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, rv, s, "MODZMQ0021: cannot create shared memory for statistics; "
                     "zmq-status will show nothing");
        return;
    }
    rt.stats = apr_shm_baseaddr_get(shm);
    memset(rt.stats, 0, ((apr_size_t)rt.nslots * slot_words() + (apr_size_t)rt.nbackends) * sizeof(apr_int64_t));
}

static apr_int64_t *slot_at(int i) { return rt.stats + (size_t)i * slot_words(); }

static int alive(apr_int64_t pid) { return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM); }

/* The child's pool cleanup: what the child counted since the library's
 * last publish goes into its slot before it exits (a child that served its
 * MaxConnectionsPerChild, or was reaped as a spare). prefork also destroys
 * the pool from its SIGTERM and SIGHUP handler, where calling into Go
 * crashes the child; there, with the signal blocked as its handler runs,
 * the flush is skipped (a stop or restart, after which the counts start
 * again anyway). */
static apr_status_t flush_stats(void *unused)
{
    sigset_t now;
    (void)unused;
    if (pthread_sigmask(SIG_BLOCK, NULL, &now) == 0 && !sigismember(&now, SIGTERM) && !sigismember(&now, SIGHUP)) {
        rt.flush();
    }
    return APR_SUCCESS;
}

/* Takes a free slot, or one whose child has exited after folding its totals
 * into slot 0. Returns 0 when there is none. */
static int claim_slot(void)
{
    int i;
    size_t j;

    rt.slot = NULL;
    if (rt.stats == NULL) {
        return 0;
    }
    for (i = 1; i < rt.nslots; i++) {
        apr_int64_t *slot = slot_at(i);
        apr_int64_t owner = __atomic_load_n(&slot[0], __ATOMIC_ACQUIRE);
        if (owner != 0 && alive(owner)) {
            continue;
        }
        if (!__atomic_compare_exchange_n(&slot[0], &owner, (apr_int64_t)getpid(), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            continue;
        }
        for (j = 0; j < (size_t)rt.nbackends * MODZMQ_STATS_BACKEND; j++) {
            apr_int64_t *f = &slot[MODZMQ_STATS_HEADER + j];
            apr_int64_t v = __atomic_exchange_n(f, 0, __ATOMIC_ACQ_REL);
            if (owner != 0 && v != 0 && !MODZMQ_STATS_IS_GAUGE(j % MODZMQ_STATS_BACKEND)) {
                __atomic_add_fetch(&slot_at(0)[MODZMQ_STATS_HEADER + j], v, __ATOMIC_RELAXED);
            }
        }
        rt.slot = slot;
        return 1;
    }
    return 0;
}

void modzmq_stats_overload(int i)
{
    if (rt.slot && i >= 1 && i <= rt.nbackends) {
        __atomic_add_fetch(&rt.slot[MODZMQ_STATS_HEADER + (size_t)(i - 1) * MODZMQ_STATS_BACKEND + MODZMQ_STATS_OFF_OVERLOADS],
                           1, __ATOMIC_RELAXED);
    }
}

/* Sums every slot's blocks into sums (nbackends blocks); gauges only from
 * live children. Returns the number of live children. */
int modzmq_stats_sum(apr_int64_t *sums)
{
    int i, live = 0;
    size_t j, n = (size_t)rt.nbackends * MODZMQ_STATS_BACKEND;

    memset(sums, 0, n * sizeof(*sums));
    for (i = 0; i < rt.nslots; i++) {
        apr_int64_t *slot = slot_at(i);
        int up = i > 0 && alive(__atomic_load_n(&slot[0], __ATOMIC_ACQUIRE));
        if (i > 0 && slot[0] == 0) {
            continue;
        }
        live += up;
        for (j = 0; j < n; j++) {
            if (up || !MODZMQ_STATS_IS_GAUGE(j % MODZMQ_STATS_BACKEND)) {
                sums[j] += __atomic_load_n(&slot[MODZMQ_STATS_HEADER + j], __ATOMIC_RELAXED);
            }
        }
    }
    return live;
}

int modzmq_stats_backends(void) { return rt.stats ? rt.nbackends : 0; }

modzmq_status_render_fn modzmq_loader_render(void) { return rt.calls.relay && getpid() == rt.pid ? rt.render : NULL; }

/* ---- clients ------------------------------------------------------------ */

/* c with its backend, a registry index, replaced by the library's handle. */
static modzmq_client_config library_client(const modzmq_client_config *c)
{
    modzmq_client_config out = *c;
    out.backend = modzmq_loader_backend(c->backend);
    return out;
}

/* Makes every client numbered at configuration, in one call: their first
 * waits for their endpoints run side by side. */
static const char *open_configured_clients(apr_pool_t *p)
{
    const apr_array_header_t *cs = modzmq_config_clients();
    modzmq_client_config *cfg;
    int i, n = cs ? cs->nelts : 0;

    rt.pool = p;
    rt.added = apr_pcalloc(p, MODZMQ_MAX_CLIENTS * sizeof(*rt.added));
    rt.nconfigured = rt.nclients = n;
    if (n == 0) {
        return NULL;
    }
    cfg = apr_palloc(p, (apr_size_t)n * sizeof(*cfg));
    for (i = 0; i < n; i++) {
        cfg[i] = library_client(&APR_ARRAY_IDX(cs, i, modzmq_client_config));
    }
    if (rt.open_clients(1, n, cfg) != 0) {
        return apr_psprintf(p, "MODZMQ0004: %s refused the configuration's %d client(s)", modzmq_config_library(), n);
    }
    return NULL;
}

int modzmq_loader_client(const modzmq_dir_conf *conf, const char **why)
{
    modzmq_client_config want, lib;
    int h, n;

    modzmq_conf_client(conf, &want);
    if ((h = modzmq_config_client(&want)) != 0) {
        return h;
    }
    /* Sections that nest, each setting some options: rare, and added once
     * per child. */
    n = __atomic_load_n(&rt.nclients, __ATOMIC_ACQUIRE);
    for (h = rt.nconfigured + 1; h <= n; h++) {
        if (modzmq_same_client(&rt.added[h - 1], &want)) {
            return h;
        }
    }
    pthread_mutex_lock(&rt.added_mu);
    for (h = rt.nconfigured + 1; h <= rt.nclients; h++) {
        if (modzmq_same_client(&rt.added[h - 1], &want)) {
            pthread_mutex_unlock(&rt.added_mu);
            return h;
        }
    }
    if (rt.nclients >= MODZMQ_MAX_CLIENTS) {
        pthread_mutex_unlock(&rt.added_mu);
        *why = "MODZMQ0008: this child has made the most clients it may (" MODZMQ_DIR_BACKEND
               " and option sets merged from nested sections)";
        return 0;
    }
    h = rt.nclients + 1;
    if (want.curve_server_cert) {
        want.curve_server_cert = apr_pstrdup(rt.pool, want.curve_server_cert);
        want.curve_client_cert = apr_pstrdup(rt.pool, want.curve_client_cert);
    }
    lib = library_client(&want);
    if (rt.open_clients(h, 1, &lib) != 0) {
        pthread_mutex_unlock(&rt.added_mu);
        *why = "MODZMQ0008: the library refused a client for options merged from nested sections";
        return 0;
    }
    rt.added[h - 1] = want;
    __atomic_store_n(&rt.nclients, h, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&rt.added_mu);
    return h;
}

/* ---- loading ------------------------------------------------------------ */

static const char *load(apr_pool_t *p, server_rec *s)
{
    const char *path = modzmq_config_library();
    const apr_array_header_t *eps = modzmq_config_backends();
    const char *why = NULL;
    modzmq_abi_version_fn abi;
    modzmq_init_fn init;
    modzmq_backend_open_fn open_backend;
    modzmq_calls calls;
    modzmq_stats_attach_fn attach;
    void *lib;
    int i;

    lib = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (lib == NULL) {
        return apr_psprintf(p, "MODZMQ0002: cannot load %s: %s", path, dlerror());
    }
    abi = (modzmq_abi_version_fn)need_symbol(lib, "modzmq_abi_version", &why, p);
    init = (modzmq_init_fn)need_symbol(lib, "modzmq_init", &why, p);
    open_backend = (modzmq_backend_open_fn)need_symbol(lib, "modzmq_backend_open", &why, p);
    calls.relay = (modzmq_relay_fn)need_symbol(lib, "modzmq_relay", &why, p);
    calls.wait = (modzmq_wait_fn)need_symbol(lib, "modzmq_wait", &why, p);
    calls.resume = (modzmq_resume_fn)need_symbol(lib, "modzmq_resume", &why, p);
    calls.release = (modzmq_release_fn)need_symbol(lib, "modzmq_release", &why, p);
    calls.cancel = (modzmq_cancel_fn)need_symbol(lib, "modzmq_cancel", &why, p);
    calls.send_body = (modzmq_send_body_fn)need_symbol(lib, "modzmq_send_body", &why, p);
    calls.ws_step = (modzmq_ws_step_fn)need_symbol(lib, "modzmq_ws_step", &why, p);
    calls.call_info = (modzmq_call_info_fn)need_symbol(lib, "modzmq_call_info", &why, p);
    calls.waits = (modzmq_waits_fn)need_symbol(lib, "modzmq_waits", &why, p);
    calls.ready = (modzmq_ready_fn)need_symbol(lib, "modzmq_ready", &why, p);
    rt.open_clients = (modzmq_clients_open_fn)need_symbol(lib, "modzmq_clients_open", &why, p);
    attach = (modzmq_stats_attach_fn)need_symbol(lib, "modzmq_stats_attach", &why, p);
    rt.render = (modzmq_status_render_fn)need_symbol(lib, "modzmq_status_render", &why, p);
    rt.flush = (modzmq_stats_flush_fn)need_symbol(lib, "modzmq_stats_flush", &why, p);
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
        const modzmq_backend_entry *e = &APR_ARRAY_IDX(eps, i, modzmq_backend_entry);
        char *endpoints = apr_pstrdup(p, e->endpoints);
        rt.handles[i + 1] = open_backend(endpoints, apr_pstrdup(p, e->routes ? e->routes : ""),
                                         apr_pstrdup(p, e->vhosts ? e->vhosts : ""), 0, err, sizeof(err));
        if (rt.handles[i + 1] == 0) {
            /* Only this backend's locations answer 503; the rest work. */
            ap_log_error(APLOG_MARK, APLOG_ERR, 0, s,
                         "MODZMQ0005: " MODZMQ_DIR_BACKEND " %s unusable: %s", endpoints, err);
        }
    }
    if ((why = open_configured_clients(p)) != NULL) {
        return why;
    }
    rt.calls = calls;
    if (claim_slot() && rt.nbackends == rt.nhandles) {
        attach(rt.slot, rt.nbackends, rt.stats + (size_t)rt.nslots * slot_words());
        apr_pool_cleanup_register(p, NULL, flush_stats, apr_pool_cleanup_null);
    }
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
                 " with %d backend(s) and %d client(s)", modzmq_config_library(), rt.pid, rt.nhandles, rt.nclients);
}

const modzmq_calls *modzmq_loader_calls(const char **why)
{
    if (rt.calls.relay == NULL) {
        *why = rt.failure ? rt.failure : "MODZMQ0011: the Go library was not loaded in this process";
        return NULL;
    }
    if (getpid() != rt.pid) {
        *why = "MODZMQ0012: the Go library was loaded in another process (the parent?); "
               "only children may use it";
        return NULL;
    }
    return &rt.calls;
}

int modzmq_loader_backend(int i)
{
    return (i >= 1 && i <= rt.nhandles) ? rt.handles[i] : 0;
}
