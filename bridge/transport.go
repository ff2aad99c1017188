package bridge

import "time"

// Conn is one DEALER connection to one endpoint. A Conn is owned by one
// goroutine at a time, handed over through a mutex or channel.
type Conn interface {
	// Send queues one multipart message. It returns an error wrapping
	// ErrNoWorker when the worker did not take it within timeout.
	Send(frames [][]byte, timeout time.Duration) error
	// Recv waits up to timeout (zero: not at all) for one multipart message
	// and returns ErrTimeout when none arrived.
	Recv(timeout time.Duration) ([][]byte, error)
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
	// the header that would (ErrReplyTooLarge). Zero means no limit.
	MaxMsgSize int64
	// ConnectTimeout is how long Dial may keep trying while the worker is
	// not there (Options.ConnectTimeout).
	ConnectTimeout time.Duration
	// Log receives the transport's own lines: a shared connection dropping
	// a reply nobody waits for any more (MODZMQ0104, debug).
	Log LogFunc
}

// EventKind is a connection event reported by a Transport's Watch.
type EventKind int

// Connection events, as a Transport's Watch reports them.
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

// Transport makes connections. The bridge's own is ZMTP; the Apache module
// has one of its own whose connections its C code waits on, and tests wrap
// ZMTP to make failures happen.
type Transport interface {
	Dial(endpoint string, opts DialOptions) (Conn, error)
	// Watch keeps a connection of its own to each endpoint and calls fn
	// (never concurrently) with every event on them until stop is called.
	Watch(endpoints []string, opts DialOptions, fn func(endpoint string, ev EventKind, detail string)) (stop func(), err error)
}
