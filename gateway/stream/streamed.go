package stream

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/gateway"
)

// Streamed replies (docs/PROTOCOL.md, "Streams, credits and cancel
// notices"). The relay goroutine hands the owner one piece at a time in the
// request's slot: the head, then each part as an HTTP/1.1 chunk (or as raw
// bytes for an HTTP/1.0 client, whose connection then closes at the end).
// It asks the stream for the next part only once the owner has handed the
// previous piece to the socket, and that request is what grants the worker
// credit back: this process holds one piece per stream, and the bridge at
// most the window. What the client has not read yet waits in libzmq's
// queue for the connection (ZMQ_SNDHWM messages, then the kernel's
// buffers); a client that stops reading fills it and is closed as any
// other (MODZMQ0303), which ends its stream as a client that left.

// streamSlot is the state a streamed reply's slot carries. more and abort
// are written by the relay goroutine before it hands the slot over with
// complete, and read by the owner after.
type streamSlot struct {
	more  bool          // data is not the last piece: the slot stays at the head of the queue
	abort bool          // the stream broke after its head: close the connection, no terminating chunk
	sent  chan struct{} // the owner handed data to the socket; buffered, one piece at a time
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
	ss := &streamSlot{more: true, sent: make(chan struct{}, 1)}
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
