package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Streams (docs/PROTOCOL.md, "Streams, credits and cancel notices"). A
// request that may be answered in parts carries a stream-credits meta line;
// the worker answers with a head, ["@stream", status, headers], and then
// sends parts, each costing its bytes plus PartCost against the credit the
// front grants with @credit messages as the client takes the data.

// PartCost is what every stream message after the head costs beyond its
// bytes: it bounds the number of parts a front holds, as the reply limit
// counts frames.
const PartCost = 64

// BodyPart is the largest part of a streamed request body a front reads and
// sends at once (the shim's MODZMQ_BODY_PART): 1 KiB under 64 KiB, so that a
// part's message, frames included, fits one TCP segment on loopback (MTU
// 65,536). A part of a full 64 KiB went as a full segment and a sliver, each
// waking the worker: docs/BENCHMARKS.md, "Parts that fit a segment".
const BodyPart = 63 << 10

// partCost is what a message carrying n bytes costs against a credit: its
// bytes plus PartCost. Streams, WebSockets and the queues of shared
// connections (shareConn.push) all charge by it.
func partCost(n int) int64 { return int64(n) + PartCost }

// DefaultStreamWindow is the credit a stream starts with and the most a
// front holds for it, when the front sets none.
const DefaultStreamWindow = 256 << 10

// DefaultStreamIdleTimeout ends a stream with no message for this long.
const DefaultStreamIdleTimeout = 60 * time.Second

// Stream message kinds, the first frame of a worker's message after the
// envelope.
var (
	partHead      = []byte("@stream")
	partData      = []byte("@data")
	partKeepAlive = []byte("@keep-alive")
	partEnd       = []byte("@end")
	partAbort     = []byte("@abort")
)

// Control methods the bridge sends the worker, as six-frame requests.
var (
	methodCredit = []byte("@credit")
	methodCancel = []byte("@cancel")
)

// ErrStreamAborted is the end of a stream the worker aborted.
var ErrStreamAborted = errors.New("the worker aborted the stream")

// PartKind is what a stream message after the head is.
type PartKind int

const (
	PartData PartKind = iota + 1
	PartKeepAlive
	PartEnd
	PartAbort
)

// isStreamMessage reports whether frames (a worker's message after its
// envelope) are a stream message of kind: a first frame kind and at least
// two frames, which no plain reply can be (its status is three digits).
func isStreamMessage(frames [][]byte, kind []byte) bool {
	return len(frames) >= 2 && bytes.Equal(frames[0], kind)
}

// DecodeStreamHead checks a stream's head, ["@stream", status, headers], as
// DecodeReply checks a plain reply's status and headers.
func DecodeStreamHead(frames [][]byte) (Response, error) {
	if len(frames) != 3 || !bytes.Equal(frames[0], partHead) {
		return Response{}, protocolError("a stream head is [\"@stream\", status, headers], got %d frames", len(frames))
	}
	return DecodeReply([][]byte{frames[1], frames[2], nil})
}

// DecodePart checks a stream message after the head: its kind and its
// bytes (the data of @data and @end, the reason of @abort).
func DecodePart(frames [][]byte) (PartKind, []byte, error) {
	if len(frames) != 2 {
		return 0, nil, protocolError("a stream part has 2 frames, got %d", len(frames))
	}
	switch {
	case bytes.Equal(frames[0], partData):
		return PartData, frames[1], nil
	case bytes.Equal(frames[0], partKeepAlive):
		return PartKeepAlive, nil, nil
	case bytes.Equal(frames[0], partEnd):
		return PartEnd, frames[1], nil
	case bytes.Equal(frames[0], partAbort):
		return PartAbort, frames[1], nil
	}
	return 0, nil, protocolError("unknown stream part %s", quote(frames[0]))
}

// appendStreamMeta appends the meta lines that tell the worker what it may
// do with request r: stream its reply (with r.StreamWindow bytes of
// credit), expect a cancel notice, and ask for the body in parts.
func appendStreamMeta(meta []byte, r *Request, notices bool) []byte {
	if r.WebSocket {
		meta = appendWebSocketMeta(meta, r)
	} else if r.StreamWindow > 0 {
		meta = append(meta, "stream-credits: "...)
		meta = strconv.AppendInt(meta, r.StreamWindow, 10)
		meta = append(meta, '\r', '\n')
	}
	if notices {
		meta = append(meta, "notices: cancel\r\n"...)
	}
	if r.StreamBody {
		meta = append(meta, "stream-body: 1\r\n"...)
	}
	return meta
}

// ControlFrames builds a message the bridge sends for request id while it
// is in progress (a grant, a notice, a part of its body), with the
// request's envelope: a six-frame request with method, target and body,
// and meta holding the request id. The Apache module's C builds the same
// (modzmq_control_frames; TestControlFrames in mod_zmq/relay holds it to
// this).
func ControlFrames(id, method, target, body []byte) [][]byte {
	meta := AppendHeader(nil, "request-id", string(id))
	return [][]byte{id, nil, versionFrame, method, target, nil, meta, body}
}

// Body parts the bridge sends for a request with a streamed body.
var (
	methodBody    = []byte("@body")
	methodBodyEnd = []byte("@body-end")
	partCredit    = []byte("@credit")
)

// maxCredit bounds one grant a worker may send: the decimal of anything
// larger is refused as a protocol error, not summed.
const maxCredit = 1 << 40

// Stream is a reply the worker sends in parts, after its head (the
// Response Do returned with it). It is used by one goroutine at a time;
// Close must be called when done with it.
type Stream struct {
	c        *Client
	e        *endpoint
	p        *pooled
	ctx      context.Context
	window   int64
	credit   int64 // what the worker may still send
	owed     int64 // taken by the client, not granted back yet
	idle     time.Duration
	deadline time.Time // of the next message
	epoch    uint64
	ended    bool // @end received
	failed   bool // the stream broke
	broken   bool // and its connection with it: not reusable
	err      error
}

// Next waits for the stream's next data: it returns the bytes of a part
// (never empty), or end true after the last part (with its bytes, possibly
// empty). Keep-alives are absorbed. Calling Next tells the stream the
// client took the data Next returned before, which earns the worker its
// credit back. A stream that breaks returns an error: ErrTimeout when idle
// too long, ErrWorkerLost, ErrStreamAborted, ErrProtocol, or the context's.
func (s *Stream) Next() (data []byte, end bool, err error) {
	for {
		data, end, ok, err := s.Step(s.Wait())
		if ok || err != nil {
			return data, end, err
		}
	}
}

// Wait is how long a caller may wait before calling Step again: until the
// idle deadline, but no longer than the interval at which a lost worker or
// a cancelled context is noticed.
func (s *Stream) Wait() time.Duration {
	return max(min(time.Until(s.deadline), watchSlice), 0)
}

// Conn returns the connection the stream's parts come on, for a front that
// waits on it by itself (see Call.Conn); nil once closed.
func (s *Stream) Conn() Conn {
	if s.p == nil {
		return nil
	}
	return s.p.conn
}

// Notify makes fn be called whenever a part may have been queued for Step,
// when the stream's connection fails, and when the endpoint's watch loses
// its worker (a new epoch), by the goroutine that finds it: fn must return
// at once and must not use the Stream. It lets a front carry
// a held stream without a goroutine waiting in Next for it: on the call,
// or after Due at the latest, it calls Step(0). It reports false when the
// connection offers no such call (wait in Step then). Close stops the
// calls.
func (s *Stream) Notify(fn func()) bool {
	if s.p == nil {
		return false
	}
	n, ok := s.p.conn.(interface{ setNotify(func()) })
	if ok {
		n.setNotify(fn)
		s.e.holdStream(s, fn) // a worker the endpoint's watch loses calls it too
	}
	return ok
}

// Due is how long a front that learns of parts, a failed connection and a
// worker the endpoint's watch lost by itself (Notify calls it; Apache's C
// waits on the connection and counts epochs) may go without Step: until the
// stream's idle deadline. (Its context is the front's to watch.)
func (s *Stream) Due() time.Duration {
	return max(time.Until(s.deadline), 0)
}

// SetContext replaces the context whose end ends the stream as its
// client's leaving: a front that carries the stream past the request's own
// context (a handler that hands its connection to another goroutine and
// returns) gives it one of its own.
func (s *Stream) SetContext(ctx context.Context) { s.ctx = ctx }

// Step is Next waiting at most wait: ok false means nothing came in time
// and the stream goes on.
func (s *Stream) Step(wait time.Duration) (data []byte, end, ok bool, err error) {
	if s.ended {
		return nil, true, true, nil
	}
	if s.failed {
		return nil, false, false, errors.New("stream: Step after an error")
	}
	s.grant(s.grantQueued())
	if s.failed {
		return nil, false, false, s.err
	}
	for {
		msg, err := s.p.conn.Recv(0)
		if err == ErrTimeout {
			// Nothing is queued: the client has taken all the worker sent,
			// and the worker may be waiting for credit to send more.
			if s.grant(s.grantIdle()); s.failed {
				return nil, false, false, s.err
			}
			if wait > 0 {
				msg, err = s.p.conn.Recv(wait)
			}
		}
		if err == ErrTimeout {
			switch {
			case s.ctx.Err() != nil:
				return nil, false, false, s.fail(s.ctx.Err())
			case !time.Now().Before(s.deadline):
				return nil, false, false, s.fail(fmt.Errorf("%w: stream of request %s to %s had no part for %v", ErrTimeout, s.p.id, s.e.addr, s.idle))
			case s.e.epoch.Load() != s.epoch:
				return nil, false, false, s.fail(fmt.Errorf("%w: %s dropped the connection holding stream %s", ErrWorkerLost, s.e.addr, s.p.id))
			}
			return nil, false, false, nil
		}
		if err != nil {
			s.broken = true
			return nil, false, false, s.fail(fmt.Errorf("%w (request %s to %s)", err, s.p.id, s.e.addr))
		}
		wait = 0 // what follows was queued already, or is for the next Step
		if len(msg) < 2 || !bytes.Equal(msg[0], s.p.id) {
			s.c.opts.Log.Logf(LevelDebug, CodeStaleReply, "dropped a reply nobody waits for any more (request %s)", idOf(msg))
			continue
		}
		if len(msg[1]) != 0 {
			return nil, false, false, s.fail(protocolError("stream %s: a part lacks the empty delimiter frame", s.p.id))
		}
		kind, b, err := DecodePart(msg[2:])
		if err != nil {
			return nil, false, false, s.fail(fmt.Errorf("stream %s: %w", s.p.id, err))
		}
		cost := partCost(len(b))
		s.c.streams.Buffered.Add(min(cost, s.credit))
		if s.credit -= cost; s.credit < 0 {
			return nil, false, false, s.fail(fmt.Errorf("%w: stream %s: the worker sent %d bytes beyond its credit", ErrProtocol, s.p.id, -s.credit))
		}
		s.deadline = time.Now().Add(s.idle)
		switch kind {
		case PartKeepAlive:
			s.owed += cost // nothing for the client to take
			continue
		case PartAbort:
			return nil, false, false, s.fail(fmt.Errorf("%w %s: %s", ErrStreamAborted, s.p.id, quote(b)))
		case PartEnd:
			s.ended = true
			if len(b) > 0 {
				s.c.streams.Parts.Add(1)
				s.c.streams.Bytes.Add(int64(len(b)))
			}
			return b, true, true, nil
		}
		s.owed += cost
		if len(b) == 0 {
			continue
		}
		s.c.streams.Parts.Add(1)
		s.c.streams.Bytes.Add(int64(len(b)))
		return b, false, true, nil
	}
}

// Owes reports whether the next Step, once the client took what the last
// one returned, grants the worker credit: a front that waits for the next
// part before it steps (Apache's, in C) must step at once when it does, or
// a worker out of credit would wait for it until the idle timeout.
func (s *Stream) Owes() bool { return s.owed > 0 && s.owed >= s.grantIdle() }

// grantQueued and grantIdle are the least owed at which Step grants: half
// the window while parts are queued, a quarter once none is (grant).
func (s *Stream) grantQueued() int64 { return s.window / 2 }
func (s *Stream) grantIdle() int64   { return s.window / 4 }

// Lend returns the stream's credit for a front that takes its common parts
// by itself (Flow); ok false when it may not (ended, broken or closed).
func (s *Stream) Lend() (f Flow, ok bool) {
	if s.p == nil || s.ended || s.failed {
		return Flow{}, false
	}
	return Flow{Credit: s.credit, Owed: s.owed, GrantAt: s.grantIdle(), GrantQueued: s.grantQueued(), ID: s.p.id,
		SendTimeout: s.c.opts.ConnectTimeout, Idle: s.idle, Wait: min(s.idle, watchSlice)}, true
}

// Return gives back the credit Lend lent, as the front left it. The bytes
// the front counted as buffered for the stream meanwhile (its parts less
// its grants) move into the client's counters here; Return reports them,
// for the front to take out of its own.
func (s *Stream) Return(f Flow) (moved int64) {
	moved = s.credit - f.Credit
	s.c.streams.Buffered.Add(moved)
	s.credit, s.owed = f.Credit, f.Owed
	if !f.Heard.IsZero() {
		s.deadline = f.Heard.Add(s.idle)
	}
	return moved
}

// grant sends the worker the credit the client earned back, once it is at
// least at, so a fast client does not cost an @credit per part. Step asks
// for half the window while parts are queued (the worker is ahead: it has
// half a window in flight meanwhile, and is woken half as often as with a
// quarter, which a worker on the front's cores feels: docs/BENCHMARKS.md),
// and for a quarter once none is (the worker may be waiting for it).
func (s *Stream) grant(at int64) {
	if s.owed == 0 || s.owed < at {
		return
	}
	n := s.owed
	s.owed, s.credit = 0, s.credit+n
	s.c.streams.Buffered.Add(-n)
	if err := s.p.conn.Send(ControlFrames(s.p.id, methodCredit, strconv.AppendInt(nil, n, 10), nil), s.c.opts.ConnectTimeout); err != nil {
		s.broken = true
		s.fail(fmt.Errorf("%w: sending credit for request %s to %s: %v", ErrWorkerLost, s.p.id, s.e.addr, err))
	}
}

// fail marks the stream broken and returns err.
func (s *Stream) fail(err error) error {
	s.failed, s.err = true, err
	return err
}

// Close ends the stream: when it did not end (by @end or @abort) and the
// client's workers take notices, the worker gets @cancel. The connection goes back
// to the pool unless it broke.
func (s *Stream) Close() {
	if s.p == nil {
		return
	}
	c, e := s.c, s.e
	s.Notify(nil) // the connection may serve another request next
	if !s.ended && !errors.Is(s.err, ErrStreamAborted) && c.opts.Notices {
		c.cancel(s.p) // the worker may still be working on it
	}
	// A stream its worker ended leaves the connection clean. Otherwise the
	// worker may still send parts: a shared connection drops them by request
	// id, but a front's own connection (Apache's) would meet them on its
	// next request, so the connection is let go.
	reusable := !s.broken && (s.ended || errors.Is(s.err, ErrStreamAborted))
	if !(reusable && c.opts.Reuse != nil && !c.closed.Load() && c.opts.Reuse(e.index, s.p.conn)) {
		e.put(s.p, reusable, c.opts.MaxIdle, c.closed.Load())
	}
	s.p = nil
	c.streams.Buffered.Add(-(s.window - max(s.credit, 0)))
	c.streams.Open.Add(-1)
	c.streams.Ends[s.cause()].Add(1)
}

// cause is why the stream ended, for the counters.
func (s *Stream) cause() StreamEnd {
	switch {
	case s.ended:
		return EndNormal
	case s.ctx.Err() != nil || s.err == nil:
		return EndClientGone // closed by its caller before the end
	case errors.Is(s.err, ErrStreamAborted):
		return EndAborted
	case errors.Is(s.err, ErrTimeout):
		return EndIdle
	}
	return EndBroken
}

// cancel tells the worker holding request p that its client went away;
// best effort, without waiting long.
func (c *Client) cancel(p *pooled) {
	if err := p.conn.Send(ControlFrames(p.id, methodCancel, nil, nil), min(c.opts.ConnectTimeout, time.Second)); err != nil {
		c.opts.Log.Logf(LevelDebug, CodeCancel, "could not send the cancel notice for request %s: %v", p.id, err)
		return
	}
	c.streams.Cancels.Add(1)
	c.opts.Log.Logf(LevelDebug, CodeCancel, "sent a cancel notice for request %s", p.id)
}
