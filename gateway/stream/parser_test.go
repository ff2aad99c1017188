package stream

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// parseAll feeds input in pieces of size step and collects complete
// requests, applying limit to every body.
func parseAll(input string, step int, limit int64) ([]*Request, *Error) {
	p := NewParser()
	var out []*Request
	for i := 0; i < len(input) || i == 0; i += step {
		end := min(i+step, len(input))
		p.Feed([]byte(input[i:end]))
		for {
			ev, err := p.Next()
			if err != nil {
				return out, err
			}
			if ev == NeedMore {
				break
			}
			if ev == Head {
				if err := p.SetBodyLimit(limit); err != nil {
					return out, err
				}
				continue
			}
			out = append(out, p.Request())
		}
		if len(input) == 0 {
			break
		}
	}
	return out, nil
}

// parseStreamed is parseAll with every body streamed: read with ReadBody
// into a buffer of room bytes and collected in Request.Body, or, when
// discard, dropped with DiscardBody (Body is then nil).
func parseStreamed(input string, step int, limit int64, room int, discard bool) ([]*Request, *Error) {
	p := NewParser()
	var out []*Request
	var body []byte
	dst := make([]byte, room)
	for i := 0; i < len(input) || i == 0; i += step {
		end := min(i+step, len(input))
		p.Feed([]byte(input[i:end]))
		for {
			if p.Streaming() {
				var done bool
				var err *Error
				n := 0
				if discard {
					done, err = p.DiscardBody()
				} else {
					n, done, err = p.ReadBody(dst)
					body = append(body, dst[:n]...)
				}
				if err != nil {
					return out, err
				}
				if !done && n == 0 {
					break // needs more input
				}
				if !done {
					continue
				}
				r := *p.Request()
				r.Body, body = body, nil
				out = append(out, &r)
				continue
			}
			ev, err := p.Next()
			if err != nil {
				return out, err
			}
			if ev == NeedMore {
				break
			}
			if ev == Head {
				if err := p.SetBodyLimit(limit); err != nil {
					return out, err
				}
				p.StreamBody()
				continue
			}
			out = append(out, p.Request())
		}
		if len(input) == 0 {
			break
		}
	}
	return out, nil
}

func TestParserRequests(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  []string // method target body keepalive
	}{
		{"simple", "GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n", []string{"GET /a?b=1  true"}},
		{"pipelined", "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			[]string{"GET /1  true", "POST /2 abc true", "GET /3  false"}},
		{"chunked", "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: t\r\n\r\n",
			[]string{"POST /c abc0123456789abcdef true"}},
		{"http/1.0 closes", "GET / HTTP/1.0\r\n\r\n", []string{"GET /  false"}},
		{"http/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", []string{"GET /  true"}},
		{"bare LF and leading empty line", "\r\nGET /lf HTTP/1.1\nHost: x\n\n", []string{"GET /lf  true"}},
		{"percent and dots kept", "GET /a/%00/../b HTTP/1.1\r\nHost: x\r\n\r\n", []string{"GET /a/%00/../b  true"}},
	}
	for _, tt := range tests {
		for _, step := range []int{1, 7, 1 << 20} {
			reqs, err := parseAll(tt.input, step, 0)
			if err != nil {
				t.Fatalf("%s (step %d): %v", tt.name, step, err)
			}
			streamed, err := parseStreamed(tt.input, step, 0, 5, false)
			if err != nil {
				t.Fatalf("%s (step %d, streamed): %v", tt.name, step, err)
			}
			if got, want := describe(streamed), describe(reqs); got != want {
				t.Errorf("%s (step %d): streamed bodies give %q, whole ones %q", tt.name, step, got, want)
			}
			var got []string
			for _, r := range reqs {
				got = append(got, strings.Join([]string{r.Method, r.Target, string(r.Body), map[bool]string{true: "true", false: "false"}[r.KeepAlive]}, " "))
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("%s (step %d): got %q, want %q", tt.name, step, got, tt.want)
			}
		}
	}
}

// describe lists requests as "method target body", for comparisons.
func describe(reqs []*Request) string {
	var b strings.Builder
	for _, r := range reqs {
		fmt.Fprintf(&b, "%s %s %q|", r.Method, r.Target, r.Body)
	}
	return b.String()
}

func TestParserHeadersInOrder(t *testing.T) {
	reqs, err := parseAll("GET / HTTP/1.1\r\nHost: h\r\nX-B: 1\r\nX-A: 2\r\nX-B: 3\r\n\r\n", 3, 0)
	if err != nil || len(reqs) != 1 {
		t.Fatal(err)
	}
	var got []string
	for _, f := range reqs[0].Header {
		got = append(got, f.Name+"="+f.Value)
	}
	if strings.Join(got, ",") != "Host=h,X-B=1,X-A=2,X-B=3" || reqs[0].Host != "h" {
		t.Errorf("got %v host %q", got, reqs[0].Host)
	}
}

func TestParserErrors(t *testing.T) {
	long := strings.Repeat("a", DefaultMaxLine+10)
	tests := []struct {
		name   string
		input  string
		limit  int64
		status int
	}{
		{"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 0, 400},
		{"no version", "GET /\r\n\r\n", 0, 400},
		{"http/2 preface", "PRI * HTTP/2.0\r\n\r\n", 0, 505},
		{"long request line", "GET /" + long + " HTTP/1.1\r\n", 0, 414},
		{"long request line without end", "GET /" + long, 0, 414},
		{"headers too large", "GET / HTTP/1.1\r\nHost: x\r\nX: " + strings.Repeat("b", DefaultMaxHeader) + "\r\n\r\n", 0, 431},
		{"header without colon", "GET / HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n", 0, 400},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\n  2\r\n\r\n", 0, 400},
		{"NUL in value", "GET / HTTP/1.1\r\nHost: x\r\nA: 1\x002\r\n\r\n", 0, 400},
		{"space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", 0, 400},
		{"no host", "GET / HTTP/1.1\r\n\r\n", 0, 400},
		{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 0, 400},
		{"CL and TE", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 0, 400},
		{"conflicting CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 0, 400},
		{"negative CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 0, 400},
		{"gzip TE", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 0, 501},
		{"gzip, chunked TE", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 0, 501},
		{"TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 0, 400},
		{"signed CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -0\r\n\r\n", 0, 400},
		{"CL with a space inside", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1 0\r\n\r\n", 0, 400},
		{"signed chunk size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n", 0, 400},
		{"negative zero chunk size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-0\r\n\r\n", 0, 400},
		{"0x chunk size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 0, 400},
		{"CL over limit", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n", 10, 413},
		{"chunked over limit", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nabcdef\r\n0\r\n\r\n", 10, 413},
		{"bad chunk size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0, 400},
		{"huge chunk size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", 0, 400},
		{"chunk without CRLF", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXY\r\n", 0, 400},
		{"bad target", "GET nopath HTTP/1.1\r\nHost: x\r\n\r\n", 0, 400},
		{"expect other", "GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", 0, 417},
	}
	for _, tt := range tests {
		_, err := parseAll(tt.input, 5, tt.limit)
		if err == nil || err.Status != tt.status {
			t.Errorf("%s: got %v, want status %d", tt.name, err, tt.status)
		}
		_, err = parseStreamed(tt.input, 5, tt.limit, 3, false)
		if err == nil || err.Status != tt.status {
			t.Errorf("%s (streamed): got %v, want status %d", tt.name, err, tt.status)
		}
	}
}

func TestParserExpectContinue(t *testing.T) {
	p := NewParser()
	p.Feed([]byte("PUT /u HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"))
	ev, err := p.Next()
	if ev != Head || err != nil || !p.Request().Expect100 {
		t.Fatalf("got %v %v", ev, err)
	}
	p.SetBodyLimit(0)
	if ev, _ := p.Next(); ev != NeedMore {
		t.Fatalf("body not awaited: %v", ev)
	}
	p.Feed([]byte("ok"))
	if ev, _ := p.Next(); ev != Done || string(p.Request().Body) != "ok" {
		t.Fatalf("got %v %q", ev, p.Request().Body)
	}
}

func FuzzParser(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 3)
	f.Add([]byte("POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), 1)
	f.Add([]byte("POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nab"), 100)
	f.Add([]byte("POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n2\r\n, \r\n0\r\nT: 1\r\n\r\nPOST /n HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /x HTTP/1.1\r\nHost: x\r\n\r\n"), 4)
	f.Fuzz(func(t *testing.T, in []byte, step int) {
		if step <= 0 {
			step = 1
		}
		// Any split of the input must give the same requests and error,
		// and so must reading every body in parts (ReadBody into a buffer
		// of any size) or dropping it (DiscardBody).
		whole, werr := parseAll(string(in), 1<<30, 64)
		split, serr := parseAll(string(in), step, 64)
		room := step%13 + 1
		streamed, sterr := parseStreamed(string(in), step, 64, room, false)
		dropped, derr := parseStreamed(string(in), step, 64, room, true)
		for _, other := range []struct {
			name string
			reqs []*Request
			err  *Error
		}{{"split", split, serr}, {"streamed", streamed, sterr}, {"dropped", dropped, derr}} {
			if (werr == nil) != (other.err == nil) || (werr != nil && werr.Status != other.err.Status) || len(whole) != len(other.reqs) {
				t.Fatalf("%s (step %d, room %d) changes the outcome: %v/%d vs %v/%d", other.name, step, room, werr, len(whole), other.err, len(other.reqs))
			}
			for i := range whole {
				a, b := whole[i], other.reqs[i]
				if a.Method != b.Method || a.Target != b.Target || len(a.Body) > 64 {
					t.Fatalf("%s: request %d differs: %+v vs %+v", other.name, i, a, b)
				}
				if other.name != "dropped" && !bytes.Equal(a.Body, b.Body) {
					t.Fatalf("%s: body of request %d differs: %q vs %q", other.name, i, a.Body, b.Body)
				}
			}
		}
	})
}

// TestParserBodyGrowsWithBytesReceived: a Content-Length, with or without a
// body limit, sizes no buffer before the bytes arrive; the buffer then grows
// with the bytes received and never past the length claimed.
func TestParserBodyGrowsWithBytesReceived(t *testing.T) {
	for _, tt := range []struct {
		name          string
		length, limit int64
		send          int // bytes of body actually sent
	}{
		{"huge claim, no limit", 1_000_000_000_000, 0, 100},
		{"claim at the default limit", 8 << 20, 8 << 20, 100},
		{"honest body, no limit", 3<<20 + 17, 0, 3<<20 + 17},
		{"honest body under a limit", 200_001, 1 << 20, 200_001},
		{"small honest body", 10, 0, 10},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := NewParser()
			p.Feed([]byte("POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.FormatInt(tt.length, 10) + "\r\n\r\n"))
			if ev, err := p.Next(); ev != Head || err != nil {
				t.Fatalf("head: %v %v", ev, err)
			}
			if err := p.SetBodyLimit(tt.limit); err != nil {
				t.Fatalf("SetBodyLimit(%d): %v", tt.limit, err)
			}
			r := p.Request()
			if c := cap(r.Body); c > firstBodyBuffer {
				t.Fatalf("%d bytes allocated for a body before any arrived, want at most %d", c, firstBodyBuffer)
			}
			body := make([]byte, tt.send)
			for i := range body {
				body[i] = byte(i % 251)
			}
			var ev Event
			for off := 0; off < len(body); off += 7919 {
				p.Feed(body[off:min(off+7919, len(body))])
				var err *Error
				if ev, err = p.Next(); err != nil {
					t.Fatal(err)
				}
				got := len(r.Body)
				if c := cap(r.Body); c > max(firstBodyBuffer, 2*got) || int64(c) > tt.length {
					t.Fatalf("after %d of %d bytes: buffer of %d (bound max(64 KiB, 2 x received), never over %d)",
						got, tt.length, c, tt.length)
				}
			}
			if int64(tt.send) == tt.length {
				if ev != Done || !bytes.Equal(r.Body, body) {
					t.Errorf("honest body: event %v, %d bytes, equal %v", ev, len(r.Body), bytes.Equal(r.Body, body))
				}
			} else if ev != NeedMore {
				t.Errorf("short body: event %v, want NeedMore", ev)
			}
		})
	}
}
