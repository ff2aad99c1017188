package worker

import (
	"bytes"
	"errors"
	"io"
	"log"
	"net"
	"reflect"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// fakeConn is a net.Conn that reads data a chunk at a time and keeps
// what is written to it.
type fakeConn struct {
	data    []byte
	chunk   int
	reads   int
	written bytes.Buffer
	closed  bool
}

func (f *fakeConn) Read(p []byte) (int, error) {
	if f.closed {
		return 0, net.ErrClosed
	}
	if len(f.data) == 0 {
		return 0, io.EOF
	}
	f.reads++
	n := copy(p[:min(len(p), f.chunk)], f.data)
	f.data = f.data[n:]
	return n, nil
}
func (f *fakeConn) Write(p []byte) (int, error)      { return f.written.Write(p) }
func (f *fakeConn) Close() error                     { f.closed = true; return nil }
func (f *fakeConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (f *fakeConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (f *fakeConn) SetDeadline(time.Time) error      { return nil }
func (f *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (f *fakeConn) SetWriteDeadline(time.Time) error { return nil }

// readAll runs a connection over stream (after a front's handshake), read
// chunk bytes at a time, and returns the messages the handler got, why the
// connection ended as ZMTPFrames says it, and the connection.
func readAll(t testing.TB, stream []byte, chunk int, limit int64, maxFrames int) ([][][]byte, syscall.Errno, *Conn) {
	var msgs [][][]byte
	h := HandlerFunc(func(c *Conn, msg [][]byte) {
		if msg == nil {
			return
		}
		m := make([][]byte, len(msg))
		for i, f := range msg {
			m[i] = append([]byte{}, f...)
		}
		msgs = append(msgs, m)
	})
	s := &Server{handler: h, opts: (&Options{MaxMessage: limit, MaxFrames: maxFrames, ErrorLog: log.New(io.Discard, "", 0)}).withDefaults()}
	fc := &fakeConn{data: append(zmqtest.ZMTPPeerHello(), stream...), chunk: chunk}
	c := newConn(s, fc)
	err := c.run()
	var end syscall.Errno
	switch {
	case errors.Is(err, io.EOF):
		end = syscall.EPIPE
	case errors.Is(err, ErrTooLarge):
		end = syscall.EMSGSIZE
	case errors.Is(err, ErrTooManyFrames):
		end = syscall.E2BIG
	case errors.Is(err, ErrProtocol):
		end = syscall.EPROTO
	default:
		t.Fatalf("the connection ended with %v, which the specification has no errno for", err)
	}
	return msgs, end, c
}

// The reader is internal/zmqtest.ZMTPFramesLimit, over the cases written
// for the bridge's readers, at the bridge's frame limit and the worker's,
// however the bytes arrive.
func TestReaderIsTheSpecification(t *testing.T) {
	cases := append([][]byte{}, zmqtest.ZMTPCases...)
	// Requests: an envelope and six frames, and one frame too many.
	cases = append(cases,
		zmqtest.Message([]byte("id"), nil, []byte("MZMQ/1"), []byte("GET"), []byte("/"), nil, []byte("request-id: 1\r\n"), []byte("body")),
		bytes.Repeat([]byte{1, 0}, 16))
	for _, limits := range []struct {
		size   int64
		frames int
	}{{100, zmqtest.ZMTPMaxFrames}, {1 << 30, zmqtest.ZMTPMaxFrames}, {100, defaultMaxFrames}, {1 << 30, defaultMaxFrames}} {
		for i, data := range cases {
			want, wantEnd := zmqtest.ZMTPFramesLimit(data, limits.size, limits.frames)
			for _, chunk := range []int{1, 3, 1 << 20} {
				got, end, _ := readAll(t, data, chunk, limits.size, limits.frames)
				if end != wantEnd || len(got) != len(want) || (len(want) > 0 && !reflect.DeepEqual(got, want)) {
					t.Errorf("case %d, limits %+v, chunk %d: got %q, %v; the specification says %q, %v",
						i, limits, chunk, got, end, want, wantEnd)
				}
			}
		}
	}
}

// A frame's claimed size never sizes the buffer: a header claiming 1 TiB
// and a few bytes after it leave the buffer as it started.
func TestReaderBufferGrowsWithBytesReceived(t *testing.T) {
	claim := []byte{2, 0, 0, 1, 0, 0, 0, 0, 0, 'x', 'y'}
	_, end, c := readAll(t, claim, 1, 1<<41, defaultMaxFrames)
	if end != syscall.EPIPE || len(c.buf) != readStart {
		t.Fatalf("a 1 TiB claim ended with %v and a buffer of %d bytes; want EPIPE and %d", end, len(c.buf), readStart)
	}
	// 1 MiB that arrives grows it to hold it, and no further.
	big := zmqtest.Message(make([]byte, 1<<20))
	msgs, _, c := readAll(t, big, 64<<10, 1<<30, defaultMaxFrames)
	if len(msgs) != 1 || len(msgs[0][0]) != 1<<20 || len(c.buf) > 4<<20 {
		t.Fatalf("1 MiB message: %d messages, buffer %d bytes", len(msgs), len(c.buf))
	}
}

// A PING gets a PONG with its context, after the server's greeting and
// READY.
func TestReaderAnswersPing(t *testing.T) {
	ping := []byte{4, 9, 4, 'P', 'I', 'N', 'G', 0, 10, 'h', 'i'}
	_, end, c := readAll(t, ping, 1<<20, 1<<20, defaultMaxFrames)
	fc := c.nc.(*fakeConn)
	want := append(append(append([]byte{}, greeting...), ready...), 4, 7, 4, 'P', 'O', 'N', 'G', 'h', 'i')
	if end != syscall.EPIPE || !bytes.Equal(fc.written.Bytes(), want) {
		t.Fatalf("wrote %q (end %v); want %q", fc.written.Bytes(), end, want)
	}
}

func FuzzReader(f *testing.F) {
	for _, c := range zmqtest.ZMTPCases {
		f.Add(c, uint8(1), uint16(100), uint8(5))
		f.Add(c, uint8(7), uint16(0), uint8(16))
	}
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8, limit uint16, frames uint8) {
		size := max(int64(limit), zmqtest.ZMTPPeerReadySize) // below it the handshake fails, as libzmq's does
		if limit == 0 {
			size = 1 << 30
		}
		maxFrames := max(int(frames%32), 1)
		want, wantEnd := zmqtest.ZMTPFramesLimit(data, size, maxFrames)
		got, end, c := readAll(t, data, max(int(chunk), 1), size, maxFrames)
		if end != wantEnd || len(got) != len(want) || (len(want) > 0 && !reflect.DeepEqual(got, want)) {
			t.Fatalf("got %q, %v; the specification says %q, %v", got, end, want, wantEnd)
		}
		if len(c.buf) > 2*max(len(data), readStart) {
			t.Fatalf("the buffer grew to %d bytes for %d received", len(c.buf), len(data))
		}
	})
}

// A connection's memory grows with what its front sends, not with the
// limits: a large MaxFrames costs nothing until frames arrive.
func TestReaderMemoryIsNotSizedByMaxFrames(t *testing.T) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	msgs, _, _ := readAll(t, zmqtest.Message([]byte("a"), []byte("b")), 1<<20, 1<<20, 1<<22)
	runtime.ReadMemStats(&after)
	if len(msgs) != 1 {
		t.Fatalf("%d messages; want 1", len(msgs))
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Fatalf("serving a 2-frame message with MaxFrames 1<<22 allocated %d bytes", grew)
	}
}

// greetingRefused is the rule for a whole 64-byte greeting, the
// specification badGreeting keeps byte by byte: ZMTP's signature, major
// version 3 or more, the NULL mechanism.
func greetingRefused(g []byte) bool {
	return g[0] != 0xff || g[9]&1 == 0 || g[10] < 3 || string(g[12:32]) != string(greeting[12:32])
}

// badGreeting refuses a greeting as its bytes come, and refuses exactly
// what the whole-greeting rule refuses: no prefix of a greeting the rule
// takes is refused, and the whole of one it refuses is.
func FuzzGreeting(f *testing.F) {
	hello := zmqtest.ZMTPPeerHello()[:64]
	f.Add(hello)
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n" + strings.Repeat("x", 40)))
	f.Add(append([]byte("\xff\x00\x00\x00\x00\x00\x00\x00\x00\x7f\x01\x05"), make([]byte, 52)...))
	f.Fuzz(func(t *testing.T, g []byte) {
		if len(g) < 64 {
			g = append(g, hello[len(g):]...)
		}
		g = g[:64]
		refused := greetingRefused(g)
		for k := 1; k <= 64; k++ {
			if err := badGreeting(g[:k]); err != nil && !refused {
				t.Fatalf("%q: refused after %d bytes (%v), the whole greeting is fine", g, k, err)
			}
		}
		if refused && badGreeting(g) == nil {
			t.Fatalf("%q: the whole greeting breaks the rule and is taken", g)
		}
	})
}
