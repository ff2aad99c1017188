package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
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
// accepts, the connection is hijacked and one goroutine carries it (run).
// It reads the client's frames (wsproto.Reader) when the client's
// connection has bytes, and relays the worker's messages when the worker's
// connection wakes it (bridge.WebSocket.Notify) by moving the client's read
// deadline. A worker short of credit stops the reading, and the client's
// TCP window fills.

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
	sd   *wsShutdown
	open int
	none chan struct{} // closed when open falls to 0, for WaitWebSockets
}

// wsShutdown is the shutdown a gateway shares with those that replace it
// on reloads: a channel closed when it comes, and the WebSockets to wake
// then.
type wsShutdown struct {
	mu    sync.Mutex
	down  chan struct{}
	conns map[*wsConn]struct{}
}

func (s *webSockets) shutdown() *wsShutdown {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sd == nil {
		s.sd = &wsShutdown{down: make(chan struct{}), conns: map[*wsConn]struct{}{}}
	}
	return s.sd
}

func (s *webSockets) downChan() chan struct{} { return s.shutdown().down }

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
	sd := old.shutdown()
	s.mu.Lock()
	s.sd = sd
	s.mu.Unlock()
}

// watch makes the shutdown wake c; a WebSocket looks at down itself too,
// for a shutdown that came before.
func (sd *wsShutdown) watch(c *wsConn) {
	sd.mu.Lock()
	sd.conns[c] = struct{}{}
	sd.mu.Unlock()
}

func (sd *wsShutdown) unwatch(c *wsConn) {
	sd.mu.Lock()
	delete(sd.conns, c)
	sd.mu.Unlock()
}

// ShutdownWebSockets closes every open WebSocket with 1001 (going away)
// and refuses new ones; Serve calls it when it shuts down.
func (g *Gateway) ShutdownWebSockets() {
	sd := g.ws.shutdown()
	sd.mu.Lock()
	defer sd.mu.Unlock()
	select {
	case <-sd.down:
		return
	default:
		close(sd.down)
	}
	for c := range sd.conns {
		c.poke()
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
	// the request's, nor does it keep the request's (and its values) alive.
	ctx, cancel := context.WithCancel(context.Background())
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
	resp, err := g.Relay(ctx, h, &req, accessID(w))
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
	c := &wsConn{g: g, h: h, nc: nc, ws: ws, cancel: cancel, down: down, sd: g.ws.shutdown(),
		wake: make(chan struct{}, 1)}
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			c.rc = rc
			c.readable = c.peekReadable
		}
	}
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

// pollEvery is how often a WebSocket whose worker connection offers no
// wake-up (bridge.WebSocket.Notify) looks for the worker's messages.
const pollEvery = 20 * time.Millisecond

// aLongTimeAgo is a read deadline that ends a wait at once.
var aLongTimeAgo = time.Unix(1, 0)

// wsConn is one hijacked WebSocket connection, carried by one goroutine
// (run).
type wsConn struct {
	g        *Gateway
	h        *Handle
	nc       net.Conn
	rc       syscall.RawConn       // nc's, to wait for bytes without a buffer; nil when nc has none
	readable func(fd uintptr) bool // peekReadable, made once
	ws       *bridge.WebSocket
	cancel   context.CancelFunc
	down     <-chan struct{}
	sd       *wsShutdown
	idle     time.Duration
	rd       wsproto.Reader

	// Wake-ups, from the worker's connection (a message may have come) or
	// the shutdown: poke sets woke and leaves a token in wake, and, while
	// run waits for the client, moves the read deadline to end the wait.
	woke     atomic.Bool
	sleeping atomic.Bool
	wake     chan struct{} // cap 1
	polled   bool          // no wake-ups from the worker's connection: look every pollEvery
	timer    *time.Timer   // for waits on wake alone; made when first needed

	heard   int64 // unix nanoseconds: the client's last bytes
	tick    int64 // the next idle check
	pinged  int64 // the last ping
	pollAt  int64 // polled: the next look
	pending bool  // ev, a client's message, waits for the worker's credit; the client is not read meanwhile
	ev      wsproto.Event
	peek    [1]byte
	hdr     [16]byte // a frame header the gateway writes
	wbuf    []byte
}

// feedBuffered gives the Reader what net/http read past the handshake.
func (c *wsConn) feedBuffered(br *bufio.Reader) {
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		c.rd.Feed(b)
	}
}

// readBufs are the buffers WebSockets read into, only while bytes are
// there to read: an idle WebSocket holds none.
var readBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// poke wakes run: the worker may have sent a message (bridge.WebSocket
// calls it from the goroutine that reads the worker's connection), or the
// gateway shuts down. It returns at once.
func (c *wsConn) poke() {
	c.woke.Store(true)
	select {
	case c.wake <- struct{}{}:
	default:
	}
	if c.sleeping.Load() {
		c.nc.SetReadDeadline(aLongTimeAgo)
	}
}

// run carries the WebSocket: it relays the client's messages to the worker
// and the worker's to the client, answers pings, pings a silent client,
// and closes. While idle it waits for the client's bytes without a buffer,
// and a poke or the next idle check ends the wait. It reads nothing from
// the client while a message of the client's waits for the worker's
// credit, so the client's TCP window fills.
func (c *wsConn) run() {
	code := bridge.CloseAbnormal // for the worker, unless it knows already
	c.sd.watch(c)
	c.woke.Store(true) // what the worker sent before Notify
	c.polled = !c.ws.Notify(c.poke)
	defer func() {
		c.ws.Close(code, nil)
		c.sd.unwatch(c)
		c.nc.Close()
		c.cancel()
		if c.timer != nil {
			c.timer.Stop()
		}
		c.g.ws.remove()
	}()
	now := time.Now().UnixNano()
	c.heard, c.tick = now, now+int64(c.idle/2)
	for {
		select {
		case <-c.down:
			c.write(wsproto.AppendClose(c.hdr[:0], bridge.CloseGoingAway, nil))
			c.awaitClose()
			code = bridge.CloseGoingAway
			return
		default:
		}
		now := time.Now().UnixNano()
		if c.woke.Swap(false) || (c.polled && now >= c.pollAt) {
			c.pollAt = now + int64(pollEvery)
			if done, wc := c.drain(); done {
				code = wc
				return
			}
		}
		if c.pending {
			if done, wc := c.sendPending(); done {
				code = wc
				return
			}
		}
		if now >= c.tick && !c.idleCheck(now) {
			return
		}
		if c.pending { // the worker's credit is short: wait for it
			c.waitWake(c.wakeBy())
			continue
		}
		ev, ok, err := c.rd.Next()
		if err != nil {
			code = c.clientFailed(err)
			return
		}
		if ok {
			if done, wc := c.clientEvent(ev); done {
				code = wc
				return
			}
			continue
		}
		if err := c.fill(c.wakeBy(), true); err != nil {
			code = c.clientFailed(err)
			return
		}
	}
}

// wakeBy is when run must look again by itself: the next idle check, or
// the next look at a worker connection that offers no wake-up.
func (c *wsConn) wakeBy() int64 {
	if c.polled {
		return min(c.tick, c.pollAt)
	}
	return c.tick
}

// idleCheck pings a client silent for half the idle timeout; false when it
// has been silent for the whole of it.
func (c *wsConn) idleCheck(now int64) bool {
	silent := time.Duration(now - c.heard)
	switch {
	case c.pending:
		c.heard = now // not the client's silence: the gateway does not read
	case silent >= c.idle:
		c.g.log.Debug(CodeWebSocketClient.String()+": a WebSocket client was silent for the idle timeout", "route", c.h.Route.Pattern(), "idle", c.idle.String())
		return false
	case silent >= c.idle/2 && c.pinged < c.heard:
		c.pinged = now
		if c.write(wsproto.AppendPing(c.hdr[:0], nil)) != nil {
			return false
		}
	}
	c.tick = now + int64(c.idle/4)
	return true
}

// clientEvent handles a message or control frame from the client; done
// when the WebSocket ended, with the code the worker is to get.
func (c *wsConn) clientEvent(ev wsproto.Event) (done bool, code int) {
	switch ev.Kind {
	case wsproto.Ping:
		if c.write(wsproto.AppendPong(c.hdr[:0], ev.Data)) != nil {
			return true, bridge.CloseAbnormal
		}
	case wsproto.Pong:
	case wsproto.Close:
		// Tell the worker, answer the client with its code, and go.
		c.ws.Send(bridge.Message{Kind: bridge.Close, Code: ev.Code, Reason: ev.Reason})
		c.write(wsproto.AppendClose(c.hdr[:0], ev.Code, nil))
		return true, ev.Code
	default:
		c.ev, c.pending = ev, true // its data stay valid until the Reader's next Next
	}
	return false, 0
}

// waitWake waits for a poke, or until the unix nanoseconds until.
func (c *wsConn) waitWake(until int64) {
	if c.woke.Load() {
		return
	}
	d := time.Duration(until - time.Now().UnixNano())
	if d <= 0 {
		return
	}
	if c.timer == nil {
		c.timer = time.NewTimer(d)
	} else {
		c.timer.Reset(d)
	}
	select {
	case <-c.wake:
	case <-c.timer.C:
	}
	c.timer.Stop()
}

// fill feeds the Reader what the client sent, waiting for it up to the
// unix nanoseconds deadline, and with wakeable until a poke too. Without
// an error it may have fed nothing; an error is the connection's end.
func (c *wsConn) fill(deadline int64, wakeable bool) error {
	c.nc.SetReadDeadline(time.Unix(0, deadline))
	if wakeable {
		c.sleeping.Store(true)
		defer c.sleeping.Store(false)
		if c.woke.Load() {
			return nil
		}
	}
	if c.rc != nil {
		// Wait without a buffer; then the read below does not wait.
		if err := c.rc.Read(c.readable); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil
			}
			return err
		}
	}
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	n, err := c.nc.Read((*bp)[:min(int64(len(*bp)), c.rd.Space())])
	if n > 0 {
		c.heard = time.Now().UnixNano()
		c.rd.Feed((*bp)[:n])
		return nil
	}
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	return nil
}

// peekReadable is rc.Read's function: done once the client's connection
// has a byte to read, or an end or error to report.
func (c *wsConn) peekReadable(fd uintptr) bool {
	_, _, err := syscall.Recvfrom(int(fd), c.peek[:], syscall.MSG_PEEK)
	return err != syscall.EAGAIN
}

// sendPending sends the client's pending message to the worker if its
// credit allows, and lets the client's bytes be read on.
func (c *wsConn) sendPending() (done bool, code int) {
	cost := int64(len(c.ev.Data)) + bridge.PartCost
	if cost > c.ws.SendCredit() {
		// The worker's grants come by Recv: take what is there.
		if done, code := c.drain(); done || cost > c.ws.SendCredit() {
			return done, code
		}
	}
	kind := bridge.Text
	if c.ev.Kind == wsproto.Binary {
		kind = bridge.Binary
	}
	if err := c.ws.Send(bridge.Message{Kind: kind, Data: c.ev.Data}); err != nil {
		return true, c.workerFailed(err)
	}
	c.pending, c.ev = false, wsproto.Event{}
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
	c.pending, c.ev = false, wsproto.Event{}
	end := time.Now().Add(closeWait).UnixNano()
	for {
		ev, ok, err := c.rd.Next()
		switch {
		case err != nil:
			return
		case ok && ev.Kind == wsproto.Close:
			return
		case ok:
			continue
		case time.Now().UnixNano() >= end:
			return
		}
		if c.fill(end, false) != nil {
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
