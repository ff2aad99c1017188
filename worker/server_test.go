package worker

import (
	"bytes"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
	zmq "github.com/pebbe/zmq4"
)

// waitFor polls cond for up to 10 s (a bound on a hang, not a timing).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("still waiting for %s", what)
		}
	}
}

// echoServer serves an echo of every message and records the connections
// it saw and those that ended.
type echoServer struct {
	*Server
	log   *zmqtest.Buffer
	mu    sync.Mutex
	seen  map[*Conn]int
	ended map[*Conn]bool
}

func startEcho(t *testing.T, opts Options) *echoServer {
	return startEchoAt(t, "tcp://127.0.0.1:0", opts)
}

func startEchoAt(t *testing.T, endpoint string, opts Options) *echoServer {
	e := &echoServer{log: &zmqtest.Buffer{}, seen: map[*Conn]int{}, ended: map[*Conn]bool{}}
	opts.ErrorLog = log.New(e.log, "", 0)
	srv, err := Listen(endpoint, HandlerFunc(func(c *Conn, msg [][]byte) {
		e.mu.Lock()
		if msg == nil {
			e.ended[c] = true
		} else {
			e.seen[c]++
		}
		e.mu.Unlock()
		if msg != nil {
			c.Send(msg...)
		}
	}), &opts)
	if err != nil {
		t.Fatal(err)
	}
	e.Server = srv
	serveInTest(t, srv)
	return e
}

// serveInTest serves srv until the test ends, then closes it and checks
// that Serve returned nil.
func serveInTest(t *testing.T, srv *Server) {
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

func (e *echoServer) endpoint() string { return "tcp://" + e.Addr().String() }

func (e *echoServer) conns() (seen, ended int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.seen), len(e.ended)
}

func dealer(t *testing.T, endpoint string, heartbeat time.Duration) *zmq.Socket {
	s, err := zmq.NewSocket(zmq.DEALER)
	if err != nil {
		t.Fatal(err)
	}
	s.SetLinger(0)
	s.SetRcvtimeo(10 * time.Second)
	if heartbeat > 0 {
		s.SetHeartbeatIvl(heartbeat)
		s.SetHeartbeatTimeout(5 * heartbeat)
	}
	if err := s.Connect(endpoint); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// libzmq DEALERs, as the fronts' ZMTP is libzmq's: messages of every size
// both ways, in order, each back on the connection it came from.
func TestEchoWithLibzmq(t *testing.T) {
	e := startEcho(t, Options{})
	a, b := dealer(t, e.endpoint(), 0), dealer(t, e.endpoint(), 0)
	sizes := []int{0, 1, 255, 256, 64 << 10, 16 << 20}
	for _, s := range []*zmq.Socket{a, b} {
		for i, n := range sizes {
			body := bytes.Repeat([]byte{byte('a' + i)}, n)
			if _, err := s.SendMessage("", "MZMQ/1", body); err != nil {
				t.Fatal(err)
			}
		}
	}
	for k, s := range []*zmq.Socket{a, b} {
		for i, n := range sizes {
			msg, err := s.RecvMessageBytes(0)
			if err != nil {
				t.Fatalf("dealer %d, message %d: %v", k, i, err)
			}
			if len(msg) != 3 || len(msg[0]) != 0 || string(msg[1]) != "MZMQ/1" ||
				!bytes.Equal(msg[2], bytes.Repeat([]byte{byte('a' + i)}, n)) {
				t.Fatalf("dealer %d, message %d: %d frames back, last of %d bytes", k, i, len(msg), len(msg[len(msg)-1]))
			}
		}
	}
	if seen, _ := e.conns(); seen != 2 {
		t.Fatalf("%d connections seen; want 2", seen)
	}
}

// The server answers libzmq's heartbeats: a DEALER that pings every 20 ms
// and gives up after 100 ms without an answer keeps its one connection.
func TestHeartbeatsKeepTheConnection(t *testing.T) {
	e := startEcho(t, Options{})
	d := dealer(t, e.endpoint(), 20*time.Millisecond)
	for i := 0; i < 3; i++ {
		if _, err := d.SendMessage("", "ping", i); err != nil {
			t.Fatal(err)
		}
		if _, err := d.RecvMessageBytes(0); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // three heartbeat timeouts
	}
	if seen, ended := e.conns(); seen != 1 || ended != 0 {
		t.Fatalf("%d connections seen, %d ended; want 1 and 0 (a PONG missing makes libzmq reconnect)", seen, ended)
	}
}

// rawPeer connects a TCP peer that the test writes every byte of.
func rawPeer(t *testing.T, e *echoServer) net.Conn {
	nc, err := net.Dial("tcp", e.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// closedByServer reads what the server sends until it closes.
func closedByServer(t *testing.T, nc net.Conn) []byte {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(nc)
	if err != nil {
		t.Fatalf("the server did not close the connection: %v", err)
	}
	return b
}

// Peers that are not fronts, or break ZMTP, lose their connection with a
// logged code; the server goes on serving.
func TestHostilePeers(t *testing.T) {
	e := startEcho(t, Options{HandshakeTimeout: 200 * time.Millisecond, MaxMessage: 1 << 20})
	hello := zmqtest.ZMTPPeerHello()
	curve := append([]byte{}, hello[:64]...)
	copy(curve[12:32], "CURVE\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")
	pub := append(append([]byte{}, hello[:64]...), zmqtest.Frame(4, append([]byte("\x05READY"), zmqtest.Property("Socket-Type", []byte("PUB"))...))...)
	cases := []struct {
		name, send, code, says string
	}{
		{"http", "GET / HTTP/1.1\r\nHost: x\r\n\r\n" + strings.Repeat("x", 64), "MODZMQ0501", "no ZMTP greeting"},
		{"silent", "", "MODZMQ0501", "i/o timeout"},
		{"curve", string(curve), "MODZMQ0501", `mechanism "CURVE"`},
		{"pub", string(pub), "MODZMQ0501", `"PUB" socket`},
		{"READY past 64 KiB", string(hello[:64]) + string(zmqtest.FrameHeader(6, 1<<20)) + strings.Repeat("x", 70<<10), "MODZMQ0501", "READY runs past"},
		{"message before READY", string(hello[:64]) + string(zmqtest.Frame(0, []byte("x"))), "MODZMQ0501", "before READY"},
		{"claim over the limit", string(hello) + string(zmqtest.FrameHeader(2, 1<<40)), "MODZMQ0502", "size limit"},
		{"too many frames", string(hello) + strings.Repeat("\x01\x00", 17), "MODZMQ0502", "frame limit"},
		{"broken command", string(hello) + "\x04\x02\x05E", "MODZMQ0502", "name runs past"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			nc := rawPeer(t, e)
			nc.Write([]byte(c.send))
			got := closedByServer(t, nc)
			if !bytes.HasPrefix(got, greeting[:10]) {
				t.Errorf("the server sent %q first; want its greeting", got)
			}
			waitFor(t, c.code+" in the log", func() bool {
				return strings.Contains(e.log.String(), c.code) && strings.Contains(e.log.String(), c.says)
			})
		})
	}
	// A port probe (connect, close) is no error: nothing logged for it.
	before := e.log.String()
	rawPeer(t, e).Close()
	waitFor(t, "the probe's connection to end", func() bool { return e.Open() == 0 })
	if after := e.log.String(); after != before {
		t.Errorf("a port probe was logged: %q", after[len(before):])
	}
	// After all of them, a front is served, and nothing is left open but it.
	d := dealer(t, e.endpoint(), 0)
	d.SendMessage("", "still here")
	if msg, err := d.RecvMessage(0); err != nil || msg[1] != "still here" {
		t.Fatalf("after the hostile peers: %q, %v", msg, err)
	}
	waitFor(t, "only the DEALER's connection open", func() bool { return e.Open() == 1 })
	if seen, _ := e.conns(); seen != 1 {
		t.Fatalf("the handler saw %d connections; want only the DEALER's", seen)
	}
}

// A peer whose first bytes show it is no ZMTP 3 front is refused when they
// arrive, not at the handshake timeout (an hour here): an HTTP request
// shorter than a greeting, a ZMTP 2.0 peer's 12 bytes, a mechanism other
// than NULL with the greeting's last 32 bytes still to come.
func TestRefusedOnTheGreetingsFirstBytes(t *testing.T) {
	e := startEcho(t, Options{HandshakeTimeout: time.Hour})
	sig := "\xff\x00\x00\x00\x00\x00\x00\x00\x00\x7f"
	curve := string(zmqtest.ZMTPPeerHello()[:32])
	curve = curve[:12] + "CURVE" + strings.Repeat("\x00", 15)
	cases := []struct{ name, send, says string }{
		{"short http", "GET / HTTP/1.0\r\n\r\n", "no ZMTP greeting"},
		{"a lone byte", "\x16", "no ZMTP greeting"},
		{"zmtp 2.0", sig + "\x01\x05", "ZMTP 2.0"},
		{"revision 0", sig + "\x00", "ZMTP revision 0"},
		{"curve, half a greeting", curve, `mechanism "CURVE"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			nc := rawPeer(t, e)
			nc.Write([]byte(c.send))
			closedByServer(t, nc)
			waitFor(t, "MODZMQ0501 in the log", func() bool {
				return strings.Contains(e.log.String(), "MODZMQ0501") && strings.Contains(e.log.String(), c.says)
			})
		})
	}
}

// A front that stops reading while the worker sends loses its connection
// once a write has waited WriteTimeout; the handler learns of it.
func TestFrontThatTakesNothing(t *testing.T) {
	var mu sync.Mutex
	var sendErr error
	logs := &zmqtest.Buffer{}
	srv, err := Listen("tcp://127.0.0.1:0", HandlerFunc(func(c *Conn, msg [][]byte) {
		if msg == nil {
			return
		}
		big := make([]byte, 1<<20)
		for {
			if err := c.Send(big); err != nil {
				mu.Lock()
				sendErr = err
				mu.Unlock()
				return
			}
		}
	}), &Options{WriteTimeout: 200 * time.Millisecond, ErrorLog: log.New(logs, "", 0)})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	defer srv.Close()
	nc, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.Write(append(zmqtest.ZMTPPeerHello(), zmqtest.Message([]byte("go"))...))
	// The test reads nothing more.
	waitFor(t, "the send to fail", func() bool { mu.Lock(); defer mu.Unlock(); return sendErr != nil })
	waitFor(t, "MODZMQ0503", func() bool { return strings.Contains(logs.String(), "MODZMQ0503") })
	waitFor(t, "the connection to end", func() bool { return srv.Open() == 0 })
}

// Sends from another goroutine reach the front while the connection waits
// for messages; after the front leaves they fail, and the handler got its
// nil message.
func TestSendFromAnotherGoroutine(t *testing.T) {
	conns := make(chan *Conn, 1)
	ended := make(chan *Conn, 1)
	srv, err := Listen("tcp://127.0.0.1:0", HandlerFunc(func(c *Conn, msg [][]byte) {
		if msg == nil {
			ended <- c
			return
		}
		conns <- c
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	defer srv.Close()
	d := dealer(t, "tcp://"+srv.Addr().String(), 0)
	d.SendMessage("", "subscribe")
	c := <-conns
	for i := 0; i < 3; i++ {
		if err := c.SendMessage([][]byte{{}}, []byte("event")); err != nil {
			t.Fatal(err)
		}
		if msg, err := d.RecvMessage(0); err != nil || len(msg) != 2 || msg[1] != "event" {
			t.Fatalf("event %d: %q, %v", i, msg, err)
		}
	}
	d.Close()
	if got := <-ended; got != c {
		t.Fatal("the nil message came for another connection")
	}
	<-c.Done()
	if err := c.Send([]byte("late")); err != ErrClosed {
		t.Fatalf("Send after the front left: %v; want ErrClosed", err)
	}
}

// ping is a PING command with a TTL of ttl deciseconds.
func ping(ttl uint16) []byte {
	return zmqtest.Frame(4, []byte{4, 'P', 'I', 'N', 'G', byte(ttl >> 8), byte(ttl)})
}

// A front whose PING set a TTL and that then sends nothing loses its
// connection, as libzmq drops it (a front that hangs, or a host that went
// away without a word): logged, and the handler gets its nil message.
func TestPingTTLEndsASilentFront(t *testing.T) {
	e := startEcho(t, Options{})
	nc := rawPeer(t, e)
	nc.Write(append(append(zmqtest.ZMTPPeerHello(), zmqtest.Message([]byte("hi"))...), ping(1)...))
	closedByServer(t, nc)
	waitFor(t, "MODZMQ0505 in the log", func() bool {
		return strings.Contains(e.log.String(), "MODZMQ0505") && strings.Contains(e.log.String(), "TTL")
	})
	waitFor(t, "the nil message", func() bool { _, ended := e.conns(); return ended == 1 })
}

// A libzmq DEALER that pings with a TTL keeps its connection while it
// lives, however long it sends no message.
func TestPingTTLKeepsALiveFront(t *testing.T) {
	e := startEcho(t, Options{})
	d, err := zmq.NewSocket(zmq.DEALER)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.SetLinger(0)
	d.SetRcvtimeo(10 * time.Second)
	d.SetHeartbeatIvl(20 * time.Millisecond)
	d.SetHeartbeatTimeout(2 * time.Second)
	d.SetHeartbeatTtl(time.Second)
	if err := d.Connect(e.endpoint()); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := d.SendMessage("", "ping", i); err != nil {
			t.Fatal(err)
		}
		if _, err := d.RecvMessageBytes(0); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond) // longer than the TTL, with PINGs all along
	}
	if seen, ended := e.conns(); seen != 1 || ended != 0 {
		t.Fatalf("%d connections seen, %d ended; want 1 and 0", seen, ended)
	}
}

// A front that keeps taking a large reply, more slowly than WriteTimeout
// allows for the whole of it but never stalling for WriteTimeout, keeps
// its connection and gets all of it (WriteTimeout: "a front that takes
// nothing for that long loses its connection").
func TestSlowFrontGetsALargeReply(t *testing.T) {
	const size = 16 << 20
	logs := &zmqtest.Buffer{}
	srv, err := Listen("tcp://127.0.0.1:0", HandlerFunc(func(c *Conn, msg [][]byte) {
		if msg != nil {
			c.Send(make([]byte, size))
		}
	}), &Options{WriteTimeout: 500 * time.Millisecond, ErrorLog: log.New(logs, "", 0)})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	defer srv.Close()
	dialer := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10)
		})
	}}
	nc, err := dialer.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.Write(append(zmqtest.ZMTPPeerHello(), zmqtest.Message([]byte("go"))...))
	want := int64(len(greeting)+len(ready)) + 9 + size
	var got int64
	buf := make([]byte, 32<<10)
	nc.SetReadDeadline(time.Now().Add(60 * time.Second))
	for got < want {
		n, err := nc.Read(buf)
		got += int64(n)
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v; log: %s", got, want, err, logs.String())
		}
		time.Sleep(5 * time.Millisecond) // a fraction of WriteTimeout between reads
	}
	if strings.Contains(logs.String(), "MODZMQ0503") {
		t.Fatalf("logged %q", logs.String())
	}
}

// serveFront serves h with opts on a port of 127.0.0.1 and connects a raw
// front to it; the log is what the server wrote to Options.ErrorLog. Both
// close when the test ends.
func serveFront(t *testing.T, h Handler, opts Options) (*Server, *zmqtest.Buffer, net.Conn) {
	logs := &zmqtest.Buffer{}
	opts.ErrorLog = log.New(logs, "", 0)
	srv, err := Listen("tcp://127.0.0.1:0", h, &opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() { srv.Close() })
	nc, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return srv, logs, nc
}

// handshake does a front's handshake on nc, then sends "sync", which the
// handler must echo, and reads the server's handshake and the echo: what
// the test sends next is read by the connection's loop after it waited for
// bytes, as messages that arrive together.
func handshake(t *testing.T, nc net.Conn) {
	t.Helper()
	syncMsg := zmqtest.Message([]byte("sync"))
	nc.Write(append(zmqtest.ZMTPPeerHello(), syncMsg...))
	got := make([]byte, len(greeting)+len(ready)+len(syncMsg))
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(nc, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(got, syncMsg) {
		t.Fatalf("got %q; want the server's handshake and the echo of sync", got)
	}
	nc.SetReadDeadline(time.Time{})
}

// A message sent before Close goes out before the connection ends, and
// closing a connection logs nothing; no message is handled after Close.
func TestCloseAfterSend(t *testing.T) {
	var mu sync.Mutex
	var after []string
	srv, logs, nc := serveFront(t, HandlerFunc(func(c *Conn, msg [][]byte) {
		if msg == nil {
			return
		}
		if string(msg[0]) == "sync" {
			c.Send(msg...)
			return
		}
		mu.Lock()
		after = append(after, string(msg[0]))
		mu.Unlock()
		if string(msg[0]) == "bye" {
			c.Send([]byte("bye to you"))
			c.Close()
		}
	}), Options{})
	handshake(t, nc)
	nc.Write(append(zmqtest.Message([]byte("bye")), zmqtest.Message([]byte("more"))...))
	if got := closedByServer(t, nc); !bytes.Equal(got, zmqtest.Message([]byte("bye to you"))) {
		t.Fatalf("after the handshake the front got %q; want the reply sent before Close", got)
	}
	waitFor(t, "the connection to end", func() bool { return srv.Open() == 0 })
	if logs.String() != "" {
		t.Errorf("a Close logged %q", logs.String())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(after) != 1 {
		t.Errorf("the handler got %q; want nothing after bye", after)
	}
}

// Server.Close while a handler's reply waits to be written logs nothing:
// the front did not fail.
func TestServerCloseLogsNothing(t *testing.T) {
	entered := make(chan struct{})
	srv, logs, nc := serveFront(t, HandlerFunc(func(c *Conn, msg [][]byte) {
		if msg == nil {
			return
		}
		c.Send(msg...)
		if string(msg[0]) == "sync" {
			return
		}
		close(entered)
		c.nc.Read(make([]byte, 1)) // until Close closes the connection
	}), Options{})
	handshake(t, nc)
	nc.Write(zmqtest.Message([]byte("x")))
	<-entered
	srv.Close()
	if logs.String() != "" {
		t.Errorf("Server.Close logged %q", logs.String())
	}
}

// A handler that panics ends its connection, logged with its stack, and
// the server goes on serving: the next connection is answered.
func TestHandlerPanicEndsOnlyItsConnection(t *testing.T) {
	logs := &zmqtest.Buffer{}
	ended := make(chan struct{}, 2)
	srv, err := Listen("tcp://127.0.0.1:0", HandlerFunc(func(c *Conn, msg [][]byte) {
		switch {
		case msg == nil:
			ended <- struct{}{}
		case string(msg[len(msg)-1]) == "panic":
			panic("the handler's bug")
		default:
			c.Send(msg...)
		}
	}), &Options{ErrorLog: log.New(logs, "", 0)})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	defer srv.Close()
	d := dealer(t, "tcp://"+srv.Addr().String(), 0)
	d.SendMessage("", "panic")
	<-ended
	waitFor(t, "MODZMQ0506", func() bool {
		l := logs.String()
		return strings.Contains(l, "MODZMQ0506") && strings.Contains(l, "the handler's bug") && strings.Contains(l, "goroutine")
	})
	// libzmq reconnects; the new connection is served.
	d.SendMessage("", "after")
	if msg, err := d.RecvMessage(0); err != nil || msg[len(msg)-1] != "after" {
		t.Fatalf("after the panic: %q, %v", msg, err)
	}
}
