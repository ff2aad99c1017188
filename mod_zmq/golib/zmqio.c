/*
 * zmqio.c - see zmqio.h. Built into libmodzmq.so by cgo.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "zmqio.h"
#include "zmtp.h"

_Static_assert(sizeof(zmq_msg_t) <= sizeof(modzmq_msg), "modzmq_msg must hold a zmq_msg_t");
_Static_assert(ZMTP_MAX_RECV_FRAMES <= MODZMQ_MAX_FRAMES, "a ZMTP reply fits a modzmq_response");

static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;
static void *ctx;
static int ctx_errno;

static void ctx_init(void)
{
    ctx = zmq_ctx_new();
    ctx_errno = ctx ? 0 : errno;
}

void *modzmq_dealer(const char *endpoint, int heartbeat_ms, int heartbeat_timeout_ms, int64_t max_msg_size,
                    int *stage)
{
    int zero = 0, one = 1, err;
    void *s;

    pthread_once(&ctx_once, ctx_init);
    if (ctx == NULL) {
        *stage = MODZMQ_STAGE_CONTEXT;
        errno = ctx_errno;
        return NULL;
    }
    s = zmq_socket(ctx, ZMQ_DEALER);
    if (s == NULL) {
        *stage = MODZMQ_STAGE_SOCKET;
        return NULL;
    }
    if (zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero)) != 0 ||
        zmq_setsockopt(s, ZMQ_IMMEDIATE, &one, sizeof(one)) != 0 ||
        (heartbeat_ms > 0 &&
         (zmq_setsockopt(s, ZMQ_HEARTBEAT_IVL, &heartbeat_ms, sizeof(int)) != 0 ||
          zmq_setsockopt(s, ZMQ_HEARTBEAT_TIMEOUT, &heartbeat_timeout_ms, sizeof(int)) != 0 ||
          zmq_setsockopt(s, ZMQ_HEARTBEAT_TTL, &heartbeat_timeout_ms, sizeof(int)) != 0)) ||
        (max_msg_size > 0 && zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &max_msg_size, sizeof(max_msg_size)) != 0)) {
        *stage = MODZMQ_STAGE_OPTIONS;
        goto fail;
    }
    if (zmq_connect(s, endpoint) != 0) {
        *stage = MODZMQ_STAGE_CONNECT;
        goto fail;
    }
    return s;
fail:
    err = errno;
    zmq_close(s);
    errno = err;
    return NULL;
}

int modzmq_send(void *conn, int direct, int sndtimeo_ms, int n, int last,
                const void *p0, size_t l0, const void *p1, size_t l1,
                const void *p2, size_t l2, const void *p3, size_t l3,
                const void *p4, size_t l4, const void *p5, size_t l5,
                const void *p6, size_t l6, const void *p7, size_t l7)
{
    const void *p[8] = {p0, p1, p2, p3, p4, p5, p6, p7};
    size_t l[8] = {l0, l1, l2, l3, l4, l5, l6, l7};
    void *sock = conn;
    int i;

    if (direct) {
        return last ? zmtp_send(conn, sndtimeo_ms, n, p, l) : EINVAL;
    }
    if (sndtimeo_ms >= 0 && zmq_setsockopt(sock, ZMQ_SNDTIMEO, &sndtimeo_ms, sizeof(int)) != 0) {
        return errno;
    }
    for (i = 0; i < n && i < 8; i++) {
        int flags = (last && i == n - 1) ? 0 : ZMQ_SNDMORE;
        while (zmq_send(sock, l[i] ? p[i] : "", l[i], flags) < 0) {
            if (errno != EINTR) {
                return errno;
            }
        }
    }
    return 0;
}

/* zmq_poll for up to timeout_ms, again after a signal (Go's SIGURG reaches
 * every thread that has run Go code) for the time that is left. */
int modzmq_poll_in(void *sock, int timeout_ms)
{
    zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
    struct timespec start, now;
    long left = timeout_ms;

    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int rc = zmq_poll(&item, 1, left);
        if (rc >= 0) {
            return rc > 0 && (item.revents & ZMQ_POLLIN) ? 1 : 0;
        }
        if (errno != EINTR) {
            return -errno;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        left = timeout_ms - ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000);
        if (left <= 0) {
            return 0;
        }
    }
}


int64_t modzmq_recv_frame(void *sock, modzmq_msg *m, const void **data, int *more)
{
    zmq_msg_t *msg = (zmq_msg_t *)m;
    int rc;

    zmq_msg_init(msg);
    while ((rc = zmq_msg_recv(msg, sock, ZMQ_DONTWAIT)) < 0 && errno == EINTR) {
    }
    if (rc < 0) {
        int err = errno;
        zmq_msg_close(msg);
        return -err;
    }
    *data = zmq_msg_data(msg);
    *more = zmq_msg_more(msg);
    return (int64_t)zmq_msg_size(msg);
}

void modzmq_msg_close(modzmq_msg *m) { zmq_msg_close((zmq_msg_t *)m); }

int modzmq_fd(void *sock)
{
    int fd = -1;
    size_t len = sizeof(fd);
    return zmq_getsockopt(sock, ZMQ_FD, &fd, &len) == 0 ? fd : -1;
}

void modzmq_close(void *sock) { zmq_close(sock); }

void modzmq_release(modzmq_response *resp)
{
    int i;
    if (resp->zbuf != NULL) {
        free(resp->zbuf);
        resp->zbuf = NULL;
    }
    else {
        for (i = 0; i < resp->nmsgs; i++) {
            zmq_msg_close((zmq_msg_t *)&resp->msg[i]);
        }
    }
    resp->nmsgs = 0;
    resp->nframes = 0;
    free(resp->block);
    resp->block = NULL;
}

void modzmq_zreceive(void *conn, int timeout_ms, modzmq_response *resp)
{
    int nframes;
    if (zmtp_recv(conn, timeout_ms, resp->frame, resp->frame_len, &nframes) > 0) {
        resp->nframes = nframes;
        resp->nmsgs = nframes;
        resp->zbuf = zmtp_detach(conn);
    }
    /* else nothing yet, or a failure the connection keeps for Go to meet */
}

void modzmq_receive(void *sock, modzmq_response *resp)
{
    int more = 1;

    /* A message's frames arrive together: once the first is there, all are. */
    while (more) {
        modzmq_msg scratch, *m = resp->nmsgs < MODZMQ_MAX_FRAMES ? &resp->msg[resp->nmsgs] : &scratch;
        const void *data;
        int64_t n = modzmq_recv_frame(sock, m, &data, &more);
        if (n < 0) {
            break;
        }
        if (m == &scratch) {
            modzmq_msg_close(m); /* counted, not kept: the reply is refused for its frame count */
        }
        else {
            resp->frame[resp->nmsgs] = data;
            resp->frame_len[resp->nmsgs] = (size_t)n;
            resp->nmsgs++;
        }
        resp->nframes++;
    }
}

void modzmq_wait(modzmq_response *resp)
{
    modzmq_release(resp);
    if (resp->zconn != NULL) {
        modzmq_zreceive(resp->zconn, resp->wait_ms, resp);
        return;
    }
    if (resp->socket == NULL) {
        return; /* a connection Go waits on itself (modzmq_resume) */
    }
    if (modzmq_poll_in(resp->socket, resp->wait_ms) > 0) {
        modzmq_receive(resp->socket, resp);
    }
    /* else nothing yet, or a failure modzmq_resume meets again */
}
