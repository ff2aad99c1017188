package bridge

// This file is the reference implementation of the MZMQ/1 wire protocol
// specified in docs/PROTOCOL.md. The only other one is the Apache module's C
// fast path (mod_zmq/relay/fast.c), which builds requests as EncodeRequest
// does (FuzzFastEncode checks that) and accepts only replies DecodeReply
// accepts (FuzzFastDecode checks that).

import (
	"bytes"
	"strconv"
)

// Version is the first frame of every MZMQ/1 request.
const Version = "MZMQ/1"

var versionFrame = []byte(Version)

// Request is one HTTP request as a front hands it to the bridge. Byte slices
// are borrowed for the duration of the call; the bridge never keeps them.
type Request struct {
	Method []byte
	// Target is the request target exactly as the client sent it: path and
	// query, not decoded.
	Target []byte
	// Headers holds "Name: value\r\n" lines in the order the front keeps them.
	Headers []byte
	// Meta holds trusted "name: value\r\n" lines set by the front. The bridge
	// puts "request-id" in front of them.
	Meta []byte
	Body []byte
	// StreamWindow, when above zero, lets the worker stream its reply
	// (meta stream-credits), with this many bytes of credit: the most the
	// front holds for the stream.
	StreamWindow int64
	// StreamBody: the body is not in Body but sent in parts the worker asks
	// for (meta stream-body; Call.SendBody).
	StreamBody bool
	// WebSocket: the request is a WebSocket handshake (meta websocket: 1);
	// a worker that accepts it makes Response.WebSocket. MaxMessage bounds
	// its messages (DefaultWebSocketMaxMessage when zero).
	WebSocket  bool
	MaxMessage int64
}

// Response is a worker's reply after validation. Headers holds validated
// "Name: value\r\n" lines with hop-by-hop fields and Content-Length removed;
// Reason is empty unless the worker gave one.
type Response struct {
	Status  int
	Reason  []byte
	Headers []byte
	Body    []byte
	// Stream, for a streamed reply, delivers the body in parts; Body is
	// then empty.
	Stream *Stream
	// WebSocket, for an accepted handshake (Status 101), carries the
	// messages; Headers are the worker's for the handshake's answer.
	WebSocket *WebSocket
}

// AppendHeader appends one "name: value\r\n" line to dst.
func AppendHeader(dst []byte, name, value string) []byte {
	dst = append(dst, name...)
	dst = append(dst, ':', ' ')
	dst = append(dst, value...)
	return append(dst, '\r', '\n')
}

// requestFrames fills frames (which must have room for 8) with the envelope
// and request frames of MZMQ/1: [id, "", "MZMQ/1", method, target, headers,
// meta, body]. meta must already start with the request-id line.
func requestFrames(frames [][]byte, id, meta []byte, r *Request) [][]byte {
	return append(frames[:0], id, nil, versionFrame, r.Method, r.Target, r.Headers, meta, r.Body)
}

// EncodeRequest returns the frames the bridge sends for r with request id
// id: the envelope (id, an empty delimiter) and the six request frames, the
// meta frame starting with the request-id line and ending with the lines
// that say whether the reply may be streamed (r.StreamWindow) and whether
// the worker gets cancel notices. It is the specification of
// the Apache module's C encoder (FuzzFastEncode compares them).
func EncodeRequest(id []byte, r *Request, notices bool) [][]byte {
	meta := appendStreamMeta(appendMeta(nil, id, r.Meta), r, notices)
	return requestFrames(make([][]byte, 0, 8), id, meta, r)
}

// appendMeta returns the meta frame: the request-id line followed by the
// front's own trusted lines.
func appendMeta(dst, id, frontMeta []byte) []byte {
	dst = append(dst, "request-id: "...)
	dst = append(dst, id...)
	dst = append(dst, '\r', '\n')
	return append(dst, frontMeta...)
}

// DecodeReply validates the frames of a reply (the envelope already removed)
// and returns the response they describe. The forms are [body],
// [status, body] and [status, headers, body]. The returned slices alias the
// frames except where hop-by-hop headers had to be removed.
func DecodeReply(frames [][]byte) (Response, error) {
	var resp Response
	switch len(frames) {
	case 1:
		resp.Status = 200
		resp.Body = frames[0]
		return resp, nil
	case 2, 3:
	case 0:
		return resp, protocolError("empty reply: at least one frame (the body) is required")
	default:
		return resp, protocolError("reply has %d frames: MZMQ/1 allows at most 3 (status, headers, body)", len(frames))
	}
	status, reason, err := ParseStatus(frames[0])
	if err != nil {
		return resp, err
	}
	resp.Status, resp.Reason = status, reason
	resp.Body = frames[len(frames)-1]
	if len(frames) == 3 {
		resp.Headers, err = filterReplyHeaders(frames[1])
		if err != nil {
			return resp, err
		}
	}
	return resp, nil
}

// ParseStatus parses a status frame: three digits from 200 to 599, optionally
// followed by one space and a reason phrase of visible characters and spaces.
func ParseStatus(b []byte) (status int, reason []byte, err error) {
	if len(b) < 3 || !isDigit(b[0]) || !isDigit(b[1]) || !isDigit(b[2]) {
		return 0, nil, protocolError("status %s is not three digits", quote(b))
	}
	status = int(b[0]-'0')*100 + int(b[1]-'0')*10 + int(b[2]-'0')
	if status < 200 || status > 599 {
		return 0, nil, protocolError("status %d is outside 200-599", status)
	}
	if len(b) == 3 {
		return status, nil, nil
	}
	if b[3] != ' ' {
		return 0, nil, protocolError("status %s: only a space may follow the three digits", quote(b))
	}
	reason = b[4:]
	for _, c := range reason {
		if c != ' ' && c != '\t' && (c < 0x21 || c == 0x7f) {
			return 0, nil, protocolError("status reason contains control character 0x%02x", c)
		}
	}
	return status, reason, nil
}

// ParseHeaderLines calls fn for each "Name: value" line of b in order. Lines
// end in CRLF (the last one may omit it); optional whitespace around the value
// is trimmed. A line without a colon, a name that is not an RFC 9110 token,
// an empty line, or a control character other than tab inside a value is an
// ErrProtocol error naming the line.
func ParseHeaderLines(b []byte, fn func(name, value []byte) error) error {
	for n := 1; len(b) > 0; n++ {
		line := b
		if i := bytes.Index(b, crlf); i >= 0 {
			line, b = b[:i], b[i+2:]
		} else {
			b = nil
		}
		if len(line) == 0 {
			return protocolError("header line %d is empty", n)
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			return protocolError("header line %d %s has no colon", n, quote(line))
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		if len(name) == 0 {
			return protocolError("header line %d has an empty name", n)
		}
		for _, c := range name {
			if !isTokenChar(c) {
				return protocolError("header line %d: name %s contains %s", n, quote(name), charName(c))
			}
		}
		for _, c := range value {
			if (c < 0x20 && c != '\t') || c == 0x7f {
				return protocolError("header line %d (%s): value contains %s", n, name, charName(c))
			}
		}
		if err := fn(name, value); err != nil {
			return err
		}
	}
	return nil
}

// filterReplyHeaders validates reply header lines and removes the fields a
// server must not forward: hop-by-hop fields and Content-Length (the front
// sets its own). It returns b itself when nothing is removed.
func filterReplyHeaders(b []byte) ([]byte, error) {
	drop := 0
	err := ParseHeaderLines(b, func(name, _ []byte) error {
		if isDroppedReplyHeader(name) {
			drop++
		}
		return nil
	})
	if err != nil || drop == 0 {
		return b, err
	}
	out := make([]byte, 0, len(b))
	_ = ParseHeaderLines(b, func(name, value []byte) error {
		if !isDroppedReplyHeader(name) {
			out = append(out, name...)
			out = append(out, ':', ' ')
			out = append(out, value...)
			out = append(out, crlf...)
		}
		return nil
	})
	return out, nil
}

var dropped = []string{"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}

func isDroppedReplyHeader(name []byte) bool {
	if len(name) >= 6 && bytes.EqualFold(name[:6], []byte("proxy-")) {
		return true
	}
	for _, d := range dropped {
		if bytes.EqualFold(name, []byte(d)) {
			return true
		}
	}
	return false
}

var crlf = []byte("\r\n")

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// isTokenChar reports whether c may appear in an RFC 9110 token.
func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', isDigit(c):
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

func trimOWS(b []byte) []byte {
	return bytes.Trim(b, " \t")
}

func charName(c byte) string {
	switch c {
	case '\r':
		return "CR"
	case '\n':
		return "LF"
	case 0:
		return "NUL"
	}
	return "byte 0x" + strconv.FormatUint(uint64(c), 16)
}

// quote returns b quoted for a log line, cut to 40 bytes.
func quote(b []byte) string {
	if len(b) > 40 {
		return strconv.Quote(string(b[:40])) + "..."
	}
	return strconv.Quote(string(b))
}

// ParseRequest is the worker side of MZMQ/1: it checks the six request
// frames (envelope already removed) and returns the request. Header and meta
// lines are validated like reply headers.
func ParseRequest(frames [][]byte) (Request, error) {
	if len(frames) != 6 {
		return Request{}, protocolError("request has %d frames: MZMQ/1 has 6", len(frames))
	}
	if string(frames[0]) != Version {
		return Request{}, protocolError("request protocol %s is not %s", quote(frames[0]), Version)
	}
	if len(frames[1]) == 0 {
		return Request{}, protocolError("request method is empty")
	}
	for _, c := range frames[1] {
		if !isTokenChar(c) && c != '@' {
			return Request{}, protocolError("request method %s is not a token", quote(frames[1]))
		}
	}
	for _, c := range frames[2] {
		if c <= ' ' || c == 0x7f {
			return Request{}, protocolError("request target contains %s", charName(c))
		}
	}
	for _, lines := range [][]byte{frames[3], frames[4]} {
		if err := ParseHeaderLines(lines, func(_, _ []byte) error { return nil }); err != nil {
			return Request{}, err
		}
	}
	return Request{Method: frames[1], Target: frames[2], Headers: frames[3], Meta: frames[4], Body: frames[5]}, nil
}

// MetaValue returns the value of the named meta line, or nil.
func MetaValue(meta []byte, name string) []byte {
	var out []byte
	ParseHeaderLines(meta, func(n, v []byte) error {
		if out == nil && string(n) == name {
			out = v
		}
		return nil
	})
	return out
}
