package bridge

import "time"

// Conn is one DEALER connection to one endpoint. A Conn is owned by one
// goroutine at a time; handing it over through a mutex or channel is the
// memory fence libzmq requires between threads.
type Conn interface {
	// Send queues one multipart message. It returns an error wrapping
	// ErrNoWorker when the worker did not take it within timeout.
	Send(frames [][]byte, timeout time.Duration) error
	// Recv waits up to timeout (zero: not at all) for one multipart message
	// and returns ErrTimeout when none arrived.
	Recv(timeout time.Duration) ([][]byte, error)
	// FD returns a file descriptor that becomes readable when Recv may have
	// something (libzmq's ZMQ_FD: check with Recv(0) after every wake-up).
	FD() (int, error)
	// Close discards queued messages and releases the connection.
	Close() error
}

// DialOptions tune a connection.
type DialOptions struct {
	// Heartbeat is the ZMTP PING interval; zero disables heartbeats.
	Heartbeat time.Duration
	// HeartbeatTimeout drops a connection whose peer sent nothing for this
	// long after a PING.
	HeartbeatTimeout time.Duration
	// Curve, when set, makes the connection a CurveZMQ client.
	Curve *Curve
	// MaxMsgSize bounds a message: the ZMTP transport's reader counts each
	// frame's size plus 64 bytes and refuses a message that passes it from
	// the header that would (ErrReplyTooLarge); libzmq (ZMQ_MAXMSGSIZE)
	// applies it to each frame alone. Zero means no limit.
	MaxMsgSize int64
	// ConnectTimeout is how long a transport that connects in Dial itself
	// may keep trying while the worker is not there (Options.ConnectTimeout).
	// libzmq connects in the background and ignores it.
	ConnectTimeout time.Duration
	// Log receives the transport's own lines: a shared connection dropping
	// a reply nobody waits for any more (MODZMQ0104, debug).
	Log LogFunc
}

// EventKind is a connection event reported by a Transport's Watch.
type EventKind int

// Connection events, as libzmq's socket monitor reports them.
const (
	EventConnected       EventKind = iota + 1 // handshake done: the worker is reachable
	EventDisconnected                         // the connection dropped (peer gone, heartbeat timeout)
	EventConnectRetried                       // a connect attempt failed; retrying
	EventHandshakeFailed                      // the ZMTP handshake failed (wrong protocol, security)
	EventClosed                               // the watch ended
)

func (k EventKind) String() string {
	switch k {
	case EventConnected:
		return "connected"
	case EventDisconnected:
		return "disconnected"
	case EventConnectRetried:
		return "connect retried"
	case EventHandshakeFailed:
		return "handshake failed"
	case EventClosed:
		return "closed"
	}
	return "unknown"
}

// Transport makes connections. The bridge's production transport is libzmq
// (see ZMQ); keeping it behind this interface leaves the bridge's logic free
// of any one ZeroMQ library.
type Transport interface {
	Dial(endpoint string, opts DialOptions) (Conn, error)
	// Watch keeps a connection of its own to each endpoint and calls fn (from
	// one goroutine) with every event on them until stop is called.
	Watch(endpoints []string, opts DialOptions, fn func(endpoint string, ev EventKind, detail string)) (stop func(), err error)
}
