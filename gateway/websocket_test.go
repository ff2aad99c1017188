package gateway

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gobwas "github.com/gobwas/ws"
	"github.com/gorilla/websocket"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/internal/zmqtest"
)

// WebSockets through the gateway's HTTP mode, with gorilla/websocket as
// the client and raw sockets where a test must send frames no client
// library would.

// echoWS is a ROUTER WebSocket worker: it accepts handshakes (choosing
// subprotocol "chat" when offered), refuses those to a target starting
// with /no with 403, echoes messages with their kind and grants their
// credit back, closes with 4000 on the text "close", sends garbage on
// "garbage", and reports every handshake's meta ("meta ...") and every
// close it learns of ("closed <id> <code>") on got.
func echoWS(t *testing.T, got chan<- string) string {
	return zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := splitWorkerMsg(msg)
		body := string(msg[len(msg)-1])
		switch {
		case strings.Contains(m.meta, "websocket: 1\r\n") && strings.HasPrefix(m.target, "/no"):
			reply(zmqtest.Part(m.envelope, "403", "X-Why: test\r\n", "go away"))
		case strings.Contains(m.meta, "websocket: 1\r\n"):
			got <- "meta " + m.meta
			h := "X-Hello: 1\r\n"
			if strings.Contains(m.meta, "websocket-protocols: ") {
				h += "Sec-WebSocket-Protocol: chat\r\n"
			}
			if strings.HasPrefix(m.target, "/badproto") {
				h = "Sec-WebSocket-Protocol: nope\r\n"
			}
			reply(zmqtest.Part(m.envelope, "@accept", h))
		case m.method == "@text" && body == "close":
			reply(zmqtest.Part(m.envelope, "@ws-close", "4000", "asked"))
		case m.method == "@text" && body == "garbage":
			reply(zmqtest.Part(m.envelope, "@nonsense", "x"))
		case m.method == "@text" || m.method == "@binary":
			reply(zmqtest.Part(m.envelope, m.method, body))
			reply(zmqtest.Part(m.envelope, "@credit", fmt.Sprint(len(body)+bridge.PartCost)))
		case m.method == "@ws-close":
			got <- fmt.Sprintf("closed %s %s", m.id(), m.target)
		case !strings.HasPrefix(m.method, "@"):
			got <- "plain " + m.method + " " + m.meta
			reply(zmqtest.Part(m.envelope, "200", "", "plain"))
		}
	})
}

type wsGateway struct {
	g      *Gateway
	url    string // ws://host:port
	addr   string
	access *syncBuffer
	errs   *syncBuffer
}

func startWSGateway(t *testing.T, routes ...Route) *wsGateway {
	t.Helper()
	cfg := &Config{Routes: routes}
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	gw := &wsGateway{access: &syncBuffer{}, errs: &syncBuffer{}}
	g, err := New(cfg, slog.New(slog.NewTextHandler(gw.errs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(AccessLog(g, gw.access))
	srv.Config.ConnContext = ConnContext
	checkHandlerPanics(t, srv)
	srv.Start()
	t.Cleanup(func() {
		g.ShutdownWebSockets()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := g.WaitWebSockets(ctx); err != nil {
			t.Errorf("WebSockets still open after shutdown: %v", err)
		}
		srv.Close()
		g.Close()
	})
	gw.g, gw.addr = g, srv.Listener.Addr().String()
	gw.url = "ws://" + gw.addr
	return gw
}

func dialWS(t *testing.T, url string, h http.Header) (*websocket.Conn, *http.Response) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, Subprotocols: nil}
	if p := h.Get("Sec-WebSocket-Protocol"); p != "" {
		d.Subprotocols = strings.Split(p, ", ")
		h.Del("Sec-WebSocket-Protocol")
	}
	c, resp, err := d.Dial(url, h)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, status)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	return c, resp
}

// closeCode reads until the connection's close and returns its code.
func closeCode(t *testing.T, c *websocket.Conn) int {
	t.Helper()
	for {
		_, _, err := c.ReadMessage()
		if err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				return ce.Code
			}
			t.Fatalf("no close, the connection ended with %v", err)
		}
	}
}

// The worker's accept (headers, subprotocol), messages of every kind and
// size both ways, pings answered, the worker's close reaching the client
// and the client's reaching the worker, and 101 in the access log.
func TestWebSocketThroughTheGateway(t *testing.T) {
	got := make(chan string, 16)
	gw := startWSGateway(t, Route{Prefix: "/", Backend: []string{echoWS(t, got)}, WebSocket: true})

	c, resp := dialWS(t, gw.url+"/ok?x=1", http.Header{"Sec-WebSocket-Protocol": {"chat, other"}})
	if c.Subprotocol() != "chat" || resp.Header.Get("X-Hello") != "1" {
		t.Errorf("the accept: subprotocol %q, headers %v", c.Subprotocol(), resp.Header)
	}
	meta := zmqtest.WaitFor(t, got, "the handshake")
	for _, want := range []string{"websocket: 1\r\n", "websocket-protocols: chat, other\r\n", "websocket-max-message: 16777216\r\n", "connection-id: "} {
		if !strings.Contains(meta, want) {
			t.Errorf("the handshake's meta lacks %q:\n%s", want, meta)
		}
	}
	pongs := make(chan string, 1)
	c.SetPongHandler(func(s string) error { pongs <- s; return nil })
	if err := c.WriteControl(websocket.PingMessage, []byte("are you there"), time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
	for i, m := range []struct {
		kind int
		data []byte
	}{{websocket.TextMessage, []byte("héllo")}, {websocket.BinaryMessage, []byte{0, 1, 2, 255}},
		{websocket.TextMessage, nil}, {websocket.BinaryMessage, nil}, {websocket.BinaryMessage, big}, {websocket.TextMessage, big}} {
		if err := c.WriteMessage(m.kind, m.data); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		kind, data, err := c.ReadMessage()
		if err != nil || kind != m.kind || !bytes.Equal(data, m.data) {
			t.Fatalf("message %d came back as kind %d, %d bytes, %v\n%s", i, kind, len(data), err, gw.errs)
		}
	}
	if p := zmqtest.WaitFor(t, pongs, "the pong"); p != "are you there" {
		t.Errorf("the pong carried %q", p)
	}
	c.WriteMessage(websocket.TextMessage, []byte("close"))
	if code := closeCode(t, c); code != 4000 {
		t.Errorf("the worker's close reached the client as %d, want 4000", code)
	}

	// The client's close reaches the worker with its code.
	c, _ = dialWS(t, gw.url+"/ok", http.Header{})
	zmqtest.WaitFor(t, got, "the handshake")
	c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye"))
	if s := zmqtest.WaitFor(t, got, "the close"); !strings.HasPrefix(s, "closed ") || !strings.HasSuffix(s, " 1000") {
		t.Errorf("the worker heard %q, want the client's 1000", s)
	}
	if code := closeCode(t, c); code != 1000 {
		t.Errorf("the gateway answered the client's close with %d", code)
	}
	checkFor(t, func() bool { return strings.Count(gw.access.String(), ` HTTP/1.1" 101 `) == 2 }, "two 101 lines in the access log:\n%s", gw.access)
	checkFor(t, func() bool { return gw.g.routes[0].Client.StreamStats().Open.Load() == 0 }, "no WebSocket open")
}

// checkFor polls cond until it holds, or fails the test after 10 seconds.
func checkFor(t *testing.T, cond func() bool, format string, args ...any) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for "+format, args...)
		}
	}
}

// Handshakes the gateway or the worker refuses: a refusal relayed as the
// worker sent it, an Origin not listed (403, the worker never asked), a
// subprotocol the client did not offer (502), a bad version (426), over
// max_streams (503 with Retry-After), and a plain GET on a route without
// websocket: true.
func TestWebSocketHandshakesRefused(t *testing.T) {
	got := make(chan string, 16)
	worker := echoWS(t, got)
	gw := startWSGateway(t,
		Route{Prefix: "/plain", Backend: []string{worker}},
		Route{Prefix: "/strict", Backend: []string{worker}, WebSocket: true, WebSocketOrigins: []string{"https://good.example"}},
		Route{Prefix: "/", Backend: []string{worker}, WebSocket: true, MaxStreams: 1})
	dial := func(path string, h http.Header) (*websocket.Conn, *http.Response, error) {
		d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
		if p := h.Get("Sec-WebSocket-Protocol"); p != "" {
			d.Subprotocols = []string{p}
			h.Del("Sec-WebSocket-Protocol")
		}
		return d.Dial(gw.url+path, h)
	}
	body := func(resp *http.Response) string {
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		return b.String()
	}

	_, resp, err := dial("/no", http.Header{})
	if err == nil || resp == nil || resp.StatusCode != 403 || resp.Header.Get("X-Why") != "test" || body(resp) != "go away" {
		t.Errorf("a refused handshake: %v %+v", err, resp)
	}
	_, resp, err = dial("/strict/x", http.Header{"Origin": {"https://evil.example"}})
	if err == nil || resp == nil || resp.StatusCode != 403 || resp.Header.Get("X-Why") != "" {
		t.Errorf("an Origin not listed: %v %+v", err, resp)
	}
	if c, _, err := dial("/strict/x", http.Header{"Origin": {"https://good.example"}}); err != nil {
		t.Errorf("a listed Origin: %v", err)
	} else {
		zmqtest.WaitFor(t, got, "the handshake")
		c.Close()
		zmqtest.WaitFor(t, got, "the close")
	}
	_, resp, err = dial("/badproto", http.Header{"Sec-WebSocket-Protocol": {"chat"}})
	if err == nil || resp == nil || resp.StatusCode != 502 {
		t.Errorf("an accept choosing a subprotocol not offered: %v %+v", err, resp)
	}
	zmqtest.WaitFor(t, got, "the handshake")
	if s := zmqtest.WaitFor(t, got, "the close"); !strings.HasSuffix(s, " 1002") {
		t.Errorf("after its bad accept the worker heard %q, want 1002", s)
	}

	// A bad version: 426 with the version the gateway speaks.
	req, _ := http.NewRequest("GET", "http://"+gw.addr+"/ok", nil)
	req.Header = http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}, "Sec-Websocket-Version": {"8"}, "Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}}
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 426 || resp.Header.Get("Sec-WebSocket-Version") != "13" {
		t.Errorf("version 8: %v %+v", err, resp)
	} else {
		resp.Body.Close()
	}

	// max_streams 1: a second WebSocket gets 503 while the first is open.
	c, _ := dialWS(t, gw.url+"/ok", http.Header{})
	zmqtest.WaitFor(t, got, "the handshake")
	_, resp, err = dial("/ok", http.Header{})
	if err == nil || resp == nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("over max_streams: %v %+v", err, resp)
	}
	c.Close()
	zmqtest.WaitFor(t, got, "the close")
	checkFor(t, func() bool {
		c, _, err := dial("/ok", http.Header{})
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "a WebSocket after the first closed")

	// A route without websocket: true relays the handshake as a plain GET.
	_, resp, err = dial("/plain", http.Header{})
	if err == nil || resp == nil || resp.StatusCode != 200 || body(resp) != "plain" {
		t.Errorf("a handshake on a plain route: %v %+v", err, resp)
	}
	for s := zmqtest.WaitFor(t, got, "the plain GET"); !strings.HasPrefix(s, "plain "); s = zmqtest.WaitFor(t, got, "the plain GET") {
	}
}

// rawWS is a client on a raw socket, for frames no library sends.
type rawWS struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr, path string) *rawWS {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(nc, "GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", path)
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("raw handshake: %v %+v", err, resp)
	}
	return &rawWS{t: t, nc: nc, br: br}
}

// send writes a frame: masked unless unmasked.
func (r *rawWS) send(op gobwas.OpCode, fin bool, payload []byte, unmasked bool) {
	h := gobwas.Header{Fin: fin, OpCode: op, Masked: !unmasked, Length: int64(len(payload))}
	p := append([]byte(nil), payload...)
	if h.Masked {
		h.Mask = [4]byte{1, 2, 3, 4}
		gobwas.Cipher(p, h.Mask, 0)
	}
	var b bytes.Buffer
	gobwas.WriteHeader(&b, h)
	b.Write(p)
	if _, err := r.nc.Write(b.Bytes()); err != nil {
		r.t.Fatalf("raw send: %v", err)
	}
}

// next reads the next frame from the gateway.
func (r *rawWS) next() gobwas.Frame {
	r.t.Helper()
	f, err := gobwas.ReadFrame(r.br)
	if err != nil {
		r.t.Fatalf("raw read: %v", err)
	}
	if f.Header.Masked {
		r.t.Fatalf("the gateway sent a masked frame")
	}
	return f
}

// closed reads frames until a close and returns its code, then checks the
// gateway closed the connection.
func (r *rawWS) closed() int {
	r.t.Helper()
	for {
		f := r.next()
		if f.Header.OpCode == gobwas.OpClose {
			code, _ := gobwas.ParseCloseFrameData(f.Payload)
			if _, err := r.br.ReadByte(); err == nil {
				r.t.Errorf("bytes after the close")
			}
			return int(code)
		}
	}
}

// Fragmented messages with pings between the fragments, and each breach
// of RFC 6455: the client gets the close code and so does the worker.
func TestWebSocketClientFramesThroughTheGateway(t *testing.T) {
	got := make(chan string, 16)
	gw := startWSGateway(t, Route{Prefix: "/", Backend: []string{echoWS(t, got)}, WebSocket: true, WebSocketMaxMessage: 1000})

	r := dialRaw(t, gw.addr, "/ok")
	zmqtest.WaitFor(t, got, "the handshake")
	r.send(gobwas.OpText, false, []byte("h\xc3"), false)
	r.send(gobwas.OpPing, true, []byte("p1"), false)
	r.send(gobwas.OpContinuation, false, []byte("\xa9l"), false)
	r.send(gobwas.OpPing, true, []byte("p2"), false)
	r.send(gobwas.OpContinuation, true, []byte("lo"), false)
	for _, want := range []string{"pong p1", "pong p2", "text héllo"} {
		f := r.next()
		var got string
		switch f.Header.OpCode {
		case gobwas.OpPong:
			got = "pong " + string(f.Payload)
		case gobwas.OpText:
			got = "text " + string(f.Payload)
		}
		if got != want {
			t.Errorf("got %q (opcode %d), want %q", got, f.Header.OpCode, want)
		}
	}
	r.send(gobwas.OpBinary, true, make([]byte, 1000), false) // at the limit
	if f := r.next(); f.Header.OpCode != gobwas.OpBinary || len(f.Payload) != 1000 {
		t.Errorf("a message at the limit came back as %d, %d bytes", f.Header.OpCode, len(f.Payload))
	}

	for _, tt := range []struct {
		name string
		send func(r *rawWS)
		code int
	}{
		{"unmasked", func(r *rawWS) { r.send(gobwas.OpText, true, []byte("x"), true) }, 1002},
		{"continuation without start", func(r *rawWS) { r.send(gobwas.OpContinuation, true, []byte("x"), false) }, 1002},
		{"invalid UTF-8", func(r *rawWS) { r.send(gobwas.OpText, true, []byte("a\xffb"), false) }, 1007},
		{"over websocket_max_message", func(r *rawWS) {
			r.send(gobwas.OpBinary, false, make([]byte, 600), false)
			r.send(gobwas.OpContinuation, true, make([]byte, 401), false)
		}, 1009},
	} {
		r := dialRaw(t, gw.addr, "/ok")
		zmqtest.WaitFor(t, got, "the handshake")
		tt.send(r)
		if code := r.closed(); code != tt.code {
			t.Errorf("%s: the client got close %d, want %d", tt.name, code, tt.code)
		}
		if s := zmqtest.WaitFor(t, got, "the close"); !strings.HasSuffix(s, fmt.Sprintf(" %d", tt.code)) {
			t.Errorf("%s: the worker heard %q, want %d", tt.name, s, tt.code)
		}
	}

	// A client that vanishes: the worker hears 1006.
	r = dialRaw(t, gw.addr, "/ok")
	zmqtest.WaitFor(t, got, "the handshake")
	r.send(gobwas.OpText, false, []byte("half a mess"), false)
	r.nc.Close()
	if s := zmqtest.WaitFor(t, got, "the close"); !strings.HasSuffix(s, " 1006") {
		t.Errorf("a client that vanished: the worker heard %q, want 1006", s)
	}
	if !strings.Contains(gw.errs.String(), "MODZMQ0208") {
		t.Errorf("no MODZMQ0208 line for the clients' protocol errors:\n%s", gw.errs)
	}
}

// A worker that breaks the protocol, a worker that goes away, a client
// that stays silent, and the gateway shutting down, each with its close.
func TestWebSocketEndsThroughTheGateway(t *testing.T) {
	got := make(chan string, 16)
	gw := startWSGateway(t, Route{Prefix: "/", Backend: []string{echoWS(t, got)}, WebSocket: true,
		StreamIdleTimeout: Duration(400 * time.Millisecond)})

	c, _ := dialWS(t, gw.url+"/ok", http.Header{})
	zmqtest.WaitFor(t, got, "the handshake")
	c.WriteMessage(websocket.TextMessage, []byte("garbage"))
	if code := closeCode(t, c); code != 1011 {
		t.Errorf("after the worker's garbage the client got %d, want 1011", code)
	}
	if s := zmqtest.WaitFor(t, got, "the close"); !strings.HasSuffix(s, " 1011") {
		t.Errorf("after its garbage the worker heard %q, want 1011", s)
	}
	if !strings.Contains(gw.errs.String(), "MODZMQ0132") {
		t.Errorf("no MODZMQ0132 line for the worker's garbage:\n%s", gw.errs)
	}

	// A silent client (it answers no ping) is pinged, then closed; the
	// worker hears 1006. gorilla answers pings only while it reads.
	r := dialRaw(t, gw.addr, "/ok")
	zmqtest.WaitFor(t, got, "the handshake")
	if f := r.next(); f.Header.OpCode != gobwas.OpPing {
		t.Errorf("a silent client got opcode %d, want a ping", f.Header.OpCode)
	}
	if s := zmqtest.WaitFor(t, got, "the close"); !strings.HasSuffix(s, " 1006") {
		t.Errorf("a silent client: the worker heard %q, want 1006", s)
	}
	// One that answers the pings stays.
	c, _ = dialWS(t, gw.url+"/ok", http.Header{})
	zmqtest.WaitFor(t, got, "the handshake")
	var pings atomic.Int32
	c.SetPingHandler(func(s string) error {
		pings.Add(1)
		return c.WriteControl(websocket.PongMessage, []byte(s), time.Now().Add(time.Second))
	})
	reads := make(chan error, 1)
	go func() {
		_, _, err := c.ReadMessage()
		reads <- err
	}()
	checkFor(t, func() bool { return pings.Load() >= 3 }, "three pings")
	select {
	case s := <-got:
		t.Errorf("a client that answers pings was closed: %s", s)
	default:
	}

	// Shutdown: the client gets 1001 and so does the worker.
	gw.g.ShutdownWebSockets()
	err := <-reads
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != 1001 {
		t.Errorf("at shutdown the client got %v, want 1001", err)
	}
	if s := zmqtest.WaitFor(t, got, "the close"); !strings.HasSuffix(s, " 1001") {
		t.Errorf("at shutdown the worker heard %q, want 1001", s)
	}
}

// A worker short of credit holds the client back: the gateway stops
// reading, and the worker gets no message past its credit; once it grants
// more, the rest come.
func TestWebSocketWorkerCreditHoldsTheClientBack(t *testing.T) {
	var env [][]byte // the worker goroutine's
	var count atomic.Int32
	var grant atomic.Bool
	worker := zmqtest.ROUTERIdle(t, func(msg [][]byte, reply func([][]byte)) {
		m := splitWorkerMsg(msg)
		switch {
		case strings.Contains(m.meta, "websocket: 1\r\n"):
			env = m.envelope
			reply(zmqtest.Part(m.envelope, "@accept", ""))
		case m.method == "@binary":
			count.Add(1)
		}
	}, func(reply func([][]byte)) {
		if env != nil && grant.CompareAndSwap(true, false) {
			reply(zmqtest.Part(env, "@credit", "1000000"))
		}
	})
	gw := startWSGateway(t, Route{Prefix: "/", Backend: []string{worker}, WebSocket: true, WebSocketMaxMessage: 1000, StreamWindow: 4096})
	c, _ := dialWS(t, gw.url+"/ok", http.Header{})
	sent := make(chan int, 1)
	go func() {
		n := 0
		c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		for ; n < 100; n++ {
			if c.WriteMessage(websocket.BinaryMessage, make([]byte, 1000)) != nil {
				break
			}
		}
		sent <- n
	}()
	// The credit is the window, 4096 bytes, and room for a message of the
	// largest size, 1064; each message costs 1064: four fit.
	checkFor(t, func() bool { return count.Load() == 4 }, "four messages at the worker")
	time.Sleep(200 * time.Millisecond)
	if n := count.Load(); n != 4 {
		t.Fatalf("the worker got %d messages within a credit for 4", n)
	}
	grant.Store(true)
	checkFor(t, func() bool { return count.Load() == 100 }, "every message at the worker after its grant (%d)", &count)
	if n := zmqtest.WaitFor(t, sent, "the client's writes"); n != 100 {
		t.Errorf("the client wrote %d messages", n)
	}
}

func TestWebSocketRouteKeys(t *testing.T) {
	c, err := ParseConfig([]byte("routes:\n  - prefix: /ws\n    backend: [tcp://h:1]\n    websocket: true\n    websocket_max_message: 1000\n    websocket_origins: [https://example.com, http://localhost:8080]\n  - prefix: /\n    backend: [tcp://h:1]\n    websocket: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Routes[0]; !r.WebSocket || r.WebSocketMaxMessageOrDefault() != 1000 || len(r.WebSocketOrigins) != 2 {
		t.Errorf("route 0: %+v", r)
	}
	if m := c.Routes[1].WebSocketMaxMessageOrDefault(); m != 16<<20 {
		t.Errorf("the default websocket_max_message: %d", m)
	}
	for _, tt := range []struct{ text, want string }{
		{"    websocket: true\n    websocket_max_message: -1\n", "2: route /a: websocket_max_message must be from 1 to"},
		{"    websocket: true\n    websocket_max_message: 2000000000\n", "websocket_max_message must be from 1 to"},
		{"    websocket_max_message: 1000\n", "need websocket: true"},
		{"    websocket_origins: [https://a.example]\n", "need websocket: true"},
		{"    websocket: true\n    websocket_origins: [example.com]\n", `"example.com" is not an origin`},
		{"    websocket: true\n    websocket_origins: [https://a.example/path]\n", "is not an origin"},
		{"    websocket: true\n    max_reply: 1000\n", "must not exceed max_reply"},
	} {
		_, err := ParseConfig([]byte("routes:\n  - prefix: /a\n    backend: [tcp://h:1]\n" + tt.text))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: got %v, want %q", tt.text, err, tt.want)
		}
	}
}

// An open idle WebSocket costs the gateway little memory: the handler has
// returned (net/http's buffers are gone), the reader holds no buffer while
// it waits, and the Reader keeps none once a message is taken. Measured as
// Go heap and stacks in use per connection over 1000 idle WebSockets; the
// clients here are bare sockets, whose own cost is counted too.
func TestWebSocketIdleMemory(t *testing.T) {
	got := make(chan string, 2100)
	gw := startWSGateway(t, Route{Prefix: "/", Backend: []string{echoWS(t, got)}, WebSocket: true})
	r := dialRaw(t, gw.addr, "/ok") // warm up: sessions, pools
	r.send(gobwas.OpText, true, []byte("hi"), false)
	r.next()
	<-got
	inUse := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse + m.StackInuse
	}
	const n = 1000
	before := inUse()
	conns := make([]net.Conn, 0, n)
	for i := 0; i < n; i++ {
		nc, err := net.Dial("tcp", gw.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintf(nc, "GET /ok HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
		var b [512]byte
		if k, err := nc.Read(b[:]); err != nil || !bytes.HasPrefix(b[:k], []byte("HTTP/1.1 101 ")) {
			t.Fatalf("handshake %d: %q %v", i, b[:k], err)
		}
		conns = append(conns, nc)
		<-got
	}
	checkFor(t, func() bool { return gw.g.routes[0].Client.StreamStats().Open.Load() == n+1 }, "%d open", n+1)
	per := (int64(inUse()) - int64(before)) / n
	t.Logf("%d bytes of Go heap and stacks per open idle WebSocket (%d goroutines)", per, runtime.NumGoroutine())
	if per > 24<<10 {
		t.Errorf("an idle WebSocket costs %d bytes, want at most 24 KiB", per)
	}
	runtime.KeepAlive(conns)
}
