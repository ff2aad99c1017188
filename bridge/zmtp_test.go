package bridge

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// dialZMTP makes one ZMTP connection to endpoint, of the kind shared
// sessions are made of, for tests of the connection itself.
func dialZMTP(t *testing.T, endpoint string, opts DialOptions) *zmtpConn {
	t.Helper()
	if opts.ConnectTimeout == 0 {
		opts.ConnectTimeout = 2 * time.Second
	}
	c := newZMTPConn(endpoint, opts)
	if err := c.connect(opts.ConnectTimeout); err != nil {
		t.Fatalf("dial %s: %v", endpoint, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Send writes frames as one message, as a session's writer would.
func (c *zmtpConn) Send(frames [][]byte, timeout time.Duration) error {
	if c.curve != nil {
		c.nc.SetWriteDeadline(time.Now().Add(max(timeout, time.Millisecond)))
		_, err := c.nc.Write(c.appendFrames(nil, frames))
		return err
	}
	var hdr []byte
	var out net.Buffers
	return writeMessage(c.nc, &hdr, &out, frames, timeout)
}

func boundRouter(t *testing.T, endpoint string, setup func(*zmq.Socket)) (*zmq.Socket, string) {
	t.Helper()
	s, _ := zmq.NewSocket(zmq.ROUTER)
	s.SetLinger(0)
	s.SetRcvtimeo(2 * time.Second)
	if setup != nil {
		setup(s)
	}
	if err := s.Bind(endpoint); err != nil {
		t.Fatal(err)
	}
	ep, _ := s.GetLastEndpoint()
	return s, ep
}

// The Go ZMTP connection talks to libzmq ROUTER and REP workers over tcp://
// and ipc://, with frames on both sides of the short/long boundary.
func TestZMTPTransportWithLibzmq(t *testing.T) {
	long := bytes.Repeat([]byte("0123456789abcdef"), 70000/16)
	frames := [][]byte{[]byte("id"), {}, bytes.Repeat([]byte("y"), 255), bytes.Repeat([]byte("z"), 256), long}
	echo := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) { reply(msg) })
	c := dialZMTP(t, echo, DialOptions{})
	for range 3 {
		if err := c.Send(frames, time.Second); err != nil {
			t.Fatal(err)
		}
		got, err := c.Recv(2 * time.Second)
		if err != nil || len(got) != len(frames) || !bytes.Equal(got[4], long) || len(got[2]) != 255 || len(got[1]) != 0 {
			t.Fatalf("echo: %d frames, %v", len(got), err)
		}
	}
	if _, err := c.Recv(0); err != ErrTimeout {
		t.Fatalf("nothing more: %v, want ErrTimeout", err)
	}
	rep := zmqtest.REP(t, func(req [][]byte) [][]byte { return [][]byte{[]byte("200"), req[len(req)-1]} })
	r := dialZMTP(t, rep, DialOptions{})
	r.Send([][]byte{[]byte("id"), nil, []byte("MZMQ/1"), long}, time.Second)
	if got, err := r.Recv(2 * time.Second); err != nil || len(got) != 4 || string(got[0]) != "id" || !bytes.Equal(got[3], long) {
		t.Fatalf("REP: %d frames, %v", len(got), err)
	}
	dir, _ := os.MkdirTemp("", "mzt")
	defer os.RemoveAll(dir)
	s, ep := boundRouter(t, "ipc://"+filepath.Join(dir, "w.sock"), nil)
	defer s.Close()
	i := dialZMTP(t, ep, DialOptions{})
	i.Send([][]byte{[]byte("hi")}, time.Second)
	if msg, err := s.RecvMessageBytes(0); err != nil || string(msg[1]) != "hi" {
		t.Fatalf("ipc ROUTER got %q, %v", msg, err)
	}
	// The abstract namespace, spelled "@name" by libzmq.
	a, aep := boundRouter(t, fmt.Sprintf("ipc://@mzt-%d", os.Getpid()), nil)
	defer a.Close()
	ai := dialZMTP(t, aep, DialOptions{})
	ai.Send([][]byte{[]byte("abstract")}, time.Second)
	if msg, err := a.RecvMessageBytes(0); err != nil || string(msg[1]) != "abstract" {
		t.Fatalf("abstract ipc ROUTER got %q, %v", msg, err)
	}
}

func TestZMTPTransportFailures(t *testing.T) {
	// A worker closing with a request in flight: ErrWorkerLost.
	s, ep := boundRouter(t, "tcp://127.0.0.1:*", nil)
	c := dialZMTP(t, ep, DialOptions{})
	c.Send([][]byte{[]byte("x")}, time.Second)
	s.RecvMessageBytes(0)
	s.Close()
	if _, err := c.Recv(2 * time.Second); !errors.Is(err, ErrWorkerLost) {
		t.Errorf("worker closed: %v, want ErrWorkerLost", err)
	}
	nobody, http, pub, zap := zmqtest.ZMTPUnreachable(t)
	start := time.Now()
	if _, err := (&ZMTP{}).Dial(nobody, DialOptions{ConnectTimeout: 300 * time.Millisecond}); !errors.Is(err, ErrNoWorker) {
		t.Errorf("nobody listening: %v, want ErrNoWorker", err)
	}
	if time.Since(start) < 200*time.Millisecond {
		t.Errorf("gave up after %v, before the 300 ms connect wait", time.Since(start))
	}
	for _, tc := range []struct {
		what, endpoint string
		want           error
	}{{"HTTP server", http, errZMTPProtocol}, {"PUB socket", pub, ErrNoWorker}, {"ZAP refusal", zap, errZMTPRefused}} {
		if _, err := (&ZMTP{}).Dial(tc.endpoint, DialOptions{ConnectTimeout: time.Second}); !errors.Is(err, ErrNoWorker) || !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want ErrNoWorker and %v", tc.what, err, tc.want)
		}
	}
	// A frame over the size limit: ErrProtocol, and the connection is done.
	big := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) { reply([][]byte{msg[0], make([]byte, 5000)}) })
	b := dialZMTP(t, big, DialOptions{MaxMsgSize: 1000})
	b.Send([][]byte{[]byte("x")}, time.Second)
	if _, err := b.Recv(2 * time.Second); !errors.Is(err, ErrProtocol) {
		t.Errorf("5000-byte frame, limit 1000: %v, want ErrProtocol", err)
	}
	if _, err := b.Recv(0); !errors.Is(err, ErrProtocol) {
		t.Errorf("after: %v, want the connection kept failed", err)
	}
	// Endpoints ParseEndpoint refuses are refused here too.
	if _, err := (&ZMTP{}).Dial("inproc://x", DialOptions{}); !errors.Is(err, ErrConfig) {
		t.Errorf("inproc: %v, want ErrConfig", err)
	}
}

// peerConn is zmqtest.PeerSocket as a net.Conn; the peer is stopped when
// the test ends.
func peerConn(t *testing.T, data []byte, chunk int) net.Conn {
	t.Helper()
	fd, done, err := zmqtest.PeerSocket(data, chunk)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(done)
	f := os.NewFile(uintptr(fd), "zmtp")
	defer f.Close()
	nc, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	return nc
}

// zmtpRead feeds data (a peer's bytes from its greeting on) to a Go ZMTP
// connection over a socket pair, chunk bytes at a time (all at once when
// chunk <= 0), and reads messages until the stream ends. What the
// connection writes (PONGs) is read and dropped.
func zmtpRead(t *testing.T, data []byte, maxMsgSize int64, chunk int) (msgs [][][]byte, end error) {
	nc := peerConn(t, data, chunk)
	c := &zmtpConn{maxMsgSize: maxMsgSize}
	if err := c.attach(nc, time.Now().Add(5*time.Second)); err != nil {
		nc.Close()
		return nil, err
	}
	defer c.Close()
	for {
		msg, err := c.Recv(5 * time.Second)
		if err != nil {
			return msgs, err
		}
		msgs = append(msgs, msg)
	}
}

func checkZMTPRead(t *testing.T, data []byte, maxMsgSize int64, chunk int) {
	t.Helper()
	got, end := zmtpRead(t, append(zmqtest.ZMTPPeerHello(), data...), maxMsgSize, chunk)
	if maxMsgSize > 0 && maxMsgSize < zmqtest.ZMTPPeerReadySize {
		if !errors.Is(end, ErrReplyTooLarge) || len(got) > 0 {
			t.Fatalf("limit %d, below the peer's READY: %v, want the handshake refused", maxMsgSize, end)
		}
		return
	}
	want, wantEnd := zmqtest.ZMTPFrames(data, maxMsgSize)
	wantErr := map[syscall.Errno]error{syscall.EPIPE: ErrWorkerLost, syscall.EMSGSIZE: ErrReplyTooLarge,
		syscall.E2BIG: ErrReplyFrames, syscall.EPROTO: errZMTPBroken}[wantEnd]
	if !errors.Is(end, wantErr) || wantEnd != syscall.EPIPE && !errors.Is(end, ErrProtocol) || len(got) != len(want) {
		t.Fatalf("%q (limit %d, chunks of %d): %d messages ending %v, want %d ending %v", data, maxMsgSize, chunk, len(got), end, len(want), wantEnd)
	}
	for i := range want {
		if len(got[i]) != len(want[i]) {
			t.Fatalf("%q: message %d has %d frames, want %d", data, i, len(got[i]), len(want[i]))
		}
		for j := range want[i] {
			if !bytes.Equal(got[i][j], want[i][j]) {
				t.Fatalf("%q: message %d frame %d is %q, want %q", data, i, j, got[i][j], want[i][j])
			}
		}
	}
}

// The reader's constants are the specification's.
func TestZMTPLimitsAreTheSpecification(t *testing.T) {
	if zmtpMaxFrames != zmqtest.ZMTPMaxFrames || zmtpFrameCost != zmqtest.ZMTPFrameCost {
		t.Fatalf("bridge: %d frames, %d bytes a frame; internal/zmqtest: %d, %d", zmtpMaxFrames, zmtpFrameCost, zmqtest.ZMTPMaxFrames, zmqtest.ZMTPFrameCost)
	}
}

func TestZMTPTransportFrames(t *testing.T) {
	for _, data := range zmqtest.ZMTPCases {
		for _, limit := range []int64{0, 100, 150, 1000} {
			checkZMTPRead(t, data, limit, 0)
			checkZMTPRead(t, data, limit, 1)
		}
	}
}

// FuzzZMTPTransport feeds the reader arbitrary bytes through a real socket
// pair, all at once or trickled in small pieces, with small limits, and
// checks that it reads what the specification reads.
func FuzzZMTPTransport(f *testing.F) {
	for _, data := range zmqtest.ZMTPCases {
		f.Add(data, int64(0), uint8(0))
		f.Add(data, int64(120), uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, maxMsgSize int64, chunk uint8) {
		if len(data) > 1<<16 {
			return
		}
		maxMsgSize &= 0xfff // small limits, which the data can reach
		checkZMTPRead(t, data, maxMsgSize, int(chunk))
	})
}

// A frame header's claim costs nothing until its bytes arrive, with or
// without a size limit: the buffer grows with what was received.
func TestZMTPTransportBufferGrowsWithBytesReceived(t *testing.T) {
	claim := append(zmqtest.FrameHeader(0, 1<<40-1), make([]byte, 200)...)
	for _, limit := range []int64{0, 1 << 50} {
		nc := peerConn(t, append(zmqtest.ZMTPPeerHello(), claim...), 0)
		c := &zmtpConn{maxMsgSize: limit}
		if err := c.attach(nc, time.Now().Add(2*time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Recv(100 * time.Millisecond); err != ErrTimeout && !errors.Is(err, ErrWorkerLost) {
			t.Errorf("limit %d: %v, want a timeout or the close", limit, err)
		}
		if len(c.buf) > 8192 {
			t.Errorf("limit %d: a 1 TiB claim and 200 bytes grew the buffer to %d bytes", limit, len(c.buf))
		}
		c.Close()
	}
}

// The Go transport connects from the source addresses ParseEndpoint
// accepts (the same ones zmtp.c and configtest accept).
func TestZMTPTransportSourceAddress(t *testing.T) {
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) { reply(msg) })
	for src, ok := range zmqtest.SourceAddresses {
		full := "tcp://" + src + ";" + strings.TrimPrefix(ep, "tcp://")
		if got := ParseEndpoint(full) == nil; got != ok {
			t.Errorf("%s: ParseEndpoint: %v, want %v", full, got, ok)
		}
		if !ok {
			continue
		}
		c := dialZMTP(t, full, DialOptions{})
		if err := c.Send([][]byte{[]byte("id"), nil, []byte(src)}, time.Second); err != nil {
			t.Fatalf("%s: %v", full, err)
		}
		if got, err := c.Recv(2 * time.Second); err != nil || string(got[2]) != src {
			t.Errorf("%s: echo %q %v", full, got, err)
		}
	}
	for _, src := range []string{"[::1]:0", "[::1]", "[::1]:*"} {
		if _, err := sourceAddr(src); err != nil {
			t.Errorf("%s: %v", src, err)
		}
	}
}

// The handshake vectors both readers run (internal/zmqtest.ZMTPHandshakes).
func TestZMTPTransportHandshakes(t *testing.T) {
	errno := func(err error) syscall.Errno {
		switch {
		case err == nil:
			return 0
		case errors.Is(err, errZMTPRefused):
			return syscall.EACCES
		case errors.Is(err, errZMTPProtocol):
			return syscall.EPROTO
		case errors.Is(err, ErrReplyTooLarge):
			return syscall.EMSGSIZE
		case errors.Is(err, io.EOF):
			return syscall.EPIPE
		}
		t.Fatalf("an error no vector names: %v", err)
		return 0
	}
	for _, h := range zmqtest.ZMTPHandshakes {
		nc := peerConn(t, h.Peer, 0)
		c := &zmtpConn{maxMsgSize: h.Limit}
		if got := errno(c.attach(nc, time.Now().Add(2*time.Second))); got != h.Want {
			t.Errorf("%s: %v, want %v", h.Name, got, h.Want)
		}
		nc.Close()
	}
}

// A worker that sends commands and never a reply does not grow the buffer:
// bytes done with make room before it doubles.
func TestZMTPTransportCommandFloodKeepsTheBufferSmall(t *testing.T) {
	flood := bytes.Repeat([]byte{4, 1, 0}, 4<<20/3) // a valid, ignored one-byte command
	nc := peerConn(t, append(zmqtest.ZMTPPeerHello(), flood...), 0)
	c := &zmtpConn{maxMsgSize: 1000}
	if err := c.attach(nc, time.Now().Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Recv(5 * time.Second); !errors.Is(err, ErrWorkerLost) {
		t.Fatalf("commands, then the close: %v, want ErrWorkerLost", err)
	}
	if len(c.buf) > 8192 {
		t.Errorf("4 MiB of commands grew the buffer to %d bytes", len(c.buf))
	}
}

// A connection lets go of the buffer a large reply grew once the reply is
// out: a long-lived shared connection does not keep its largest reply's size.
func TestZMTPTransportShrinksAfterALargeReply(t *testing.T) {
	big := zmqtest.Message([]byte("id"), nil, make([]byte, 3<<20))
	small := zmqtest.Message([]byte("id"), nil, []byte("ok"))
	nc := peerConn(t, append(append(zmqtest.ZMTPPeerHello(), big...), small...), 0)
	c := &zmtpConn{}
	if err := c.attach(nc, time.Now().Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, want := range []int{3 << 20, 2} {
		msg, err := c.Recv(5 * time.Second)
		if err != nil || len(msg) != 3 || len(msg[2]) != want {
			t.Fatalf("reply of %d bytes: %d frames, %v", want, len(msg), err)
		}
	}
	if len(c.buf) > zmtpKeep {
		t.Errorf("after a 3 MiB reply and a small one the buffer is %d bytes", len(c.buf))
	}
}

// Parsing is incremental: however the bytes arrive, the reader looks at
// each frame header once, and once more per read that ends inside a frame,
// never again at the frames of the message so far.
func TestZMTPTransportParsesEachHeaderOnce(t *testing.T) {
	const pings = 2000
	data := zmqtest.Frame(1, []byte("id"))
	for range pings {
		data = append(data, zmqtest.Frame(4, []byte("\x04PING\x00\x00"))...)
	}
	data = append(data, zmqtest.Message(nil, []byte("ok"))...)
	for _, chunk := range []int{7, 4096} {
		all := append(zmqtest.ZMTPPeerHello(), data...)
		nc := peerConn(t, all, chunk)
		c := &zmtpConn{}
		if err := c.attach(nc, time.Now().Add(2*time.Second)); err != nil {
			t.Fatal(err)
		}
		msg, err := c.Recv(5 * time.Second)
		frames, reads := int64(pings+3+1), int64((len(all)+chunk-1)/chunk)
		if err != nil || len(msg) != 3 || c.headers > frames+reads+2 {
			t.Errorf("chunks of %d: %d frames, %v; %d header looks for %d frames in at most %d reads", chunk, len(msg), err, c.headers, frames, reads)
		}
		c.Close()
	}
}
