package stream

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/gateway"
)

// Streamed replies (docs/PROTOCOL.md, "Streams, credits and cancel
// notices"). The relay goroutine hands the owner one piece at a time in the
// request's slot: the head, then each part as an HTTP/1.1 chunk (or as raw
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
// are written by the relay goroutine before it hands the slot over with
// complete, and read by the owner after.
type streamSlot struct {
	more   bool          // data is not the last piece: the slot stays at the head of the queue
	abort  bool          // the stream broke after its head: close the connection, no terminating chunk
	sent   chan struct{} // the owner handed data to the socket; buffered, one piece at a time
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
func (s *Server) relayStream(ctx context.Context, sl *slot, h *gateway.Handle, resp *bridge.Response, head bool, minor int) {
	last, ok := s.streamParts(ctx, sl, h, resp, head, minor)
	resp.Stream.Close()
	if ok {
		s.complete(sl, last)
	}
}

// streamParts hands the owner the head and every part but the last, each
// after the owner sent the one before. It returns the last piece (nil when
// the stream broke: sl.st.abort), or ok false when the client went away.
func (s *Server) streamParts(ctx context.Context, sl *slot, h *gateway.Handle, resp *bridge.Response, head bool, minor int) (last []byte, ok bool) {
	bodyless := head || resp.Status == 204 || resp.Status == 304
	chunked := minor > 0 && !bodyless
	if minor == 0 && !bodyless {
		sl.close = true // an HTTP/1.0 body without a length ends with the connection
	}
	data := streamHead(resp, chunked, connHeader(sl.close, minor))
	if bodyless {
		return data, true
	}
	stall := time.Duration(h.Route.StreamIdleTimeout)
	if stall <= 0 {
		stall = bridge.DefaultStreamIdleTimeout
	}
	ss := &streamSlot{more: true, sent: make(chan struct{}, 1), msgMax: msgMax(h.Route.StreamWindowOrDefault()), stall: stall}
	sl.st = ss
	for {
		s.complete(sl, data)
		select {
		case <-ss.sent:
		case <-ctx.Done():
			return nil, false
		}
		part, end, err := resp.Stream.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil, false // the client went away
			}
			s.log.Error(fmt.Sprintf("%v: stream ended abnormally: %v", bridge.CodeStream, err), "route", h.Route.Pattern(),
				"backend", strings.Join(h.Route.Backend, " "), "connection", sl.c.hexID)
			ss.more, ss.abort = false, true
			return nil, true
		}
		data = appendPiece(make([]byte, 0, len(part)+16), part, end, chunked)
		if end {
			ss.more = false
			return data, true
		}
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
