package main

/*
#cgo pkg-config: libzmq
#include <stdlib.h>
#include "zmqio.h"
#include "zmtp.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"syscall"
	"time"
	"unsafe"

	"github.com/modzmq/modzmq/bridge"
)

// cTransport is the bridge transport of the Apache module. To tcp:// and
// ipc:// endpoints without CURVE its connections are ZMTP connections spoken
// on the Apache thread's own socket (zmtp.h, zConn), which the request
// path's C code (modzmq_wait in zmqio.c) waits and receives on, so the
// thread never waits inside the Go runtime: Go sends the request (one call
// into C) and decodes the reply frames that C received, without copying
// them. With CURVE they are the bridge's own (bridge.ZMTP, CurveZMQ in Go),
// waited on in Go (modzmq_resume), and to endpoints with a source address
// raw libzmq DEALER sockets (cConn). Endpoint watching is the bridge's own
// (bridge.ZMTP.Watch).
type cTransport struct {
	zmtp bridge.ZMTP
}

func (t *cTransport) Watch(endpoints []string, opts bridge.DialOptions, fn func(string, bridge.EventKind, string)) (func(), error) {
	return t.zmtp.Watch(endpoints, opts, fn)
}

// direct reports whether connections to endpoint with opts are ZMTP ones
// (zConn).
func direct(endpoint string, opts *bridge.DialOptions) bool {
	if opts.Curve != nil {
		return false
	}
	cep := C.CString(endpoint)
	defer C.free(unsafe.Pointer(cep))
	return C.zmtp_supported(cep) != 0
}

func (t *cTransport) Dial(endpoint string, opts bridge.DialOptions) (bridge.Conn, error) {
	if opts.Curve != nil {
		return t.zmtp.Dial(endpoint, opts)
	}
	cep := C.CString(endpoint)
	defer C.free(unsafe.Pointer(cep))
	if direct(endpoint, &opts) {
		z, err := C.zmtp_connect(cep, C.int(max(opts.ConnectTimeout.Milliseconds(), 0)), C.int64_t(opts.MaxMsgSize))
		if z == nil {
			if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ETIMEDOUT) {
				return nil, fmt.Errorf("%w: %s: no worker accepted a connection within %v (%v)", bridge.ErrNoWorker, endpoint, opts.ConnectTimeout, err)
			}
			if errors.Is(err, syscall.EACCES) {
				return nil, fmt.Errorf("%w: %s: the worker refused the connection (its ZAP authentication said no)", bridge.ErrNoWorker, endpoint)
			}
			if errors.Is(err, syscall.EPROTO) {
				return nil, fmt.Errorf("%w: %s: the peer is not a ZMTP 3 worker socket (REP, ROUTER or DEALER) without security", bridge.ErrNoWorker, endpoint)
			}
			return nil, fmt.Errorf("%w: connect %s: %v", bridge.ErrNoWorker, endpoint, err)
		}
		return &zConn{z: z}, nil
	}
	var stage C.int
	sock, err := C.modzmq_dealer(cep, C.int(opts.Heartbeat.Milliseconds()), C.int(opts.HeartbeatTimeout.Milliseconds()),
		C.int64_t(opts.MaxMsgSize), &stage)
	if sock == nil {
		switch stage {
		case C.MODZMQ_STAGE_CONNECT:
			return nil, fmt.Errorf("%w: connect %s: %v", bridge.ErrConfig, endpoint, err)
		case C.MODZMQ_STAGE_OPTIONS:
			return nil, fmt.Errorf("zmq socket options: %v", err)
		}
		return nil, fmt.Errorf("zmq socket: %v", err)
	}
	return &cConn{sock: sock, sndtimeo: -1}, nil
}

// cConn is one raw DEALER socket. Replies reach it in two ways: delivered
// by the request path (frames modzmq_wait received into a modzmq_response,
// valid until modzmq_release), or, for callers that wait in Go, received by
// Recv itself.
type cConn struct {
	sock     unsafe.Pointer
	sndtimeo C.int // last ZMQ_SNDTIMEO set, in ms; -1 before
	// delivered is the message handed over by deliver, returned once by the
	// next Recv.
	delivered [][]byte
	pending   bool
}

func (c *cConn) Send(frames [][]byte, timeout time.Duration) error {
	ms := C.int(max(timeout.Milliseconds(), 1))
	set := ms
	if ms == c.sndtimeo {
		set = -1
	}
	for len(frames) > 0 {
		n := min(len(frames), 8)
		rc := send(c.sock, false, set, frames[:n], n == len(frames))
		if set >= 0 && (rc == 0 || syscall.Errno(rc) == syscall.EAGAIN) {
			c.sndtimeo = ms
		}
		set = -1
		switch syscall.Errno(rc) {
		case 0:
		case syscall.EAGAIN:
			return fmt.Errorf("%w: the worker did not take the request within %v", bridge.ErrNoWorker, time.Duration(ms)*time.Millisecond)
		default:
			return fmt.Errorf("zmq send: %w", syscall.Errno(rc))
		}
		frames = frames[n:]
	}
	return nil
}

// send passes up to 8 frames to modzmq_send: on a libzmq socket, or on a
// ZMTP connection when direct (then frames are the whole message).
func send(conn unsafe.Pointer, direct bool, sndtimeo C.int, frames [][]byte, last bool) C.int {
	var p [8]unsafe.Pointer
	var l [8]C.size_t
	for i, f := range frames {
		l[i] = C.size_t(len(f))
		if len(f) > 0 {
			p[i] = unsafe.Pointer(&f[0])
		}
	}
	var d, end C.int
	if direct {
		d = 1
	}
	if last {
		end = 1
	}
	return C.modzmq_send(conn, d, sndtimeo, C.int(len(frames)), end,
		p[0], l[0], p[1], l[1], p[2], l[2], p[3], l[3], p[4], l[4], p[5], l[5], p[6], l[6], p[7], l[7])
}

// deliver hands over a message the request path received. It is Recv's next
// result.
func (c *cConn) deliver(frames [][]byte) {
	c.delivered, c.pending = frames, true
}

func (c *cConn) Recv(timeout time.Duration) ([][]byte, error) {
	if c.pending {
		msg := c.delivered
		c.delivered, c.pending = nil, false
		return msg, nil
	}
	rc := C.modzmq_poll_in(c.sock, C.int(timeout.Milliseconds()))
	if rc < 0 {
		return nil, fmt.Errorf("zmq poll: %w", syscall.Errno(-rc))
	}
	if rc == 0 {
		return nil, bridge.ErrTimeout
	}
	// Copy the frames out: this path's callers own their replies.
	var msg [][]byte
	for more := C.int(1); more != 0; {
		var m C.modzmq_msg
		var data unsafe.Pointer
		n := C.modzmq_recv_frame(c.sock, &m, &data, &more)
		if n < 0 {
			if len(msg) == 0 && syscall.Errno(-n) == syscall.EAGAIN {
				return nil, bridge.ErrTimeout
			}
			return nil, fmt.Errorf("zmq recv: %w", syscall.Errno(-n))
		}
		msg = append(msg, C.GoBytes(data, C.int(n)))
		C.modzmq_msg_close(&m)
	}
	return msg, nil
}

func (c *cConn) FD() (int, error) {
	fd := C.modzmq_fd(c.sock)
	if fd < 0 {
		return -1, fmt.Errorf("zmq: no ZMQ_FD")
	}
	return int(fd), nil
}

func (c *cConn) Close() error {
	C.modzmq_close(c.sock)
	return nil
}

// zConn is one ZMTP connection (zmtp.h). Like cConn, its replies arrive
// delivered by the request path or received by Recv itself.
type zConn struct {
	z         *C.zmtp_conn
	delivered [][]byte
	pending   bool
}

func (c *zConn) Send(frames [][]byte, timeout time.Duration) error {
	if len(frames) > 8 {
		return fmt.Errorf("zmtp send: %d frames, at most 8", len(frames))
	}
	ms := C.int(max(timeout.Milliseconds(), 1))
	if C.zmtp_check(c.z) != 0 {
		// Closed by the worker while it sat in a pool (a restart, or its
		// heartbeat timeout), with nothing in flight: connect again, as
		// libzmq would, within the send's wait.
		if rc := C.zmtp_redial(c.z, ms); rc != 0 {
			return fmt.Errorf("%w: connect again: %v", bridge.ErrNoWorker, syscall.Errno(rc))
		}
	}
	if rc := send(unsafe.Pointer(c.z), true, ms, frames, true); rc != 0 {
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

func (c *zConn) FD() (int, error) { return int(C.zmtp_fd(c.z)), nil }

func (c *zConn) Close() error {
	C.zmtp_close(c.z)
	return nil
}
