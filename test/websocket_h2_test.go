package test

import (
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"
)

// WebSockets over HTTP/2 through Apache (RFC 8441, H2WebSockets on), on
// cleartext h2c and on TLS: the large, fragmented, oversized and broken
// messages and the lost worker of the HTTP/1.1 test, with the same bodies
// (the helpers below take a way to open a WebSocket). Over HTTP/2 the
// client's RFC 6455 frames, masked, travel in the DATA frames of the
// extended CONNECT's stream, and the server's come back in its response.

// wsOpen opens a WebSocket on path, which the front must accept.
type wsOpen func(t *testing.T, path string) *wsClient

// wsEchoBig sends a 16 MiB binary message (the largest the location takes
// by default) and expects it back whole.
func wsEchoBig(t *testing.T, c *wsClient) {
	t.Helper()
	big := make([]byte, 16<<20)
	rand.Read(big)
	c.send(opBinary, big)
	c.expect(opBinary, big)
}

// wsFragmentsWithPing sends a text message in three fragments with a ping
// between the first two: the ping is answered, and the worker gets (and
// echoes) one message.
func wsFragmentsWithPing(t *testing.T, c *wsClient) {
	t.Helper()
	var pong []byte
	c.extra = func(op byte, p []byte) {
		if op == opPong {
			pong = p
		}
	}
	defer func() { c.extra = nil }()
	c.frame(opText, []byte("frag"), true)
	c.frame(0x80|opPing, []byte("ping!"), true)
	c.frame(opCont, []byte("men"), true)
	c.frame(0x80|opCont, []byte("ted"), true)
	c.expect(opText, []byte("fragmented"))
	if string(pong) != "ping!" {
		t.Errorf("the ping between fragments got pong %q", pong)
	}
}

// wsProtocolErrorCases are client messages the front closes a WebSocket
// for, on the locations of wsLocations, with the close code each gets.
var wsProtocolErrorCases = []struct {
	name string
	path string
	send func(c *wsClient)
	code int
}{
	{"InvalidUTF8", "/ws/echo", func(c *wsClient) { c.send(opText, []byte{'a', 0xff, 0xfe}) }, 1007},
	{"InvalidUTF8Fragment", "/ws/echo", func(c *wsClient) {
		c.frame(opText, []byte("ok"), true)
		c.frame(0x80|opCont, []byte{0xc3, 0x28}, true)
	}, 1007},
	{"TooBig", "/wssmall/echo", func(c *wsClient) { c.send(opBinary, make([]byte, 1025)) }, 1009},
	{"TooBigInFragments", "/wssmall/echo", func(c *wsClient) {
		c.frame(opBinary, make([]byte, 1000), true)
		c.frame(0x80|opCont, make([]byte, 25), true)
	}, 1009},
	{"TooBigNested", "/ws/small/echo", func(c *wsClient) { c.send(opText, make([]byte, 101)) }, 1009},
	{"Unmasked", "/ws/echo", func(c *wsClient) { c.frame(0x80|opText, []byte("plain"), false) }, 1002},
	{"ReservedBits", "/ws/echo", func(c *wsClient) { c.frame(0x80|0x40|opText, []byte("rsv"), true) }, 1002},
	{"UnknownOpcode", "/ws/echo", func(c *wsClient) { c.frame(0x80|0x3, []byte("?"), true) }, 1002},
	{"LongPing", "/ws/echo", func(c *wsClient) { c.send(opPing, make([]byte, 126)) }, 1002},
	{"ContinuationFirst", "/ws/echo", func(c *wsClient) { c.frame(0x80|opCont, []byte("x"), true) }, 1002},
	{"FragmentedPing", "/ws/echo", func(c *wsClient) { c.frame(opPing, []byte("p"), true) }, 1002},
	{"TextInsideText", "/ws/echo", func(c *wsClient) {
		c.frame(opText, []byte("a"), true)
		c.frame(0x80|opText, []byte("b"), true)
	}, 1002},
}

// testWSProtocolErrors runs wsProtocolErrorCases, each on a WebSocket of
// its own: the client gets the close with the case's code and then the
// end of the connection (HTTP/2: of the stream), the worker w is told the
// same code, and h logs MODZMQ0030.
func testWSProtocolErrors(t *testing.T, h *httpd, open wsOpen, w *worker) {
	for _, tc := range wsProtocolErrorCases {
		t.Run(tc.name, func(t *testing.T) {
			c := open(t, tc.path)
			tc.send(c)
			c.expectClose(tc.code)
			c.expectEnd()
			waitClosed(t, w, c.ConnID, tc.code)
		})
	}
	if !strings.Contains(h.errorLog(), "MODZMQ0030") {
		t.Errorf("no MODZMQ0030 in the error log:\n%s", h.errorLog())
	}
}

// testWSWorkerKilled opens a WebSocket on /wskill/echo, whose worker is
// killed, then kills it: the client gets close 1011 and the end, h logs
// MODZMQ0029, and a WebSocket to another worker (/ws/echo) opened after
// it works.
func testWSWorkerKilled(t *testing.T, h *httpd, open wsOpen, killed *worker) {
	t.Helper()
	h.expect(`MODZMQ0029`)
	h.expect(`MODZMQ0121: ` + regexp.QuoteMeta(killed.Endpoint))
	// The watch may be connecting again as the worker dies: the
	// connection is reset during its handshake.
	h.expect(`MODZMQ0123: ` + regexp.QuoteMeta(killed.Endpoint) + `: ZMTP handshake failed: .*connection reset by peer`)
	c := open(t, "/wskill/echo")
	c.send(opText, []byte("one"))
	c.expect(opText, []byte("one"))
	killed.cmd.Process.Kill()
	c.expectClose(1011)
	c.expectEnd()
	checkFor(t, 10*time.Second, func() error {
		if !strings.Contains(h.errorLog(), "MODZMQ0029") {
			return fmt.Errorf("no MODZMQ0029 for the lost worker:\n%s", h.errorLog())
		}
		return nil
	})
	// Others go on.
	d := open(t, "/ws/echo")
	d.send(opText, []byte("two"))
	d.expect(opText, []byte("two"))
}

// Over HTTP/2, cleartext (h2c, prior knowledge) and TLS (ALPN h2), each on
// one HTTP/2 connection: a 16 MiB message each way, a fragmented message
// with a ping between its fragments, every client protocol error of the
// HTTP/1.1 test (oversized: 1009; unmasked and other broken frames: 1002;
// invalid UTF-8: 1007), each closing its own stream only, and a worker
// killed while a WebSocket is open (close 1011, MODZMQ0029), after which
// a new WebSocket on the same HTTP/2 connection, so in the same Apache
// child, still works; no child dies.
func TestWebSocketsOverHTTP2Limits(t *testing.T) {
	w := startPyScript(t, "test/workers/ws_worker.py")
	killedH2C := startPyScript(t, "test/workers/ws_worker.py")
	killedTLS := startPyScript(t, "test/workers/ws_worker.py")
	tlsPort := freePort(t)
	h, _ := startTLSHTTPD(t, httpdParams{MPM: "event", Extra: wsLocations(w.Endpoint, killedH2C.Endpoint)}, tlsPort,
		"Protocols h2c http/1.1\nH2WebSockets on\n", wsLocations(w.Endpoint, killedTLS.Endpoint))

	for _, tc := range []struct {
		name, scheme, addr string
		killed             *worker
		dial               func(t *testing.T, addr string) net.Conn
	}{
		{"h2c", "http", fmt.Sprintf("127.0.0.1:%d", h.Port), killedH2C, func(t *testing.T, addr string) net.Conn {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			return conn
		}},
		{"TLS", "https", fmt.Sprintf("127.0.0.1:%d", tlsPort), killedTLS, func(t *testing.T, addr string) net.Conn {
			conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
			if err != nil {
				t.Fatal(err)
			}
			if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
				t.Fatalf("ALPN chose %q", p)
			}
			return conn
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hc := newH2Client(t, tc.dial(t, tc.addr))
			open := func(t *testing.T, path string) *wsClient {
				t.Helper()
				c, status := hc.connect(tc.scheme, tc.addr, path)
				if status != "200" {
					t.Fatalf("extended CONNECT %s: :status %s, want 200", path, status)
				}
				c.t = t
				return c
			}
			t.Run("Messages", func(t *testing.T) {
				c := open(t, "/ws/echo")
				c.send(opText, []byte("before"))
				c.expect(opText, []byte("before"))
				wsEchoBig(t, c)
				wsFragmentsWithPing(t, c)
				c.send(opText, []byte("after"))
				c.expect(opText, []byte("after"))
				c.send(opClose, closePayload(1000, "done"))
				c.expectClose(1000, "done")
				c.expectEnd()
				waitClosed(t, w, c.ConnID, 1000)
			})
			t.Run("ClientProtocolErrors", func(t *testing.T) { testWSProtocolErrors(t, h, open, w) })
			t.Run("WorkerKilled", func(t *testing.T) { testWSWorkerKilled(t, h, open, tc.killed) })
		})
	}
	if log := h.errorLog(); strings.Contains(log, "exit signal") {
		t.Errorf("a child died:\n%s", log)
	}
}
