package gateway

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// Streamed request bodies and the deadlines around them (relayBody,
// pacedBody): timeouts.read bounds each wait for the client's bytes, over
// HTTP/1.1 and HTTP/2, and nothing the gateway's own deadlines do passes
// for a client that left.

// sinkWorker is a ROUTER worker that grants first, as its first credit, and
// answers each body's end with 200 and the number of bytes it got; with
// more > 0 it grants that much more once later has passed since a
// request's first part.
func sinkWorker(t *testing.T, first int, more int, later time.Duration) string {
	t.Helper()
	var mu sync.Mutex
	got, envs, firstAt, granted := map[string]int{}, map[string][][]byte{}, map[string]time.Time{}, map[string]bool{}
	return zmqtest.ROUTERIdle(t, func(msg [][]byte, reply func([][]byte)) {
		m := splitWorkerMsg(msg)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case m.method == "@body" || m.method == "@body-end":
			got[m.id()] += len(msg[len(msg)-1])
			if firstAt[m.id()].IsZero() {
				firstAt[m.id()] = time.Now()
			}
			if m.method == "@body-end" {
				reply(zmqtest.Part(m.envelope, "200", "", strconv.Itoa(got[m.id()])))
			}
		case strings.HasPrefix(m.method, "@"):
		default:
			envs[m.id()] = m.envelope
			reply(zmqtest.Part(m.envelope, "@credit", strconv.Itoa(first)))
		}
	}, func(reply func([][]byte)) {
		mu.Lock()
		defer mu.Unlock()
		for id, at := range firstAt {
			if more > 0 && !granted[id] && time.Since(at) > later {
				granted[id] = true
				reply(zmqtest.Part(envs[id], "@credit", strconv.Itoa(more)))
			}
		}
	})
}

// startTLSGateway serves cfg over TLS with HTTP/2 offered, with the
// server's own timeouts set from cfg as Serve sets them, and its access
// log to access.
func startTLSGateway(t *testing.T, cfg *Config, access io.Writer) *httptest.Server {
	t.Helper()
	g, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(AccessLog(g, access))
	rh, rd, wr, _ := serverTimeouts(cfg)
	srv.Config.ReadHeaderTimeout, srv.Config.ReadTimeout, srv.Config.WriteTimeout = rh, rd, wr
	srv.EnableHTTP2 = true
	checkHandlerPanics(t, srv)
	srv.StartTLS()
	t.Cleanup(func() { srv.Close(); g.Close() })
	return srv
}

// eachProto runs f with a client of srv that speaks HTTP/1.1, then one
// that speaks HTTP/2, each in a subtest named by its protocol (proto, as
// http.Response.Proto says it).
func eachProto(t *testing.T, srv *httptest.Server, f func(t *testing.T, proto string, c *http.Client)) {
	for _, proto := range []string{"HTTP/1.1", "HTTP/2.0"} {
		t.Run(proto, func(t *testing.T) {
			tr := srv.Client().Transport.(*http.Transport).Clone()
			tr.ForceAttemptHTTP2 = proto == "HTTP/2.0"
			if !tr.ForceAttemptHTTP2 {
				tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
			}
			defer tr.CloseIdleConnections()
			f(t, proto, &http.Client{Transport: tr})
		})
	}
}

// A worker slower to grant than timeouts.read, with a client that sends as
// fast as it is let: the body arrives whole. (Over HTTP/2 a read deadline
// is a timer on the stream that runs between reads too.)
func TestStreamedBodyWorkerSlowerThanTheReadTimeout(t *testing.T) {
	const size = 2 << 20
	ep := sinkWorker(t, 65600, 16<<20, 1500*time.Millisecond)
	srv := startTLSGateway(t, &Config{Timeouts: Timeouts{Read: Duration(time.Second)},
		Routes: []Route{{Prefix: "/", Backend: []string{ep}, StreamBody: true, MaxBody: new(int64)}}}, io.Discard)
	eachProto(t, srv, func(t *testing.T, _ string, c *http.Client) {
		resp, err := c.Post(srv.URL+"/up", "application/octet-stream", bytes.NewReader(make([]byte, size)))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != strconv.Itoa(size) {
			t.Errorf("a body whose worker grants later than timeouts.read: %s %q, want 200 %d", resp.Status, b, size)
		}
	})
}

// pausingReader gives n bytes at a time, left times, pause apart.
type pausingReader struct {
	n, left int
	pause   time.Duration
}

func (r *pausingReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	time.Sleep(r.pause)
	r.left--
	return copy(p, bytes.Repeat([]byte{'x'}, min(len(p), r.n))), nil
}

// An upload longer than the server's write timeout, each piece within the
// read timeout: it arrives whole. (Over HTTP/2 the write timeout is a
// timer on the stream from the request's start.)
func TestStreamedBodyLongerThanTheWriteTimeout(t *testing.T) {
	ep := sinkWorker(t, 16<<20, 0, 0)
	srv := startTLSGateway(t, &Config{Timeouts: Timeouts{Read: Duration(time.Second), Write: Duration(time.Second)},
		Routes: []Route{{Prefix: "/", Backend: []string{ep}, StreamBody: true, MaxBody: new(int64)}}}, io.Discard)
	eachProto(t, srv, func(t *testing.T, _ string, c *http.Client) {
		resp, err := c.Post(srv.URL+"/up", "application/octet-stream", &pausingReader{n: 1024, left: 8, pause: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "8192" {
			t.Errorf("8 pieces 300 ms apart, read and write timeouts of 1 s: %s %q, want 200 \"8192\"", resp.Status, b)
		}
	})
}

// The route's timeout and timeouts.read end at about the same time while
// the client has paused: the client gets 504 or 408, never a 200 (the
// read's deadline cancels the request's context, which is not a client
// that left).
func TestStreamedBodyTimeoutsTogether(t *testing.T) {
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		if m := splitWorkerMsg(msg); !strings.HasPrefix(m.method, "@") {
			reply(zmqtest.Part(m.envelope, "@credit", "1048576"))
		}
	})
	url, _, _ := startStreamGateway(t, &Config{Timeouts: Timeouts{Read: Duration(300 * time.Millisecond)},
		Routes: []Route{{Prefix: "/", Backend: []string{ep}, StreamBody: true, MaxBody: new(int64), Timeout: Duration(300 * time.Millisecond)}}})
	statuses := map[int]int{}
	for range 10 {
		c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a liveness bound
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil {
			t.Fatalf("the answer to a client that sent no byte of its body: %v", err)
		}
		statuses[resp.StatusCode]++
	}
	if statuses[http.StatusGatewayTimeout]+statuses[http.StatusRequestTimeout] != 10 {
		t.Errorf("answers to clients silent past both timeouts: %v, want only 504 and 408", statuses)
	}
}

// A streamed reply to a streamed body while a read of the body still
// waits (the client paused its upload): the reply runs to its end, longer
// than timeouts.read.
func TestStreamedReplyWhileTheBodyWaits(t *testing.T) {
	const parts = 10
	var mu sync.Mutex
	var env [][]byte
	var started time.Time
	sent := 0
	ep := zmqtest.ROUTERIdle(t, func(msg [][]byte, reply func([][]byte)) {
		m := splitWorkerMsg(msg)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case m.method == "@body" || m.method == "@body-end":
			if env == nil {
				env, started = m.envelope, time.Now()
				reply(zmqtest.Part(m.envelope, "@stream", "200", "Content-Type: text/plain\r\n"))
				reply(zmqtest.Part(m.envelope, "@data", "part 0\n"))
			}
		case strings.HasPrefix(m.method, "@"):
		default:
			reply(zmqtest.Part(m.envelope, "@credit", "1048576"))
		}
	}, func(reply func([][]byte)) {
		mu.Lock()
		defer mu.Unlock()
		if env != nil && sent < parts && time.Since(started) > time.Duration(sent+1)*200*time.Millisecond {
			sent++
			method := map[bool]string{false: "@data", true: "@end"}[sent == parts]
			reply(zmqtest.Part(env, method, fmt.Sprintf("part %d\n", sent)))
		}
	})
	url, access, _ := startStreamGateway(t, &Config{Timeouts: Timeouts{Read: Duration(time.Second)},
		Routes: []Route{{Prefix: "/", Backend: []string{ep}, StreamBody: true, MaxBody: new(int64)}}})
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write([]byte("0123456789")) // and then nothing: the upload pauses
	resp, err := http.Post(url+"/up", "application/octet-stream", pr)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !strings.HasSuffix(string(b), fmt.Sprintf("part %d\n", parts)) || strings.Count(string(b), "part ") != parts+1 {
		t.Errorf("a streamed reply of %d parts 200 ms apart while the upload paused: %q, %v", parts+1, b, err)
	}
	checkFor(t, func() bool { return strings.Contains(access.String(), `" 200 `) }, "the access log line with 200:\n%s", access)
}
