package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// WebSockets (docs/PROTOCOL.md, "WebSockets"): the worker side. A request
// with WebSocket set is a handshake; a worker that accepts it answers
// ["@accept", headers], and from then on messages go both ways under the
// request's id, each costing its bytes plus PartCost against the credit the
// other side grants. The client side (RFC 6455 framing) is the front's.

// DefaultWebSocketMaxMessage is the largest message either side may send,
// when the front sets none.
const DefaultWebSocketMaxMessage = 16 << 20

// WebSocket message kinds, as methods the bridge sends and as the first
// frame of a worker's message.
var (
	partAccept  = []byte("@accept")
	kindText    = []byte("@text")
	kindBinary  = []byte("@binary")
	kindWSClose = []byte("@ws-close")
)

// MessageKind is what a WebSocket message is.
type MessageKind int

const (
	Text MessageKind = iota + 1
	Binary
	Close // Code and Reason say why
)

func (k MessageKind) method() []byte {
	switch k {
	case Text:
		return kindText
	case Binary:
		return kindBinary
	}
	return kindWSClose
}

// Message is one WebSocket message.
type Message struct {
	Kind   MessageKind
	Data   []byte // Text and Binary
	Code   int    // Close: the close code (1005 when the worker gave none)
	Reason []byte // Close
}

// Close codes the bridge and fronts use (RFC 6455 section 7.4.1).
const (
	CloseNormal        = 1000
	CloseGoingAway     = 1001
	CloseProtocolError = 1002
	CloseNoStatus      = 1005
	CloseAbnormal      = 1006
	CloseInvalidData   = 1007
	CloseTooBig        = 1009
	CloseInternalError = 1011
	CloseTryAgainLater = 1013
)

// ErrWebSocketClosed is what Recv and Send return once the WebSocket is
// closed on the worker's side.
var ErrWebSocketClosed = errors.New("the WebSocket is closed")

// ValidCloseCode reports whether code may be sent in a close frame (RFC
// 6455 section 7.4): the defined codes a peer may send, and 3000-4999.
func ValidCloseCode(code int) bool {
	switch {
	case code >= 3000 && code <= 4999:
		return true
	case code >= 1000 && code <= 1014:
		return code != 1004 && code != CloseNoStatus && code != CloseAbnormal
	}
	return false
}

// webSocketWindow is the credit each side of a WebSocket starts with: the
// request's StreamWindow and room for one message of the largest size
// beyond it. With less, a side's credit falls short of a message of the
// largest size after the first message, and the rule of grant makes the
// other side grant credit back after every message: two more messages
// for every one relayed.
func webSocketWindow(r *Request) int64 {
	return max(r.StreamWindow, 0) + r.maxMessage() + PartCost
}

func (r *Request) maxMessage() int64 {
	if r.MaxMessage > 0 {
		return r.MaxMessage
	}
	return DefaultWebSocketMaxMessage
}

// appendWebSocketMeta appends the meta lines of a handshake (Request.WebSocket).
func appendWebSocketMeta(meta []byte, r *Request) []byte {
	meta = append(meta, "websocket: 1\r\n"...)
	meta = append(meta, "websocket-max-message: "...)
	meta = strconv.AppendInt(meta, r.maxMessage(), 10)
	meta = append(meta, "\r\nstream-credits: "...)
	meta = strconv.AppendInt(meta, webSocketWindow(r), 10)
	return append(meta, '\r', '\n')
}

// CheckAccept checks the header lines of a worker's @accept against the
// subprotocols the client offered (the Sec-WebSocket-Protocol values of the
// handshake, comma-separated): it returns the chosen subprotocol ("" for
// none), or a protocol error for a choice not offered or a
// Sec-WebSocket-Accept line (the front computes that one).
func CheckAccept(headers []byte, offered string) (string, error) {
	chosen := ""
	for line := range bytes.SplitSeq(headers, []byte("\r\n")) {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		switch strings.ToLower(string(name)) {
		case "sec-websocket-accept":
			return "", protocolError("an @accept may not set Sec-WebSocket-Accept")
		case "sec-websocket-protocol":
			if chosen != "" {
				return "", protocolError("an @accept chooses more than one subprotocol")
			}
			chosen = string(bytes.TrimSpace(value))
			found := false
			for o := range strings.SplitSeq(offered, ",") {
				found = found || strings.TrimSpace(o) == chosen
			}
			if !found || chosen == "" {
				return "", protocolError("an @accept chooses subprotocol %q, which the client did not offer (%q)", chosen, offered)
			}
		}
	}
	return chosen, nil
}

// WebSocket is an accepted WebSocket, the worker's side of it. One
// goroutine at a time uses it (a front hands client messages to the one
// that calls Recv, waking it with Ready); Close must be called when done.
type WebSocket struct {
	c        *Client
	e        *endpoint
	p        *pooled
	ctx      context.Context
	window   int64
	credit   int64 // what the worker may still send
	owed     int64 // taken by the client, not granted back yet
	sendable int64 // what the worker lets the front send it
	max      int64 // the largest message
	epoch    uint64
	closed   bool // @ws-close received from the worker, or sent to it
	failed   bool
	broken   bool // the connection too: not reusable
	err      error
	byWorker bool // the worker closed: its connection is clean
	byClient bool // the client closed and the worker was told
}

// startWebSocket ends the call with a worker's @accept: the WebSocket
// takes the connection over.
func (call *Call) startWebSocket(msg [][]byte) {
	c := call.c
	if len(msg) != 4 {
		call.end(Response{}, protocolError("request %s: an @accept is [\"@accept\", headers], got %d frames", call.p.id, len(msg)-2))
		return
	}
	resp, err := DecodeReply([][]byte{[]byte("200"), msg[3], nil})
	if err != nil {
		call.end(Response{}, fmt.Errorf("request %s: @accept: %w", call.p.id, err))
		return
	}
	resp.Status = 101
	window := webSocketWindow(call.req)
	ws := &WebSocket{c: c, e: call.e, p: call.handOver(), ctx: call.ctx, window: window, credit: window, sendable: window,
		max: call.req.maxMessage(), epoch: call.epoch}
	call.wsSlot = false // the WebSocket holds the place until Close
	resp.WebSocket = ws
	call.end(resp, nil)
}

// Conn returns the connection the worker's messages come on, for a front
// that waits on it by itself; nil once closed.
func (ws *WebSocket) Conn() Conn {
	if ws.p == nil {
		return nil
	}
	return ws.p.conn
}

// Ready returns a channel that receives when a message may have come from
// the worker (call Recv(0) then), where the connection offers one (shared
// connections do); nil otherwise.
func (ws *WebSocket) Ready() <-chan struct{} {
	if ws.p == nil {
		return nil
	}
	return readyOf(ws.p.conn)
}

// Notify makes fn be called whenever a message from the worker may have
// been queued for Recv, by the goroutine that reads the worker's
// connection, and when the connection fails (Recv reports it), by the
// goroutine that finds it failed: fn must return at once and must not use
// the WebSocket. It lets a front that owns many WebSockets in one
// goroutine be woken without a goroutine waiting on Ready for each (it
// calls Recv(0) then). It reports false when the connection offers no
// such call (wait on Ready then). Close stops the calls (one under way
// may still end after it).
func (ws *WebSocket) Notify(fn func()) bool {
	if ws.p == nil {
		return false
	}
	n, ok := ws.p.conn.(interface{ setNotify(func()) })
	if ok {
		n.setNotify(fn)
	}
	return ok
}

// SendCredit is what the worker lets the front send it now: a message
// costing more (its bytes plus PartCost) waits until the worker grants it.
func (ws *WebSocket) SendCredit() int64 { return atomic.LoadInt64(&ws.sendable) }

// MaxMessage is the largest message either side may send.
func (ws *WebSocket) MaxMessage() int64 { return ws.max }

// Recv waits up to wait for the worker's next message: Text, Binary or
// Close (after which the WebSocket is closed on the worker's side). ok
// false: nothing came in time. Calling Recv tells the WebSocket the client
// took the message Recv returned before, which earns the worker its credit
// back. Credit grants from the worker are absorbed (see SendCredit). An
// error means the WebSocket broke: ErrWorkerLost, ErrProtocol, or the
// context's; the client should be closed with 1011.
func (ws *WebSocket) Recv(wait time.Duration) (m Message, ok bool, err error) {
	if ws.closed {
		return Message{}, false, ErrWebSocketClosed
	}
	if ws.failed {
		return Message{}, false, ws.err
	}
	ws.grant()
	if ws.failed {
		return Message{}, false, ws.err
	}
	for {
		msg, err := ws.p.conn.Recv(wait)
		if err == ErrTimeout {
			switch {
			case ws.ctx.Err() != nil:
				return Message{}, false, ws.fail(ws.ctx.Err())
			case ws.e.epoch.Load() != ws.epoch:
				return Message{}, false, ws.fail(fmt.Errorf("%w: %s dropped the connection holding WebSocket %s", ErrWorkerLost, ws.e.addr, ws.p.id))
			}
			return Message{}, false, nil
		}
		if err != nil {
			// A breach of this WebSocket's own (a shared connection
			// dropped messages sent past its credit) leaves the
			// connection able to carry the worker its close; any other
			// error breaks it.
			ws.broken = !errors.Is(err, ErrProtocol)
			return Message{}, false, ws.fail(fmt.Errorf("%w (request %s to %s)", err, ws.p.id, ws.e.addr))
		}
		wait = 0
		if len(msg) < 2 || !bytes.Equal(msg[0], ws.p.id) {
			ws.c.opts.Log.Logf(LevelDebug, CodeStaleReply, "dropped a reply nobody waits for any more (request %s)", idOf(msg))
			continue
		}
		m, err := ws.decode(msg)
		if err != nil {
			return Message{}, false, ws.fail(fmt.Errorf("WebSocket %s: %w", ws.p.id, err))
		}
		if m.Kind == 0 {
			continue // a credit
		}
		return m, true, nil
	}
}

// decode checks a worker's message on the WebSocket and counts its cost;
// a credit returns a zero Message.
func (ws *WebSocket) decode(msg [][]byte) (Message, error) {
	if len(msg[1]) != 0 {
		return Message{}, protocolError("a message lacks the empty delimiter frame")
	}
	f := msg[2:]
	if len(f) < 2 {
		return Message{}, protocolError("a WebSocket message has at least 2 frames, got %d", len(f))
	}
	if bytes.Equal(f[0], partCredit) {
		n, err := strconv.ParseInt(string(f[1]), 10, 64)
		if len(f) != 2 || err != nil || n < 0 || n > maxCredit {
			return Message{}, protocolError("a credit is [\"@credit\", N] with N from 0 to %d, got %s", int64(maxCredit), quote(f[len(f)-1]))
		}
		if atomic.AddInt64(&ws.sendable, n) > maxCredit {
			atomic.StoreInt64(&ws.sendable, maxCredit)
		}
		return Message{}, nil
	}
	var m Message
	switch {
	case bytes.Equal(f[0], kindText) && len(f) == 2:
		if !utf8.Valid(f[1]) {
			return Message{}, protocolError("a text message that is not UTF-8")
		}
		m = Message{Kind: Text, Data: f[1]}
	case bytes.Equal(f[0], kindBinary) && len(f) == 2:
		m = Message{Kind: Binary, Data: f[1]}
	case bytes.Equal(f[0], kindWSClose) && len(f) <= 3:
		code, err := strconv.Atoi(string(f[1]))
		if err != nil || !ValidCloseCode(code) {
			return Message{}, protocolError("a close code %s: 1000 or 3000-4999 (or another code a peer may send)", quote(f[1]))
		}
		m = Message{Kind: Close, Code: code}
		if len(f) == 3 {
			if len(f[2]) > 123 || !utf8.Valid(f[2]) {
				return Message{}, protocolError("a close reason of %d bytes: at most 123, UTF-8", len(f[2]))
			}
			m.Reason = f[2]
		}
		ws.closed, ws.byWorker = true, true
		return m, nil
	default:
		return Message{}, protocolError("unknown WebSocket message %s with %d frames", quote(f[0]), len(f))
	}
	if int64(len(m.Data)) > ws.max {
		return Message{}, protocolError("a message of %d bytes, over the limit of %d", len(m.Data), ws.max)
	}
	cost := partCost(len(m.Data))
	ws.c.streams.Buffered.Add(min(cost, ws.credit))
	if ws.credit -= cost; ws.credit < 0 {
		return Message{}, fmt.Errorf("%w: the worker sent %d bytes beyond its credit", ErrProtocol, -ws.credit)
	}
	ws.owed += cost
	ws.c.streams.Parts.Add(1)
	ws.c.streams.Bytes.Add(int64(len(m.Data)))
	return m, nil
}

// grantDue reports whether the client earned the worker enough credit back
// to grant it: a quarter of the window, or at once when what the worker has
// left would not let it send a message of the largest size (a worker
// waiting for that credit would otherwise wait for ever).
func (ws *WebSocket) grantDue() bool {
	return ws.owed > 0 && (ws.owed >= ws.window/4 || ws.credit < ws.max+PartCost)
}

// grantAt is the least owed at which grantDue holds while each message
// from the worker moves its cost from credit to owed (their sum stays).
func (ws *WebSocket) grantAt() int64 {
	return max(min(ws.window/4, ws.credit+ws.owed-ws.max-PartCost+1), 1)
}

// grant sends the worker the credit the client earned back, when due.
func (ws *WebSocket) grant() {
	if !ws.grantDue() {
		return
	}
	n := ws.owed
	ws.owed, ws.credit = 0, ws.credit+n
	ws.c.streams.Buffered.Add(-n)
	if err := ws.send(methodCredit, strconv.AppendInt(nil, n, 10), nil); err != nil {
		ws.broken = true
		ws.fail(fmt.Errorf("%w: sending credit for request %s to %s: %v", ErrWorkerLost, ws.p.id, ws.e.addr, err))
	}
}

// Flow is the credit of a WebSocket, a streamed reply or a streamed request
// body, lent to a front that relays the common messages itself (the Apache
// module's C steps: modzmq_ws_lent, modzmq_stream_lent, modzmq_body_lent)
// while the WebSocket, Stream or Call is not used, and given back (Return,
// ReturnBody) before it is used again.
//
// A WebSocket's: a client's message costs its bytes and PartCost of
// Sendable, a worker's the same of Credit, which the front adds to Owed;
// once Owed reaches GrantAt the WebSocket must have it back, for Recv
// grants credit. The front sends a client's message as Send does (ID,
// SendTimeout).
//
// A Stream's: a worker's @data or @keep-alive costs its bytes and PartCost
// of Credit, which the front adds to Owed as it takes the part (its client
// takes the part before the next step); the front grants Owed back as Step
// does, with @credit (ID, SendTimeout), once it reaches GrantQueued when it
// steps, or GrantAt when no part is queued; after a message it waits at
// most Wait at a time for the next; a stream that hears nothing for Idle is
// Step's to end. Heard is when the front last took a message of the
// worker's (zero: none since Lend).
//
// A streamed body's (Call.LendBody): a part costs its bytes and PartCost of
// Sendable; the front sends it as SendBody does (ID, SendTimeout).
//
// Every way the front counts what it relays in the client's counters
// itself.
type Flow struct {
	Sendable, Credit, Owed, GrantAt, GrantQueued, Max int64
	ID                                                []byte
	SendTimeout, Idle, Wait                           time.Duration
	Heard                                             time.Time
}

// Lend returns the WebSocket's credit for a front that relays by itself;
// ok false when it may not (closed or failed).
func (ws *WebSocket) Lend() (f Flow, ok bool) {
	if ws.p == nil || ws.closed || ws.failed {
		return Flow{}, false
	}
	return Flow{Sendable: ws.SendCredit(), Credit: ws.credit, Owed: ws.owed, GrantAt: ws.grantAt(), Max: ws.max,
		ID: ws.p.id, SendTimeout: ws.c.opts.ConnectTimeout}, true
}

// Return gives back the credit Lend lent, as the front left it.
func (ws *WebSocket) Return(f Flow) {
	atomic.StoreInt64(&ws.sendable, f.Sendable)
	ws.credit, ws.owed = f.Credit, f.Owed
}

// Send sends the worker a message from the client: Text or Binary within
// SendCredit (an error otherwise; the front waits for credit before it
// reads on), or Close with the client's code and reason, after which the
// WebSocket is closed.
func (ws *WebSocket) Send(m Message) error {
	if ws.closed {
		return ErrWebSocketClosed
	}
	if ws.failed {
		return ws.err
	}
	if m.Kind == Close {
		ws.closed, ws.byClient = true, true
		return ws.send(kindWSClose, strconv.AppendInt(nil, int64(m.Code), 10), m.Reason)
	}
	cost := partCost(len(m.Data))
	if int64(len(m.Data)) > ws.max {
		return fmt.Errorf("WebSocket %s: a message of %d bytes, over the limit of %d", ws.p.id, len(m.Data), ws.max)
	}
	if cost > ws.SendCredit() {
		return fmt.Errorf("WebSocket %s: a message costing %d, over the worker's credit of %d", ws.p.id, cost, ws.SendCredit())
	}
	if err := ws.send(m.Kind.method(), nil, m.Data); err != nil {
		ws.broken = true
		return ws.fail(fmt.Errorf("%w: sending a message for request %s to %s: %v", ErrWorkerLost, ws.p.id, ws.e.addr, err))
	}
	atomic.AddInt64(&ws.sendable, -cost)
	ws.c.streams.BodyParts.Add(1)
	ws.c.streams.BodyBytes.Add(int64(len(m.Data)))
	return nil
}

// send sends the worker a control request for the WebSocket, in the
// connection's frames, which it clears after: the WebSocket keeps none of
// the bytes it sent (a client's message, which its front reuses).
func (ws *WebSocket) send(method, target, body []byte) error {
	meta := AppendHeader(nil, "request-id", string(ws.p.id))
	ws.p.frames = append(ws.p.frames[:0], ws.p.id, nil, versionFrame, method, target, nil, meta, body)
	err := ws.p.conn.Send(ws.p.frames, ws.c.opts.ConnectTimeout)
	clear(ws.p.frames)
	return err
}

func (ws *WebSocket) fail(err error) error {
	ws.failed, ws.err = true, err
	return err
}

// Close ends the WebSocket: unless the worker closed it or already has the
// client's close, the worker gets @ws-close with code and reason (a front
// uses 1006 for a client that vanished, 1001 when it shuts down, 1011 when
// the worker broke the WebSocket). The connection goes back to the pool
// when it is clean.
func (ws *WebSocket) Close(code int, reason []byte) {
	if ws.p == nil {
		return
	}
	ws.Notify(nil)
	c, e := ws.c, ws.e
	if !ws.closed && !ws.broken {
		if err := ws.send(kindWSClose, strconv.AppendInt(nil, int64(code), 10), reason); err != nil {
			c.opts.Log.Logf(LevelDebug, CodeWebSocket, "could not tell the worker WebSocket %s closed: %v", ws.p.id, err)
		}
		ws.closed = true
	}
	// After the worker's close its connection is clean; otherwise it may
	// still send messages, which a shared connection drops by id but a
	// front's own connection would meet on its next request.
	reusable := !ws.broken && ws.byWorker
	if !(reusable && c.opts.Reuse != nil && !c.closed.Load() && c.opts.Reuse(e.index, ws.p.conn)) {
		e.put(ws.p, reusable, c.opts.MaxIdle, c.closed.Load())
	}
	ws.p = nil
	c.streams.Buffered.Add(-(ws.window - max(ws.credit, 0)))
	c.streams.Open.Add(-1)
	c.streams.Ends[ws.cause()].Add(1)
}

// cause is why the WebSocket ended, for the counters.
func (ws *WebSocket) cause() StreamEnd {
	switch {
	case ws.byWorker || ws.byClient:
		return EndNormal
	case ws.failed && ws.ctx.Err() == nil:
		return EndBroken
	}
	return EndClientGone
}
