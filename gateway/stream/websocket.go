package stream

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/gateway"
	"github.com/modzmq/modzmq/internal/wsproto"
)

// WebSockets in stream mode (docs/PROTOCOL.md, "WebSockets"). A handshake
// on a route with websocket: true is relayed like a request, by a relay
// goroutine, as a bridge.Request with WebSocket set. A refusal, or an error,
// is the client's answer, and the connection closes after it. An accept
// makes the 101 answer; once the owner handed it to libzmq, the connection
// is a WebSocket and the socket's owner does everything for it itself,
// with no goroutine of its own:
//
//   - the client's bytes go to a wsproto.Reader instead of the HTTP parser,
//     and each message to the worker (bridge.WebSocket.Send) within the
//     worker's credit; pings are answered with a pong, the client's close
//     is answered and passed on;
//   - the bridge calls the owner back when the worker sent something
//     (bridge.WebSocket.Notify), and the owner takes the worker's
//     messages (Recv(0)) one at a time: the next only once the frame of
//     the one before was handed to libzmq whole, which is what grants the
//     worker credit back. A frame goes to libzmq as a streamed piece does
//     (streamed.go): in messages of at most a sixteenth of the window, and
//     a client that takes nothing for the route's stream idle timeout is
//     closed (MODZMQ0303).
//
// Holding. A client message the worker has no credit for waits in the
// Reader, and stream mode then stops reading the socket, as for a streamed
// body (body.go): the client's further bytes wait in libzmq and the
// kernel, and so do every other client's, until the worker grants credit.
// A WebSocket that holds the socket for holdLimit (a second) is closed
// with 1013, the worker told so (MODZMQ0308). The worker's credit is at
// least one message of the largest size, so a client holds the socket only
// once it has sent a window's worth of messages the worker has not taken.
// Stream mode holds, for one WebSocket, at most the Reader's
// websocket_max_message plus one frame header and one control frame (a
// message that waits for credit included), one message from libzmq (8
// KiB) that did not fit, and the frame going to the client (one worker
// message).
//
// Closing. The front's close (the worker's close, a worker that broke the
// WebSocket: 1011, shutdown: 1001) waits a second at most for the client's
// answer; the client's close is answered and the connection closes at
// once, as after a breach of RFC 6455 (1002, 1007, 1009). A client that
// sent nothing for half the stream idle timeout gets a ping, and one
// silent for all of it is closed; the worker then gets @ws-close 1006, as
// for a client whose connection closed.

// WebSocket log codes of stream mode.
const (
	CodeWebSocketBroken bridge.Code = 307 // error: the worker's side broke a WebSocket; the client got 1011
	CodeWebSocketHeld   bridge.Code = 308 // warn: a WebSocket held every client back for holdLimit; closed with 1013
	CodeWebSocketClient bridge.Code = 309 // debug: a handshake refused here, a client breaking RFC 6455 or silent
)

// wsCloseWait is how long the front waits for the client to answer its close.
const wsCloseWait = time.Second

// wsConn is an open WebSocket: the connection's state once the 101 went.
// Only the socket's owner uses it, except queued.
type wsConn struct {
	c       *conn
	ws      *bridge.WebSocket
	route   *gateway.Handle
	rd      wsproto.Reader
	in      []byte        // client bytes that did not fit in the Reader yet
	ev      wsproto.Event // a client message waiting for the worker's credit (waiting)
	waiting bool
	st      *streamSlot
	idle    time.Duration
	read    time.Time // when the client last sent something
	pinged  bool
	pong    *slot // a pong not handed to libzmq yet: a later ping replaces its payload
	code    int   // the close code the worker gets when the connection ends (1006 unless said otherwise)
	reason  string
	closeAt time.Time // the front's close went to the client: it ends when the client answers, or wsCloseWait later
	done    bool      // the worker's side is closed (or broke): no more Recv or Send
	queued  atomic.Bool
}

// isHandshake reports whether r, matched to h, opens a WebSocket.
func isHandshake(h *gateway.Handle, r *Request) bool {
	return h.Route.WebSocket && wsproto.IsUpgrade(headerFunc(r))
}

// headerFunc returns a function giving the values of a field of r joined by ", ".
func headerFunc(r *Request) func(string) string {
	return func(name string) string {
		var vals []string
		for _, f := range r.Header {
			if equalFold(f.Name, name) {
				vals = append(vals, f.Value)
			}
		}
		return strings.Join(vals, ", ")
	}
}

// startWebSocket relays a handshake (start does the rest of a request).
// The connection reads no further request: it becomes a WebSocket, or it
// closes after the answer.
func (s *Server) startWebSocket(c *conn, r *Request, h *gateway.Handle) {
	c.closing = true
	header := headerFunc(r)
	key, protocols, status, err := wsproto.CheckHandshake(r.Method, header)
	if status == 0 && !wsproto.OriginAllowed(header("Origin"), h.Route.WebSocketOrigins) {
		status, err = http.StatusForbidden, fmt.Errorf("origin %q is not in websocket_origins", header("Origin"))
	}
	if status != 0 {
		s.log.Debug(CodeWebSocketClient.String()+": WebSocket handshake refused", "status", status, "reason", err.Error(),
			"route", h.Route.Pattern(), "connection", c.hexID)
		var extra []byte
		if status == http.StatusUpgradeRequired {
			extra = []byte("Sec-WebSocket-Version: 13\r\n")
		}
		s.answerError(c, status, http.StatusText(status), extra)
		return
	}
	sl := &slot{c: c, close: true}
	s.track(sl, r)
	id := idOf(sl)
	c.pending = append(c.pending, sl)
	hdr := make([]byte, 0, 256)
	for _, f := range r.Header {
		hdr = bridge.AppendHeader(hdr, f.Name, f.Value)
	}
	meta := s.lv.Gateway().AppendMeta(nil, h, &gateway.Meta{RemoteAddr: c.peer, Scheme: "http", Host: r.Host,
		Protocol: r.Proto, ConnectionID: c.hexID, Vars: c.headVars})
	if protocols != "" {
		meta = bridge.AppendHeader(meta, "websocket-protocols", protocols)
	}
	req := &bridge.Request{
		Method:       []byte(r.Method),
		Target:       []byte(gateway.StripTarget(h, r.Target)),
		Headers:      hdr,
		Meta:         meta,
		Body:         r.Body,
		StreamWindow: h.Route.StreamWindowOrDefault(),
		WebSocket:    true,
		MaxMessage:   h.Route.WebSocketMaxMessageOrDefault(),
	}
	ctx, opened := c.ctx, c.opened
	s.inFlight.Add(1)
	go func() {
		defer s.inFlight.Done()
		select {
		case <-opened:
		case <-ctx.Done():
		}
		resp, err := s.relay(ctx, h, req, r, id)
		switch {
		case err != nil:
			st := bridge.StatusOf(err)
			var extra []byte
			if errors.Is(err, bridge.ErrOverload) {
				extra = []byte("Retry-After: 1\r\n")
			}
			s.complete(sl, sl.errorAnswer(st, http.StatusText(st), extra, "close"))
			return
		case resp.WebSocket == nil: // refused: the worker's answer is the client's
			sl.status, sl.part = resp.Status, bodyLen(&resp, false)
			s.complete(sl, response(&resp, false, "close"))
			return
		}
		if _, err := bridge.CheckAccept(resp.Headers, protocols); err != nil {
			s.log.Error(fmt.Sprintf("%v: %v", bridge.CodeOf(err), err), "route", h.Route.Pattern(),
				"backend", strings.Join(h.Route.Backend, " "), "status", http.StatusBadGateway)
			resp.WebSocket.Close(bridge.CloseInternalError, nil)
			s.complete(sl, sl.errorAnswer(http.StatusBadGateway, http.StatusText(http.StatusBadGateway), nil, "close"))
			return
		}
		idle := time.Duration(h.Route.StreamIdleTimeout)
		if idle <= 0 {
			idle = bridge.DefaultStreamIdleTimeout
		}
		w := &wsConn{ws: resp.WebSocket, route: h, idle: idle, code: bridge.CloseAbnormal,
			st: &streamSlot{msgMax: msgMax(h.Route.StreamWindowOrDefault()), stall: idle}}
		w.rd.Max = resp.WebSocket.MaxMessage()
		sl.close, sl.ws = false, w
		sl.status = http.StatusSwitchingProtocols
		s.complete(sl, accept(&resp, key))
	}()
}

// accept formats the 101 answer to a handshake the worker accepted: the
// worker's header lines (hop-by-hop ones dropped by the bridge) after the
// front's.
func accept(resp *bridge.Response, key string) []byte {
	b := make([]byte, 0, 160+len(resp.Headers))
	b = append(b, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "...)
	b = append(b, wsproto.AcceptKey(key)...)
	b = append(b, "\r\n"...)
	b = append(b, resp.Headers...)
	if n := len(resp.Headers); n > 0 && resp.Headers[n-1] != '\n' {
		b = append(b, "\r\n"...)
	}
	return append(b, "\r\n"...)
}

// wsStart makes c a WebSocket: flush calls it once the 101 in sl went to
// libzmq. Bytes the client sent after its handshake go to the Reader.
func (s *Server) wsStart(c *conn, sl *slot) {
	w := sl.ws
	sl.ws = nil
	w.c, c.ws = c, w
	c.closing = false
	p := c.parser
	if rest := p.buf[p.off:]; len(rest) > 0 {
		w.in = append(w.in, rest...)
	}
	p.buf, p.off, p.req = nil, 0, nil // the connection parses no more requests
	c.head, c.headRoute, c.headErr, c.headVars = nil, nil, 0, nil
	w.read = time.Now()
	if !w.ws.Notify(func() { s.wsWake(w) }) {
		if ready := w.ws.Ready(); ready != nil {
			// A connection that cannot call back (not the bridge's own
			// transport): a goroutine waits for it.
			go func() {
				for {
					select {
					case <-ready:
						s.wsWake(w)
					case <-c.ctx.Done():
						return
					}
				}
			}()
		}
	}
	// flush pumps the WebSocket when it is done (and closes it at once
	// when the server is shutting down).
}

// wsWake asks the owner to pump w: the worker sent something. The bridge
// calls it from the goroutine that reads the worker's connection.
func (s *Server) wsWake(w *wsConn) {
	if w.queued.Swap(true) {
		return
	}
	s.wakeMu.Lock()
	s.wsReady = append(s.wsReady, w)
	wake := !s.pending.Swap(true)
	s.wakeMu.Unlock()
	if wake {
		s.waiter.SetDeadline(time.Now())
	}
}

// wsWoken pumps the WebSockets whose workers sent something (drainQueue).
func (s *Server) wsWoken(ready []*wsConn) {
	for _, w := range ready {
		w.queued.Store(false)
		if c := w.c; s.conns[c.id] == c && c.ws == w && !c.parsing {
			s.wsPump(c)
		}
	}
}

// wsData takes bytes from a WebSocket's client (readStream).
func (s *Server) wsData(c *conn, data []byte) {
	w := c.ws
	w.read, w.pinged = c.lastIO, false
	if len(w.in) == 0 {
		n := min(int64(len(data)), w.rd.Space())
		w.rd.Feed(data[:n])
		data = data[n:]
	}
	w.in = append(w.in, data...)
	if !c.parsing {
		s.wsPump(c)
	}
}

// wsPump moves c's WebSocket along both ways as far as it can: the
// worker's next message to the client once the one before went to
// libzmq, and the client's messages to the worker while its credit lasts.
// Then c holds the socket if a client message waits for credit.
func (s *Server) wsPump(c *conn) {
	w := c.ws
	c.parsing = true
	defer func() { c.parsing = false }()
	if s.draining && w.closeAt.IsZero() {
		s.wsClose(c, bridge.CloseGoingAway, "the server is shutting down")
	}
	for s.conns[c.id] == c {
		moved := false
		if !w.done && w.closeAt.IsZero() && len(c.pending) == 0 {
			m, ok, err := w.ws.Recv(0)
			switch {
			case err != nil:
				s.wsBroken(c, err)
				moved = true
			case ok:
				s.wsFromWorker(c, m)
				moved = true
			}
		}
		if s.conns[c.id] != c {
			return
		}
		if s.wsFromClient(c) {
			moved = true
		}
		if !moved {
			break
		}
	}
	if s.conns[c.id] != c {
		return
	}
	if w.waiting || len(w.in) > 0 {
		if _, ok := s.held[c]; !ok {
			s.held[c] = time.Now()
		}
	} else {
		s.release(c)
	}
}

// wsFromWorker sends the client a message from the worker.
func (s *Server) wsFromWorker(c *conn, m bridge.Message) {
	w := c.ws
	switch m.Kind {
	case bridge.Text, bridge.Binary:
		kind := wsproto.Binary
		if m.Kind == bridge.Text {
			kind = wsproto.Text
		}
		s.wsQueue(c, wsproto.AppendFrame(make([]byte, 0, len(m.Data)+10), kind, m.Data), false)
	case bridge.Close:
		w.done = true // the worker closed: it needs no close notice
		s.wsClose(c, m.Code, string(m.Reason))
	}
}

// wsFromClient reads the client's messages and control frames and acts on
// them, while the worker has credit for the messages; it reports whether
// it did anything.
func (s *Server) wsFromClient(c *conn) bool {
	w := c.ws
	moved := false
	for s.conns[c.id] == c {
		if w.waiting {
			if !s.wsSend(c) {
				return moved
			}
			moved = true
		}
		if n := min(int64(len(w.in)), w.rd.Space()); n > 0 {
			w.rd.Feed(w.in[:n])
			w.in = w.in[:copy(w.in, w.in[n:])]
			if len(w.in) == 0 && cap(w.in) > 8<<10 {
				w.in = nil
			}
		}
		ev, ok, err := w.rd.Next()
		if err != nil {
			if w.closeAt.IsZero() {
				var perr *wsproto.Error
				code, reason := wsproto.CloseProtocolError, err.Error()
				if errors.As(err, &perr) {
					code, reason = perr.Code, perr.Reason
				}
				s.log.Debug(CodeWebSocketClient.String()+": WebSocket client broke RFC 6455", "code", code, "reason", reason, "connection", c.hexID)
				s.wsTell(c, code, reason)
				s.wsQueue(c, wsproto.AppendClose(nil, code, []byte(reason)), true)
				w.closeAt = time.Now()
				return true
			}
			return moved // the Reader reads no more
		}
		if !ok {
			return moved
		}
		moved = true
		switch ev.Kind {
		case wsproto.Text, wsproto.Binary:
			if !w.done && w.closeAt.IsZero() {
				w.ev, w.waiting = ev, true // dropped once closing
			}
		case wsproto.Ping:
			s.wsPong(c, ev.Data)
		case wsproto.Close:
			if !w.closeAt.IsZero() {
				s.closeConn(c) // the answer to the front's close
				return true
			}
			if !w.done {
				w.done = true
				if err := w.ws.Send(bridge.Message{Kind: bridge.Close, Code: ev.Code, Reason: ev.Reason}); err != nil {
					s.log.Debug(bridge.CodeWebSocket.String()+": the client's close did not reach the worker", "err", err, "connection", c.hexID)
				}
			}
			s.wsQueue(c, wsproto.AppendClose(nil, ev.Code, nil), true)
			w.closeAt = time.Now()
			return true
		}
	}
	return moved
}

// wsSend sends the worker the client message that waits, if its credit
// allows; false when it does not.
func (s *Server) wsSend(c *conn) bool {
	w := c.ws
	if int64(len(w.ev.Data))+bridge.PartCost > w.ws.SendCredit() {
		return false
	}
	kind := bridge.Binary
	if w.ev.Kind == wsproto.Text {
		kind = bridge.Text
	}
	err := w.ws.Send(bridge.Message{Kind: kind, Data: w.ev.Data})
	w.ev, w.waiting = wsproto.Event{}, false
	if err != nil {
		s.wsBroken(c, err)
	}
	return true
}

// wsPong answers a ping; a pong still waiting to go takes the later ping's
// payload instead (RFC 6455 5.5.3).
func (s *Server) wsPong(c *conn, data []byte) {
	w := c.ws
	if w.pong != nil {
		for i, sl := range c.pending {
			if sl == w.pong && (i > 0 || c.handed == 0) {
				sl.data = wsproto.AppendPong(sl.data[:0], data)
				return
			}
		}
	}
	w.pong = &slot{c: c, done: true, data: wsproto.AppendPong(nil, data), st: w.st}
	c.pending = append(c.pending, w.pong)
	s.flush(c)
}

// wsQueue queues a frame for the client; close: the connection closes
// once it went.
func (s *Server) wsQueue(c *conn, frame []byte, close bool) {
	c.pending = append(c.pending, &slot{c: c, done: true, data: frame, close: close, st: c.ws.st})
	s.flush(c)
}

// wsTell tells the worker the WebSocket closed with code, unless its side
// is closed already.
func (s *Server) wsTell(c *conn, code int, reason string) {
	w := c.ws
	if !w.done {
		w.done = true
		w.code, w.reason = code, reason
		w.ws.Close(code, []byte(reason))
	}
}

// wsClose starts the front's close: the worker is told code unless it
// closed, the client gets a close frame, and the connection ends when the
// client answers, or wsCloseWait later (sweep).
func (s *Server) wsClose(c *conn, code int, reason string) {
	w := c.ws
	if !w.closeAt.IsZero() {
		return
	}
	s.wsTell(c, code, reason)
	w.waiting, w.ev = false, wsproto.Event{} // the client's bytes are still read, for its close
	w.closeAt = time.Now()
	s.wsQueue(c, wsproto.AppendClose(nil, code, []byte(reason)), false)
}

// wsBroken closes a WebSocket the worker's side broke (lost, or a message
// that breaks the rules): 1011 to the client and, when it can still hear
// it, to the worker.
func (s *Server) wsBroken(c *conn, err error) {
	w := c.ws
	s.log.Error(fmt.Sprintf("%v: WebSocket closed with 1011: %v", CodeWebSocketBroken, err), "route", w.route.Route.Pattern(),
		"backend", strings.Join(w.route.Route.Backend, " "), "connection", c.hexID)
	s.wsClose(c, bridge.CloseInternalError, "")
}

// wsGone ends the WebSocket of a connection that closed (gone): the worker
// gets @ws-close with the code set (1006 for a client that vanished, 1001
// at shutdown) unless it was told already. Accepted WebSockets whose 101
// had not gone yet are closed too.
func (s *Server) wsGone(c *conn) {
	for _, sl := range c.pending {
		if sl.done {
			s.wsDrop(sl)
		}
	}
	w := c.ws
	if w == nil {
		return
	}
	if !w.done && s.draining {
		w.code, w.reason = bridge.CloseGoingAway, ""
	}
	w.done = true
	w.ws.Close(w.code, []byte(w.reason))
	w.waiting, w.ev, w.in = false, wsproto.Event{}, nil
}

// wsDrop closes the WebSocket an answer carries whose connection is gone.
func (s *Server) wsDrop(sl *slot) {
	if sl.ws != nil {
		sl.ws.ws.Close(bridge.CloseAbnormal, nil)
		sl.ws = nil
	}
}

// wsHeldTooLong closes a WebSocket that kept the socket from being read
// for held (sweepHolds): its worker granted no credit for the client's
// next message while every other client waited.
func (s *Server) wsHeldTooLong(c *conn, held time.Duration) {
	s.log.Warn(CodeWebSocketHeld.String()+": a WebSocket's worker took no message while every other client waited; closed with 1013",
		"route", c.ws.route.Route.Pattern(), "held", held.Round(time.Millisecond).String(), "connection", c.hexID)
	s.wsClose(c, bridge.CloseTryAgainLater, "")
	s.release(c)
}

// wsSweep does a WebSocket's timers (sweep): the front's close not
// answered in time, a client silent for half the idle timeout (ping) or
// all of it (closed: the worker gets 1006), a client taking nothing of its
// frames for its stall limit. It also looks for a lost worker (Recv
// notices it).
func (s *Server) wsSweep(c *conn, now time.Time) {
	w := c.ws
	switch {
	case !w.closeAt.IsZero():
		if now.Sub(w.closeAt) > wsCloseWait {
			s.closeConn(c)
		}
		return
	case !c.stalled.IsZero() && now.Sub(c.stalled) > s.stallLimit(c):
		s.log.Info(CodeSlowReader.String()+": client is not reading; connection closed", "connection", c.hexID,
			"stalled", now.Sub(c.stalled).Round(time.Millisecond).String())
		s.closeConn(c)
		return
	case now.Sub(w.read) > w.idle && w.pinged:
		s.log.Debug(CodeWebSocketClient.String()+": WebSocket client silent for the stream idle timeout; closed", "connection", c.hexID)
		s.wsQueue(c, wsproto.AppendClose(nil, bridge.CloseGoingAway, []byte("idle")), true)
		return
	case now.Sub(w.read) > w.idle/2 && !w.pinged:
		w.pinged = true
		s.wsQueue(c, wsproto.AppendPing(nil, nil), false)
	}
	if s.conns[c.id] == c && !c.parsing {
		s.wsPump(c)
	}
}
