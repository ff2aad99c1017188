package relay

/*
#include <stdlib.h>
#include "fast.h"
#include "zmqio.h"
#include "zmtp.h"
*/
import "C"

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/modzmq/modzmq/bridge"
)

// newFast makes the C fast path (fast.h) of the client with the given handle
// and options, or returns nil (the client then relays everything in Go, as
// it does with CURVE).
func newFast(handle int, opts *bridge.Options, window int64) *C.modzmq_fast {
	if opts.Curve != nil {
		return nil // CurveZMQ is spoken in Go (bridge.ZMTP)
	}
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
	return C.modzmq_fast_new(C.int(handle), C.int(len(opts.Endpoints)), C.int64_t(timeout.Milliseconds()),
		C.int64_t(connect.Milliseconds()), C.int64_t(opts.MaxReply), C.int64_t(window), cbool(opts.Notices), &bounds[0], prefix)
}

// modzmq_go_stale logs, at debug, a reply the fast path's pool found on an
// idle connection: one to a request whose client went away.
//
//export modzmq_go_stale
func modzmq_go_stale(handle C.int, id *C.char, n C.size_t) {
	b := unsafe.Slice((*byte)(unsafe.Pointer(id)), int(min(n, 64)))
	logFunc.Logf(bridge.LevelDebug, bridge.CodeStaleReply, "dropped a reply nobody waits for any more (request %q)", b)
}

// modzmq_go_dial makes a connection (zmtp.h) for the fast path of a
// client within timeoutMS at most, or returns NULL (the request then goes
// through Go).
//
//export modzmq_go_dial
func modzmq_go_dial(handle, endpoint C.int, timeoutMS C.int64_t) (sock unsafe.Pointer) {
	defer func() {
		if p := recover(); p != nil {
			logFunc.Logf(bridge.LevelError, bridge.CodePanic, "recovered panic in modzmq_go_dial: %v", p)
			sock = nil
		}
	}()
	c := clientAt(handle)
	if c == nil {
		return nil
	}
	c.start() // made already: its fast path exists; this orders the reads below
	if c.Client == nil {
		return nil
	}
	c.b.goEntries.Add(1)
	conn, err := c.Dial(int(endpoint), time.Duration(timeoutMS)*time.Millisecond)
	if err != nil {
		// The request goes to Go, which tries again and reports the
		// outcome; only a failure of this process is worth a line here.
		if !errors.Is(err, bridge.ErrNoWorker) {
			logFunc.Logf(bridge.LevelError, bridge.CodeSocket, "%s: %v", c.Endpoints()[endpoint], err)
		}
		return nil
	}
	if z, ok := conn.(*zConn); ok {
		return unsafe.Pointer(z.z)
	}
	conn.Close() // not one C can use (the fast path has no CURVE)
	return nil
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
	st := callState(resp)
	c := clientAt(st.client)
	if c != nil {
		c.start() // made already: its fast path sent the request
	}
	if c == nil || c.Client == nil {
		panic(fmt.Sprintf("no client %d", st.client))
	}
	c.b.goEntries.Add(1)
	conn := &zConn{z: (*C.zmtp_conn)(st.zconn), id: append([]byte(nil), view(&st.id[0], st.id_len)...)}
	now := time.Now()
	call := c.Adopt(context.Background(), c.request(req), bridge.Sent{
		Endpoint: int(st.endpoint),
		Conn:     conn,
		ID:       view(&st.id[0], st.id_len),
		Epoch:    uint64(st.epoch),
		Start:    now.Add(-time.Duration(st.elapsed_ns)),
		Deadline: now.Add(time.Duration(st.remaining_ns)),
	})
	deliver(call.Conn(), resp)
	call.Step(0)
	return outcome(call, c.b, c.fast, resp, 0)
}
