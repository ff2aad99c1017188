package test

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// WebSockets through Apache (issue #14; docs/PROTOCOL.md, "WebSockets"),
// with a client written here so that the test controls every byte it
// sends (masking, fragments, broken frames), over HTTP/1.1, TLS and
// RFC 8441 over HTTP/2, against test/workers/ws_worker.py.

// WebSocket opcodes (RFC 6455 section 5.2).
const (
	opCont   = 0x0
	opText   = 0x1
	opBinary = 0x2
	opClose  = 0x8
	opPing   = 0x9
	opPong   = 0xa
)

// wsClient is one WebSocket: frames go out on w and come in on r.
type wsClient struct {
	t        *testing.T
	r        *bufio.Reader
	w        io.Writer
	close    func()                        // drops the connection (no close frame)
	end      func(last []byte) error       // writes last and ends the client's side (TCP FIN, END_STREAM)
	expire   func(d time.Duration)         // sets a read deadline
	patience time.Duration                 // how long readFrame waits for a frame (0: a minute)
	Resp     *http.Response                // the handshake's answer
	ConnID   string                        // the worker's X-Connection-Id
	mu       sync.Mutex                    // one writer at a time
	extra    func(op byte, payload []byte) // sees control frames next() skips
}

// frame writes one frame: b0 is FIN, RSV and opcode; masked as a client
// must, unless mask is false.
func (c *wsClient) frame(b0 byte, payload []byte, mask bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.w.Write(encodeFrame(b0, payload, mask))
	return err
}

// closeAndEnd sends a close with code and ends the client's side in the
// same write: the front reads both at once.
func (c *wsClient) closeAndEnd(code int) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.end(encodeFrame(0x80|opClose, closePayload(code, ""), true)); err != nil {
		c.t.Fatal(err)
	}
}

func encodeFrame(b0 byte, payload []byte, mask bool) []byte {
	hdr := []byte{b0, 0}
	var m byte
	if mask {
		m = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		hdr[1] = m | byte(n)
	case n < 65536:
		hdr[1] = m | 126
		hdr = binary.BigEndian.AppendUint16(hdr, uint16(n))
	default:
		hdr[1] = m | 127
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	body := payload
	if mask {
		var key [4]byte
		rand.Read(key[:])
		hdr = append(hdr, key[:]...)
		body = make([]byte, len(payload))
		for i, b := range payload {
			body[i] = b ^ key[i%4]
		}
	}
	return append(hdr, body...)
}

func (c *wsClient) send(op byte, payload []byte) {
	c.t.Helper()
	if err := c.frame(0x80|op, payload, true); err != nil {
		c.t.Fatalf("send opcode %d, %d bytes: %v", op, len(payload), err)
	}
}

// readFrame reads one server frame, which must be final and unmasked.
func (c *wsClient) readFrame() (op byte, payload []byte, err error) {
	c.expire(cmp.Or(c.patience, time.Minute))
	var h [2]byte
	if _, err := io.ReadFull(c.r, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&0x80 == 0 || h[0]&0x70 != 0 || h[1]&0x80 != 0 {
		return 0, nil, fmt.Errorf("the server sent a frame with header %08b %08b (not final, RSV bits, or masked)", h[0], h[1])
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(c.r, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(c.r, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 64<<20 {
		return 0, nil, fmt.Errorf("a frame of %d bytes", n)
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(c.r, payload)
	return h[0] & 0x0f, payload, err
}

// next returns the next message or close, answering pings on the way.
func (c *wsClient) next() (op byte, payload []byte) {
	c.t.Helper()
	for {
		op, p, err := c.readFrame()
		if err != nil {
			c.t.Fatalf("reading a frame: %v", err)
		}
		if op == opPing || op == opPong {
			if c.extra != nil {
				c.extra(op, p)
			}
			if op == opPing {
				c.send(opPong, p)
			}
			continue
		}
		return op, p
	}
}

// expect reads the next message and checks it.
func (c *wsClient) expect(op byte, want []byte) {
	c.t.Helper()
	got, p := c.next()
	if got != op || !bytes.Equal(p, want) {
		c.t.Fatalf("got opcode %d with %d bytes %.40q, want opcode %d with %d bytes %.40q", got, len(p), p, op, len(want), want)
	}
}

// expectClose reads a close frame with code (and reason, when given).
func (c *wsClient) expectClose(code int, reason ...string) {
	c.t.Helper()
	op, p := c.next()
	if op != opClose || len(p) < 2 || int(binary.BigEndian.Uint16(p)) != code ||
		(len(reason) > 0 && string(p[2:]) != reason[0]) {
		c.t.Fatalf("got opcode %d payload %q, want a close with code %d %q", op, p, code, reason)
	}
}

// expectEnd checks that the server closes the connection (no more frames).
func (c *wsClient) expectEnd() {
	c.t.Helper()
	if op, p, err := c.readFrame(); err == nil {
		c.t.Fatalf("after the close: opcode %d with %d bytes, want the connection closed", op, len(p))
	}
}

func closePayload(code int, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(code)), reason...)
}

func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

func newKey() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// wsDial opens a WebSocket over HTTP/1.1 on addr (TLS when tlsConf is
// set) at path, with hdr as extra header lines ("Name: value"). The answer
// is in Resp; the WebSocket is usable when it is 101, whose
// Sec-WebSocket-Accept is checked.
func wsDial(t *testing.T, addr string, tlsConf *tls.Config, path string, hdr ...string) *wsClient {
	t.Helper()
	var conn net.Conn
	var err error
	if tlsConf != nil {
		conn, err = tls.Dial("tcp", addr, tlsConf)
	} else {
		conn, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	key := newKey()
	req := "GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\n"
	if !strings.Contains(strings.Join(hdr, "\n"), "Sec-WebSocket-Version") {
		req += "Sec-WebSocket-Version: 13\r\n"
	}
	for _, h := range hdr {
		req += h + "\r\n"
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReaderSize(conn, 1<<16)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("the handshake's answer: %v", err)
	}
	conn.SetDeadline(time.Time{})
	c := &wsClient{t: t, r: r, w: conn, Resp: resp, close: func() { conn.Close() },
		expire: func(d time.Duration) { conn.SetReadDeadline(time.Now().Add(d)) },
		end: func(last []byte) error {
			if _, err := conn.Write(last); err != nil {
				return err
			}
			if cw, ok := conn.(interface{ CloseWrite() error }); ok {
				return cw.CloseWrite()
			}
			return errors.New("the connection cannot be half-closed")
		}}
	if resp.StatusCode != 101 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(b))
		return c
	}
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != acceptKey(key) {
		t.Fatalf("Sec-WebSocket-Accept %q, want %q", got, acceptKey(key))
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") || !strings.EqualFold(resp.Header.Get("Connection"), "upgrade") {
		t.Fatalf("101 without Upgrade: websocket and Connection: Upgrade: %v", resp.Header)
	}
	c.ConnID = resp.Header.Get("X-Connection-Id")
	return c
}

// mustOpen is wsDial that needs a 101.
func mustOpen(t *testing.T, addr string, tlsConf *tls.Config, path string, hdr ...string) *wsClient {
	t.Helper()
	c := wsDial(t, addr, tlsConf, path, hdr...)
	if c.Resp.StatusCode != 101 {
		b, _ := io.ReadAll(c.Resp.Body)
		t.Fatalf("%s: handshake answered %s: %s", path, c.Resp.Status, b)
	}
	return c
}

// waitClosed waits until the worker prints that the WebSocket on
// connection id closed with code.
func waitClosed(t *testing.T, w *worker, id string, code int) {
	t.Helper()
	want := fmt.Sprintf("closed %s %d\n", id, code)
	checkFor(t, 10*time.Second, func() error {
		if !strings.Contains(w.Output.String(), want) {
			return fmt.Errorf("the worker did not print %q:\n%s", want, w.Output.String())
		}
		return nil
	})
}

// wsLocations is the configuration of the WebSocket locations.
func wsLocations(ep, killed string) string {
	return fmt.Sprintf(`	<Location /ws>
		SetHandler zmq
		ZmqBackend %[1]s
		ZmqWebSocket on
	</Location>
	<Location /ws/small>
		ZmqWebSocketMaxMessage 100
	</Location>
	<Location /ws/off>
		ZmqWebSocket off
	</Location>
	<Location /plain>
		SetHandler zmq
		ZmqBackend %[1]s
	</Location>
	<Location /wssmall>
		SetHandler zmq
		ZmqBackend %[1]s
		ZmqWebSocket on
		ZmqWebSocketMaxMessage 1024
		ZmqStreamWindow 4096
	</Location>
	<Location /wsorigin>
		SetHandler zmq
		ZmqBackend %[1]s
		ZmqWebSocket on
		ZmqWebSocketOrigins https://good.example http://good.example:8080
	</Location>
	<Location /wsone>
		SetHandler zmq
		ZmqBackend %[1]s
		ZmqWebSocket on
		ZmqMaxStreams 1
	</Location>
	<Location /wsidle>
		SetHandler zmq
		ZmqBackend %[1]s
		ZmqWebSocket on
		ZmqStreamIdleTimeout 2
	</Location>
	<Location /wskill>
		SetHandler zmq
		ZmqBackend %[2]s
		ZmqWebSocket on
	</Location>
	<Location /zmq-status>
		SetHandler zmq-status
	</Location>
`, ep, killed)
}

// Over HTTP/1.1 (ws://): messages of every kind and size both ways, close
// codes both ways, a client that vanishes, the client's protocol errors,
// the handshake's refusals and limits, idle clients, a worker killed
// mid-WebSocket, and the access log.
func TestWebSocketsThroughApache(t *testing.T) {
	w := startPyScript(t, "test/workers/ws_worker.py")
	killed := startPyScript(t, "test/workers/ws_worker.py")
	requireBuilt(t, "wsworker")
	goPort := freePort(t)
	goEP := fmt.Sprintf("tcp://127.0.0.1:%d", goPort)
	goWorker := startListening(t, goPort, goEP, buildPath("wsworker"), "-bind", goEP)
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: wsLocations(w.Endpoint, killed.Endpoint) +
		fmt.Sprintf("\t<Location /wsgo>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t\tZmqWebSocket on\n\t</Location>\n", goEP)})
	addr := fmt.Sprintf("127.0.0.1:%d", h.Port)
	open := func(t *testing.T, path string) *wsClient { return mustOpen(t, addr, nil, path) }

	t.Run("GoWorker", func(t *testing.T) {
		// examples/go/wsworker, on the worker package (ZMTP in Go, with
		// Apache's heartbeats): the same messages, and its close.
		c := mustOpen(t, addr, nil, "/wsgo/echo")
		for _, m := range []struct {
			op   byte
			data []byte
		}{{opText, []byte("hello")}, {opBinary, []byte{0, 1, 2, 255}}, {opText, nil}, {opBinary, make([]byte, 70000)}} {
			c.send(m.op, m.data)
			c.expect(m.op, m.data)
		}
		wsEchoBig(t, c)
		wsFragmentsWithPing(t, c)
		c.send(opText, []byte("close"))
		c.expectClose(4000)
		c.send(opClose, closePayload(4000, ""))
		c.expectEnd()
		// The client leaves: the worker is told.
		c = mustOpen(t, addr, nil, "/wsgo/echo")
		c.send(opClose, closePayload(1000, "done"))
		c.expectClose(1000, "done")
		c.expectEnd()
		closed := regexp.MustCompile(`(?m)^closed \S+ 4000\nclosed \S+ 1000$`)
		checkFor(t, 10*time.Second, func() error {
			if !closed.MatchString(goWorker.Output.String()) {
				return fmt.Errorf("the worker did not print both closes:\n%s", goWorker.Output.String())
			}
			return nil
		})
	})

	t.Run("Messages", func(t *testing.T) {
		c := mustOpen(t, addr, nil, "/ws/echo")
		if c.Resp.Header.Get("X-Worker") != "ws" || c.ConnID == "" {
			t.Errorf("the worker's header lines are not in the 101: %v", c.Resp.Header)
		}
		mid := make([]byte, 70000)
		rand.Read(mid)
		for _, m := range []struct {
			op   byte
			data []byte
		}{{opText, []byte("hello")}, {opBinary, []byte{0, 1, 2, 255}}, {opText, nil}, {opBinary, nil},
			{opText, []byte("héllo wörld ✓")}, {opBinary, mid}} {
			c.send(m.op, m.data)
			c.expect(m.op, m.data)
		}
		wsEchoBig(t, c)
		c.send(opText, []byte("after"))
		c.expect(opText, []byte("after"))
		wsFragmentsWithPing(t, c)
		// The client closes: the close is answered with its code, the
		// worker told.
		c.send(opClose, closePayload(1000, "done"))
		c.expectClose(1000, "done")
		c.expectEnd()
		waitClosed(t, w, c.ConnID, 1000)
	})

	t.Run("WorkerCloses", func(t *testing.T) {
		c := mustOpen(t, addr, nil, "/ws/echo")
		c.send(opText, []byte("close"))
		c.expectClose(4000, "bye")
		c.send(opClose, closePayload(4000, ""))
		c.expectEnd()
	})

	t.Run("CloseThenHalfClose", func(t *testing.T) {
		// A client that shuts its side right after its close still gets
		// the close answered.
		c := mustOpen(t, addr, nil, "/ws/echo")
		c.closeAndEnd(1000)
		c.expectClose(1000)
		c.expectEnd()
		waitClosed(t, w, c.ConnID, 1000)
	})

	t.Run("FrameWithTheHandshake", func(t *testing.T) {
		// A frame sent right behind the handshake, in the same write: the
		// front finds it in what httpd read ahead.
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		req := "GET /ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: " + newKey() + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := conn.Write(append([]byte(req), encodeFrame(0x80|opText, []byte("early"), true)...)); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(conn)
		resp, err := http.ReadResponse(r, nil)
		if err != nil || resp.StatusCode != 101 {
			t.Fatalf("handshake: %v %v", resp, err)
		}
		c := &wsClient{t: t, r: r, w: conn, close: func() { conn.Close() },
			expire: func(d time.Duration) { conn.SetReadDeadline(time.Now().Add(d)) }}
		c.expect(opText, []byte("early"))
	})

	t.Run("WorkerSpeaksFirst", func(t *testing.T) {
		c := mustOpen(t, addr, nil, "/ws/hello")
		c.expect(opText, []byte("hello"))
		c.send(opBinary, []byte("x"))
		c.expect(opBinary, []byte("x"))
	})

	t.Run("ClientVanishes", func(t *testing.T) {
		c := mustOpen(t, addr, nil, "/ws/echo")
		c.send(opText, []byte("one"))
		c.expect(opText, []byte("one"))
		c.close()
		waitClosed(t, w, c.ConnID, 1006)
	})

	t.Run("ClientProtocolErrors", func(t *testing.T) { testWSProtocolErrors(t, h, open, w) })

	t.Run("Handshakes", func(t *testing.T) {
		c := wsDial(t, addr, nil, "/ws/refuse")
		if b, _ := io.ReadAll(c.Resp.Body); c.Resp.StatusCode != 403 || string(b) != "not here" {
			t.Errorf("a worker's refusal: %s %q, want 403 \"not here\"", c.Resp.Status, b)
		}
		c = wsDial(t, addr, nil, "/ws/echo", "Sec-WebSocket-Version: 8")
		if c.Resp.StatusCode != 426 || c.Resp.Header.Get("Sec-WebSocket-Version") != "13" {
			t.Errorf("version 8: %s %v, want 426 with Sec-WebSocket-Version: 13", c.Resp.Status, c.Resp.Header)
		}
		c = wsDial(t, addr, nil, "/wsorigin/echo", "Origin: https://evil.example")
		if c.Resp.StatusCode != 403 {
			t.Errorf("an Origin not allowed: %s, want 403", c.Resp.Status)
		}
		mustOpen(t, addr, nil, "/wsorigin/echo", "Origin: https://GOOD.example")
		mustOpen(t, addr, nil, "/wsorigin/echo", "Origin: http://good.example:8080")
		mustOpen(t, addr, nil, "/wsorigin/echo") // not a browser
		c = mustOpen(t, addr, nil, "/ws/echo", "Sec-WebSocket-Protocol: chat, superchat")
		if got := c.Resp.Header.Get("Sec-WebSocket-Protocol"); got != "chat" {
			t.Errorf("the worker's subprotocol: %q, want chat (it chooses the first offered)", got)
		}
		h.expect(`MODZMQ0103: .*subprotocol "nonsense"`)
		c = wsDial(t, addr, nil, "/ws/badproto", "Sec-WebSocket-Protocol: chat")
		if c.Resp.StatusCode != 502 {
			t.Errorf("a subprotocol nobody offered: %s, want 502", c.Resp.Status)
		}
		// Without ZmqWebSocket on, a handshake is a plain GET.
		for _, path := range []string{"/plain/echo", "/ws/off/echo"} {
			c = wsDial(t, addr, nil, path)
			if b, _ := io.ReadAll(c.Resp.Body); c.Resp.StatusCode != 200 || string(b) != "plain" {
				t.Errorf("%s: a handshake where WebSockets are off: %s %q, want 200 \"plain\"", path, c.Resp.Status, b)
			}
		}
		// A request that is not GET.
		resp, _ := rawRequest(t, h, "POST /ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: "+newKey()+"\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		if resp.StatusCode != 400 {
			t.Errorf("a POST handshake: %s, want 400", resp.Status)
		}
		if log := h.errorLog(); !strings.Contains(log, "MODZMQ0028") {
			t.Errorf("no MODZMQ0028 for the refused handshakes:\n%s", log)
		}
	})

	t.Run("MaxStreams", func(t *testing.T) {
		// ZmqMaxStreams 1 holds per child: with at most 6 children
		// (ServerLimit), one of 7 WebSockets finds its child's place taken.
		h.expect(`MODZMQ0024`)
		var open []*wsClient
		refused := false
		for range 7 {
			c := wsDial(t, addr, nil, "/wsone/echo")
			if c.Resp.StatusCode == 101 {
				open = append(open, c)
				continue
			}
			if c.Resp.StatusCode != 503 || c.Resp.Header.Get("Retry-After") == "" {
				t.Fatalf("over ZmqMaxStreams 1: %s %v, want 503 with Retry-After", c.Resp.Status, c.Resp.Header)
			}
			refused = true
			break
		}
		if !refused {
			t.Fatalf("%d WebSockets open with ZmqMaxStreams 1 and at most 6 children", len(open))
		}
		for _, c := range open {
			c.send(opClose, closePayload(1000, ""))
			c.expectClose(1000)
			c.expectEnd()
		}
		// Once they closed, their places are free again.
		c := mustOpen(t, addr, nil, "/wsone/echo")
		c.send(opText, []byte("again"))
		c.expect(opText, []byte("again"))
	})

	t.Run("SlowWorker", func(t *testing.T) {
		// The worker grants no credit: the front stops reading the client
		// once the worker's credit is spent: ZmqStreamWindow (4096 bytes)
		// and room for a message of ZmqWebSocketMaxMessage (1024) and 64.
		c := mustOpen(t, addr, nil, "/wssmall/slow")
		for range 50 {
			c.send(opBinary, make([]byte, 1000))
		}
		got := func() int { return strings.Count(w.Output.String(), "message "+c.ConnID+" binary 1000\n") }
		fits := (4096 + 1024 + 64) / 1064 // each costs its bytes and 64
		checkFor(t, 10*time.Second, func() error {
			if n := got(); n < fits {
				return fmt.Errorf("the worker got %d messages, want the %d its window holds", n, fits)
			}
			return nil
		})
		time.Sleep(300 * time.Millisecond) // a message past the window would arrive now
		if n := got(); n != fits {
			t.Errorf("the worker got %d messages of 1000 bytes with a credit of 5184 and no grant; want %d", n, fits)
		}
		c.close()
		waitClosed(t, w, c.ConnID, 1006)
	})

	t.Run("Idle", func(t *testing.T) {
		// A client that answers pings stays; one that does not is closed
		// after ZmqStreamIdleTimeout (2 s), the worker told 1006.
		alive := mustOpen(t, addr, nil, "/wsidle/echo")
		silent := mustOpen(t, addr, nil, "/wsidle/echo")
		pinged := make(chan struct{}, 1)
		alive.extra = func(op byte, p []byte) {
			if op == opPing {
				select {
				case pinged <- struct{}{}:
				default:
				}
			}
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 3 { // answering pings for over 2 idle timeouts
				alive.expire(30 * time.Second)
				op, p, err := alive.readFrame()
				if err != nil || op != opPing {
					t.Errorf("the live client got opcode %d %q, %v; want a ping", op, p, err)
					return
				}
				alive.send(opPong, p)
			}
		}()
		op, _, err := silent.readFrame()
		if err != nil || op != opPing {
			t.Fatalf("the silent client: opcode %d, %v; want a ping first", op, err)
		}
		silent.expectEnd()
		waitClosed(t, w, silent.ConnID, 1006)
		<-done
		alive.send(opText, []byte("still here"))
		alive.expect(opText, []byte("still here"))
		if !strings.Contains(h.errorLog(), "MODZMQ0031") {
			t.Errorf("no MODZMQ0031 for the silent client:\n%s", h.errorLog())
		}
	})

	t.Run("WorkerBreaksProtocol", func(t *testing.T) {
		h.expect(`MODZMQ0029: .*not UTF-8`)
		c := mustOpen(t, addr, nil, "/ws/echo")
		c.send(opText, []byte("garbage"))
		c.expectClose(1011)
		c.expectEnd()
		waitClosed(t, w, c.ConnID, 1011)
		d := mustOpen(t, addr, nil, "/ws/echo") // the worker goes on
		d.send(opText, []byte("fine"))
		d.expect(opText, []byte("fine"))
	})

	t.Run("WorkerKilled", func(t *testing.T) { testWSWorkerKilled(t, h, open, killed) })

	t.Run("MessagesInC", func(t *testing.T) {
		// Whole messages both ways are relayed by the C step (wsfast.c):
		// the 40 messages of 20 echoes enter Go (go_entries) only for the
		// credit the client earned the worker back, if at all, and no call
		// into Go waits there (go_waits). The status page counts the
		// messages (parts and bytes each way) as they go.
		c := mustOpen(t, addr, nil, "/ws/echo")
		c.send(opText, []byte("first"))
		c.expect(opText, []byte("first"))
		before := h.settledRoute(t, "/ws")
		for i := range 20 {
			c.send(opBinary, make([]byte, i*1000))
			c.expect(opBinary, make([]byte, i*1000))
		}
		after := h.settledRoute(t, "/ws")
		entries := *after.GoEntries - *before.GoEntries
		t.Logf("20 echoes: %d calls into Go", entries)
		if entries >= 10 {
			t.Errorf("20 echoes made %d calls into Go; the C step should relay them", entries)
		}
		if *after.GoWaits != 0 {
			t.Errorf("go_waits is %d after %d calls into Go: an Apache thread waited inside Go", *after.GoWaits, *after.GoEntries)
		}
		if p, b := after.Streams.BodyParts-before.Streams.BodyParts, after.Streams.BodyBytes-before.Streams.BodyBytes; p != 20 || b != 190000 {
			t.Errorf("the status counts %d messages of %d bytes to the worker; want 20 of 190000", p, b)
		}
		if p, b := after.Streams.Parts-before.Streams.Parts, after.Streams.Bytes-before.Streams.Bytes; p != 20 || b != 190000 {
			t.Errorf("the status counts %d messages of %d bytes to the client; want 20 of 190000", p, b)
		}

		// A burst, relayed in C too: the status counts each message once,
		// and Go is entered for credit only.
		wsBurst(t, c, 40)
		last := h.settledRoute(t, "/ws")
		if p := last.Streams.BodyParts - after.Streams.BodyParts; p != 41 {
			t.Errorf("the status counts %d messages to the worker for the burst and one more; want 41", p)
		}
		if entries := *last.GoEntries - *after.GoEntries; entries >= 20 {
			t.Errorf("a burst of 40 echoes made %d calls into Go; the C step should relay them", entries)
		}
	})

	t.Run("AccessLog", func(t *testing.T) {
		b, _ := os.ReadFile(filepath.Join(h.Dir, "access_log"))
		if !strings.Contains(string(b), `"GET /ws/echo HTTP/1.1" 101 `) {
			t.Errorf("no 101 in the access log:\n%s", b)
		}
	})
	if log := h.errorLog(); strings.Contains(log, "exit signal") {
		t.Errorf("a child died:\n%s", log)
	}
}

// wsBurst writes n text messages in one write, then one more, and expects
// their echoes, each once and in order. Through Apache the C step sends
// the messages one read brought to the worker in one write, and the shim
// holds an echo unflushed while the worker's next one is arriving
// (ws_write): the burst goes through both, and through mod_ssl's and
// mod_http2's filters with the buckets held.
func wsBurst(t *testing.T, c *wsClient, n int) {
	t.Helper()
	var burst []byte
	for i := range n {
		burst = append(burst, encodeFrame(0x80|opText, fmt.Appendf(nil, "burst %d", i), true)...)
	}
	c.mu.Lock()
	_, err := c.w.Write(burst)
	c.mu.Unlock()
	if err != nil {
		t.Fatalf("writing %d messages at once: %v", n, err)
	}
	for i := range n {
		c.expect(opText, fmt.Appendf(nil, "burst %d", i))
	}
	c.send(opText, []byte("after the burst"))
	c.expect(opText, []byte("after the burst"))
}

// examples/python/ws_echo.py through Apache under each MPM: messages of
// every kind, a subprotocol, its close with 4000, the client's close, a
// client that vanishes, invalid UTF-8; the worker prints each close.
func TestWebSocketEchoExampleThroughApache(t *testing.T) {
	w := startPyScript(t, "examples/python/ws_echo.py")
	closes := func(code int) int {
		return len(regexp.MustCompile(fmt.Sprintf(`(?m)^closed \S+ %d$`, code)).FindAllString(w.Output.String(), -1))
	}
	waitCloses := func(t *testing.T, code, n int) {
		t.Helper()
		checkFor(t, 10*time.Second, func() error {
			if got := closes(code); got != n {
				return fmt.Errorf("ws_echo.py printed %d closes with %d, want %d:\n%s", got, code, n, w.Output.String())
			}
			return nil
		})
	}
	for _, mpm := range []string{"event", "worker", "prefork"} {
		t.Run(mpm, func(t *testing.T) {
			h := startHTTPD(t, httpdParams{MPM: mpm, Extra: fmt.Sprintf(`	<Location /echo>
		SetHandler zmq
		ZmqBackend %s
		ZmqWebSocket on
	</Location>
`, w.Endpoint)})
			addr := fmt.Sprintf("127.0.0.1:%d", h.Port)
			c := mustOpen(t, addr, nil, "/echo", "Sec-WebSocket-Protocol: v2.echo, v1.echo")
			if p := c.Resp.Header.Get("Sec-WebSocket-Protocol"); p != "v2.echo" {
				t.Errorf("Sec-WebSocket-Protocol %q, want v2.echo", p)
			}
			big := make([]byte, 16<<20)
			rand.Read(big)
			for _, m := range []struct {
				op   byte
				data []byte
			}{{opText, []byte("hi")}, {opText, nil}, {opBinary, nil}, {opBinary, []byte{0, 0xff}}, {opBinary, big}} {
				c.send(m.op, m.data)
				c.expect(m.op, m.data)
			}
			n1000 := closes(1000)
			c.send(opClose, closePayload(1000, ""))
			c.expectClose(1000)
			c.expectEnd()
			waitCloses(t, 1000, n1000+1)

			n4000 := closes(4000)
			c = mustOpen(t, addr, nil, "/echo")
			c.send(opText, []byte("close"))
			c.expectClose(4000)
			c.send(opClose, closePayload(4000, ""))
			c.expectEnd()
			waitCloses(t, 4000, n4000+1)

			n1006 := closes(1006)
			c = mustOpen(t, addr, nil, "/echo")
			c.send(opText, []byte("x"))
			c.expect(opText, []byte("x"))
			c.close()
			waitCloses(t, 1006, n1006+1)

			n1007 := closes(1007)
			c = mustOpen(t, addr, nil, "/echo")
			c.send(opText, []byte{0xed, 0xa0, 0x80}) // a surrogate: not UTF-8
			c.expectClose(1007)
			c.expectEnd()
			waitCloses(t, 1007, n1007+1)
		})
	}
}

// A child that stops closes its open WebSockets with 1001 (MODZMQ0032)
// and the worker learns of it: after a graceful restart the client gets
// the close; on a stop, where httpd shuts the connections of busy threads
// itself, the worker still gets 1001, and the parent need not kill the
// child after its grace period.
func TestWebSocketsEndOnStop(t *testing.T) {
	w := startPyScript(t, "test/workers/ws_worker.py")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: wsLocations(w.Endpoint, w.Endpoint)})
	addr := fmt.Sprintf("127.0.0.1:%d", h.Port)
	c := mustOpen(t, addr, nil, "/ws/echo")
	c.send(opText, []byte("x"))
	c.expect(opText, []byte("x"))
	if out, err := h.ctl("graceful"); err != nil {
		t.Fatalf("graceful: %v %s", err, out)
	}
	c.expectClose(1001)
	c.send(opClose, closePayload(1001, ""))
	c.expectEnd()
	waitClosed(t, w, c.ConnID, 1001)
	if log := h.errorLog(); !strings.Contains(log, "MODZMQ0032") {
		t.Errorf("the error log does not say the WebSocket closed for the restart:\n%s", log)
	}

	var d *wsClient
	checkFor(t, 10*time.Second, func() error { // the new generation
		d = wsDial(t, addr, nil, "/ws/echo")
		if d.Resp.StatusCode != 101 {
			return fmt.Errorf("%s", d.Resp.Status)
		}
		return nil
	})
	d.send(opText, []byte("y"))
	d.expect(opText, []byte("y"))
	h.stop(t)
	waitClosed(t, w, d.ConnID, 1001)
	log := h.errorLog()
	for _, bad := range []string{"AH00045", "AH00046", "exit signal"} {
		if strings.Contains(log, bad) {
			t.Errorf("a child holding a WebSocket was killed (%s):\n%s", bad, log)
		}
	}
}

// A worker that closes an open WebSocket's connection, while its endpoint
// stays up (the watch's connection lives and, without heartbeats, no new
// epoch tells anyone):
// the client gets close 1011 as soon as the front reads the end, whether
// the C step or Go's holds the WebSocket, and the child spins on nothing.
func TestWebSocketConnectionClosedByWorker(t *testing.T) {
	w := zmqtest.StartRaw(t, nil, func(c net.Conn, req [][]byte) {
		switch {
		case bytes.Contains(req[6], []byte("websocket: 1\r\n")):
			c.Write(zmqtest.Message(req[0], nil, []byte("@accept"), nil))
		case string(req[3]) == "@text":
			c.Close()
		}
	})
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(
		"\t<Location /ws>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t\tZmqWebSocket on\n\t\tZmqHeartbeat off\n\t\tZmqStreamIdleTimeout 120\n\t</Location>\n", w.Endpoint)})
	h.expect(`MODZMQ0029: the WebSocket broke`)
	c := mustOpen(t, fmt.Sprintf("127.0.0.1:%d", h.Port), nil, "/ws/x")
	c.send(opText, []byte("bye"))
	// Without the end in view the WebSocket would wait for its first timer:
	// a ping at half of ZmqStreamIdleTimeout, a minute.
	c.patience = 20 * time.Second
	c.expectClose(1011)
}

// With ZmqCurve the worker's connection is the bridge's (CurveZMQ in Go),
// which the shim cannot poll: a pipe it can poll wakes it for each message.
func TestWebSocketsWithCurve(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755) // children run as the Apache User
	worker, bridgeKey := keygen(t, dir, "worker"), keygen(t, dir, "bridge")
	w := startPyScript(t, "test/workers/ws_worker.py", "--curve-secret", worker+".key_secret")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /ws>
		SetHandler zmq
		ZmqBackend %s
		ZmqCurve %s %s
		ZmqWebSocket on
	</Location>
`, w.Endpoint, worker+".key", bridgeKey+".key_secret")})
	addr := fmt.Sprintf("127.0.0.1:%d", h.Port)
	c := mustOpen(t, addr, nil, "/ws/hello")
	c.expect(opText, []byte("hello"))
	big := make([]byte, 1<<20)
	rand.Read(big)
	for i := range 20 {
		m := big[:i*50000]
		c.send(opBinary, m)
		c.expect(opBinary, m)
	}
	c.send(opText, []byte("close"))
	c.expectClose(4000, "bye")
	c.send(opClose, closePayload(4000, ""))
	c.expectEnd()

	d := mustOpen(t, addr, nil, "/ws/echo")
	d.send(opText, []byte("x"))
	d.expect(opText, []byte("x"))
	d.close()
	waitClosed(t, w, d.ConnID, 1006)
}

// wss:// through mod_ssl, and RFC 8441 over HTTP/2 on TLS (ALPN h2).
func TestWebSocketsOverTLS(t *testing.T) {
	w := startPyScript(t, "test/workers/ws_worker.py")
	tlsPort := freePort(t)
	startTLSHTTPD(t, httpdParams{MPM: "event"}, tlsPort, "", wsLocations(w.Endpoint, w.Endpoint))
	addr := fmt.Sprintf("127.0.0.1:%d", tlsPort)

	t.Run("HTTP1.1", func(t *testing.T) {
		c := mustOpen(t, addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}, "/ws/echo")
		big := make([]byte, 3<<20)
		rand.Read(big)
		for _, m := range [][]byte{[]byte("over TLS"), nil, big} {
			c.send(opBinary, m)
			c.expect(opBinary, m)
		}
		wsBurst(t, c, 40)
		c.send(opText, []byte{0xff})
		c.expectClose(1007)
		waitClosed(t, w, c.ConnID, 1007)
	})
	t.Run("HTTP2", func(t *testing.T) {
		conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatal(err)
		}
		if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
			t.Fatalf("ALPN chose %q", p)
		}
		testWebSocketOverHTTP2(t, conn, "https", addr, w)
	})
}

// RFC 8441 over cleartext HTTP/2 (h2c, prior knowledge).
func TestWebSocketsOverHTTP2(t *testing.T) {
	w := startPyScript(t, "test/workers/ws_worker.py")
	h := startHTTPD(t, httpdParams{MPM: "event",
		Global: "LoadModule http2_module /usr/lib/apache2/modules/mod_http2.so\nProtocols h2c http/1.1\nH2WebSockets on\n",
		Extra:  wsLocations(w.Endpoint, w.Endpoint)})
	addr := fmt.Sprintf("127.0.0.1:%d", h.Port)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	testWebSocketOverHTTP2(t, conn, "http", addr, w)
	b, _ := os.ReadFile(filepath.Join(h.Dir, "access_log"))
	if !strings.Contains(string(b), `"GET /ws/echo HTTP/2.0" 101 `) {
		t.Errorf("no 101 in the access log:\n%s", b)
	}
}

// testWebSocketOverHTTP2 runs WebSockets as extended CONNECT streams on
// one HTTP/2 connection: messages both ways (one larger than the stream
// windows), close both ways, a stream the client resets, invalid UTF-8.
func testWebSocketOverHTTP2(t *testing.T, conn net.Conn, scheme, authority string, w *worker) {
	hc := newH2Client(t, conn)
	open := func(path string, hdr ...string) *wsClient {
		t.Helper()
		c, status := hc.connect(scheme, authority, path, hdr...)
		if status != "200" {
			t.Fatalf("extended CONNECT %s: :status %s, want 200", path, status)
		}
		return c
	}
	t.Run("Messages", func(t *testing.T) {
		c := open("/ws/echo")
		big := make([]byte, 300000)
		rand.Read(big)
		for _, m := range []struct {
			op   byte
			data []byte
		}{{opText, []byte("over h2")}, {opBinary, nil}, {opBinary, big}, {opText, []byte("ok")}} {
			c.send(m.op, m.data)
			c.expect(m.op, m.data)
		}
		wsBurst(t, c, 40)
		c.send(opClose, closePayload(1000, "bye"))
		c.expectClose(1000, "bye")
		waitClosed(t, w, c.ConnID, 1000)
	})
	t.Run("WorkerCloses", func(t *testing.T) {
		c := open("/ws/echo")
		c.send(opText, []byte("close"))
		c.expectClose(4000, "bye")
		c.send(opClose, closePayload(4000, ""))
	})
	t.Run("CloseWithEndStream", func(t *testing.T) {
		// The close in a DATA frame that ends the client's stream (as
		// Chromium sends it) is answered.
		c := open("/ws/echo")
		c.closeAndEnd(1000)
		c.expectClose(1000)
		waitClosed(t, w, c.ConnID, 1000)
	})
	t.Run("StreamReset", func(t *testing.T) {
		c := open("/ws/echo")
		c.send(opText, []byte("a"))
		c.expect(opText, []byte("a"))
		c.close() // RST_STREAM
		waitClosed(t, w, c.ConnID, 1006)
	})
	t.Run("InvalidUTF8", func(t *testing.T) {
		c := open("/ws/echo")
		c.send(opText, []byte{0xc0, 0x80})
		c.expectClose(1007)
		waitClosed(t, w, c.ConnID, 1007)
	})
	t.Run("Refused", func(t *testing.T) {
		if _, status := hc.connect(scheme, authority, "/ws/refuse"); status != "403" {
			t.Errorf("a worker's refusal over HTTP/2: :status %s, want 403", status)
		}
		if _, status := hc.connect(scheme, authority, "/wsorigin/echo", "origin", "https://evil.example"); status != "403" {
			t.Errorf("an Origin not allowed over HTTP/2: :status %s, want 403", status)
		}
	})
}

// h2Client is an HTTP/2 client connection written with x/net/http2's
// Framer, so that it can send RFC 8441's extended CONNECT.
type h2Client struct {
	t     *testing.T
	conn  net.Conn
	fr    *http2.Framer
	wmu   sync.Mutex // guards fr's writes, enc
	enc   *hpack.Encoder
	ebuf  bytes.Buffer
	mu    sync.Mutex // guards what follows
	cond  *sync.Cond
	next  uint32
	win   int64 // the connection's send window
	init  int64 // the server's initial stream window
	conn8 bool  // SETTINGS_ENABLE_CONNECT_PROTOCOL
	set   bool  // its SETTINGS came
	strs  map[uint32]*h2Stream
	err   error
}

type h2Stream struct {
	id      uint32
	win     int64
	headers chan []hpack.HeaderField
	data    chan []byte
	ended   bool
}

func newH2Client(t *testing.T, conn net.Conn) *h2Client {
	t.Helper()
	t.Cleanup(func() { conn.Close() })
	hc := &h2Client{t: t, conn: conn, next: 1, win: 65535, init: 65535, strs: map[uint32]*h2Stream{}}
	hc.cond = sync.NewCond(&hc.mu)
	hc.enc = hpack.NewEncoder(&hc.ebuf)
	hc.fr = http2.NewFramer(conn, conn)
	hc.fr.ReadMetaHeaders = hpack.NewDecoder(65536, nil)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if hc.write(func() error {
		return hc.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	}) != nil || hc.write(func() error { return hc.fr.WriteWindowUpdate(0, 1<<24) }) != nil {
		t.Fatal(hc.err)
	}
	go hc.read()
	// Wake writers waiting for a window now and then, so they can give up.
	tick := time.NewTicker(100 * time.Millisecond)
	t.Cleanup(tick.Stop)
	go func() {
		for range tick.C {
			hc.mu.Lock()
			hc.cond.Broadcast()
			stop := hc.err != nil
			hc.mu.Unlock()
			if stop {
				return
			}
		}
	}()
	hc.mu.Lock()
	for !hc.set && hc.err == nil {
		hc.cond.Wait()
	}
	ok := hc.conn8
	hc.mu.Unlock()
	if !ok {
		t.Fatalf("the server's SETTINGS lack SETTINGS_ENABLE_CONNECT_PROTOCOL (H2WebSockets on): %v", hc.err)
	}
	return hc
}

// write writes frames; a failure ends the connection (hc.err), which the
// stream's reads and writes then report.
func (hc *h2Client) write(fn func() error) error {
	hc.wmu.Lock()
	defer hc.wmu.Unlock()
	hc.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	err := fn()
	if err != nil {
		hc.fail(fmt.Errorf("HTTP/2 write: %w", err))
	}
	return err
}

func (hc *h2Client) fail(err error) {
	hc.mu.Lock()
	if hc.err == nil {
		hc.err = err
	}
	for _, s := range hc.strs {
		if !s.ended {
			s.ended = true
			close(s.data)
		}
	}
	hc.cond.Broadcast()
	hc.mu.Unlock()
}

// read dispatches the server's frames, granting back the window of every
// DATA frame at once.
func (hc *h2Client) read() {
	for {
		f, err := hc.fr.ReadFrame()
		if err != nil {
			hc.fail(err)
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			hc.mu.Lock()
			f.ForeachSetting(func(s http2.Setting) error {
				switch s.ID {
				case 0x8:
					hc.conn8 = s.Val == 1
				case http2.SettingInitialWindowSize:
					hc.init = int64(s.Val)
				}
				return nil
			})
			hc.set = true
			hc.cond.Broadcast()
			hc.mu.Unlock()
			if hc.write(hc.fr.WriteSettingsAck) != nil {
				return
			}
		case *http2.WindowUpdateFrame:
			hc.mu.Lock()
			if f.StreamID == 0 {
				hc.win += int64(f.Increment)
			} else if s := hc.strs[f.StreamID]; s != nil {
				s.win += int64(f.Increment)
			}
			hc.cond.Broadcast()
			hc.mu.Unlock()
		case *http2.PingFrame:
			if !f.IsAck() {
				hc.write(func() error { return hc.fr.WritePing(true, f.Data) })
			}
		case *http2.MetaHeadersFrame:
			hc.mu.Lock()
			s := hc.strs[f.StreamID]
			hc.mu.Unlock()
			if s != nil {
				s.headers <- f.Fields
				if f.StreamEnded() {
					hc.end(s)
				}
			}
		case *http2.DataFrame:
			n := len(f.Data())
			hc.mu.Lock()
			s := hc.strs[f.StreamID]
			hc.mu.Unlock()
			hc.mu.Lock()
			if s != nil && s.ended {
				s = nil
			}
			hc.mu.Unlock()
			if s != nil && n > 0 {
				s.data <- append([]byte(nil), f.Data()...)
				hc.write(func() error { return hc.fr.WriteWindowUpdate(f.StreamID, uint32(n)) })
			}
			if n > 0 {
				hc.write(func() error { return hc.fr.WriteWindowUpdate(0, uint32(n)) })
			}
			if s != nil && f.StreamEnded() {
				hc.end(s)
			}
		case *http2.RSTStreamFrame:
			hc.mu.Lock()
			s := hc.strs[f.StreamID]
			hc.mu.Unlock()
			if s != nil {
				hc.end(s)
			}
		case *http2.GoAwayFrame:
			hc.fail(fmt.Errorf("GOAWAY %v", f.ErrCode))
			return
		}
	}
}

func (hc *h2Client) end(s *h2Stream) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if !s.ended {
		s.ended = true
		close(s.data)
	}
}

// connect sends an extended CONNECT (:protocol websocket) for path, with
// hdr as extra name, value pairs; it returns the WebSocket on the stream
// and the answer's :status.
func (hc *h2Client) connect(scheme, authority, path string, hdr ...string) (*wsClient, string) {
	t := hc.t
	t.Helper()
	hc.mu.Lock()
	s := &h2Stream{id: hc.next, win: hc.init, headers: make(chan []hpack.HeaderField, 2), data: make(chan []byte, 1024)}
	hc.next += 2
	hc.strs[s.id] = s
	hc.mu.Unlock()
	err := hc.write(func() error {
		hc.ebuf.Reset()
		for _, kv := range [][2]string{{":method", "CONNECT"}, {":protocol", "websocket"}, {":scheme", scheme},
			{":path", path}, {":authority", authority}, {"sec-websocket-version", "13"}} {
			hc.enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			hc.enc.WriteField(hpack.HeaderField{Name: hdr[i], Value: hdr[i+1]})
		}
		return hc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: s.id, BlockFragment: hc.ebuf.Bytes(), EndHeaders: true})
	})
	if err != nil {
		t.Fatal(err)
	}
	var fields []hpack.HeaderField
	select {
	case fields = <-s.headers:
	case <-time.After(30 * time.Second):
		t.Fatalf("no answer to the extended CONNECT for %s (%v)", path, hc.err)
	}
	status, id := "", ""
	for _, f := range fields {
		switch f.Name {
		case ":status":
			status = f.Value
		case "x-connection-id":
			id = f.Value
		}
	}
	sr := &h2Reader{s: s}
	c := &wsClient{t: t, r: bufio.NewReaderSize(sr, 1<<16), w: &h2Writer{hc: hc, s: s}, ConnID: id,
		close: func() {
			hc.write(func() error { return hc.fr.WriteRSTStream(s.id, http2.ErrCodeCancel) })
		},
		expire: func(d time.Duration) { sr.deadline = time.Now().Add(d) },
		end: func(last []byte) error { // one DATA frame with END_STREAM
			return hc.write(func() error { return hc.fr.WriteData(s.id, true, last) })
		}}
	return c, status
}

// h2Reader reads a stream's DATA.
type h2Reader struct {
	s        *h2Stream
	buf      []byte
	deadline time.Time
}

func (r *h2Reader) Read(p []byte) (int, error) {
	if len(r.buf) == 0 {
		wait := time.Until(r.deadline)
		if r.deadline.IsZero() {
			wait = time.Minute
		}
		select {
		case b, ok := <-r.s.data:
			if !ok {
				return 0, io.EOF
			}
			r.buf = b
		case <-time.After(wait):
			return 0, errors.New("read timeout")
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// h2Writer sends DATA within the connection's and the stream's windows.
type h2Writer struct {
	hc *h2Client
	s  *h2Stream
}

func (w *h2Writer) Write(p []byte) (int, error) {
	hc, total := w.hc, len(p)
	for len(p) > 0 {
		hc.mu.Lock()
		deadline := time.Now().Add(30 * time.Second)
		for (hc.win <= 0 || w.s.win <= 0) && hc.err == nil && time.Now().Before(deadline) {
			hc.cond.Wait()
		}
		if hc.err != nil || hc.win <= 0 || w.s.win <= 0 {
			hc.mu.Unlock()
			return total - len(p), fmt.Errorf("no window to send in: %v", hc.err)
		}
		n := int64(min(len(p), 16384))
		n = min(n, hc.win, w.s.win)
		hc.win -= n
		w.s.win -= n
		hc.mu.Unlock()
		chunk := p[:n]
		if err := hc.write(func() error { return hc.fr.WriteData(w.s.id, false, chunk) }); err != nil {
			return total - len(p), err
		}
		p = p[n:]
	}
	return total, nil
}

// wsPage opens a WebSocket to ?path on its own origin (wss: when the page
// came over https:), sends a text and a binary message, checks their
// echoes, closes with 1000, and reports what happened as the query of a
// request to /result once the WebSocket closed.
const wsPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>mod_zmq WebSocket</title></head>
<body>
<pre id="log"></pre>
<pre id="state">waiting</pre>
<script>
const log = (s) => { document.getElementById('log').textContent += s + ' '; };
const path = new URLSearchParams(location.search).get('path');
const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + path, ['echo']);
ws.binaryType = 'arraybuffer';
ws.onopen = () => { log('open:' + ws.protocol); ws.send('héllo'); };
ws.onmessage = (e) => {
	if (typeof e.data === 'string') {
		log('text:' + e.data);
		ws.send(new Uint8Array([1, 2, 3, 250]));
	} else {
		log('binary:' + Array.from(new Uint8Array(e.data)).join(','));
		ws.close(1000, 'bye');
	}
};
ws.onerror = () => log('error');
ws.onclose = (e) => {
	log('close:' + e.code);
	document.getElementById('state').textContent = 'done';
	fetch('/result?' + encodeURIComponent(path + ' ' + document.getElementById('log').textContent.trim()));
};
</script>
</body></html>
`

// WebSockets from headless Chromium through Apache over TLS, the page
// served by Apache on the same origin with HTTP/2 (ALPN h2), where
// Chromium opens its WebSocket as an RFC 8441 stream when the server
// allows (H2WebSockets on): text and binary echoed, its Origin allowed by
// ZmqWebSocketOrigins, and refused (403) by a location that lists another.
func TestWebSocketsInChromium(t *testing.T) {
	bin := requireChromium(t)
	dir, err := os.MkdirTemp("", "modzmq-ws-page-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	if err := os.WriteFile(filepath.Join(dir, "page.html"), []byte(wsPage), 0o644); err != nil {
		t.Fatal(err)
	}
	w := startPyScript(t, "examples/python/ws_echo.py")
	tlsPort := freePort(t)
	mods := "/usr/lib/apache2/modules"
	origin := fmt.Sprintf("https://127.0.0.1:%d", tlsPort)
	h, _ := startTLSHTTPD(t, httpdParams{MPM: "event"}, tlsPort, fmt.Sprintf(`LoadModule alias_module %[1]s/mod_alias.so
LoadModule mime_module %[1]s/mod_mime.so
TypesConfig /dev/null
AddType text/html .html
`, mods), fmt.Sprintf(`	Alias /page %[1]s/page.html
	<Directory %[1]s>
		Require all granted
	</Directory>
	<Location /ws>
		SetHandler zmq
		ZmqBackend %[2]s
		ZmqWebSocket on
		ZmqWebSocketOrigins %[3]s
	</Location>
	<Location /elsewhere>
		SetHandler zmq
		ZmqBackend %[2]s
		ZmqWebSocket on
		ZmqWebSocketOrigins https://example.com
	</Location>
`, dir, w.Endpoint, origin))

	// browse loads the page in headless Chromium and returns what it
	// reported (the access log's /result request), then stops Chromium.
	browse := func(path string) string {
		t.Helper()
		cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu",
			"--user-data-dir="+t.TempDir(), "--no-first-run", "--no-default-browser-check",
			"--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--disable-extensions", "--disable-default-apps", "--no-proxy-server", "--ignore-certificate-errors",
			"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--remote-debugging-port=0",
			origin+"/page?path="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		stderr := &syncBuffer{}
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			cmd.Wait()
		}()
		re := regexp.MustCompile(`"GET /result\?(\S*) HTTP`)
		var got string
		checkFor(t, 60*time.Second, func() error {
			for _, m := range re.FindAllStringSubmatch(readFile(filepath.Join(h.Dir, "access_log")), -1) {
				if r, err := url.QueryUnescape(m[1]); err == nil && strings.Contains(r, path) {
					got = strings.TrimSpace(strings.TrimPrefix(r, path))
					return nil
				}
			}
			return fmt.Errorf("no result from the page for %s\nstderr (last 2000 bytes):\n%s", path, tail(stderr.String(), 2000))
		})
		return got
	}

	if got, want := browse("/ws/echo"), "open:echo text:héllo binary:1,2,3,250 close:1000"; got != want {
		t.Errorf("the page's WebSocket: %q, want %q\naccess_log:\n%s", got, want, readFile(filepath.Join(h.Dir, "access_log")))
	}
	checkFor(t, 10*time.Second, func() error {
		if !strings.Contains(w.Output.String(), " 1000\n") {
			return fmt.Errorf("ws_echo.py did not print the close:\n%s", w.Output.String())
		}
		return nil
	})
	access := readFile(filepath.Join(h.Dir, "access_log"))
	t.Logf("access_log:\n%s", access)
	if !strings.Contains(access, `"GET /ws/echo HTTP/2.0" 101 `) {
		t.Errorf("Chromium did not open its WebSocket over HTTP/2 (RFC 8441):\n%s", access)
	}
	if got := browse("/elsewhere/echo"); !strings.HasPrefix(got, "error") || !strings.Contains(got, "close:1006") || strings.Contains(got, "open") {
		t.Errorf("a WebSocket from an Origin not allowed: %q, want an error and close 1006 without open", got)
	}
	if access := readFile(filepath.Join(h.Dir, "access_log")); !strings.Contains(access, `"GET /elsewhere/echo HTTP/2.0" 403 `) {
		t.Errorf("no 403 for the Origin not allowed:\n%s", access)
	}
}

// The WebSocket directives in configtest: what they take, and what they
// refuse with a message that says what was expected.
func TestConfigtestWebSocketDirectives(t *testing.T) {
	for _, body := range []string{
		"ZmqBackend tcp://h:1\nZmqWebSocket on\nZmqWebSocketMaxMessage 1\nZmqWebSocketOrigins https://a.example http://b.example:8080",
		"ZmqBackend tcp://h:1\nZmqWebSocket off\nZmqWebSocketMaxMessage 1073741824\nZmqWebSocketOrigins *",
	} {
		if out, err := configtest(t, "", body); err != nil || !strings.Contains(out, "Syntax OK") {
			t.Errorf("%q: %v\n%s", body, err, out)
		}
	}
	for _, tt := range []struct{ body, want string }{
		{"ZmqWebSocket maybe", "must be On or Off"},
		{"ZmqWebSocketMaxMessage 0", "expected a number of bytes from 1 to 1073741824"},
		{"ZmqWebSocketMaxMessage 2G", "expected a number of bytes from 1 to 1073741824"},
		{"ZmqWebSocketMaxMessage 1073741825", "expected a number of bytes from 1 to 1073741824"},
		{"ZmqWebSocketOrigins", "needs at least one origin"},
		{"ZmqWebSocketOrigins example.com", "an origin is scheme://host[:port]"},
		{"ZmqWebSocketOrigins * https://a.example", "or * alone for any"},
	} {
		out, err := configtest(t, "", tt.body)
		if err == nil || !strings.Contains(out, tt.want) {
			t.Errorf("%q: exit %v, output lacks %q:\n%s", tt.body, err, tt.want, out)
		}
	}
}

// The Python (websockets) and Node.js (ws) clients of the gateway's tests
// (gwPythonClient, gwNodeClient), through Apache to ws_echo.py over ws://
// and over wss:// (mod_ssl; each client trusts the test's certificate):
// every message kind, empty and 16 MiB messages, a fragmented message with
// pings between the fragments, the worker's close (4000), the client's
// (1000) and an oversized message (1009).
func TestWebSocketsPythonAndNodeClientsThroughApache(t *testing.T) {
	echo := startPyScript(t, "examples/python/ws_echo.py")
	tlsPort := freePort(t)
	locations := fmt.Sprintf(`	<Location /ws>
		SetHandler zmq
		ZmqBackend %[1]s
		ZmqWebSocket on
	</Location>
	<Location /small>
		SetHandler zmq
		ZmqBackend %[1]s
		ZmqWebSocket on
		ZmqWebSocketMaxMessage 1000
	</Location>
`, echo.Endpoint)
	h, cert := startTLSHTTPD(t, httpdParams{MPM: "event", Extra: locations}, tlsPort, "", locations)
	dir := t.TempDir()
	want := "ok echo\nok fragmented\nclosed by the worker 4000\nclosed by the client 1000\noversized 1009\n"
	for _, base := range []string{fmt.Sprintf("ws://127.0.0.1:%d", h.Port), fmt.Sprintf("wss://127.0.0.1:%d", tlsPort)} {
		for _, client := range []struct {
			name, file, source string
			cmd                func(file string) *exec.Cmd
		}{
			{"python websockets", "client.py", gwPythonClient, func(f string) *exec.Cmd {
				cmd := exec.Command(python, f, base)
				cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+cert)
				return cmd
			}},
			{"node ws", "client.js", gwNodeClient, func(f string) *exec.Cmd {
				cmd := exec.Command("node", f, base)
				cmd.Env = append(os.Environ(), "NODE_PATH="+filepath.Join(root, "test", "node", "node_modules"),
					"NODE_EXTRA_CA_CERTS="+cert)
				return cmd
			}},
		} {
			t.Run(client.name+" "+base[:strings.Index(base, ":")], func(t *testing.T) {
				f := filepath.Join(dir, client.file)
				if err := os.WriteFile(f, []byte(client.source), 0o644); err != nil {
					t.Fatal(err)
				}
				before := gwCloses(echo)
				cmd := client.cmd(f)
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				timer := time.AfterFunc(120*time.Second, func() { cmd.Process.Kill() })
				out, err := cmd.Output()
				timer.Stop()
				if err != nil || string(out) != want {
					t.Fatalf("%s: %v\n%s\nstderr:\n%s\nwant:\n%s", client.name, err, out, stderr.String(), want)
				}
				gwExpectClose(t, echo, before, 1000)
				gwExpectClose(t, echo, before, 1009)
			})
		}
	}
}
