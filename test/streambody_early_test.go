package test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Early answers to streamed request bodies (docs/PROTOCOL.md, "Streamed
// request bodies"): a worker that answers after the first part (413) gets
// no further part once the front has its answer, its client gets the 413,
// and the front goes on; through Apache (ZmqStreamBody on) and
// zmq-gateway in both modes (stream_body: true), with
// test/workers/early_answer_worker.py, a real pyzmq worker that logs every
// part and grants back what each costs, its answer sent first.

// earlyCredit is the credit early_answer_worker.py grants a streamed body
// before its answer: all a front may send it, since the front must not
// take the grants that follow the answer.
const earlyCredit = 512 << 10

// earlyBodySize is the size of the body the client offers: 16 times the
// credit, so a front that went on relaying it after the answer, with the
// worker's later grants, would send far more than the credit.
const earlyBodySize = 8 << 20

// earlyPart is a part early_answer_worker.py logged.
type earlyPart struct {
	method string
	bytes  int
	after  bool // it came after the worker had answered
}

// earlyParts returns the parts w logged for request id.
func earlyParts(w *worker, id string) []earlyPart {
	var parts []earlyPart
	for _, l := range strings.Split(w.Output.String(), "\n") {
		f := strings.Fields(l)
		if len(f) == 5 && f[0] == "part" && f[1] == id {
			n, _ := strconv.Atoi(f[3])
			parts = append(parts, earlyPart{method: f[2], bytes: n, after: f[4] == "1"})
		}
	}
	return parts
}

// earlyRequestID waits until w has logged the streamed request for target
// and returns its id.
func earlyRequestID(t *testing.T, w *worker, target string) string {
	t.Helper()
	var id string
	checkFor(t, 10*time.Second, func() error {
		for _, l := range strings.Split(w.Output.String(), "\n") {
			if f := strings.Fields(l); len(f) == 4 && f[0] == "request" && f[2] == target {
				id = f[1]
				return nil
			}
		}
		return fmt.Errorf("the worker has not got %s:\n%s", target, w.Output.String())
	})
	return id
}

// settledParts returns the parts w logged for id once no more arrive: the
// count is the same at two readings half a second apart.
func settledParts(t *testing.T, w *worker, id string) []earlyPart {
	t.Helper()
	parts := earlyParts(w, id)
	for range 20 {
		time.Sleep(500 * time.Millisecond)
		next := earlyParts(w, id)
		if len(next) == len(parts) {
			return next
		}
		parts = next
	}
	t.Fatalf("the worker still gets parts of %s: %d so far", id, len(parts))
	return nil
}

// testEarlyAnswer POSTs earlyBodySize bytes to target on addr over a
// connection of its own, either at once (paused false) or with the first
// 64 KiB first and the rest only once it has read the answer; it checks
// that the client gets the worker's 413, that the worker got parts costing
// no more than the credit it granted before answering (what a front may
// have had in flight before the answer reached it) and no @body-end, and
// that a following request on a new connection is answered. With strict
// (and paused) it also checks that no part carried the bytes the client
// sent after the worker had answered.
func testEarlyAnswer(t *testing.T, addr, target string, w *worker, paused, strict bool) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second)) // a liveness bound
	body := make([]byte, earlyBodySize)
	for i := range body {
		body[i] = byte(i % 251)
	}
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", target, len(body))
	first := len(body)
	if paused {
		first = 64 << 10
	}
	sent := make(chan error, 1)
	answered := make(chan struct{})
	go func() {
		if _, err := conn.Write(append([]byte(head), body[:first]...)); err != nil || first == len(body) {
			sent <- err
			return
		}
		<-answered
		_, err := conn.Write(body[first:])
		sent <- err
	}()
	id := earlyRequestID(t, w, target)
	checkFor(t, 10*time.Second, func() error {
		if !strings.Contains(w.Output.String(), "answered "+id+"\n") {
			return fmt.Errorf("the worker has not answered %s:\n%s", id, w.Output.String())
		}
		return nil
	})
	// A paused client sends nothing more until it has the answer: the
	// front must not wait for its next bytes to deliver it.
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	close(answered)
	if err != nil {
		t.Fatalf("the answer (the client sent %d of %d bytes and waits for it): %v", first, len(body), err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 || string(got) != "no thanks" {
		t.Errorf("a streamed body answered after its first part: %s %q, want 413 \"no thanks\"", resp.Status, got)
	}
	if err := <-sent; err != nil {
		// The front may close the connection after its 413 without
		// reading the rest: the client's last writes then fail.
		t.Logf("the client's writes: %v", err)
	}
	conn.Close()

	parts := settledParts(t, w, id)
	cost, nbytes, after := 0, 0, 0
	for _, p := range parts {
		cost += p.bytes + 64
		nbytes += p.bytes
		if p.after {
			after++
		}
		if p.method != "@body" {
			t.Errorf("the worker got a %s part of a body it answered after the first part", p.method)
		}
	}
	t.Logf("the worker got %d parts, %d bytes (%d parts after its answer)", len(parts), nbytes, after)
	if len(parts) == 0 {
		t.Errorf("the worker got no part")
	}
	if cost > earlyCredit {
		t.Errorf("the worker got %d parts costing %d bytes (%d after its answer); it granted %d before answering",
			len(parts), cost, after, earlyCredit)
	}
	if strict && paused && nbytes > first {
		t.Errorf("the worker got %d bytes of the body; the client sent %d before the worker answered, the rest after",
			nbytes, first)
	}

	// The front goes on: a request on a new connection is answered.
	resp2, b := do(t, "GET", "http://"+addr+"/early/plain", "", nil)
	if resp2.StatusCode != 200 || string(b) != "plain" {
		t.Errorf("a request after the early answer: %s %q, want 200 \"plain\"", resp2.Status, b)
	}
}

// startEarlyWorker runs test/workers/early_answer_worker.py granting
// earlyCredit.
func startEarlyWorker(t *testing.T) *worker {
	t.Helper()
	return startPyScript(t, "test/workers/early_answer_worker.py", "--credit", strconv.Itoa(earlyCredit))
}

// Through Apache with ZmqStreamBody on: the client sends the 8 MiB body
// at once, or pauses after 64 KiB until the worker has answered.
func TestStreamedBodyEarlyAnswerThroughApache(t *testing.T) {
	w := startEarlyWorker(t)
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /early>
		SetHandler zmq
		ZmqBackend %s
		ZmqStreamBody on
		ZmqMaxBody 0
	</Location>
`, w.Endpoint)})
	addr := fmt.Sprintf("127.0.0.1:%d", h.Port)
	t.Run("Whole", func(t *testing.T) { testEarlyAnswer(t, addr, "/early/whole", w, false, false) })
	t.Run("Paused", func(t *testing.T) { testEarlyAnswer(t, addr, "/early/paused", w, true, false) })
}

// Through zmq-gateway, in HTTP mode and in stream mode, with
// stream_body: true: the same.
func TestStreamedBodyEarlyAnswerThroughTheGateway(t *testing.T) {
	forEachGatewayMode(t, func(t *testing.T, mode string) {
		w := startEarlyWorker(t)
		g := startGatewayProc(t, mode, fmt.Sprintf("  - prefix: /early\n    backend: [%s]\n    stream_body: true\n    max_body: 0\n", w.Endpoint))
		closeIdleFirst(t)
		t.Run("Whole", func(t *testing.T) { testEarlyAnswer(t, g.Addr, "/early/whole", w, false, false) })
		t.Run("Paused", func(t *testing.T) { testEarlyAnswer(t, g.Addr, "/early/paused", w, true, false) })
	})
}

// What PROTOCOL.md promises ("the front then sends no more parts"), for
// bytes the client sends after the worker answered: none of them reaches
// the worker. Every front waits for the client and the worker at once
// while the body comes (Apache in modzmq_handler.c's body loop, zmq-gateway
// in both modes in gateway.RelayBody, which reads the client in a
// goroutine), so a client that pauses gets the answer at once and what it
// sends after the answer is dropped. The worker may still get parts of the
// first 64 KiB that were on their way when it answered, never more.
func TestStreamedBodyNoPartAfterTheAnswer(t *testing.T) {
	t.Run("Apache", func(t *testing.T) {
		w := startEarlyWorker(t)
		h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /early>
		SetHandler zmq
		ZmqBackend %s
		ZmqStreamBody on
		ZmqMaxBody 0
	</Location>
`, w.Endpoint)})
		testEarlyAnswer(t, fmt.Sprintf("127.0.0.1:%d", h.Port), "/early/paused", w, true, true)
	})
	forEachGatewayMode(t, func(t *testing.T, mode string) {
		w := startEarlyWorker(t)
		g := startGatewayProc(t, mode, fmt.Sprintf("  - prefix: /early\n    backend: [%s]\n    stream_body: true\n    max_body: 0\n", w.Endpoint))
		closeIdleFirst(t)
		testEarlyAnswer(t, g.Addr, "/early/paused", w, true, true)
	})
}
