package stream

import (
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modzmq/modzmq/gateway"
	"github.com/modzmq/modzmq/internal/zmqtest"
)

// A request with Expect: 100-continue pipelined behind another gets its
// 100 Continue after the first one's answer.
func TestExpectContinuePipelined(t *testing.T) {
	var mu sync.Mutex
	var slow [][]byte
	var slowAt time.Time
	ep := zmqtest.ROUTERIdle(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case m.method() == "@body-end":
			reply(zmqtest.Part(m.envelope(), "200", "", "got "+string(m[8])))
		case strings.HasPrefix(m.method(), "@"):
		case strings.Contains(m.meta(), "stream-body: 1\r\n"):
			reply(zmqtest.Part(m.envelope(), "@credit", "1048576"))
		default:
			slow, slowAt = m.envelope(), time.Now()
		}
	}, func(reply func([][]byte)) {
		mu.Lock()
		defer mu.Unlock()
		if slow != nil && time.Since(slowAt) > 200*time.Millisecond {
			reply(zmqtest.Part(slow, "200", "", "first"))
			slow = nil
		}
	})
	_, addr := startServer(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{ep}, StreamBody: true, MaxBody: noLimit()})
	r := dial(t, addr)
	r.send("GET /first HTTP/1.1\r\nHost: x\r\n\r\nPOST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	status, _ := r.head()
	if !strings.HasPrefix(status, "HTTP/1.1 200") {
		t.Fatalf("first answer %q", status)
	}
	buf := make([]byte, 5)
	io.ReadFull(r.br, buf) // "first"
	r.c.SetReadDeadline(time.Now().Add(3 * time.Second))
	status, _ = r.statusLine()
	if status != "HTTP/1.1 100 Continue" {
		t.Errorf("after the first answer: %q; want HTTP/1.1 100 Continue for the pipelined Expect: 100-continue", status)
	}
}

// An HTTP/1.0 request's Expect: 100-continue is ignored (RFC 9110,
// 10.1.1): no interim answer, which a 1.0 client would take for the final
// one.
func TestExpectContinueIgnoredInHTTP10(t *testing.T) {
	ep := zmqtest.REP(t, targetEcho)
	_, addr := startServer(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{ep}})
	r := dial(t, addr)
	r.send("POST /ten HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello")
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a liveness bound
	status, err := r.statusLine()
	if !strings.HasPrefix(status, "HTTP/1.1 200 ") {
		t.Errorf("an HTTP/1.0 request with Expect: 100-continue and its body: the first line %q (%v), want the 200", status, err)
	}
}

// statusLine reads the next line the server sent.
func (r *rawClient) statusLine() (string, error) {
	line, err := r.br.ReadString('\n')
	return strings.TrimSpace(line), err
}

// With stream_body, the 100 Continue goes out once the worker asks for the
// body: a worker that refuses at once spares the client its upload (the
// client gets the 401 first, and no 100), and one that grants credit gets
// the body after the 100.
func TestExpectContinueWaitsForTheWorker(t *testing.T) {
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		switch {
		case m.method() == "@body-end":
			reply(zmqtest.Part(m.envelope(), "200", "", "got "+string(m[8])))
		case strings.HasPrefix(m.method(), "@"):
		case strings.HasPrefix(m.target(), "/refuse"):
			reply(zmqtest.Part(m.envelope(), "401", "", "who are you"))
		default:
			reply(zmqtest.Part(m.envelope(), "@credit", "1048576"))
		}
	})
	_, addr := startServer(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{ep}, StreamBody: true, MaxBody: noLimit()})

	r := dial(t, addr)
	r.send("POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n")
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a liveness bound
	if status, err := r.statusLine(); status != "HTTP/1.1 401 Unauthorized" {
		t.Errorf("a worker that refuses at once: the first line %q (%v), want its 401 before any 100 Continue", status, err)
	}

	r = dial(t, addr)
	r.send("POST /take HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if status, err := r.statusLine(); status != "HTTP/1.1 100 Continue" {
		t.Fatalf("a worker that grants credit: the first line %q (%v), want 100 Continue", status, err)
	}
	r.statusLine() // the empty line after it
	r.send("hello")
	status, _ := r.head()
	if body := make([]byte, len("got hello")); !strings.HasPrefix(status, "HTTP/1.1 200") {
		t.Errorf("the body after the 100: %q, want 200", status)
	} else if _, err := io.ReadFull(r.br, body); err != nil || string(body) != "got hello" {
		t.Errorf("the body after the 100: %q (%v), want \"got hello\"", body, err)
	}
}
