package wsproto

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// frame is a client frame: masked unless unmasked, with rsv bits, fin and
// an opcode as given (any, so tests can send reserved ones).
type frame struct {
	op       ws.OpCode
	fin      bool
	rsv      byte
	unmasked bool
	payload  []byte
	length   int64 // the header's length when it differs from the payload's
}

func (f frame) bytes() []byte {
	h := ws.Header{Fin: f.fin, Rsv: f.rsv, OpCode: f.op, Masked: !f.unmasked, Length: int64(len(f.payload))}
	if f.length != 0 {
		h.Length = f.length
	}
	if h.Masked {
		h.Mask = [4]byte{0x12, 0x34, 0x56, 0x78}
	}
	var b bytes.Buffer
	ws.WriteHeader(&b, h)
	p := append([]byte(nil), f.payload...)
	if h.Masked {
		ws.Cipher(p, h.Mask, 0)
	}
	b.Write(p)
	return b.Bytes()
}

func frames(fs ...frame) []byte {
	var b []byte
	for _, f := range fs {
		b = append(b, f.bytes()...)
	}
	return b
}

func text(s string) frame { return frame{op: ws.OpText, fin: true, payload: []byte(s)} }
func bin(b []byte) frame  { return frame{op: ws.OpBinary, fin: true, payload: b} }
func ping(s string) frame { return frame{op: ws.OpPing, fin: true, payload: []byte(s)} }
func pong(s string) frame { return frame{op: ws.OpPong, fin: true, payload: []byte(s)} }
func cont(s string, fin bool) frame {
	return frame{op: ws.OpContinuation, fin: fin, payload: []byte(s)}
}
func closeFrame(code int, reason string) frame {
	p := []byte{byte(code >> 8), byte(code)}
	return frame{op: ws.OpClose, fin: true, payload: append(p, reason...)}
}

// readAll feeds in to a Reader chunk bytes at a time, within Space, and
// collects what Next returns; events are copied.
func readAll(t testing.TB, r *Reader, in []byte, chunk int) ([]Event, error) {
	var evs []Event
	for {
		for {
			ev, ok, err := r.Next()
			if err != nil {
				return evs, err
			}
			if !ok {
				break
			}
			ev.Data = append([]byte(nil), ev.Data...)
			ev.Reason = append([]byte(nil), ev.Reason...)
			evs = append(evs, ev)
			if held := int64(len(r.buf)-r.pos) + int64(len(r.msg)); held > r.max()+FrameOverhead {
				t.Fatalf("the reader holds %d bytes, over %d", held, r.max()+FrameOverhead)
			}
		}
		if len(in) == 0 || r.Closed() {
			return evs, nil
		}
		n := min(len(in), chunk, int(r.Space()))
		if n <= 0 {
			t.Fatalf("the reader has no space for more with %d bytes fed", len(r.buf)-r.pos)
		}
		r.Feed(in[:n])
		in = in[n:]
	}
}

func show(evs []Event) string {
	var s []string
	for _, e := range evs {
		switch e.Kind {
		case Close:
			s = append(s, fmt.Sprintf("close %d %q", e.Code, e.Reason))
		case Binary:
			s = append(s, fmt.Sprintf("binary %d", len(e.Data)))
		default:
			s = append(s, fmt.Sprintf("%s %q", e.Kind, e.Data))
		}
	}
	return strings.Join(s, ", ")
}

// Messages whole and in fragments, with control frames between fragments,
// empty ones and closes, fed whole and one byte at a time.
func TestReaderAssemblesMessages(t *testing.T) {
	euro := "\u20ac" // 3 bytes, split across fragments below
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"text", frames(text("hello")), `text "hello"`},
		{"binary", frames(bin([]byte{0, 1, 2})), "binary 3"},
		{"empty text and binary", frames(text(""), bin(nil)), `text "", binary 0`},
		{"fragmented text with pings between",
			frames(frame{op: ws.OpText, payload: []byte("he")}, ping("p1"), cont("ll", false), pong("q"), ping(""), cont("o", true)),
			`ping "p1", pong "q", ping "", text "hello"`},
		{"fragmented binary", frames(frame{op: ws.OpBinary, payload: []byte{1}}, cont("\x02", false), cont("", true)), "binary 2"},
		{"empty fragments", frames(frame{op: ws.OpText}, cont("", true)), `text ""`},
		{"UTF-8 split across fragments",
			frames(frame{op: ws.OpText, payload: []byte("a" + euro[:1])}, cont(euro[1:2], false), cont(euro[2:]+"b", true)),
			`text "a` + euro + `b"`},
		{"126-byte and 64 KiB lengths", frames(bin(make([]byte, 126)), bin(make([]byte, 65536))), "binary 126, binary 65536"},
		{"close with code and reason", frames(text("x"), closeFrame(1000, "bye"), text("after")), `text "x", close 1000 "bye"`},
		{"close without code", frames(frame{op: ws.OpClose, fin: true}), `close 1005 ""`},
		{"close 4000", frames(closeFrame(4000, "")), `close 4000 ""`},
	}
	for _, tt := range tests {
		for _, chunk := range []int{1 << 20, 7, 1} {
			var r Reader
			evs, err := readAll(t, &r, tt.in, chunk)
			if err != nil {
				t.Errorf("%s (chunks of %d): %v", tt.name, chunk, err)
				continue
			}
			if got := show(evs); got != tt.want {
				t.Errorf("%s (chunks of %d): got %s, want %s", tt.name, chunk, got, tt.want)
			}
		}
	}
}

// Every breach of RFC 6455 the reader catches, with its close code.
func TestReaderErrorsCarryTheCloseCode(t *testing.T) {
	big := make([]byte, 101)
	tests := []struct {
		name string
		in   []byte
		code int
	}{
		{"unmasked frame", frames(frame{op: ws.OpText, fin: true, unmasked: true, payload: []byte("x")}), 1002},
		{"RSV1", frames(frame{op: ws.OpText, fin: true, rsv: 4, payload: []byte("x")}), 1002},
		{"RSV3", frames(frame{op: ws.OpBinary, fin: true, rsv: 1}), 1002},
		{"reserved data opcode", frames(frame{op: 3, fin: true}), 1002},
		{"reserved control opcode", frames(frame{op: 0xb, fin: true}), 1002},
		{"fragmented ping", frames(frame{op: ws.OpPing, payload: []byte("x")}), 1002},
		{"fragmented close", frames(frame{op: ws.OpClose}), 1002},
		{"ping over 125 bytes", frames(ping(strings.Repeat("x", 126))), 1002},
		{"continuation without start", frames(cont("x", true)), 1002},
		{"new message inside a fragmented one", frames(frame{op: ws.OpText, payload: []byte("a")}, text("b")), 1002},
		{"close of one byte", frames(frame{op: ws.OpClose, fin: true, payload: []byte{3}}), 1002},
		{"close code 1005", frames(closeFrame(1005, "")), 1002},
		{"close code 999", frames(closeFrame(999, "")), 1002},
		{"close code 5000", frames(closeFrame(5000, "")), 1002},
		{"64-bit length with its top bit", []byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, 1002},
		{"invalid UTF-8", frames(text("a\xffb")), 1007},
		{"invalid UTF-8 split across fragments", frames(frame{op: ws.OpText, payload: []byte("\xe2\x82")}, cont("x", true)), 1007},
		{"text ending inside a character", frames(frame{op: ws.OpText, payload: []byte("a\xe2")}, cont("\x82", true)), 1007},
		{"surrogate", frames(text("\xed\xa0\x80")), 1007},
		{"close reason not UTF-8", frames(closeFrame(1000, "\xff")), 1007},
		{"over Max in one frame", frames(bin(big)), 1009},
		{"over Max across fragments", frames(frame{op: ws.OpBinary, payload: big[:60]}, ping("between"), cont(string(big[:41]), true)), 1009},
	}
	for _, tt := range tests {
		for _, chunk := range []int{1 << 20, 1} {
			r := Reader{Max: 100}
			_, err := readAll(t, &r, tt.in, chunk)
			var we *Error
			if !errors.As(err, &we) || we.Code != tt.code {
				t.Errorf("%s (chunks of %d): %v, want close code %d", tt.name, chunk, err, tt.code)
				continue
			}
			if _, ok, again := r.Next(); ok || again != err {
				t.Errorf("%s: Next after the error: %v, want the error again", tt.name, again)
			}
		}
	}
}

// Errors come as soon as the bytes show them: invalid UTF-8 in a first
// fragment and a message over Max from its frame header, before the
// payload arrives.
func TestReaderFailsEarly(t *testing.T) {
	r := Reader{Max: 1000}
	r.Feed(frames(frame{op: ws.OpText, payload: []byte("ok \xff")}))
	if _, _, err := r.Next(); err == nil || err.(*Error).Code != 1007 {
		t.Errorf("invalid UTF-8 in a first fragment: %v, want 1007 at once", err)
	}
	r = Reader{Max: 1000}
	hdr := frames(frame{op: ws.OpBinary, fin: true, payload: make([]byte, 1001)})[:8]
	r.Feed(hdr)
	if _, _, err := r.Next(); err == nil || err.(*Error).Code != 1009 {
		t.Errorf("a header announcing 1001 bytes: %v, want 1009 at once", err)
	}
}

// A message of the default 16 MiB limit, fed as a front does (within
// Space, 64 KiB at a time), comes whole, its buffer never past Max, and is
// let go of after.
func TestReaderTakes16MiB(t *testing.T) {
	msg := make([]byte, DefaultMax)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	in := frames(frame{op: ws.OpBinary, payload: msg[:1<<20]}, ping("x"), cont(string(msg[1<<20:]), true), text(""))
	var r Reader
	evs, err := readAll(t, &r, in, 64<<10)
	if err != nil || len(evs) != 3 || evs[0].Kind != Ping || !bytes.Equal(evs[1].Data, msg) || evs[2].Kind != Text {
		t.Fatalf("got %s, %v", show(evs), err)
	}
	if len(r.msg) != 0 || cap(r.msg) > keepCap || cap(r.buf) > keepCap {
		t.Errorf("after the messages the reader keeps buffers of %d and %d bytes", cap(r.msg), cap(r.buf))
	}

	// One byte over: 1009 from the header.
	r = Reader{}
	r.Feed(frames(frame{op: ws.OpBinary, fin: true, length: DefaultMax + 1}))
	if _, _, err := r.Next(); err == nil || err.(*Error).Code != 1009 {
		t.Errorf("16 MiB + 1: %v, want 1009", err)
	}
}

// A Reader holds no message buffer once the message it delivered is
// forgotten (the Next after), until the next message's bytes come; the
// buffers it lets go of serve other Readers, and every message comes
// intact: whole, spanning several Feeds, in fragments around a ping, while
// another Reader assembles one of its own, and within a Max smaller than
// the buffers let go of.
func TestReaderIdleHoldsNoMessage(t *testing.T) {
	pattern := func(n int, seed byte) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = seed + byte(i*7)
		}
		return b
	}
	big := pattern(3000, 1)
	other := pattern(2000, 2)
	// o assembles a message of its own meanwhile, in the buffers r lets
	// go of: its header first, then its payload once r delivered one.
	var r, o Reader
	oin := frames(bin(other))
	o.Feed(oin[:8])
	if _, ok, err := o.Next(); ok || err != nil || o.msg != nil {
		t.Fatal(ok, err, cap(o.msg))
	}
	oin = oin[8:]

	// expect feeds in, chunk bytes at a time, until its last Feed, which
	// must give want (a ping before it, when ping); the Reader holds a
	// message buffer from the first payload bytes to the Next after.
	expect := func(name string, in []byte, chunk int, ping bool, kind Kind, want []byte) {
		t.Helper()
		got := false
		for len(in) > 0 {
			n := min(chunk, len(in))
			r.Feed(in[:n])
			in = in[n:]
			for {
				ev, ok, err := r.Next()
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if !ok {
					break
				}
				if ev.Kind == Ping {
					if !ping || string(ev.Data) != "p" {
						t.Fatalf("%s: a ping %q", name, ev.Data)
					}
					continue
				}
				if got || len(in) > 0 || ev.Kind != kind || !bytes.Equal(ev.Data, want) {
					t.Fatalf("%s: got %s %d bytes with %d bytes to feed, want %s %d bytes", name, ev.Kind, len(ev.Data), len(in), kind, len(want))
				}
				got = true
			}
			if len(oin) > 0 { // o takes its next bytes while r is at work
				k := min(500, len(oin))
				o.Feed(oin[:k])
				oin = oin[k:]
				ev, ok, err := o.Next()
				if err != nil || ok != (len(oin) == 0) || (ok && !bytes.Equal(ev.Data, other)) {
					t.Fatalf("%s: the other Reader, %d bytes to feed: %v %v, %d bytes", name, len(oin), ok, err, len(ev.Data))
				}
			}
		}
		if !got {
			t.Fatalf("%s: no message", name)
		}
		if _, ok, err := r.Next(); ok || err != nil {
			t.Fatalf("%s: Next after: %v %v", name, ok, err)
		}
		if cap(r.msg) != 0 {
			t.Errorf("%s: the idle reader holds a message buffer of %d bytes", name, cap(r.msg))
		}
	}
	expect("text", frames(text("hello")), 100, false, Text, []byte("hello"))
	expect("3000 bytes in Feeds of 700", frames(bin(big)), 700, false, Binary, big)
	expect("text again", frames(text("hello again")), 100, false, Text, []byte("hello again"))
	expect("fragments around a ping", frames(frame{op: ws.OpBinary, payload: big[:1000]}, ping("p"), cont("", false), cont(string(big[1000:]), true)),
		300, true, Binary, big)
	expect("fragments fed whole", frames(frame{op: ws.OpText, payload: []byte("frag")}, cont("ment", false), cont("ed", true)),
		1000, false, Text, []byte("fragmented"))
	expect("an empty message", frames(bin(nil)), 10, false, Binary, nil)
	if _, ok, err := o.Next(); ok || err != nil || cap(o.msg) != 0 {
		t.Errorf("the other Reader after its message: %v %v, a buffer of %d bytes", ok, err, cap(o.msg))
	}

	// Within a Max below the buffers let go of.
	small := Reader{Max: 100}
	small.Feed(frames(bin(big[:60]))[:40])
	if _, ok, err := small.Next(); ok || err != nil || cap(small.msg) > 100 || len(small.msg) == 0 {
		t.Fatalf("a Reader of Max 100 with a message under way: %v %v, buffer %d of %d bytes", ok, err, len(small.msg), cap(small.msg))
	}

	// A close, and an error, let the message under way go.
	r.Feed(frames(frame{op: ws.OpText, payload: []byte("half")}, closeFrame(1000, "")))
	if ev, ok, err := r.Next(); !ok || err != nil || ev.Kind != Close {
		t.Fatal(ev, ok, err)
	}
	if _, ok, err := r.Next(); ok || err != nil || cap(r.msg) != 0 {
		t.Errorf("after a close: %v %v, a buffer of %d bytes", ok, err, cap(r.msg))
	}
	r = Reader{}
	r.Feed(frames(frame{op: ws.OpText, payload: []byte("half")}, text("b")))
	if _, _, err := r.Next(); err == nil || cap(r.msg) != 0 {
		t.Errorf("after an error: %v, a buffer of %d bytes", err, cap(r.msg))
	}
}

// Space falls as a message is assembled and is back once it is taken.
func TestReaderSpace(t *testing.T) {
	r := Reader{Max: 1000}
	if r.Space() != 1000+FrameOverhead {
		t.Fatalf("an empty reader's Space: %d", r.Space())
	}
	in := frames(frame{op: ws.OpBinary, fin: true, payload: make([]byte, 1000)})
	r.Feed(in[:500])
	if _, ok, err := r.Next(); ok || err != nil {
		t.Fatal(ok, err)
	}
	if got, want := r.Space(), int64(1000+FrameOverhead-(500-8)); got != want {
		t.Errorf("Space with 492 payload bytes in: %d, want %d", got, want)
	}
	r.Feed(in[500:])
	if ev, ok, err := r.Next(); !ok || err != nil || len(ev.Data) != 1000 {
		t.Fatal(ok, err)
	}
	if _, ok, _ := r.Next(); ok || r.Space() != 1000+FrameOverhead {
		t.Errorf("Space after the message was taken: %d", r.Space())
	}
}

// Server frames read back with gobwas/ws as sent: lengths of each size,
// control frames, closes with and without a code, a long reason cut.
func TestAppendFrames(t *testing.T) {
	long := strings.Repeat("r", 200)
	tests := []struct {
		b       []byte
		op      ws.OpCode
		payload string
	}{
		{AppendFrame(nil, Text, []byte("hi")), ws.OpText, "hi"},
		{AppendFrame([]byte("prefix"), Binary, make([]byte, 126))[6:], ws.OpBinary, string(make([]byte, 126))},
		{AppendFrame(nil, Binary, make([]byte, 70000)), ws.OpBinary, string(make([]byte, 70000))},
		{AppendFrame(nil, Text, nil), ws.OpText, ""},
		{AppendPing(nil, []byte("p")), ws.OpPing, "p"},
		{AppendPong(nil, []byte("p")), ws.OpPong, "p"},
		{AppendClose(nil, 4000, []byte("bye")), ws.OpClose, "\x0f\xa0bye"},
		{AppendClose(nil, 0, []byte("ignored")), ws.OpClose, ""},
		{AppendClose(nil, 1005, nil), ws.OpClose, ""},
		{AppendClose(nil, 1001, []byte(long)), ws.OpClose, "\x03\xe9" + long[:123]},
	}
	for i, tt := range tests {
		f, err := ws.ReadFrame(bytes.NewReader(tt.b))
		if err != nil || !f.Header.Fin || f.Header.Masked || f.Header.OpCode != tt.op || string(f.Payload) != tt.payload {
			t.Errorf("frame %d: %+v %v", i, f.Header, err)
		}
		if rest := len(tt.b) - ws.HeaderSize(f.Header) - len(f.Payload); rest != 0 {
			t.Errorf("frame %d: %d bytes after the frame", i, rest)
		}
	}
}

func TestAcceptKey(t *testing.T) {
	// RFC 6455 section 1.3.
	if got := AcceptKey("dGhlIHNhbXBsZSBub25jZQ=="); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Errorf("AcceptKey: %s", got)
	}
}

func TestCheckHandshake(t *testing.T) {
	good := http.Header{"Upgrade": {"websocket"}, "Connection": {"keep-alive, Upgrade"}, "Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}, "Sec-Websocket-Protocol": {"chat, superchat"}}
	with := func(k, v string) http.Header {
		h := good.Clone()
		if v == "" {
			h.Del(k)
		} else {
			h.Set(k, v)
		}
		return h
	}
	tests := []struct {
		name   string
		method string
		h      http.Header
		status int
	}{
		{"good", "GET", good, 0},
		{"POST", "POST", good, 400},
		{"no Upgrade", "GET", with("Upgrade", ""), 400},
		{"Upgrade: h2c", "GET", with("Upgrade", "h2c"), 400},
		{"Upgrade in capitals", "GET", with("Upgrade", "WebSocket"), 0},
		{"no Connection: upgrade", "GET", with("Connection", "keep-alive"), 400},
		{"version 8", "GET", with("Sec-WebSocket-Version", "8"), 426},
		{"no version", "GET", with("Sec-WebSocket-Version", ""), 426},
		{"no key", "GET", with("Sec-WebSocket-Key", ""), 400},
		{"key of 15 bytes", "GET", with("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAA"), 400},
		{"key not base64", "GET", with("Sec-WebSocket-Key", "not base64 at all!!!!!=="), 400},
	}
	for _, tt := range tests {
		key, protocols, status, err := CheckHandshake(tt.method, func(n string) string { return strings.Join(tt.h.Values(n), ", ") })
		if status != tt.status || (status == 0) != (err == nil) {
			t.Errorf("%s: status %d (%v), want %d", tt.name, status, err, tt.status)
		}
		if status == 0 && (key != "dGhlIHNhbXBsZSBub25jZQ==" || protocols != "chat, superchat") {
			t.Errorf("%s: key %q, protocols %q", tt.name, key, protocols)
		}
	}
	if !IsUpgrade(func(n string) string { return good.Get(n) }) || IsUpgrade(func(string) string { return "" }) {
		t.Error("IsUpgrade")
	}
}

func TestOriginAllowed(t *testing.T) {
	allowed := []string{"https://example.com", "http://localhost:8080"}
	for _, tt := range []struct {
		origin  string
		allowed []string
		want    bool
	}{
		{"https://evil.com", nil, true},
		{"", allowed, true},
		{"https://example.com", allowed, true},
		{"HTTPS://Example.com", allowed, true},
		{"http://localhost:8080", allowed, true},
		{"http://localhost:8081", allowed, false},
		{"https://example.com.evil.com", allowed, false},
		{"null", allowed, false},
	} {
		if got := OriginAllowed(tt.origin, tt.allowed); got != tt.want {
			t.Errorf("OriginAllowed(%q, %q) = %v", tt.origin, tt.allowed, got)
		}
	}
}

// FuzzReader feeds any bytes, in chunks the input chooses, to a Reader
// with a small Max: it must not panic, hold more than Max plus
// FrameOverhead, hand out text that is not UTF-8 or a message over Max, or
// read the same bytes differently when they come one at a time.
func FuzzReader(f *testing.F) {
	f.Add(byte(3), frames(text("hello"), bin([]byte{1, 2, 3})))
	f.Add(byte(1), frames(frame{op: ws.OpText, payload: []byte("h\xe2")}, ping("p"), cont("\x82\xac", true), closeFrame(1000, "bye")))
	f.Add(byte(200), frames(bin(make([]byte, 300)), closeFrame(4000, "")))
	f.Add(byte(5), frames(frame{op: ws.OpBinary, payload: make([]byte, 600)}, cont(string(make([]byte, 500)), true)))
	f.Add(byte(0), frames(frame{op: ws.OpText, fin: true, unmasked: true, payload: []byte("x")}))
	f.Add(byte(9), frames(frame{op: ws.OpClose, fin: true, payload: []byte{3}}))
	f.Fuzz(func(t *testing.T, chunk byte, in []byte) {
		const max = 1024
		run := func(chunk int) ([]Event, error) {
			r := Reader{Max: max}
			evs, err := readAll(t, &r, in, chunk)
			for _, e := range evs {
				if e.Kind == Text && !utf8.Valid(e.Data) {
					t.Fatalf("text that is not UTF-8: %q", e.Data)
				}
				if len(e.Data) > max {
					t.Fatalf("a message of %d bytes, over %d", len(e.Data), max)
				}
			}
			if err != nil {
				var we *Error
				if !errors.As(err, &we) || (we.Code != 1002 && we.Code != 1007 && we.Code != 1009) {
					t.Fatalf("an error without a close code: %v", err)
				}
			}
			return evs, err
		}
		evs, err := run(int(chunk) + 1)
		one, oneErr := run(1)
		if show(evs) != show(one) || (err == nil) != (oneErr == nil) {
			t.Fatalf("in chunks of %d: %s, %v; byte by byte: %s, %v", int(chunk)+1, show(evs), err, show(one), oneErr)
		}
		if err != nil && err.(*Error).Code != oneErr.(*Error).Code {
			t.Fatalf("close code %d in chunks, %d byte by byte", err.(*Error).Code, oneErr.(*Error).Code)
		}
	})
}

// A front's busy Reader: one message fed and taken at a time, then Next
// with nothing more, as a front that waits for the client's next bytes
// calls it. What it allocates: 16 bytes a frame in ws.ReadHeader, and the
// buffer of bytes fed when a frame is over keepCap; a message's buffer,
// up to poolCap, comes back from msgs.
func BenchmarkReaderMessages(b *testing.B) {
	for _, size := range []int{16, 500, 4 << 10, 32 << 10} {
		in := frames(bin(make([]byte, size)))
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			var r Reader
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				r.Feed(in)
				if ev, ok, err := r.Next(); !ok || err != nil || len(ev.Data) != size {
					b.Fatal(ok, err)
				}
				if _, ok, err := r.Next(); ok || err != nil {
					b.Fatal(ok, err)
				}
			}
		})
	}
}
