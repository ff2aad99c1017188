package bridge

import (
	"errors"
	"fmt"
)

// Sentinel errors returned (wrapped with %w) by the bridge. Each front maps
// them to one HTTP status: ErrTimeout to 504, ErrNoWorker, ErrWorkerLost and
// ErrOverload to 503 (with Retry-After for ErrOverload), ErrProtocol to 502,
// anything else to 500.
var (
	// ErrTimeout means no reply arrived before the request's deadline.
	ErrTimeout = errors.New("no reply before the deadline")
	// ErrNoWorker means the request could not be handed to any worker:
	// nothing is connected, or every connection's queue is full.
	ErrNoWorker = errors.New("no worker reachable")
	// ErrProtocol means a worker's reply broke the MZMQ/1 rules.
	ErrProtocol = errors.New("reply breaks MZMQ/1")
	// ErrClosed means the client was closed before or during the call.
	ErrClosed = errors.New("bridge client closed")
	// ErrConfig means the options given to the bridge are unusable.
	ErrConfig = errors.New("bad bridge configuration")
	// ErrWorkerLost means the connection to the worker holding the request
	// dropped (crash, pause past the heartbeat timeout, network cut) before
	// it replied.
	ErrWorkerLost = errors.New("worker lost")
	// ErrOverload means the request was refused because too many are in
	// flight (Options.MaxInFlight).
	ErrOverload = errors.New("too many requests in flight")
)

// Code is an operator-facing log code, printed as MODZMQnnnn. Every code is
// documented in docs/ERRORS.md; a code is never reused for another meaning.
type Code int

// Codes the Go side of mod_zmq emits. The C shim owns 0001–0099; the bridge
// owns 0100 and above.
const (
	CodeNoWorker       Code = 101 // send timed out: nothing connected
	CodeTimeout        Code = 102 // no reply before the deadline
	CodeBadReply       Code = 103 // reply breaks MZMQ/1
	CodeStaleReply     Code = 104 // reply for a request nobody waits for (debug)
	CodeSocket         Code = 105 // socket could not be created or connected
	CodeConfig         Code = 106 // unusable backend options
	CodePanic          Code = 107 // recovered panic in the library
	CodeClosed         Code = 108 // client closed
	CodeWorkerLost     Code = 110 // the worker holding a request was lost
	CodeRetry          Code = 111 // an attempt failed and is retried (info)
	CodeOverload       Code = 112 // over MaxInFlight: 503 at once
	CodeEndpointUp     Code = 120 // watch connection up (debug; info after being down)
	CodeEndpointDown   Code = 121 // watch connection lost or cannot connect (warn)
	CodeHandshake      Code = 123 // ZMTP handshake failed (error)
	CodeEndpointClosed Code = 124 // watch closed (debug)
	CodeHeartbeatHint  Code = 125 // connections drop right after starting (warn)
	CodeStream         Code = 130 // a stream ended abnormally after its head
	CodeCancel         Code = 131 // a cancel notice was sent (debug)
	CodeWebSocket      Code = 132 // a WebSocket closed abnormally, or a close could not be sent
)

// String formats the code as it appears in logs, e.g. "MODZMQ0103".
func (c Code) String() string { return fmt.Sprintf("MODZMQ%04d", int(c)) }

// CodeOf returns the log code that belongs to err, or 0 when err is nil.
func CodeOf(err error) Code {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrWorkerLost):
		return CodeWorkerLost
	case errors.Is(err, ErrOverload):
		return CodeOverload
	case errors.Is(err, ErrNoWorker):
		return CodeNoWorker
	case errors.Is(err, ErrTimeout):
		return CodeTimeout
	case errors.Is(err, ErrProtocol):
		return CodeBadReply
	case errors.Is(err, ErrClosed):
		return CodeClosed
	case errors.Is(err, ErrConfig):
		return CodeConfig
	default:
		return CodeSocket
	}
}

// StatusOf returns the HTTP status a front answers with for err: 504, 503,
// 502 or 500.
func StatusOf(err error) int {
	switch {
	case errors.Is(err, ErrTimeout):
		return 504
	case errors.Is(err, ErrNoWorker), errors.Is(err, ErrWorkerLost), errors.Is(err, ErrOverload):
		return 503
	case errors.Is(err, ErrProtocol):
		return 502
	default:
		return 500
	}
}

// protocolError wraps ErrProtocol with the rule a reply broke.
func protocolError(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}
