//go:build modzmq_test

package relay

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/internal/wsproto"
)

// The C step of an open WebSocket (wsfast.c) relays a client's frame only
// when wsproto.Reader, in the state Go lends the C step in (nothing held),
// makes the same whole message of exactly those bytes; its UTF-8 check is
// utf8.Valid, its server frame header wsproto's, and a credit it takes is
// one bridge.WebSocket takes, with the same value.
func checkWSFast(t *testing.T, data []byte, max int64) {
	t.Helper()
	// The step takes a frame wsFrame takes, when it is not text that
	// fails the UTF-8 check.
	if n, op, payload := wsFrame(data, max); n > 0 && (op != 1 || utf8Valid(payload)) {
		rd := wsproto.Reader{Max: max}
		rd.Feed(data[:n])
		ev, ok, err := rd.Next()
		kind := wsproto.Binary
		if op == 1 {
			kind = wsproto.Text
		}
		if err != nil || !ok || ev.Kind != kind || !bytes.Equal(ev.Data, payload) {
			t.Fatalf("%q (max %d): the C step takes %d bytes as opcode %d %q; the Reader makes %v %v %q",
				data, max, n, op, payload, err, ev.Kind, ev.Data)
		}
		if _, ok, err := rd.Next(); ok || err != nil || !rd.Idle() {
			t.Fatalf("%q: the Reader finds more in the %d bytes the C step takes (%v, %v, idle %v)", data, n, ok, err, rd.Idle())
		}
	}
	if got, want := utf8Valid(data), utf8.Valid(data); got != want {
		t.Fatalf("%q: the C step's UTF-8 check says %v, utf8.Valid %v", data, got, want)
	}
	if v, ok := wsCredit(data); ok {
		n, err := strconv.ParseInt(string(data), 10, 64)
		if err != nil || n != v || n < 0 || n > 1<<40 {
			t.Fatalf("%q: the C step takes credit %d; strconv says %d, %v", data, v, n, err)
		}
	} else if n, err := strconv.ParseInt(string(data), 10, 64); err == nil && len(data) <= 13 &&
		bytes.Trim(data, "0123456789") == nil && n <= 1<<40 {
		t.Fatalf("%q: the C step refuses credit %d", data, n)
	}
	if len(data) >= 8 {
		n := binary.BigEndian.Uint64(data) >> 2 // up to 2^62: what an int holds
		for _, k := range []wsproto.Kind{wsproto.Text, wsproto.Binary} {
			op := 1
			if k == wsproto.Binary {
				op = 2
			}
			for _, size := range []uint64{n, n % 70000, n % 130} {
				if got, want := wsHeader(op, size), wsproto.AppendHeader(nil, k, int(size)); !bytes.Equal(got, want) {
					t.Fatalf("a header for %d bytes of opcode %d: the C step writes % x, wsproto % x", size, op, got, want)
				}
			}
		}
	}
}

// clientFrame is a client's masked frame with payload p.
func clientFrame(op ws.OpCode, fin bool, p []byte) []byte {
	var b bytes.Buffer
	f := ws.NewFrame(op, fin, append([]byte(nil), p...))
	ws.WriteFrame(&b, ws.MaskFrameInPlace(f))
	return b.Bytes()
}

func wsSeeds() [][]byte {
	long := bytes.Repeat([]byte("é"), 40000)
	unmasked := []byte{0x81, 0x02, 'h', 'i'}
	return [][]byte{
		clientFrame(ws.OpText, true, []byte("hello")),
		clientFrame(ws.OpBinary, true, []byte{0, 1, 2, 255}),
		clientFrame(ws.OpText, true, nil),
		clientFrame(ws.OpText, true, long[:125]),
		clientFrame(ws.OpText, true, long[:126]),
		clientFrame(ws.OpBinary, true, long),
		clientFrame(ws.OpText, true, []byte{0xed, 0xa0, 0x80}), // a surrogate
		clientFrame(ws.OpText, true, []byte{0xc0, 0x80}),       // overlong
		clientFrame(ws.OpText, false, []byte("frag")),
		clientFrame(ws.OpContinuation, true, []byte("ment")),
		clientFrame(ws.OpPing, true, []byte("p")),
		clientFrame(ws.OpClose, true, []byte{3, 232}),
		append(clientFrame(ws.OpText, true, []byte("a")), clientFrame(ws.OpBinary, true, []byte("b"))...),
		unmasked,
		[]byte("1099511627776"), []byte("1099511627777"), []byte("0"), []byte("+5"), []byte("007"), []byte(""),
		[]byte("\xf4\x8f\xbf\xbf"), []byte("\xf4\x90\x80\x80"), []byte("ascii only, more than eight bytes"),
	}
}

// The C paths count credit as the bridge does.
func TestPartCost(t *testing.T) {
	if partCost() != bridge.PartCost {
		t.Errorf("MODZMQ_PART_COST is %d, bridge.PartCost %d", partCost(), bridge.PartCost)
	}
}

// The shim parts a streamed body as the gateways do.
func TestBodyPart(t *testing.T) {
	if bodyPart() != bridge.BodyPart {
		t.Errorf("MODZMQ_BODY_PART is %d, bridge.BodyPart %d", bodyPart(), bridge.BodyPart)
	}
}

func TestWSFast(t *testing.T) {
	for _, seed := range wsSeeds() {
		for _, max := range []int64{1, 125, 1000, 16 << 20} {
			checkWSFast(t, seed, max)
			for cut := range min(len(seed), 20) {
				checkWSFast(t, seed[:cut], max) // a frame not all there yet is Go's
			}
		}
	}
	// The common frames are the C step's.
	for _, p := range [][]byte{nil, []byte("hello"), bytes.Repeat([]byte("x"), 125), bytes.Repeat([]byte("ü"), 100), bytes.Repeat([]byte{0}, 65536)} {
		for _, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
			f := clientFrame(op, true, p)
			if n, got, payload := wsFrame(f, 1<<20); n != len(f) || got != int(op) || !bytes.Equal(payload, p) {
				t.Errorf("a %d-byte message of opcode %d: the C step takes %d of %d bytes as opcode %d", len(p), op, n, len(f), got)
			}
		}
	}
	// Over the limit, unmasked, fragmented, control: Go's.
	for _, f := range [][]byte{clientFrame(ws.OpBinary, true, make([]byte, 1001)), {0x82, 0x01, 'x'},
		clientFrame(ws.OpBinary, false, []byte("x")), clientFrame(ws.OpPing, true, nil)} {
		if n, _, _ := wsFrame(f, 1000); n != 0 {
			t.Errorf("% x: the C step takes it", f[:2])
		}
	}
}

func FuzzWSFast(f *testing.F) {
	for _, seed := range wsSeeds() {
		f.Add(seed, uint32(1000))
	}
	f.Fuzz(func(t *testing.T, data []byte, max uint32) {
		checkWSFast(t, data, int64(max%(1<<25))+1)
	})
}
