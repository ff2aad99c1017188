// Package stream serves HTTP/1.1 straight from a libzmq ZMQ_STREAM socket:
// each TCP connection is a routing id, bytes arrive as frames of any size.
// parser.go is the incremental request parser; server.go the socket loop.
package stream

import (
	"bytes"
	"strconv"
	"strings"
)

// Default limits of the parser.
const (
	DefaultMaxLine   = 8 << 10  // request line; longer gets 414
	DefaultMaxHeader = 64 << 10 // request line plus headers; more gets 431
)

// Field is one header field as the client sent it.
type Field struct{ Name, Value string }

// Request is one parsed request.
type Request struct {
	Method, Target, Proto string
	Minor                 int // HTTP/1.<Minor>
	Header                []Field
	Host                  string
	ContentLength         int64 // -1 when chunked
	Chunked               bool
	KeepAlive             bool // the connection may carry another request
	Expect100             bool
	Body                  []byte
}

// Get returns the first value of the named field (case-insensitive).
func (r *Request) Get(name string) string {
	for _, f := range r.Header {
		if equalFold(f.Name, name) {
			return f.Value
		}
	}
	return ""
}

// Error is a request the parser refuses; the connection must close after
// the answer.
type Error struct {
	Status int
	Reason string
}

func (e *Error) Error() string { return strconv.Itoa(e.Status) + " " + e.Reason }

func fail(status int, reason string) *Error { return &Error{status, reason} }

// Event is what Next found.
type Event int

// Events returned by Next.
const (
	NeedMore Event = iota // feed more bytes
	Head                  // headers complete; call SetBodyLimit (and StreamBody), then Next again
	Done                  // a whole request is ready in Request()
)

type state int

const (
	stLine state = iota
	stHeaders
	stHead  // Head returned, waiting for the caller
	stReady // no body: Done comes next
	stBody
	stChunkSize
	stChunkData
	stChunkCRLF
	stTrailers
)

// Parser parses pipelined requests from bytes fed to it. The zero value is
// not usable; use NewParser.
type Parser struct {
	MaxLine, MaxHeader int

	buf       []byte
	off       int // parsed up to here
	st        state
	req       *Request
	headBytes int
	limit     int64 // body limit; 0 none
	bodyN     int64 // body bytes decoded so far
	chunkLeft int64
	streaming bool // the body is read with ReadBody, not collected in Request.Body
	err       *Error
}

// NewParser returns a parser with the default limits.
func NewParser() *Parser {
	return &Parser{MaxLine: DefaultMaxLine, MaxHeader: DefaultMaxHeader}
}

// Feed appends bytes received from the client.
func (p *Parser) Feed(b []byte) {
	if p.off > 0 && p.off == len(p.buf) {
		p.buf, p.off = p.buf[:0], 0
	} else if p.off > 4096 && p.off > len(p.buf)/2 {
		n := copy(p.buf, p.buf[p.off:])
		p.buf, p.off = p.buf[:n], 0
	}
	p.buf = append(p.buf, b...)
}

// Buffered reports how many fed bytes are not parsed yet.
func (p *Parser) Buffered() int { return len(p.buf) - p.off }

// InProgress reports whether part of a request has been received.
func (p *Parser) InProgress() bool { return p.st != stLine || p.Buffered() > 0 }

// Request returns the request Next reported (Head or Done).
func (p *Parser) Request() *Request { return p.req }

// firstBodyBuffer bounds the body buffer allocated before body bytes arrive,
// whatever Content-Length claims.
const firstBodyBuffer = 64 << 10

// SetBodyLimit sets the largest body accepted for the current request (0 =
// none) and lets Next continue with the body. A Content-Length over the limit
// fails at once with 413. The body buffer is allocated when the first body
// bytes arrive, at min(Content-Length, 64 KiB), and doubles only as received
// bytes fill it, never past Content-Length: a length claimed but not sent
// costs nothing, and at most 64 KiB once a byte of it came.
func (p *Parser) SetBodyLimit(n int64) *Error {
	p.limit, p.bodyN = n, 0
	r := p.req
	switch {
	case r.Chunked:
		p.st = stChunkSize
	case r.ContentLength > 0:
		if n > 0 && r.ContentLength > n {
			return p.setErr(fail(413, "request body over the limit"))
		}
		p.st = stBody
	default:
		p.st = stReady
	}
	return nil
}

// StreamBody makes the current request's body, if it has one, be read in
// parts with ReadBody (or dropped with DiscardBody) instead of collected in
// Request.Body. Call it after SetBodyLimit; until the body is complete, Next
// reports NeedMore. The body limit still applies.
func (p *Parser) StreamBody() {
	p.streaming = p.inBody()
}

// inBody reports whether the parser is inside a request's body.
func (p *Parser) inBody() bool {
	switch p.st {
	case stBody, stChunkSize, stChunkData, stChunkCRLF, stTrailers:
		return true
	}
	return false
}

// Streaming reports whether a streamed body is still being read.
func (p *Parser) Streaming() bool { return p.streaming }

// ReadBody decodes the next bytes of a streamed body (StreamBody) from what
// is buffered into dst, chunked framing removed, and reports whether the
// body is complete: the parser then goes on with the next request. It
// returns 0 and false when it needs more bytes. Framing that follows the
// bytes copied (a chunk's CRLF, the last chunk, trailers) is consumed too
// when it is buffered, so the call that copies a body's last bytes usually
// reports it complete.
func (p *Parser) ReadBody(dst []byte) (n int, done bool, err *Error) {
	if p.err != nil {
		return 0, false, p.err
	}
	if !p.streaming {
		return 0, true, nil
	}
	for {
		data, done, err := p.bodyNext(len(dst) - n)
		n += copy(dst[n:], data)
		switch {
		case err != nil:
			return n, false, err
		case done:
			p.streaming = false
			return n, true, nil
		case len(data) == 0:
			return n, false, nil
		}
	}
}

// DiscardBody drops what is buffered of a streamed body and reports whether
// the body is complete, as ReadBody would.
func (p *Parser) DiscardBody() (done bool, err *Error) {
	if p.err != nil {
		return false, p.err
	}
	if !p.streaming {
		return true, nil
	}
	for {
		data, done, err := p.bodyNext(int(^uint(0) >> 1))
		switch {
		case err != nil:
			return false, err
		case done:
			p.streaming = false
			return true, nil
		case len(data) == 0:
			return false, nil
		}
	}
}

func (p *Parser) setErr(e *Error) *Error {
	p.err = e
	return e
}

// Next parses what is buffered and reports the next event. After an error
// every call returns it again.
func (p *Parser) Next() (Event, *Error) {
	if p.err != nil {
		return NeedMore, p.err
	}
	for {
		switch p.st {
		case stHead:
			return Head, nil // the caller has not called SetBodyLimit yet
		case stReady:
			p.st = stLine
			return Done, nil
		case stLine:
			line, ok, err := p.line(p.MaxLine, 414, "request line too long")
			if err != nil || !ok {
				return NeedMore, err
			}
			if len(line) == 0 {
				continue // RFC 9112 2.2: ignore empty lines before a request
			}
			if err := p.requestLine(line); err != nil {
				return NeedMore, p.setErr(err)
			}
			p.headBytes = len(line)
			p.st = stHeaders
		case stHeaders:
			line, ok, err := p.line(p.MaxHeader-p.headBytes, 431, "request header fields too large")
			if err != nil || !ok {
				return NeedMore, err
			}
			p.headBytes += len(line) + 2
			if len(line) == 0 {
				if err := p.finishHead(); err != nil {
					return NeedMore, p.setErr(err)
				}
				p.st = stHead
				return Head, nil
			}
			if err := p.field(line); err != nil {
				return NeedMore, p.setErr(err)
			}
		case stBody, stChunkSize, stChunkData, stChunkCRLF, stTrailers:
			if p.streaming {
				return NeedMore, nil // ReadBody takes the body
			}
			data, done, err := p.bodyNext(int(^uint(0) >> 1))
			if err != nil {
				return NeedMore, err
			}
			p.collect(data)
			if done {
				return Done, nil
			}
			if len(data) == 0 {
				return NeedMore, nil
			}
		}
	}
}

// collect appends body bytes to Request.Body. The buffer starts at
// min(Content-Length, 64 KiB) (4 KiB for a chunked body) and doubles when
// the bytes received fill it, never past Content-Length.
func (p *Parser) collect(data []byte) {
	r := p.req
	if len(data) == 0 {
		return
	}
	if len(r.Body)+len(data) > cap(r.Body) {
		size := int64(max(2*cap(r.Body), len(r.Body)+len(data)))
		switch {
		case cap(r.Body) == 0 && r.ContentLength > 0:
			size = max(min(r.ContentLength, firstBodyBuffer), int64(len(data)))
		case cap(r.Body) == 0:
			size = max(4096, int64(len(data)))
		}
		if r.ContentLength > 0 {
			size = min(size, r.ContentLength)
		}
		r.Body = append(make([]byte, 0, size), r.Body...)
	}
	r.Body = append(r.Body, data...)
}

// take consumes n buffered bytes of body and returns them.
func (p *Parser) take(n int) []byte {
	data := p.buf[p.off : p.off+n]
	p.off += n
	p.bodyN += int64(n)
	return data
}

// bodyNext decodes the body's framing from what is buffered and returns the
// next body bytes, at most room of them, as a view of the buffer that is
// valid until the next Feed. done reports the body complete: the parser is
// then back at the request line. No bytes and not done means it needs more
// input, or room.
func (p *Parser) bodyNext(room int) (data []byte, done bool, err *Error) {
	for {
		switch p.st {
		case stBody:
			left := p.req.ContentLength - p.bodyN
			data = p.take(int(min(left, int64(len(p.buf)-p.off), int64(room))))
			if p.bodyN == p.req.ContentLength {
				p.st = stLine
				return data, true, nil
			}
			return data, false, nil
		case stChunkSize:
			line, ok, err := p.line(1024, 400, "chunk size line too long")
			if err != nil || !ok {
				return nil, false, err
			}
			if i := bytes.IndexByte(line, ';'); i >= 0 {
				line = line[:i] // chunk extensions are ignored
			}
			line = bytes.TrimRight(line, " \t")
			size, perr := strconv.ParseInt(string(line), 16, 64)
			if perr != nil || !allOf(line, isHex) || len(line) > 15 { // ParseInt takes a sign and _
				return nil, false, p.setErr(fail(400, "bad chunk size"))
			}
			if size == 0 {
				p.st = stTrailers
				continue
			}
			if p.limit > 0 && p.bodyN+size > p.limit {
				return nil, false, p.setErr(fail(413, "request body over the limit"))
			}
			p.chunkLeft = size
			p.st = stChunkData
		case stChunkData:
			n := int(min(p.chunkLeft, int64(len(p.buf)-p.off), int64(room)))
			if n == 0 {
				return nil, false, nil
			}
			data = p.take(n)
			p.chunkLeft -= int64(n)
			if p.chunkLeft == 0 {
				p.st = stChunkCRLF
			}
			return data, false, nil
		case stChunkCRLF:
			line, ok, err := p.line(2, 400, "chunk data not followed by CRLF")
			if err != nil || !ok {
				return nil, false, err
			}
			if len(line) != 0 {
				return nil, false, p.setErr(fail(400, "chunk data not followed by CRLF"))
			}
			p.st = stChunkSize
		case stTrailers:
			line, ok, err := p.line(p.MaxHeader, 431, "trailer fields too large")
			if err != nil || !ok {
				return nil, false, err
			}
			p.headBytes += len(line) + 2
			if p.headBytes > p.MaxHeader {
				return nil, false, p.setErr(fail(431, "trailer fields too large"))
			}
			if len(line) == 0 {
				p.st = stLine
				return nil, true, nil
			}
			// Trailer fields are read and dropped: MZMQ/1 has no place for them.
		default:
			return nil, true, nil
		}
	}
}

// line returns the next line without its CRLF (a bare LF is accepted). If no
// line end is buffered and more than max bytes wait, it fails with status.
func (p *Parser) line(max, status int, reason string) ([]byte, bool, *Error) {
	rest := p.buf[p.off:]
	i := bytes.IndexByte(rest, '\n')
	if i < 0 {
		if len(rest) > max {
			return nil, false, p.setErr(fail(status, reason))
		}
		return nil, false, nil
	}
	if i > max+1 {
		return nil, false, p.setErr(fail(status, reason))
	}
	line := rest[:i]
	p.off += i + 1
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, true, nil
}

func (p *Parser) requestLine(line []byte) *Error {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return fail(400, "malformed request line")
	}
	sp2 := bytes.IndexByte(line[sp1+1:], ' ')
	if sp2 <= 0 {
		return fail(400, "malformed request line")
	}
	sp2 += sp1 + 1
	method, target, proto := line[:sp1], line[sp1+1:sp2], line[sp2+1:]
	for _, c := range method {
		if !isToken(c) {
			return fail(400, "bad method")
		}
	}
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return fail(400, "bad request target")
		}
	}
	if !(target[0] == '/' || bytes.HasPrefix(target, []byte("http://")) || bytes.HasPrefix(target, []byte("https://")) ||
		(len(target) == 1 && target[0] == '*')) {
		return fail(400, "bad request target")
	}
	if len(proto) != 8 || !bytes.HasPrefix(proto, []byte("HTTP/")) || proto[6] != '.' ||
		proto[5] < '0' || proto[5] > '9' || proto[7] < '0' || proto[7] > '9' {
		return fail(400, "bad protocol version")
	}
	if proto[5] != '1' {
		return fail(505, "HTTP version not supported")
	}
	p.req = &Request{Method: string(method), Target: string(target), Proto: string(proto),
		Minor: int(proto[7] - '0'), ContentLength: 0}
	return nil
}

func (p *Parser) field(line []byte) *Error {
	if line[0] == ' ' || line[0] == '\t' {
		return fail(400, "obsolete line folding")
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return fail(400, "header line without a colon")
	}
	name := line[:colon]
	for _, c := range name {
		if !isToken(c) {
			return fail(400, "bad header name")
		}
	}
	value := bytes.Trim(line[colon+1:], " \t")
	for _, c := range value {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return fail(400, "control character in a header value")
		}
	}
	if len(p.req.Header) >= 256 {
		return fail(431, "too many header fields")
	}
	p.req.Header = append(p.req.Header, Field{string(name), string(value)})
	return nil
}

// finishHead applies the framing and connection rules of RFC 9112.
func (p *Parser) finishHead() *Error {
	r := p.req
	r.KeepAlive = r.Minor >= 1
	clSeen := false
	hosts := 0
	for _, f := range r.Header {
		switch {
		case equalFold(f.Name, "Host"):
			hosts++
			r.Host = f.Value
		case equalFold(f.Name, "Content-Length"):
			n, err := strconv.ParseInt(f.Value, 10, 64)
			if err != nil || !allOf([]byte(f.Value), isDigit) {
				return fail(400, "bad Content-Length")
			}
			if clSeen && n != r.ContentLength {
				return fail(400, "conflicting Content-Length fields")
			}
			clSeen, r.ContentLength = true, n
		case equalFold(f.Name, "Transfer-Encoding"):
			// HTTP/1.0 has no transfer codings: its framing is faulty (RFC
			// 9112, 6.1). chunked is the one coding taken, alone: another
			// would reach the worker still coded.
			if r.Minor == 0 {
				return fail(400, "Transfer-Encoding in an HTTP/1.0 request")
			}
			if !equalFold(strings.TrimSpace(f.Value), "chunked") || r.Chunked {
				return fail(501, "unsupported transfer coding")
			}
			r.Chunked = true
		case equalFold(f.Name, "Connection"):
			for _, tok := range bytes.Split([]byte(f.Value), []byte(",")) {
				switch t := string(bytes.TrimSpace(tok)); {
				case equalFold(t, "close"):
					r.KeepAlive = false
				case equalFold(t, "keep-alive") && r.Minor == 0:
					r.KeepAlive = true
				}
			}
		case equalFold(f.Name, "Expect"):
			if !equalFold(f.Value, "100-continue") {
				return fail(417, "unsupported expectation")
			}
			r.Expect100 = true
		}
	}
	if r.Chunked && clSeen {
		return fail(400, "both Content-Length and Transfer-Encoding")
	}
	if r.Minor >= 1 && hosts != 1 {
		return fail(400, "HTTP/1.1 needs exactly one Host field")
	}
	if r.Chunked {
		r.ContentLength = -1
	}
	return nil
}

// allOf reports whether b is not empty and every byte of it is one that
// is accepts.
func allOf(b []byte, is func(byte) bool) bool {
	for _, c := range b {
		if !is(c) {
			return false
		}
	}
	return len(b) > 0
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isHex(c byte) bool { return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

func isToken(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0
}

func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		ca, cb := a[i], b[i]
		if 'A' <= ca && ca <= 'Z' {
			ca += 'a' - 'A'
		}
		if 'A' <= cb && cb <= 'Z' {
			cb += 'a' - 'A'
		}
		if ca != cb {
			return false
		}
	}
	return true
}
