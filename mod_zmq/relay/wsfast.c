/*
 * wsfast.c - see wsfast.h. Built into libmodzmq.so by cgo.
 */
#include <string.h>

#include "fast.h"
#include "wsfast.h"
#include "zmqio.h"
#include "zmtp.h"

size_t modzmq_ws_frame(const unsigned char *b, size_t n, int64_t max, int *opcode, size_t *off, size_t *len,
                       unsigned char key[4])
{
    size_t hdr = 2;
    uint64_t plen;
    int i;

    if (n < 2 || (b[0] & 0xf0) != 0x80 || ((b[0] & 0x0f) != 1 && (b[0] & 0x0f) != 2) || !(b[1] & 0x80)) {
        return 0;
    }
    plen = b[1] & 0x7f;
    if (plen == 126) {
        if (n < 4) {
            return 0;
        }
        plen = (uint64_t)b[2] << 8 | b[3];
        hdr = 4;
    }
    else if (plen == 127) {
        if (n < 10) {
            return 0;
        }
        for (plen = 0, i = 0; i < 8; i++) {
            plen = plen << 8 | b[2 + i];
        }
        hdr = 10;
    }
    if (max < 0 || plen > (uint64_t)max || n < hdr + 4 || plen > n - hdr - 4) {
        return 0;
    }
    memcpy(key, b + hdr, 4);
    *opcode = b[0] & 0x0f;
    *off = hdr + 4;
    *len = (size_t)plen;
    return hdr + 4 + (size_t)plen;
}

void modzmq_ws_mask(unsigned char *p, size_t n, const unsigned char key[4])
{
    size_t i = 0;
    uint64_t k8;
    unsigned char k[8];

    for (; i < 8; i++) {
        k[i] = key[i % 4];
    }
    memcpy(&k8, k, 8);
    for (i = 0; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        v ^= k8;
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++) {
        p[i] ^= key[i % 4];
    }
}

int modzmq_utf8_valid(const unsigned char *p, size_t n)
{
    size_t i = 0;

    while (i < n) {
        unsigned char c = p[i];
        unsigned char lo = 0x80, hi = 0xbf;
        size_t need;
        if (c < 0x80) {
            /* ASCII, eight bytes at a time where it can */
            uint64_t v;
            if (i + 8 <= n && (memcpy(&v, p + i, 8), (v & 0x8080808080808080ULL) == 0)) {
                i += 8;
            }
            else {
                i++;
            }
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        }
        else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0) {
                lo = 0xa0; /* no overlong forms */
            }
            else if (c == 0xed) {
                hi = 0x9f; /* no surrogates */
            }
        }
        else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0) {
                lo = 0x90;
            }
            else if (c == 0xf4) {
                hi = 0x8f; /* nothing past U+10FFFF */
            }
        }
        else {
            return 0;
        }
        if (n - i <= need || p[i + 1] < lo || p[i + 1] > hi) {
            return 0;
        }
        for (size_t k = 2; k <= need; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return 0;
            }
        }
        i += need + 1;
    }
    return 1;
}

size_t modzmq_ws_header(unsigned char *dst, int opcode, uint64_t n)
{
    int k;

    dst[0] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        dst[1] = (unsigned char)n;
        return 2;
    }
    if (n <= 0xffff) {
        dst[1] = 126;
        dst[2] = (unsigned char)(n >> 8);
        dst[3] = (unsigned char)n;
        return 4;
    }
    dst[1] = 127;
    for (k = 0; k < 8; k++) {
        dst[2 + k] = (unsigned char)(n >> (56 - 8 * k));
    }
    return 10;
}

int modzmq_ws_credit(const char *p, size_t n, int64_t *v)
{
    int64_t x = 0;
    size_t i;

    if (n == 0 || n > 13) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return 0;
        }
        x = x * 10 + (p[i] - '0');
    }
    if (x > MODZMQ_MAX_CREDIT) {
        return 0;
    }
    *v = x;
    return 1;
}

/* The frames of a message the bridge sends for a call in progress
 * (modzmq_control_frames). */
#define CONTROL_FRAMES 8
#if CONTROL_FRAMES > ZMTP_MAX_FRAMES
#error "a control message has more frames than zmtp_send writes"
#endif

/* Client messages on their way to the worker, sent together: each as
 * bridge.WebSocket.Send sends it. */
typedef struct ws_batch {
    int         n;
    int64_t     bytes;                      /* their payloads' */
    char        meta[MODZMQ_CONTROL_META];  /* the same for every message of the WebSocket */
    const void *f[ZMTP_MAX_BATCH * CONTROL_FRAMES];
    size_t      l[ZMTP_MAX_BATCH * CONTROL_FRAMES];
} ws_batch;

static void batch_add(ws_batch *b, const modzmq_call *st, int opcode, const unsigned char *p, size_t n)
{
    modzmq_control_frames(st->id, st->id_len, opcode == 1 ? "@text" : "@binary", "", 0, p, n, b->meta,
                          b->f + CONTROL_FRAMES * b->n, b->l + CONTROL_FRAMES * b->n);
    b->n++;
    b->bytes += (int64_t)n;
}

/* Sends what b holds in one write and counts it: 0 or an errno value (the
 * connection is then broken: Go's step meets it). */
static int batch_send(ws_batch *b, modzmq_call *st)
{
    int nmsg = b->n, rc;
    int64_t bytes = b->bytes;

    b->n = 0;
    b->bytes = 0;
    if (nmsg == 0) {
        return 0;
    }
    rc = zmtp_send_batch(st->zconn, st->ws.send_timeout_ms, nmsg, CONTROL_FRAMES, b->f, b->l);
    if (rc == 0) {
        modzmq_fast_count(st->ws.fast, MODZMQ_STATS_OFF_STREAMS + MODZMQ_ST_BODY_PARTS, nmsg);
        modzmq_fast_count(st->ws.fast, MODZMQ_STATS_OFF_STREAMS + MODZMQ_ST_BODY_BYTES, bytes);
    }
    return rc;
}

/* What the worker's message modzmq_wait received is to the C step: 0 Go's
 * (anything but what follows, and a close); 1 a credit of *n; 2 a text
 * (*opcode 1) or binary (2) message within the credit and the limit. */
static int worker_kind(const modzmq_call *st, int *opcode, int64_t *n)
{
    const modzmq_ws_lent *w = &st->ws;
    const char *const *f = st->frame;
    const size_t *l = st->frame_len;

    if (st->nframes != 4 || l[0] != st->id_len || memcmp(f[0], st->id, st->id_len) != 0 || l[1] != 0) {
        return 0;
    }
    if (l[2] == 7 && memcmp(f[2], "@credit", 7) == 0) {
        return modzmq_ws_credit(f[3], l[3], n) ? 1 : 0;
    }
    if (l[2] == 5 && memcmp(f[2], "@text", 5) == 0) {
        *opcode = 1;
    }
    else if (l[2] == 7 && memcmp(f[2], "@binary", 7) == 0) {
        *opcode = 2;
    }
    else {
        return 0;
    }
    if ((int64_t)l[3] > w->max || (int64_t)l[3] + MODZMQ_PART_COST > w->credit ||
        (*opcode == 1 && !modzmq_utf8_valid((const unsigned char *)f[3], l[3]))) {
        return 0;
    }
    return 2;
}

int modzmq_ws_fast(modzmq_response *resp, modzmq_ws_io *io)
{
    modzmq_call *st = MODZMQ_CALL(resp);
    modzmq_ws_lent *w = &st->ws;
    unsigned char *in;
    size_t left;
    int64_t now, grant = 0;
    int kind = 0, opcode = 0;
    ws_batch batch;

    /* Go's turn: nothing lent, the client's end, a stop, what
     * modzmq_go_first says (a failed connection: the shim would find it
     * readable and step again at once; a timer; a worker lost somewhere),
     * or credit the client earned the worker back. */
    now = zmtp_now_ms();
    if (!w->on || io->client_gone || io->stopping || modzmq_go_first(resp, now) ||
        (w->owed > 0 && w->owed >= w->grant_at)) {
        return -1;
    }
    io->head_len = 0;
    io->again = 0;
    resp->body = NULL;
    resp->body_len = 0;

    /* The worker's message first, as Go's step takes it: a close (or
     * anything else that is Go's) before the client's bytes, a credit
     * before the client's messages that may need it. */
    if (st->nframes > 0 && !st->delivered) {
        kind = worker_kind(st, &opcode, &grant);
        if (kind == 0) {
            return -1;
        }
        if (kind == 1) {
            w->sendable = w->sendable + grant > MODZMQ_MAX_CREDIT ? MODZMQ_MAX_CREDIT : w->sendable + grant;
            st->delivered = 1;
            io->again = 1; /* what else the connection holds */
        }
    }

    /* The client's whole messages, unmasked in place and sent on together,
     * up to ZMTP_MAX_BATCH (8) in one write: the messages one read brought
     * reach the worker as one. The batch's arrays are on the stack of an
     * Apache thread: 8 keeps them within a page. */
    in = (unsigned char *)io->in;
    left = in != NULL ? io->in_len : 0;
    batch.n = 0;
    batch.bytes = 0;
    while (left > 0) {
        int op;
        unsigned char key[4];
        size_t off, len, n = modzmq_ws_frame(in, left, w->max, &op, &off, &len, key);
        unsigned char *p;
        if (n == 0 || (int64_t)len + MODZMQ_PART_COST > w->sendable) {
            break;
        }
        p = in + off;
        modzmq_ws_mask(p, len, key);
        if (op == 1 && !modzmq_utf8_valid(p, len)) {
            modzmq_ws_mask(p, len, key); /* as it came, for Go to refuse */
            break;
        }
        w->heard_ms = now;
        in += n;
        left -= n;
        batch_add(&batch, st, op, p, len);
        w->sendable -= (int64_t)len + MODZMQ_PART_COST;
        if (batch.n == ZMTP_MAX_BATCH && batch_send(&batch, st) != 0) {
            break;
        }
    }
    io->in = (char *)in;
    io->in_len = left;
    if (batch_send(&batch, st) != 0 || zmtp_failed(st->zconn) || left > 0) {
        return -1;
    }

    /* The worker's message to the client: its frame's header in io->head,
     * its payload where it arrived; then what else the connection holds. */
    if (kind == 2) {
        int64_t len = (int64_t)st->frame_len[3];
        io->head_len = modzmq_ws_header((unsigned char *)io->head, opcode, (uint64_t)len);
        resp->body = st->frame[3];
        resp->body_len = (size_t)len;
        w->credit -= len + MODZMQ_PART_COST;
        w->owed += len + MODZMQ_PART_COST;
        modzmq_fast_count(w->fast, MODZMQ_STATS_OFF_STREAMS + MODZMQ_ST_PARTS, 1);
        modzmq_fast_count(w->fast, MODZMQ_STATS_OFF_STREAMS + MODZMQ_ST_BYTES, len);
        modzmq_fast_count(w->fast, MODZMQ_STATS_OFF_STREAMS + MODZMQ_ST_BUFFERED, len + MODZMQ_PART_COST);
        st->delivered = 1;
        /* When the connection already holds the start of the worker's next
         * message and no grant is due (which is Go's, and may wait to
         * send), the next step is likely this one again: the output may
         * wait for its (2). */
        io->again = zmtp_buffered(st->zconn) > 0 && w->owed < w->grant_at ? 2 : 1;
    }
    io->wait_ms = (int)(st->due_ms - now);
    return MODZMQ_PENDING;
}
