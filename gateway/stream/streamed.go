package stream

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/gateway"
)

// Streamed replies (docs/PROTOCOL.md, "Streams, credits and cancel
// notices"). The relay (streamRelay) hands the owner one piece at a time in
// the request's slot: the head, then each part as an HTTP/1.1 chunk (or as raw
// bytes for an HTTP/1.0 client, whose connection then closes at the end).
// It asks the stream for the next part only once the owner has handed all
// of the previous piece to libzmq, and that request is what grants the
// worker credit back. The owner hands a piece over in messages of at most
// msgMax bytes, and libzmq takes a message for a connection only while it
// holds fewer than sndHWM not yet taken by its I/O thread (server.go),
// which takes the next only once the kernel took the bytes before. So a
// slow client slows its worker down, and what stream mode holds for one
// stream is bounded:
//
//   - the bridge and the relay: at most the window (stream_window), the
//     credit the worker spends on the parts it sends, the piece in hand
//     included, since credit comes back only when the next part is asked
//     for;
//   - libzmq: at most sndHWM+1 messages (queued, and being written) and the
//     8 KiB its I/O thread batches, so 3*msgMax + 8 KiB; msgMax is a
//     sixteenth of the window, from 4 to 64 KiB, so 56 KiB at the default
//     window of 256 KiB.
//
// About one window per stream, then, beyond the kernel's socket buffers
// (which Linux sizes itself; on the sending side up to net.ipv4.tcp_wmem's
// maximum). A client that takes nothing for the route's stream idle
// timeout is closed (MODZMQ0303), which ends its stream as a client that
// left.

// streamSlot is the state a streamed reply's slot carries. more and abort
// are written by the relay before it hands the slot over with complete,
// and read by the owner after.
type streamSlot struct {
	more   bool          // data is not the last piece: the slot stays at the head of the queue
	abort  bool          // the stream broke after its head: close the connection, no terminating chunk
	sent   func()        // the owner handed data to the socket: the relay may ask for the next part
	msgMax int           // the largest message a piece goes to libzmq in
	stall  time.Duration // how long the client may take nothing before it is closed
}

// msgMax is the largest message a stream with window goes to libzmq in: a
// sixteenth of the window, from 4 to 64 KiB.
func msgMax(window int64) int {
	return int(min(max(window/16, 4<<10), 64<<10))
}

// terminator ends a chunked body.
const terminator = "0\r\n\r\n"

// relayStream sends a streamed reply through sl and closes the stream,
// whatever happens. A client that goes away (ctx cancelled: the connection
// closed, by either side, or the server stopped) ends it quietly; the
// stream's Close then sends the worker @cancel when the route has notices.
// The stream is closed before its last piece goes to the owner: the owner
// may close the connection at once (cancelling ctx), and the stream's end
// must not read as the client's leaving.
//
// The relay goroutine hands the head to the owner and returns: the stream
// is then carried by a streamRelay, which no goroutine waits for while the
// stream is idle. Where the worker's connection offers no wake-up
// (bridge.Stream.Notify), the goroutine carries the stream to its end
// itself, waiting in Next.
func (s *Server) relayStream(ctx context.Context, sl *slot, h *gateway.Handle, resp *bridge.Response, head bool, minor int) {
	bodyless := head || resp.Status == 204 || resp.Status == 304
	chunked := minor > 0 && !bodyless
	if minor == 0 && !bodyless {
		sl.close = true // an HTTP/1.0 body without a length ends with the connection
	}
	data := streamHead(resp, chunked, connHeader(sl.close, minor))
	sl.status = resp.Status
	if bodyless {
		resp.Stream.Close()
		s.complete(sl, data)
		return
	}
	stall := time.Duration(h.Route.StreamIdleTimeout)
	if stall <= 0 {
		stall = bridge.DefaultStreamIdleTimeout
	}
	ss := &streamSlot{more: true, msgMax: msgMax(h.Route.StreamWindowOrDefault()), stall: stall}
	sl.st = ss
	r := &streamRelay{s: s, sl: sl, h: h, stream: resp.Stream, ctx: ctx, chunked: chunked, inHand: true}
	r.due.Store(math.MaxInt64)
	if !resp.Stream.Notify(nil) {
		sent := make(chan struct{}, 1)
		ss.sent = func() { sent <- struct{}{} }
		last, ok := r.wait(data, sent)
		resp.Stream.Close()
		if ok {
			s.complete(sl, last)
		}
		return
	}
	ss.sent = r.sent
	s.inFlight.Add(1)     // the stream holds the server until its end (streamRelay.end)
	r.running.Store(true) // what wakes step now waits until the relay is set up
	resp.Stream.Notify(r.wake)
	s.relays.add(s, r)
	s.complete(sl, data)
	r.running.Store(false)
	if r.woke.Load() && r.running.CompareAndSwap(false, true) {
		r.step()
	}
}

// wait hands the owner data (the head) and then every part but the last,
// each after the owner sent the one before, waiting in the stream's Next.
// It returns the last piece (nil when the stream broke: sl.st.abort), or ok
// false when the client went away.
func (r *streamRelay) wait(data []byte, sent <-chan struct{}) (last []byte, ok bool) {
	for {
		r.s.complete(r.sl, data)
		select {
		case <-sent:
		case <-r.ctx.Done():
			return nil, false
		}
		part, end, err := r.stream.Next()
		if err != nil {
			return r.broke(err)
		}
		data = appendPiece(make([]byte, 0, len(part)+16), part, end, r.chunked)
		r.sl.part = len(part)
		if end {
			r.sl.st.more = false
			return data, true
		}
	}
}

// broke handles a stream that broke after its head: quietly when the client
// went away (ok false), else logged, with the slot marked to abort.
func (r *streamRelay) broke(err error) (last []byte, ok bool) {
	if r.ctx.Err() != nil {
		return nil, false // the client went away
	}
	r.s.log.Error(fmt.Sprintf("%v: stream ended abnormally: %v", bridge.CodeStream, err), "route", r.h.Route.Pattern(),
		"backend", strings.Join(r.h.Route.Backend, " "), "connection", r.sl.c.hexID)
	r.sl.st.more, r.sl.st.abort = false, true
	return nil, true
}

// streamRelay carries a streamed reply after its head without a goroutine
// of its own while it waits: step runs, in one goroutine at a time, when
// the owner has sent the piece before (sent), when the worker's connection
// may hold a part or failed (wake, from the bridge), and when checkRelays
// finds the client gone or the stream's next check due (bridge Stream.Due:
// the idle timeout, a worker the endpoint's watch lost); it returns once
// nothing is left to do. An idle stream holds this struct, its slot and
// the stream's bridge state.
type streamRelay struct {
	s       *Server
	sl      *slot
	h       *gateway.Handle
	stream  *bridge.Stream
	ctx     context.Context // the connection's
	chunked bool

	running atomic.Bool  // a goroutine is in step (or the stream ended: it stays set)
	woke    atomic.Bool  // something happened since step last looked
	handed  atomic.Bool  // the owner sent the piece in hand
	due     atomic.Int64 // unix nanoseconds: when checkRelays runs step, unless a wake-up does first
	inHand  bool         // a piece is with the owner (step's own)
}

// wake makes step run, in a new goroutine: the bridge and the owner call it
// and must not wait.
func (r *streamRelay) wake() {
	r.woke.Store(true)
	if r.running.CompareAndSwap(false, true) {
		go r.step()
	}
}

// sent is the owner's word that it handed the piece to libzmq.
func (r *streamRelay) sent() {
	r.handed.Store(true)
	r.wake()
}

// step hands the owner the next piece once the one before was sent, and
// ends the stream when it is over; the caller set running.
func (r *streamRelay) step() {
	for {
		r.woke.Store(false)
		if r.ctx.Err() != nil {
			r.end(nil, false) // the client went away
			return
		}
		if r.inHand && r.handed.Swap(false) {
			r.inHand = false
		}
		// While the owner has a piece, the stream waits: its sending
		// bounds the wait (the client's stall limit).
		if !r.inHand {
			part, end, ok, err := r.stream.Step(0)
			if err != nil {
				r.end(r.broke(err))
				return
			}
			if ok {
				data := appendPiece(make([]byte, 0, len(part)+16), part, end, r.chunked)
				r.sl.part = len(part)
				if end {
					r.sl.st.more = false
					r.end(data, true)
					return
				}
				r.inHand = true
				r.s.complete(r.sl, data)
				continue
			}
			r.due.Store(time.Now().Add(r.stream.Due()).UnixNano())
		} else {
			r.due.Store(math.MaxInt64) // the owner's sending wakes it (sent)
		}
		r.running.Store(false)
		if !r.woke.Load() || !r.running.CompareAndSwap(false, true) {
			return
		}
	}
}

// end closes the stream, hands the owner the last piece (when ok) and lets
// the server go; running stays set, so nothing runs step again.
func (r *streamRelay) end(last []byte, ok bool) {
	r.stream.Close()
	if ok {
		r.s.complete(r.sl, last)
	}
	r.s.relays.remove(r)
	r.s.inFlight.Done()
}

// relayCheck is how often checkRelays looks at every held stream: as often
// as a stream waiting in Next looks at its context.
const relayCheck = 100 * time.Millisecond

// relaySet is a server's streamRelays, for checkRelays, which runs while
// there are any.
type relaySet struct {
	mu       sync.Mutex
	all      map[*streamRelay]struct{}
	checking bool
	batch    []*streamRelay // checkRelays' own
}

func (rs *relaySet) add(s *Server, r *streamRelay) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.all == nil {
		rs.all = map[*streamRelay]struct{}{}
	}
	rs.all[r] = struct{}{}
	if !rs.checking {
		rs.checking = true
		go s.checkRelays()
	}
}

func (rs *relaySet) remove(r *streamRelay) {
	rs.mu.Lock()
	delete(rs.all, r)
	rs.mu.Unlock()
}

// checkRelays looks at every held stream each relayCheck and runs step, in
// this one goroutine, for those whose client went away (or the server
// stopped) or whose next check is due, unless another goroutine runs it:
// what no wake-up announces is noticed within relayCheck of its time. It
// returns once no stream is held.
func (s *Server) checkRelays() {
	rs := &s.relays
	t := time.NewTicker(relayCheck)
	defer t.Stop()
	for now := range t.C {
		rs.mu.Lock()
		if len(rs.all) == 0 {
			rs.checking = false
			rs.mu.Unlock()
			return
		}
		batch := rs.batch[:0]
		for r := range rs.all {
			if (now.UnixNano() >= r.due.Load() || r.ctx.Err() != nil) && r.running.CompareAndSwap(false, true) {
				batch = append(batch, r)
			}
		}
		rs.mu.Unlock()
		for i, r := range batch {
			r.step()
			batch[i] = nil
		}
		rs.batch = batch[:0]
	}
}

// streamHead formats a streamed reply's head: no Content-Length; chunked
// when the body follows in chunks.
func streamHead(resp *bridge.Response, chunked bool, connection string) []byte {
	b := appendHead(make([]byte, 0, 160+len(resp.Headers)), resp)
	if chunked {
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	}
	if connection != "" {
		b = append(b, "Connection: "...)
		b = append(b, connection...)
		b = append(b, "\r\n"...)
	}
	return append(b, "\r\n"...)
}

// appendPiece appends a part as the client gets it: one chunk (none for an
// empty part) followed, after the last part, by the terminating chunk; or,
// unchunked, the bytes as they are.
func appendPiece(b, part []byte, end, chunked bool) []byte {
	if !chunked {
		return append(b, part...)
	}
	if len(part) > 0 {
		b = strconv.AppendInt(b, int64(len(part)), 16)
		b = append(b, "\r\n"...)
		b = append(b, part...)
		b = append(b, "\r\n"...)
	}
	if end {
		b = append(b, terminator...)
	}
	return b
}
