//go:build modzmq_test

package relay

import (
	"bytes"
	"strings"
	"testing"

	"github.com/modzmq/modzmq/bridge"
)

// The C fast path accepts a reply only when the Go decoder would, with the
// same parts and no header to remove; everything else it leaves to Go.
func checkFastDecode(t *testing.T, frames [][]byte, maxReply int64) {
	t.Helper()
	ok, got := fastDecode(frames, maxReply)
	want, err := bridge.DecodeReply(frames)
	size := int64(0)
	for _, f := range frames {
		size += int64(len(f))
	}
	rewritten := err == nil && len(frames) == 3 && !bytes.Equal(want.Headers, frames[1])
	goAccepts := err == nil && (maxReply <= 0 || size <= maxReply) && !rewritten
	if ok != goAccepts {
		t.Fatalf("frames %q, max reply %d: fast path accepts %v, Go decoder accepts %v (err %v, headers rewritten %v)",
			frames, maxReply, ok, goAccepts, err, rewritten)
	}
	if !ok {
		return
	}
	if got.Status != want.Status || !bytes.Equal(got.Reason, want.Reason) || !bytes.Equal(got.Headers, want.Headers) ||
		!bytes.Equal(got.Body, want.Body) {
		t.Fatalf("frames %q: fast path %d %q %q %q, Go %d %q %q %q", frames, got.Status, got.Reason, got.Headers, got.Body,
			want.Status, want.Reason, want.Headers, want.Body)
	}
}

func TestFastDecode(t *testing.T) {
	for _, frames := range [][][]byte{
		{[]byte("body")},
		{},
		{[]byte("200"), []byte("")},
		{[]byte("404 Not Found"), []byte("gone")},
		{[]byte("201 "), []byte("x")},
		{[]byte("200 OK\x01"), []byte("x")},
		{[]byte("199"), []byte("x")},
		{[]byte("600"), []byte("x")},
		{[]byte("20x"), []byte("x")},
		{[]byte("200x"), []byte("x")},
		{[]byte("200"), []byte("A: b\r\nC:  d \r\n"), []byte("x")},
		{[]byte("200"), []byte("A: b\r\nC: d"), []byte("x")},
		{[]byte("200"), []byte(""), []byte("x")},
		{[]byte("200"), []byte("A: b\r\n\r\n"), []byte("x")},
		{[]byte("200"), []byte("A b\r\n"), []byte("x")},
		{[]byte("200"), []byte(": b\r\n"), []byte("x")},
		{[]byte("200"), []byte("A(: b\r\n"), []byte("x")},
		{[]byte("200"), []byte("A: b\rc\r\n"), []byte("x")},
		{[]byte("200"), []byte("A: b\tc\x7f\r\n"), []byte("x")},
		{[]byte("200"), []byte("A: \t b \t\r\n"), []byte("x")},
		{[]byte("200"), []byte("Connection: close\r\n"), []byte("x")},
		{[]byte("200"), []byte("Proxy-Foo: 1\r\nA: b\r\n"), []byte("x")},
		{[]byte("200"), []byte("content-LENGTH: 1\r\n"), []byte("x")},
		{[]byte("200"), []byte("TE: x\r\n"), []byte("x")},
		{[]byte("200"), []byte("Tea: x\r\n"), []byte("x")},
		{[]byte("200"), []byte("A: b\r\n"), []byte("x"), []byte("y")},
	} {
		checkFastDecode(t, frames, 0)
		checkFastDecode(t, frames, 3)
	}
}

func FuzzFastDecode(f *testing.F) {
	f.Add(uint8(3), []byte("200 OK"), []byte("Content-Type: text/plain\r\nSet-Cookie: a=1\r\n"), []byte("hello"), int64(0))
	f.Add(uint8(2), []byte("503"), []byte("busy"), []byte(nil), int64(0))
	f.Add(uint8(1), []byte("just a body"), []byte(nil), []byte(nil), int64(4))
	f.Add(uint8(3), []byte("200"), []byte("Keep-Alive: 5\r\nX: y"), []byte("z"), int64(100))
	f.Fuzz(func(t *testing.T, n uint8, a, b, c []byte, maxReply int64) {
		frames := [][]byte{a, b, c, a}[:n%5]
		checkFastDecode(t, frames, maxReply)
	})
}

// The fast path's request encoder builds the frames bridge.EncodeRequest
// builds, byte for byte, whether its meta frame fits the stack or not.
func checkFastEncode(t *testing.T, id []byte, r *bridge.Request, notices bool, stackSize int) {
	t.Helper()
	got, want := fastEncode(id, r, notices, stackSize), bridge.EncodeRequest(id, r, notices)
	if len(got) != len(want) {
		t.Fatalf("%q %+v: C %d frames, Go %d", id, r, len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("%q %+v: frame %d is %q in C, %q in Go", id, r, i, got[i], want[i])
		}
	}
}

func TestFastEncode(t *testing.T) {
	r := &bridge.Request{Method: []byte("POST"), Target: []byte("/a%20b?x=1"), Headers: []byte("Host: h\r\nX-A: 1, 2\r\n"),
		Meta: []byte("remote-addr: 127.0.0.1\r\nroute: /a\r\n"), Body: []byte("body")}
	for _, stack := range []int{2048, 40, 0} {
		checkFastEncode(t, []byte("0a1b2c3d4e5f-f17"), r, false, stack)
		checkFastEncode(t, []byte("x"), &bridge.Request{}, false, stack)
		checkFastEncode(t, []byte("0a1b2c3d4e5f-f18"), &bridge.Request{Method: []byte("GET"), Meta: r.Meta, StreamWindow: 262144}, true, stack)
		checkFastEncode(t, []byte("y"), &bridge.Request{StreamWindow: 1}, false, stack)
	}
}

func FuzzFastEncode(f *testing.F) {
	f.Add([]byte("0a1b2c3d4e5f-f1"), []byte("GET"), []byte("/x?y"), []byte("Host: h\r\n"), []byte("route: /x\r\n"), []byte{}, uint16(2048), int64(0), false)
	f.Add([]byte{}, []byte{}, []byte{}, []byte{}, []byte{}, []byte("\x00\xff"), uint16(0), int64(262144), true)
	f.Fuzz(func(t *testing.T, id, method, target, headers, meta, body []byte, stack uint16, window int64, notices bool) {
		checkFastEncode(t, id, &bridge.Request{Method: method, Target: target, Headers: headers, Meta: meta, Body: body,
			StreamWindow: window}, notices, int(stack))
	})
}

// The messages C sends for a call in progress (a grant, a part of a body,
// a WebSocket's message) are bridge.ControlFrames's.
func TestControlFrames(t *testing.T) {
	for _, c := range []struct{ id, method, target, body string }{
		{"a1b2-7", "@credit", "65600", ""},
		{"x", "@body", "", "some bytes\x00\xff"},
		{"req-" + strings.Repeat("9", 60), "@body-end", "", ""},
		{"r", "@text", "", strings.Repeat("é", 1000)},
	} {
		want := bridge.ControlFrames([]byte(c.id), []byte(c.method), []byte(c.target), []byte(c.body))
		got := controlFrames([]byte(c.id), []byte(c.method), []byte(c.target), []byte(c.body))
		if len(got) != len(want) {
			t.Fatalf("%+v: %d frames, want %d", c, len(got), len(want))
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Errorf("%+v: frame %d is %q, want %q", c, i, got[i], want[i])
			}
		}
	}
}
