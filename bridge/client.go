package bridge

import (
	"bytes"
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
	DefaultTimeout        = 30 * time.Second
	DefaultConnectTimeout = 500 * time.Millisecond
	DefaultMaxIdle        = 64
)

// Options configure a Client. The zero value of each field is a usable
// default, except Endpoints, which must name at least one endpoint.
type Options struct {
	// Endpoints are tcp:// or ipc:// addresses of workers (or of a broker);
	// requests are spread over them round-robin.
	Endpoints []string
	// Timeout bounds a whole exchange when the caller gives none; zero means
	// DefaultTimeout.
	Timeout time.Duration
	// ConnectTimeout bounds how long a request waits for a connected worker
	// before failing with ErrNoWorker; zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// MaxIdle is how many idle connections the client keeps; zero means
	// DefaultMaxIdle.
	MaxIdle int
	// Transport makes connections; nil means libzmq (ZMQ).
	Transport Transport
	// Log receives the client's log lines; nil discards them.
	Log LogFunc
}

// ParseEndpoint checks that s is an endpoint the bridge can connect to:
// tcp://host:port or ipc://path. Its errors wrap ErrConfig only in NewClient.
func ParseEndpoint(s string) error {
	switch {
	case strings.HasPrefix(s, "tcp://"):
		hostport := s[len("tcp://"):]
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

// Client relays requests to the workers behind one set of endpoints. It is
// safe for concurrent use; each call borrows a connection from a pool, so a
// calling goroutine (or Apache thread) never hands off to another one.
type Client struct {
	opts   Options
	prefix []byte // process-unique request id prefix
	seq    atomic.Uint64

	mu     sync.Mutex
	idle   []*pooled
	closed bool
}

// pooled is a connection with the scratch space one exchange needs, so that
// steady-state requests allocate only what the transport allocates.
type pooled struct {
	conn   Conn
	id     []byte
	meta   []byte
	frames [][]byte
}

// NewClient checks opts and returns a client. Connections are made lazily.
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
	if opts.Transport == nil {
		opts.Transport = defaultTransport
	}
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, err
	}
	prefix := make([]byte, 0, 16)
	prefix = hex.AppendEncode(prefix, r[:])
	prefix = append(prefix, '-')
	return &Client{opts: opts, prefix: prefix}, nil
}

var defaultTransport = &ZMQ{}

// Endpoints returns the endpoints the client was made with.
func (c *Client) Endpoints() []string { return c.opts.Endpoints }

// Do relays req and waits for its reply. timeout bounds the whole exchange
// (zero means Options.Timeout); a deadline on ctx shortens it, and cancelling
// ctx ends the wait with ctx's error. The returned response's slices belong to
// the caller.
func (c *Client) Do(ctx context.Context, req *Request, timeout time.Duration) (Response, error) {
	if timeout <= 0 {
		timeout = c.opts.Timeout
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	p, err := c.get()
	if err != nil {
		return Response{}, err
	}
	resp, err := c.exchange(ctx, p, req, deadline)
	c.put(p, err)
	return resp, err
}

func (c *Client) exchange(ctx context.Context, p *pooled, req *Request, deadline time.Time) (Response, error) {
	p.id = strconv.AppendUint(append(p.id[:0], c.prefix...), c.seq.Add(1), 10)
	p.meta = appendMeta(p.meta[:0], p.id, req.Meta)
	p.frames = requestFrames(p.frames, p.id, p.meta, req)

	sendWait := min(c.opts.ConnectTimeout, time.Until(deadline))
	if err := p.conn.Send(p.frames, sendWait); err != nil {
		return Response{}, err
	}
	done := ctx.Done()
	for {
		wait := time.Until(deadline)
		if wait <= 0 {
			return Response{}, fmt.Errorf("%w (request %s)", ErrTimeout, p.id)
		}
		if done != nil {
			wait = min(wait, 100*time.Millisecond)
		}
		msg, err := p.conn.Recv(wait)
		if err == ErrTimeout {
			if done != nil && ctx.Err() != nil {
				return Response{}, ctx.Err()
			}
			continue
		}
		if err != nil {
			return Response{}, err
		}
		if len(msg) == 0 || !bytes.Equal(msg[0], p.id) {
			// A reply to a request that timed out earlier on this connection.
			c.opts.Log.Logf(LevelDebug, CodeStaleReply, "dropped a reply nobody waits for any more (request %s)", idOf(msg))
			continue
		}
		if len(msg) < 2 || len(msg[1]) != 0 {
			return Response{}, protocolError("reply to request %s lacks the empty delimiter frame after the request id", p.id)
		}
		resp, err := DecodeReply(msg[2:])
		if err != nil {
			return resp, fmt.Errorf("request %s: %w", p.id, err)
		}
		return resp, nil
	}
}

func idOf(msg [][]byte) string {
	if len(msg) == 0 {
		return `""`
	}
	return quote(msg[0])
}

func (c *Client) get() (*pooled, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	if n := len(c.idle); n > 0 {
		p := c.idle[n-1]
		c.idle = c.idle[:n-1]
		c.mu.Unlock()
		return p, nil
	}
	c.mu.Unlock()
	conn, err := c.opts.Transport.Dial(c.opts.Endpoints)
	if err != nil {
		return nil, err
	}
	return &pooled{conn: conn, frames: make([][]byte, 0, 8)}, nil
}

// put returns p to the pool. A connection whose last exchange failed below
// the protocol (a socket error) is closed instead of reused.
func (c *Client) put(p *pooled, err error) {
	reusable := err == nil || isExchangeOutcome(err)
	c.mu.Lock()
	if reusable && !c.closed && len(c.idle) < c.opts.MaxIdle {
		c.idle = append(c.idle, p)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	p.conn.Close()
}

func isExchangeOutcome(err error) bool {
	for _, e := range []error{ErrTimeout, ErrNoWorker, ErrProtocol, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Close closes idle connections and makes further calls fail with ErrClosed.
// Connections in use are closed when their call returns.
func (c *Client) Close() error {
	c.mu.Lock()
	idle := c.idle
	c.idle, c.closed = nil, true
	c.mu.Unlock()
	for _, p := range idle {
		p.conn.Close()
	}
	return nil
}
