package bridge

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// ZMQ is the libzmq transport (through github.com/pebbe/zmq4): DEALER
// sockets with ZMQ_IMMEDIATE, so a message is only queued to a connected
// worker, no linger, so a closed socket never blocks, and optional ZMTP
// heartbeats.
type ZMQ struct {
	once sync.Once
	ctx  *zmq.Context
	err  error
}

var monitorSeq atomic.Uint64

func (t *ZMQ) context() (*zmq.Context, error) {
	t.once.Do(func() {
		t.ctx, t.err = zmq.NewContext()
		if t.err == nil {
			t.ctx.SetRetryAfterEINTR(true)
		}
	})
	return t.ctx, t.err
}

func (t *ZMQ) dealer(endpoint string, opts DialOptions) (*zmq.Socket, error) {
	ctx, err := t.context()
	if err != nil {
		return nil, fmt.Errorf("zmq context: %w", err)
	}
	s, err := ctx.NewSocket(zmq.DEALER)
	if err != nil {
		return nil, fmt.Errorf("zmq socket: %w", err)
	}
	err = errors.Join(s.SetLinger(0), s.SetImmediate(true))
	if err == nil && opts.Heartbeat > 0 {
		err = errors.Join(s.SetHeartbeatIvl(opts.Heartbeat), s.SetHeartbeatTimeout(opts.HeartbeatTimeout),
			s.SetHeartbeatTtl(opts.HeartbeatTimeout))
	}
	if err == nil && opts.Curve != nil {
		err = errors.Join(s.SetCurveServerkey(opts.Curve.ServerKey), s.SetCurvePublickey(opts.Curve.PublicKey),
			s.SetCurveSecretkey(opts.Curve.SecretKey))
	}
	if err == nil && opts.MaxMsgSize > 0 {
		err = s.SetMaxmsgsize(opts.MaxMsgSize)
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("zmq socket options: %w", err)
	}
	return s, nil
}

// Dial creates a DEALER socket connected to endpoint.
func (t *ZMQ) Dial(endpoint string, opts DialOptions) (Conn, error) {
	s, err := t.dealer(endpoint, opts)
	if err != nil {
		return nil, err
	}
	if err := s.Connect(endpoint); err != nil {
		s.Close()
		return nil, fmt.Errorf("%w: connect %s: %v", ErrConfig, endpoint, err)
	}
	c := &zmqConn{sock: s, poller: zmq.NewPoller(), sndtimeo: -2, fd: -1}
	c.poller.Add(s, zmq.POLLIN)
	return c, nil
}

// Watch connects a sentinel DEALER (which never sends) to each endpoint,
// monitors it, and reports its events to fn from one goroutine.
func (t *ZMQ) Watch(endpoints []string, opts DialOptions, fn func(string, EventKind, string)) (func(), error) {
	ctx, err := t.context()
	if err != nil {
		return nil, err
	}
	type watched struct {
		endpoint string
		sentinel *zmq.Socket
		events   *zmq.Socket
	}
	var ws []watched
	closeAll := func() {
		for _, w := range ws {
			unmonitor(w.sentinel)
			w.sentinel.Close()
			w.events.Close()
		}
	}
	poller := zmq.NewPoller()
	for _, ep := range endpoints {
		s, err := t.dealer(ep, opts)
		if err != nil {
			closeAll()
			return nil, err
		}
		addr := fmt.Sprintf("inproc://modzmq-monitor-%d", monitorSeq.Add(1))
		const mask = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED |
			zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
		if err := s.Monitor(addr, mask); err != nil {
			s.Close()
			closeAll()
			return nil, fmt.Errorf("zmq monitor: %w", err)
		}
		ev, err := ctx.NewSocket(zmq.PAIR)
		if err == nil {
			err = ev.Connect(addr)
		}
		if err != nil {
			unmonitor(s)
			s.Close()
			closeAll()
			return nil, fmt.Errorf("zmq monitor: %w", err)
		}
		if err := s.Connect(ep); err != nil {
			unmonitor(s)
			s.Close()
			ev.Close()
			closeAll()
			return nil, fmt.Errorf("%w: connect %s: %v", ErrConfig, ep, err)
		}
		ws = append(ws, watched{ep, s, ev})
		poller.Add(ev, zmq.POLLIN)
	}
	var stopped atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer closeAll()
		for !stopped.Load() {
			polled, err := poller.Poll(200 * time.Millisecond)
			if err != nil {
				return
			}
			for _, p := range polled {
				for _, w := range ws {
					if w.events != p.Socket {
						continue
					}
					msg, err := w.events.RecvMessageBytes(zmq.DONTWAIT)
					if err != nil {
						continue
					}
					e, addr, value, err := decodeMonitorEvent(msg)
					if err != nil {
						continue
					}
					kind, detail := eventKind(e, addr, value)
					if kind != 0 {
						fn(w.endpoint, kind, detail)
					}
				}
			}
		}
		for _, w := range ws {
			fn(w.endpoint, EventClosed, "")
		}
	}()
	return func() {
		if stopped.CompareAndSwap(false, true) {
			<-done
		}
	}, nil
}

// unmonitor stops s's monitor before s and the monitor's reader close.
// libzmq (4.3.4) otherwise keeps the monitor until it has reaped s, and an
// event in that window (a connect retried) is sent, blocking, to a monitor
// socket whose reader is gone: the context's I/O thread then waits forever,
// and every socket of the context stops connecting and reporting.
func unmonitor(s *zmq.Socket) {
	s.Monitor("", 0)
}

// errMonitorEvent is a monitor message that is not a libzmq 4.x event.
var errMonitorEvent = errors.New("not a libzmq 4.x monitor event")

// decodeMonitorEvent decodes a message from a libzmq 4.x socket monitor
// (zmq_socket_monitor): frame 1 is 6 bytes, the event id (uint16) then its
// value (uint32), both in native byte order; frame 2 is the endpoint's
// address. The value comes back as a signed 32-bit number, as
// (*zmq.Socket).RecvEvent gives it. Watch uses this instead of RecvEvent,
// whose C helper in github.com/pebbe/zmq4 (v1.4.0 and master) loads the value
// through a misaligned uint32 pointer, undefined behaviour that UBSan reports.
func decodeMonitorEvent(msg [][]byte) (e zmq.Event, addr string, value int, err error) {
	if len(msg) != 2 || len(msg[0]) != 6 {
		return 0, "", 0, errMonitorEvent
	}
	e = zmq.Event(binary.NativeEndian.Uint16(msg[0]))
	value = int(int32(binary.NativeEndian.Uint32(msg[0][2:])))
	return e, string(msg[1]), value, nil
}

func eventKind(e zmq.Event, addr string, value int) (EventKind, string) {
	switch e {
	case zmq.EVENT_HANDSHAKE_SUCCEEDED:
		return EventConnected, ""
	case zmq.EVENT_DISCONNECTED:
		return EventDisconnected, ""
	case zmq.EVENT_CONNECT_RETRIED:
		return EventConnectRetried, fmt.Sprintf("next attempt in %d ms", value)
	case zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
		return EventHandshakeFailed, fmt.Sprintf("errno %d", value)
	case zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
		return EventHandshakeFailed, fmt.Sprintf("ZMTP protocol error 0x%x", value)
	case zmq.EVENT_HANDSHAKE_FAILED_AUTH:
		return EventHandshakeFailed, fmt.Sprintf("authentication failed (status %d)", value)
	}
	return 0, ""
}

type zmqConn struct {
	sock     *zmq.Socket
	poller   *zmq.Poller
	sndtimeo time.Duration // last value set, to skip redundant setsockopt calls
	fd       int           // ZMQ_FD, once asked for; -1 before
}

func (c *zmqConn) Send(frames [][]byte, timeout time.Duration) error {
	timeout = timeout.Truncate(time.Millisecond)
	if timeout <= 0 {
		timeout = time.Millisecond
	}
	if timeout != c.sndtimeo {
		if err := c.sock.SetSndtimeo(timeout); err != nil {
			return err
		}
		c.sndtimeo = timeout
	}
	last := len(frames) - 1
	for i, f := range frames {
		flag := zmq.SNDMORE
		if i == last {
			flag = 0
		}
		if _, err := c.sock.SendBytes(f, flag); err != nil {
			if isErrno(err, syscall.EAGAIN) {
				return fmt.Errorf("%w: the worker did not take the request within %v", ErrNoWorker, timeout)
			}
			return fmt.Errorf("zmq send: %w", err)
		}
	}
	return nil
}

func (c *zmqConn) Recv(timeout time.Duration) ([][]byte, error) {
	if timeout > 0 {
		polled, err := c.poller.Poll(timeout)
		if err != nil {
			return nil, fmt.Errorf("zmq poll: %w", err)
		}
		if len(polled) == 0 {
			return nil, ErrTimeout
		}
	} else {
		// ZMQ_EVENTS makes libzmq process its pending commands now, which
		// also resets ZMQ_FD; a bare non-blocking receive may skip that for
		// up to a millisecond and leave the descriptor readable.
		ev, err := c.sock.GetEvents()
		if err != nil {
			return nil, fmt.Errorf("zmq events: %w", err)
		}
		if ev&zmq.POLLIN == 0 {
			return nil, ErrTimeout
		}
	}
	msg, err := c.sock.RecvMessageBytes(zmq.DONTWAIT)
	if err != nil {
		if isErrno(err, syscall.EAGAIN) {
			return nil, ErrTimeout
		}
		return nil, fmt.Errorf("zmq recv: %w", err)
	}
	return msg, nil
}

func (c *zmqConn) FD() (int, error) {
	if c.fd < 0 {
		fd, err := c.sock.GetFd()
		if err != nil {
			return -1, err
		}
		c.fd = fd
	}
	return c.fd, nil
}

func (c *zmqConn) Close() error { return c.sock.Close() }

func isErrno(err error, e syscall.Errno) bool {
	var zerr zmq.Errno
	return errors.As(err, &zerr) && syscall.Errno(zerr) == e
}
