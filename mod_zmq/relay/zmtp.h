/*
 * zmtp.h - a ZMTP 3 DEALER connection spoken on the calling thread's own
 * socket (RFC 23/ZMTP, NULL mechanism), for the request path inside Apache.
 *
 * libzmq moves every message through its I/O thread: on a request-reply
 * round trip that is two thread wake-ups and four eventfd operations on top
 * of the TCP send and receive, which on a busy 2-core host cost more than the
 * relay itself (docs/BENCHMARKS.md). A connection here is one non-blocking
 * TCP or IPC socket owned by one request at a time: the request is written
 * with one writev and the reply read straight into the connection's buffer.
 * Workers see an ordinary DEALER peer. CURVE connections are the Go
 * bridge's (bridge.ZMTP).
 */
#ifndef MODZMQ_ZMTP_H
#define MODZMQ_ZMTP_H

#include <stddef.h>
#include <stdint.h>

/* The most frames zmtp_send writes in one message, and the most messages
 * zmtp_send_batch writes at once. */
#define ZMTP_MAX_FRAMES 8
#define ZMTP_MAX_BATCH 8

/* What the reader accepts of a peer (bridge.ZMTP reads by the same rules;
 * internal/zmqtest.ZMTPFrames is their specification, and the fuzz targets
 * of both readers compare them with it):
 * - a message has at most ZMTP_MAX_RECV_FRAMES frames, an MZMQ/1 reply with
 *   its envelope (request id, empty delimiter, status, headers, body); a
 *   frame header past that count fails the read with E2BIG at once;
 * - with max_msg_size > 0, a message's frames, each counted with
 *   ZMTP_FRAME_COST bytes more for its bookkeeping (and any command that
 *   arrives among them, likewise), total at most max_msg_size; a frame
 *   header that would pass it fails the read with EMSGSIZE before its body
 *   arrives. A command alone may be max_msg_size bytes, as in libzmq;
 * - the buffer grows with the bytes received, never with a size a header
 *   claims, so a claim costs nothing until its bytes arrive;
 * - commands are handled wherever they arrive, as libzmq does: PING gets
 *   its PONG, others (ERROR included, once the handshake is over) are
 *   ignored; a command whose name runs past its end fails with EPROTO. */
#define ZMTP_MAX_RECV_FRAMES 5
#define ZMTP_FRAME_COST 64

typedef struct zmtp_conn zmtp_conn;

/* Whether endpoint is one zmtp_connect can reach: tcp://host:port,
 * tcp://source;host:port (source "*" or a numeric IP address, then ":port",
 * ":*" or nothing), ipc://path or ipc://@name. */
int zmtp_supported(const char *endpoint);

/* Connects to endpoint and completes the handshake within timeout_ms.
 * NULL with errno set on failure (EPROTO: the peer is not a ZMTP 3 NULL
 * peer that accepts a DEALER, or its READY is malformed; EACCES: it
 * answered the handshake with ERROR, its ZAP handler refusing us).
 * max_msg_size limits messages as described above; 0 means no limit. */
zmtp_conn *zmtp_connect(const char *endpoint, int timeout_ms, int64_t max_msg_size);
/* The handshake of zmtp_connect on fd, a connected non-blocking stream
 * socket, which the connection owns from now on (closed on failure too). */
zmtp_conn *zmtp_attach(int fd, int timeout_ms, int64_t max_msg_size);
void zmtp_close(zmtp_conn *c);
/* Replaces a connection made by zmtp_connect with a new one to the same
 * endpoint, in place; 0 or an errno value (c is then unchanged). */
int zmtp_redial(zmtp_conn *c, int timeout_ms);
/* Hands over the connection's buffer, which the frames zmtp_recv returned
 * point into, to the caller (who frees it); the connection goes on with a
 * new one. So a reply outlives its connection's return to a pool. */
char *zmtp_detach(zmtp_conn *c);
int zmtp_fd(const zmtp_conn *c);

/* CLOCK_MONOTONIC in milliseconds: the clock of every deadline here. */
int64_t zmtp_now_ms(void);
/* The size of the connection's read buffer, which the reader's rules bound,
 * how many times it has looked at a frame header (once per frame, and once
 * more per read that ends inside one), and how many reads brought bytes:
 * for tests. */
size_t zmtp_buffer_size(const zmtp_conn *c);
uint64_t zmtp_headers_parsed(const zmtp_conn *c);
uint64_t zmtp_reads(const zmtp_conn *c);

/* How many writes (sendmsg calls) took bytes: for tests. */
uint64_t zmtp_writes(const zmtp_conn *c);

/* Writes one message of n frames (n <= ZMTP_MAX_FRAMES) within timeout_ms;
 * 0 or an errno value (then the connection is unusable). */
int zmtp_send(zmtp_conn *c, int timeout_ms, int n, const void *const *p, const size_t *len);

/* Writes nmsg messages (nmsg <= ZMTP_MAX_BATCH) of n frames each, in one
 * system call when the socket takes them: message i's frames are
 * p[i*n:(i+1)*n]. As zmtp_send otherwise. */
int zmtp_send_batch(zmtp_conn *c, int timeout_ms, int nmsg, int n, const void *const *p, const size_t *len);

/* The bytes read and not yet received as a message: the start of what the
 * peer sent next, if any. */
size_t zmtp_buffered(const zmtp_conn *c);

/* The error that broke the connection (an errno value), or 0. */
int zmtp_failed(const zmtp_conn *c);

/* Reads what has arrived (up to a bounded amount), answering PINGs,
 * without waiting: 0 when the connection is sound and nothing but commands
 * arrived, 1 when a message has begun to arrive, or an errno value (EPIPE:
 * the peer closed). */
int zmtp_check(zmtp_conn *c);

/* Waits up to timeout_ms for the next message, however the peer's bytes
 * arrive: the deadline holds while they keep coming, and what arrived is
 * kept for the next call (each byte is parsed once). Returns 1 with its
 * frames (pointers into the connection's buffer, valid until the next call
 * on the connection) and their count in *nframes, 0 on timeout, or -errno
 * (the connection is then unusable). A negative timeout_ms does not wait:
 * what is buffered, and one read of what the socket holds. */
int zmtp_recv(zmtp_conn *c, int timeout_ms, const char **frame, size_t *len, int *nframes);

#endif
