package bridge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for zero Options fields.
const (
	DefaultTimeout          = 30 * time.Second
	DefaultConnectTimeout   = 500 * time.Millisecond
	DefaultMaxIdle          = 64
	DefaultHeartbeat        = time.Second
	DefaultHeartbeatTimeout = 3 * time.Second
)

// Options configure a Client. The zero value of each field is a usable
// default, except Endpoints, which must name at least one endpoint.
type Options struct {
	// Endpoints are tcp:// or ipc:// addresses of workers (or of a broker).
	// Each request goes to the reachable endpoint with the fewest requests
	// in flight.
	Endpoints []string
	// Timeout bounds a whole exchange, retries included, when the caller
	// gives none; zero means DefaultTimeout.
	Timeout time.Duration
	// ConnectTimeout bounds how long a request waits for a connected worker
	// before failing with ErrNoWorker; zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Heartbeat is the ZMTP heartbeat interval, and HeartbeatTimeout how long
	// a silent worker is trusted; zero means DefaultHeartbeat and
	// DefaultHeartbeatTimeout. NoHeartbeat turns heartbeats (and with them
	// the early failure of requests on a lost worker) off, for workers whose
	// ZeroMQ library does not answer ZMTP PINGs.
	Heartbeat, HeartbeatTimeout time.Duration
	NoHeartbeat                 bool
	// Retries is how many more attempts an idempotent request (GET, HEAD,
	// OPTIONS, PUT, DELETE) gets when it could not be delivered or its
	// worker was lost; RetryAll extends this to every method.
	Retries  int
	RetryAll bool
	// MaxInFlight bounds the requests in flight through this client; over
	// it a request fails at once with ErrOverload. Zero means no limit.
	MaxInFlight int
	// Curve, when set, makes every connection a CurveZMQ client of workers
	// that run as CURVE servers (see LoadCurve).
	Curve *Curve
	// MaxReply bounds the size of a reply (its status, headers and body
	// frames); a larger one is an ErrProtocol error (502). A connection's
	// reader refuses a message that passes MaxReply + 64 KiB (counting 64
	// bytes a frame) as soon as a frame header says so, before the bytes
	// arrive (see DialOptions.MaxMsgSize). Zero means no limit on the size;
	// the buffer then still grows only with bytes received, and a reply of
	// more than five frames is refused from its header either way.
	MaxReply int64
	// MaxIdle is how many idle connections the client keeps per endpoint;
	// zero means DefaultMaxIdle.
	MaxIdle int
	// Transport makes connections; nil means ZMTP.
	Transport Transport
	// Log receives the client's log lines; nil discards them.
	Log LogFunc
	// OnState, when set, is called (from the watch goroutine) after every
	// change of an endpoint's state, with its index in Endpoints and its
	// epoch, which grows at every disconnect. A front that waits for replies
	// by itself mirrors them to notice a lost worker (see Adopt).
	OnState func(endpoint int, state State, epoch uint64)
	// Reuse, when set, is offered every sound connection the client is done
	// with before it pools it, with its endpoint's index; it returns true
	// when it took the connection (a front keeping a pool of its own).
	Reuse func(endpoint int, conn Conn) bool
	// Notices: the workers want a cancel notice when a request's caller
	// goes away (its context is cancelled) before the reply or the stream
	// ended. REP workers cannot take notices.
	Notices bool
	// StreamIdleTimeout ends a stream with no message for this long; zero
	// means DefaultStreamIdleTimeout. A keep-alive before a stream's head
	// holds the request this long past its timeout.
	StreamIdleTimeout time.Duration
	// MaxStreams bounds the streams open through this client at once; a
	// head over it fails the request with ErrOverload. Zero: no limit.
	MaxStreams int
	// NoFirstWait: NewClient returns at once instead of waiting up to
	// 250 ms for the endpoints' first reports (a front that makes the client
	// on a thread that must not wait in Go).
	NoFirstWait bool
}

// ParseEndpoint checks that s is an endpoint the bridge can connect to:
// tcp://host:port, tcp://source;host:port (the connection's own address:
// "*" or a numeric IP address, then ":port", ":*" or nothing) or
// ipc://path. Its errors wrap ErrConfig only in NewClient.
func ParseEndpoint(s string) error {
	switch {
	case strings.HasPrefix(s, "tcp://"):
		hostport := s[len("tcp://"):]
		if src, dst, ok := strings.Cut(hostport, ";"); ok {
			if _, err := sourceAddr(src); err != nil {
				return fmt.Errorf("endpoint %q: %v", s, err)
			}
			hostport = dst
		}
		i := strings.LastIndexByte(hostport, ':')
		if i <= 0 {
			return fmt.Errorf("endpoint %q: tcp:// needs host:port", s)
		}
		port, err := strconv.Atoi(hostport[i+1:])
		if err != nil || port < 1 || port > 65535 {
			return fmt.Errorf("endpoint %q: port must be 1-65535", s)
		}
		return nil
	case strings.HasPrefix(s, "ipc://"):
		if len(s) == len("ipc://") {
			return fmt.Errorf("endpoint %q: ipc:// needs a path", s)
		}
		return nil
	}
	return fmt.Errorf("endpoint %q: scheme must be tcp:// or ipc://", s)
}

// Client relays requests to the workers behind a set of endpoints. It is
// safe for concurrent use; each call borrows a connection to one endpoint, so
// a calling goroutine (or Apache thread) never hands off to another one.
type Client struct {
	opts      Options
	dial      DialOptions
	endpoints []*endpoint
	prefix    []byte // process-unique request id prefix
	seq       atomic.Uint64
	rr        atomic.Uint64
	inFlight  atomic.Int64
	stats     Stats
	overloads atomic.Int64
	retries   atomic.Int64
	streams   StreamStats
	stopWatch func()
	// ready closes once every endpoint's watch reported its first event.
	ready        chan struct{}
	pendingFirst atomic.Int64
	closed       atomic.Bool
	closeOnce    sync.Once
}

// NewClient checks opts and returns a client. Connections are made lazily;
// a watch connection per endpoint starts at once, and NewClient waits up to
// 250 ms (or ConnectTimeout) for their first reports.
func NewClient(opts Options) (*Client, error) {
	if len(opts.Endpoints) == 0 {
		return nil, fmt.Errorf("%w: no endpoints", ErrConfig)
	}
	for _, ep := range opts.Endpoints {
		if err := ParseEndpoint(ep); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrConfig, err)
		}
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	if opts.MaxIdle <= 0 {
		opts.MaxIdle = DefaultMaxIdle
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = DefaultHeartbeat
	}
	if opts.HeartbeatTimeout <= 0 {
		opts.HeartbeatTimeout = max(DefaultHeartbeatTimeout, 2*opts.Heartbeat)
	}
	if opts.Transport == nil {
		opts.Transport = defaultTransport
	}
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, err
	}
	c := &Client{opts: opts, prefix: append(hex.AppendEncode(make([]byte, 0, 16), r[:]), '-')}
	c.dial = DialOptions{Curve: opts.Curve, ConnectTimeout: opts.ConnectTimeout, Log: opts.Log}
	if !opts.NoHeartbeat {
		c.dial.Heartbeat, c.dial.HeartbeatTimeout = opts.Heartbeat, opts.HeartbeatTimeout
	}
	if opts.MaxReply > 0 {
		// Room for the envelope and each frame's count: the exact limit
		// is DecodeReply's.
		c.dial.MaxMsgSize = opts.MaxReply + 64<<10
	}
	for i, addr := range opts.Endpoints {
		c.endpoints = append(c.endpoints, &endpoint{addr: addr, index: i})
	}
	{
		c.pendingFirst.Store(int64(len(c.endpoints)))
		c.ready = make(chan struct{})
		stop, err := opts.Transport.Watch(opts.Endpoints, c.dial, c.event)
		if err != nil {
			return nil, err
		}
		c.stopWatch = stop
		// Give the watch connections a moment to report, so that the first
		// requests already know which workers are up and can notice losing
		// them; a handshake on a working network takes milliseconds.
		if !opts.NoFirstWait {
			select {
			case <-c.ready:
			case <-time.After(min(opts.ConnectTimeout, 250*time.Millisecond)):
			}
		}
	}
	return c, nil
}

var defaultTransport = &ZMTP{}

// Endpoints returns the endpoints the client was made with.
func (c *Client) Endpoints() []string { return c.opts.Endpoints }

// EndpointStatus is a snapshot of one endpoint for status pages.
type EndpointStatus struct {
	Endpoint string
	State    State
	Stats    *EndpointStats
}

// Status returns the state and counters of every endpoint.
func (c *Client) Status() []EndpointStatus {
	out := make([]EndpointStatus, len(c.endpoints))
	for i, e := range c.endpoints {
		out[i] = EndpointStatus{Endpoint: e.addr, State: e.State(), Stats: &e.stats}
	}
	return out
}

// StreamStats returns the client's stream counters, which keep counting.
func (c *Client) StreamStats() *StreamStats { return &c.streams }

// Stats returns the client's outcome counters and latency histogram.
func (c *Client) Stats() *Stats { return &c.stats }

// Counters returns client-wide counts: requests in flight, requests refused
// by MaxInFlight, and retries made.
func (c *Client) Counters() (inFlight, overloads, retries int64) {
	return c.inFlight.Load(), c.overloads.Load(), c.retries.Load()
}

// event handles a watch event (from the transport's watch goroutine).
func (c *Client) event(addr string, ev EventKind, detail string) {
	var e *endpoint
	index := -1
	for i, x := range c.endpoints {
		if x.addr == addr {
			e, index = x, i
		}
	}
	if e == nil {
		return
	}
	if c.opts.OnState != nil {
		defer func() { c.opts.OnState(index, e.State(), e.epoch.Load()) }()
	}
	if ev != EventClosed && !e.reported {
		e.reported = true
		if c.pendingFirst.Add(-1) == 0 {
			close(c.ready)
		}
	}
	switch ev {
	case EventConnected:
		e.stats.Connected.Add(1)
		was := e.State()
		e.state.Store(int32(StateUp))
		e.lastUp = time.Now()
		level := LevelDebug
		if was == StateDown {
			level = LevelInfo
		}
		c.opts.Log.Logf(level, CodeEndpointUp, "%s: worker reachable", addr)
	case EventDisconnected:
		e.stats.Disconnected.Add(1)
		e.epoch.Add(1)
		e.state.Store(int32(StateDown))
		defer e.wakeHeld()
		c.opts.Log.Logf(LevelWarn, CodeEndpointDown, "%s: connection lost (worker stopped, unreachable or silent for %v); requests waiting on it fail now",
			addr, c.opts.HeartbeatTimeout)
		if time.Since(e.lastUp) < c.opts.HeartbeatTimeout+c.opts.Heartbeat {
			if e.flaps++; e.flaps == 3 {
				c.opts.Log.Logf(LevelWarn, CodeHeartbeatHint, "%s: every connection drops one heartbeat timeout after it starts: "+
					"the worker's ZeroMQ library does not answer ZMTP PINGs (pure-Go go-zeromq/zmq4 does not); turn heartbeats off for it", addr)
			}
		} else {
			e.flaps = 0
		}
	case EventConnectRetried:
		e.stats.ConnectRetried.Add(1)
		if e.State() != StateDown {
			e.state.Store(int32(StateDown))
			c.opts.Log.Logf(LevelWarn, CodeEndpointDown, "%s: cannot connect (%s)", addr, detail)
		}
	case EventHandshakeFailed:
		e.stats.HandshakeFailed.Add(1)
		e.state.Store(int32(StateDown))
		c.opts.Log.Logf(LevelError, CodeHandshake, "%s: ZMTP handshake failed: %s", addr, detail)
	case EventClosed:
		c.opts.Log.Logf(LevelDebug, CodeEndpointClosed, "%s: watch closed", addr)
	}
}

// idempotent reports whether method may be retried without RetryAll.
func idempotent(method []byte) bool {
	switch string(method) {
	case "GET", "HEAD", "OPTIONS", "PUT", "DELETE":
		return true
	}
	return false
}

// Do relays req and waits for its reply. timeout bounds the whole exchange
// (zero means Options.Timeout); a deadline on ctx shortens it, and cancelling
// ctx ends the wait with ctx's error. The returned response's slices belong to
// the caller. When req.StreamWindow allows it and the worker streams its
// reply, the response has the head and Stream, which the caller reads and
// must Close.
func (c *Client) Do(ctx context.Context, req *Request, timeout time.Duration) (Response, error) {
	return c.run(ctx, req, timeout).Result()
}

// DoID is Do that also appends to id the request id of the call's latest
// attempt, the one its worker saw (nothing when none was sent), for a
// front's access log.
func (c *Client) DoID(ctx context.Context, req *Request, timeout time.Duration, id []byte) (Response, []byte, error) {
	call := c.run(ctx, req, timeout)
	resp, err := call.Result()
	return resp, call.ID(id), err
}

// run starts a call and steps it to its end.
func (c *Client) run(ctx context.Context, req *Request, timeout time.Duration) *Call {
	call := c.Start(ctx, req, timeout)
	for !call.Done() {
		call.Step(call.Wait()) // the connection waits in Go's netpoller
	}
	return call
}

// retriable errors are those where the worker cannot have answered.
func retriable(err error) bool {
	return errors.Is(err, ErrNoWorker) || errors.Is(err, ErrWorkerLost)
}

// pick chooses the endpoint for an attempt: among those not tried yet (all,
// once every one was tried) and not known to be down (all, when every one
// is), the one with the fewest requests in flight; ties go round-robin.
func (c *Client) pick(tried uint64) (*endpoint, uint64) {
	n := len(c.endpoints)
	if n == 1 {
		return c.endpoints[0], 1
	}
	start := int(c.rr.Add(1) % uint64(n))
	best, bestBit := -1, uint64(0)
	var bestLoad int64
	for pass := 0; pass < 3 && best < 0; pass++ {
		for k := 0; k < n; k++ {
			i := (start + k) % n
			e, bit := c.endpoints[i], uint64(1)<<(i%64)
			if pass < 2 && tried&bit != 0 {
				continue
			}
			if pass == 0 && e.State() == StateDown {
				continue
			}
			if load := e.stats.InFlight.Load(); best < 0 || load < bestLoad {
				best, bestBit, bestLoad = i, bit, load
			}
		}
	}
	return c.endpoints[best], bestBit
}

func idOf(msg [][]byte) string {
	if len(msg) == 0 {
		return `""`
	}
	return quote(msg[0])
}

// Close stops the watch, closes idle connections and makes further calls
// fail with ErrClosed. Connections in use are closed when their call returns.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		if c.stopWatch != nil {
			c.stopWatch()
		}
		for _, e := range c.endpoints {
			e.closeIdle()
		}
	})
	return nil
}
