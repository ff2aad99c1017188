package stream

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/gateway"
	"github.com/modzmq/modzmq/internal/zmqtest"
)

// Streamed replies in stream mode (docs/PROTOCOL.md, "Streams, credits and
// cancel notices"), against libzmq ROUTER workers that send the stream
// messages frame by frame, and clients on raw connections that check every
// byte of the chunked framing.

// workerMsg is a message a ROUTER worker got: [peer, request-id, "",
// MZMQ/1, method, target, headers, meta, body]; control messages (@credit,
// @cancel) have the same frames.
type workerMsg [][]byte

func (m workerMsg) envelope() [][]byte { return m[:3:3] }
func (m workerMsg) id() string         { return string(m[1]) }
func (m workerMsg) method() string     { return string(m[4]) }
func (m workerMsg) target() string     { return string(m[5]) }
func (m workerMsg) meta() string       { return string(m[7]) }

// rawClient is a client connection read byte by byte.
type rawClient struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dial(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawClient{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *rawClient) send(s string) {
	r.t.Helper()
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatal(err)
	}
}

// head reads a response's status line and header fields.
func (r *rawClient) head() (status string, hdr textproto.MIMEHeader) {
	r.t.Helper()
	tp := textproto.NewReader(r.br)
	status, err := tp.ReadLine()
	if err != nil {
		r.t.Fatalf("reading the status line: %v", err)
	}
	if hdr, err = tp.ReadMIMEHeader(); err != nil {
		r.t.Fatalf("reading the header after %q: %v", status, err)
	}
	return status, hdr
}

// chunk reads one chunk of a chunked body and returns its data; the
// terminating chunk ("0\r\n\r\n", no trailers) returns "".
func (r *rawClient) chunk() string {
	r.t.Helper()
	line, err := r.br.ReadString('\n')
	if err != nil {
		r.t.Fatalf("reading a chunk size: %q, %v", line, err)
	}
	n, err := strconv.ParseInt(strings.TrimSuffix(line, "\r\n"), 16, 64)
	if err != nil || !strings.HasSuffix(line, "\r\n") {
		r.t.Fatalf("chunk size line %q", line)
	}
	buf := make([]byte, n+2)
	if _, err := io.ReadFull(r.br, buf); err != nil || string(buf[n:]) != "\r\n" {
		r.t.Fatalf("chunk of %d bytes: %q, %v", n, buf, err)
	}
	return string(buf[:n])
}

// closed reports whether the server closed the connection with nothing
// more to read, and what it read instead.
func (r *rawClient) closed() (bool, string) {
	r.t.Helper()
	b, err := io.ReadAll(r.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false, string(b) + " (still open)"
	}
	return len(b) == 0, string(b)
}

// streamsSettle waits until every stream of srv's first route was closed
// and as many ended for each cause as ends says.
func streamsSettle(t *testing.T, srv *Server, ends map[bridge.StreamEnd]int64) {
	t.Helper()
	ss := srv.lv.Gateway().Handles()[0].Client.StreamStats()
	ok := func() bool {
		for cause, n := range ends {
			if ss.Ends[cause].Load() != n {
				return false
			}
		}
		return ss.Open.Load() == 0
	}
	deadline := time.Now().Add(10 * time.Second)
	for !ok() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !ok() {
		got := map[string]int64{}
		for i := range ss.Ends {
			got[bridge.StreamEnd(i).String()] = ss.Ends[i].Load()
		}
		t.Errorf("streams: %d open, ended %v; want none open, ended %v", ss.Open.Load(), got, ends)
	}
}

// Each part reaches the client as one chunk when the worker sends it: the
// worker sends the second part only after the client read the first. The
// reply ends with the terminating chunk and the connection goes on.
func TestStreamedReplyArrivesChunkByChunk(t *testing.T) {
	requests := make(chan workerMsg, 4)
	next := make(chan struct{}, 1)
	var mu sync.Mutex
	var streaming workerMsg
	ep := zmqtest.ROUTERIdle(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		if strings.HasPrefix(m.method(), "@") {
			return // credits: three short parts need none
		}
		requests <- m
		if m.target() == "/plain" {
			reply(zmqtest.Part(m.envelope(), "200", "fine"))
			return
		}
		reply(zmqtest.Part(m.envelope(), "@stream", "200", "Content-Type: text/event-stream\r\nX-Stream: yes\r\n"))
		reply(zmqtest.Part(m.envelope(), "@data", "data: 1\n\n"))
		mu.Lock()
		streaming = m
		mu.Unlock()
	}, func(reply func([][]byte)) {
		select {
		case <-next:
			mu.Lock()
			m := streaming
			mu.Unlock()
			reply(zmqtest.Part(m.envelope(), "@keep-alive", ""))
			reply(zmqtest.Part(m.envelope(), "@data", "data: 2\n\n"))
			reply(zmqtest.Part(m.envelope(), "@end", "data: 3\n\n"))
		default:
		}
	})
	srv, addr, logs := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{ep}})
	c := dial(t, addr)
	c.send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
	m := zmqtest.WaitFor(t, requests, "the request")
	if !strings.Contains(m.meta(), "stream-credits: 262144\r\n") {
		t.Errorf("the request's meta lacks stream-credits: %q", m.meta())
	}
	status, hdr := c.head()
	if status != "HTTP/1.1 200 OK" || hdr.Get("Content-Type") != "text/event-stream" || hdr.Get("X-Stream") != "yes" {
		t.Fatalf("head: %q %v", status, hdr)
	}
	if hdr.Get("Transfer-Encoding") != "chunked" || hdr.Get("Content-Length") != "" || hdr.Get("Connection") != "" {
		t.Errorf("a stream to an HTTP/1.1 client goes chunked, without Content-Length, on a kept connection: %v", hdr)
	}
	if got := c.chunk(); got != "data: 1\n\n" {
		t.Fatalf("first chunk %q", got)
	}
	next <- struct{}{} // only now does the worker send the rest
	for _, want := range []string{"data: 2\n\n", "data: 3\n\n", ""} {
		if got := c.chunk(); got != want {
			t.Fatalf("chunk %q, want %q", got, want)
		}
	}
	c.send("GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("the request after the stream: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "fine" {
		t.Errorf("the request after the stream: %d %q", resp.StatusCode, body)
	}
	streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndNormal: 1})
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", logs.String())
	}
}

// A request pipelined behind a streamed reply is answered after the stream
// ended, in order, although its answer came back first.
func TestPipelinedAnswerWaitsForTheStreamAhead(t *testing.T) {
	finish := make(chan struct{}, 1)
	var mu sync.Mutex
	var streaming workerMsg
	ep := zmqtest.ROUTERIdle(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		switch {
		case strings.HasPrefix(m.method(), "@"):
		case m.target() == "/plain":
			reply(zmqtest.Part(m.envelope(), "200", "fine"))
		default:
			reply(zmqtest.Part(m.envelope(), "@stream", "200", ""))
			reply(zmqtest.Part(m.envelope(), "@data", "one"))
			mu.Lock()
			streaming = m
			mu.Unlock()
		}
	}, func(reply func([][]byte)) {
		select {
		case <-finish:
			mu.Lock()
			m := streaming
			mu.Unlock()
			reply(zmqtest.Part(m.envelope(), "@data", "two"))
			reply(zmqtest.Part(m.envelope(), "@end", ""))
		default:
		}
	})
	srv, addr, _ := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{ep}})
	c := dial(t, addr)
	c.send("GET /stream HTTP/1.1\r\nHost: x\r\n\r\nGET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
	if status, hdr := c.head(); status != "HTTP/1.1 200 OK" || hdr.Get("Transfer-Encoding") != "chunked" {
		t.Fatalf("head: %q %v", status, hdr)
	}
	if got := c.chunk(); got != "one" {
		t.Fatalf("first chunk %q", got)
	}
	// Both replies are back from the worker (the stream's head and the
	// plain answer): the plain one waits behind the stream.
	stats := srv.lv.Gateway().Handles()[0].Client.Stats()
	settle(t, "both replies", 10*time.Second, func() bool { return stats.Status[200].Load() == 2 })
	finish <- struct{}{}
	for _, want := range []string{"two", ""} {
		if got := c.chunk(); got != want {
			t.Fatalf("chunk %q, want %q", got, want)
		}
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("the pipelined answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "fine" {
		t.Errorf("the pipelined answer: %d %q", resp.StatusCode, body)
	}
	streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndNormal: 1})
}

// A stream that breaks after its head (the worker aborts it, or goes
// silent past the stream idle timeout) ends the response abnormally: no
// terminating chunk, the connection closed, MODZMQ0130 logged. The server
// goes on serving.
func TestBrokenStreamClosesTheConnection(t *testing.T) {
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		if strings.HasPrefix(m.method(), "@") {
			return
		}
		if m.target() == "/plain" {
			reply(zmqtest.Part(m.envelope(), "200", "fine"))
			return
		}
		reply(zmqtest.Part(m.envelope(), "@stream", "200", ""))
		reply(zmqtest.Part(m.envelope(), "@data", "partial"))
		if m.target() == "/abort" {
			reply(zmqtest.Part(m.envelope(), "@abort", "the feed went away"))
		} // /idle: nothing more
	})
	srv, addr, logs := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{ep},
		StreamIdleTimeout: gateway.Duration(300 * time.Millisecond)})
	for _, tt := range []struct{ path, log string }{
		{"/abort", "MODZMQ0130: stream ended abnormally: the worker aborted the stream"},
		{"/idle", "had no part for 300ms"},
	} {
		c := dial(t, addr)
		c.send("GET " + tt.path + " HTTP/1.1\r\nHost: x\r\n\r\n")
		if status, hdr := c.head(); status != "HTTP/1.1 200 OK" || hdr.Get("Transfer-Encoding") != "chunked" {
			t.Fatalf("%s: head %q %v", tt.path, status, hdr)
		}
		if got := c.chunk(); got != "partial" {
			t.Fatalf("%s: chunk %q", tt.path, got)
		}
		if ok, rest := c.closed(); !ok {
			t.Errorf("%s: after the break the client read %q; want the connection closed, no terminating chunk", tt.path, rest)
		}
		if log := logs.String(); !strings.Contains(log, tt.log) || !strings.Contains(log, "level=ERROR msg=\"MODZMQ0130: ") {
			t.Errorf("%s: the log lacks %q at error level", tt.path, tt.log)
		}
		p := dial(t, addr)
		p.send("GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
		if got := readResponses(t, p.c, 1); got[0] != "200 fine" {
			t.Errorf("after %s: %q", tt.path, got)
		}
	}
	streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndAborted: 1, bridge.EndIdle: 1})
}

// With notices, a client that closes its connection in the middle of a
// stream gets the worker a cancel notice, and nothing is logged as an error.
func TestCancelNoticeWhenTheClientLeavesMidStream(t *testing.T) {
	got := make(chan workerMsg, 16)
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		got <- m
		if !strings.HasPrefix(m.method(), "@") {
			reply(zmqtest.Part(m.envelope(), "@stream", "200", ""))
			reply(zmqtest.Part(m.envelope(), "@data", "first"))
		}
	})
	srv, addr, logs := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{ep}, Notices: true})
	c := dial(t, addr)
	c.send("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
	m := zmqtest.WaitFor(t, got, "the request")
	if !strings.Contains(m.meta(), "notices: cancel\r\n") || !strings.Contains(m.meta(), "stream-credits: ") {
		t.Errorf("the request's meta: %q", m.meta())
	}
	c.head()
	if got := c.chunk(); got != "first" {
		t.Fatalf("chunk %q", got)
	}
	c.c.Close()
	for {
		n := zmqtest.WaitFor(t, got, "the cancel notice")
		if n.method() == "@credit" {
			continue
		}
		if n.method() != "@cancel" || n.id() != m.id() {
			t.Errorf("after the client left the worker got %s for %s, want @cancel for %s", n.method(), n.id(), m.id())
		}
		break
	}
	streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndClientGone: 1})
	if log := logs.String(); strings.Contains(log, "MODZMQ0130") || strings.Contains(log, "level=ERROR") {
		t.Errorf("a client that left is not an error:\n%s", log)
	}
}

// An HTTP/1.0 client cannot take chunks: it gets the parts as they are and
// the connection closes at the end of the body, even if it asked to keep it
// (a request it pipelined after that one goes unanswered).
func TestHTTP10ClientGetsTheStreamUnchunked(t *testing.T) {
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		if strings.HasPrefix(m.method(), "@") {
			return
		}
		reply(zmqtest.Part(m.envelope(), "@stream", "200", "Content-Type: text/plain\r\n"))
		reply(zmqtest.Part(m.envelope(), "@data", "a\n"))
		reply(zmqtest.Part(m.envelope(), "@data", "b\n"))
		reply(zmqtest.Part(m.envelope(), "@end", "c\n"))
	})
	srv, addr, _ := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{ep}})
	for i, req := range []string{
		"GET /s HTTP/1.0\r\n\r\n",
		"GET /s HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /s HTTP/1.0\r\n\r\n",
	} {
		c := dial(t, addr)
		c.send(req)
		status, hdr := c.head()
		if status != "HTTP/1.1 200 OK" || hdr.Get("Transfer-Encoding") != "" || hdr.Get("Content-Length") != "" || hdr.Get("Connection") != "close" {
			t.Errorf("%q: head %q %v; want neither chunks nor a length, and Connection: close", req, status, hdr)
		}
		body, err := io.ReadAll(c.br) // to the end of the connection
		if err != nil || string(body) != "a\nb\nc\n" {
			t.Errorf("%q: body %q, %v; want \"a\\nb\\nc\\n\", then the connection closed", req, body, err)
		}
		// The request pipelined after the keep-alive one is dropped with
		// the connection (its stream, if it began, ends as client_gone).
		streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndNormal: int64(i + 1)})
	}
}

// A HEAD request gets the stream's head only; the stream is closed (the
// worker gets @cancel with notices) and the connection goes on.
func TestHeadGetsTheStreamsHeadOnly(t *testing.T) {
	cancels := make(chan string, 4)
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		switch {
		case m.method() == "@cancel":
			cancels <- m.id()
		case strings.HasPrefix(m.method(), "@"):
		case m.method() == "HEAD":
			reply(zmqtest.Part(m.envelope(), "@stream", "200", "X-Stream: yes\r\n"))
			reply(zmqtest.Part(m.envelope(), "@data", "not for HEAD"))
		default:
			reply(zmqtest.Part(m.envelope(), "200", "fine"))
		}
	})
	srv, addr, _ := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{ep}, Notices: true})
	c := dial(t, addr)
	c.send("HEAD /s HTTP/1.1\r\nHost: x\r\n\r\nGET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
	status, hdr := c.head()
	if status != "HTTP/1.1 200 OK" || hdr.Get("X-Stream") != "yes" || hdr.Get("Transfer-Encoding") != "" {
		t.Errorf("HEAD: %q %v", status, hdr)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("the request after HEAD: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "fine" {
		t.Errorf("the request after HEAD: %d %q (a body sent for HEAD would show here)", resp.StatusCode, body)
	}
	zmqtest.WaitFor(t, cancels, "the cancel notice for the HEAD stream")
	streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndClientGone: 1})
}

// Shutting down with a stream open does not wait for it past the drain
// time: the stream is closed (the worker gets @cancel), the client's
// response ends without its terminating chunk, and Serve returns.
func TestShutdownClosesOpenStreams(t *testing.T) {
	got := make(chan workerMsg, 16)
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		got <- m
		if !strings.HasPrefix(m.method(), "@") {
			reply(zmqtest.Part(m.envelope(), "@stream", "200", ""))
			reply(zmqtest.Part(m.envelope(), "@data", "endless"))
		}
	})
	_, gw, addr, cancel, done := serve(t, nil, Options{Drain: 200 * time.Millisecond}, gateway.Route{Prefix: "/", Backend: []string{ep}, Notices: true})
	c := dial(t, addr)
	c.send("GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
	m := zmqtest.WaitFor(t, got, "the request")
	c.head()
	if got := c.chunk(); got != "endless" {
		t.Fatalf("chunk %q", got)
	}
	cancel()
	if err := zmqtest.WaitFor(t, done, "Serve to return"); err != nil {
		t.Errorf("Serve: %v", err)
	}
	for {
		n := zmqtest.WaitFor(t, got, "the cancel notice")
		if n.method() == "@credit" {
			continue
		}
		if n.method() != "@cancel" || n.id() != m.id() {
			t.Errorf("at shutdown the worker got %s for %s, want @cancel for %s", n.method(), n.id(), m.id())
		}
		break
	}
	if ok, rest := c.closed(); !ok {
		t.Errorf("after shutdown the client read %q; want the connection closed, no terminating chunk", rest)
	}
	if ss := gw.Handles()[0].Client.StreamStats(); ss.Open.Load() != 0 || ss.Ends[bridge.EndClientGone].Load() != 1 {
		t.Errorf("after Serve returned: %d streams open, %d closed as client gone; want 0 and 1", ss.Open.Load(), ss.Ends[bridge.EndClientGone].Load())
	}
}

// creditWorker is a ROUTER worker that answers every request with a stream
// of parts parts of size bytes (parts < 0: without end), as fast as its
// credit allows, and counts the bytes it could send. Part i is filled with
// its number, so a client can check every byte and the order.
type creditWorker struct {
	ep      string
	sent    atomic.Int64 // bytes of parts sent
	maxLead atomic.Int64 // the most sent ever was ahead of what the client read
	cancels chan string  // the request ids of @cancel notices
}

func partData(i, size int) string {
	return strings.Repeat(fmt.Sprintf("%07d\n", i), size/8+1)[:size]
}

// startCreditWorker starts the worker; read, when not nil, counts what the
// client read.
func startCreditWorker(t *testing.T, parts, size int, read *atomic.Int64) *creditWorker {
	w := &creditWorker{cancels: make(chan string, 4)}
	cost := int64(size + bridge.PartCost)
	var env [][]byte // the stream being sent
	var credit int64
	next := 0
	w.ep = zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		switch m.method() {
		case "@credit":
			n, err := strconv.ParseInt(m.target(), 10, 64)
			if err != nil || n <= 0 {
				t.Errorf("credit %q", m.target())
			}
			credit += n
		case "@cancel":
			select {
			case w.cancels <- m.id():
			default:
			}
			env = nil
		default:
			env, credit, next = m.envelope(), bridge.DefaultStreamWindow, 0
			reply(zmqtest.Part(env, "@stream", "200", "Content-Type: text/plain\r\n"))
		}
		for env != nil && (parts < 0 || next < parts) && credit >= cost {
			reply(zmqtest.Part(env, "@data", partData(next, size)))
			next++
			credit -= cost
			n := w.sent.Add(int64(size))
			if read != nil {
				if lead := n - read.Load(); lead > w.maxLead.Load() {
					w.maxLead.Store(lead)
				}
			}
		}
		if env != nil && next == parts && credit >= bridge.PartCost {
			reply(zmqtest.Part(env, "@end", ""))
			env = nil
		}
	})
	return w
}

// slowConn reads at most 8 KiB at a time, after a pause, and counts what
// it read.
type slowConn struct {
	net.Conn
	read *atomic.Int64
}

func (c *slowConn) Read(p []byte) (int, error) {
	time.Sleep(time.Millisecond)
	n, err := c.Conn.Read(p[:min(len(p), 8<<10)])
	c.read.Add(int64(n))
	return n, err
}

// slack is what the kernel and libzmq may hold for a connection beyond the
// stream's window in these tests: the sending socket's buffer grows up to
// net.ipv4.tcp_wmem's maximum (4 MiB by default), the client's is fixed
// small (64 KiB, doubled by Linux), libzmq's share is 56 KiB.
func slack(t *testing.T) int64 {
	wmem := int64(4 << 20)
	if b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_wmem"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 3 {
			if n, err := strconv.ParseInt(f[2], 10, 64); err == nil {
				wmem = n
			}
		}
	}
	return wmem + 256<<10
}

// A client that reads a long stream slowly gets all of it, intact and in
// order, and is not closed for being slow: the worker, honouring its
// credit, is held back, never getting more than about the window (plus
// what the kernel buffers) ahead of the client.
func TestASlowReaderGetsTheWholeStream(t *testing.T) {
	const parts, size = 512, 16 << 10 // 8 MiB
	var read atomic.Int64
	w := startCreditWorker(t, parts, size, &read)
	srv, addr, logs := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{w.ep}, Notices: true})
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.(*net.TCPConn).SetReadBuffer(64 << 10)
	nc.SetDeadline(time.Now().Add(2 * time.Minute))
	c := &rawClient{t: t, c: nc, br: bufio.NewReaderSize(&slowConn{Conn: nc, read: &read}, 8<<10)}
	c.send("GET /long HTTP/1.1\r\nHost: x\r\n\r\n")
	if status, hdr := c.head(); status != "HTTP/1.1 200 OK" || hdr.Get("Transfer-Encoding") != "chunked" {
		t.Fatalf("head %q %v", status, hdr)
	}
	for i := 0; i < parts; i++ {
		if got := c.chunk(); got != partData(i, size) {
			t.Fatalf("chunk %d: %d bytes starting %q; want part %d", i, len(got), got[:min(len(got), 16)], i)
		}
	}
	if got := c.chunk(); got != "" {
		t.Fatalf("after the last part: %d bytes, want the terminating chunk", len(got))
	}
	// The connection goes on.
	c.send("GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
	if status, _ := c.head(); status != "HTTP/1.1 200 OK" {
		t.Fatalf("the next request on the connection: %q", status)
	}
	c.chunk()
	t.Logf("the worker was at most %d KiB ahead of the client", w.maxLead.Load()>>10)
	if lead, limit := w.maxLead.Load(), bridge.DefaultStreamWindow+slack(t); lead > limit {
		t.Errorf("the worker got %d bytes ahead of the client; want at most the window and the kernel's buffers, %d", lead, limit)
	}
	nc.Close()
	streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndNormal: 1, bridge.EndClientGone: 1})
	if log := logs.String(); strings.Contains(log, "MODZMQ0303") || strings.Contains(log, "level=ERROR") {
		t.Errorf("a slow client is neither closed nor an error:\n%s", log)
	}
}

// kernelHeld is what the kernel holds of the bytes sent to client c: unread
// in c's receive queue and unsent or unacknowledged in the server's socket
// for c, which is libzmq's, in this process.
func kernelHeld(t *testing.T, c net.Conn) int64 {
	t.Helper()
	return clientQueue(t, c, syscall.TIOCINQ) + ioctlInt(t, serverSocket(t, c), syscall.TIOCOUTQ)
}

// ioctlInt returns the count an ioctl (TIOCINQ, TIOCOUTQ) reports for fd.
func ioctlInt(t *testing.T, fd int, req uintptr) int64 {
	t.Helper()
	var n int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&n))); e != 0 {
		t.Fatalf("ioctl %#x: %v", req, e)
	}
	return int64(n)
}

// clientQueue returns what an ioctl reports for client connection c.
func clientQueue(t *testing.T, c net.Conn, req uintptr) (n int64) {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) { n = ioctlInt(t, int(fd), req) })
	return n
}

// serverSocket finds the descriptor of the server's side of client
// connection c, which libzmq holds in this process.
func serverSocket(t *testing.T, c net.Conn) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	local, remote := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
	for _, e := range ents {
		fd, _ := strconv.Atoi(e.Name())
		sa, err1 := syscall.Getsockname(fd)
		pa, err2 := syscall.Getpeername(fd)
		if err1 != nil || err2 != nil {
			continue
		}
		s4, ok1 := sa.(*syscall.SockaddrInet4)
		p4, ok2 := pa.(*syscall.SockaddrInet4)
		if ok1 && ok2 && s4.Port == remote.Port && p4.Port == local.Port {
			return fd
		}
	}
	t.Fatalf("no socket in this process for the client %v", local)
	return 0
}

// A client that stops reading a stream holds its worker back: the worker,
// honouring its credit, can send no more than the window and what the
// kernel buffers; stream mode itself holds about the window. Once the
// client has taken nothing for the route's stream idle timeout it is closed
// (MODZMQ0303), and its stream ends as a client that left: the worker gets
// @cancel, no stream error is logged, and the client, reading again, finds
// the connection closed after what was sent.
func TestStreamToAClientThatStopsReading(t *testing.T) {
	w := startCreditWorker(t, -1, 16<<10, nil)
	srv, addr, logs := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{w.ep}, Notices: true,
		StreamIdleTimeout: gateway.Duration(300 * time.Millisecond)})
	c := dial(t, addr)
	c.c.(*net.TCPConn).SetReadBuffer(64 << 10)
	c.c.SetDeadline(time.Now().Add(time.Minute))
	c.send("GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
	// Never read, until the server gave up.
	zmqtest.WaitFor(t, w.cancels, "the cancel notice")
	streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndClientGone: 1})
	sent, kernel := w.sent.Load(), kernelHeld(t, c.c)
	t.Logf("the worker could send %d KiB to a client that read nothing; the kernel holds %d KiB of it", sent>>10, kernel>>10)
	if limit := bridge.DefaultStreamWindow + slack(t); sent > limit {
		t.Errorf("the worker could send %d bytes to a client that read nothing; want at most the window and the kernel's buffers, %d", sent, limit)
	}
	// Stream mode held the rest (or dropped it when it closed the client):
	// the window, sndHWM+1 messages in libzmq and its 8 KiB batch, and
	// some framing.
	if held, limit := sent-kernel, bridge.DefaultStreamWindow+int64((sndHWM+1)*msgMax(bridge.DefaultStreamWindow))+16<<10; held > limit {
		t.Errorf("stream mode held %d bytes of the stream beyond the kernel's buffers; want at most %d", held, limit)
	}
	log := logs.String()
	if !strings.Contains(log, "MODZMQ0303: client is not reading") || strings.Contains(log, "MODZMQ0130") {
		t.Errorf("want the client closed as not reading (MODZMQ0303), no stream error (MODZMQ0130):\n%s", log)
	}
	n, err := io.Copy(io.Discard, c.br)
	if err != nil {
		t.Errorf("after %d bytes the client read %v; want the connection closed", n, err)
	}
	if n > sent+64<<10 {
		t.Errorf("the client read %d bytes, more than the %d the worker sent", n, sent)
	}
}
