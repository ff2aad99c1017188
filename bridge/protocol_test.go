package bridge

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func frames(s ...string) [][]byte {
	out := make([][]byte, len(s))
	for i, f := range s {
		out[i] = []byte(f)
	}
	return out
}

func TestDecodeReply(t *testing.T) {
	tests := []struct {
		name    string
		frames  [][]byte
		status  int
		reason  string
		headers string
		body    string
	}{
		{"body only", frames("hello"), 200, "", "", "hello"},
		{"empty body", frames(""), 200, "", "", ""},
		{"status and body", frames("404", "nope"), 404, "", "", "nope"},
		{"status with reason", frames("201 Made It", "x"), 201, "Made It", "", "x"},
		{"three frames", frames("200", "A: 1\r\nB: 2\r\n", "b"), 200, "", "A: 1\r\nB: 2\r\n", "b"},
		{"last line without CRLF", frames("200", "A: 1", "b"), 200, "", "A: 1", "b"},
		{"duplicates kept in order", frames("200", "Set-Cookie: a=1\r\nX: y\r\nSet-Cookie: b=2\r\n", ""),
			200, "", "Set-Cookie: a=1\r\nX: y\r\nSet-Cookie: b=2\r\n", ""},
		{"hop-by-hop dropped", frames("200", "Connection: close\r\nA: 1\r\nTransfer-Encoding: chunked\r\n"+
			"keep-alive: 5\r\nTE: x\r\nTrailer: y\r\nUpgrade: h2c\r\nProxy-Authenticate: z\r\nContent-Length: 9\r\nB:2\r\n", "b"),
			200, "", "A: 1\r\nB: 2\r\n", "b"},
		{"599 allowed", frames("599", ""), 599, "", "", ""},
		{"binary body", frames("200", "", "\x00\r\n\xff"), 200, "", "", "\x00\r\n\xff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeReply(tt.frames)
			if err != nil {
				t.Fatalf("DecodeReply: %v", err)
			}
			if got.Status != tt.status || string(got.Reason) != tt.reason || string(got.Headers) != tt.headers || string(got.Body) != tt.body {
				t.Errorf("got status %d reason %q headers %q body %q, want %d %q %q %q",
					got.Status, got.Reason, got.Headers, got.Body, tt.status, tt.reason, tt.headers, tt.body)
			}
		})
	}
}

func TestDecodeReplyErrors(t *testing.T) {
	tests := []struct {
		name   string
		frames [][]byte
		rule   string // part of the error text naming the broken rule
	}{
		{"no frames", nil, "empty reply"},
		{"four frames", frames("200", "", "a", "b"), "4 frames"},
		{"status not digits", frames("abc", "x"), "not three digits"},
		{"status too short", frames("20", "x"), "not three digits"},
		{"status 1xx", frames("101", "x"), "outside 200-599"},
		{"status 600", frames("600", "x"), "outside 200-599"},
		{"status junk after digits", frames("200x", "x"), "only a space"},
		{"reason with CR", frames("200 OK\r\nX: y", "x"), "control character"},
		{"header without colon", frames("200", "Just text\r\n", "x"), "no colon"},
		{"header value with CR LF", frames("200", "A: b\r\nC: d\re\r\n", "x"), "CR"},
		{"header value with NUL", frames("200", "A: b\x00c\r\n", "x"), "NUL"},
		{"header name with space", frames("200", "Bad Name: x\r\n", "x"), "name"},
		{"header name empty", frames("200", ": x\r\n", "x"), "empty name"},
		{"empty header line", frames("200", "A: 1\r\n\r\nB: 2\r\n", "x"), "empty"},
		{"header value with bare LF", frames("200", "A: 1\nB: 2\r\n", "x"), "LF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeReply(tt.frames)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("got error %v, want ErrProtocol", err)
			}
			if !strings.Contains(err.Error(), tt.rule) {
				t.Errorf("error %q does not name the rule %q", err, tt.rule)
			}
		})
	}
}

func TestRequestFrames(t *testing.T) {
	r := &Request{Method: []byte("POST"), Target: []byte("/a%20b?x=1"), Headers: []byte("Host: h\r\n"),
		Meta: []byte("route: /a\r\n"), Body: []byte("body")}
	meta := appendMeta(nil, []byte("id-1"), r.Meta)
	got := requestFrames(make([][]byte, 0, 8), []byte("id-1"), meta, r)
	want := frames("id-1", "", "MZMQ/1", "POST", "/a%20b?x=1", "Host: h\r\n", "request-id: id-1\r\nroute: /a\r\n", "body")
	if len(got) != len(want) {
		t.Fatalf("got %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("frame %d: got %q, want %q", i, got[i], want[i])
		}
	}
}

func TestAppendHeaderRoundTrip(t *testing.T) {
	b := AppendHeader(nil, "Content-Type", "text/plain")
	b = AppendHeader(b, "X-Two", "a, b")
	var got []string
	err := ParseHeaderLines(b, func(n, v []byte) error {
		got = append(got, string(n)+"="+string(v))
		return nil
	})
	if err != nil || strings.Join(got, ";") != "Content-Type=text/plain;X-Two=a, b" {
		t.Errorf("got %q, %v", got, err)
	}
}

func TestDecodeReplyKeepsFramesWhenNothingDropped(t *testing.T) {
	h := []byte("A: 1\r\n")
	got, err := DecodeReply([][]byte{[]byte("200"), h, nil})
	if err != nil {
		t.Fatal(err)
	}
	if &got.Headers[0] != &h[0] {
		t.Error("headers were copied although no field was dropped")
	}
}

func FuzzDecodeReply(f *testing.F) {
	f.Add(3, []byte("200 OK"), []byte("A: 1\r\nConnection: x\r\n"), []byte("body"))
	f.Add(2, []byte("abc"), []byte(""), []byte(""))
	f.Add(3, []byte("500"), []byte("X: \x00\r\n"), []byte{})
	f.Fuzz(func(t *testing.T, n int, status, headers, body []byte) {
		all := [][]byte{status, headers, body, body}
		if n < 0 {
			n = -n
		}
		resp, err := DecodeReply(all[:n%5])
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		if resp.Status < 200 || resp.Status > 599 {
			t.Fatalf("accepted status %d", resp.Status)
		}
		// Whatever is accepted must re-parse cleanly and carry no hop-by-hop field.
		err = ParseHeaderLines(resp.Headers, func(name, value []byte) error {
			if isDroppedReplyHeader(name) {
				t.Errorf("kept %q", name)
			}
			if bytes.ContainsAny(value, "\r\n\x00") {
				t.Errorf("value %q has CR/LF/NUL", value)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("accepted headers do not re-parse: %v", err)
		}
	})
}

func FuzzParseHeaderLines(f *testing.F) {
	f.Add([]byte("A: 1\r\nB:2\r\n"))
	f.Add([]byte("A: 1\r\n\r\n"))
	f.Add([]byte("no colon"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var rebuilt []byte
		err := ParseHeaderLines(b, func(name, value []byte) error {
			if len(name) == 0 || bytes.ContainsAny(name, ": \r\n") {
				t.Errorf("bad name %q", name)
			}
			rebuilt = AppendHeader(rebuilt, string(name), string(value))
			return nil
		})
		if err != nil {
			return
		}
		// Normalised output parses to the same fields.
		var again []byte
		if err := ParseHeaderLines(rebuilt, func(name, value []byte) error {
			again = AppendHeader(again, string(name), string(value))
			return nil
		}); err != nil || !bytes.Equal(again, rebuilt) {
			t.Fatalf("normalised form %q does not round-trip: %v", rebuilt, err)
		}
	})
}

func FuzzRequestRoundTrip(f *testing.F) {
	f.Add([]byte("GET"), []byte("/a?b"), []byte("body"), "Host", "x", "/a")
	f.Add([]byte("@open"), []byte(""), []byte(""), "X", "", "/")
	f.Fuzz(func(t *testing.T, method, target, body []byte, hname, hvalue, mvalue string) {
		headers := AppendHeader(nil, hname, hvalue)
		r := &Request{Method: method, Target: target, Headers: headers, Meta: AppendHeader(nil, "route", mvalue), Body: body}
		frames := requestFrames(make([][]byte, 0, 8), []byte("id-7"), appendMeta(nil, []byte("id-7"), r.Meta), r)
		got, err := ParseRequest(frames[2:])
		if err != nil {
			return // the inputs were not a valid request; the parser said so without panicking
		}
		if !bytes.Equal(got.Method, method) || !bytes.Equal(got.Target, target) || !bytes.Equal(got.Body, body) ||
			!bytes.Equal(got.Headers, headers) || string(MetaValue(got.Meta, "request-id")) != "id-7" {
			t.Fatalf("round trip changed the request: %+v", got)
		}
	})
}

func TestParseRequest(t *testing.T) {
	ok := frames("MZMQ/1", "GET", "/x", "Host: h\r\n", "request-id: 1\r\nroute: /x\r\n", "b")
	r, err := ParseRequest(ok)
	if err != nil || string(r.Method) != "GET" || string(MetaValue(r.Meta, "route")) != "/x" {
		t.Fatalf("got %+v %v", r, err)
	}
	for _, bad := range [][][]byte{
		frames("MZMQ/1", "GET", "/x", "", ""),
		frames("MZMQ/2", "GET", "/x", "", "", ""),
		frames("MZMQ/1", "", "/x", "", "", ""),
		frames("MZMQ/1", "G T", "/x", "", "", ""),
		frames("MZMQ/1", "GET", "/x y", "", "", ""),
		frames("MZMQ/1", "GET", "/x", "bad\r\n", "", ""),
	} {
		if _, err := ParseRequest(bad); !errors.Is(err, ErrProtocol) {
			t.Errorf("%q: got %v, want ErrProtocol", bad, err)
		}
	}
}
