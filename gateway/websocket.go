package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/mux"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/internal/wsproto"
)

// WebSockets in the gateway's HTTP mode (docs/PROTOCOL.md, "WebSockets"): a
// handshake on a route with websocket: true is relayed to a worker; once it
// accepts, the connection is hijacked and two goroutines carry it: one reads
// the client's frames (wsproto.Reader) and hands each message or control
// frame to the other, which owns the bridge WebSocket and is the only one
// to write to the client. The reader waits for the owner to finish with
// each event before it reads on, so a worker short of credit stops the
// reading and the client's TCP window fills.

// WebSocket log codes of the gateway.
const (
	CodeWebSocketRefused bridge.Code = 207 // debug: a handshake refused by the gateway itself
	CodeWebSocketClient  bridge.Code = 208 // debug: a client broke RFC 6455, or went silent
)

// closeWait is how long the gateway waits for a client to answer its close.
const closeWait = time.Second

// webSockets are the gateway's open WebSockets, for shutdown: net/http
// does not track hijacked connections.
type webSockets struct {
	mu   sync.Mutex
	down chan struct{} // closed when the gateway shuts down
	open int
	none chan struct{} // closed when open falls to 0, for WaitWebSockets
}

func (s *webSockets) downChan() chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down == nil {
		s.down = make(chan struct{})
	}
	return s.down
}

// add counts a WebSocket that opens; false once the gateway shuts down.
func (s *webSockets) add() bool {
	down := s.downChan()
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-down:
		return false
	default:
	}
	s.open++
	return true
}

// remove counts a WebSocket that ended.
func (s *webSockets) remove() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open--; s.open == 0 && s.none != nil {
		close(s.none)
		s.none = nil
	}
}

// inherit makes s shut down with old: a reload's new gateway shares the
// shutdown of the one it replaces.
func (s *webSockets) inherit(old *webSockets) {
	down := old.downChan()
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

// ShutdownWebSockets closes every open WebSocket with 1001 (going away)
// and refuses new ones; Serve calls it when it shuts down.
func (g *Gateway) ShutdownWebSockets() {
	down := g.ws.downChan()
	g.ws.mu.Lock()
	defer g.ws.mu.Unlock()
	select {
	case <-down:
	default:
		close(down)
	}
}

// WaitWebSockets waits until no WebSocket is open, or ctx is done.
func (g *Gateway) WaitWebSockets(ctx context.Context) error {
	g.ws.mu.Lock()
	if g.ws.open == 0 {
		g.ws.mu.Unlock()
		return nil
	}
	if g.ws.none == nil {
		g.ws.none = make(chan struct{})
	}
	none := g.ws.none
	g.ws.mu.Unlock()
	select {
	case <-none:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// serveWebSocket answers a handshake on a WebSocket route.
func (g *Gateway) serveWebSocket(w http.ResponseWriter, r *http.Request, h *Handle) {
	header := func(name string) string { return strings.Join(r.Header.Values(name), ", ") }
	key, protocols, status, err := wsproto.CheckHandshake(r.Method, header)
	if status == 0 && !wsproto.OriginAllowed(r.Header.Get("Origin"), h.Route.WebSocketOrigins) {
		status, err = http.StatusForbidden, fmt.Errorf("origin %q is not in websocket_origins", r.Header.Get("Origin"))
	}
	down := g.ws.downChan()
	select {
	case <-down:
		status, err = http.StatusServiceUnavailable, errors.New("the gateway is shutting down")
	default:
	}
	if status != 0 {
		g.log.Debug(CodeWebSocketRefused.String()+": WebSocket handshake refused: "+err.Error(), "route", h.Route.Pattern(), "status", status)
		if status == http.StatusUpgradeRequired {
			w.Header().Set("Sec-WebSocket-Version", "13")
		}
		http.Error(w, fmt.Sprintf("%d %s", status, http.StatusText(status)), status)
		return
	}

	// The handshake is cancelled when its client goes away; the WebSocket
	// outlives the handler (see below), so its context does not end with
	// the request's.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	stop := context.AfterFunc(r.Context(), cancel)
	connID, _ := r.Context().Value(connIDKey{}).(string)
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	meta := g.AppendMeta(nil, h, &Meta{RemoteAddr: r.RemoteAddr, Scheme: scheme, Host: r.Host,
		Protocol: r.Proto, ConnectionID: connID, Vars: mux.Vars(r)})
	if protocols != "" {
		meta = bridge.AppendHeader(meta, "websocket-protocols", safe(protocols))
	}
	req := bridge.Request{
		Method:       []byte(r.Method),
		Target:       []byte(StripTarget(h, r.RequestURI)),
		Headers:      AppendHeaderLines(nil, r.Host, r.Header),
		Meta:         meta,
		StreamWindow: h.Route.StreamWindowOrDefault(),
		WebSocket:    true,
		MaxMessage:   h.Route.WebSocketMaxMessageOrDefault(),
	}
	resp, err := g.Relay(ctx, h, &req)
	if err != nil {
		stop()
		cancel()
		if r.Context().Err() != nil {
			return
		}
		st := bridge.StatusOf(err)
		if errors.Is(err, bridge.ErrOverload) {
			w.Header().Set("Retry-After", "1")
		}
		http.Error(w, fmt.Sprintf("%d %s", st, http.StatusText(st)), st)
		return
	}
	hdr := w.Header()
	if resp.WebSocket == nil { // refused: the worker's answer is the client's
		stop()
		cancel()
		EachReplyHeader(&resp, func(n, v string) { hdr.Add(n, v) })
		if _, ok := hdr["Content-Type"]; !ok {
			hdr["Content-Type"] = nil
		}
		hdr.Set("Content-Length", strconv.Itoa(len(resp.Body)))
		w.WriteHeader(resp.Status)
		w.Write(resp.Body)
		return
	}
	ws := resp.WebSocket
	if _, err := bridge.CheckAccept(resp.Headers, protocols); err != nil {
		stop()
		ws.Close(bridge.CloseProtocolError, nil)
		cancel()
		g.logRelayError(ctx, h, err)
		http.Error(w, "502 Bad Gateway", http.StatusBadGateway)
		return
	}
	if !g.ws.add() {
		stop()
		ws.Close(bridge.CloseGoingAway, nil)
		cancel()
		http.Error(w, "503 Service Unavailable", http.StatusServiceUnavailable)
		return
	}
	EachReplyHeader(&resp, func(n, v string) { hdr.Add(n, v) })
	hdr.Set("Upgrade", "websocket")
	hdr.Set("Connection", "Upgrade")
	hdr.Set("Sec-WebSocket-Accept", wsproto.AcceptKey(key))
	w.WriteHeader(http.StatusSwitchingProtocols)
	nc, brw, err := http.NewResponseController(w).Hijack()
	stop()
	if err != nil {
		ws.Close(bridge.CloseAbnormal, nil)
		cancel()
		g.ws.remove()
		g.log.Error(fmt.Sprintf("%v: cannot take over the connection of a WebSocket: %v", bridge.CodeWebSocket, err), "route", h.Route.Pattern())
		return
	}
	c := &wsConn{g: g, h: h, nc: nc, ws: ws, cancel: cancel, down: down,
		events: make(chan clientEvent), ack: make(chan struct{}), done: make(chan struct{})}
	c.rd.Max = ws.MaxMessage()
	c.idle = h.Route.BridgeOptions().StreamIdleTimeout
	if c.idle <= 0 {
		c.idle = bridge.DefaultStreamIdleTimeout
	}
	c.feedBuffered(brw.Reader)
	// The handler returns: net/http lets go of its connection state and
	// buffers, and an idle WebSocket costs only what wsConn holds.
	go c.run()
}

// clientEvent is what the reading goroutine hands the owner: a message or
// control frame, or why reading ended.
type clientEvent struct {
	ev  wsproto.Event
	err error
}

// wsConn is one hijacked WebSocket connection.
type wsConn struct {
	g      *Gateway
	h      *Handle
	nc     net.Conn
	ws     *bridge.WebSocket
	cancel context.CancelFunc
	down   <-chan struct{}
	idle   time.Duration
	rd     wsproto.Reader // the reading goroutine's

	events  chan clientEvent // reader to owner
	ack     chan struct{}    // owner to reader: done with the event's data
	done    chan struct{}    // closed when the owner ends
	heard   atomic.Int64     // unix nanoseconds of the client's last bytes
	peek    [1]byte
	hdr     [16]byte // a frame header the owner writes
	wbuf    []byte
	pending *wsproto.Event // a client's message waiting for the worker's credit; the reader waits
}

// feedBuffered gives the Reader what net/http read past the handshake.
func (c *wsConn) feedBuffered(br *bufio.Reader) {
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		c.rd.Feed(b)
	}
}

// readBufs are the buffers the reading goroutines read into, only while
// bytes are there to read: an idle WebSocket holds none.
var readBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// read is the reading goroutine: it feeds what the client sends to the
// Reader and hands each event to the owner, waiting for the owner to be
// done with it before it reads on.
func (c *wsConn) read() {
	for {
		for {
			ev, ok, err := c.rd.Next()
			if err != nil {
				c.hand(clientEvent{err: err}, false)
				return
			}
			if !ok {
				break
			}
			if !c.hand(clientEvent{ev: ev}, true) || ev.Kind == wsproto.Close {
				return
			}
		}
		if err := c.waitReadable(); err != nil {
			c.hand(clientEvent{err: err}, false)
			return
		}
		bp := readBufs.Get().(*[]byte)
		n, err := c.nc.Read((*bp)[:min(int64(len(*bp)), c.rd.Space())])
		if n > 0 {
			c.heard.Store(time.Now().UnixNano())
			c.rd.Feed((*bp)[:n])
		}
		readBufs.Put(bp)
		if err != nil && n == 0 {
			c.hand(clientEvent{err: err}, false)
			return
		}
	}
}

// hand gives the owner an event; with wait, it returns once the owner is
// done with it. False when the owner has ended.
func (c *wsConn) hand(e clientEvent, wait bool) bool {
	select {
	case c.events <- e:
	case <-c.done:
		return false
	}
	if !wait {
		return true
	}
	select {
	case <-c.ack:
		return true
	case <-c.done:
		return false
	}
}

// waitReadable waits until the client's connection has bytes to read (or
// an end), without holding a buffer while it waits.
func (c *wsConn) waitReadable() error {
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), c.peek[:], syscall.MSG_PEEK)
		return err != syscall.EAGAIN
	})
}

// run is the owner: it relays the client's events to the worker and the
// worker's messages to the client, pings a silent client, and closes.
func (c *wsConn) run() {
	code := bridge.CloseAbnormal // for the worker, unless it knows already
	defer func() {
		c.ws.Close(code, nil)
		c.nc.Close()
		close(c.done)
		c.cancel()
		c.g.ws.remove()
	}()
	now := time.Now()
	c.heard.Store(now.UnixNano())
	go c.read()

	ready := c.ws.Ready()
	if ready == nil { // a connection that offers no wake-up: poll it
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		poll := make(chan struct{}, 1)
		stopPoll := make(chan struct{})
		defer close(stopPoll)
		go func() {
			for {
				select {
				case <-t.C:
					select {
					case poll <- struct{}{}:
					default:
					}
				case <-stopPoll:
					return
				}
			}
		}()
		ready = poll
	}
	timer := time.NewTimer(c.idle / 2)
	defer timer.Stop()
	var pinged int64 // when the last ping went out
	for {
		events := c.events
		if c.pending != nil {
			events = nil // the reader waits: the worker's credit is short
		}
		select {
		case e := <-events:
			if e.err != nil {
				code = c.clientFailed(e.err)
				return
			}
			switch e.ev.Kind {
			case wsproto.Ping:
				err := c.write(wsproto.AppendPong(c.hdr[:0], e.ev.Data))
				c.ack <- struct{}{}
				if err != nil {
					return
				}
			case wsproto.Pong:
				c.ack <- struct{}{}
			case wsproto.Close:
				// Tell the worker, answer the client with its code, and go.
				c.ws.Send(bridge.Message{Kind: bridge.Close, Code: e.ev.Code, Reason: e.ev.Reason})
				code = e.ev.Code
				c.write(wsproto.AppendClose(c.hdr[:0], e.ev.Code, nil))
				return
			default:
				c.pending = &e.ev
			}
		case <-ready:
			if done, wc := c.drain(); done {
				code = wc
				return
			}
		case <-timer.C:
			silent := time.Since(time.Unix(0, c.heard.Load()))
			switch {
			case c.pending != nil:
				c.heard.Store(time.Now().UnixNano()) // not the client's silence: the gateway does not read
			case silent >= c.idle:
				c.g.log.Debug(CodeWebSocketClient.String()+": a WebSocket client was silent for the idle timeout", "route", c.h.Route.Pattern(), "idle", c.idle.String())
				return
			case silent >= c.idle/2 && pinged < c.heard.Load():
				pinged = time.Now().UnixNano()
				if c.write(wsproto.AppendPing(c.hdr[:0], nil)) != nil {
					return
				}
			}
			timer.Reset(c.idle / 4)
		case <-c.down:
			c.write(wsproto.AppendClose(c.hdr[:0], bridge.CloseGoingAway, nil))
			c.awaitClose()
			code = bridge.CloseGoingAway
			return
		}
		if c.pending != nil {
			if done, wc := c.sendPending(); done {
				code = wc
				return
			}
		}
	}
}

// sendPending sends the client's pending message to the worker if its
// credit allows, and lets the reader go on.
func (c *wsConn) sendPending() (done bool, code int) {
	p := c.pending
	cost := int64(len(p.Data)) + bridge.PartCost
	if cost > c.ws.SendCredit() {
		// The worker's grants come by Recv: take what is there.
		if done, code := c.drain(); done || cost > c.ws.SendCredit() {
			return done, code
		}
	}
	kind := bridge.Text
	if p.Kind == wsproto.Binary {
		kind = bridge.Binary
	}
	if err := c.ws.Send(bridge.Message{Kind: kind, Data: p.Data}); err != nil {
		return true, c.workerFailed(err)
	}
	c.pending = nil
	c.ack <- struct{}{}
	return false, 0
}

// drain writes the worker's messages to the client until none is left;
// done when the WebSocket ended, with the code the worker is to get.
func (c *wsConn) drain() (done bool, code int) {
	for {
		m, ok, err := c.ws.Recv(0)
		if err != nil {
			return true, c.workerFailed(err)
		}
		if !ok {
			return false, 0
		}
		switch m.Kind {
		case bridge.Close:
			c.write(wsproto.AppendClose(c.hdr[:0], m.Code, m.Reason))
			c.awaitClose()
			return true, m.Code
		case bridge.Text, bridge.Binary:
			kind := wsproto.Binary
			if m.Kind == bridge.Text {
				kind = wsproto.Text
			}
			if err := c.writeMessage(kind, m.Data); err != nil {
				return true, bridge.CloseAbnormal
			}
		}
	}
}

// workerFailed closes the client with 1011 after the worker broke the
// WebSocket (lost, or a message against the protocol), and logs why.
func (c *wsConn) workerFailed(err error) int {
	c.g.log.Error(fmt.Sprintf("%v: WebSocket broke on the worker's side: %v", bridge.CodeWebSocket, err),
		"route", c.h.Route.Pattern(), "backend", strings.Join(c.h.Route.Backend, " "))
	c.write(wsproto.AppendClose(c.hdr[:0], bridge.CloseInternalError, nil))
	c.awaitClose()
	return bridge.CloseInternalError
}

// clientFailed ends a WebSocket whose client broke RFC 6455 (closed with
// the error's code, which the worker gets too) or vanished (1006).
func (c *wsConn) clientFailed(err error) int {
	var we *wsproto.Error
	if !errors.As(err, &we) {
		return bridge.CloseAbnormal
	}
	c.g.log.Debug(CodeWebSocketClient.String()+": a WebSocket client broke the protocol: "+we.Reason, "route", c.h.Route.Pattern(), "code", we.Code)
	c.write(wsproto.AppendClose(c.hdr[:0], we.Code, nil))
	return we.Code
}

// awaitClose waits up to closeWait for the client to answer a close the
// gateway sent, dropping what it sends meanwhile.
func (c *wsConn) awaitClose() {
	if c.pending != nil { // the reader waits for it
		c.pending = nil
		c.ack <- struct{}{}
	}
	t := time.NewTimer(closeWait)
	defer t.Stop()
	for {
		select {
		case e := <-c.events:
			if e.err != nil || e.ev.Kind == wsproto.Close {
				return
			}
			c.ack <- struct{}{}
		case <-t.C:
			return
		}
	}
}

// write writes b to the client within the idle timeout.
func (c *wsConn) write(b []byte) error {
	c.nc.SetWriteDeadline(time.Now().Add(c.idle))
	_, err := c.nc.Write(b)
	return err
}

// smallMessage is the largest message written with its header in one
// buffer; larger ones are written where they are, after their header.
const smallMessage = 4 << 10

// writeMessage writes one message to the client as one frame.
func (c *wsConn) writeMessage(kind wsproto.Kind, data []byte) error {
	if len(data) <= smallMessage {
		c.wbuf = wsproto.AppendFrame(c.wbuf[:0], kind, data)
		err := c.write(c.wbuf)
		if cap(c.wbuf) > 512 {
			c.wbuf = nil // an idle WebSocket holds no large buffer
		}
		return err
	}
	c.nc.SetWriteDeadline(time.Now().Add(c.idle))
	bufs := net.Buffers{wsproto.AppendHeader(c.hdr[:0], kind, len(data)), data}
	_, err := bufs.WriteTo(c.nc)
	return err
}
