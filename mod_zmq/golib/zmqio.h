/*
 * zmqio.h - the libzmq calls of libmodzmq.so that are written in C: the
 * request path's socket work (so that no Apache thread blocks inside the Go
 * runtime) and the few calls Go makes with raw sockets.
 */
#ifndef MODZMQ_ZMQIO_H
#define MODZMQ_ZMQIO_H

#include <stddef.h>
#include <stdint.h>

#include "modzmq.h"

/* What modzmq_dealer was doing when it failed (errno says why). */
enum { MODZMQ_STAGE_CONTEXT = 1, MODZMQ_STAGE_SOCKET, MODZMQ_STAGE_OPTIONS, MODZMQ_STAGE_CONNECT };

/* A DEALER with ZMQ_LINGER 0 and ZMQ_IMMEDIATE, connected to endpoint.
 * heartbeat_ms 0 leaves heartbeats off; max_msg_size 0 means no limit.
 * NULL with *stage and errno set on failure. */
void *modzmq_dealer(const char *endpoint, int heartbeat_ms, int heartbeat_timeout_ms, int64_t max_msg_size,
                    int *stage);

/* Sends up to 8 frames (n of them) as part of one message on conn: a
 * libzmq socket, or a ZMTP connection (zmtp.h) when direct is set. On a
 * libzmq socket all go with ZMQ_SNDMORE unless last is set, when the final
 * one ends the message, and sndtimeo_ms >= 0 sets ZMQ_SNDTIMEO first; on a
 * ZMTP connection the frames are the whole message (last must be set) and
 * are written within sndtimeo_ms. The frames are arguments because Go may
 * not pass an array of pointers to its memory. Returns 0 or an errno value. */
int modzmq_send(void *conn, int direct, int sndtimeo_ms, int n, int last,
                const void *p0, size_t l0, const void *p1, size_t l1,
                const void *p2, size_t l2, const void *p3, size_t l3,
                const void *p4, size_t l4, const void *p5, size_t l5,
                const void *p6, size_t l6, const void *p7, size_t l7);

/* Waits up to timeout_ms (0: not at all) for a message; 1 when one is
 * there, 0 when not, -errno on failure. Retries after signals. */
int modzmq_poll_in(void *sock, int timeout_ms);

/* Receives one whole message (which must be there) into resp's frames. */
void modzmq_receive(void *sock, modzmq_response *resp);

/* Waits up to timeout_ms for a message on a ZMTP connection (zmtp.h) and
 * receives it into resp, which then owns the buffer its frames are in. */
void modzmq_zreceive(void *conn, int timeout_ms, modzmq_response *resp);

/* Receives the next frame of a message without waiting into msg (which
 * modzmq_msg_close must release). Returns the frame's size and sets *more,
 * or -errno. */
int64_t modzmq_recv_frame(void *sock, modzmq_msg *msg, const void **data, int *more);
void modzmq_msg_close(modzmq_msg *msg);

int modzmq_fd(void *sock);
void modzmq_close(void *sock);

/* The request path's wait and release, exported from the library; see
 * modzmq.h. */
void modzmq_wait(modzmq_response *resp);
void modzmq_release(modzmq_response *resp);

#endif
