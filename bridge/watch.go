package bridge

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// A watch connects again watchRetry after a connection ends (libzmq's
// default ZMQ_RECONNECT_IVL), and after failed attempts waits twice as long
// each time, up to watchRetryMax.
const (
	watchRetry    = 100 * time.Millisecond
	watchRetryMax = 3 * time.Second
)

// Watch keeps a ZMTP connection of its own to each endpoint and reports
// what happens to it, as libzmq's socket monitor would: connected once the
// handshake is done; connect retried while nobody listens; handshake failed
// for a peer that is not a worker socket or refuses the bridge; disconnected
// when the worker closes the connection, breaks ZMTP, or (with heartbeats)
// sends nothing for HeartbeatTimeout after a PING. The connection never
// sends a request; what a worker sends on it is read by the reader's rules
// and dropped. fn is never called concurrently.
func (t *ZMTP) Watch(endpoints []string, opts DialOptions, fn func(string, EventKind, string)) (func(), error) {
	var mu sync.Mutex
	report := func(ep string, ev EventKind, detail string) {
		mu.Lock()
		defer mu.Unlock()
		fn(ep, ev, detail)
	}
	for _, ep := range endpoints {
		if _, _, _, ok := zmtpAddr(ep); !ok {
			return nil, fmt.Errorf("%w: endpoint %q", ErrConfig, ep)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, ep := range endpoints {
		w := &watcher{endpoint: ep, opts: opts, stop: stop, report: report}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run()
		}()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			close(stop)
			wg.Wait()
			for _, ep := range endpoints {
				report(ep, EventClosed, "")
			}
		})
	}, nil
}

// watcher is the watch of one endpoint.
type watcher struct {
	endpoint string
	opts     DialOptions
	stop     chan struct{}
	report   func(string, EventKind, string)

	mu sync.Mutex
	nc net.Conn // the connection being read, closed to stop the read
}

func (w *watcher) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

func (w *watcher) run() {
	defer func() {
		if p := recover(); p != nil {
			w.opts.Log.Logf(LevelError, CodePanic, "%s: recovered panic in the endpoint's watch, which has stopped: %v", w.endpoint, p)
		}
	}()
	go func() {
		<-w.stop
		w.mu.Lock()
		if w.nc != nil {
			w.nc.Close()
		}
		w.mu.Unlock()
	}()
	retry := watchRetry
	for !w.stopped() {
		c, kind, detail := w.connect(retry)
		if c == nil {
			if !w.stopped() {
				w.report(w.endpoint, kind, detail)
			}
		} else {
			w.report(w.endpoint, EventConnected, "")
			err := w.hold(c)
			c.nc.Close()
			if !w.stopped() {
				w.report(w.endpoint, EventDisconnected, err.Error())
			}
		}
		select {
		case <-w.stop:
		case <-time.After(retry):
		}
		if c == nil {
			retry = min(2*retry, watchRetryMax)
		} else {
			retry = watchRetry
		}
	}
}

// connect makes one attempt: the connection, or the event that says why
// there is none (the next attempt comes after retry).
func (w *watcher) connect(retry time.Duration) (*zmtpConn, EventKind, string) {
	wait := max(w.opts.ConnectTimeout, time.Second)
	c := newZMTPConn(w.endpoint, w.opts)
	nc, err := c.dial(wait)
	if err != nil {
		return nil, EventConnectRetried, fmt.Sprintf("next attempt in %d ms (%v)", retry.Milliseconds(), errors.Unwrap(err))
	}
	w.mu.Lock()
	if w.stopped() {
		w.mu.Unlock()
		nc.Close()
		return nil, 0, ""
	}
	w.nc = nc
	w.mu.Unlock()
	if err := c.attach(nc, time.Now().Add(wait)); err != nil {
		nc.Close()
		switch {
		case errors.Is(err, errZMTPRefused):
			return nil, EventHandshakeFailed, "authentication failed: " + err.Error()
		case errors.Is(err, io.EOF), isTimeout(err), errors.Is(err, os.ErrDeadlineExceeded):
			return nil, EventHandshakeFailed, fmt.Sprintf("the peer did not complete the ZMTP handshake (%v)", err)
		}
		return nil, EventHandshakeFailed, err.Error()
	}
	return c, 0, ""
}

// hold reads the connection until it fails; with heartbeats it sends a
// PING every interval and gives up on a worker silent for the timeout.
func (w *watcher) hold(c *zmtpConn) error {
	ivl, timeout := w.opts.Heartbeat, w.opts.HeartbeatTimeout
	// Without heartbeats no PING is sent (a worker whose library does not
	// answer them may take them for messages): only a closed or broken
	// connection counts.
	pinging := ivl > 0
	if !pinging {
		ivl, timeout = time.Hour, 0
	}
	heard, next := time.Now(), time.Now()
	ping := binary.BigEndian.AppendUint16([]byte{4, 'P', 'I', 'N', 'G'},
		uint16(min(timeout/(100*time.Millisecond), 0xffff))) // TTL in deciseconds
	var wire []byte
	for {
		now := time.Now()
		if timeout > 0 && now.Sub(heard) > timeout {
			return fmt.Errorf("the worker sent nothing for %v after a PING", timeout)
		}
		if pinging && !now.Before(next) { // at once, then every interval
			c.nc.SetWriteDeadline(now.Add(time.Second))
			wire = c.appendCommand(wire[:0], ping) // sealed anew each time with CURVE
			if _, err := c.nc.Write(wire); err != nil {
				return err
			}
			next = now.Add(ivl)
		}
		wake := next
		if !pinging {
			wake = now.Add(ivl)
		}
		if give := heard.Add(timeout + time.Millisecond); timeout > 0 && give.Before(wake) {
			wake = give
		}
		seen := c.seen
		_, err := c.Recv(max(time.Until(wake), time.Millisecond))
		if c.seen != seen {
			heard = time.Now()
		}
		switch {
		case err == nil:
			// A message on a connection that sent no request: dropped.
		case errors.Is(err, ErrTimeout):
		default:
			return err
		}
	}
}
