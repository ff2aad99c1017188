package bridge

import "time"

// Conn is one DEALER connection to a set of endpoints. A Conn is owned by one
// goroutine at a time; handing it over through a mutex or channel is the
// memory fence libzmq requires between threads.
type Conn interface {
	// Send queues one multipart message. It returns an error wrapping
	// ErrNoWorker when no connected worker took it within timeout.
	Send(frames [][]byte, timeout time.Duration) error
	// Recv waits up to timeout for one multipart message and returns an error
	// wrapping ErrTimeout when none arrived.
	Recv(timeout time.Duration) ([][]byte, error)
	// Close discards queued messages and releases the connection.
	Close() error
}

// Transport makes connections. The bridge's production transport is libzmq
// (see ZMQ); keeping it behind this interface leaves the bridge's logic free
// of any one ZeroMQ library.
type Transport interface {
	Dial(endpoints []string) (Conn, error)
}
