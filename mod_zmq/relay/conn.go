package relay

/*
#include <stdlib.h>
#include "zmqio.h"
#include "zmtp.h"
*/
import "C"

import (
	"bytes"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/modzmq/modzmq/bridge"
)

// cTransport is the bridge transport of the Apache module. Without CURVE its
// connections are ZMTP connections spoken on the Apache thread's own socket
// (zmtp.h, zConn), which the request path's C code (modzmq_wait in
// zmqio.c) waits and receives on, so the thread never waits inside the Go
// runtime: Go sends the request (one call into C) and decodes the reply
// frames that C received, without copying them. With CURVE they are the
// bridge's own (bridge.ZMTP, CurveZMQ in Go), waited on in Go
// (modzmq_resume). Endpoint watching is the bridge's own (bridge.ZMTP.Watch).
type cTransport struct {
	zmtp bridge.ZMTP
}

func (t *cTransport) Watch(endpoints []string, opts bridge.DialOptions, fn func(string, bridge.EventKind, string)) (func(), error) {
	return t.zmtp.Watch(endpoints, opts, fn)
}

// dialSeen, when set (by tests), is shown the options of every connection
// cTransport is asked for.
var dialSeen atomic.Pointer[func(bridge.DialOptions)]

func (t *cTransport) Dial(endpoint string, opts bridge.DialOptions) (bridge.Conn, error) {
	if f := dialSeen.Load(); f != nil {
		(*f)(opts)
	}
	if opts.Curve != nil {
		return t.zmtp.Dial(endpoint, opts)
	}
	cep := C.CString(endpoint)
	defer C.free(unsafe.Pointer(cep))
	z, err := C.zmtp_connect(cep, C.int(max(opts.ConnectTimeout.Milliseconds(), 0)), C.int64_t(opts.MaxMsgSize))
	if z == nil {
		switch {
		case errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ETIMEDOUT):
			return nil, fmt.Errorf("%w: %s: no worker accepted a connection within %v (%v)", bridge.ErrNoWorker, endpoint, opts.ConnectTimeout, err)
		case errors.Is(err, syscall.EACCES):
			return nil, fmt.Errorf("%w: %s: the worker refused the connection (its ZAP authentication said no)", bridge.ErrNoWorker, endpoint)
		case errors.Is(err, syscall.EPROTO):
			return nil, fmt.Errorf("%w: %s: the peer is not a ZMTP 3 worker socket (REP, ROUTER or DEALER) without security", bridge.ErrNoWorker, endpoint)
		}
		return nil, fmt.Errorf("%w: connect %s: %v", bridge.ErrNoWorker, endpoint, err)
	}
	return &zConn{z: z}, nil
}

// send passes up to 8 frames, the whole message, to modzmq_send.
func send(conn unsafe.Pointer, timeout C.int, frames [][]byte) C.int {
	var p [8]unsafe.Pointer
	var l [8]C.size_t
	for i, f := range frames {
		l[i] = C.size_t(len(f))
		if len(f) > 0 {
			p[i] = unsafe.Pointer(&f[0])
		}
	}
	return C.modzmq_send(conn, timeout, C.int(len(frames)),
		p[0], l[0], p[1], l[1], p[2], l[2], p[3], l[3], p[4], l[4], p[5], l[5], p[6], l[6], p[7], l[7])
}

// zConn is one ZMTP connection (zmtp.h). Its replies reach it in two ways:
// delivered by the request path (frames modzmq_wait received into a
// modzmq_response, valid until modzmq_release), or received by Recv itself.
type zConn struct {
	z         *C.zmtp_conn
	id        []byte // the request id last sent
	delivered [][]byte
	pending   bool
	// into, while a stream steps (streamStep), is the call state Recv
	// receives into without a copy: the frames stay in the connection's
	// buffer (modzmq_call.keep), valid until the connection is read again.
	into  *C.modzmq_call
	views [C.ZMTP_MAX_RECV_FRAMES][]byte
}

func (c *zConn) Send(frames [][]byte, timeout time.Duration) error {
	if len(frames) > 8 {
		return fmt.Errorf("zmtp send: %d frames, at most 8", len(frames))
	}
	ms := C.int(max(timeout.Milliseconds(), 1))
	// A message for the request in flight (a stream's credit, a cancel
	// notice) goes on as it is: the connection may hold its parts unread.
	control := len(c.id) > 0 && bytes.Equal(frames[0], c.id)
	if !control {
		c.id = append(c.id[:0], frames[0]...)
	}
	if !control && C.zmtp_check(c.z) != 0 {
		// Closed by the worker while it sat in a pool (a restart, or its
		// heartbeat timeout), with nothing in flight: connect again, as
		// libzmq would, within the send's wait.
		if rc := C.zmtp_redial(c.z, ms); rc != 0 {
			return fmt.Errorf("%w: connect again: %v", bridge.ErrNoWorker, syscall.Errno(rc))
		}
	}
	if rc := send(unsafe.Pointer(c.z), ms, frames); rc != 0 {
		// The connection is closed after this: what was written of the
		// request is never completed.
		return fmt.Errorf("%w: send: %v", bridge.ErrNoWorker, syscall.Errno(rc))
	}
	return nil
}

func (c *zConn) deliver(frames [][]byte) {
	c.delivered, c.pending = frames, true
}

func (c *zConn) Recv(timeout time.Duration) ([][]byte, error) {
	if c.pending {
		msg := c.delivered
		c.delivered, c.pending = nil, false
		return msg, nil
	}
	if st := c.into; st != nil {
		// A stream's part: views of the frames, where they arrived.
		var n C.int
		rc := C.zmtp_recv(c.z, C.int(timeout.Milliseconds()), &st.frame[0], &st.frame_len[0], &n)
		switch {
		case rc == 0:
			return nil, bridge.ErrTimeout
		case rc < 0:
			return nil, zmtpError(syscall.Errno(-rc))
		}
		st.nframes, st.delivered = n, 1
		msg := c.views[:int(n)]
		for i := range msg {
			msg[i] = view(st.frame[i], st.frame_len[i])
		}
		return msg, nil
	}
	var frame [C.ZMTP_MAX_RECV_FRAMES]*C.char
	var size [C.ZMTP_MAX_RECV_FRAMES]C.size_t
	var n C.int
	rc := C.zmtp_recv(c.z, C.int(timeout.Milliseconds()), &frame[0], &size[0], &n)
	switch {
	case rc == 0:
		return nil, bridge.ErrTimeout
	case rc < 0:
		return nil, zmtpError(syscall.Errno(-rc))
	}
	// Copy the frames out: this path's callers own their replies.
	msg := make([][]byte, int(n))
	for i := range msg {
		msg[i] = C.GoBytes(unsafe.Pointer(frame[i]), C.int(size[i]))
	}
	return msg, nil
}

// zmtpError names a failed ZMTP connection as the bridge's errors do.
func zmtpError(err syscall.Errno) error {
	switch err {
	case syscall.EPIPE, syscall.ECONNRESET:
		return fmt.Errorf("%w: the worker closed the connection", bridge.ErrWorkerLost)
	case syscall.EMSGSIZE:
		return fmt.Errorf("%w: %v", bridge.ErrProtocol, bridge.ErrReplyTooLarge)
	case syscall.E2BIG:
		return fmt.Errorf("%w: %v", bridge.ErrProtocol, bridge.ErrReplyFrames)
	case syscall.EPROTO:
		return fmt.Errorf("%w: the worker broke ZMTP", bridge.ErrProtocol)
	}
	return fmt.Errorf("zmtp recv: %w", err)
}

func (c *zConn) Close() error {
	C.zmtp_close(c.z)
	return nil
}
