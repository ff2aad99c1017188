package stream

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/gateway"
	"github.com/modzmq/modzmq/internal/zmqtest"
)

// A held stream (the head and a part sent, the worker silent) costs stream
// mode no goroutine: the relay hands it to a streamRelay and returns. Each
// stream still gets the worker's next part, and its end, when it comes.
func TestHeldStreamsCostNoGoroutine(t *testing.T) {
	const n = 100
	var more atomic.Bool
	var held [][][]byte // envelopes, the worker's own
	ep := zmqtest.ROUTERIdle(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		if strings.HasPrefix(m.method(), "@") {
			return
		}
		reply(zmqtest.Part(m.envelope(), "@stream", "200", "Content-Type: text/event-stream\r\n"))
		reply(zmqtest.Part(m.envelope(), "@data", "data: 0\n\n"))
		held = append(held, m.envelope())
	}, func(reply func([][]byte)) {
		if more.Load() {
			for _, env := range held {
				reply(zmqtest.Part(env, "@end", "data: 1\n\n"))
			}
			held = nil
		}
	})
	srv, addr := startServer(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{ep}, Notices: true})
	open := func() *rawClient {
		c := dial(t, addr)
		c.send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
		if status, _ := c.head(); !strings.Contains(status, " 200 ") {
			t.Fatalf("status %q", status)
		}
		if got := c.chunk(); got != "data: 0\n\n" {
			t.Fatalf("first part %q", got)
		}
		return c
	}
	open().c.Close() // the worker's connection and its reader exist before counting
	streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndClientGone: 1})
	before := runtime.NumGoroutine()
	cs := make([]*rawClient, n)
	for i := range cs {
		cs[i] = open()
	}
	var grown int
	waitUntil(t, 5*time.Second, func() error {
		if grown = runtime.NumGoroutine() - before; grown > n/10 {
			return fmt.Errorf("%d streams held: %d goroutines more than before, want at most %d", n, grown, n/10)
		}
		return nil
	})
	more.Store(true)
	for i, c := range cs {
		if got := c.chunk(); got != "data: 1\n\n" {
			t.Fatalf("stream %d: last part %q", i, got)
		}
		if got := c.chunk(); got != "" {
			t.Fatalf("stream %d: %q, want the terminating chunk", i, got)
		}
	}
	streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndClientGone: 1, bridge.EndNormal: n})
}

// waitUntil calls fn until it returns nil or d passed, and fails with its
// last error.
func waitUntil(t *testing.T, d time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A held stream whose worker's connection drops ends abnormally (the
// connection closes without the terminating chunk, MODZMQ0130) once the
// connection fails, not at the stream's idle timeout.
func TestHeldStreamWorkerLost(t *testing.T) {
	raw := zmqtest.StartRaw(t, nil, func(c net.Conn, req [][]byte) {
		if string(req[3]) != "GET" {
			return
		}
		c.Write(zmqtest.Message(req[0], nil, []byte("@stream"), []byte("200"), nil))
		c.Write(zmqtest.Message(req[0], nil, []byte("@data"), []byte("data: 0\n\n")))
		time.Sleep(100 * time.Millisecond)
		c.Close()
	})
	srv, addr, logs := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{raw.Endpoint}, Heartbeat: "off"})
	c := dial(t, addr)
	c.send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
	c.head()
	if got := c.chunk(); got != "data: 0\n\n" {
		t.Fatalf("first part %q", got)
	}
	if closed, rest := c.closed(); !closed {
		t.Fatalf("after the worker left: %q, want the connection closed without the end", rest)
	}
	streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndBroken: 1})
	if !strings.Contains(logs.String(), "MODZMQ0130") {
		t.Errorf("the log lacks MODZMQ0130:\n%s", logs.String())
	}
}

// A held stream whose worker the endpoint's watch loses (silent past its
// heartbeat timeout, its connection still open) ends abnormally when the
// watch says so, long before the stream's idle timeout: the lost endpoint
// calls every stream held on it.
func TestHeldStreamWorkerSilent(t *testing.T) {
	raw := zmqtest.StartRaw(t, nil, func(c net.Conn, req [][]byte) {
		if string(req[3]) != "GET" {
			return
		}
		c.Write(zmqtest.Message(req[0], nil, []byte("@stream"), []byte("200"), nil))
		c.Write(zmqtest.Message(req[0], nil, []byte("@data"), []byte("data: 0\n\n")))
		// Then nothing, and no PONG to the bridge's PINGs.
	})
	srv, addr, logs := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{raw.Endpoint},
		Heartbeat: "200ms", HeartbeatTimeout: gateway.Duration(1500 * time.Millisecond), StreamIdleTimeout: gateway.Duration(time.Minute)})
	c := dial(t, addr)
	c.send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
	c.head()
	if got := c.chunk(); got != "data: 0\n\n" {
		t.Fatalf("first part %q", got)
	}
	if closed, rest := c.closed(); !closed {
		t.Fatalf("after the worker fell silent: %q, want the connection closed without the end", rest)
	}
	streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndBroken: 1})
	if !strings.Contains(logs.String(), "MODZMQ0130") {
		t.Errorf("the log lacks MODZMQ0130:\n%s", logs.String())
	}
}
