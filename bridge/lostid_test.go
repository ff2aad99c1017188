package bridge

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// A worker that closes the connection holding a request: the error the
// call ends with (and so the front's MODZMQ0110 or MODZMQ0130 line) names
// the request id the worker got and its endpoint, as a timeout's does, so
// that the line can be matched with the worker's own log. A plain reply
// and a stream after its head, and an open WebSocket.
func TestLostWorkerErrorNamesTheRequest(t *testing.T) {
	ids := make(chan string, 4)
	raw := zmqtest.StartRaw(t, nil, func(c net.Conn, req [][]byte) {
		ids <- string(req[0])
		switch string(req[4]) {
		case "/ws":
			c.Write(zmqtest.Message(req[0], nil, []byte("@accept"), nil))
			time.Sleep(100 * time.Millisecond)
		case "/stream":
			c.Write(zmqtest.Message(req[0], nil, []byte("@stream"), []byte("200"), nil))
			c.Write(zmqtest.Message(req[0], nil, []byte("@data"), []byte("part")))
			time.Sleep(100 * time.Millisecond)
		}
		c.Close() // as a worker killed while it holds the request
	})
	c := newTestClient(t, Options{Endpoints: []string{raw.Endpoint}, NoHeartbeat: true})
	check := func(what string, err error) {
		t.Helper()
		id := zmqtest.WaitFor(t, ids, "the request at the worker")
		if !errors.Is(err, ErrWorkerLost) {
			t.Fatalf("%s: got %v, want ErrWorkerLost", what, err)
		}
		if want := "request " + id + " to " + raw.Endpoint; !strings.Contains(err.Error(), want) {
			t.Errorf("%s: the error %q does not name the request: want %q in it", what, err, want)
		}
	}

	_, err := c.Do(context.Background(), &Request{Method: []byte("POST"), Target: []byte("/plain")}, time.Minute)
	check("a plain request", err)

	resp, err := c.Do(context.Background(), &Request{Method: []byte("POST"), Target: []byte("/stream"), StreamWindow: 1 << 16}, time.Minute)
	if err != nil || resp.Stream == nil {
		t.Fatalf("the stream's head: %v, %+v", err, resp)
	}
	defer resp.Stream.Close()
	for err == nil {
		_, _, err = resp.Stream.Next()
	}
	check("a stream", err)

	resp, err = c.Do(context.Background(), &Request{Method: []byte("GET"), Target: []byte("/ws"), WebSocket: true,
		MaxMessage: 1 << 20, StreamWindow: 64 << 10}, time.Minute)
	if err != nil || resp.WebSocket == nil {
		t.Fatalf("the WebSocket's accept: %v, %+v", err, resp)
	}
	defer resp.WebSocket.Close(CloseInternalError, nil)
	for err == nil {
		_, _, err = resp.WebSocket.Recv(100 * time.Millisecond)
	}
	check("a WebSocket", err)
}
