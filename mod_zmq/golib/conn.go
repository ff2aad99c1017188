package main

/*
#cgo pkg-config: libzmq
#include <stdlib.h>
#include "zmqio.h"
*/
import "C"

import (
	"fmt"
	"syscall"
	"time"
	"unsafe"

	"github.com/modzmq/modzmq/bridge"
)

// cTransport is the bridge transport of the Apache module. Its connections
// are raw libzmq DEALER sockets that the request path's C code (modzmq_wait
// in zmqio.c) polls and receives on, so an Apache thread never waits inside
// the Go runtime: Go sends the request (one call into C) and decodes the
// reply frames that C received, without copying them. Endpoint watching is
// the bridge's own (bridge.ZMQ).
type cTransport struct {
	watch bridge.ZMQ
}

func (t *cTransport) Watch(endpoints []string, opts bridge.DialOptions, fn func(string, bridge.EventKind, string)) (func(), error) {
	return t.watch.Watch(endpoints, opts, fn)
}

func (t *cTransport) Dial(endpoint string, opts bridge.DialOptions) (bridge.Conn, error) {
	cep := C.CString(endpoint)
	defer C.free(unsafe.Pointer(cep))
	var server, public, secret unsafe.Pointer
	var keylen int
	if k := opts.Curve; k != nil {
		keylen = len(k.ServerKey)
		if len(k.PublicKey) != keylen || len(k.SecretKey) != keylen {
			return nil, fmt.Errorf("%w: CURVE keys of different lengths", bridge.ErrConfig)
		}
		server, public, secret = C.CBytes([]byte(k.ServerKey)), C.CBytes([]byte(k.PublicKey)), C.CBytes([]byte(k.SecretKey))
		defer C.free(server)
		defer C.free(public)
		defer C.free(secret)
	}
	var stage C.int
	sock, err := C.modzmq_dealer(cep, C.int(opts.Heartbeat.Milliseconds()), C.int(opts.HeartbeatTimeout.Milliseconds()),
		server, public, secret, C.size_t(keylen), C.int64_t(opts.MaxMsgSize), &stage)
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
	var p [8]unsafe.Pointer
	var l [8]C.size_t
	for len(frames) > 0 {
		n := min(len(frames), 8)
		for i, f := range frames[:n] {
			p[i], l[i] = nil, C.size_t(len(f))
			if len(f) > 0 {
				p[i] = unsafe.Pointer(&f[0])
			}
		}
		last := C.int(0)
		if n == len(frames) {
			last = 1
		}
		rc := C.modzmq_send(c.sock, set, C.int(n), last, p[0], l[0], p[1], l[1], p[2], l[2], p[3], l[3],
			p[4], l[4], p[5], l[5], p[6], l[6], p[7], l[7])
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
