package main

// The streaming benchmark's peers (`modzmq-bench -only streams`):
//
//	peer -mode sse -listen tcp://127.0.0.1:5555      MZMQ/1 ROUTER worker that streams (libzmq)
//	peer -mode sse-zmtp -listen tcp://127.0.0.1:5555 the same worker on the worker package (zmtpstreams.go)
//	peer -mode origin -listen 127.0.0.1:8092         net/http: GRIP origin for Pushpin, transfer backend
//
// The worker answers by target (the path's last element, any prefix):
//
//	.../hold             head, one event, then a keep-alive every -keepalive
//	.../tick?ms=M&n=N    head, then an event every M ms, "data: <send time, Unix ns>", N events, @end
//	.../down?bytes=N     head, then N bytes in 63 KiB parts, paced by credit, @end
//	a request with a streamed body (meta stream-body: 1): takes it by granting credit,
//	                     answers 200 {"bytes":N} at @body-end
//	anything else        200 "ok\n"
//
// With notices on, @cancel ends a stream at once. In both modes one
// goroutine owns the streams (sworker): it handles what arrived, then sends
// whatever is due, then waits until the next thing is due. Under -mode sse
// that goroutine owns the libzmq socket too (libzmq sockets are not
// goroutine-safe) and polls it.

import (
	"bytes"
	"container/heap"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/modzmq/modzmq/bridge"
)

const partCost = 64 // what every stream message after the head costs beyond its bytes

var (
	part64k = bytes.Repeat([]byte("x"), 64<<10) // the origin's writes
	// A download's parts, of the size docs/PROTOCOL.md recommends for bulk
	// data: each message, frames included, fits one loopback TCP segment.
	downPart  = part64k[:bridge.BodyPart]
	sseHead   = []byte("Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n")
	octetHead = []byte("Content-Type: application/octet-stream\r\n")
)

type skind int

const (
	kHold skind = iota
	kTick
	kDown
)

// speer is where a stream's messages come from and its parts go: the
// libzmq ROUTER socket (-mode sse: one for every front), or one front's
// connection (-mode sse-zmtp). Its streams are by request id.
type speer struct {
	send    func(env [][]byte, frames ...[]byte)
	streams map[string]*sstream
	ups     uploads
}

func newSpeer(send func(env [][]byte, frames ...[]byte), upWindow int64) *speer {
	return &speer{send: send, streams: map[string]*sstream{}, ups: uploads{window: upWindow, m: map[string]*upload{}}}
}

// uploads are the streamed request bodies a peer is taking, by request id.
// Under -mode sse-zmtp they live on the connection's own goroutine, which
// takes each part where it was read, without a copy or a hop to the
// streams' goroutine.
type uploads struct {
	window int64 // credit granted at the start; more each time a quarter of it is used
	m      map[string]*upload
}

type upload struct {
	got  int64 // bytes received
	used int64 // credit used since the last grant
}

// take handles f (a message's frames after its envelope env) if it belongs
// to an upload: a request with a streamed body, or an upload's @body,
// @body-end or @cancel. It reports whether it did; it keeps no frame.
func (u *uploads) take(send func(env [][]byte, frames ...[]byte), env [][]byte, f [][]byte) bool {
	method, meta := f[1], f[4]
	if len(method) > 0 && method[0] != '@' {
		if v, _ := metaValue(meta, "stream-body"); v != "1" {
			return false
		}
		id, _ := metaValue(meta, "request-id")
		u.m[id] = &upload{}
		send(env, []byte("@credit"), strconv.AppendInt(nil, u.window, 10))
		return true
	}
	id, _ := metaValue(meta, "request-id")
	up := u.m[id]
	if up == nil {
		return false
	}
	switch string(method) {
	case "@body":
		up.got += int64(len(f[5]))
		up.used += int64(len(f[5])) + partCost
		if up.used >= u.window/4 {
			send(env, []byte("@credit"), strconv.AppendInt(nil, up.used, 10))
			up.used = 0
		}
	case "@body-end":
		up.got += int64(len(f[5]))
		delete(u.m, id)
		send(env, []byte("200"), []byte("Content-Type: application/json\r\n"), fmt.Appendf(nil, `{"bytes":%d}`, up.got))
	case "@cancel":
		delete(u.m, id)
	default:
		return false
	}
	return true
}

type sstream struct {
	p      *speer
	env    [][]byte
	id     string
	kind   skind
	credit int64
	period time.Duration
	left   int
	due    time.Time
	idx    int // heap index, -1 when not scheduled
	total  int64
	sent   int64 // download: bytes sent
	dead   bool
}

type dueHeap []*sstream

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].idx = i; h[j].idx = j }
func (h *dueHeap) Push(x any)        { s := x.(*sstream); s.idx = len(*h); *h = append(*h, s) }
func (h *dueHeap) Pop() any {
	old := *h
	s := old[len(old)-1]
	*h = old[:len(old)-1]
	s.idx = -1
	return s
}

// sworker is the streams' state, one goroutine's alone.
type sworker struct {
	due       dueHeap
	keepalive time.Duration
	skipped   int64 // tick events skipped for want of credit
}

func metaValue(meta []byte, name string) (string, bool) {
	for _, line := range bytes.Split(meta, []byte("\r\n")) {
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && string(k) == name {
			return string(bytes.TrimSpace(v)), true
		}
	}
	return "", false
}

func newSworker(keepalive time.Duration) *sworker {
	// Under -mode sse an upload's parts arrive as new 64 KiB slices
	// (pebbe/zmq4 copies each frame it receives into one), with a live heap
	// of a few MB: at the default GOGC the collector ran every few
	// dozen parts and cost the worker more than libzmq did, on the cores
	// Apache and the client share (docs/BENCHMARKS.md, "1 GiB through
	// Apache"). The net/http backend it is compared with reads into one
	// reused buffer. Collecting at 5 times the live heap takes the collector
	// out of the way.
	debug.SetGCPercent(400)
	return &sworker{keepalive: keepalive}
}

func serveStreams(listen string, keepalive time.Duration, upWindow int64) {
	w := newSworker(keepalive)
	s, err := zmq.NewSocket(zmq.ROUTER)
	if err != nil {
		log.Fatal(err)
	}
	s.SetSndhwm(0) // parts are paced by credit, never dropped
	s.SetRcvhwm(0)
	s.SetBacklog(4096) // Apache opens a connection per stream: 1,000 at once
	if err := s.Bind(listen); err != nil {
		log.Fatal(err)
	}
	p := newSpeer(zmqSender(s), upWindow)
	poller := zmq.NewPoller()
	poller.Add(s, zmq.POLLIN)
	for {
		wait := 100 * time.Millisecond
		if len(w.due) > 0 {
			wait = min(wait, max(time.Until(w.due[0].due), 0))
		}
		if wait > 0 {
			// pebbe/zmq4 hands zmq_poll whole milliseconds: a wait under
			// one would be a poll that returns at once, and the loop would
			// spin on a core the fronts need. An event fires up to 1 ms
			// late; its latency counts from its send, not from its due time.
			wait = max(wait, time.Millisecond)
		}
		poller.Poll(wait)
		for n := 0; n < 2000; n++ { // then look at what is due
			msg, err := s.RecvMessageBytes(zmq.DONTWAIT)
			if err != nil {
				break
			}
			w.handle(p, msg)
		}
		w.fireDue(time.Now())
	}
}

// fireDue sends what is due by now.
func (w *sworker) fireDue(now time.Time) {
	for len(w.due) > 0 && !w.due[0].due.After(now) {
		st := heap.Pop(&w.due).(*sstream)
		if !st.dead {
			w.fire(st, now)
		}
	}
}

// send sends a message of the stream's.
func (st *sstream) send(frames ...[]byte) { st.p.send(st.env, frames...) }

func (w *sworker) end(st *sstream) {
	st.dead = true
	if st.p.streams[st.id] == st {
		delete(st.p.streams, st.id)
	}
	if st.idx >= 0 {
		heap.Remove(&w.due, st.idx)
	}
}

// drop ends the streams of p, whose connection ended.
func (w *sworker) drop(p *speer) {
	for _, st := range p.streams {
		w.end(st)
	}
}

// spend takes cost from the stream's credit; false when there is not enough.
func (st *sstream) spend(cost int64) bool {
	if st.credit < cost {
		return false
	}
	st.credit -= cost
	return true
}

func (w *sworker) fire(st *sstream, now time.Time) {
	switch st.kind {
	case kHold:
		if st.spend(partCost) {
			st.send([]byte("@keep-alive"), nil)
		}
		st.due = now.Add(w.keepalive)
		heap.Push(&w.due, st)
	case kTick:
		if st.left <= 0 {
			if st.spend(partCost) {
				st.send([]byte("@end"), nil)
				w.end(st)
			} else {
				st.due = now.Add(st.period)
				heap.Push(&w.due, st)
			}
			return
		}
		st.left--
		ev := fmt.Appendf(nil, "data: %d\n\n", time.Now().UnixNano())
		if st.spend(int64(len(ev)) + partCost) {
			st.send([]byte("@data"), ev)
		} else {
			w.skipped++
		}
		// The next event is due a period after this one was, not after now:
		// a late wake-up does not slow the stream's rate.
		st.due = st.due.Add(st.period)
		if st.due.Before(now) {
			st.due = now
		}
		heap.Push(&w.due, st)
	}
}

// step sends the download's next parts as far as its credit allows.
func (w *sworker) step(st *sstream) {
	for st.sent < st.total {
		n := min(int64(len(downPart)), st.total-st.sent)
		if !st.spend(n + partCost) {
			return
		}
		st.send([]byte("@data"), downPart[:n])
		st.sent += n
	}
	if st.spend(partCost) {
		st.send([]byte("@end"), nil)
		w.end(st)
	}
}

// splitEnvelope splits an MZMQ/1 message into its envelope (through the
// empty delimiter) and its six frames; false if it has not that shape.
func splitEnvelope(msg [][]byte) (env, f [][]byte, ok bool) {
	i := 0
	for i < len(msg) && len(msg[i]) != 0 {
		i++
	}
	if len(msg)-i-1 != 6 {
		return nil, nil, false
	}
	return msg[: i+1 : i+1], msg[i+1:], true
}

// handle handles a message from p; the frames are its to keep.
func (w *sworker) handle(p *speer, msg [][]byte) {
	env, f, ok := splitEnvelope(msg)
	if !ok {
		return
	}
	if p.ups.take(p.send, env, f) {
		return
	}
	method, target, meta := string(f[1]), string(f[2]), f[4]
	id, _ := metaValue(meta, "request-id")
	switch method {
	case "@credit":
		if st := p.streams[id]; st != nil {
			n, _ := strconv.ParseInt(target, 10, 64)
			st.credit += n
			if st.kind == kDown {
				w.step(st)
			}
		}
		return
	case "@cancel":
		if st := p.streams[id]; st != nil {
			w.end(st)
		}
		return
	}
	if strings.HasPrefix(method, "@") {
		return
	}
	st := &sstream{p: p, env: env, id: id, idx: -1}
	credits, streaming := metaValue(meta, "stream-credits")
	path, rawq, _ := strings.Cut(target, "?")
	q, _ := url.ParseQuery(rawq)
	last := path[strings.LastIndexByte(path, '/')+1:]
	if !streaming || (last != "hold" && last != "tick" && last != "down") {
		p.send(env, []byte("200"), []byte("Content-Type: text/plain\r\n"), []byte("ok\n"))
		return
	}
	st.credit, _ = strconv.ParseInt(credits, 10, 64)
	p.streams[id] = st
	now := time.Now()
	switch last {
	case "hold":
		st.kind = kHold
		p.send(env, []byte("@stream"), []byte("200"), sseHead)
		ev := []byte("data: hello\n\n")
		st.spend(int64(len(ev)) + partCost)
		p.send(env, []byte("@data"), ev)
		st.due = now.Add(w.keepalive)
		heap.Push(&w.due, st)
	case "tick":
		st.kind = kTick
		ms, _ := strconv.Atoi(q.Get("ms"))
		st.period = time.Duration(max(ms, 1)) * time.Millisecond
		st.left, _ = strconv.Atoi(q.Get("n"))
		p.send(env, []byte("@stream"), []byte("200"), sseHead)
		st.due = now
		w.fire(st, now)
	case "down":
		st.kind = kDown
		st.total, _ = strconv.ParseInt(q.Get("bytes"), 10, 64)
		p.send(env, []byte("@stream"), []byte("200"), octetHead)
		w.step(st)
	}
}

// serveOrigin is the HTTP side: a GRIP origin that tells Pushpin to hold
// each stream on the channel the client names (?ch=), and the backend
// mod_proxy_http relays 1 GiB transfers to (/up takes a body, /down?bytes=N
// sends N bytes).
func serveOrigin(listen string) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		last := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
		switch {
		case last == "hold" || last == "tick":
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Grip-Hold", "stream")
			w.Header().Set("Grip-Channel", r.URL.Query().Get("ch"))
			io.WriteString(w, "data: hello\n\n")
		case last == "up":
			n, err := io.CopyBuffer(io.Discard, r.Body, make([]byte, 64<<10))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"bytes":%d}`, n)
		case last == "down":
			total, _ := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.FormatInt(total, 10))
			for total > 0 {
				n := min(int64(len(part64k)), total)
				if _, err := w.Write(part64k[:n]); err != nil {
					return
				}
				total -= n
			}
		default:
			io.WriteString(w, "ok\n")
		}
	})
	log.Fatal(http.ListenAndServe(listen, h))
}
