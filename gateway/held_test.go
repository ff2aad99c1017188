package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// Streams held on hijacked connections (serveStream, heldStream).

// heldWorker is a ROUTER worker that answers every request with a stream
// head and one event, and ends every stream it holds once end is set.
func heldWorker(t *testing.T, end *atomic.Bool) string {
	var held [][][]byte // envelopes, the worker's own
	return zmqtest.ROUTERIdle(t, func(msg [][]byte, reply func([][]byte)) {
		m := splitWorkerMsg(msg)
		if strings.HasPrefix(m.method, "@") {
			return
		}
		reply(zmqtest.Part(m.envelope, "@stream", "200", "Content-Type: text/event-stream\r\n"))
		reply(zmqtest.Part(m.envelope, "@data", "data: 0\n\n"))
		held = append(held, m.envelope)
	}, func(reply func([][]byte)) {
		if end.Load() {
			for _, env := range held {
				reply(zmqtest.Part(env, "@end", "data: 1\n\n"))
			}
			held = nil
		}
	})
}

// heldClient is a raw client connection holding a stream open.
type heldClient struct {
	c  net.Conn
	br *bufio.Reader
}

// openHeld sends a GET with protocol proto and reads the head and the
// first event; it returns the client and the head.
func openHeld(t *testing.T, addr, proto string) (*heldClient, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return readHeld(t, c, proto)
}

// readHeld is openHeld on a connection of the caller's.
func readHeld(t *testing.T, c net.Conn, proto string) (*heldClient, string) {
	t.Helper()
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "GET /events %s\r\nHost: x\r\n\r\n", proto)
	hc := &heldClient{c: c, br: bufio.NewReader(c)}
	var head strings.Builder
	for {
		line, err := hc.br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the head: %q, %v", head.String(), err)
		}
		head.WriteString(line)
		if line == "\r\n" {
			break
		}
	}
	if !strings.HasPrefix(head.String(), "HTTP/1.1 200 ") && !strings.HasPrefix(head.String(), "HTTP/1.0 200 ") {
		t.Fatalf("head:\n%s", head.String())
	}
	if proto == "HTTP/1.0" {
		hc.expect(t, "data: 0\n\n")
	} else {
		hc.expect(t, "9\r\ndata: 0\n\n\r\n")
	}
	return hc, head.String()
}

// expect reads exactly want.
func (hc *heldClient) expect(t *testing.T, want string) {
	t.Helper()
	buf := make([]byte, len(want))
	if _, err := io.ReadFull(hc.br, buf); err != nil || string(buf) != want {
		t.Fatalf("read %q, %v; want %q", buf, err, want)
	}
}

// expectEOF reads to the end: the gateway closed the connection after the
// body.
func (hc *heldClient) expectEOF(t *testing.T) {
	t.Helper()
	if rest, err := io.ReadAll(hc.br); err != nil || len(rest) != 0 {
		t.Fatalf("after the body: %q, %v; want the connection closed", rest, err)
	}
}

// heldWait polls cond until it holds, or fails after 10 s.
func heldWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
	}
}

// A stream held open over HTTP/1.1 costs the gateway one goroutine, the
// one that carries it, not net/http's two (the handler's and the one that
// watches the connection). The head says Connection: close, the stream
// ends with the terminating chunk, and the connection closes after it.
func TestHeldStreamsCostOneGoroutineEach(t *testing.T) {
	const n = 100
	var end atomic.Bool
	url, access, _ := startStreamGateway(t, &Config{Routes: []Route{{Prefix: "/", Backend: []string{heldWorker(t, &end)}}}})
	addr := strings.TrimPrefix(url, "http://")
	first, _ := openHeld(t, addr, "HTTP/1.1") // the worker's connection exists before counting
	first.c.Close()
	heldWait(t, "the first stream's access log line", func() bool { return strings.Contains(access.String(), " 499 ") })
	before := runtime.NumGoroutine()
	cs := make([]*heldClient, n)
	for i := range cs {
		var head string
		cs[i], head = openHeld(t, addr, "HTTP/1.1")
		if !strings.Contains(head, "\r\nConnection: close\r\n") || !strings.Contains(head, "\r\nTransfer-Encoding: chunked\r\n") {
			t.Fatalf("head:\n%s", head)
		}
	}
	var grown int
	heldWait(t, "the handlers to return", func() bool {
		grown = runtime.NumGoroutine() - before
		return grown <= n+n/10
	})
	end.Store(true)
	for _, c := range cs {
		c.expect(t, "9\r\ndata: 1\n\n\r\n0\r\n\r\n")
		c.expectEOF(t)
	}
	if got := strings.Count(access.String(), `"GET /events HTTP/1.1" 200 18 `); got != n {
		t.Errorf("%d access log lines of streams that ended, want %d:\n%s", got, n, access.String())
	}
}

// An HTTP/1.0 client gets a held stream's parts as they are, and the
// connection closes at its end.
func TestHeldStreamOverHTTP10(t *testing.T) {
	var end atomic.Bool
	url, _, _ := startStreamGateway(t, &Config{Routes: []Route{{Prefix: "/", Backend: []string{heldWorker(t, &end)}}}})
	c, head := openHeld(t, strings.TrimPrefix(url, "http://"), "HTTP/1.0")
	if strings.Contains(head, "Transfer-Encoding") {
		t.Errorf("HTTP/1.0 head:\n%s", head)
	}
	end.Store(true)
	c.expect(t, "data: 1\n\n")
	c.expectEOF(t)
}

// Over TLS a held stream's parts go as chunks in TLS records, and its end
// too.
func TestHeldStreamOverTLS(t *testing.T) {
	var end atomic.Bool
	cfg := &Config{Routes: []Route{{Prefix: "/", Backend: []string{heldWorker(t, &end)}}}}
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	g, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(g)
	checkHandlerPanics(t, srv)
	srv.StartTLS()
	t.Cleanup(func() { srv.Close(); g.Close() })
	c, err := tls.Dial("tcp", srv.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	hc, _ := readHeld(t, c, "HTTP/1.1")
	end.Store(true)
	hc.expect(t, "9\r\ndata: 1\n\n\r\n0\r\n\r\n")
	hc.expectEOF(t)
}

// Shutdown waits for streams on hijacked connections as net/http waits
// for requests in flight: Serve returns once the worker ended the stream,
// and the client got all of it.
func TestShutdownWaitsForHeldStreams(t *testing.T) {
	var end atomic.Bool
	cfg := &Config{Timeouts: Timeouts{Shutdown: Duration(20 * time.Second)},
		Routes: []Route{{Prefix: "/", Backend: []string{heldWorker(t, &end)}}}}
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	g, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	lv := NewLive(g)
	t.Cleanup(lv.Close)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, l, lv, nil) }()
	c, _ := openHeld(t, l.Addr().String(), "HTTP/1.1")
	stop()
	// New connections are refused once the shutdown began.
	heldWait(t, "the listener to close", func() bool {
		nc, err := net.Dial("tcp", l.Addr().String())
		if err == nil {
			nc.Close()
		}
		return err != nil
	})
	select {
	case err := <-served:
		t.Fatalf("Serve returned with a stream open: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	end.Store(true)
	c.expect(t, "9\r\ndata: 1\n\n\r\n0\r\n\r\n")
	c.expectEOF(t)
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the stream ended")
	}
}

// A held stream whose worker is lost ends abnormally (the connection
// closes without the terminating chunk, MODZMQ0130), not at the stream's
// idle timeout: when the worker's connection drops, at once; when the
// worker falls silent with its connection open, once the endpoint's watch
// loses it past the heartbeat timeout (the lost endpoint calls every stream
// held on it).
func TestHeldStreamWorkerLost(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after func(net.Conn)
		route Route
	}{
		{"Closed", func(c net.Conn) { time.Sleep(100 * time.Millisecond); c.Close() }, Route{Heartbeat: "off"}},
		{"Silent", nil, Route{Heartbeat: "200ms", HeartbeatTimeout: Duration(1500 * time.Millisecond), StreamIdleTimeout: Duration(time.Minute)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := zmqtest.StartHeldStream(t, tc.after)
			route := tc.route
			route.Prefix, route.Backend = "/", []string{raw.Endpoint}
			url, _, errs := startStreamGateway(t, &Config{Routes: []Route{route}})
			c, _ := openHeld(t, strings.TrimPrefix(url, "http://"), "HTTP/1.1")
			c.c.SetReadDeadline(time.Now().Add(20 * time.Second)) // a third of the idle timeout
			if rest, err := io.ReadAll(c.br); err != nil || len(rest) != 0 {
				t.Fatalf("after the worker was lost: %q, %v; want the connection closed without the end", rest, err)
			}
			heldWait(t, "MODZMQ0130 in the error log", func() bool { return strings.Contains(errs.String(), "MODZMQ0130") })
		})
	}
}
