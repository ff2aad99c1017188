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
