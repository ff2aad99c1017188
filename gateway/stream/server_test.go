package stream

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modzmq/modzmq/gateway"
	"github.com/modzmq/modzmq/internal/zmqtest"
)

// startServer runs a stream server for routes on a free port until the test
// ends and returns its host:port.
func startServer(t *testing.T, opts Options, routes ...gateway.Route) (*Server, string) {
	t.Helper()
	return runServer(t, nil, opts, routes...)
}

// startServerLog is startServer with the gateway's and the server's log
// kept, at debug level, and shown when the test fails.
func startServerLog(t *testing.T, opts Options, routes ...gateway.Route) (*Server, string, *zmqtest.Buffer) {
	t.Helper()
	logs := &zmqtest.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts.Log = log
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", logs.String())
		}
	})
	srv, addr := runServer(t, log, opts, routes...)
	return srv, addr, logs
}

// runServer starts the server with log as the gateway's logger.
func runServer(t *testing.T, log *slog.Logger, opts Options, routes ...gateway.Route) (*Server, string) {
	t.Helper()
	srv, _, addr, cancel, done := serve(t, log, opts, routes...)
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv, addr
}

// serve starts the server with log as the gateway's logger, on a free
// port: cancel ends Serve as a shutdown does (what is open drains for
// opts.Drain) and done receives what Serve returned. The test's end cancels
// it and closes the gateway.
func serve(t *testing.T, log *slog.Logger, opts Options, routes ...gateway.Route) (srv *Server, gw *gateway.Gateway, addr string, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	srv, gw, addr = newServer(t, log, opts, routes...)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	t.Cleanup(cancel)
	return srv, gw, addr, cancel, served
}

// newServer makes a server of the routes on a free port, not yet serving;
// the test's end closes its gateway.
func newServer(t *testing.T, log *slog.Logger, opts Options, routes ...gateway.Route) (*Server, *gateway.Gateway, string) {
	t.Helper()
	cfg := &gateway.Config{Listen: "127.0.0.1:0", Routes: routes, ServerName: "stream.test"}
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	srv, err := New(gateway.NewLive(gw), addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	return srv, gw, addr
}

func targetEcho(req [][]byte) [][]byte {
	return [][]byte{[]byte("200"), []byte("Content-Type: text/plain\r\n"), req[2]}
}

func readResponses(t *testing.T, c net.Conn, n int) []string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	var out []string
	for i := 0; i < n; i++ {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out = append(out, fmt.Sprintf("%d %s", resp.StatusCode, b))
	}
	return out
}

func TestPipelinedAnswersKeepRequestOrder(t *testing.T) {
	// The worker collects five requests, then answers them in reverse order.
	var mu sync.Mutex
	var held [][][]byte
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		mu.Lock()
		defer mu.Unlock()
		held = append(held, msg)
		if len(held) < 5 {
			return
		}
		for i := len(held) - 1; i >= 0; i-- {
			m := held[i]
			reply(append(m[:3:3], []byte("200"), m[5]))
		}
		held = nil
	})
	_, addr := startServer(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{ep}})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var b strings.Builder
	for i := 0; i < 5; i++ {
		fmt.Fprintf(&b, "GET /p/%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
	}
	io.WriteString(c, b.String())
	got := readResponses(t, c, 5)
	want := []string{"200 /p/0", "200 /p/1", "200 /p/2", "200 /p/3", "200 /p/4"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q, want %q", got, want)
	}
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// settle waits until ok (what: the state it waits for), d at most.
func settle(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not settled after %v", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestTenThousandConnectionsLeaveNothingBehind(t *testing.T) {
	ep := zmqtest.REP(t, targetEcho)
	srv, addr := startServer(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{ep}})
	// Warm up: the first request creates the bridge's socket and threads.
	c, _ := net.Dial("tcp", addr)
	io.WriteString(c, "GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
	readResponses(t, c, 1)
	c.Close()
	settle(t, "connections", 5*time.Second, func() bool { return srv.OpenConnections() == 0 })
	runtime.GC()
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heap := ms.HeapInuse

	for i := 0; i < 10000; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		switch i % 4 {
		case 0: // a whole request
			fmt.Fprintf(c, "GET /r/%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
			if got := readResponses(t, c, 1); got[0] != fmt.Sprintf("200 /r/%d", i) {
				t.Fatalf("connection %d got %q", i, got)
			}
		case 1: // half a request, then gone
			io.WriteString(c, "POST /half HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
		case 2: // garbage
			io.WriteString(c, "\x00\x01\x02 garbage\r\n\r\n")
		}
		c.Close()
	}
	settle(t, "open connections", 10*time.Second, func() bool { return srv.OpenConnections() == 0 })
	settle(t, "goroutines", 10*time.Second, func() bool { return runtime.NumGoroutine() <= goroutines+2 })
	settle(t, "file descriptors", 10*time.Second, func() bool { return openFDs(t) <= fds+2 })
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if ms.HeapInuse > heap+8<<20 {
		t.Errorf("heap in use grew from %d to %d bytes over 10,000 connections", heap, ms.HeapInuse)
	}
}

func TestSlowClientGets408AndIsClosed(t *testing.T) {
	ep := zmqtest.REP(t, targetEcho)
	_, addr := startServer(t, Options{HeaderTimeout: 300 * time.Millisecond}, gateway.Route{Prefix: "/", Backend: []string{ep}})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: x\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c) // ends when the server closes
	if err != nil {
		t.Fatalf("connection not closed: %v", err)
	}
	if !bytes.HasPrefix(b, []byte("HTTP/1.1 408 ")) {
		t.Errorf("got %q, want a 408", b)
	}
}

func TestIdleConnectionIsClosed(t *testing.T) {
	ep := zmqtest.REP(t, targetEcho)
	srv, addr := startServer(t, Options{IdleTimeout: 200 * time.Millisecond}, gateway.Route{Prefix: "/", Backend: []string{ep}})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read %d bytes, %v; want EOF from the idle close", n, err)
	}
	settle(t, "open connections", 5*time.Second, func() bool { return srv.OpenConnections() == 0 })
}

func TestConnectionNotices(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	ep := zmqtest.REP(t, func(req [][]byte) [][]byte {
		id := ""
		for _, l := range strings.Split(string(req[4]), "\r\n") {
			if v, ok := strings.CutPrefix(l, "connection-id: "); ok {
				id = v
			}
		}
		mu.Lock()
		seen = append(seen, string(req[1])+" "+id)
		mu.Unlock()
		return [][]byte{[]byte("ok")}
	})
	_, addr := startServer(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{ep}, ConnectionNotices: true})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /n HTTP/1.1\r\nHost: x\r\n\r\n")
	readResponses(t, c, 1)
	c.Close()
	settle(t, "notices", 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == 3
	})
	mu.Lock()
	defer mu.Unlock()
	id := strings.TrimPrefix(seen[0], "@open ")
	if seen[0] != "@open "+id || seen[1] != "GET "+id || seen[2] != "@close "+id || id == "" {
		t.Errorf("worker saw %q; want @open, GET, @close with one connection id", seen)
	}
}

func TestShutdownDrainsRequestsInFlight(t *testing.T) {
	ep := zmqtest.REP(t, func(req [][]byte) [][]byte {
		time.Sleep(300 * time.Millisecond)
		return targetEcho(req)
	})
	srv, _, addr := newServer(t, nil, Options{}, gateway.Route{Prefix: "/", Backend: []string{ep}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /in-flight HTTP/1.1\r\nHost: x\r\n\r\n")
	time.Sleep(100 * time.Millisecond) // the request is with the worker
	cancel()
	if got := readResponses(t, c, 1); got[0] != "200 /in-flight" {
		t.Errorf("in-flight request got %q", got)
	}
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	settle(t, "refusing connections after shutdown", 5*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
}

// With notices, a worker holding a request learns that its client closed
// the connection: stream mode cancels the relay, and the bridge sends
// @cancel for the request.
func TestCancelNoticeWhenTheClientCloses(t *testing.T) {
	got := make(chan [][]byte, 8)
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		got <- msg // never answered
	})
	_, addr := startServer(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{ep}, Notices: true})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
	next := func(what string) [][]byte {
		t.Helper()
		select {
		case m := <-got:
			return m
		case <-time.After(10 * time.Second):
			t.Fatalf("gave up waiting for %s", what)
		}
		return nil
	}
	req := next("the request") // [peer, id, "", MZMQ/1, GET, /held, headers, meta, body]
	if len(req) != 9 || string(req[4]) != "GET" || !strings.Contains(string(req[7]), "notices: cancel\r\n") {
		t.Fatalf("the worker got %q", req)
	}
	c.Close()
	n := next("the cancel notice")
	if len(n) != 9 || string(n[4]) != "@cancel" || string(n[1]) != string(req[1]) {
		t.Errorf("after the client closed, the worker got %q; want @cancel for request %s", n, req[1])
	}
}
