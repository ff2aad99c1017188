package stream

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modzmq/modzmq/gateway"
	"github.com/modzmq/modzmq/internal/zmqtest"
)

// postTen sends a POST with a 10-byte body, all at once, to addr and
// returns the answer and its body.
func postTen(t *testing.T, addr string) (*http.Response, string, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.Write([]byte("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a liveness bound
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

// A streamed reply to a request whose body was streamed runs to its end:
// the relay's body context, which ends with the body, is not the stream's.
func TestStreamedReplyToAStreamedBody(t *testing.T) {
	const parts = 5
	var mu sync.Mutex
	var env [][]byte
	var started time.Time
	sent := 0
	ep := zmqtest.ROUTERIdle(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case m.method() == "@body-end":
			env, started = m.envelope(), time.Now()
			reply(zmqtest.Part(env, "@stream", "200", "Content-Type: text/plain\r\n"))
			reply(zmqtest.Part(env, "@data", "part 0\n"))
		case strings.HasPrefix(m.method(), "@"):
		default:
			reply(zmqtest.Part(m.envelope(), "@credit", "1048576"))
		}
	}, func(reply func([][]byte)) {
		mu.Lock()
		defer mu.Unlock()
		if env != nil && sent < parts && time.Since(started) > time.Duration(sent+1)*100*time.Millisecond {
			sent++
			method := map[bool]string{false: "@data", true: "@end"}[sent == parts]
			reply(zmqtest.Part(env, method, fmt.Sprintf("part %d\n", sent)))
		}
	})
	_, addr, _ := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{ep}, StreamBody: true, MaxBody: noLimit()})
	resp, b, err := postTen(t, addr)
	if resp.StatusCode != 200 || err != nil || strings.Count(b, "part ") != parts+1 {
		t.Errorf("a streamed reply of %d parts to a streamed body: %s %q, %v", parts+1, resp.Status, b, err)
	}
}

// A client that sent its whole body at once, and a worker that grants its
// first credit later than the read timeout: the worker is the slow one, and
// the body goes through (the read timeout counts only while the body waits
// for its client).
func TestStreamedBodyWaitingForItsWorker(t *testing.T) {
	var mu sync.Mutex
	type req struct {
		env [][]byte
		at  time.Time
	}
	var pending []req
	ep := zmqtest.ROUTERIdle(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case m.method() == "@body-end":
			reply(zmqtest.Part(m.envelope(), "200", "", "got it"))
		case strings.HasPrefix(m.method(), "@"):
		default:
			pending = append(pending, req{m.envelope(), time.Now()})
		}
	}, func(reply func([][]byte)) {
		mu.Lock()
		defer mu.Unlock()
		for len(pending) > 0 && time.Since(pending[0].at) > 1500*time.Millisecond {
			reply(zmqtest.Part(pending[0].env, "@credit", "1048576"))
			pending = pending[1:]
		}
	})
	_, addr, _ := startServerLog(t, Options{BodyTimeout: time.Second}, gateway.Route{Prefix: "/", Backend: []string{ep}, StreamBody: true, MaxBody: noLimit()})
	resp, b, err := postTen(t, addr)
	if resp.StatusCode != 200 || b != "got it" || err != nil {
		t.Errorf("a body sent at once, its worker's first credit later than the read timeout: %s %q, %v; want 200 \"got it\"", resp.Status, b, err)
	}
}

// With connection_notices, a streamed body whose worker leaves the
// connection's @open unanswered holds the socket as one whose worker grants
// nothing: 503 after the hold limit, and the log line says it was the
// @open that waited.
func TestStreamedBodyWaitingForItsOpenNotice(t *testing.T) {
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		switch {
		case m.method() == "@open": // never answered
		case m.method() == "@close":
			reply(zmqtest.Part(m.envelope(), "200", "", ""))
		case strings.HasPrefix(m.method(), "@"):
		default:
			reply(zmqtest.Part(m.envelope(), "@credit", "10485760"))
		}
	})
	_, addr, logs := startServerLog(t, Options{Drain: time.Second}, gateway.Route{Prefix: "/", Backend: []string{ep}, StreamBody: true,
		MaxBody: noLimit(), ConnectionNotices: true})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := strings.Repeat("x", 256<<10)
	fmt.Fprintf(c, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a liveness bound
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a streamed body on a connection whose @open is not answered: %s, want 503", resp.Status)
	}
	if !strings.Contains(logs.String(), "MODZMQ0310: a streamed body waited for its connection's @open notice to be answered") {
		t.Errorf("the log does not name the @open:\n%s", logs)
	}
}
