/*
 * wsfast.h - an open WebSocket's common messages, relayed in C.
 *
 * Through Apache each step of an open WebSocket used to enter Go, twice for
 * every echoed message (the client's frame, the worker's answer), and an
 * entry into Go costs an Apache thread more than the work it does
 * (fast.h). So while a WebSocket is in its common state - nothing held for
 * want of credit, no message half read, no close under way - Go lends the
 * C step its credit (modzmq_ws_lent, in the call state) and the C step
 * relays what is simple: a client's whole text or binary message in one
 * final frame, the worker's @text, @binary and @credit messages. Anything
 * else, and every timer, stop, end or lost worker, goes to Go's step
 * (wsproto.Reader, bridge.WebSocket), which takes the credit back first.
 * The checks here only ever accept what Go accepts, with the same result
 * (FuzzWSFast in wsfast_test.go compares them).
 */
#ifndef MODZMQ_WSFAST_H
#define MODZMQ_WSFAST_H

#include <stddef.h>
#include <stdint.h>

#include "modzmq.h"

/* The C step: relays what it can of what io brings and returns
 * MODZMQ_PENDING when it did all of it; -1 when Go's step must run, with
 * io->in and io->in_len left at the client's bytes it did not take. */
int modzmq_ws_fast(modzmq_response *resp, modzmq_ws_io *io);

/* The client's frame at the start of b[0:n] when it is a whole message the
 * C step relays: final, masked, no reserved bit, text (1) or binary (2),
 * its payload (at most max bytes) all there. Returns the frame's size with
 * *opcode, the payload's offset and length and the masking key, or 0. */
size_t modzmq_ws_frame(const unsigned char *b, size_t n, int64_t max, int *opcode, size_t *off, size_t *len,
                       unsigned char key[4]);

/* XORs p[0:n] with the masking key (it masks and unmasks). */
void modzmq_ws_mask(unsigned char *p, size_t n, const unsigned char key[4]);

/* Whether p[0:n] is UTF-8 as Go's utf8.Valid has it (no surrogates, no
 * overlong forms, nothing past U+10FFFF). */
int modzmq_utf8_valid(const unsigned char *p, size_t n);

/* Writes the header of a server frame carrying a whole message of n bytes
 * (final, unmasked, opcode 1 or 2) into dst, which has room for 10 bytes;
 * returns its size. */
size_t modzmq_ws_header(unsigned char *dst, int opcode, uint64_t n);

/* Parses a credit, p[0:n]: decimal digits only, at most 1 << 40; 1 with *v,
 * else 0 (Go then judges it). */
int modzmq_ws_credit(const char *p, size_t n, int64_t *v);

#endif
