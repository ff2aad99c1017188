package main

/*
#include <stdlib.h>
#include "fast.h"
*/
import "C"

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"
	"unsafe"

	"github.com/modzmq/modzmq/bridge"
)

// newFast makes the C fast path (fast.h) of the client with the given index
// and options, or returns nil (the client then relays everything in Go).
func newFast(index int, opts *bridge.Options) *C.modzmq_fast {
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil
	}
	prefix := C.CString(hex.EncodeToString(r[:]) + "-f")
	defer C.free(unsafe.Pointer(prefix))
	var bounds [C.MODZMQ_STATS_BUCKETS - 1]C.int64_t
	for i, b := range bridge.LatencyBuckets {
		bounds[i] = C.int64_t(b * float64(time.Second))
	}
	timeout, connect := opts.Timeout, opts.ConnectTimeout
	if timeout <= 0 {
		timeout = bridge.DefaultTimeout
	}
	if connect <= 0 {
		connect = bridge.DefaultConnectTimeout
	}
	return C.modzmq_fast_new(C.int(index), C.int(len(opts.Endpoints)), C.int64_t(timeout.Milliseconds()),
		C.int64_t(connect.Milliseconds()), C.int64_t(opts.MaxReply), &bounds[0], prefix)
}

// modzmq_go_dial makes a socket for the fast path of a client, or returns
// NULL (the request then goes through Go).
//
//export modzmq_go_dial
func modzmq_go_dial(index, endpoint C.int) (sock unsafe.Pointer) {
	defer func() {
		if p := recover(); p != nil {
			logFunc.Logf(bridge.LevelError, bridge.CodePanic, "recovered panic in modzmq_go_dial: %v", p)
			sock = nil
		}
	}()
	c := clientAt(index)
	if c == nil {
		return nil
	}
	conn, err := c.Dial(int(endpoint))
	if err != nil {
		logFunc.Logf(bridge.LevelError, bridge.CodeSocket, "%s: %v", c.Endpoints()[endpoint], err)
		return nil
	}
	return conn.(*cConn).sock
}

// modzmq_go_adopt takes over a request the fast path sent but could not
// finish (no reply within its first wait, or one the bridge must look at);
// it returns as modzmq_relay does.
//
//export modzmq_go_adopt
func modzmq_go_adopt(req *C.modzmq_request, resp *C.modzmq_response) (rc C.int) {
	defer func() {
		if p := recover(); p != nil {
			setError(&resp.error[0], C.size_t(len(resp.error)), fmt.Sprintf("%v: recovered panic: %v", bridge.CodePanic, p))
			logFunc.Logf(bridge.LevelError, bridge.CodePanic, "recovered panic in modzmq_go_adopt: %v", p)
			rc = C.MODZMQ_EINTERNAL
		}
	}()
	c := clientAt(resp.client)
	if c == nil {
		panic(fmt.Sprintf("no client %d", resp.client))
	}
	now := time.Now()
	call := c.Adopt(context.Background(), request(req), bridge.Sent{
		Endpoint: int(resp.endpoint),
		Conn:     &cConn{sock: resp.socket, sndtimeo: -1},
		ID:       view(&resp.id[0], resp.id_len),
		Epoch:    uint64(resp.epoch),
		Start:    now.Add(-time.Duration(resp.elapsed_ns)),
		Deadline: now.Add(time.Duration(resp.remaining_ns)),
	})
	deliver(call, resp)
	call.Step(0)
	return outcome(call, resp, 0)
}

// fastDecode runs the fast path's reply check (modzmq_fast_decode) on
// frames copied into C memory, for tests.
func fastDecode(frames [][]byte, maxReply int64) (ok bool, resp bridge.Response) {
	n := len(frames)
	if n == 0 {
		n = 1 // room for the C arrays; the count passed is still 0
	}
	// The arrays hold only C pointers, so they may be Go memory; the frames
	// are C memory, as libzmq's are.
	ptrs, lens := make([]*C.char, n), make([]C.size_t, n)
	for i, f := range frames {
		p := C.malloc(C.size_t(len(f) + 1))
		copy(unsafe.Slice((*byte)(p), len(f)), f)
		ptrs[i], lens[i] = (*C.char)(p), C.size_t(len(f))
		defer C.free(p)
	}
	var status C.int
	var reason, headers, body *C.char
	var reasonLen, headersLen, bodyLen C.size_t
	if C.modzmq_fast_decode(&ptrs[0], &lens[0], C.int(len(frames)), C.int64_t(maxReply), &status,
		&reason, &reasonLen, &headers, &headersLen, &body, &bodyLen) == 0 {
		return false, resp
	}
	resp.Status = int(status)
	resp.Reason = C.GoBytes(unsafe.Pointer(reason), C.int(reasonLen))
	resp.Headers = C.GoBytes(unsafe.Pointer(headers), C.int(headersLen))
	resp.Body = C.GoBytes(unsafe.Pointer(body), C.int(bodyLen))
	return true, resp
}
