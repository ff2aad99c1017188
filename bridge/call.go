package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Call is one request in progress. Do drives a Call to its end, waiting in
// Step; a caller that must not block inside Go (the Apache module, whose
// threads are C threads) waits on the connection's own handle (Conn) itself
// and calls Step(0) when a reply came or Wait has passed. A Call is used by
// one goroutine.
type Call struct {
	c        *Client
	ctx      context.Context
	req      *Request
	start    time.Time
	deadline time.Time
	attempts int
	attempt  int
	tried    uint64
	e        *endpoint
	p        *pooled
	epoch    uint64
	resp     Response
	err      error
	done     bool
	// connFailed: the current attempt's connection reported an error of
	// its own; it is closed, whatever the error says about the reply.
	connFailed bool
	canceled   bool // ended by Cancel: not counted as an answer
	timeout    time.Duration
	// A streamed body: the credit the worker granted and the front has not
	// used, and whether a part went out (the request is then not retried).
	bodyCredit int64
	bodySent   bool
	// wsSlot: a WebSocket handshake holds a place among the client's open
	// streams (MaxStreams) until it fails or its WebSocket closes.
	wsSlot bool
	// The latest attempt, for logs: its request id (the client's prefix and
	// seq, or the id a front sent an adopted request with) and endpoint.
	seq       uint64
	adoptedID []byte
	endpoint  int
}

// Start sends req and returns the call; it blocks only while no worker is
// connected (up to Options.ConnectTimeout). See Do for timeout and ctx.
func (c *Client) Start(ctx context.Context, req *Request, timeout time.Duration) *Call {
	if timeout <= 0 {
		timeout = c.opts.Timeout
	}
	now := time.Now()
	call := c.newCall(ctx, req, now, now.Add(timeout))
	if c.closed.Load() {
		call.done, call.err = true, ErrClosed
		return call
	}
	n := c.inFlight.Add(1)
	if c.opts.MaxInFlight > 0 && n > int64(c.opts.MaxInFlight) {
		c.overloads.Add(1)
		call.finish(Response{}, fmt.Errorf("%w: %d requests in flight, the limit is %d", ErrOverload, n-1, c.opts.MaxInFlight))
		return call
	}
	if req.WebSocket {
		if n := c.streams.Open.Add(1); c.opts.MaxStreams > 0 && n > int64(c.opts.MaxStreams) {
			c.streams.Open.Add(-1)
			c.overloads.Add(1)
			call.finish(Response{}, fmt.Errorf("%w: %d streams and WebSockets open, the limit is %d", ErrOverload, n-1, c.opts.MaxStreams))
			return call
		}
		call.wsSlot = true
	}
	call.next()
	return call
}

// newCall makes a call whose first attempt is still to be made: its deadline
// (shortened by ctx's) and how many attempts it may have.
func (c *Client) newCall(ctx context.Context, req *Request, start, deadline time.Time) *Call {
	call := &Call{c: c, ctx: ctx, req: req, start: start, deadline: deadline, attempts: 1, timeout: deadline.Sub(start), endpoint: -1}
	if d, ok := ctx.Deadline(); ok && d.Before(call.deadline) {
		call.deadline = d
	}
	if c.opts.RetryAll || idempotent(req.Method) {
		call.attempts += c.opts.Retries
	}
	return call
}

// attach makes p, a connection to e, the call's current attempt.
func (call *Call) attach(e *endpoint, p *pooled) {
	call.e, call.p = e, p
	e.stats.Requests.Add(1)
	e.stats.InFlight.Add(1)
}

// Sent describes an attempt a front made by itself, on a connection of its
// own to one of the client's endpoints, and hands over with Adopt.
type Sent struct {
	Endpoint int    // index in Options.Endpoints
	Conn     Conn   // the connection the request went out on; the client owns it from now on
	ID       []byte // the request id it was sent with
	Epoch    uint64 // the endpoint's epoch (see Options.OnState) when it was sent
	Start    time.Time
	Deadline time.Time
}

// Dial makes a connection to endpoint i (an index in Options.Endpoints)
// with the client's options, trying for timeout at most (and never longer
// than the connect timeout), for a front that sends some requests by
// itself and hands them over with Adopt.
func (c *Client) Dial(i int, timeout time.Duration) (Conn, error) {
	if i < 0 || i >= len(c.endpoints) {
		return nil, fmt.Errorf("%w: no endpoint %d", ErrConfig, i)
	}
	return c.opts.Transport.Dial(c.endpoints[i].addr, c.dialWithin(timeout))
}

// dialWithin is the client's dial options with the connect timeout cut to
// timeout (at least a millisecond): a dial never outlives the request it
// is for.
func (c *Client) dialWithin(timeout time.Duration) DialOptions {
	opts := c.dial
	opts.ConnectTimeout = min(opts.ConnectTimeout, max(timeout, time.Millisecond))
	return opts
}

// Adopt takes over a request a front sent by itself (a fast path that
// handles the common case without the client) as the call's first attempt:
// from here on the call waits, notices a lost worker, retries and counts as
// if Start had sent it.
func (c *Client) Adopt(ctx context.Context, req *Request, s Sent) *Call {
	call := c.newCall(ctx, req, s.Start, s.Deadline)
	c.inFlight.Add(1)
	call.attempt, call.tried, call.epoch = 1, uint64(1)<<(s.Endpoint%64), s.Epoch
	call.attach(c.endpoints[s.Endpoint], &pooled{conn: s.Conn, id: append([]byte(nil), s.ID...), frames: make([][]byte, 0, 8)})
	call.adoptedID, call.endpoint = append([]byte(nil), s.ID...), s.Endpoint
	return call
}

// ID appends the request id of the call's latest attempt to dst (nothing
// before one was sent), for logs.
func (call *Call) ID(dst []byte) []byte {
	switch {
	case call.adoptedID != nil:
		return append(dst, call.adoptedID...)
	case call.seq != 0:
		return strconv.AppendUint(append(dst, call.c.prefix...), call.seq, 10)
	}
	return dst
}

// Endpoint is the index in Options.Endpoints of the endpoint the latest
// attempt went to, or -1.
func (call *Call) Endpoint() int { return call.endpoint }

// Done reports whether the call has its result.
func (call *Call) Done() bool { return call.done }

// Result returns the reply or the error; valid once Done.
func (call *Call) Result() (Response, error) { return call.resp, call.err }

// Conn returns the connection the call waits on, or nil when it is done.
// A front that does the waiting itself needs the connection's own handle;
// it must not use it once the call is done.
func (call *Call) Conn() Conn {
	if call.done || call.p == nil {
		return nil
	}
	return call.p.conn
}

// Ready returns a channel that receives when a message may have come for
// the call (Step(0) takes it) or its connection failed, where the
// connection offers one (shared connections do); nil otherwise, and once
// the call is done. A front that waits on something else as well (a
// client's body) selects on it, with a timer of Wait.
func (call *Call) Ready() <-chan struct{} {
	if call.done || call.p == nil {
		return nil
	}
	return readyOf(call.p.conn)
}

// readyOf is c's channel that receives when a message may have been queued
// for Recv, where c offers one (shared connections do); nil otherwise.
func readyOf(c Conn) <-chan struct{} {
	if r, ok := c.(interface{ readyChan() <-chan struct{} }); ok {
		return r.readyChan()
	}
	return nil
}

// Wait is how long a caller may wait before calling Step again: until the
// deadline, but no longer than the interval at which a lost worker or a
// cancelled context is noticed.
func (call *Call) Wait() time.Duration {
	wait := time.Until(call.deadline)
	if call.ctx.Done() != nil || !call.c.opts.NoHeartbeat {
		wait = min(wait, watchSlice)
	}
	return max(wait, 0)
}

// Quiet is how long a caller that waits on the call's connection itself
// (Conn) and learns of lost workers by itself (Options.OnState: a new
// epoch) may go without Step while nothing arrives: until the deadline, or
// Wait's slice when a context can cancel the call.
func (call *Call) Quiet() time.Duration {
	if call.ctx.Done() != nil {
		return call.Wait()
	}
	return max(time.Until(call.deadline), 0)
}

// Step advances the call, waiting up to wait for a reply (0: not at all).
func (call *Call) Step(wait time.Duration) {
	for !call.done {
		msg, err := call.p.conn.Recv(wait)
		if err == ErrTimeout {
			switch {
			case call.ctx.Err() != nil:
				if call.c.opts.Notices {
					call.c.cancel(call.p)
				}
				call.end(Response{}, call.ctx.Err())
			case !time.Now().Before(call.deadline):
				call.end(Response{}, fmt.Errorf("%w (request %s to %s)", ErrTimeout, call.p.id, call.e.addr))
			case call.e.epoch.Load() != call.epoch:
				call.end(Response{}, fmt.Errorf("%w: %s dropped the connection holding request %s", ErrWorkerLost, call.e.addr, call.p.id))
			}
			return
		}
		if err != nil {
			// The connection failed (the worker closed it, a heartbeat
			// was missed): the error names the request, as a timeout does.
			call.connFailed = true
			call.end(Response{}, fmt.Errorf("%w (request %s to %s)", err, call.p.id, call.e.addr))
			return
		}
		if len(msg) == 0 || !bytes.Equal(msg[0], call.p.id) {
			// A reply to a request whose caller went away earlier.
			call.c.opts.Log.Logf(LevelDebug, CodeStaleReply, "dropped a reply nobody waits for any more (request %s)", idOf(msg))
			wait = 0
			continue
		}
		if call.req.StreamBody && len(msg) >= 2 && len(msg[1]) == 0 && isStreamMessage(msg[2:], partCredit) {
			// The worker asks for more of the body, and lives: its timeout
			// starts again.
			if err := call.credit(msg[2:]); err != nil {
				call.end(Response{}, err)
				return
			}
			return
		}
		if call.req.WebSocket && len(msg) >= 2 && len(msg[1]) == 0 && isStreamMessage(msg[2:], partAccept) {
			call.startWebSocket(msg)
			return
		}
		if call.req.StreamWindow > 0 && !call.req.WebSocket && len(msg) >= 2 && len(msg[1]) == 0 {
			switch {
			case isStreamMessage(msg[2:], partKeepAlive):
				// Long-poll: the worker holds the request past its timeout.
				call.deadline = time.Now().Add(call.c.streamIdle())
				continue
			case isStreamMessage(msg[2:], partHead):
				call.startStream(msg)
				return
			}
		}
		call.end(call.c.decode(call.p.id, msg))
		return
	}
}

// credit adds a worker's grant, ["@credit", N], to the body credit.
func (call *Call) credit(frames [][]byte) error {
	n, err := strconv.ParseInt(string(frames[1]), 10, 64)
	if len(frames) != 2 || err != nil || n < 0 || n > maxCredit {
		return protocolError("request %s: a credit is [\"@credit\", N] with N from 0 to %d, got %s", call.p.id, int64(maxCredit), quote(frames[len(frames)-1]))
	}
	call.bodyCredit = min(call.bodyCredit+n, maxCredit)
	if d := time.Now().Add(call.timeout); call.timeout > 0 && d.After(call.deadline) {
		call.deadline = d
	}
	return nil
}

// BodyCredit is how many bytes of body parts the worker has asked for and
// not received yet, each part costing PartCost more than its bytes.
func (call *Call) BodyCredit() int64 { return call.bodyCredit }

// LendBody returns the streamed body's credit for a front that sends the
// next parts itself (the Apache module's C path; Flow): once a part went
// out through SendBody (the request is then never retried), while the call
// waits for its reply; ok false otherwise. The front gives it back with
// ReturnBody before the call is used again.
func (call *Call) LendBody() (f Flow, ok bool) {
	if !call.req.StreamBody || !call.bodySent || call.done || call.p == nil {
		return Flow{}, false
	}
	return Flow{Sendable: call.bodyCredit, ID: call.p.id, SendTimeout: call.sendTimeout()}, true
}

// ReturnBody takes back the credit LendBody lent, as the front left it.
func (call *Call) ReturnBody(f Flow) { call.bodyCredit = f.Sendable }

// sendTimeout is how long a part of the body may take to go out: the
// connect timeout, within what is left of the call's.
func (call *Call) sendTimeout() time.Duration {
	return min(call.c.opts.ConnectTimeout, max(time.Until(call.deadline), time.Millisecond))
}

// SendBody sends a part of a streamed body (the last when last), within the
// worker's credit; the request is then never retried. An error means the
// part did not go out: the call ends (the worker is lost or the credit
// short).
func (call *Call) SendBody(data []byte, last bool) error {
	if call.done || call.p == nil {
		return fmt.Errorf("SendBody on a call that is over")
	}
	cost := int64(len(data)) + PartCost
	if cost > call.bodyCredit {
		return fmt.Errorf("SendBody: a part costing %d, over the worker's credit of %d", cost, call.bodyCredit)
	}
	method := methodBody
	if last {
		method = methodBodyEnd
	}
	frames := ControlFrames(call.p.id, method, nil, data)
	call.attempts = call.attempt // the body cannot be sent again
	call.bodySent = true
	if err := call.p.conn.Send(frames, call.sendTimeout()); err != nil {
		call.connFailed = true
		call.end(Response{}, fmt.Errorf("%w: sending the body to %s: %v", ErrWorkerLost, call.e.addr, err))
		return err
	}
	call.bodyCredit -= cost
	call.c.streams.BodyParts.Add(1)
	call.c.streams.BodyBytes.Add(int64(len(data)))
	return nil
}

func (c *Client) streamIdle() time.Duration {
	if c.opts.StreamIdleTimeout > 0 {
		return c.opts.StreamIdleTimeout
	}
	return DefaultStreamIdleTimeout
}

// startStream ends the call with a stream's head: the Stream takes the
// connection over, and the worker's next messages are its parts.
func (call *Call) startStream(msg [][]byte) {
	c := call.c
	resp, err := DecodeStreamHead(msg[2:])
	if err != nil {
		call.end(resp, fmt.Errorf("request %s: %w", call.p.id, err))
		return
	}
	if n := c.streams.Open.Add(1); c.opts.MaxStreams > 0 && n > int64(c.opts.MaxStreams) {
		c.streams.Open.Add(-1)
		c.overloads.Add(1)
		if c.opts.Notices {
			c.cancel(call.p)
		}
		call.end(Response{}, fmt.Errorf("%w: %d streams open, the limit is %d", ErrOverload, n-1, c.opts.MaxStreams))
		return
	}
	s := &Stream{c: c, e: call.e, p: call.handOver(), ctx: call.ctx, window: call.req.StreamWindow,
		credit: call.req.StreamWindow, idle: c.streamIdle(), epoch: call.epoch}
	s.deadline = time.Now().Add(s.idle)
	resp.Stream = s
	call.end(resp, nil)
}

// handOver takes the call's connection from it for the Stream or WebSocket
// the call became, and returns it. The request is not sent again, so the
// connection keeps none of its bytes while the stream or WebSocket is held
// (its target, headers, body and meta): meta is dropped and frames keeps
// only its array, cleared and empty, for the messages the WebSocket sends.
// The request id stays: the messages that follow go by it.
func (call *Call) handOver() *pooled {
	p := call.p
	clear(p.frames[:cap(p.frames)])
	p.frames, p.meta = p.frames[:0], nil
	call.p = nil
	return p
}

func (c *Client) decode(id []byte, msg [][]byte) (Response, error) {
	if len(msg) < 2 || len(msg[1]) != 0 {
		return Response{}, protocolError("reply to request %s lacks the empty delimiter frame after the request id", id)
	}
	if c.opts.MaxReply > 0 {
		size := int64(0)
		for _, f := range msg[2:] {
			size += int64(len(f))
		}
		if size > c.opts.MaxReply {
			return Response{}, protocolError("reply to request %s is %d bytes, over the limit of %d", id, size, c.opts.MaxReply)
		}
	}
	resp, err := DecodeReply(msg[2:])
	if err != nil {
		return resp, fmt.Errorf("request %s: %w", id, err)
	}
	return resp, nil
}

// next sends the request on a new attempt.
func (call *Call) next() {
	c := call.c
	call.attempt++
	e, bit := c.pick(call.tried)
	call.tried |= bit
	p, err := e.get(c.opts.Transport, c.dialWithin(time.Until(call.deadline)))
	if err != nil {
		if errors.Is(err, ErrNoWorker) {
			// A transport that connects in Dial found no worker: an
			// attempt no worker took, counted and retried as one.
			call.attach(e, nil)
			call.end(Response{}, err)
			return
		}
		call.finish(Response{}, err)
		return
	}
	call.attach(e, p)
	call.seq, call.adoptedID, call.endpoint = c.seq.Add(1), nil, e.index
	p.id = strconv.AppendUint(append(p.id[:0], c.prefix...), call.seq, 10)
	p.meta = appendStreamMeta(appendMeta(p.meta[:0], p.id, call.req.Meta), call.req, c.opts.Notices)
	p.frames = requestFrames(p.frames, p.id, p.meta, call.req)
	call.epoch = e.epoch.Load()
	if q, ok := p.conn.(interface{ setLimit(int64) }); ok {
		window := call.req.StreamWindow
		if call.req.WebSocket {
			window = webSocketWindow(call.req)
		}
		q.setLimit(window)
	}
	sendWait := min(c.opts.ConnectTimeout, time.Until(call.deadline))
	if err := p.conn.Send(p.frames, sendWait); err != nil {
		call.end(Response{}, fmt.Errorf("%s: %w", e.addr, err))
	}
}

// end closes the current attempt with its outcome, and retries or finishes.
func (call *Call) end(resp Response, err error) {
	c, e := call.c, call.e
	e.stats.InFlight.Add(-1)
	switch {
	case err == nil:
		e.stats.Replies.Add(1)
	case errors.Is(err, ErrTimeout):
		e.stats.Timeouts.Add(1)
	case errors.Is(err, ErrWorkerLost):
		e.stats.Lost.Add(1)
	case errors.Is(err, ErrNoWorker):
		e.stats.NoWorker.Add(1)
	case errors.Is(err, ErrProtocol):
		e.stats.BadReplies.Add(1)
	}
	// Reuse a connection only when it is known to be sound: after a reply
	// (good or bad), or when the caller went away (a late reply is then
	// dropped by request id). After a timeout the connection may be in the
	// middle of a reply (a worker trickling one), and after a refused or
	// lost send part of the request may be out: it is closed rather than
	// reused.
	reusable := !call.connFailed && (err == nil || errors.Is(err, ErrProtocol) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded))
	call.connFailed = false
	if call.p != nil && !(reusable && c.opts.Reuse != nil && !c.closed.Load() && c.opts.Reuse(e.index, call.p.conn)) {
		e.put(call.p, reusable, c.opts.MaxIdle, c.closed.Load())
	}
	call.p = nil
	if err != nil && call.attempt < call.attempts && retriable(err) && time.Until(call.deadline) > 0 && call.ctx.Err() == nil {
		c.retries.Add(1)
		c.opts.Log.Logf(LevelInfo, CodeRetry, "attempt %d of %d failed (%v); retrying", call.attempt, call.attempts, err)
		call.next()
		return
	}
	call.finish(resp, err)
}

// Cancel ends the call because its caller went away (a front that notices
// it by itself, with no context to cancel): the worker gets a cancel
// notice when the client's workers take them, and the call ends with
// context.Canceled, counted as no answer.
func (call *Call) Cancel() {
	if call.done {
		return
	}
	if call.p != nil && call.c.opts.Notices {
		call.c.cancel(call.p)
	}
	call.canceled = true
	call.attempts = call.attempt // no retry
	call.end(Response{}, context.Canceled)
}

// finish records the outcome.
func (call *Call) finish(resp Response, err error) {
	c := call.c
	call.resp, call.err, call.done = resp, err, true
	c.inFlight.Add(-1)
	if call.wsSlot {
		c.streams.Open.Add(-1)
		call.wsSlot = false
	}
	switch {
	case call.canceled:
	case err == nil:
		c.stats.record(resp.Status, time.Since(call.start))
	case call.ctx.Err() == nil:
		c.stats.record(StatusOf(err), time.Since(call.start))
	}
}

// watchSlice is how often a waiting request looks at its endpoint's epoch
// (has its worker been lost?) and at its context.
const watchSlice = 100 * time.Millisecond
