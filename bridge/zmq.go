package bridge

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// ZMQ is the libzmq transport (through github.com/pebbe/zmq4): DEALER
// sockets with ZMQ_IMMEDIATE, so a message is only queued to a connected
// worker, and no linger, so a closed socket never blocks.
type ZMQ struct {
	once sync.Once
	ctx  *zmq.Context
	err  error
}

func (t *ZMQ) context() (*zmq.Context, error) {
	t.once.Do(func() {
		t.ctx, t.err = zmq.NewContext()
		if t.err == nil {
			t.ctx.SetRetryAfterEINTR(true)
		}
	})
	return t.ctx, t.err
}

// Dial creates a DEALER socket connected to every endpoint.
func (t *ZMQ) Dial(endpoints []string) (Conn, error) {
	ctx, err := t.context()
	if err != nil {
		return nil, fmt.Errorf("zmq context: %w", err)
	}
	s, err := ctx.NewSocket(zmq.DEALER)
	if err != nil {
		return nil, fmt.Errorf("zmq socket: %w", err)
	}
	c := &zmqConn{sock: s, poller: zmq.NewPoller(), sndtimeo: -2}
	if err = c.setup(endpoints); err != nil {
		s.Close()
		return nil, err
	}
	c.poller.Add(s, zmq.POLLIN)
	return c, nil
}

type zmqConn struct {
	sock     *zmq.Socket
	poller   *zmq.Poller
	sndtimeo time.Duration // last value set, to skip redundant setsockopt calls
}

func (c *zmqConn) setup(endpoints []string) error {
	if err := c.sock.SetLinger(0); err != nil {
		return err
	}
	if err := c.sock.SetImmediate(true); err != nil {
		return err
	}
	for _, ep := range endpoints {
		if err := c.sock.Connect(ep); err != nil {
			return fmt.Errorf("%w: connect %s: %v", ErrConfig, ep, err)
		}
	}
	return nil
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
				return fmt.Errorf("%w: no connected worker took the request within %v", ErrNoWorker, timeout)
			}
			return fmt.Errorf("zmq send: %w", err)
		}
	}
	return nil
}

func (c *zmqConn) Recv(timeout time.Duration) ([][]byte, error) {
	polled, err := c.poller.Poll(timeout)
	if err != nil {
		return nil, fmt.Errorf("zmq poll: %w", err)
	}
	if len(polled) == 0 {
		return nil, ErrTimeout
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

func (c *zmqConn) Close() error { return c.sock.Close() }

func isErrno(err error, e syscall.Errno) bool {
	var zerr zmq.Errno
	return errors.As(err, &zerr) && syscall.Errno(zerr) == e
}
