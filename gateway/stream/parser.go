// Package stream serves HTTP/1.1 straight from a libzmq ZMQ_STREAM socket:
// each TCP connection is a routing id, bytes arrive as frames of any size.
// parser.go is the incremental request parser; server.go the socket loop.
package stream

import (
	"bytes"
	"strconv"
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
	Head                  // headers complete; call SetBodyLimit, then Next again
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
	chunkLeft int64
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
// fails at once with 413. The body buffer starts at min(Content-Length,
// 64 KiB) and doubles only as received bytes fill it, never past
// Content-Length: a length claimed but not sent costs at most 64 KiB.
func (p *Parser) SetBodyLimit(n int64) *Error {
	p.limit = n
	r := p.req
	switch {
	case r.Chunked:
		p.st = stChunkSize
	case r.ContentLength > 0:
		if n > 0 && r.ContentLength > n {
			return p.setErr(fail(413, "request body over the limit"))
		}
		r.Body = make([]byte, 0, min(r.ContentLength, firstBodyBuffer))
		p.st = stBody
	default:
		p.st = stReady
	}
	return nil
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
		case stBody:
			r := p.req
			need := r.ContentLength - int64(len(r.Body))
			avail := int64(len(p.buf) - p.off)
			if avail == 0 {
				return NeedMore, nil
			}
			n := min(need, avail)
			if int64(len(r.Body))+n > int64(cap(r.Body)) {
				size := max(2*int64(cap(r.Body)), int64(len(r.Body))+n)
				r.Body = append(make([]byte, 0, min(size, r.ContentLength)), r.Body...)
			}
			r.Body = append(r.Body, p.buf[p.off:p.off+int(n)]...)
			p.off += int(n)
			if int64(len(r.Body)) == r.ContentLength {
				p.st = stLine
				return Done, nil
			}
		case stChunkSize:
			line, ok, err := p.line(1024, 400, "chunk size line too long")
			if err != nil || !ok {
				return NeedMore, err
			}
			if i := bytes.IndexByte(line, ';'); i >= 0 {
				line = line[:i] // chunk extensions are ignored
			}
			line = bytes.TrimRight(line, " \t")
			size, perr := strconv.ParseInt(string(line), 16, 64)
			if perr != nil || size < 0 || len(line) > 15 {
				return NeedMore, p.setErr(fail(400, "bad chunk size"))
			}
			if size == 0 {
				p.st = stTrailers
				continue
			}
			if p.limit > 0 && int64(len(p.req.Body))+size > p.limit {
				return NeedMore, p.setErr(fail(413, "request body over the limit"))
			}
			p.chunkLeft = size
			p.st = stChunkData
		case stChunkData:
			avail := int64(len(p.buf) - p.off)
			if avail == 0 {
				return NeedMore, nil
			}
			n := min(p.chunkLeft, avail)
			p.req.Body = append(p.req.Body, p.buf[p.off:p.off+int(n)]...)
			p.off += int(n)
			p.chunkLeft -= n
			if p.chunkLeft == 0 {
				p.st = stChunkCRLF
			}
		case stChunkCRLF:
			line, ok, err := p.line(2, 400, "chunk data not followed by CRLF")
			if err != nil || !ok {
				return NeedMore, err
			}
			if len(line) != 0 {
				return NeedMore, p.setErr(fail(400, "chunk data not followed by CRLF"))
			}
			p.st = stChunkSize
		case stTrailers:
			line, ok, err := p.line(p.MaxHeader, 431, "trailer fields too large")
			if err != nil || !ok {
				return NeedMore, err
			}
			p.headBytes += len(line) + 2
			if p.headBytes > p.MaxHeader {
				return NeedMore, p.setErr(fail(431, "trailer fields too large"))
			}
			if len(line) == 0 {
				p.st = stLine
				return Done, nil
			}
			// Trailer fields are read and dropped: MZMQ/1 has no place for them.
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
			if err != nil || n < 0 || f.Value[0] == '+' {
				return fail(400, "bad Content-Length")
			}
			if clSeen && n != r.ContentLength {
				return fail(400, "conflicting Content-Length fields")
			}
			clSeen, r.ContentLength = true, n
		case equalFold(f.Name, "Transfer-Encoding"):
			if !equalFold(lastToken(f.Value), "chunked") || r.Chunked {
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
		r.Body = make([]byte, 0, 4096)
	}
	return nil
}

func lastToken(v string) string {
	if i := bytes.LastIndexByte([]byte(v), ','); i >= 0 {
		v = v[i+1:]
	}
	return string(bytes.TrimSpace([]byte(v)))
}

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
