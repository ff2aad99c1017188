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
#include <strings.h>
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
    size_t need;      /* bytes from r the frame being read needs, or 0 */
};

#define ZMTP_BUF 4096
/* Commands (READY, PING, ...) are small; a longer one is refused. */
#define ZMTP_MAX_COMMAND 65536

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
    if (strchr(endpoint, ';') != NULL) {
        return 0; /* a source address: libzmq's */
    }
    return strncmp(endpoint, "tcp://", 6) == 0 || strncmp(endpoint, "ipc://", 6) == 0;
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
        const char *hp = endpoint + 6, *colon = strrchr(hp, ':');
        struct addrinfo hints, *ai = NULL;
        size_t hlen;
        if (colon == NULL || colon == hp) {
            errno = EINVAL;
            return -1;
        }
        hlen = (size_t)(colon - hp);
        if (hp[0] == '[' && hlen >= 2 && hp[hlen - 1] == ']') {
            hp++;
            hlen -= 2;
        }
        if (hlen >= sizeof(host)) {
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(host, hp, hlen);
        host[hlen] = '\0';
        memset(&hints, 0, sizeof(hints));
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_NUMERICSERV;
        if ((rc = getaddrinfo(host, colon + 1, &hints, &ai)) != 0) {
            errno = rc == EAI_SYSTEM ? errno : EHOSTUNREACH;
            return -1;
        }
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            freeaddrinfo(ai);
            return -1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
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

/* Reads what the socket has, up to deadline for at least one byte;
 * 1 read, 0 timed out, -errno (-EPIPE: the peer closed). */
static int fill(zmtp_conn *c, int64_t deadline)
{
    for (;;) {
        ssize_t n;
        if (c->w == c->cap || c->r + c->need > c->cap) {
            /* Room for the frame being read, as far as 4 MiB past what has
             * arrived: a size in a header is a claim, not yet memory. */
            size_t want = c->r + c->need < c->w + (4 << 20) ? c->r + c->need : c->w + (4 << 20);
            size_t cap = c->cap * 2 > want ? c->cap * 2 : want;
            char *b = realloc(c->buf, cap);
            if (b == NULL) {
                return -ENOMEM;
            }
            c->buf = b;
            c->cap = cap;
        }
        n = recv(c->fd, c->buf + c->w, c->cap - c->w, 0);
        if (n > 0) {
            c->w += (size_t)n;
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

/* Parses the frame at buf[*at:w]: 1 with its flags, body offset and size,
 * 0 when it has not fully arrived (c->need then says how many bytes from
 * c->r it takes, when known), -errno when it is too long. */
static int parse_frame(zmtp_conn *c, size_t *at, int *flags, size_t *off, size_t *size)
{
    size_t have = c->w - *at, hdr;
    const unsigned char *p = (const unsigned char *)c->buf + *at;
    uint64_t n = 0;
    int i;

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
    if ((p[0] & F_COMMAND) ? n > ZMTP_MAX_COMMAND
                           : n > (uint64_t)1 << 40 || (c->max_msg_size > 0 && n > (uint64_t)c->max_msg_size)) {
        return -EMSGSIZE;
    }
    if (have - hdr < n) {
        c->need = *at + hdr + (size_t)n - c->r;
        return 0;
    }
    c->need = 0;
    *flags = p[0];
    *off = *at + hdr;
    *size = (size_t)n;
    *at = *off + (size_t)n;
    return 1;
}

static int send_all(zmtp_conn *c, struct iovec *iov, int niov, int64_t deadline);

/* Handles a command frame: answers PING with PONG; ignores the rest. */
static int command(zmtp_conn *c, size_t off, size_t size)
{
    const char *b = c->buf + off;
    if (size >= 7 && (unsigned char)b[0] == 4 && memcmp(b + 1, "PING", 4) == 0) {
        /* PING: name, a 2-octet TTL, a context of up to 16 octets to echo */
        size_t ctx = size - 7 > 16 ? 16 : size - 7;
        unsigned char pong[2 + 5 + 16];
        struct iovec iov = {pong, 2 + 5 + ctx};
        pong[0] = F_COMMAND;
        pong[1] = (unsigned char)(5 + ctx);
        memcpy(pong + 2, "\x04PONG", 5);
        memcpy(pong + 7, b + 7, ctx);
        return send_all(c, &iov, 1, now_ms() + 1000);
    }
    if (size >= 6 && (unsigned char)b[0] == 5 && memcmp(b + 1, "ERROR", 5) == 0) {
        return EPROTO;
    }
    return 0;
}

/* Moves unparsed bytes to the start of the buffer. */
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

int zmtp_recv(zmtp_conn *c, int timeout_ms, const char **frame, size_t *len, int *nframes, int *nkept)
{
    int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    size_t offs[ZMTP_MAX_FRAMES];

    if (c->broken) {
        return -c->broken;
    }
    compact(c);
    for (;;) {
        size_t at = c->r, off, size;
        int flags, n = 0, kept = 0, rc;
        /* A whole message, or the commands before it. */
        while ((rc = parse_frame(c, &at, &flags, &off, &size)) > 0) {
            if (flags & F_COMMAND) {
                if (n > 0) {
                    c->broken = EPROTO; /* a command inside a message */
                    return -EPROTO;
                }
                if ((rc = command(c, off, size)) != 0) {
                    c->broken = rc;
                    return -rc;
                }
                c->r = at;
                continue;
            }
            if (kept < ZMTP_MAX_FRAMES) {
                offs[kept] = off;
                len[kept] = size;
                kept++;
            }
            n++;
            if (!(flags & F_MORE)) {
                int i;
                for (i = 0; i < kept; i++) {
                    frame[i] = c->buf + offs[i];
                }
                *nframes = n;
                *nkept = kept;
                c->r = at;
                return 1;
            }
        }
        if (rc == 0) {
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
    int rc;
    if (c->broken) {
        return c->broken;
    }
    compact(c);
    while ((rc = fill(c, -1)) > 0) {
    }
    if (rc < 0) {
        return -rc;
    }
    for (;;) {
        size_t at = c->r, off, size;
        int flags;
        rc = parse_frame(c, &at, &flags, &off, &size);
        if (rc < 0) {
            return -rc;
        }
        if (rc == 0) {
            return 0;
        }
        if (!(flags & F_COMMAND)) {
            return 1;
        }
        if ((rc = command(c, off, size)) != 0) {
            return rc;
        }
        c->r = at;
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

int zmtp_send(zmtp_conn *c, int timeout_ms, int n, const void *const *p, const size_t *len)
{
    unsigned char hdr[ZMTP_MAX_FRAMES][9];
    struct iovec iov[2 * ZMTP_MAX_FRAMES];
    int i, k, niov = 0;

    if (c->broken) {
        return c->broken;
    }
    if (n < 1 || n > ZMTP_MAX_FRAMES) {
        return EINVAL;
    }
    for (i = 0; i < n; i++) {
        int more = i < n - 1 ? F_MORE : 0;
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
    return send_all(c, iov, niov, now_ms() + (timeout_ms > 0 ? timeout_ms : 0));
}

/* ---- the handshake ----------------------------------------------------- */

/* The property name of a READY command, within body[0:size]; its value's
 * offset and length, or 0 when absent. */
static int property(const char *body, size_t size, const char *name, size_t *voff, size_t *vlen)
{
    size_t at = 1 + (unsigned char)body[0]; /* past the command name */
    while (at < size) {
        size_t nl = (unsigned char)body[at], vl;
        if (at + 1 + nl + 4 > size) {
            return 0;
        }
        vl = (size_t)(unsigned char)body[at + 1 + nl] << 24 | (size_t)(unsigned char)body[at + 2 + nl] << 16 |
             (size_t)(unsigned char)body[at + 3 + nl] << 8 | (unsigned char)body[at + 4 + nl];
        if (at + 5 + nl + vl > size) {
            return 0;
        }
        if (nl == strlen(name) && strncasecmp(body + at + 1, name, nl) == 0) {
            *voff = at + 5 + nl;
            *vlen = vl;
            return 1;
        }
        at += 5 + nl + vl;
    }
    return 0;
}

static int handshake(zmtp_conn *c, int64_t deadline)
{
    static const char ready[] = "\x04\x1c\x05READY\x0bSocket-Type\x00\x00\x00\x06" "DEALER";
    unsigned char greeting[64];
    struct iovec iov[2];
    const unsigned char *g;
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
    if (g[0] != 0xff || !(g[9] & 1) || g[10] < 3 || memcmp(g + 12, "NULL\0", 5) != 0) {
        return EPROTO;
    }
    c->r = 64;
    for (;;) {
        size_t at = c->r, off, size, voff, vlen;
        int flags;
        rc = parse_frame(c, &at, &flags, &off, &size);
        if (rc < 0) {
            return -rc;
        }
        if (rc == 0) {
            if ((rc = fill(c, deadline)) <= 0) {
                return rc == 0 ? ETIMEDOUT : -rc;
            }
            continue;
        }
        c->r = at;
        if ((flags & F_COMMAND) && size >= 6 && memcmp(c->buf + off, "\x05" "ERROR", 6) == 0) {
            return EACCES; /* refused: the worker's ZAP handler said no */
        }
        if (!(flags & F_COMMAND) || size < 6 || memcmp(c->buf + off, "\x05READY", 6) != 0) {
            return EPROTO;
        }
        if (property(c->buf + off, size, "Socket-Type", &voff, &vlen)) {
            const char *t = c->buf + off + voff;
            if (!((vlen == 6 && memcmp(t, "ROUTER", 6) == 0) || (vlen == 3 && memcmp(t, "REP", 3) == 0) ||
                  (vlen == 6 && memcmp(t, "DEALER", 6) == 0))) {
                return EPROTO;
            }
        }
        return 0;
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
        c->cap = c->r = c->w = c->need = 0;
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
