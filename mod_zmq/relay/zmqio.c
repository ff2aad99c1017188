/*
 * zmqio.c - see zmqio.h. Built into libmodzmq.so by cgo.
 */
#include <poll.h>
#include <stdlib.h>

#include "zmqio.h"
#include "zmtp.h"

_Static_assert(ZMTP_MAX_RECV_FRAMES <= MODZMQ_MAX_FRAMES, "a ZMTP reply fits a modzmq_response");

int modzmq_send(void *conn, int timeout_ms, int n,
                const void *p0, size_t l0, const void *p1, size_t l1,
                const void *p2, size_t l2, const void *p3, size_t l3,
                const void *p4, size_t l4, const void *p5, size_t l5,
                const void *p6, size_t l6, const void *p7, size_t l7)
{
    const void *p[8] = {p0, p1, p2, p3, p4, p5, p6, p7};
    size_t l[8] = {l0, l1, l2, l3, l4, l5, l6, l7};

    return zmtp_send(conn, timeout_ms, n, p, l);
}

void modzmq_release(modzmq_response *resp)
{
    modzmq_call *st = MODZMQ_CALL(resp);
    free(st->zbuf);
    st->zbuf = NULL;
    st->nframes = 0;
    st->delivered = 0;
    free(st->block);
    st->block = NULL;
}

int modzmq_call_info(const modzmq_response *resp, const char **id, size_t *id_len, int *endpoint)
{
    const modzmq_call *st = (const modzmq_call *)(const void *)resp->state.bytes;
    if (st->id_len == 0 || st->id_len > sizeof(st->id)) {
        return 0;
    }
    *id = st->id;
    *id_len = st->id_len;
    *endpoint = st->endpoint;
    return 1;
}

int modzmq_waits(const modzmq_response *resp)
{
    return ((const modzmq_call *)(const void *)resp->state.bytes)->zconn != NULL;
}

int modzmq_zreceive(void *conn, int timeout_ms, modzmq_response *resp)
{
    modzmq_call *st = MODZMQ_CALL(resp);
    int nframes, rc = zmtp_recv(conn, timeout_ms, st->frame, st->frame_len, &nframes);
    if (rc > 0) {
        st->nframes = nframes;
        st->delivered = 0;
        if (!st->keep) {
            st->zbuf = zmtp_detach(conn);
        }
    }
    /* else nothing yet (0), or a failure the connection keeps for Go to
     * meet (< 0) */
    return rc;
}

/* How many times an endpoint of this process began a new epoch. */
static uint64_t epochs;

void modzmq_epochs_bump(void)
{
    __atomic_add_fetch(&epochs, 1, __ATOMIC_SEQ_CST);
}

void modzmq_set_due(modzmq_response *resp, int64_t due_ms)
{
    modzmq_call *st = MODZMQ_CALL(resp);
    st->due_ms = due_ms < 0 ? 0 : zmtp_now_ms() + due_ms + 1;
    st->epochs = __atomic_load_n(&epochs, __ATOMIC_SEQ_CST);
}

static int epochs_moved(const modzmq_call *st)
{
    return __atomic_load_n(&epochs, __ATOMIC_SEQ_CST) != st->epochs;
}

int modzmq_go_first(const modzmq_response *resp, int64_t now)
{
    const modzmq_call *st = (const modzmq_call *)(const void *)resp->state.bytes;
    return st->zconn == NULL || zmtp_failed(st->zconn) || now >= st->due_ms || epochs_moved(st);
}

/* The longest modzmq_wait waits while the caller's descriptors watch its
 * client: how late a quiet call notices a worker lost to the watch (a new
 * epoch). */
#define WATCHED_SLICE_MS 1000

/* Waits up to timeout_ms for input on the connection's descriptor zfd or
 * for one of resp's wake descriptors: 1 when zfd has something. */
static int wait_input(const modzmq_response *resp, int zfd, int timeout_ms)
{
    struct pollfd p[3];
    int i, n = 1;

    p[0].fd = zfd;
    p[0].events = POLLIN;
    p[0].revents = 0;
    for (i = 0; i < 2; i++) {
        if (resp->wake[i].events != 0 && resp->wake[i].fd >= 0) {
            p[n].fd = resp->wake[i].fd;
            p[n].events = resp->wake[i].events;
            p[n].revents = 0;
            n++;
        }
    }
    return poll(p, (nfds_t)n, timeout_ms) > 0 && p[0].revents != 0;
}

/* modzmq_wait, or with block 0 modzmq_ready: the same without waiting. */
static int wait_call(modzmq_response *resp, int block)
{
    modzmq_call *st = MODZMQ_CALL(resp);
    modzmq_release(resp);
    if (st->zconn != NULL) {
        /* What is there, else what comes before the deadline (the call due
         * while the caller's client is watched, else wait_ms), read as it
         * arrives, until a wake descriptor is ready. */
        int64_t now = zmtp_now_ms(), deadline = now + st->wait_ms;
        int rc;
        if (!block) {
            deadline = now;
        }
        else if (st->due_ms != 0 && resp->wake[0].events != 0) {
            deadline = st->due_ms < now + WATCHED_SLICE_MS ? st->due_ms : now + WATCHED_SLICE_MS;
        }
        rc = modzmq_zreceive(st->zconn, -1, resp);
        while (rc == 0 && (now = zmtp_now_ms()) < deadline &&
               wait_input(resp, zmtp_fd(st->zconn), (int)(deadline - now))) {
            rc = modzmq_zreceive(st->zconn, -1, resp);
        }
        if (rc != 0) {
            return 1; /* a message, or a failure */
        }
    }
    /* Nothing came (or the connection is one Go waits on itself): Go's
     * step has nothing to do unless the call is due or a worker was lost
     * somewhere (Go looks whether it was the call's). */
    return st->due_ms == 0 || zmtp_now_ms() >= st->due_ms || epochs_moved(st);
}

int modzmq_wait(modzmq_response *resp)
{
    return wait_call(resp, 1);
}

int modzmq_ready(modzmq_response *resp)
{
    return wait_call(resp, 0);
}
