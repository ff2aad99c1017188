/*
 * zmtp.c - see zmtp.h. Built into libmodzmq.so by cgo.
 *
 * Wire format (RFC 23/ZMTP 3.1): a 64-byte greeting each way, then one
 * READY command each way (NULL mechanism), then frames: a flags octet
 * (MORE 0x01, LONG 0x02, COMMAND 0x04), a 1- or 8-octet size, the body.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "zmtp.h"

enum { F_MORE = 0x01, F_LONG = 0x02, F_COMMAND = 0x04 };

struct zmtp_conn {
    char *endpoint; /* for zmtp_redial; NULL when attached to a given fd */
    int fd;
    int broken; /* an errno value once the connection is unusable */
    int64_t max_msg_size;
    char *buf;
    size_t cap, r, w; /* unparsed bytes are buf[r:w] */
    /* The message being read: buf[r:r+scan] has been parsed (its frames so
     * far, and commands among them), frames at offsets from r. */
    size_t scan;
    int nframes;
    uint64_t cost;
    size_t off[ZMTP_MAX_RECV_FRAMES], len[ZMTP_MAX_RECV_FRAMES];
    /* The rest of a PONG the socket took only part of. */
    unsigned char pong[2 + 5 + 16];
    size_t npong;
    uint64_t headers; /* frame headers looked at, to show each is parsed once */
    uint64_t reads;   /* reads that brought bytes, for the same test */
    uint64_t writes;  /* sendmsg calls that wrote bytes, for tests */
};

#define ZMTP_BUF 4096
/* The largest frame size a header may claim with no limit set. */
#define ZMTP_MAX_CLAIM ((uint64_t)1 << 40)
/* What zmtp_check reads at most in one call. */
#define ZMTP_CHECK_BUDGET (64 << 10)

/* ---- time and waiting -------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is ready for events or deadline (ms, CLOCK_MONOTONIC)
 * passes: 1 ready, 0 timed out, -errno. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd p = {fd, events, 0};
        int64_t left = deadline - now_ms();
        int rc;
        if (left < 0) {
            left = 0;
        }
        rc = poll(&p, 1, (int)(left > 1 << 30 ? 1 << 30 : left));
        if (rc > 0) {
            return 1; /* POLLERR and POLLHUP too: the read or write says what */
        }
        if (rc == 0) {
            return 0;
        }
        if (errno != EINTR) {
            return -errno;
        }
    }
}

/* ---- connecting -------------------------------------------------------- */

int zmtp_supported(const char *endpoint)
{
    return strncmp(endpoint, "tcp://", 6) == 0 || strncmp(endpoint, "ipc://", 6) == 0;
}

/* Parses hp[0:n], "host:port" (an IPv6 host in brackets; without brackets
 * and with more than one colon, all of it is the host), into host
 * (NUL-terminated, brackets removed) and *port (NULL when there is none).
 * 0 or an errno value. */
static int split_host(const char *hp, size_t n, char *host, size_t hostsize, const char **port)
{
    const char *colon = NULL, *h = hp;
    size_t hlen = n;

    if (n > 0 && hp[0] == '[') {
        const char *end = memchr(hp, ']', n);
        if (end == NULL) {
            return EINVAL;
        }
        h = hp + 1;
        hlen = (size_t)(end - h);
        if (end + 1 < hp + n) {
            if (end[1] != ':') {
                return EINVAL;
            }
            colon = end + 1;
        }
    }
    else {
        const char *c1 = memchr(hp, ':', n);
        if (c1 != NULL && memchr(c1 + 1, ':', (size_t)(hp + n - c1 - 1)) == NULL) {
            colon = c1;
            hlen = (size_t)(colon - hp);
        }
    }
    if (hlen >= hostsize) {
        return ENAMETOOLONG;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = colon != NULL ? colon + 1 : NULL;
    return 0;
}

/* Binds fd to the source part of a tcp:// endpoint, src[0:n]: "*" or a
 * numeric IP address, then ":port", ":*" or nothing (bridge.sourceAddr reads
 * it the same way). 0 or an errno value. */
static int bind_source(int fd, int family, const char *src, size_t n)
{
    char host[64], port[8];
    const char *p;
    struct addrinfo hints, *ai = NULL;
    int rc, one = 1;
    size_t plen;

    if ((rc = split_host(src, n, host, sizeof(host), &p)) != 0) {
        return rc;
    }
    plen = p != NULL ? (size_t)(src + n - p) : 0;
    if (plen >= sizeof(port)) {
        return EINVAL;
    }
    if (p == NULL || (plen == 1 && p[0] == '*')) {
        strcpy(port, "0");
    }
    else {
        size_t i;
        if (plen == 0 || plen > 5) {
            return EINVAL;
        }
        for (i = 0; i < plen; i++) {
            if (p[i] < '0' || p[i] > '9') {
                return EINVAL;
            }
        }
        memcpy(port, p, plen);
        port[plen] = '\0';
        if (atoi(port) > 65535) {
            return EINVAL;
        }
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = family;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
    if ((rc = getaddrinfo(strcmp(host, "*") == 0 ? NULL : host, port, &hints, &ai)) != 0) {
        return EINVAL;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    rc = bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 ? 0 : errno;
    freeaddrinfo(ai);
    return rc;
}

/* A non-blocking socket connecting to endpoint; -1 with errno set. */
static int open_socket(const char *endpoint, int64_t deadline)
{
    int fd = -1, rc, one = 1, err = 0;
    socklen_t elen = sizeof(err);

    if (strncmp(endpoint, "ipc://", 6) == 0) {
        struct sockaddr_un sun;
        const char *path = endpoint + 6;
        socklen_t len;
        if (strlen(path) >= sizeof(sun.sun_path)) {
            errno = ENAMETOOLONG;
            return -1;
        }
        memset(&sun, 0, sizeof(sun));
        sun.sun_family = AF_UNIX;
        memcpy(sun.sun_path, path, strlen(path));
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
        if (path[0] == '@') { /* the abstract namespace, as libzmq spells it */
            sun.sun_path[0] = '\0';
            len--;
        }
        if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) {
            return -1;
        }
        rc = connect(fd, (struct sockaddr *)&sun, len);
    }
    else {
        char host[256];
        const char *hp = endpoint + 6, *src = NULL, *port, *semi = strchr(hp, ';');
        struct addrinfo hints, *ai = NULL;
        if (semi != NULL) { /* a source address first */
            src = hp;
            hp = semi + 1;
        }
        if ((rc = split_host(hp, strlen(hp), host, sizeof(host), &port)) != 0 || port == NULL || *port == '\0') {
            errno = rc ? rc : EINVAL;
            return -1;
        }
        memset(&hints, 0, sizeof(hints));
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_NUMERICSERV;
        if ((rc = getaddrinfo(host, port, &hints, &ai)) != 0) {
            errno = rc == EAI_SYSTEM ? errno : EHOSTUNREACH;
            return -1;
        }
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            freeaddrinfo(ai);
            return -1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (src != NULL && (err = bind_source(fd, ai->ai_family, src, (size_t)(semi - src))) != 0) {
            freeaddrinfo(ai);
            goto fail;
        }
        rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
        freeaddrinfo(ai);
    }
    if (rc < 0 && errno != EINPROGRESS) {
        err = errno;
        goto fail;
    }
    if (rc < 0) {
        rc = wait_fd(fd, POLLOUT, deadline);
        if (rc <= 0) {
            err = rc == 0 ? ETIMEDOUT : -rc;
            goto fail;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0 || err != 0) {
            err = err ? err : errno;
            goto fail;
        }
    }
    return fd;
fail:
    close(fd);
    errno = err;
    return -1;
}

/* ---- reading ----------------------------------------------------------- */

static void compact(zmtp_conn *c);

/* Reads what the socket has, waiting until deadline for at least one byte
 * (deadline < 0: not at all); 1 read, 0 nothing (timed out), -errno
 * (-EPIPE: the peer closed). When what arrived fills the buffer, the bytes
 * already done with make room first; the buffer doubles only when there
 * are none, so it holds at most twice what is still being parsed. */
static int fill(zmtp_conn *c, int64_t deadline)
{
    for (;;) {
        ssize_t n;
        if (c->w == c->cap && c->r > 0) {
            compact(c);
        }
        if (c->w == c->cap) {
            char *b = realloc(c->buf, c->cap * 2);
            if (b == NULL) {
                return -ENOMEM;
            }
            c->buf = b;
            c->cap *= 2;
        }
        n = recv(c->fd, c->buf + c->w, c->cap - c->w, 0);
        if (n > 0) {
            c->w += (size_t)n;
            c->reads++;
            return 1;
        }
        if (n == 0) {
            return -EPIPE;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            return -errno;
        }
        if (deadline < 0) {
            return 0;
        }
        n = wait_fd(c->fd, POLLIN, deadline);
        if (n <= 0) {
            return (int)n;
        }
    }
}

/* Parses the frame header at buf[at:w]: 1 with its flags, body offset and
 * size once the whole frame has arrived, 0 when it has not (nothing is
 * kept of it), -errno as soon as the header is refused (see zmtp.h):
 * -EMSGSIZE for its size, -E2BIG for a message frame that announces one
 * frame too many. nframes and cost describe the message in progress. */
static int parse_frame(zmtp_conn *c, size_t at, int nframes, uint64_t cost, int *flags, size_t *off,
                       size_t *size)
{
    size_t have = c->w - at, hdr;
    const unsigned char *p = (const unsigned char *)c->buf + at;
    uint64_t n = 0, limit = c->max_msg_size > 0 ? (uint64_t)c->max_msg_size : 0;
    int i;

    c->headers++;
    if (have < 2) {
        return 0;
    }
    if (p[0] & F_LONG) {
        if (have < 9) {
            return 0;
        }
        for (i = 1; i <= 8; i++) {
            n = n << 8 | p[i];
        }
        hdr = 9;
    }
    else {
        n = p[1];
        hdr = 2;
    }
    if (n > ZMTP_MAX_CLAIM) {
        return -EMSGSIZE;
    }
    if (limit > 0) {
        if ((p[0] & F_COMMAND) && nframes == 0 ? n > limit : cost + n + ZMTP_FRAME_COST > limit) {
            return -EMSGSIZE; /* a command alone, or the message, would pass the limit */
        }
    }
    if (!(p[0] & F_COMMAND) && (p[0] & F_MORE) && nframes == ZMTP_MAX_RECV_FRAMES - 1) {
        return -E2BIG;
    }
    if (have - hdr < n) {
        return 0;
    }
    *flags = p[0];
    *off = at + hdr;
    *size = (size_t)n;
    return 1;
}

/* Writes what the socket takes of buf[0:*n] without waiting; the rest
 * moves to the start of buf. A failure drops it all: the read side meets
 * a closed connection itself, after what the worker sent before it. */
static void send_some(zmtp_conn *c, unsigned char *buf, size_t *n)
{
    ssize_t k;
    while ((k = send(c->fd, buf, *n, MSG_NOSIGNAL | MSG_DONTWAIT)) < 0 && errno == EINTR) {
    }
    if (k < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            *n = 0;
        }
        return;
    }
    memmove(buf, buf + k, *n - (size_t)k);
    *n -= (size_t)k;
}

/* Handles a command frame as libzmq does once the handshake is over: PING
 * gets its PONG, other commands are ignored; a command whose name runs past
 * its end is EPROTO. PONGs never wait: as in libzmq, one is pending at a
 * time (a PING that comes while one is pending gets none; any traffic tells
 * the worker the connection lives), and what the socket has no room for is
 * written before the next message. */
static int command(zmtp_conn *c, size_t off, size_t size)
{
    const unsigned char *b = (const unsigned char *)c->buf + off;
    if (size < 1 || (size_t)b[0] + 1 > size) {
        return EPROTO;
    }
    if (size >= 7 && b[0] == 4 && memcmp(b + 1, "PING", 4) == 0) {
        /* PING: name, a 2-octet TTL, a context of up to 16 octets to echo */
        size_t ctx = size - 7 > 16 ? 16 : size - 7;
        if (c->npong == 0) {
            c->pong[0] = F_COMMAND;
            c->pong[1] = (unsigned char)(5 + ctx);
            memcpy(c->pong + 2, "\x04PONG", 5);
            memcpy(c->pong + 7, b + 7, ctx);
            c->npong = 7 + ctx;
        }
        send_some(c, c->pong, &c->npong);
    }
    return 0;
}

/* Moves unparsed bytes to the start of the buffer (the message in
 * progress with them: its frames are offsets from r). */
static void compact(zmtp_conn *c)
{
    if (c->r == c->w) {
        c->r = c->w = 0;
    }
    else if (c->r > 0) {
        memmove(c->buf, c->buf + c->r, c->w - c->r);
        c->w -= c->r;
        c->r = 0;
    }
}

/* Parses what has arrived past the message in progress: 1 when a message
 * is complete (its frames in c->off/len/nframes; c->scan covers it), 0
 * when more must arrive, or an errno value (negative). With stop_at_frame,
 * returns 1 as soon as a message frame's header has arrived instead. */
static int parse(zmtp_conn *c, int stop_at_frame)
{
    for (;;) {
        size_t at = c->r + c->scan, off, size;
        int flags, rc;
        rc = parse_frame(c, at, c->nframes, c->cost, &flags, &off, &size);
        if (rc <= 0) {
            if (rc == 0 && stop_at_frame && c->w > at && !(c->buf[at] & F_COMMAND)) {
                return 1;
            }
            return rc;
        }
        if (flags & F_COMMAND) {
            if ((rc = command(c, off, size)) != 0) {
                return -rc;
            }
            if (c->nframes == 0) {
                c->r = off + size; /* done with it */
            }
            else {
                c->scan = off + size - c->r;
                c->cost += size + ZMTP_FRAME_COST;
            }
            continue;
        }
        if (stop_at_frame) {
            return 1;
        }
        c->off[c->nframes] = off - c->r;
        c->len[c->nframes] = size;
        c->nframes++;
        c->cost += size + ZMTP_FRAME_COST;
        c->scan = off + size - c->r;
        if (!(flags & F_MORE)) {
            return 1;
        }
    }
}

int zmtp_recv(zmtp_conn *c, int timeout_ms, const char **frame, size_t *len, int *nframes)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    int rc, filled = 0;

    if (c->broken) {
        return -c->broken;
    }
    compact(c);
    for (;;) {
        rc = parse(c, 0);
        if (rc > 0) {
            int i;
            for (i = 0; i < c->nframes; i++) {
                frame[i] = c->buf + c->r + c->off[i];
                len[i] = c->len[i];
            }
            *nframes = c->nframes;
            c->r += c->scan;
            c->scan = 0;
            c->nframes = 0;
            c->cost = 0;
            return 1;
        }
        if (rc == 0) {
            if (filled && now_ms() >= deadline) {
                return 0; /* bytes kept coming, but the time is up */
            }
            filled = 1;
            rc = fill(c, deadline);
            if (rc > 0) {
                continue;
            }
        }
        if (rc < 0) {
            c->broken = -rc;
        }
        return rc;
    }
}

int zmtp_check(zmtp_conn *c)
{
    size_t budget = ZMTP_CHECK_BUDGET;
    int rc;

    if (c->broken) {
        return c->broken;
    }
    if (c->nframes > 0) {
        return 1; /* part of a message nobody asked for */
    }
    for (;;) {
        size_t before;
        compact(c);
        rc = parse(c, 1);
        if (rc != 0) {
            return rc > 0 ? 1 : -rc;
        }
        before = c->w;
        rc = fill(c, -1);
        if (rc < 0) {
            return -rc;
        }
        if (rc == 0 || c->w - before >= budget) {
            return 0;
        }
        budget -= c->w - before;
    }
}

/* ---- writing ----------------------------------------------------------- */

static int send_all(zmtp_conn *c, struct iovec *iov, int niov, int64_t deadline)
{
    while (niov > 0) {
        struct msghdr mh;
        ssize_t n;
        memset(&mh, 0, sizeof(mh));
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)niov;
        n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        if (n < 0) {
            int rc;
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                return errno;
            }
            rc = wait_fd(c->fd, POLLOUT, deadline);
            if (rc <= 0) {
                return rc == 0 ? ETIMEDOUT : -rc;
            }
            continue;
        }
        c->writes++;
        while (niov > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            niov--;
        }
        if (niov > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

int zmtp_failed(const zmtp_conn *c) { return c->broken; }

/* Writes nmsg messages (no more than cap) of n frames (p, len) in one
 * sendmsg when the socket takes them, the rest of a PONG first; hdr and iov
 * have room for cap * ZMTP_MAX_FRAMES frames. */
static int send_messages(zmtp_conn *c, int timeout_ms, int cap, int nmsg, int n, const void *const *p,
                         const size_t *len, unsigned char (*hdr)[9], struct iovec *iov)
{
    int i, k, niov = 0, rc;

    if (c->broken) {
        return c->broken;
    }
    if (n < 1 || n > ZMTP_MAX_FRAMES || nmsg < 1 || nmsg > cap) {
        return EINVAL;
    }
    if (c->npong > 0) { /* the rest of a PONG goes first */
        iov[niov].iov_base = c->pong;
        iov[niov++].iov_len = c->npong;
    }
    for (i = 0; i < nmsg * n; i++) {
        int more = i % n < n - 1 ? F_MORE : 0;
        size_t h;
        if (len[i] > 255) {
            hdr[i][0] = (unsigned char)(more | F_LONG);
            for (k = 0; k < 8; k++) {
                hdr[i][1 + k] = (unsigned char)((uint64_t)len[i] >> (56 - 8 * k));
            }
            h = 9;
        }
        else {
            hdr[i][0] = (unsigned char)more;
            hdr[i][1] = (unsigned char)len[i];
            h = 2;
        }
        iov[niov].iov_base = hdr[i];
        iov[niov++].iov_len = h;
        if (len[i] > 0) {
            iov[niov].iov_base = (void *)p[i];
            iov[niov++].iov_len = len[i];
        }
    }
    rc = send_all(c, iov, niov, now_ms() + (timeout_ms > 0 ? timeout_ms : 0));
    c->npong = 0;
    if (rc != 0) {
        c->broken = rc; /* part of the message may be out */
    }
    return rc;
}

int zmtp_send(zmtp_conn *c, int timeout_ms, int n, const void *const *p, const size_t *len)
{
    unsigned char hdr[ZMTP_MAX_FRAMES][9];
    struct iovec iov[1 + 2 * ZMTP_MAX_FRAMES];

    return send_messages(c, timeout_ms, 1, 1, n, p, len, hdr, iov);
}

int zmtp_send_batch(zmtp_conn *c, int timeout_ms, int nmsg, int n, const void *const *p, const size_t *len)
{
    unsigned char hdr[ZMTP_MAX_BATCH * ZMTP_MAX_FRAMES][9];
    struct iovec iov[1 + 2 * ZMTP_MAX_BATCH * ZMTP_MAX_FRAMES];

    return send_messages(c, timeout_ms, ZMTP_MAX_BATCH, nmsg, n, p, len, hdr, iov);
}

size_t zmtp_buffered(const zmtp_conn *c) { return c->w - c->r; }

/* ---- the handshake ----------------------------------------------------- */

/* Checks a READY command's metadata, body[6:size], as libzmq 4.3.4 does:
 * properties (a 1-octet name length, the name, a 4-octet value length, the
 * value) fill it exactly, and a Socket-Type property (the name compared
 * exactly) names a socket that talks to a DEALER. 0 or EPROTO. */
static int ready_metadata(const unsigned char *body, size_t size)
{
    size_t at = 6, left = size - 6;
    while (left > 1) {
        size_t nl = body[at], vl;
        const unsigned char *name, *value;
        at++;
        left--;
        if (left < nl) {
            break;
        }
        name = body + at;
        at += nl;
        left -= nl;
        if (left < 4) {
            break;
        }
        vl = (size_t)body[at] << 24 | (size_t)body[at + 1] << 16 | (size_t)body[at + 2] << 8 | body[at + 3];
        at += 4;
        left -= 4;
        if (left < vl) {
            break;
        }
        value = body + at;
        at += vl;
        left -= vl;
        if (nl == 11 && memcmp(name, "Socket-Type", 11) == 0 &&
            !((vl == 6 && memcmp(value, "ROUTER", 6) == 0) || (vl == 3 && memcmp(value, "REP", 3) == 0) ||
              (vl == 6 && memcmp(value, "DEALER", 6) == 0))) {
            return EPROTO;
        }
    }
    return left > 0 ? EPROTO : 0;
}

static int handshake(zmtp_conn *c, int64_t deadline)
{
    static const char ready[] = "\x04\x1c\x05READY\x0bSocket-Type\x00\x00\x00\x06" "DEALER";
    static const char null_mechanism[20] = "NULL";
    unsigned char greeting[64];
    struct iovec iov[2];
    const unsigned char *g, *b;
    int rc;

    memset(greeting, 0, sizeof(greeting));
    greeting[0] = 0xff;
    greeting[8] = 1;
    greeting[9] = 0x7f;
    greeting[10] = 3; /* version 3.1 */
    greeting[11] = 1;
    memcpy(greeting + 12, "NULL", 4);
    iov[0].iov_base = greeting;
    iov[0].iov_len = sizeof(greeting);
    iov[1].iov_base = (void *)ready;
    iov[1].iov_len = sizeof(ready) - 1;
    if ((rc = send_all(c, iov, 2, deadline)) != 0) {
        return rc;
    }
    while (c->w < 64) {
        if ((rc = fill(c, deadline)) <= 0) {
            return rc == 0 ? ETIMEDOUT : -rc;
        }
    }
    g = (const unsigned char *)c->buf;
    if (g[0] != 0xff || !(g[9] & 1) || g[10] < 3 || memcmp(g + 12, null_mechanism, 20) != 0) {
        return EPROTO;
    }
    c->r = 64;
    for (;;) {
        size_t off, size;
        int flags;
        rc = parse_frame(c, c->r, 0, 0, &flags, &off, &size);
        if (rc < 0) {
            return -rc;
        }
        if (rc == 0) {
            if ((rc = fill(c, deadline)) <= 0) {
                return rc == 0 ? ETIMEDOUT : -rc;
            }
            continue;
        }
        c->r = off + size;
        b = (const unsigned char *)c->buf + off;
        if (!(flags & F_COMMAND)) {
            return EPROTO;
        }
        if (size >= 6 && memcmp(b, "\x05" "ERROR", 6) == 0) {
            /* refused (the worker's ZAP handler said no), if well formed */
            return size >= 7 && (size_t)b[6] <= size - 7 ? EACCES : EPROTO;
        }
        if (size < 6 || memcmp(b, "\x05READY", 6) != 0) {
            return EPROTO;
        }
        return ready_metadata(b, size);
    }
}

/* Whether a failed connect may succeed later: nobody listening yet. */
static int transient(int err) { return err == ECONNREFUSED || err == ENOENT || err == ECONNRESET || err == EPIPE; }

zmtp_conn *zmtp_attach(int fd, int timeout_ms, int64_t max_msg_size)
{
    zmtp_conn *c = calloc(1, sizeof(*c));
    int rc;

    if (c == NULL || (c->buf = malloc(ZMTP_BUF)) == NULL) {
        free(c);
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    c->fd = fd;
    c->cap = ZMTP_BUF;
    c->max_msg_size = max_msg_size;
    if ((rc = handshake(c, now_ms() + (timeout_ms > 0 ? timeout_ms : 0))) != 0) {
        zmtp_close(c);
        errno = rc;
        return NULL;
    }
    compact(c);
    return c;
}

zmtp_conn *zmtp_connect(const char *endpoint, int timeout_ms, int64_t max_msg_size)
{
    int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);

    if (!zmtp_supported(endpoint)) {
        errno = EPROTONOSUPPORT;
        return NULL;
    }
    /* As libzmq does in the background: try again every 100 ms while the
     * worker is not there, until the deadline. */
    for (;;) {
        int fd = open_socket(endpoint, deadline), err;
        zmtp_conn *c = NULL;
        if (fd >= 0) {
            int64_t left = deadline - now_ms();
            c = zmtp_attach(fd, left > 0 ? (int)left : 0, max_msg_size);
        }
        if (c != NULL) {
            if ((c->endpoint = strdup(endpoint)) == NULL) {
                zmtp_close(c);
                errno = ENOMEM;
                return NULL;
            }
            return c;
        }
        err = errno;
        if (!transient(err) || now_ms() + 100 > deadline) {
            errno = err;
            return NULL;
        }
        poll(NULL, 0, 100);
    }
}

char *zmtp_detach(zmtp_conn *c)
{
    char *old = c->buf;
    size_t rest = c->w - c->r, cap = rest > ZMTP_BUF ? rest : ZMTP_BUF;
    char *b = malloc(cap);

    if (b == NULL) {
        /* The caller still gets the reply; the connection is closed at its
         * next use. */
        c->broken = ENOMEM;
        c->buf = NULL;
        c->cap = c->r = c->w = 0;
        return old;
    }
    memcpy(b, old + c->r, rest);
    c->buf = b;
    c->cap = cap;
    c->w = rest;
    c->r = 0;
    return old;
}

void zmtp_close(zmtp_conn *c)
{
    if (c != NULL) {
        close(c->fd);
        free(c->buf);
        free(c->endpoint);
        free(c);
    }
}

int zmtp_redial(zmtp_conn *c, int timeout_ms)
{
    zmtp_conn *n;
    if (c->endpoint == NULL) {
        return EINVAL;
    }
    if ((n = zmtp_connect(c->endpoint, timeout_ms, c->max_msg_size)) == NULL) {
        return errno;
    }
    close(c->fd);
    free(c->buf);
    free(c->endpoint);
    *c = *n;
    free(n);
    return 0;
}

int zmtp_fd(const zmtp_conn *c) { return c->fd; }

int64_t zmtp_now_ms(void) { return now_ms(); }

size_t zmtp_buffer_size(const zmtp_conn *c) { return c->cap; }

uint64_t zmtp_headers_parsed(const zmtp_conn *c) { return c->headers; }
uint64_t zmtp_reads(const zmtp_conn *c) { return c->reads; }
uint64_t zmtp_writes(const zmtp_conn *c) { return c->writes; }
