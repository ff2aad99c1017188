//go:build modzmq_test

package relay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/internal/zmqtest"
)

// echoWorker answers every message with its own frames after the
// envelope, so a test sees what arrived.
func echoRouter(t *testing.T) string {
	return zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) { reply(msg) })
}

func dialT(t *testing.T, endpoint string, maxMsgSize int64) *zmtpTest {
	t.Helper()
	c, err := zmtpDial(endpoint, 2000, maxMsgSize)
	if err != nil {
		t.Fatalf("zmtp connect %s: %v", endpoint, err)
	}
	t.Cleanup(c.close)
	return c
}

func roundTrip(t *testing.T, c *zmtpTest, frames ...[]byte) [][]byte {
	t.Helper()
	if err := c.send(frames...); err != 0 {
		t.Fatalf("send: %v", err)
	}
	msg, rc := c.recv(2000)
	if rc != 1 {
		t.Fatalf("recv: code %d", rc)
	}
	return msg
}

// Messages sent together (zmtp_send_batch, as the C step sends a client's
// WebSocket messages: eight frames each, short and long) go out in one
// write and reach a libzmq ROUTER as the separate messages they are, in
// order; a batch of no messages, of more than ZMTP_MAX_BATCH or of frames
// past ZMTP_MAX_FRAMES is refused, and the connection goes on.
func TestZMTPSendBatch(t *testing.T) {
	// Each message comes back as [id, "", its frames, each length-prefixed]:
	// the connection reads at most ZMTP_MAX_RECV_FRAMES frames.
	pack := func(frames [][]byte) []byte {
		var b []byte
		for _, f := range frames {
			b = append(binary.BigEndian.AppendUint32(b, uint32(len(f))), f...)
		}
		return b
	}
	c := dialT(t, zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		reply([][]byte{msg[0], msg[1], msg[2], pack(msg[1:])})
	}), 0)
	most := zmtpMaxBatch()
	var msgs [][][]byte
	for i := range most + 4 {
		body := bytes.Repeat([]byte{byte(i)}, i*30+(i%2)*300) // every other one a long frame
		msgs = append(msgs, [][]byte{[]byte("id"), {}, []byte("MZMQ/1"), []byte("@binary"), {}, {},
			fmt.Appendf(nil, "request-id: %d\r\n", i), body})
	}
	before := c.writes()
	if err := c.sendBatch(msgs[:most]...); err != 0 {
		t.Fatalf("a batch of %d: %v", most, err)
	}
	if err := c.sendBatch(msgs[most:]...); err != 0 {
		t.Fatalf("a batch of 4: %v", err)
	}
	if w := c.writes() - before; w != 2 {
		t.Errorf("two batches took %d writes; want 2", w)
	}
	for i, want := range msgs {
		got, rc := c.recv(2000)
		if rc != 1 || len(got) != 3 || !bytes.Equal(got[2], pack(want)) {
			t.Fatalf("message %d: code %d, %d frames; not the frames sent", i, rc, len(got))
		}
	}
	for _, tc := range []struct{ nmsg, n int }{{0, 4}, {most + 1, 4}, {1, 0}, {1, 9}} {
		if err := c.sendBatchOf(tc.nmsg, tc.n); err != syscall.EINVAL {
			t.Errorf("a batch of %d messages of %d frames: %v, want EINVAL", tc.nmsg, tc.n, err)
		}
	}
	after := [][]byte{[]byte("id"), {}, []byte("after")}
	if got := roundTrip(t, c, after...); !bytes.Equal(got[2], pack(after)) {
		t.Errorf("after the refused batches: %q", got)
	}
}

// A libzmq ROUTER and REP take the connection for a DEALER's, in both
// directions, with short and long frames.
func TestZMTPWithLibzmq(t *testing.T) {
	long := bytes.Repeat([]byte("0123456789abcdef"), 70000/16)
	frames := [][]byte{[]byte("id"), {}, bytes.Repeat([]byte("y"), 255), bytes.Repeat([]byte("z"), 256), long}
	t.Run("ROUTER", func(t *testing.T) {
		c := dialT(t, echoRouter(t), 0)
		for range 3 {
			if got := roundTrip(t, c, frames...); len(got) != len(frames) || !bytes.Equal(got[4], long) || len(got[3]) != 256 || len(got[1]) != 0 {
				t.Fatalf("echo: %d frames", len(got))
			}
		}
	})
	t.Run("REP", func(t *testing.T) {
		ep := zmqtest.REP(t, func(req [][]byte) [][]byte { return [][]byte{[]byte("200"), req[len(req)-1]} })
		c := dialT(t, ep, 0)
		got := roundTrip(t, c, []byte("id"), nil, []byte("MZMQ/1"), long)
		// REP strips the envelope up to the empty frame and puts it back.
		if len(got) != 4 || string(got[0]) != "id" || len(got[1]) != 0 || string(got[2]) != "200" || !bytes.Equal(got[3], long) {
			t.Fatalf("REP reply: %q", got[:min(len(got), 3)])
		}
	})
	t.Run("ipc", func(t *testing.T) {
		ep := "ipc://" + filepath.Join(t.TempDir(), "w.sock")
		s, _ := zmq.NewSocket(zmq.ROUTER)
		defer s.Close()
		s.SetLinger(0)
		if err := s.Bind(ep); err != nil {
			t.Fatal(err)
		}
		c := dialT(t, ep, 0)
		if err := c.send([]byte("hi")); err != 0 {
			t.Fatal(err)
		}
		msg, err := s.RecvMessageBytes(0)
		if err != nil || len(msg) != 2 || string(msg[1]) != "hi" {
			t.Fatalf("ROUTER got %q, %v", msg, err)
		}
		s.SendMessage(msg[0], "there")
		if msg, rc := c.recv(2000); rc != 1 || string(msg[0]) != "there" {
			t.Fatalf("reply %q, code %d", msg, rc)
		}
	})
	t.Run("abstract ipc", func(t *testing.T) {
		ep := fmt.Sprintf("ipc://@mzc-%d", os.Getpid()) // libzmq's spelling of the abstract namespace
		s, _ := zmq.NewSocket(zmq.ROUTER)
		defer s.Close()
		s.SetLinger(0)
		s.SetRcvtimeo(2 * time.Second)
		if err := s.Bind(ep); err != nil {
			t.Fatal(err)
		}
		c := dialT(t, ep, 0)
		if err := c.send([]byte("abstract")); err != 0 {
			t.Fatal(err)
		}
		if msg, err := s.RecvMessageBytes(0); err != nil || len(msg) != 2 || string(msg[1]) != "abstract" {
			t.Fatalf("ROUTER got %q, %v", msg, err)
		}
	})
}

// A worker that heartbeats gets its PINGs answered whenever the connection
// is read, and so keeps the connection open.
func TestZMTPAnswersPings(t *testing.T) {
	s, _ := zmq.NewSocket(zmq.ROUTER)
	defer s.Close()
	s.SetLinger(0)
	s.SetHeartbeatIvl(50 * time.Millisecond)
	s.SetHeartbeatTimeout(200 * time.Millisecond)
	if err := s.Bind("tcp://127.0.0.1:*"); err != nil {
		t.Fatal(err)
	}
	ep, _ := s.GetLastEndpoint()
	c := dialT(t, ep, 0)
	// Four heartbeat timeouts with nothing but PINGs coming in.
	if _, rc := c.recv(800); rc != 0 {
		t.Fatalf("waiting through PINGs: code %d, want a timeout (0)", rc)
	}
	if err := c.check(); err != 0 {
		t.Fatalf("after the PINGs: %v", err)
	}
	if err := c.send([]byte("still here")); err != 0 {
		t.Fatal(err)
	}
	s.SetRcvtimeo(2 * time.Second)
	if msg, err := s.RecvMessageBytes(0); err != nil || string(msg[1]) != "still here" {
		t.Fatalf("worker got %q, %v", msg, err)
	}
	// A connection nobody reads answers nothing, and the worker drops it:
	// what check sees before a pooled connection is reused.
	idle := dialT(t, ep, 0)
	time.Sleep(800 * time.Millisecond)
	if err := idle.check(); err != syscall.EPIPE && err != syscall.ECONNRESET {
		t.Fatalf("unread connection after four heartbeat timeouts: %v, want it dropped", err)
	}
}

// A worker that goes away is noticed by check (idle) and recv (waiting).
func TestZMTPNoticesAClosedPeer(t *testing.T) {
	s, _ := zmq.NewSocket(zmq.ROUTER)
	s.SetLinger(0)
	if err := s.Bind("tcp://127.0.0.1:*"); err != nil {
		t.Fatal(err)
	}
	ep, _ := s.GetLastEndpoint()
	idle, waiting := dialT(t, ep, 0), dialT(t, ep, 0)
	if err := idle.check(); err != 0 {
		t.Fatalf("sound connection: %v", err)
	}
	s.Close()
	if _, rc := waiting.recv(2000); rc != -int(syscall.EPIPE) && rc != -int(syscall.ECONNRESET) {
		t.Fatalf("recv from a closed worker: %d, want -EPIPE or -ECONNRESET", rc)
	}
	deadline := time.Now().Add(2 * time.Second)
	for idle.check() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := idle.check(); err != syscall.EPIPE && err != syscall.ECONNRESET {
		t.Fatalf("check of a closed worker's connection: %v", err)
	}
}

// A worker restarted on the same endpoint is reached again by redial, in
// place (the connection's pointer, held by pools, stays the same).
func TestZMTPRedial(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	bind := func() *zmq.Socket {
		s, _ := zmq.NewSocket(zmq.ROUTER)
		s.SetLinger(0)
		s.SetRcvtimeo(2 * time.Second)
		if err := s.Bind("tcp://127.0.0.1:" + port); err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := bind()
	c := dialT(t, "tcp://127.0.0.1:"+port, 0)
	s.Close()
	deadline := time.Now().Add(2 * time.Second)
	for c.check() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := c.check(); err == 0 {
		t.Fatal("the worker's close was not noticed")
	}
	s = bind()
	defer s.Close()
	if err := c.redial(2000); err != 0 {
		t.Fatalf("redial: %v", err)
	}
	if err := c.send([]byte("again")); err != 0 {
		t.Fatal(err)
	}
	if msg, err := s.RecvMessageBytes(0); err != nil || string(msg[1]) != "again" {
		t.Fatalf("restarted worker got %q, %v", msg, err)
	}
}

func TestZMTPConnectFailures(t *testing.T) {
	nobody, http, pub, zap := zmqtest.ZMTPUnreachable(t)
	start := time.Now()
	if _, err := zmtpDial(nobody, 300, 0); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("nobody listening: %v, want ECONNREFUSED", err)
	}
	if time.Since(start) < 200*time.Millisecond {
		t.Errorf("gave up after %v, before the 300 ms connect timeout", time.Since(start))
	}
	for _, tc := range []struct {
		what, endpoint string
		want           syscall.Errno
	}{{"HTTP server", http, syscall.EPROTO}, {"PUB socket", pub, 0}, {"ZAP refusal", zap, syscall.EACCES}} {
		// A PUB socket hangs up after the handshake (EPIPE, tried again
		// until the timeout): any error will do.
		if _, err := zmtpDial(tc.endpoint, 1000, 0); err == nil || tc.want != 0 && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.what, err, tc.want)
		}
	}
	for _, ep := range []string{"inproc://x", "udp://127.0.0.1:5"} {
		if _, err := zmtpDial(ep, 100, 0); !errors.Is(err, syscall.EPROTONOSUPPORT) {
			t.Errorf("%s: %v, want EPROTONOSUPPORT", ep, err)
		}
	}
}

// A frame over the size limit is refused from its header, before its body
// is read.
func TestZMTPSizeLimit(t *testing.T) {
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		reply([][]byte{msg[0], make([]byte, 5000)})
	})
	c := dialT(t, ep, 1000)
	if err := c.send([]byte("x")); err != 0 {
		t.Fatal(err)
	}
	if _, rc := c.recv(2000); rc != -int(syscall.EMSGSIZE) {
		t.Fatalf("5000-byte frame, limit 1000: code %d, want -EMSGSIZE", rc)
	}
	if err := c.check(); err != syscall.EMSGSIZE {
		t.Fatalf("the connection after: %v, want it kept unusable (EMSGSIZE)", err)
	}
}

func checkZMTPStream(t *testing.T, data []byte, maxMsgSize int64, chunk int) {
	t.Helper()
	got, end := zmtpStream(append(zmqtest.ZMTPPeerHello(), data...), maxMsgSize, chunk)
	if maxMsgSize > 0 && maxMsgSize < zmqtest.ZMTPPeerReadySize {
		if end != syscall.EMSGSIZE || len(got) > 0 {
			t.Fatalf("limit %d, below the peer's READY: %v, want the handshake refused", maxMsgSize, end)
		}
		return
	}
	want, wantEnd := zmqtest.ZMTPFrames(data, maxMsgSize)
	if end != wantEnd || len(got) != len(want) {
		t.Fatalf("%q (limit %d, chunks of %d): %d messages ending %v, want %d ending %v", data, maxMsgSize, chunk, len(got), end, len(want), wantEnd)
	}
	for i := range want {
		if len(got[i]) != len(want[i]) {
			t.Fatalf("%q: message %d has %d frames, want %d", data, i, len(got[i]), len(want[i]))
		}
		for j := range got[i] {
			if !bytes.Equal(got[i][j], want[i][j]) {
				t.Fatalf("%q: message %d frame %d is %q, want %q", data, i, j, got[i][j], want[i][j])
			}
		}
	}
}

// The reader's constants are the specification's.
func TestZMTPLimitsAreTheSpecification(t *testing.T) {
	if frames, cost := zmtpLimits(); frames != zmqtest.ZMTPMaxFrames || cost != zmqtest.ZMTPFrameCost {
		t.Fatalf("zmtp.h: %d frames, %d bytes a frame; internal/zmqtest: %d, %d", frames, cost, zmqtest.ZMTPMaxFrames, zmqtest.ZMTPFrameCost)
	}
}

func TestZMTPFrames(t *testing.T) {
	for _, data := range zmqtest.ZMTPCases {
		for _, limit := range []int64{0, 100, 150, 1000} {
			checkZMTPStream(t, data, limit, 0)
			checkZMTPStream(t, data, limit, 1)
		}
	}
}

// FuzzZMTPFrames feeds the reader arbitrary bytes through a real socket
// pair, all at once or trickled in small pieces, with small limits, and
// checks that it reads what the specification reads.
func FuzzZMTPFrames(f *testing.F) {
	for _, data := range zmqtest.ZMTPCases {
		f.Add(data, int64(0), uint8(0), true)
		f.Add(data, int64(120), uint8(3), true)
	}
	f.Add([]byte("\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f\x03\x01NULL"), int64(0), uint8(0), false)
	f.Fuzz(func(t *testing.T, data []byte, maxMsgSize int64, chunk uint8, handshake bool) {
		if len(data) > 1<<16 {
			return
		}
		maxMsgSize &= 0xfff // small limits, which the data can reach
		if handshake {
			checkZMTPStream(t, data, maxMsgSize, int(chunk))
			return
		}
		// The handshake itself from arbitrary bytes: no crash, and no
		// message from a peer that never completed it.
		if msgs, end := zmtpStream(data, maxMsgSize, int(chunk)); len(msgs) > 0 && len(data) < 64 {
			t.Fatalf("%q: %d messages before a whole greeting (end %v)", data, len(msgs), end)
		}
	})
}

// A frame header's claim costs nothing until its bytes arrive, with or
// without a size limit: the buffer grows with what was received.
func TestZMTPBufferGrowsWithBytesReceived(t *testing.T) {
	claim := append(zmqtest.FrameHeader(0, 1<<40-1), make([]byte, 200)...)
	for _, limit := range []int64{0, 1 << 50} {
		if got := zmtpBufferAfter(append(zmqtest.ZMTPPeerHello(), claim...), limit); got < 0 || got > 8192 {
			t.Errorf("limit %d: a 1 TiB claim and 200 bytes grew the buffer to %d bytes", limit, got)
		}
	}
	// An honest large frame still arrives whole.
	big := zmqtest.Message([]byte("id"), nil, make([]byte, 3<<20))
	msgs, end := zmtpStream(append(zmqtest.ZMTPPeerHello(), big...), 0, 0)
	if len(msgs) != 1 || len(msgs[0][2]) != 3<<20 || end != syscall.EPIPE {
		t.Fatalf("a 3 MiB reply: %d messages, end %v", len(msgs), end)
	}
}

// zmtp.c connects from the source addresses bridge.ParseEndpoint accepts,
// and refuses the others.
func TestZMTPSourceAddress(t *testing.T) {
	ep := echoRouter(t)
	for src, ok := range zmqtest.SourceAddresses {
		full := "tcp://" + src + ";" + strings.TrimPrefix(ep, "tcp://")
		if got := bridge.ParseEndpoint(full) == nil; got != ok {
			t.Fatalf("%s: bridge.ParseEndpoint: %v, want %v", full, got, ok)
		}
		c, err := zmtpDial(full, 2000, 0)
		if (err == nil) != ok {
			t.Errorf("%s: connect: %v, want it to succeed: %v", full, err, ok)
		}
		if c != nil {
			if got := roundTrip(t, c, []byte("id"), nil, []byte("from "+src)); string(got[2]) != "from "+src {
				t.Errorf("%s: echo %q", full, got)
			}
			c.close()
		}
	}
}

// The handshake vectors both readers run (internal/zmqtest.ZMTPHandshakes).
func TestZMTPHandshakes(t *testing.T) {
	for _, h := range zmqtest.ZMTPHandshakes {
		if got := zmtpHandshake(h.Peer, h.Limit); got != h.Want {
			t.Errorf("%s: %v, want %v", h.Name, got, h.Want)
		}
	}
}

// A worker that sends commands and never a reply does not grow the buffer:
// bytes done with make room before it doubles.
func TestZMTPCommandFloodKeepsTheBufferSmall(t *testing.T) {
	flood := bytes.Repeat([]byte{4, 1, 0}, 4<<20/3) // a valid, ignored one-byte command
	for _, limit := range []int64{0, 1000} {
		if got := zmtpBufferAfter(append(zmqtest.ZMTPPeerHello(), flood...), limit); got < 0 || got > 8192 {
			t.Errorf("limit %d: 4 MiB of commands grew the buffer to %d bytes", limit, got)
		}
	}
}

// A PING just before the reply, from a worker that then closes: the reply
// is read though the PONG cannot be written, as libzmq reads it.
func TestZMTPReplyAfterAPingFromAClosingWorker(t *testing.T) {
	data := append(zmqtest.Frame(4, []byte("\x04PING\x00\x00")), zmqtest.Message([]byte("id"), nil, []byte("ok"))...)
	for _, chunk := range []int{0, 1} {
		msgs, end := zmtpStreamClosing(append(zmqtest.ZMTPPeerHello(), data...), chunk)
		if len(msgs) != 1 || end != syscall.EPIPE && end != syscall.ECONNRESET {
			t.Errorf("chunks of %d: %d messages ending %v, want the reply, then the close", chunk, len(msgs), end)
		}
	}
}

// zmtpPingsAmidAReply is a reply whose first frame is followed by n PINGs
// before the rest: with no size limit, all of them are one message's.
func zmtpPingsAmidAReply(n int) []byte {
	b := zmqtest.Frame(1, []byte("id"))
	for range n {
		b = append(b, zmqtest.Frame(4, []byte("\x04PING\x00\x00"))...)
	}
	return append(b, zmqtest.Message(nil, []byte("ok"))...)
}

// Parsing is incremental: however the bytes arrive, the reader looks at
// each frame header once, and once more per read that ends inside a frame,
// never again at the frames of the message so far.
func TestZMTPParsesEachHeaderOnce(t *testing.T) {
	const pings = 2000
	data := zmtpPingsAmidAReply(pings)
	for _, chunk := range []int{1, 7, 4096} {
		// The reads are the reader's own count: the kernel may hand a
		// written chunk over in more than one.
		msgs, headers, reads := zmtpHeadersParsed(append(zmqtest.ZMTPPeerHello(), data...), chunk)
		frames := uint64(pings + 3 + 1) // the message's, and the peer's READY
		if msgs != 1 || headers > frames+reads+2 {
			t.Errorf("chunks of %d: %d messages; %d header looks for %d frames in at most %d reads", chunk, msgs, headers, frames, reads)
		}
	}
}
