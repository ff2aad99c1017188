package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// Streams through the gateway (docs/PROTOCOL.md, "Streams, credits and
// cancel notices"), against libzmq ROUTER workers that speak the stream
// messages frame by frame.

// startStreamGateway is startGateway with the gateway's error log kept.
func startStreamGateway(t *testing.T, cfg *Config) (url string, access, errs *syncBuffer) {
	t.Helper()
	url, access, errs, _ = startStreamGatewayAdmin(t, cfg)
	return url, access, errs
}

// startStreamGatewayAdmin is startStreamGateway with the gateway's admin
// handler (/metrics, /status).
func startStreamGatewayAdmin(t *testing.T, cfg *Config) (url string, access, errs *syncBuffer, admin http.Handler) {
	t.Helper()
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	errs, access = &syncBuffer{}, &syncBuffer{}
	g, err := New(cfg, slog.New(slog.NewTextHandler(errs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(AccessLog(g, access))
	srv.Config.ConnContext = ConnContext
	checkHandlerPanics(t, srv)
	srv.Start()
	t.Cleanup(func() { srv.Close(); g.Close() })
	return srv.URL, access, errs, g.AdminHandler()
}

type syncBuffer = zmqtest.Buffer

// checkHandlerPanics makes t fail, once srv (not started yet) is closed,
// if net/http logged a panic: it recovers a handler's, and its own, and
// closes the connection, which a client may not notice.
func checkHandlerPanics(t *testing.T, srv *httptest.Server) {
	t.Helper()
	logged := &syncBuffer{}
	srv.Config.ErrorLog = log.New(logged, "", 0)
	t.Cleanup(func() {
		srv.Close()
		if strings.Contains(logged.String(), "panic") {
			t.Errorf("net/http's log:\n%s", logged)
		}
	})
}

// workerMsg is one message a ROUTER worker received: its envelope and the
// six MZMQ/1 frames.
type workerMsg struct {
	envelope [][]byte
	method   string
	target   string
	meta     string
}

func (m workerMsg) id() string { return string(m.envelope[1]) }

func splitWorkerMsg(msg [][]byte) workerMsg {
	i := 0
	for len(msg[i]) != 0 {
		i++
	}
	f := msg[i+1:]
	return workerMsg{envelope: msg[: i+1 : i+1], method: string(f[1]), target: string(f[2]), meta: string(f[4])}
}

// Each part reaches the client when the worker sends it: the worker sends
// the second event only after the client has read the first.
func TestStreamedReplyArrivesPartByPart(t *testing.T) {
	requests := make(chan workerMsg, 4)
	next := make(chan struct{}, 1)
	var mu sync.Mutex
	var streaming workerMsg
	ep := zmqtest.ROUTERIdle(t, func(msg [][]byte, reply func([][]byte)) {
		m := splitWorkerMsg(msg)
		if strings.HasPrefix(m.method, "@") {
			return // credits: three short events need none
		}
		requests <- m
		reply(zmqtest.Part(m.envelope, "@stream", "200", "Content-Type: text/event-stream\r\nX-Stream: yes\r\n"))
		reply(zmqtest.Part(m.envelope, "@data", "data: 1\n\n"))
		mu.Lock()
		streaming = m
		mu.Unlock()
	}, func(reply func([][]byte)) {
		select {
		case <-next:
			mu.Lock()
			m := streaming
			mu.Unlock()
			reply(zmqtest.Part(m.envelope, "@keep-alive", ""))
			reply(zmqtest.Part(m.envelope, "@data", "data: 2\n\n"))
			reply(zmqtest.Part(m.envelope, "@end", "data: 3\n\n"))
		default:
		}
	})
	url, access, _ := startStreamGateway(t, &Config{Routes: []Route{{Prefix: "/", Backend: []string{ep}}}})
	resp, err := http.Get(url + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m := zmqtest.WaitFor(t, requests, "the request")
	if !strings.Contains(m.meta, "stream-credits: 262144\r\n") {
		t.Errorf("the request's meta lacks stream-credits: %q", m.meta)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" || resp.Header.Get("X-Stream") != "yes" {
		t.Fatalf("head: %d %v", resp.StatusCode, resp.Header)
	}
	if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" || resp.ContentLength != -1 {
		t.Errorf("a stream goes chunked, without Content-Length: %v, %d", resp.TransferEncoding, resp.ContentLength)
	}
	rd := bufio.NewReader(resp.Body)
	readEvent := func() string {
		t.Helper()
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("reading an event: %v", err)
		}
		rd.ReadString('\n') // the blank line after it
		return line
	}
	if got := readEvent(); got != "data: 1\n" {
		t.Fatalf("first event %q", got)
	}
	next <- struct{}{} // only now does the worker send the rest
	for _, want := range []string{"data: 2\n", "data: 3\n"} {
		if got := readEvent(); got != want {
			t.Fatalf("event %q, want %q", got, want)
		}
	}
	if rest, err := io.ReadAll(rd); err != nil || len(rest) != 0 {
		t.Errorf("after the last part: %q, %v (want a clean end)", rest, err)
	}
	resp.Body.Close()
	if got := access.String(); !strings.Contains(got, `"GET /events HTTP/1.1" 200 27 `) {
		t.Errorf("access log: %q", got)
	}
}

// A worker that aborts its stream, goes silent past the idle timeout, or
// sends a part that breaks the protocol ends the response abnormally: the
// client sees a truncated body, not a clean end, and the gateway logs
// MODZMQ0130. Other requests go on.
func TestBrokenStreamsEndAbnormally(t *testing.T) {
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := splitWorkerMsg(msg)
		if strings.HasPrefix(m.method, "@") {
			return
		}
		if m.target == "/plain" {
			reply(zmqtest.Part(m.envelope, "200", "fine"))
			return
		}
		reply(zmqtest.Part(m.envelope, "@stream", "200", ""))
		reply(zmqtest.Part(m.envelope, "@data", "partial"))
		switch m.target {
		case "/abort":
			reply(zmqtest.Part(m.envelope, "@abort", "the feed went away"))
		case "/garbage":
			reply(zmqtest.Part(m.envelope, "@bogus", "x"))
		case "/idle": // nothing more
		}
	})
	url, _, errs := startStreamGateway(t, &Config{Routes: []Route{{Prefix: "/", Backend: []string{ep},
		StreamIdleTimeout: Duration(300 * time.Millisecond)}}})
	for _, path := range []string{"/abort", "/garbage", "/idle"} {
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "partial" || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("%s: %d %q, %v; want 200, \"partial\", then an unexpected EOF", path, resp.StatusCode, body, err)
		}
		if resp, body := get(t, "GET", url+"/plain", "", nil); resp.StatusCode != 200 || body != "fine" {
			t.Errorf("after %s: %d %q", path, resp.StatusCode, body)
		}
	}
	log := errs.String()
	for _, want := range []string{"MODZMQ0130: stream ended abnormally: the worker aborted the stream",
		"reply breaks MZMQ/1: unknown stream part", "had no part for 300ms"} {
		if !strings.Contains(log, want) {
			t.Errorf("the error log lacks %q:\n%s", want, log)
		}
	}
}

// A keep-alive holds a request past the route's timeout (long-poll); a
// worker that sends none gets its client a 504 as before.
func TestKeepAliveHoldsARequestPastItsTimeout(t *testing.T) {
	var mu sync.Mutex
	held := map[string][][]byte{} // by target
	since := map[string]int{}
	worker := zmqtest.ROUTERIdle(t, func(msg [][]byte, reply func([][]byte)) {
		m := splitWorkerMsg(msg)
		if strings.HasPrefix(m.method, "@") {
			return
		}
		mu.Lock()
		held[m.target] = m.envelope
		mu.Unlock()
	}, func(reply func([][]byte)) {
		mu.Lock()
		defer mu.Unlock()
		for target, env := range held {
			since[target]++
			switch {
			case target == "/poll" && since[target] < 40: // 40 idle turns of 20 ms: past the 300 ms timeout
				if since[target]%5 == 0 {
					reply(zmqtest.Part(env, "@keep-alive", ""))
				}
			case target == "/poll":
				reply(zmqtest.Part(env, "200", "news"))
				delete(held, target)
			}
		}
	})
	url, _, _ := startStreamGateway(t, &Config{Routes: []Route{{Prefix: "/", Backend: []string{worker},
		Timeout: Duration(300 * time.Millisecond)}}})
	if resp, body := get(t, "GET", url+"/poll", "", nil); resp.StatusCode != 200 || body != "news" {
		t.Errorf("long-poll with keep-alives: %d %q, want 200 \"news\"", resp.StatusCode, body)
	}
	if resp, _ := get(t, "GET", url+"/silent", "", nil); resp.StatusCode != 504 {
		t.Errorf("a worker silent past the timeout: %d, want 504", resp.StatusCode)
	}
}

// With notices, the worker holding a request learns that its client went
// away, while it works on a plain reply and in the middle of a stream, and
// the access log shows the request as aborted (499).
func TestCancelNoticesWhenTheClientLeaves(t *testing.T) {
	got := make(chan workerMsg, 16)
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := splitWorkerMsg(msg)
		got <- m
		if m.target == "/stream" {
			reply(zmqtest.Part(m.envelope, "@stream", "200", ""))
			reply(zmqtest.Part(m.envelope, "@data", "first"))
		}
		// /slow: never answered
	})
	url, access, _ := startStreamGateway(t, &Config{Routes: []Route{{Prefix: "/", Backend: []string{ep}, Notices: true}}})
	for _, path := range []string{"/slow", "/stream"} {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", url+path, nil)
		done := make(chan struct{})
		go func() {
			defer close(done)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return
			}
			buf := make([]byte, 5)
			io.ReadFull(resp.Body, buf) // "first"
			cancel()
			resp.Body.Close()
		}()
		m := zmqtest.WaitFor(t, got, "the request "+path)
		if !strings.Contains(m.meta, "notices: cancel\r\n") {
			t.Errorf("%s: the request's meta lacks notices: %q", path, m.meta)
		}
		if path == "/slow" {
			cancel()
		}
		for {
			n := zmqtest.WaitFor(t, got, "the cancel notice for "+path)
			if n.method == "@credit" {
				continue
			}
			if n.method != "@cancel" || n.id() != m.id() || !strings.Contains(n.meta, "request-id: "+m.id()+"\r\n") {
				t.Errorf("%s: after the client left the worker got %s for %s (meta %q), want @cancel for %s", path, n.method, n.id(), n.meta, m.id())
			}
			break
		}
		<-done
	}
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(access.String(), " 499 ") < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := strings.Count(access.String(), " 499 "); n != 2 {
		t.Errorf("access log shows %d requests as aborted (499), want 2:\n%s", n, access.String())
	}
}

// A worker that ignores its credit and floods a client that does not read
// breaks its own stream (MODZMQ0130); the gateway holds no more than the
// window for it meanwhile.
func TestAStreamPastItsCreditIsCutOff(t *testing.T) {
	chunk := strings.Repeat("x", 16<<10)
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := splitWorkerMsg(msg)
		if strings.HasPrefix(m.method, "@") {
			return
		}
		reply(zmqtest.Part(m.envelope, "@stream", "200", ""))
		for range 2048 { // 32 MiB, far past a 4 KiB window and the socket buffers
			reply(zmqtest.Part(m.envelope, "@data", chunk))
		}
	})
	url, _, errs := startStreamGateway(t, &Config{Routes: []Route{{Prefix: "/", Backend: []string{ep}, StreamWindow: 4096}}})
	resp, err := http.Get(url + "/flood")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("head: %d", resp.StatusCode)
	}
	// Not reading: the gateway's writes block, no credit goes back, and the
	// worker's parts overrun what it was granted.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(errs.String(), "MODZMQ0130") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if log := errs.String(); !strings.Contains(log, "MODZMQ0130") || !strings.Contains(log, "credit") {
		t.Errorf("the error log does not show the stream cut off for overrunning its credit:\n%s", log)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if !errors.Is(err, io.ErrUnexpectedEOF) || n >= 2048*int64(len(chunk)) {
		t.Errorf("the client read %d bytes, then %v; want a truncated body", n, err)
	}
}

// max_streams bounds the streams open on a route: a head over it gets 503
// with Retry-After, and the worker a cancel notice.
func TestMaxStreams(t *testing.T) {
	cancels := make(chan string, 4)
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := splitWorkerMsg(msg)
		if m.method == "@cancel" {
			cancels <- m.id()
		}
		if strings.HasPrefix(m.method, "@") {
			return
		}
		reply(zmqtest.Part(m.envelope, "@stream", "200", ""))
		reply(zmqtest.Part(m.envelope, "@data", "open "+m.target))
	})
	url, _, _ := startStreamGateway(t, &Config{Routes: []Route{{Prefix: "/", Backend: []string{ep}, MaxStreams: 1, Notices: true}}})
	first, err := http.Get(url + "/one")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Body.Close()
	buf := make([]byte, len("open /one"))
	if _, err := io.ReadFull(first.Body, buf); err != nil || string(buf) != "open /one" {
		t.Fatalf("first stream: %q, %v", buf, err)
	}
	resp, _ := get(t, "GET", url+"/two", "", nil)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a second stream over max_streams 1: %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	zmqtest.WaitFor(t, cancels, "the cancel notice for the refused stream")
}

func TestStreamConfigChecks(t *testing.T) {
	for _, tt := range []struct {
		route Route
		want  string
	}{
		{Route{Prefix: "/", Backend: []string{"tcp://127.0.0.1:1"}, StreamWindow: 100}, "stream_window must be from 4096"},
		{Route{Prefix: "/", Backend: []string{"tcp://127.0.0.1:1"}, MaxStreams: -1}, "max_streams must be 0"},
		{Route{Prefix: "/", Backend: []string{"tcp://127.0.0.1:1"}, StreamIdleTimeout: -1}, "stream_idle_timeout must be 0"},
	} {
		cfg := &Config{Routes: []Route{tt.route}}
		if err := cfg.Check(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v, want an error with %q", tt.route, err, tt.want)
		}
	}
	if got := (&Route{StreamWindow: 8192}).StreamWindowOrDefault(); got != 8192 {
		t.Errorf("StreamWindowOrDefault: %d", got)
	}
}

// The admin page counts streams: open, parts and bytes to clients, cancel
// notices, and ends by cause.
func TestStreamCounters(t *testing.T) {
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := splitWorkerMsg(msg)
		if strings.HasPrefix(m.method, "@") {
			return
		}
		reply(zmqtest.Part(m.envelope, "@stream", "200", ""))
		reply(zmqtest.Part(m.envelope, "@data", "12345"))
		switch m.target {
		case "/ok":
			reply(zmqtest.Part(m.envelope, "@end", "678"))
		case "/abort":
			reply(zmqtest.Part(m.envelope, "@abort", "no"))
		}
	})
	url, _, _, admin := startStreamGatewayAdmin(t, &Config{Routes: []Route{{Prefix: "/", Backend: []string{ep}, Notices: true}}})
	get(t, "GET", url+"/ok", "", nil)
	resp, err := http.Get(url + "/abort")
	if err == nil {
		io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	resp, err = http.Get(url + "/held")
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(resp.Body, make([]byte, 5))
	resp.Body.Close() // the client leaves: a cancel notice
	want := []string{
		`modzmq_streams_open{route="/"} 0`,
		`modzmq_stream_parts_total{direction="to_client",route="/"} 4`,
		`modzmq_stream_bytes_total{direction="to_client",route="/"} 18`,
		`modzmq_cancels_total{route="/"} 1`,
		`modzmq_stream_ends_total{cause="end",route="/"} 1`,
		`modzmq_stream_ends_total{cause="aborted",route="/"} 1`,
		`modzmq_stream_ends_total{cause="client_gone",route="/"} 1`,
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec := httptest.NewRecorder()
		admin.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		page := rec.Body.String()
		missing := ""
		for _, w := range want {
			if !strings.Contains(page, w+"\n") {
				missing = w
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks %s:\n%s", missing, page)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// With stream_body, a request's body goes to the worker in parts it asks
// for; a worker that answers after the first part (413 here) ends the
// upload, and the client gets that answer. A grant that is not a number
// breaks the request (502).
func TestStreamedBodyAnsweredEarly(t *testing.T) {
	parts := make(chan workerMsg, 16)
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := splitWorkerMsg(msg)
		switch {
		case m.method == "@body" || m.method == "@body-end":
			parts <- m
			reply(zmqtest.Part(m.envelope, "413 Too Big", "", "no thanks"))
		case strings.HasPrefix(m.method, "@"):
		case m.target == "/bad":
			reply(zmqtest.Part(m.envelope, "@credit", "lots"))
		default:
			if !strings.Contains(m.meta, "stream-body: 1\r\n") {
				reply(zmqtest.Part(m.envelope, "500", "no stream-body in meta"))
				return
			}
			reply(zmqtest.Part(m.envelope, "@credit", "1000"))
		}
	})
	url, _, _ := startStreamGateway(t, &Config{Routes: []Route{{Prefix: "/", Backend: []string{ep}, StreamBody: true, MaxBody: new(int64)}}})
	resp, body := get(t, "POST", url+"/up", "", strings.NewReader(strings.Repeat("x", 1<<20)))
	if resp.StatusCode != 413 || body != "no thanks" {
		t.Errorf("an upload the worker refuses after its first part: %d %q, want 413 \"no thanks\"", resp.StatusCode, body)
	}
	if m := zmqtest.WaitFor(t, parts, "the first part"); m.method != "@body" {
		t.Errorf("first part: %s", m.method)
	}
	if resp, _ := get(t, "POST", url+"/bad", "", strings.NewReader("abc")); resp.StatusCode != 502 {
		t.Errorf("a grant that is not a number: %d, want 502", resp.StatusCode)
	}
}

// A worker may answer a streamed body before it is complete while the
// client has paused: the client gets the answer without sending another
// byte, over HTTP/1.1 and HTTP/2, and the worker gets no part after it.
// (RelayBody reads the body in a goroutine while the call waits on the
// worker; a read that waited in the relay's own goroutine kept the answer
// until the client sent more.)
func TestStreamedBodyAnsweredEarlyToAPausedClient(t *testing.T) {
	const sent = 64 << 10 // what the client sends before it pauses
	var mu sync.Mutex
	got, after := map[string]int{}, map[string]int{}
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := splitWorkerMsg(msg)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case m.method == "@body" || m.method == "@body-end":
			if got[m.id()] >= sent {
				after[m.id()]++
				return
			}
			if got[m.id()] += len(msg[len(msg)-1]); got[m.id()] >= sent {
				reply(zmqtest.Part(m.envelope, "413 Too Big", "", "no thanks"))
			}
		case strings.HasPrefix(m.method, "@"):
		default:
			reply(zmqtest.Part(m.envelope, "@credit", "1048576"))
		}
	})
	access := &syncBuffer{}
	srv := startTLSGateway(t, &Config{Routes: []Route{{Prefix: "/", Backend: []string{ep}, StreamBody: true, MaxBody: new(int64)}}}, access)
	eachProto(t, srv, func(t *testing.T, proto string, c *http.Client) {
		pr, pw := io.Pipe()
		answered := make(chan struct{})
		defer close(answered)
		go func() {
			pw.Write(make([]byte, sent))
			<-answered // the client pauses until it has the answer
			pw.CloseWithError(errors.New("the client gave up"))
		}()
		type answer struct {
			resp *http.Response
			err  error
		}
		answers := make(chan answer, 1)
		go func() {
			resp, err := c.Post(srv.URL+"/up", "application/octet-stream", pr)
			answers <- answer{resp, err}
		}()
		a := zmqtest.WaitFor(t, answers, fmt.Sprintf("the answer to a client that paused after %d bytes", sent))
		if a.err != nil {
			t.Fatalf("the answer to a client that paused after %d bytes: %v", sent, a.err)
		}
		resp := a.resp
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 413 || string(b) != "no thanks" || resp.Proto != proto {
			t.Errorf("an upload the worker refused while its client paused: %s %s %q, want %s 413 \"no thanks\"", resp.Proto, resp.Status, b, proto)
		}
	})
	// The read the gateway ended after the answer cancels the request's
	// context; the access log still shows the answer, not 499.
	checkFor(t, func() bool { return strings.Count(access.String(), `" 413 9 `) == 2 },
		"two access log lines with 413; the log:\n%s", access)
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 {
		t.Errorf("the worker got the bodies of %d requests, want 2", len(got))
	}
	for id, n := range after {
		t.Errorf("request %s: the worker got %d parts after its answer", id, n)
	}
}
