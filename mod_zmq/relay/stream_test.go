//go:build modzmq_test

package relay

import (
	"bytes"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// A stream's parts are read where they arrive, in the connection's buffer:
// no buffer is handed over per part and nothing is copied into Go, whose
// collector a copy of every part kept busy (docs/BENCHMARKS.md, "Streams").
// The last part is copied out before the connection goes back to the pool,
// so the next request on that connection does not overwrite it.
func TestStreamPartsAreReadWhereTheyArrive(t *testing.T) {
	const nparts, size = 64, 64 << 10
	parts := make([][]byte, 26)
	for i := range parts {
		parts[i] = bytes.Repeat([]byte{byte('a' + i)}, size)
	}
	lastPart := bytes.Repeat([]byte("end."), 1000)
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		// msg: routing id, request id, "", "MZMQ/1", method, target, ...
		if len(msg) < 6 || bytes.HasPrefix(msg[4], []byte("@")) {
			return // the front's @credit
		}
		env := msg[:3]
		if string(msg[5]) != "/stream" {
			reply(zmqtest.Part(env, "200", "", "plain"))
			return
		}
		// All of it at once, within the window: most parts are queued
		// before the front asks for them.
		reply(zmqtest.Part(env, "@stream", "200", "Content-Type: application/octet-stream\r\n"))
		for i := range nparts {
			reply(append(env[:3:3], []byte("@data"), parts[i%len(parts)]))
		}
		reply(append(env[:3:3], []byte("@end"), lastPart))
	})
	h, msg := openTestClient(ep)
	if h == 0 {
		t.Fatalf("backend: %s", msg)
	}
	setStreamWindow(h, 16<<20)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	i, bad := 0, 0
	s := relayStream(h, "/stream", func(b []byte) {
		if !bytes.Equal(b, parts[i%len(parts)]) {
			bad++
		}
		i++
	}, nil)
	runtime.ReadMemStats(&after)
	defer s.release()
	if s.rc != codeEnd {
		t.Fatalf("the stream ended with code %d: %s", s.rc, s.err)
	}
	if s.parts != nparts || bad != 0 {
		t.Fatalf("got %d parts, %d of them wrong; want %d, all right", s.parts, bad, nparts)
	}
	if s.copied != 0 {
		t.Errorf("%d of %d parts were handed over in a buffer of their own or copied, not read where they arrived", s.copied, nparts)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > nparts*size/4 {
		t.Errorf("Go allocated %d bytes while %d bytes streamed: the parts were copied into Go", got, nparts*size)
	}
	// The connection is back in the pool: a request that takes it reads
	// into its buffer; the last part must not be there.
	if got := relayLeavingReplyQueued(h, "/plain"); got.rc != 0 || string(got.body) != "plain" {
		t.Fatalf("a request after the stream: code %d %q: %s", got.rc, got.body, got.err)
	}
	if !bytes.Equal(s.last(), lastPart) {
		t.Fatalf("the last part changed after its connection served another request: %d bytes %.16q…", len(s.last()), s.last())
	}
}

// A held stream that is quiet costs no step of Go's: modzmq_wait asks for
// one only when a part comes, the stream is due (its idle timeout), or a
// worker was lost somewhere (a new epoch), and an Apache thread's every
// call into Go costs the scheduler a hand-off.
func TestQuietStreamWaitsWithoutSteppingGo(t *testing.T) {
	send := make(chan func(), 1)
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		if len(msg) < 6 || bytes.HasPrefix(msg[4], []byte("@")) {
			return // the front's @credit
		}
		env := append([][]byte(nil), msg[:3]...)
		reply(zmqtest.Part(env, "@stream", "200", "Content-Type: text/event-stream\r\n"))
		send <- func() {
			reply(append(env[:3:3], []byte("@data"), []byte("data: late\n\n")))
			reply(append(env[:3:3], []byte("@end"), nil))
		}
	})
	h, msg := openTestClient(ep)
	if h == 0 {
		t.Fatalf("backend: %s", msg)
	}
	setStreamWindow(h, 256<<10)

	var got []string
	bumped, stepsAtBump := false, 0
	s := relayStream(h, "/held", func(b []byte) { got = append(got, string(b)) }, func(s *streamed) {
		switch {
		case s.quiet == 3 && !bumped:
			// Another endpoint's worker is lost: the next wait asks for
			// a step, which finds this stream's worker alive.
			bumpEpochs()
			bumped, stepsAtBump = true, s.steps
		case s.quiet == 6:
			// The stream has been quiet through six waits: the worker
			// sends its part and ends.
			select {
			case f := <-send:
				go func() { time.Sleep(10 * time.Millisecond); f() }()
			default:
				t.Error("the worker never received the request")
			}
		}
	})
	defer s.release()
	if s.rc != codeEnd {
		t.Fatalf("the stream ended with code %d: %s", s.rc, s.err)
	}
	if s.parts != 1 || got[0] != "data: late\n\n" {
		t.Fatalf("got parts %q, want the one the worker sent", got)
	}
	if s.quiet < 6 {
		t.Fatalf("%d waits asked for no step: a quiet stream stepped Go after every wait", s.quiet)
	}
	if !bumped || s.steps < stepsAtBump+1 {
		t.Fatalf("a new epoch asked for no step (steps %d before it, %d in all)", stepsAtBump, s.steps)
	}
	// Steps: the head's wait, the epoch's, the part's and the end's (a
	// part and the end may come in one read), and a few the credit asks
	// for; never one per wait.
	if s.steps > 6 {
		t.Fatalf("%d steps for %d quiet waits: want a handful", s.steps, s.quiet)
	}
}

// An SSE event costs Go one step, not two: after a small part nothing is
// owed to the worker, so the shim waits for the next part in C
// (wait_first) instead of resuming at once.
func TestSmallPartsWaitBeforeTheyStep(t *testing.T) {
	const window, nparts = 64 << 10, 40
	event := bytes.Repeat([]byte("e"), 4000) // cost 4,064: a quarter of the window every 4 parts
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		if len(msg) < 6 || bytes.HasPrefix(msg[4], []byte("@")) {
			return // the front's @credit: the worker below never waits for it
		}
		env := append([][]byte(nil), msg[:3]...)
		reply(zmqtest.Part(env, "@stream", "200", "Content-Type: text/event-stream\r\n"))
		go func() {
			for range nparts {
				reply(append(env[:3:3], []byte("@data"), event))
				time.Sleep(2 * time.Millisecond)
			}
			reply(append(env[:3:3], []byte("@end"), nil))
		}()
	})
	h, msg := openTestClient(ep)
	if h == 0 {
		t.Fatalf("backend: %s", msg)
	}
	setStreamWindow(h, 1<<20) // room for every part: the test counts waits, not credit
	got := 0
	s := relayStream(h, "/events", func(b []byte) {
		if bytes.Equal(b, event) {
			got++
		}
	}, nil)
	defer s.release()
	if s.rc != codeEnd || got != nparts || s.parts != nparts {
		t.Fatalf("code %d (%s), %d parts, %d of them the event; want the end and %d", s.rc, s.err, s.parts, got, nparts)
	}
	// A quarter of a 1 MiB window is 64 parts' cost: none of the 40 owes a
	// grant, so the loop waits after every one.
	if s.waitedFirst != nparts {
		t.Fatalf("the loop waited before resuming after %d of %d parts", s.waitedFirst, nparts)
	}
}

// A worker that keeps to its credit and runs out of it is not left waiting
// for a grant: a part that leaves the front owing a quarter of the window
// is stepped after at once (no wait_first), and the step grants. Parts of
// 0.4 windows: the worker sends two and waits; waiting for a third part
// before stepping would wait for the stream's idle timeout.
func TestLargePartsStepAtOnceForCredit(t *testing.T) {
	const window, nparts = 64 << 10, 12
	event := bytes.Repeat([]byte("e"), 26000)
	credits := make(chan int64, 100)
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		if len(msg) >= 6 && string(msg[4]) == "@credit" {
			n, _ := strconv.ParseInt(string(msg[5]), 10, 64)
			credits <- n
			return
		}
		if len(msg) < 6 || bytes.HasPrefix(msg[4], []byte("@")) {
			return
		}
		env := append([][]byte(nil), msg[:3]...)
		head := zmqtest.Part(env, "@stream", "200", "Content-Type: application/octet-stream\r\n")
		reply(head)
		go func() {
			credit := int64(window) - int64(len(head[3])+len(head[4])+len(head[5])) - 64 // the head's cost, if it has one
			for range nparts {
				for credit < int64(len(event))+64 {
					select {
					case n := <-credits:
						credit += n
					case <-time.After(5 * time.Second):
						reply(append(env[:3:3], []byte("@abort"), []byte("no credit came")))
						return
					}
				}
				credit -= int64(len(event)) + 64
				reply(append(env[:3:3], []byte("@data"), event))
			}
			reply(append(env[:3:3], []byte("@end"), nil))
		}()
	})
	h, msg := openTestClient(ep)
	if h == 0 {
		t.Fatalf("backend: %s", msg)
	}
	setStreamWindow(h, window)
	got := 0
	s := relayStream(h, "/large", func(b []byte) {
		if bytes.Equal(b, event) {
			got++
		}
	}, nil)
	defer s.release()
	if s.rc != codeEnd || got != nparts {
		t.Fatalf("code %d (%s), %d of %d parts; want the end and all of them", s.rc, s.err, got, nparts)
	}
	if s.waitedFirst != 0 {
		t.Fatalf("the loop waited first after %d of %d parts, each of which left a grant owed", s.waitedFirst, nparts)
	}
}
