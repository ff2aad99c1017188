package stream

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/gateway"
	"github.com/modzmq/modzmq/internal/zmqtest"
)

// WebSockets in stream mode (docs/PROTOCOL.md, "WebSockets"), with
// gorilla/websocket as the client where a well-behaved client will do and
// raw connections where the test must write every byte (fragments, pings
// between them, protocol errors), against libzmq ROUTER workers.

// wsEcho is a worker's handling of WebSocket traffic, for a ROUTER loop:
// it accepts a handshake to /ok (choosing subprotocol "chat" when it is
// offered), refuses any other with 403, echoes each message with its kind
// within the credit the front grants (a message waits for it) and grants
// its own credit back, closes with 4000 on the text "close", sends a
// message breaking the rules on the text "garbage", and reports every
// handshake's meta ("meta ...") and close notice ("closed CODE REASON") on
// got.
func wsEcho(got chan<- string) func(msg [][]byte, reply func([][]byte)) {
	type state struct {
		credit int64
		queue  [][][]byte
	}
	open := map[string]*state{}
	send := func(st *state, reply func([][]byte)) {
		for len(st.queue) > 0 {
			m := st.queue[0]
			cost := int64(len(m[len(m)-1])) + bridge.PartCost
			if string(m[3]) == "@ws-close" {
				cost = 0
			}
			if cost > st.credit {
				return
			}
			st.credit -= cost
			reply(m)
			st.queue = st.queue[1:]
		}
	}
	return func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		env, method, target, meta, body := m.envelope(), m.method(), m.target(), m.meta(), m[8]
		st := open[m.id()]
		switch {
		case strings.Contains(meta, "websocket: 1\r\n") && strings.HasPrefix(target, "/ok"):
			got <- "meta " + meta
			h := "X-Hello: 1\r\n"
			if strings.Contains(meta, "websocket-protocols: ") {
				h += "Sec-WebSocket-Protocol: chat\r\n"
			}
			st = &state{}
			fmt.Sscan(meta[strings.Index(meta, "stream-credits: ")+len("stream-credits: "):], &st.credit)
			open[m.id()] = st
			reply(zmqtest.Part(env, "@accept", h))
		case strings.Contains(meta, "websocket: 1\r\n"):
			got <- "meta " + meta
			reply(zmqtest.Part(env, "403", "Content-Type: text/plain\r\n", "go away"))
		case st == nil:
		case method == "@credit":
			var n int64
			fmt.Sscan(target, &n)
			st.credit += n
			send(st, reply)
		case method == "@text" && string(body) == "close":
			st.queue = append(st.queue, zmqtest.Part(env, "@ws-close", "4000", "asked"))
			send(st, reply)
		case method == "@text" && string(body) == "garbage":
			reply(zmqtest.Part(env, "@nonsense", "x"))
		case method == "@text" || method == "@binary":
			st.queue = append(st.queue, zmqtest.Part(env, method, string(body)))
			send(st, reply)
			reply(zmqtest.Part(env, "@credit", fmt.Sprint(len(body)+bridge.PartCost)))
		case method == "@ws-close":
			delete(open, m.id())
			got <- fmt.Sprintf("closed %s %s", target, body)
		}
	}
}

// waitLine waits for a line on got that starts with prefix, skipping others.
func waitLine(t *testing.T, got <-chan string, prefix string) string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case s := <-got:
			if strings.HasPrefix(s, prefix) {
				return s
			}
		case <-deadline:
			t.Fatalf("the worker reported no %q", prefix)
			return ""
		}
	}
}

// wsRoute is a WebSocket route to ep.
func wsRoute(ep string) gateway.Route {
	return gateway.Route{Prefix: "/", Backend: []string{ep}, WebSocket: true}
}

func wsDial(t *testing.T, addr, path string, hdr http.Header) (*websocket.Conn, *http.Response) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	c, resp, err := d.Dial("ws://"+addr+path, hdr)
	if err != nil {
		t.Fatalf("handshake: %v (%v)", err, resp)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	return c, resp
}

// closeCode is the code of the close a client read, -1 for another error.
func closeCode(err error) int {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}

// Messages both ways through a gorilla/websocket client: text, binary,
// empty and large ones, the subprotocol and the worker's header lines in
// the 101, the handshake's meta, and the client's close passed on.
func TestWebSocketMessagesBothWays(t *testing.T) {
	got := make(chan string, 16)
	ep := zmqtest.ROUTER(t, wsEcho(got))
	route := wsRoute(ep)
	route.WebSocketMaxMessage = 4 << 20
	srv, addr, logs := startServerLog(t, Options{}, route)
	c, resp := wsDial(t, addr, "/ok/chat?x=1", http.Header{"Sec-WebSocket-Protocol": {"other, chat"}})
	if c.Subprotocol() != "chat" || resp.Header.Get("X-Hello") != "1" {
		t.Errorf("the 101: subprotocol %q, header %v", c.Subprotocol(), resp.Header)
	}
	meta := waitLine(t, got, "meta ")
	for _, want := range []string{"websocket: 1\r\n", "websocket-protocols: other, chat\r\n", "websocket-max-message: 4194304\r\n", "stream-credits: 4456512\r\n", "connection-id: "} {
		if !strings.Contains(meta, want) {
			t.Errorf("the handshake's meta lacks %q:\n%s", want, meta)
		}
	}
	large := make([]byte, 4<<20)
	rand.Read(large)
	msgs := []struct {
		kind int
		data []byte
	}{
		{websocket.TextMessage, []byte("héllo")},
		{websocket.BinaryMessage, []byte{0, 1, 2, 255}},
		{websocket.TextMessage, nil},
		{websocket.BinaryMessage, nil},
		{websocket.BinaryMessage, large},
		{websocket.TextMessage, bytes.Repeat([]byte("ü"), 300000)},
	}
	for round := 0; round < 2; round++ {
		for i, m := range msgs {
			if err := c.WriteMessage(m.kind, m.data); err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			kind, data, err := c.ReadMessage()
			if err != nil || kind != m.kind || !bytes.Equal(data, m.data) {
				t.Fatalf("message %d came back as kind %d, %d bytes, %v; sent kind %d, %d bytes", i, kind, len(data), err, m.kind, len(m.data))
			}
		}
	}
	c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(4321, "bye"))
	if got := waitLine(t, got, "closed "); got != "closed 4321 bye" {
		t.Errorf("the worker heard %q, want the client's close: closed 4321 bye", got)
	}
	if _, _, err := c.ReadMessage(); closeCode(err) != 4321 {
		t.Errorf("the client's close was answered with %v, want its own code 4321", err)
	}
	streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndNormal: 1})
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", logs.String())
	}
}

// wsRaw is a WebSocket client on a raw connection: the test writes every
// frame, masked or not, and reads the server's frames byte by byte.
type wsRaw struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

// wsRawDial opens a WebSocket on a raw connection and reads the 101.
func wsRawDial(t *testing.T, addr, path string) *wsRaw {
	t.Helper()
	r := &wsRaw{t: t}
	rc := dial(t, addr)
	r.c, r.br = rc.c, rc.br
	rc.send("GET " + path + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	status, hdr := rc.head()
	if status != "HTTP/1.1 101 Switching Protocols" || hdr.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" ||
		!strings.EqualFold(hdr.Get("Upgrade"), "websocket") {
		t.Fatalf("handshake answered %q %v", status, hdr)
	}
	return r
}

// frame writes a frame; masked unless unmasked.
func (r *wsRaw) frame(op ws.OpCode, fin bool, payload []byte, unmasked bool) {
	r.t.Helper()
	h := ws.Header{Fin: fin, OpCode: op, Masked: !unmasked, Length: int64(len(payload))}
	p := append([]byte(nil), payload...)
	if h.Masked {
		h.Mask = ws.NewMask()
		ws.Cipher(p, h.Mask, 0)
	}
	var b bytes.Buffer
	ws.WriteHeader(&b, h)
	b.Write(p)
	if _, err := r.c.Write(b.Bytes()); err != nil {
		r.t.Fatal(err)
	}
}

// read reads one server frame: final and unmasked, as the server sends them.
func (r *wsRaw) read() (ws.OpCode, []byte) {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, err := ws.ReadHeader(r.br)
	if err != nil {
		r.t.Fatalf("reading a frame: %v", err)
	}
	if !h.Fin || h.Masked || h.Rsv != 0 {
		r.t.Fatalf("a server frame that is not final, or masked, or with reserved bits: %+v", h)
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(r.br, p); err != nil {
		r.t.Fatalf("reading a frame's payload: %v", err)
	}
	return h.OpCode, p
}

// readClose reads frames up to a close and returns its code and reason
// (1005 for none), and whether the server then closed the connection.
func (r *wsRaw) readClose() (code int, reason string, closed bool) {
	r.t.Helper()
	for {
		op, p := r.read()
		if op != ws.OpClose {
			continue
		}
		code = 1005
		if len(p) >= 2 {
			code, reason = int(binary.BigEndian.Uint16(p)), string(p[2:])
		}
		closed, _ = (&rawClient{t: r.t, c: r.c, br: r.br}).closed()
		return code, reason, closed
	}
}

// closeBody is a close frame's payload.
func closeBody(code int, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(code)), reason...)
}

// Fragmented messages with pings between their fragments: each ping is
// answered with its payload at once, the worker gets each message whole,
// and the client's close is echoed and the connection closed.
func TestWebSocketFragmentsAndPings(t *testing.T) {
	got := make(chan string, 16)
	ep := zmqtest.ROUTER(t, wsEcho(got))
	_, addr := startServer(t, Options{}, wsRoute(ep))
	r := wsRawDial(t, addr, "/ok")
	r.frame(ws.OpText, false, []byte("hé"), false)
	r.frame(ws.OpPing, true, []byte("p1"), false)
	if op, p := r.read(); op != ws.OpPong || string(p) != "p1" {
		t.Fatalf("a ping between fragments got %v %q, want a pong p1", op, p)
	}
	r.frame(ws.OpContinuation, false, []byte("llo "), false)
	r.frame(ws.OpPong, true, []byte("unasked"), false)
	r.frame(ws.OpPing, true, nil, false)
	r.frame(ws.OpContinuation, true, []byte("wörld"), false)
	if op, p := r.read(); op != ws.OpPong || len(p) != 0 {
		t.Fatalf("the second ping got %v %q, want an empty pong", op, p)
	}
	if op, p := r.read(); op != ws.OpText || string(p) != "héllo wörld" {
		t.Fatalf("the echo: %v %q", op, p)
	}
	big := bytes.Repeat([]byte{7}, 100000)
	for i := 0; i < len(big); i += 30000 {
		op := ws.OpContinuation
		if i == 0 {
			op = ws.OpBinary
		}
		r.frame(op, i+30000 >= len(big), big[i:min(i+30000, len(big))], false)
		r.frame(ws.OpPing, true, []byte{byte(i / 30000)}, false)
	}
	// Pongs not sent yet when the next ping comes answer that one instead
	// (the client reads nothing meanwhile): they come in order, the last
	// ping's last. The echo may come before the last pong: the last ping
	// follows the message's last fragment, and the worker may answer
	// before the server reads it.
	last, echoed := -1, false
	for last < 3 || !echoed {
		op, p := r.read()
		switch {
		case op == ws.OpBinary && !echoed:
			if !bytes.Equal(p, big) {
				t.Fatalf("the echo of 100000 bytes in 4 fragments: %d bytes", len(p))
			}
			echoed = true
		case op != ws.OpPong || len(p) != 1 || int(p[0]) <= last || p[0] > 3:
			t.Fatalf("after pong %d (echo seen: %v): %v %q, want the pong of a later ping or the echo", last, echoed, op, p[:min(len(p), 16)])
		default:
			last = int(p[0])
		}
	}
	r.frame(ws.OpClose, true, closeBody(1000, "done"), false)
	if code, _, closed := r.readClose(); code != 1000 || !closed {
		t.Errorf("the client's close was answered with %d, connection closed %v; want 1000 and closed", code, closed)
	}
	if got := waitLine(t, got, "closed "); got != "closed 1000 done" {
		t.Errorf("the worker heard %q", got)
	}
}

// A client that breaks RFC 6455 is closed with the code for it, and the
// worker hears that code.
func TestWebSocketClientBreaches(t *testing.T) {
	got := make(chan string, 16)
	ep := zmqtest.ROUTER(t, wsEcho(got))
	route := wsRoute(ep)
	route.WebSocketMaxMessage = 1000
	srv, addr := startServer(t, Options{}, route)
	for _, tc := range []struct {
		name string
		send func(r *wsRaw)
		code int
	}{
		{"text that is not UTF-8", func(r *wsRaw) { r.frame(ws.OpText, true, []byte{'a', 0xff, 'b'}, false) }, 1007},
		{"not UTF-8 across fragments", func(r *wsRaw) {
			r.frame(ws.OpText, false, []byte{'a', 0xc3}, false)
			r.frame(ws.OpContinuation, true, []byte{'('}, false)
		}, 1007},
		{"a message over the limit", func(r *wsRaw) { r.frame(ws.OpBinary, true, make([]byte, 1001), false) }, 1009},
		{"fragments over the limit", func(r *wsRaw) {
			r.frame(ws.OpBinary, false, make([]byte, 600), false)
			r.frame(ws.OpContinuation, true, make([]byte, 600), false)
		}, 1009},
		{"an unmasked frame", func(r *wsRaw) { r.frame(ws.OpText, true, []byte("hi"), true) }, 1002},
		{"an unknown opcode", func(r *wsRaw) { r.frame(ws.OpCode(3), true, []byte("hi"), false) }, 1002},
		{"a continuation with nothing to continue", func(r *wsRaw) { r.frame(ws.OpContinuation, true, []byte("hi"), false) }, 1002},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := wsRawDial(t, addr, "/ok")
			waitLine(t, got, "meta ")
			r.frame(ws.OpText, true, []byte("fine"), false)
			if op, p := r.read(); op != ws.OpText || string(p) != "fine" {
				t.Fatalf("echo %v %q", op, p)
			}
			tc.send(r)
			if code, _, closed := r.readClose(); code != tc.code || !closed {
				t.Errorf("closed with %d, connection closed %v; want %d and closed", code, closed, tc.code)
			}
			if got, want := waitLine(t, got, "closed "), fmt.Sprintf("closed %d ", tc.code); !strings.HasPrefix(got, want) {
				t.Errorf("the worker heard %q, want %q", got, want)
			}
		})
	}
	if srv.OpenConnections() != 0 {
		settle(t, "open connections", 5*time.Second, func() bool { return srv.OpenConnections() == 0 })
	}
}

// The worker's close reaches the client with its code and reason; a
// message that breaks the rules closes with 1011, logged, and the worker
// hears 1011.
func TestWebSocketWorkerClosesAndBreaks(t *testing.T) {
	got := make(chan string, 16)
	ep := zmqtest.ROUTER(t, wsEcho(got))
	srv, addr, logs := startServerLog(t, Options{}, wsRoute(ep))
	c, _ := wsDial(t, addr, "/ok", nil)
	c.WriteMessage(websocket.TextMessage, []byte("close"))
	if _, _, err := c.ReadMessage(); closeCode(err) != 4000 || !strings.Contains(err.Error(), "asked") {
		t.Errorf("the worker's close reached the client as %v, want 4000 asked", err)
	}
	c2, _ := wsDial(t, addr, "/ok", nil)
	c2.WriteMessage(websocket.TextMessage, []byte("garbage"))
	if _, _, err := c2.ReadMessage(); closeCode(err) != 1011 {
		t.Errorf("a worker breaking the rules: the client read %v, want close 1011", err)
	}
	if got := waitLine(t, got, "closed "); got != "closed 1011 " {
		t.Errorf("the worker heard %q, want closed 1011", got)
	}
	settle(t, "open connections", 5*time.Second, func() bool { return srv.OpenConnections() == 0 })
	if !strings.Contains(logs.String(), "MODZMQ0307") {
		t.Errorf("no MODZMQ0307 logged:\n%s", logs.String())
	}
	streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndNormal: 1, bridge.EndBroken: 1})
}

// A worker lost with WebSockets open: their clients get close 1011, logged.
func TestWebSocketWorkerKilled(t *testing.T) {
	got := make(chan string, 16)
	ep, kill := zmqtest.KillableROUTER(t, wsEcho(got))
	srv, addr, logs := startServerLog(t, Options{}, wsRoute(ep))
	var clients []*websocket.Conn
	for i := 0; i < 3; i++ {
		c, _ := wsDial(t, addr, "/ok", nil)
		c.WriteMessage(websocket.TextMessage, []byte("hi"))
		if _, p, err := c.ReadMessage(); err != nil || string(p) != "hi" {
			t.Fatalf("echo: %q %v", p, err)
		}
		clients = append(clients, c)
	}
	kill()
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, _, err := c.ReadMessage(); closeCode(err) != 1011 {
			t.Errorf("client %d read %v after the worker died, want close 1011", i, err)
		}
	}
	settle(t, "open connections", 5*time.Second, func() bool { return srv.OpenConnections() == 0 })
	if n := strings.Count(logs.String(), "MODZMQ0307"); n != 3 {
		t.Errorf("MODZMQ0307 logged %d times, want 3:\n%s", n, logs.String())
	}
	streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndBroken: 3})
}

// A client whose connection closes without a close frame: the worker gets
// @ws-close 1006.
func TestWebSocketClientVanishes(t *testing.T) {
	got := make(chan string, 16)
	ep := zmqtest.ROUTER(t, wsEcho(got))
	srv, addr := startServer(t, Options{}, wsRoute(ep))
	r := wsRawDial(t, addr, "/ok")
	r.frame(ws.OpBinary, true, []byte("x"), false)
	r.read()
	r.frame(ws.OpBinary, false, []byte("half a message"), false)
	r.c.Close()
	if got := waitLine(t, got, "closed "); got != "closed 1006 " {
		t.Errorf("the worker heard %q, want closed 1006", got)
	}
	settle(t, "open connections", 5*time.Second, func() bool { return srv.OpenConnections() == 0 })
	streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndClientGone: 1})
}

// Handshakes the front or the worker refuses, and the limit of open
// WebSockets.
func TestWebSocketRefusedHandshakes(t *testing.T) {
	got := make(chan string, 16)
	ep := zmqtest.ROUTER(t, wsEcho(got))
	route := wsRoute(ep)
	route.WebSocketOrigins = []string{"https://good.example"}
	route.MaxStreams = 1
	_, addr := startServer(t, Options{}, route)
	handshake := func(path, extra string) (string, http.Header, string) {
		t.Helper()
		r := dial(t, addr)
		r.send("GET " + path + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + extra + "\r\n")
		resp, err := http.ReadResponse(r.br, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.Close {
			resp.Header.Set("Connection", "close") // ReadResponse takes it out
		}
		return resp.Status, resp.Header, string(body)
	}
	v13 := "Sec-WebSocket-Version: 13\r\n"
	if st, hdr, body := handshake("/no", v13); st != "403 Forbidden" || body != "go away" || hdr.Get("Connection") != "close" {
		t.Errorf("a handshake the worker refuses: %q %v %q", st, hdr, body)
	}
	waitLine(t, got, "meta ")
	if st, hdr, _ := handshake("/ok", "Sec-WebSocket-Version: 8\r\n"); st != "426 Upgrade Required" || hdr.Get("Sec-WebSocket-Version") != "13" {
		t.Errorf("version 8: %q %v", st, hdr)
	}
	if st, _, _ := handshake("/ok", v13+"Origin: https://evil.example\r\n"); st != "403 Forbidden" {
		t.Errorf("an origin not allowed: %q", st)
	}
	c, _ := wsDial(t, addr, "/ok", http.Header{"Origin": {"https://good.example"}})
	waitLine(t, got, "meta ")
	if st, hdr, _ := handshake("/ok", v13); st != "503 Service Unavailable" || hdr.Get("Retry-After") == "" {
		t.Errorf("a WebSocket over max_streams: %q %v", st, hdr)
	}
	c.Close()
	waitLine(t, got, "closed 1006")
	select {
	case s := <-got:
		t.Errorf("the worker got %q: refused handshakes must not reach it", s)
	default:
	}
}

// A client silent for half the stream idle timeout gets a ping; one that
// stays silent is closed and the worker gets 1006. One that answers pings
// stays open.
func TestWebSocketIdleClient(t *testing.T) {
	got := make(chan string, 16)
	ep := zmqtest.ROUTER(t, wsEcho(got))
	route := wsRoute(ep)
	route.StreamIdleTimeout = gateway.Duration(2 * time.Second)
	_, addr := startServer(t, Options{}, route)
	alive, _ := wsDial(t, addr, "/ok", nil) // gorilla answers pings while it reads
	go func() {
		for {
			if _, _, err := alive.ReadMessage(); err != nil {
				return
			}
		}
	}()
	r := wsRawDial(t, addr, "/ok")
	if op, _ := r.read(); op != ws.OpPing {
		t.Fatalf("a silent client got %v, want a ping", op)
	}
	if _, _, closed := r.readClose(); !closed {
		t.Error("a client that answered no ping was not closed")
	}
	if got := waitLine(t, got, "closed "); got != "closed 1006 " {
		t.Errorf("the worker heard %q, want closed 1006", got)
	}
	alive.SetWriteDeadline(time.Now().Add(time.Second))
	if err := alive.WriteMessage(websocket.TextMessage, []byte("still here")); err != nil {
		t.Errorf("a client that answers pings was closed: %v", err)
	}
}

// Shutdown closes open WebSockets with 1001, both ways.
func TestWebSocketShutdown(t *testing.T) {
	got := make(chan string, 16)
	ep := zmqtest.ROUTER(t, wsEcho(got))
	_, _, addr, cancel, done := serve(t, nil, Options{Drain: 5 * time.Second}, wsRoute(ep))
	c, _ := wsDial(t, addr, "/ok", nil)
	waitLine(t, got, "meta ")
	cancel()
	if _, _, err := c.ReadMessage(); closeCode(err) != 1001 {
		t.Errorf("at shutdown the client read %v, want close 1001", err)
	}
	if err := zmqtest.WaitFor(t, done, "Serve to return"); err != nil {
		t.Errorf("Serve: %v", err)
	}
	if got := waitLine(t, got, "closed "); !strings.HasPrefix(got, "closed 1001 ") {
		t.Errorf("the worker heard %q, want closed 1001", got)
	}
}

// A worker that grants no credit holds its client back: the worker gets no
// more than the credit it gave, and stream mode stops reading (every
// client waits meanwhile) until the route's timeout closes the WebSocket
// with 1013 (MODZMQ0308), both ways. A plain request waiting meanwhile is
// answered after.
func TestWebSocketWorkerGrantsNoCredit(t *testing.T) {
	got := make(chan string, 64)
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		switch {
		case strings.Contains(m.meta(), "websocket: 1\r\n"):
			reply(zmqtest.Part(m.envelope(), "@accept", ""))
		case m.method() == "@binary":
			got <- fmt.Sprintf("message %d", len(m[8]))
		case m.method() == "@ws-close":
			got <- "closed " + m.target()
		case m.method() == "GET":
			reply(zmqtest.Part(m.envelope(), "200", "", "plain"))
		}
	})
	route := wsRoute(ep)
	route.WebSocketMaxMessage = 1000
	route.StreamWindow = 4096 // the worker's credit, with room for a message of 1064: 4 messages of 1000 bytes and PartCost
	route.Timeout = gateway.Duration(time.Second)
	_, addr, logs := startServerLog(t, Options{}, route)
	c, _ := wsDial(t, addr, "/ok", nil)
	go func() {
		for i := 0; i < 10; i++ {
			if c.WriteMessage(websocket.BinaryMessage, make([]byte, 1000)) != nil {
				return
			}
		}
	}()
	for i := 0; i < 4; i++ {
		if s := waitLine(t, got, ""); s != "message 1000" {
			t.Fatalf("the worker got %q, want message %d of 1000 bytes", s, i)
		}
	}
	plain := dial(t, addr)
	plain.send("GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
	if s := waitLine(t, got, ""); s != "closed 1013" {
		t.Errorf("after 4 messages, past its credit, the worker got %q; want closed 1013", s)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := c.ReadMessage(); closeCode(err) != 1013 {
		t.Errorf("the client read %v, want close 1013", err)
	}
	if got := readResponses(t, plain.c, 1); got[0] != "200 plain" {
		t.Errorf("the plain request after the hold: %q", got)
	}
	if !strings.Contains(logs.String(), "MODZMQ0308") {
		t.Errorf("no MODZMQ0308 logged:\n%s", logs.String())
	}
}

// A client that reads nothing holds its worker back: the worker, within
// its credit, sends no more than the window and what the kernel buffers,
// and stream mode holds about the window beyond the kernel. The client is
// closed after the stream idle timeout (MODZMQ0303) and the worker gets
// 1006.
func TestWebSocketClientThatStopsReading(t *testing.T) {
	const size = 16 << 10
	got := make(chan string, 4)
	var sent atomic.Int64
	var env [][]byte
	var credit int64
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		switch {
		case strings.Contains(m.meta(), "websocket: 1\r\n"):
			env = m.envelope()
			fmt.Sscan(m.meta()[strings.Index(m.meta(), "stream-credits: ")+len("stream-credits: "):], &credit)
			reply(zmqtest.Part(env, "@accept", ""))
		case m.method() == "@credit":
			var n int64
			fmt.Sscan(m.target(), &n)
			credit += n
		case m.method() == "@ws-close":
			got <- "closed " + m.target()
			env = nil
		}
		for env != nil && credit >= size+bridge.PartCost {
			reply(zmqtest.Part(env, "@binary", strings.Repeat("x", size)))
			credit -= size + bridge.PartCost
			sent.Add(size)
		}
	})
	route := wsRoute(ep)
	route.WebSocketMaxMessage = 64 << 10
	route.StreamIdleTimeout = gateway.Duration(300 * time.Millisecond)
	_, addr, logs := startServerLog(t, Options{}, route)
	r := wsRawDial(t, addr, "/ok")
	r.c.(*net.TCPConn).SetReadBuffer(64 << 10)
	if s := waitLine(t, got, "closed "); s != "closed 1006" {
		t.Errorf("the worker got %q, want closed 1006", s)
	}
	n, kernel := sent.Load(), kernelHeld(t, r.c)
	// The worker's credit: the window and room for a message of the
	// largest size.
	window := int64(bridge.DefaultStreamWindow)
	granted := window + 64<<10 + bridge.PartCost
	t.Logf("the worker could send %d KiB to a client that read nothing; the kernel holds %d KiB of it", n>>10, kernel>>10)
	if limit := granted + slack(t); n > limit {
		t.Errorf("the worker could send %d bytes; want at most its credit and the kernel's buffers, %d", n, limit)
	}
	if held, limit := n-kernel, granted+int64((sndHWM+1)*msgMax(window))+size+16<<10; held > limit {
		t.Errorf("stream mode held %d bytes beyond the kernel's buffers; want at most %d", held, limit)
	}
	if !strings.Contains(logs.String(), "MODZMQ0303: client is not reading") {
		t.Errorf("want the client closed as not reading (MODZMQ0303):\n%s", logs.String())
	}
}

// The many-WebSockets test runs its clients in a child process (this test
// binary again, TestWebSocketClientsChild), so that their 10,000
// descriptors do not count against this process's, which holds the
// server's 10,000 and must stay under RLIMIT_NOFILE.
const wsChildEnv = "MODZMQ_WS_CHILD" // ADDR N MODE: the child's work

// TestWebSocketClientsChild is the child: it opens N connections to ADDR
// (MODE ws: WebSockets that exchange one message each; MODE http:
// keep-alive connections that make one request each), says "open", waits
// for a line on stdin, closes them all (WebSockets with a close
// handshake), says "closed" and ends.
func TestWebSocketClientsChild(t *testing.T) {
	args := strings.Fields(os.Getenv(wsChildEnv))
	if len(args) != 3 {
		t.Skip("the child of TestTenThousandWebSockets")
	}
	addr, mode := args[0], args[2]
	n, _ := strconv.Atoi(args[1])
	type client struct {
		ws *websocket.Conn
		nc net.Conn
	}
	clients := make([]client, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	fail := make(chan error, 1)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 256, WriteBufferSize: 256}
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				err := func() error {
					if mode == "http" {
						nc, err := net.Dial("tcp", addr)
						if err != nil {
							return err
						}
						clients[i].nc = nc
						fmt.Fprintf(nc, "GET /plain/%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
						nc.SetReadDeadline(time.Now().Add(30 * time.Second))
						resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
						if err == nil {
							_, err = io.Copy(io.Discard, resp.Body)
						}
						return err
					}
					c, _, err := d.Dial("ws://"+addr+"/ok", nil)
					if err != nil {
						return err
					}
					clients[i].ws = c
					msg := fmt.Sprintf("hello %d", i)
					c.SetReadDeadline(time.Now().Add(30 * time.Second))
					if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
						return err
					}
					if _, p, err := c.ReadMessage(); err != nil || string(p) != msg {
						return fmt.Errorf("echo %q, %v", p, err)
					}
					return nil
				}()
				if err != nil {
					select {
					case fail <- fmt.Errorf("connection %d: %w", i, err):
					default:
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-fail:
		fmt.Println("failed", err)
		return
	default:
	}
	fmt.Println("open")
	bufio.NewReader(os.Stdin).ReadString('\n')
	next.Store(0)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				if c := clients[i].ws; c != nil {
					c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(30*time.Second))
					c.SetReadDeadline(time.Now().Add(30 * time.Second))
					for {
						if _, _, err := c.ReadMessage(); err != nil {
							break
						}
					}
					c.Close()
				}
				if c := clients[i].nc; c != nil {
					c.Close()
				}
			}
		}()
	}
	wg.Wait()
	fmt.Println("closed")
}

// child runs TestWebSocketClientsChild with n connections of mode and
// returns a function that tells it to close them and waits for it.
func child(t *testing.T, addr string, n int, mode string) (closeAll func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestWebSocketClientsChild$", "-test.v=false", "-test.count=1")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %s", wsChildEnv, addr, n, mode))
	cmd.Stderr = os.Stderr
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	wait := func(want string) {
		t.Helper()
		for lines.Scan() {
			if l := lines.Text(); l == want {
				return
			} else if strings.HasPrefix(l, "failed") {
				cmd.Process.Kill()
				t.Fatalf("the clients: %s", l)
			}
		}
		cmd.Process.Kill()
		t.Fatalf("the clients ended before saying %q", want)
	}
	wait("open")
	return func() {
		t.Helper()
		io.WriteString(in, "close\n")
		wait("closed")
		cmd.Wait()
	}
}

// rssOf returns this process's resident set size.
func rssOf(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status")
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n << 10
		}
	}
	t.Skip("no VmRSS")
	return 0
}

// 10,000 WebSockets through stream mode to one worker (1,000 with -short):
// all open at once, one message each, then closed by their clients;
// goroutines, descriptors and the heap come back to their level. The
// process's RSS per open idle WebSocket is logged (it includes the
// in-process worker's share); with MODZMQ_WS_BASELINE=1 that of as many
// plain idle keep-alive connections (one request each) is measured first,
// in the same way, for comparison.
func TestTenThousandWebSockets(t *testing.T) {
	n := 10000
	if testing.Short() {
		n = 1000
	}
	got := make(chan string, 64)
	echo := wsEcho(got)
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		if m := workerMsg(msg); m.method() == "GET" && !strings.Contains(m.meta(), "websocket: 1") {
			reply(zmqtest.Part(m.envelope(), "200", "", "plain"))
			return
		}
		echo(msg, reply)
	})
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() { // the worker's reports are not needed here
		for {
			select {
			case <-got:
			case <-done:
				return
			}
		}
	}()
	srv, addr := startServer(t, Options{}, wsRoute(ep))
	// Warm up: the bridge's connections to the worker, libzmq's threads.
	closeAll := child(t, addr, 200, "ws")
	closeAll()
	ss := srv.lv.Gateway().Handles()[0].Client.StreamStats()
	settle(t, "WebSockets", 10*time.Second, func() bool { return srv.OpenConnections() == 0 && ss.Open.Load() == 0 })
	runtime.GC()
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heap := ms.HeapInuse

	measure := func(mode string) int64 {
		before := rssOf(t)
		closeAll := child(t, addr, n, mode)
		if c := srv.OpenConnections(); c != int64(n) {
			t.Errorf("%d connections open, want %d", c, n)
		}
		runtime.GC()
		per := (rssOf(t) - before) / int64(n)
		t.Logf("%s: %d open: %d goroutines (%d before), %d descriptors (%d before), RSS %d bytes more per connection",
			mode, n, runtime.NumGoroutine(), goroutines, openFDs(t), fds, per)
		closeAll()
		return per
	}
	if os.Getenv("MODZMQ_WS_BASELINE") != "" {
		measure("http")
	}
	perWS := measure("ws")
	settle(t, "open WebSockets", 10*time.Second, func() bool { return ss.Open.Load() == 0 })
	if ends := ss.Ends[bridge.EndNormal].Load(); ends != int64(n)+200 {
		t.Errorf("%d WebSockets ended normally, want %d", ends, n+200)
	}
	settle(t, "open connections", 10*time.Second, func() bool { return srv.OpenConnections() == 0 })
	settle(t, "goroutines", 10*time.Second, func() bool { return runtime.NumGoroutine() <= goroutines+2 })
	settle(t, "file descriptors", 10*time.Second, func() bool { return openFDs(t) <= fds+2 })
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if ms.HeapInuse > heap+16<<20 {
		t.Errorf("heap in use grew from %d to %d bytes over %d WebSockets", heap, ms.HeapInuse, n)
	}
	// About 30 KiB (and 55 KiB with -race), most of it libzmq's for the
	// TCP connection: a bound that catches a goroutine or a buffer per
	// WebSocket left behind.
	if perWS > 96<<10 {
		t.Errorf("an open idle WebSocket costs %d bytes of RSS", perWS)
	}
}
