//go:build modzmq_test

package relay

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/internal/zmqtest"
)

// A reply Go receives itself (it was already queued when the call stepped
// after a wait ran out) reaches the caller whole: status, reason, headers
// and body, copied into C memory because they are not in the frames the
// wait received. It once came back with an empty body.
func TestReplyReceivedByGoKeepsItsParts(t *testing.T) {
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		// msg: routing id, request id, "", "MZMQ/1", method, target, ...
		if len(msg) < 6 {
			return
		}
		// Longer than the fast path's first wait (100 ms), so later
		// requests are handed to Go with nothing received.
		time.Sleep(150 * time.Millisecond)
		reply([][]byte{msg[0], msg[1], {}, []byte("201 Made"), []byte("X-Target: " + string(msg[5]) + "\r\n"), msg[5]})
	})
	h, msg := openTestClient(ep)
	if h == 0 {
		t.Fatalf("backend: %s", msg)
	}
	for i := range 4 {
		target := fmt.Sprintf("/r?n=%d", i)
		got := relayLeavingReplyQueued(h, target)
		if got.rc != 0 {
			t.Fatalf("request %d: code %d: %s", i, got.rc, got.err)
		}
		if got.status != 201 || string(got.reason) != "Made" || string(got.headers) != "X-Target: "+target+"\r\n" || string(got.body) != target {
			t.Fatalf("request %d: got %d %q %q %q, want 201 \"Made\" \"X-Target: %s\\r\\n\" %q",
				i, got.status, got.reason, got.headers, got.body, target, target)
		}
	}
}

// A request the fast path cannot send ends within its own timeout, not
// after connect timeouts. Here the worker takes TCP connections and, after
// the endpoint's watch and a first request, never greets: the fast path's
// dial tries for the request's timeout at most (the client's connect
// timeout is 2 s), and Go, which is then handed the request, gets only what
// is left of it, so its own dial gives up at once.
func TestFallbackKeepsTheRequestsDeadline(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		var held []net.Conn // closed with the listener
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for n := 0; ; n++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
			if n < 2 { // the watch, and the first request's connection
				c.Write(zmqtest.ZMTPPeerHello())
			}
		}
	}()
	h, msg := openTestClient("tcp://" + l.Addr().String())
	if h == 0 {
		t.Fatal(msg)
	}
	relayGet(h, "/first", 100) // answered by nobody: its connection is closed at its timeout
	for deadline := time.Now().Add(5 * time.Second); !hasFastPath(h) || endpointState(h, 0) != bridge.StateUp; {
		if time.Now().After(deadline) {
			t.Fatal("the endpoint is not up with a fast path")
		}
		time.Sleep(10 * time.Millisecond)
	}

	var mu sync.Mutex
	var seen []time.Duration
	f := func(o bridge.DialOptions) { mu.Lock(); seen = append(seen, o.ConnectTimeout); mu.Unlock() }
	dialSeen.Store(&f)
	defer dialSeen.Store(nil)
	const timeout = 300 * time.Millisecond
	r := relayGet(h, "/x", timeout.Milliseconds())
	dialSeen.Store(nil)
	if r.rc == 0 {
		t.Fatalf("a worker that never greets answered: %+v", r)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) < 2 {
		t.Fatalf("dials %v: want the fast path's and then Go's", seen)
	}
	if seen[0] > timeout {
		t.Errorf("the fast path's dial could take %v, beyond the request's timeout of %v", seen[0], timeout)
	}
	// The fast path's dial waited out the request's whole timeout for a
	// greeting: Go is left a millisecond.
	if last := seen[len(seen)-1]; last > timeout/2 {
		t.Errorf("Go's dial could take %v after the fast path had spent the request's %v: dials %v", last, timeout, seen)
	}
}
