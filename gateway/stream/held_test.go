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
	settle(t, fmt.Sprintf("%d streams held on at most %d goroutines more than before", n, n/10), 5*time.Second, func() bool {
		return runtime.NumGoroutine()-before <= n/10
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
		route gateway.Route
	}{
		{"Closed", func(c net.Conn) { time.Sleep(100 * time.Millisecond); c.Close() }, gateway.Route{Heartbeat: "off"}},
		{"Silent", nil, gateway.Route{Heartbeat: "200ms", HeartbeatTimeout: gateway.Duration(1500 * time.Millisecond),
			StreamIdleTimeout: gateway.Duration(time.Minute)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := zmqtest.StartHeldStream(t, tc.after)
			route := tc.route
			route.Prefix, route.Backend = "/", []string{raw.Endpoint}
			srv, addr, logs := startServerLog(t, Options{}, route)
			c := dial(t, addr)
			c.send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
			c.head()
			if got := c.chunk(); got != zmqtest.HeldStreamEvent {
				t.Fatalf("first part %q", got)
			}
			if closed, rest := c.closed(); !closed {
				t.Fatalf("after the worker was lost: %q, want the connection closed without the end", rest)
			}
			streamsSettle(t, srv, map[bridge.StreamEnd]int64{bridge.EndBroken: 1})
			if !strings.Contains(logs.String(), "MODZMQ0130") {
				t.Errorf("the log lacks MODZMQ0130:\n%s", logs.String())
			}
		})
	}
}
