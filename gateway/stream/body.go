package stream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modzmq/modzmq/bridge"
)

// Streamed request bodies (route key stream_body; docs/PROTOCOL.md,
// "Streamed request bodies"). A request with a body on such a route is
// relayed as soon as its head is parsed, with the bridge's credit loop the
// HTTP mode uses (gateway.RelayBody): the relay goroutine asks for each
// part by reading a bodyPipe once the worker has granted credit for it, and
// the socket's owner answers from what the connection's parser holds,
// copying the body's bytes (chunked framing removed) straight into the
// relay's buffer.
//
// Holding. Until the relay asks, the client's bytes stay undecoded in the
// connection's parser. All connections arrive through the one ZMQ_STREAM
// socket, and libzmq offers no way to leave one connection's bytes unread
// while reading the others': once a connection whose body is streaming
// holds bodyHold bytes or more, the owner stops reading the socket
// altogether (Server.held) until the relay has taken them, or the request
// ended. The client's further bytes then wait in libzmq's queue for its
// connection and, once that is full, in the kernel's buffers: a client that
// sends faster than the worker grants is slowed down to the worker's pace.
// libzmq reads at most 8 KiB at a time, and holds for the connection at
// most rcvHWM such messages queued (ZMQ_RCVHWM), the one its I/O thread
// read last and the one the socket prefetched; the parser holds less than
// bodyHold and the message that crossed it. So stream mode holds less than
// 64 KiB of a streamed body beyond the kernel's buffers, libzmq included,
// however fast the client sends; the part being sent to the worker, at
// most bridge.BodyPart, is in flight, not waiting. The price: while the
// socket is not read, no connection's bytes are read, so other clients
// wait as long as the worker of that body takes to grant more. A body
// whose worker grants nothing for holdLimit while it holds the socket ends
// with 503 and its connection closes (MODZMQ0310), so a stalled worker
// holds every other client back for no more than that.
//
// Ending. When the relay ends before the body does (the worker answered
// early, the request failed or timed out), the owner reads the rest of the
// body and drops it, so the connection goes on with the request pipelined
// after it; a connection that asked to close closes once the body is
// dropped, so the client is not reset while it still sends. A body that
// breaks the parser (bad chunk framing, over max_body) or whose client
// sends nothing for the read timeout while the body waits for it (not
// while the relay waits for its worker) ends the request with that status
// (400, 413, 408)
// and closes the connection; a client that leaves mid-body cancels the
// request (the worker gets @cancel, with notices).

// bodyHold is how many undecoded bytes a connection whose body is
// streaming may hold before the owner stops reading the socket. libzmq
// hands over at most 8 KiB at a time, so the parser holds less than
// bodyHold + 8 KiB = 16 KiB, and libzmq at most (rcvHWM+2)*8 KiB = 48 KiB:
// less than 64 KiB together.
const bodyHold = 8 << 10

// holdLimit is how long one streamed body may keep the socket from being
// read while its worker grants nothing.
const holdLimit = time.Second

// CodeSlowBody: a streamed body's worker took nothing for holdLimit while
// the body held the socket; the request ends with 503.
const CodeSlowBody bridge.Code = 310

// rcvHWM bounds, in messages, what libzmq queues for a client connection
// that the owner does not read (ZMQ_RCVHWM): with the owner paused for a
// streamed body, that client's further bytes wait in the kernel. libzmq
// drops a connection's disconnect notice when its queue is full as the
// client leaves; a client that leaves with rcvHWM messages unread (one
// whose body waits for its worker, above all) is then closed by the
// timeouts (the read timeout while its request is incomplete, the idle
// timeout after), and its relay ends then, with @cancel (notices).
const rcvHWM = 4

// errClientGone is what a streamed body's read returns once the client's
// connection closed.
var errClientGone = errors.New("the client went away")

// bodyPipe carries a streamed body from the socket's owner to the relay
// goroutine. The relay reads it like an io.Reader; the owner fills the
// relay's buffer while the relay waits in Read, and fails the pipe when
// the body cannot be read to its end. stop tells the owner that the relay
// reads no more.
type bodyPipe struct {
	s      *Server
	c      *conn // the owner's
	ctx    context.Context
	cancel context.CancelFunc // ends the relay: the body cannot go on (sweepHolds)

	mu      sync.Mutex
	buf     []byte    // the relay's buffer while it waits in Read; the owner writes into it
	n       int       // bytes the owner copied into buf
	err     error     // io.EOF once the body ended; why it could not be read otherwise
	stopped bool      // the relay reads no more: the owner drops the rest
	turn    time.Time // since when the body waits for its client (clientTurn)
	ready   chan struct{}

	want100 bool        // the owner's: the client waits for 100 Continue (continueBody)
	started atomic.Bool // the relay is past the connection's @open: the request went to its worker
}

// clientTurn reports since when the body has waited for its client: since
// the relay began to wait in Read, or stopped reading (the owner drops
// what comes); ok is false while the relay waits for its worker instead.
func (b *bodyPipe) clientTurn() (since time.Time, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.turn, b.buf != nil || b.stopped
}

func newBodyPipe(s *Server, c *conn) *bodyPipe {
	ctx, cancel := context.WithCancel(c.ctx)
	return &bodyPipe{s: s, c: c, ctx: ctx, cancel: cancel, ready: make(chan struct{}, 1)}
}

// failure is the error the body failed with, if it did: an *Error the
// relay answers with.
func (b *bodyPipe) failure() *Error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var perr *Error
	if errors.As(b.err, &perr) {
		return perr
	}
	return nil
}

// Read waits until the owner put body bytes in p, or the body ended or
// failed.
func (b *bodyPipe) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b.mu.Lock()
	if b.err != nil {
		err := b.err
		b.mu.Unlock()
		return 0, err
	}
	b.buf, b.n, b.turn = p, 0, time.Now()
	b.mu.Unlock()
	b.s.wakeFor(b)
	select {
	case <-b.ready:
	case <-b.ctx.Done():
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf != nil { // the owner has not answered: the connection is gone
		b.buf = nil
		return 0, errClientGone
	}
	select {
	case <-b.ready: // the owner answered as the context ended
	default:
	}
	n := b.n
	if n > 0 && b.err != io.EOF {
		return n, nil // a failure comes with the next Read
	}
	return n, b.err
}

// stop tells the owner that the relay reads no more of the body.
func (b *bodyPipe) stop() {
	b.mu.Lock()
	b.stopped, b.turn = true, time.Now()
	b.mu.Unlock()
	b.s.wakeFor(b)
}

// answer hands the relay waiting in Read what the owner put in its
// buffer, with err when not nil. The caller holds b.mu.
func (b *bodyPipe) answer(n int, err error) {
	b.n, b.buf = n, nil
	if err != nil {
		b.err = err
	}
	b.ready <- struct{}{}
}

// fail ends the body with err for the relay: now if it waits in Read,
// otherwise at its next Read.
func (b *bodyPipe) fail(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return
	}
	if b.buf != nil {
		b.answer(0, err)
		return
	}
	b.err = err
}

// feedBody moves c's streamed body along with what its parser holds: into
// the relay's buffer when it waits in Read, into nothing once the relay
// stopped. It reports whether the body is over, so that parsing goes on
// with the next request; otherwise, when c holds bodyHold bytes or more
// that the relay has not asked for, c joins the connections that keep the
// socket from being read. A relay that waits keeps it read: what is held
// then is framing the parser needs more bytes to make sense of (a chunk
// size line, trailer fields), bounded as a request's head is.
func (s *Server) feedBody(c *conn) bool {
	b := c.body
	if b.want100 {
		b.mu.Lock()
		asked := b.buf != nil
		b.mu.Unlock()
		if asked {
			s.continueBody(c, b)
		}
	}
	b.mu.Lock()
	stopped := b.stopped
	var n int
	var done bool
	var perr *Error
	switch {
	case stopped:
		done, perr = c.parser.DiscardBody()
	case b.buf != nil:
		n, done, perr = c.parser.ReadBody(b.buf)
		switch {
		case perr != nil:
			b.answer(n, perr)
		case done:
			b.answer(n, io.EOF)
		case n > 0:
			b.answer(n, nil)
		}
	}
	waiting := b.buf != nil
	b.mu.Unlock()
	switch {
	case perr != nil:
		s.log.Debug(CodeBadRequest.String()+": bad request body", "status", perr.Status, "reason", perr.Reason, "connection", c.hexID)
		s.endBody(c, perr)
		return false
	case done:
		s.endBody(c, nil)
		return true
	}
	if !stopped && !waiting && c.parser.Buffered() >= bodyHold {
		if _, ok := s.held[c]; !ok {
			s.held[c] = time.Now()
		}
	} else {
		s.release(c)
	}
	return false
}

// endBody ends c's streamed body: complete (perr nil), or cut short by a
// parser error or a timeout, which the relay, if it still reads, answers
// with its status before the connection closes.
func (s *Server) endBody(c *conn, perr *Error) {
	b := c.body
	c.body = nil
	s.release(c)
	if perr != nil {
		c.broken = true
		c.closing = true
		b.fail(perr)
	}
	c.head, c.headRoute, c.headErr, c.headVars = nil, nil, 0, nil
	if c.parser.Buffered() > 0 {
		c.reqStart = time.Now()
	}
	if len(c.pending) == 0 && c.closing {
		s.closeConn(c)
	}
}

// release lets c's bytes no longer keep the socket from being read.
func (s *Server) release(c *conn) {
	if _, ok := s.held[c]; ok {
		delete(s.held, c)
		if len(s.held) == 0 {
			s.readNow = true
		}
	}
}

// wakeFor asks the owner to look at b: the relay waits in Read, or stopped.
func (s *Server) wakeFor(b *bodyPipe) {
	s.wakeMu.Lock()
	s.bodies = append(s.bodies, b)
	wake := !s.pending.Swap(true)
	s.wakeMu.Unlock()
	if wake {
		s.waiter.SetDeadline(time.Now())
	}
}

// sweepHolds ends the streamed bodies that have kept the socket from being
// read for holdLimit: their workers grant nothing, and every other client
// waits.
func (s *Server) sweepHolds(now time.Time) {
	for c, since := range s.held {
		if now.Sub(since) >= holdLimit {
			if c.ws != nil {
				s.wsHeldTooLong(c, now.Sub(since)) // websocket.go
				continue
			}
			what := "a streamed body's worker took nothing"
			if !c.body.started.Load() {
				what = "a streamed body waited for its connection's @open notice to be answered"
			}
			s.log.Warn(CodeSlowBody.String()+": "+what+" while every other client waited; request ended",
				"status", http.StatusServiceUnavailable, "held", now.Sub(since).Round(time.Millisecond).String(), "connection", c.hexID)
			b := c.body
			s.endBody(c, fail(http.StatusServiceUnavailable, "the worker takes the request body too slowly"))
			b.cancel() // the relay waits for the worker: end it now
		}
	}
}
