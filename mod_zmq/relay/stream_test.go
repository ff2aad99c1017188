//go:build modzmq_test

package relay

import (
	"bytes"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modzmq/modzmq/bridge"
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
// is stepped after at once (no wait_first), and the step grants (C or Go). Parts of
// 0.4 windows: the worker sends two and waits; waiting for a third part
// before stepping would wait for the stream's idle timeout.
func TestLargePartsStepAtOnceForCredit(t *testing.T) {
	const window, nparts = 64 << 10, 12
	event := bytes.Repeat([]byte("e"), 26000)
	parts := make([][]byte, nparts)
	for i := range parts {
		parts[i] = event
	}
	ep := pacedWorker(t, window, parts, make(chan int64, 1))
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

// pacedWorker answers every request with a stream of parts (nil: a
// keep-alive), sending each only when the credit it was granted covers it,
// as a worker that counts credits does, then @end. It sends the total of
// the grants it received on granted after the end.
func pacedWorker(t *testing.T, window int64, parts [][]byte, granted chan<- int64) string {
	credits := make(chan int64, 1000)
	return zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		if len(msg) >= 6 && string(msg[4]) == "@credit" {
			n, _ := strconv.ParseInt(string(msg[5]), 10, 64)
			credits <- n
			return
		}
		if len(msg) < 6 || bytes.HasPrefix(msg[4], []byte("@")) {
			return
		}
		env := append([][]byte(nil), msg[:3]...)
		reply(zmqtest.Part(env, "@stream", "200", "Content-Type: application/octet-stream\r\n"))
		go func() {
			credit, total := window, int64(0)
			for _, p := range parts {
				for credit < int64(len(p))+64 {
					select {
					case n := <-credits:
						credit, total = credit+n, total+n
					case <-time.After(5 * time.Second):
						reply(append(env[:3:3], []byte("@abort"), []byte("no credit came")))
						return
					}
				}
				credit -= int64(len(p)) + 64
				if p == nil {
					reply(append(env[:3:3], []byte("@keep-alive"), nil))
				} else {
					reply(append(env[:3:3], []byte("@data"), p))
				}
			}
			reply(append(env[:3:3], []byte("@end"), nil))
			for {
				select {
				case n := <-credits:
					total += n
				case <-time.After(200 * time.Millisecond):
					granted <- total
					return
				}
			}
		}()
	})
}

// While Go lends a stream its credit, its parts and keep-alives are taken
// and its grants sent by the C step (fast.c: stream_fast), with no call into
// Go: a download of 64 KiB parts used to step Go for every part, each
// leaving a grant owed. Through it the worker is paced as Go paces it: it
// never waits for credit, the front never holds more than the window, and
// the buffered bytes the counters show go back to 0 at the end.
func TestStreamPartsStayInC(t *testing.T) {
	const window = 256 << 10
	var parts [][]byte
	for i := range 96 {
		switch {
		case i%16 == 5:
			parts = append(parts, nil) // a keep-alive
		case i%3 == 0:
			parts = append(parts, bytes.Repeat([]byte{byte('a' + i%26)}, 64<<10))
		default:
			parts = append(parts, bytes.Repeat([]byte{byte('a' + i%26)}, 100+i))
		}
	}
	var want []byte
	for _, p := range parts {
		want = append(want, p...)
	}
	for _, lend := range []bool{true, false} {
		granted := make(chan int64, 1)
		h, msg := openTestClient(pacedWorker(t, window, parts, granted))
		if h == 0 {
			t.Fatalf("backend: %s", msg)
		}
		setStreamWindow(h, window)
		lendStreams = lend
		var got []byte
		maxBuffered := int64(0)
		s := relayStream(h, "/download", func(b []byte) {
			got = append(got, b...)
			if buffered, _, _ := streamCounters(h); buffered > maxBuffered {
				maxBuffered = buffered
			}
		}, nil)
		lendStreams = true
		if s.rc != codeEnd || !bytes.Equal(got, want) {
			s.release()
			t.Fatalf("lend %v: code %d (%s), %d bytes (want %d), equal %v", lend, s.rc, s.err, len(got), len(want), bytes.Equal(got, want))
		}
		s.release()
		total := zmqtest.WaitFor(t, granted, "the worker's count of its grants")
		buffered, nparts, nbytes := streamCounters(h)
		t.Logf("lend %v: %d parts, %d calls into Go, %d bytes granted, at most %d buffered", lend, s.parts, s.goSteps, total, maxBuffered)
		if maxBuffered > window || maxBuffered <= 0 {
			t.Errorf("lend %v: the counters showed up to %d bytes buffered: want some, within the window of %d", lend, maxBuffered, window)
		}
		if buffered != 0 || nparts != int64(s.parts) || nbytes != int64(len(want)) {
			t.Errorf("lend %v: counters after the end: %d buffered, %d parts, %d bytes; want 0, %d, %d", lend, buffered, nparts, nbytes, s.parts, len(want))
		}
		// The grants add up to what the client took, less what was owed
		// at the end, which is under the grant threshold.
		if cost := int64(len(want)) + 64*int64(len(parts)); total > cost || total < cost-window/2 {
			t.Errorf("lend %v: the worker was granted %d bytes for parts costing %d", lend, total, cost)
		}
		switch {
		case lend && s.goSteps > 8:
			t.Errorf("lent: %d calls into Go for %d parts: the C step took few of them", s.goSteps, s.parts)
		case !lend && s.goSteps < int64(len(parts))/3:
			t.Errorf("not lent: %d calls into Go for %d parts: the test does not tell the C step from Go's", s.goSteps, s.parts)
		}
	}
}

// What the C step does not take goes to Go's step as it came: a part for
// another request is dropped there (and the stream goes on), a part beyond
// the worker's credit breaks the stream (MODZMQ0103).
func TestStreamCStepLeavesTheRestToGo(t *testing.T) {
	const window = 64 << 10
	big := bytes.Repeat([]byte("x"), window) // costs more than the whole window
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		if len(msg) < 6 || bytes.HasPrefix(msg[4], []byte("@")) {
			return
		}
		env := append([][]byte(nil), msg[:3]...)
		reply(zmqtest.Part(env, "@stream", "200", "Content-Type: text/plain\r\n"))
		go func() {
			for range 20 {
				reply(append(env[:3:3], []byte("@data"), []byte("one")))
			}
			time.Sleep(20 * time.Millisecond) // lent by now
			stray := [][]byte{env[0], []byte("no-such-request"), nil, []byte("@data"), []byte("stray")}
			reply(stray)
			reply(append(env[:3:3], []byte("@data"), []byte("two")))
			time.Sleep(20 * time.Millisecond)
			if string(msg[5]) == "/over" {
				reply(append(env[:3:3], []byte("@data"), big))
			}
			reply(append(env[:3:3], []byte("@end"), []byte("three")))
		}()
	})
	h, msg := openTestClient(ep)
	if h == 0 {
		t.Fatalf("backend: %s", msg)
	}
	setStreamWindow(h, window)

	var got []string
	s := relayStream(h, "/stray", func(b []byte) { got = append(got, string(b)) }, nil)
	want := strings.Repeat("one,", 20) + "two"
	if s.rc != codeEnd || strings.Join(got, ",") != want || string(s.last()) != "three" {
		t.Errorf("a stray part: code %d (%s), parts %q, last %q; want %s and three", s.rc, s.err, got, s.last(), want)
	}
	// The "one"s were the C step's: the stream was lent when the stray
	// part came.
	if s.goSteps > 8 {
		t.Errorf("%d calls into Go for %d parts: the C step took few of them", s.goSteps, s.parts)
	}
	s.release()

	got = nil
	s = relayStream(h, "/over", func(b []byte) { got = append(got, string(b[:min(len(b), 3)])) }, nil)
	defer s.release()
	if s.rc == codeEnd || !strings.Contains(s.err, "MODZMQ0103") || !strings.Contains(s.err, "beyond its credit") {
		t.Fatalf("a part beyond the credit: code %d (%s), parts %q; want the stream broken, MODZMQ0103", s.rc, s.err, got)
	}
}

// checkStreamKind holds the C step's verdict on a worker's message to Go's
// (bridge.Stream.Step): it takes a part of data or a keep-alive for the
// stream's request within the credit, with the same bytes, and leaves
// everything else to Go.
func checkStreamKind(t *testing.T, frames [][]byte, id []byte, credit int64) {
	t.Helper()
	kind, data := streamKind(frames, id, credit)
	want := 0
	var wantData []byte
	if len(frames) >= 2 && bytes.Equal(frames[0], id) && len(frames[1]) == 0 {
		k, b, err := bridge.DecodePart(frames[2:])
		if err == nil && int64(len(b))+bridge.PartCost <= credit {
			switch k {
			case bridge.PartData:
				want, wantData = 1, b
			case bridge.PartKeepAlive:
				want = 2
			}
		}
	}
	if kind != want || !bytes.Equal(data, wantData) {
		t.Fatalf("%q (id %q, credit %d): C says %d with %q, want %d with %q", frames, id, credit, kind, data, want, wantData)
	}
}

func FuzzStreamKind(f *testing.F) {
	f.Add([]byte("r1"), []byte("r1"), []byte(""), []byte("@data"), []byte("data: 1\n\n"), uint8(4), uint32(1000))
	f.Add([]byte("r1"), []byte("r1"), []byte(""), []byte("@keep-alive"), []byte(""), uint8(4), uint32(64))
	f.Add([]byte("r1"), []byte("r1"), []byte(""), []byte("@keep-alive"), []byte("xx"), uint8(4), uint32(64))
	f.Add([]byte("r1"), []byte("r1"), []byte(""), []byte("@data"), []byte("too big"), uint8(4), uint32(70))
	f.Add([]byte("r1"), []byte("r2"), []byte(""), []byte("@data"), []byte("x"), uint8(4), uint32(1000))
	f.Add([]byte("r1"), []byte("r1"), []byte("x"), []byte("@data"), []byte("x"), uint8(4), uint32(1000))
	f.Add([]byte("r1"), []byte("r1"), []byte(""), []byte("@end"), []byte("x"), uint8(4), uint32(1000))
	f.Add([]byte("r1"), []byte("r1"), []byte(""), []byte("@data"), []byte("x"), uint8(5), uint32(1000))
	f.Add([]byte("r1"), []byte("r1"), []byte(""), []byte("@data"), []byte("x"), uint8(3), uint32(1000))
	f.Fuzz(func(t *testing.T, id, msgID, delim, kind, body []byte, n uint8, credit uint32) {
		frames := [][]byte{msgID, delim, kind, body, []byte("extra"), nil}[:int(n)%7]
		checkStreamKind(t, frames, id, int64(credit))
	})
}

// A client that goes away while the C step holds the stream's credit: Go
// takes it back before it closes the stream, so the counters' buffered
// bytes go back to 0 and the worker gets its cancel notice.
func TestStreamCancelledWhileLent(t *testing.T) {
	const window = 256 << 10
	cancels := make(chan string, 1)
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		if len(msg) >= 6 && string(msg[4]) == "@cancel" {
			cancels <- string(msg[1])
			return
		}
		if len(msg) < 6 || bytes.HasPrefix(msg[4], []byte("@")) {
			return
		}
		env := append([][]byte(nil), msg[:3]...)
		reply(zmqtest.Part(env, "@stream", "200", "Content-Type: text/event-stream\r\n"))
		for i := range 40 {
			reply(append(env[:3:3], []byte("@data"), fmt.Appendf(nil, "data: %d\n\n", i)))
		}
	})
	h, msg := openTestClient(ep)
	if h == 0 {
		t.Fatalf("backend: %s", msg)
	}
	setStreamWindow(h, window)
	setNotices(h)
	s := relayStreamUntil(h, "/events", func([]byte) {}, nil, 30)
	defer s.release()
	if s.rc != -1 || s.parts != 30 {
		t.Fatalf("code %d (%s) after %d parts; want the client gone after 30", s.rc, s.err, s.parts)
	}
	if s.goSteps > 8 {
		t.Errorf("%d calls into Go for 30 parts: the stream was not lent when its client left", s.goSteps)
	}
	zmqtest.WaitFor(t, cancels, "the worker's cancel notice")
	if buffered, parts, _ := streamCounters(h); buffered != 0 || parts != 30 {
		t.Errorf("after the cancel the counters show %d bytes buffered and %d parts; want 0 and 30", buffered, parts)
	}
}
