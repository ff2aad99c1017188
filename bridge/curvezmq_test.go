package bridge

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
	"golang.org/x/crypto/nacl/box"
)

// curveWire is a test-only ZMTP framing over a raw TCP connection: the
// greeting, then frames as bytes, so the test controls every byte the
// curveClient produces and sees every byte libzmq sends.
type curveWire struct {
	nc net.Conn
	br *bufio.Reader
}

func (w *curveWire) write(flags byte, body []byte) error {
	hdr := []byte{flags, byte(len(body))}
	if len(body) > 255 {
		hdr = binary.BigEndian.AppendUint64([]byte{flags | 0x02}, uint64(len(body)))
	}
	_, err := (&net.Buffers{hdr, body}).WriteTo(w.nc)
	return err
}

func (w *curveWire) read() (flags byte, body []byte, err error) {
	flags, err = w.br.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	var size uint64
	if flags&0x02 != 0 {
		var b [8]byte
		if _, err := io.ReadFull(w.br, b[:]); err != nil {
			return 0, nil, err
		}
		size = binary.BigEndian.Uint64(b[:])
	} else {
		b, err := w.br.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		size = uint64(b)
	}
	if size > 16<<20 {
		return 0, nil, fmt.Errorf("a %d-byte frame", size)
	}
	body = make([]byte, size)
	_, err = io.ReadFull(w.br, body)
	return flags, body, err
}

// curveDial connects to a libzmq CURVE server at addr and runs the
// handshake with k. The connection carries a deadline (wait, 20 s when 0)
// that only guards against a hang.
func curveDial(t *testing.T, addr string, k *Curve, wait time.Duration) (*curveWire, *curveClient, map[string]string, error) {
	t.Helper()
	c, err := newCurveClient(k)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if wait == 0 {
		wait = 20 * time.Second
	}
	nc.SetDeadline(time.Now().Add(wait))
	w := &curveWire{nc: nc, br: bufio.NewReader(nc)}
	if _, err := nc.Write(curveGreeting); err != nil {
		return w, c, nil, err
	}
	g := make([]byte, 64)
	if _, err := io.ReadFull(w.br, g); err != nil {
		return w, c, nil, fmt.Errorf("greeting: %w", err)
	}
	if g[0] != 0xff || g[9] != 0x7f || g[10] != 3 || string(g[12:18]) != "CURVE\x00" {
		t.Fatalf("libzmq's greeting is %q, want ZMTP 3 with CURVE", g)
	}
	if err := w.write(0x04, c.hello()); err != nil {
		return w, c, nil, err
	}
	flags, body, err := w.read()
	if err != nil {
		return w, c, nil, fmt.Errorf("reading WELCOME: %w", err)
	}
	if flags&0x04 == 0 {
		t.Fatalf("WELCOME arrived with frame flags %#x, not as a command", flags)
	}
	if err := c.welcome(body); err != nil {
		return w, c, nil, err
	}
	initiate, err := c.initiate()
	if err != nil {
		return w, c, nil, err
	}
	if err := w.write(0x04, initiate); err != nil {
		return w, c, nil, err
	}
	if _, body, err = w.read(); err != nil {
		return w, c, nil, fmt.Errorf("reading READY: %w", err)
	}
	props, err := c.ready(body)
	return w, c, props, err
}

// curveKeys returns a fresh libzmq key pair in Z85.
func curveKeys(t testing.TB) (public, secret string) {
	t.Helper()
	public, secret, err := zmq.NewCurveKeypair()
	if err != nil {
		t.Fatal(err)
	}
	return public, secret
}

// curveEchoRouter starts a libzmq ROUTER that is a CURVE server with
// secret and sends every message back as it came; it returns its host:port.
// The router stops when the test ends.
func curveEchoRouter(t *testing.T, secret string, setup func(*zmq.Socket)) string {
	t.Helper()
	addr, stop := curveRouter(t, secret, setup)
	t.Cleanup(stop)
	return addr
}

// curveRouter is curveEchoRouter with a stop function instead of a cleanup.
func curveRouter(t *testing.T, secret string, setup func(*zmq.Socket)) (addr string, stop func()) {
	t.Helper()
	return curveServe(t, secret, setup, func(msg [][]byte) [][]byte { return msg })
}

// curveServe starts a libzmq ROUTER that is a CURVE server with secret and
// sends answer(msg) for every message msg (envelope first); it returns its
// host:port and a stop function.
func curveServe(t *testing.T, secret string, setup func(*zmq.Socket), answer func([][]byte) [][]byte) (addr string, stop func()) {
	t.Helper()
	if !zmq.HasCurve() {
		t.Fatal("libzmq has no CURVE support")
	}
	s, err := zmq.NewSocket(zmq.ROUTER)
	if err != nil {
		t.Fatal(err)
	}
	s.SetLinger(0)
	s.SetRcvtimeo(20 * time.Millisecond)
	if err := errors.Join(s.SetCurveServer(1), s.SetCurveSecretkey(secret)); err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(s)
	}
	if err := s.Bind("tcp://127.0.0.1:*"); err != nil {
		t.Fatal(err)
	}
	ep, _ := s.GetLastEndpoint()
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		defer s.Close()
		for {
			select {
			case <-quit:
				return
			default:
			}
			if msg, err := s.RecvMessageBytes(0); err == nil {
				reply := answer(msg)
				parts := make([]any, len(reply))
				for i, f := range reply {
					parts[i] = f
				}
				s.SendMessage(parts...)
			}
		}
	}()
	return strings.TrimPrefix(ep, "tcp://"), func() { close(quit); <-done }
}

// curveSend sends frames as one ZMTP message, each frame a MESSAGE command
// in a ZMTP frame with no flags (as libzmq sends them).
func curveSend(w *curveWire, c *curveClient, flags byte, frames ...[]byte) error {
	for i, f := range frames {
		fl := flags
		if i < len(frames)-1 {
			fl |= curveFlagMore
		}
		if err := w.write(0, c.seal(nil, fl, f)); err != nil {
			return err
		}
	}
	return nil
}

// curveRecv reads one message (frames up to one without MORE), and
// returns its frames, the flags of its frames and the raw MESSAGE bodies.
func curveRecv(t *testing.T, w *curveWire, c *curveClient) (frames [][]byte, flags []byte, raw [][]byte) {
	t.Helper()
	for {
		wire, body, err := w.read()
		if err != nil {
			t.Fatalf("reading a MESSAGE: %v", err)
		}
		if wire&(0x01|0x04) != 0 {
			t.Fatalf("libzmq sent a MESSAGE in a frame with flags %#x; want no MORE and no COMMAND", wire)
		}
		raw = append(raw, bytes.Clone(body))
		fl, payload, err := c.open(nil, body)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		frames, flags = append(frames, payload), append(flags, fl)
		if fl&curveFlagMore == 0 {
			return frames, flags, raw
		}
	}
}

func TestCurveKeys(t *testing.T) {
	pub, sec := curveKeys(t)
	for _, s := range []string{pub, sec} {
		var got [32]byte
		if err := z85Decode(got[:], s); err != nil {
			t.Fatal(err)
		}
		if want := zmq.Z85decode(s); string(got[:]) != want {
			t.Errorf("z85Decode(%q) = %x, libzmq says %x", s, got, want)
		}
	}
	server, _ := curveKeys(t)
	raw := &Curve{ServerKey: zmq.Z85decode(server), PublicKey: zmq.Z85decode(pub), SecretKey: zmq.Z85decode(sec)}
	c, err := newCurveClient(raw)
	if err != nil {
		t.Fatalf("raw 32-byte keys: %v", err)
	}
	cz, err := newCurveClient(&Curve{ServerKey: server, PublicKey: pub, SecretKey: sec})
	if err != nil {
		t.Fatalf("Z85 keys: %v", err)
	}
	if c.server != cz.server || c.public != cz.public || c.secret != cz.secret {
		t.Error("raw and Z85 forms of the same keys decode differently")
	}
	if c.cnPublic == cz.cnPublic {
		t.Error("two connections drew the same transient key")
	}

	other, _ := curveKeys(t)
	for _, tc := range []struct {
		name string
		k    *Curve
	}{
		{"no keys", nil},
		{"short", &Curve{ServerKey: server[:39], PublicKey: pub, SecretKey: sec}},
		{"not Z85", &Curve{ServerKey: "~" + server[1:], PublicKey: pub, SecretKey: sec}},
		{"group out of range", &Curve{ServerKey: "#####" + server[5:], PublicKey: pub, SecretKey: sec}},
		{"public key of another pair", &Curve{ServerKey: server, PublicKey: other, SecretKey: sec}},
		{"all-zero worker key", &Curve{ServerKey: string(make([]byte, 32)), PublicKey: pub, SecretKey: sec}},
	} {
		if _, err := newCurveClient(tc.k); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: got %v, want ErrConfig", tc.name, err)
		}
	}
}

// The client completes the handshake with a libzmq 4.3 ROUTER that is a
// CURVE server, sends a DEALER message frame by frame and opens the echo;
// a PING (inside a MESSAGE, boxed flag COMMAND) gets libzmq's PONG.
func TestCurveHandshakeWithLibzmq(t *testing.T) {
	srvPub, srvSec := curveKeys(t)
	pub, sec := curveKeys(t)
	addr := curveEchoRouter(t, srvSec, nil)
	for _, tc := range []struct {
		name string
		k    *Curve
	}{
		{"Z85 keys", &Curve{ServerKey: srvPub, PublicKey: pub, SecretKey: sec}},
		{"raw keys", &Curve{ServerKey: zmq.Z85decode(srvPub), PublicKey: zmq.Z85decode(pub), SecretKey: zmq.Z85decode(sec)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, c, props, err := curveDial(t, addr, tc.k, 0)
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if props["Socket-Type"] != "ROUTER" {
				t.Errorf("READY metadata %q, want Socket-Type ROUTER", props)
			}
			big := make([]byte, 300<<10)
			rand.Read(big)
			msg := [][]byte{[]byte("req-1"), {}, []byte("MZMQ/1"), []byte("POST"), []byte("/a?b"),
				bytes.Repeat([]byte("h"), 255), bytes.Repeat([]byte("i"), 256), big, {}}
			// Two rounds: the first with a PING ahead of the message, the
			// second to see the nonces go on.
			for round := range 2 {
				if round == 0 {
					if err := curveSend(w, c, curveFlagCommand, []byte("\x04PING\x00\x00ctx")); err != nil {
						t.Fatal(err)
					}
				}
				if err := curveSend(w, c, 0, msg...); err != nil {
					t.Fatal(err)
				}
				for echoed, ponged := false, round > 0; !echoed || !ponged; {
					got, flags, _ := curveRecv(t, w, c)
					if flags[0]&curveFlagCommand != 0 {
						if ponged || len(got) != 1 || string(got[0]) != "\x04PONGctx" {
							t.Fatalf("command %q, want one PONG with context ctx", got)
						}
						ponged = true
						continue
					}
					if len(got) != len(msg) {
						t.Fatalf("echo has %d frames, want %d", len(got), len(msg))
					}
					for i := range msg {
						if !bytes.Equal(got[i], msg[i]) {
							t.Fatalf("echo frame %d: %d bytes %.20q, want %d bytes %.20q", i, len(got[i]), got[i], len(msg[i]), msg[i])
						}
						if want := byte(curveFlagMore); i == len(msg)-1 && flags[i] != 0 || i < len(msg)-1 && flags[i] != want {
							t.Fatalf("echo frame %d has flags %#x", i, flags[i])
						}
					}
					echoed = true
				}
			}
		})
	}
}

// With a worker key that is not the worker's, libzmq cannot open HELLO and
// drops the connection: the handshake fails at once rather than hanging.
func TestCurveWrongServerKeyWithLibzmq(t *testing.T) {
	_, srvSec := curveKeys(t)
	wrong, _ := curveKeys(t)
	pub, sec := curveKeys(t)
	addr := curveEchoRouter(t, srvSec, nil)
	_, _, _, err := curveDial(t, addr, &Curve{ServerKey: wrong, PublicKey: pub, SecretKey: sec}, 0)
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("handshake with the wrong worker key: %v, want a dropped connection", err)
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("handshake with the wrong worker key: %v, want EOF or a reset", err)
	}
}

// A ZAP handler that knows only another key refuses the bridge: libzmq
// answers INITIATE with ERROR, which ready reports as a refusal. A key the
// handler knows gets through the same socket.
func TestCurveZAPRefusedWithLibzmq(t *testing.T) {
	srvPub, srvSec := curveKeys(t)
	allowedPub, allowedSec := curveKeys(t)
	pub, sec := curveKeys(t)
	if err := zmq.AuthStart(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { zmq.AuthStop(); curveWaitZAPGone(t) })
	zmq.AuthCurveAdd("curvetest", allowedPub)
	addr := curveEchoRouter(t, srvSec, func(s *zmq.Socket) { s.SetZapDomain("curvetest") })

	if _, _, _, err := curveDial(t, addr, &Curve{ServerKey: srvPub, PublicKey: allowedPub, SecretKey: allowedSec}, 0); err != nil {
		t.Fatalf("a key the ZAP handler allows: %v", err)
	}
	_, c, _, err := curveDial(t, addr, &Curve{ServerKey: srvPub, PublicKey: pub, SecretKey: sec}, 0)
	if !errors.Is(err, errCurveRefused) || !strings.Contains(err.Error(), `"400"`) {
		t.Fatalf("a key the ZAP handler does not know: %v, want a refusal with status 400", err)
	}
	if errors.Is(err, errCurveProtocol) || errors.Is(err, errCurveCrypto) {
		t.Fatalf("a refusal is also reported as another failure: %v", err)
	}
	if _, err := c.initiate(); err == nil {
		t.Fatal("the handshake goes on after a refusal")
	}
}

// curveWaitZAPGone waits until libzmq no longer finds the ZAP handler that
// zmq.AuthStop ended. AuthStop returns before the handler's goroutine closes
// its socket, and libzmq unregisters the socket's inproc endpoint later
// still; until then a server that starts a handshake (CURVE or NULL, with or
// without a ZAP domain) sends its ZAP request to a socket nobody reads and
// never answers. A handshake completing shows the endpoint is gone.
func curveWaitZAPGone(t *testing.T) {
	srvPub, srvSec := curveKeys(t)
	pub, sec := curveKeys(t)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		addr, stop := curveRouter(t, srvSec, nil)
		w, _, _, err := curveDial(t, addr, &Curve{ServerKey: srvPub, PublicKey: pub, SecretKey: sec}, time.Second)
		w.nc.Close()
		stop()
		if err == nil {
			return
		}
	}
	t.Error("libzmq still finds the stopped ZAP handler")
}

// open refuses a MESSAGE from libzmq that was altered, replayed or
// reordered, and a refused one consumes nothing.
func TestCurveOpenRejectsTamperedAndReplayedWithLibzmq(t *testing.T) {
	srvPub, srvSec := curveKeys(t)
	pub, sec := curveKeys(t)
	addr := curveEchoRouter(t, srvSec, nil)
	w, c, _, err := curveDial(t, addr, &Curve{ServerKey: srvPub, PublicKey: pub, SecretKey: sec}, 0)
	if err != nil {
		t.Fatal(err)
	}
	fresh := *c // the state right after READY
	msg := [][]byte{[]byte("a"), []byte("bb"), bytes.Repeat([]byte("c"), 1000)}
	if err := curveSend(w, c, 0, msg...); err != nil {
		t.Fatal(err)
	}
	_, _, raw := curveRecv(t, w, c)
	if len(raw) != 3 {
		t.Fatalf("%d MESSAGE bodies, want 3", len(raw))
	}

	altered := func(i int, change func([]byte) []byte) []byte { return change(bytes.Clone(raw[i])) }
	flip := func(at int) func([]byte) []byte {
		return func(b []byte) []byte {
			if at < 0 {
				at += len(b)
			}
			b[at] ^= 0x01
			return b
		}
	}
	for _, tc := range []struct {
		name string
		body []byte
		want error
	}{
		{"nonce raised", altered(0, flip(15)), errCurveCrypto},
		{"nonce high bit", altered(0, func(b []byte) []byte { b[8] |= 0x80; return b }), errCurveCrypto},
		{"authenticator", altered(0, flip(16)), errCurveCrypto},
		{"boxed flags", altered(0, flip(32)), errCurveCrypto},
		{"last payload byte", altered(2, flip(-1)), errCurveCrypto},
		{"cut short", altered(2, func(b []byte) []byte { return b[:len(b)-1] }), errCurveCrypto},
		{"byte added", altered(2, func(b []byte) []byte { return append(b, 0) }), errCurveCrypto},
		{"under the minimum", altered(0, func(b []byte) []byte { return b[:curveMessageOverhead-1] }), errCurveProtocol},
		{"other command", altered(0, func(b []byte) []byte { b[1] = 'm'; return b }), errCurveProtocol},
		{"nonce zero", altered(0, func(b []byte) []byte { clear(b[8:16]); return b }), errCurveProtocol},
		{"ERROR command", []byte("\x05ERROR\x03400"), errCurveRefused},
	} {
		cc := fresh
		dst := []byte("keep")
		_, out, err := cc.open(dst, tc.body)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: open = %v, want %v", tc.name, err, tc.want)
		}
		if string(out) != "keep" {
			t.Errorf("%s: open changed dst to %q", tc.name, out)
		}
		// The refused body consumed nothing: the genuine first frame opens.
		if _, got, err := cc.open(nil, bytes.Clone(raw[0])); err != nil || string(got) != "a" {
			t.Errorf("%s: after it, the genuine frame opens as %q, %v", tc.name, got, err)
		}
	}

	cc := fresh
	dst := []byte("keep:")
	flags, out, err := cc.open(dst, bytes.Clone(raw[0]))
	if err != nil || string(out) != "keep:a" || flags != curveFlagMore {
		t.Fatalf("open(dst) = %#x %q %v, want MORE and keep:a", flags, out, err)
	}
	if _, _, err := cc.open(nil, bytes.Clone(raw[0])); !errors.Is(err, errCurveProtocol) || !strings.Contains(err.Error(), "replayed") {
		t.Errorf("a replayed MESSAGE: %v, want a protocol failure naming the replay", err)
	}
	if _, got, err := cc.open(nil, bytes.Clone(raw[2])); err != nil || !bytes.Equal(got, msg[2]) {
		t.Fatalf("the third frame (a nonce skipped): %v", err)
	}
	if _, _, err := cc.open(nil, bytes.Clone(raw[1])); !errors.Is(err, errCurveProtocol) {
		t.Errorf("a MESSAGE older than the last one: %v, want a protocol failure", err)
	}
}

// curveTestServer is the server side of CurveZMQ for tests that need
// bodies libzmq will not produce (a wrong key, chosen nonces, a fuzzer's
// seeds). It trusts what it receives and checks little.
type curveTestServer struct {
	public, secret     [32]byte
	cnPublic, cnSecret [32]byte
	client             [32]byte // C' from HELLO
	cookie             [96]byte
	shared             [32]byte
	nonce              uint64
}

func newCurveTestServer(t testing.TB) *curveTestServer {
	s := &curveTestServer{}
	pub, sec, err := box.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s.public, s.secret = *pub, *sec
	return s
}

func (s *curveTestServer) welcome(t testing.TB, hello []byte) []byte {
	t.Helper()
	if len(hello) != 200 || string(hello[:8]) != "\x05HELLO\x01\x00" || !bytes.Equal(hello[8:80], make([]byte, 72)) {
		t.Fatalf("HELLO %q", hello)
	}
	copy(s.client[:], hello[80:112])
	if plain, ok := box.Open(nil, hello[120:], curveNonce("CurveZMQHELLO---", binary.BigEndian.Uint64(hello[112:])), &s.client, &s.secret); !ok || !bytes.Equal(plain, make([]byte, 64)) {
		t.Fatalf("HELLO's box does not open to 64 zero bytes")
	}
	return s.welcomeUnchecked(hello)
}

// welcomeUnchecked answers hello without opening its box, as a server
// with another key than the client expects would if it could.
func (s *curveTestServer) welcomeUnchecked(hello []byte) []byte {
	pub, sec, _ := box.GenerateKey(rand.Reader)
	s.cnPublic, s.cnSecret = *pub, *sec
	return s.welcomeWith(hello)
}

// welcomeWith answers hello with s.cnPublic as S', whatever it holds.
func (s *curveTestServer) welcomeWith(hello []byte) []byte {
	copy(s.client[:], hello[80:112])
	rand.Read(s.cookie[:])
	var nonce [24]byte
	copy(nonce[:], "WELCOME-")
	rand.Read(nonce[8:])
	b := append([]byte("\x07WELCOME"), nonce[8:]...)
	return box.Seal(b, append(s.cnPublic[:], s.cookie[:]...), &nonce, &s.client, &s.secret)
}

// ready checks INITIATE the way libzmq does (cookie, box, vouch) and
// returns the client's long-term key, its metadata and a READY with meta.
func (s *curveTestServer) ready(t testing.TB, initiate []byte, meta string) (clientKey, clientMeta, ready []byte) {
	t.Helper()
	if len(initiate) < 257 || string(initiate[:9]) != "\x08INITIATE" || !bytes.Equal(initiate[9:105], s.cookie[:]) {
		t.Fatalf("INITIATE %q", initiate)
	}
	box.Precompute(&s.shared, &s.client, &s.cnSecret)
	plain, ok := box.OpenAfterPrecomputation(nil, initiate[113:], curveNonce("CurveZMQINITIATE", binary.BigEndian.Uint64(initiate[105:])), &s.shared)
	if !ok {
		t.Fatal("INITIATE's box does not open")
	}
	var key [32]byte
	copy(key[:], plain)
	var vn [24]byte
	copy(vn[:], "VOUCH---")
	copy(vn[8:], plain[32:48])
	vouch, ok := box.Open(nil, plain[48:128], &vn, &key, &s.cnSecret)
	if !ok || !bytes.Equal(vouch[:32], s.client[:]) || !bytes.Equal(vouch[32:], s.public[:]) {
		t.Fatal("the vouch does not open to C' and S")
	}
	s.nonce++
	b := binary.BigEndian.AppendUint64([]byte("\x05READY"), s.nonce)
	return key[:], plain[128:], box.SealAfterPrecomputation(b, []byte(meta), curveNonce("CurveZMQREADY---", s.nonce), &s.shared)
}

func (s *curveTestServer) seal(flags byte, payload []byte) []byte {
	s.nonce++
	b := binary.BigEndian.AppendUint64([]byte("\x07MESSAGE"), s.nonce)
	return box.SealAfterPrecomputation(b, append([]byte{flags}, payload...), curveNonce("CurveZMQMESSAGES", s.nonce), &s.shared)
}

func (s *curveTestServer) open(body []byte) (flags byte, payload []byte, ok bool) {
	if len(body) < curveMessageOverhead || string(body[:8]) != "\x07MESSAGE" {
		return 0, nil, false
	}
	plain, ok := box.OpenAfterPrecomputation(nil, body[16:], curveNonce("CurveZMQMESSAGEC", binary.BigEndian.Uint64(body[8:])), &s.shared)
	if !ok {
		return 0, nil, false
	}
	return plain[0], plain[1:], true
}

const curveTestReadyMeta = "\x0bSocket-Type\x00\x00\x00\x06ROUTER\x08Identity\x00\x00\x00\x00"

// curveTestPair runs the handshake between a new client and s.
func curveTestPair(t testing.TB, s *curveTestServer) *curveClient {
	t.Helper()
	pub, sec, _ := box.GenerateKey(rand.Reader)
	c, err := newCurveClient(&Curve{ServerKey: string(s.public[:]), PublicKey: string(pub[:]), SecretKey: string(sec[:])})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.welcome(s.welcome(t, c.hello())); err != nil {
		t.Fatal(err)
	}
	initiate, err := c.initiate()
	if err != nil {
		t.Fatal(err)
	}
	key, meta, ready := s.ready(t, initiate, curveTestReadyMeta)
	if !bytes.Equal(key, pub[:]) || string(meta) != "\x0bSocket-Type\x00\x00\x00\x06DEALER" {
		t.Fatalf("INITIATE carries key %x and metadata %q", key, meta)
	}
	if _, err := c.ready(ready); err != nil {
		t.Fatal(err)
	}
	return c
}

// seal's bodies open on the server side with their flags and payloads, under
// increasing nonces, and seal keeps what dst held before.
func TestCurveSeal(t *testing.T) {
	s := newCurveTestServer(t)
	c := curveTestPair(t, s)
	var last uint64
	for i, tc := range []struct {
		flags   byte
		payload []byte
	}{{0, nil}, {curveFlagMore, []byte("x")}, {curveFlagCommand, []byte("\x04PING\x00\x00")}, {0, bytes.Repeat([]byte("y"), 70000)}} {
		dst := []byte("head")
		body := c.seal(dst, tc.flags, tc.payload)
		if string(body[:4]) != "head" || len(body) != 4+len(tc.payload)+curveMessageOverhead {
			t.Fatalf("seal %d: %d bytes starting %q", i, len(body), body[:4])
		}
		body = body[4:]
		nonce := binary.BigEndian.Uint64(body[8:16])
		if nonce <= last || nonce < 3 {
			t.Errorf("seal %d: nonce %d after %d (HELLO is 1, INITIATE 2)", i, nonce, last)
		}
		last = nonce
		flags, payload, ok := s.open(body)
		if !ok || flags != tc.flags || !bytes.Equal(payload, tc.payload) {
			t.Errorf("seal %d: the server opens %v %#x %.20q, want %#x %.20q", i, ok, flags, payload, tc.flags, tc.payload)
		}
	}
}

// Each handshake step tells a refusal, a protocol failure and a box that
// does not open apart, and a failed step ends the handshake.
func TestCurveHandshakeErrors(t *testing.T) {
	s := newCurveTestServer(t)
	start := func(k *curveTestServer) *curveClient {
		pub, sec, _ := box.GenerateKey(rand.Reader)
		c, err := newCurveClient(&Curve{ServerKey: string(k.public[:]), PublicKey: string(pub[:]), SecretKey: string(sec[:])})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	atWelcome := func() (*curveClient, []byte) { c := start(s); return c, s.welcome(t, c.hello()) }
	atReady := func(meta string) (*curveClient, []byte) {
		c, w := atWelcome()
		if err := c.welcome(w); err != nil {
			t.Fatal(err)
		}
		i, err := c.initiate()
		if err != nil {
			t.Fatal(err)
		}
		_, _, r := s.ready(t, i, meta)
		return c, r
	}
	welcomeCase := func(change func([]byte) []byte) error {
		c, w := atWelcome()
		err := c.welcome(change(w))
		if err != nil && c.state != curveFailed {
			t.Errorf("state %d after a failed WELCOME", c.state)
		}
		return err
	}
	readyCase := func(meta string, change func([]byte) []byte) error {
		c, r := atReady(meta)
		_, err := c.ready(change(r))
		return err
	}
	same := func(b []byte) []byte { return b }
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"WELCOME: ERROR", welcomeCase(func([]byte) []byte { return []byte("\x05ERROR\x03400") }), errCurveRefused},
		{"WELCOME: malformed ERROR", welcomeCase(func([]byte) []byte { return []byte("\x05ERROR\x09400") }), errCurveRefused},
		{"WELCOME: READY instead", welcomeCase(func([]byte) []byte { return []byte("\x05READY") }), errCurveProtocol},
		{"WELCOME: empty", welcomeCase(func([]byte) []byte { return nil }), errCurveProtocol},
		{"WELCOME: short", welcomeCase(func(b []byte) []byte { return b[:167] }), errCurveProtocol},
		{"WELCOME: byte added", welcomeCase(func(b []byte) []byte { return append(b, 0) }), errCurveProtocol},
		{"WELCOME: altered nonce", welcomeCase(func(b []byte) []byte { b[8] ^= 1; return b }), errCurveCrypto},
		{"WELCOME: altered box", welcomeCase(func(b []byte) []byte { b[100] ^= 1; return b }), errCurveCrypto},
		{"WELCOME: from another server key", func() error {
			other := newCurveTestServer(t)
			c := start(other) // configured with other's key, answered by s
			return c.welcome(s.welcomeUnchecked(c.hello()))
		}(), errCurveCrypto},
		{"WELCOME: a low-order transient key", func() error {
			c := start(s)
			s.cnPublic = [32]byte{} // a shared secret of zeros, whatever c' is
			return c.welcome(s.welcomeWith(c.hello()))
		}(), errCurveCrypto},
		{"READY: ok", readyCase(curveTestReadyMeta, same), nil},
		{"READY: ERROR", readyCase(curveTestReadyMeta, func([]byte) []byte { return []byte("\x05ERROR\x03400") }), errCurveRefused},
		{"READY: WELCOME instead", readyCase(curveTestReadyMeta, func([]byte) []byte { return []byte("\x07WELCOME") }), errCurveProtocol},
		{"READY: short", readyCase(curveTestReadyMeta, func(b []byte) []byte { return b[:curveReadyMin-1] }), errCurveProtocol},
		{"READY: altered", readyCase(curveTestReadyMeta, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), errCurveCrypto},
		{"READY: PUB socket", readyCase("\x0bSocket-Type\x00\x00\x00\x03PUB", same), errCurveProtocol},
		{"READY: a value past its end", readyCase("\x08Identity\x00\x00\x00\x05ab", same), errCurveProtocol},
		{"READY: cut-short metadata", readyCase(curveTestReadyMeta[:20], same), errCurveProtocol},
		{"READY: trailing byte", readyCase(curveTestReadyMeta+"\x00", same), errCurveProtocol},
		{"READY: lower-case name, REP", readyCase("\x0bsocket-type\x00\x00\x00\x03REP", same), nil},
	} {
		if !errors.Is(tc.err, tc.want) || (tc.want == nil) != (tc.err == nil) {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
		}
	}

	// Steps out of order fail and do not move on.
	c := start(s)
	if err := c.welcome(make([]byte, curveWelcomeSize)); !errors.Is(err, errCurveProtocol) {
		t.Errorf("WELCOME before HELLO: %v", err)
	}
	c = start(s)
	if _, err := c.initiate(); !errors.Is(err, errCurveProtocol) {
		t.Errorf("INITIATE before WELCOME: %v", err)
	}
	c, r := atReady(curveTestReadyMeta)
	if _, _, err := c.open(nil, r); !errors.Is(err, errCurveProtocol) {
		t.Errorf("open before READY: %v", err)
	}
}

// curveFuzzFixture holds client states at each step of one handshake with
// a curveTestServer, and the genuine bodies for each step.
type curveFuzzFixture struct {
	atWelcome, atReady, connected curveClient
	welcome, ready                []byte
	messages                      []curveFuzzMessage
}

type curveFuzzMessage struct {
	body    []byte
	flags   byte
	payload []byte
}

func newCurveFuzzFixture(t testing.TB) *curveFuzzFixture {
	f := &curveFuzzFixture{}
	s := newCurveTestServer(t)
	pub, sec, _ := box.GenerateKey(rand.Reader)
	c, err := newCurveClient(&Curve{ServerKey: string(s.public[:]), PublicKey: string(pub[:]), SecretKey: string(sec[:])})
	if err != nil {
		t.Fatal(err)
	}
	f.welcome = s.welcome(t, c.hello())
	f.atWelcome = *c
	if err := c.welcome(bytes.Clone(f.welcome)); err != nil {
		t.Fatal(err)
	}
	initiate, err := c.initiate()
	if err != nil {
		t.Fatal(err)
	}
	_, _, f.ready = s.ready(t, initiate, curveTestReadyMeta)
	f.atReady = *c
	if _, err := c.ready(bytes.Clone(f.ready)); err != nil {
		t.Fatal(err)
	}
	f.connected = *c
	for _, m := range []curveFuzzMessage{{nil, 0, nil}, {nil, curveFlagMore, []byte("MZMQ/1")}, {nil, curveFlagCommand, []byte("\x04PING\x00\x00")}, {nil, 0xff, bytes.Repeat([]byte("z"), 300)}} {
		m.body = s.seal(m.flags, m.payload)
		m.flags &= curveFlagMore | curveFlagCommand
		f.messages = append(f.messages, m)
	}
	return f
}

// FuzzCurveOpen feeds arbitrary bodies to welcome, ready and open: nothing
// panics, every error is one of the three kinds, and nothing is accepted
// but the bodies the server sealed.
func FuzzCurveOpen(f *testing.F) {
	fx := newCurveFuzzFixture(f)
	f.Add(byte(0), fx.welcome)
	f.Add(byte(1), fx.ready)
	for _, m := range fx.messages {
		f.Add(byte(2), m.body)
	}
	f.Add(byte(0), []byte("\x05ERROR\x03400"))
	f.Add(byte(2), []byte("\x07MESSAGE"))
	f.Fuzz(func(t *testing.T, step byte, body []byte) {
		in := bytes.Clone(body)
		kind := func(err error) {
			if !errors.Is(err, errCurveRefused) && !errors.Is(err, errCurveProtocol) && !errors.Is(err, errCurveCrypto) {
				t.Fatalf("error of no kind: %v", err)
			}
		}
		switch step % 3 {
		case 0:
			c := fx.atWelcome
			if err := c.welcome(in); err != nil {
				kind(err)
			} else if !bytes.Equal(body, fx.welcome) {
				t.Fatalf("welcome accepted %q", body)
			}
		case 1:
			c := fx.atReady
			if props, err := c.ready(in); err != nil {
				kind(err)
			} else if !bytes.Equal(body, fx.ready) || props["Socket-Type"] != "ROUTER" {
				t.Fatalf("ready accepted %q as %q", body, props)
			}
		case 2:
			c := fx.connected
			flags, payload, err := c.open([]byte("x"), in)
			if err != nil {
				kind(err)
				if string(payload) != "x" {
					t.Fatalf("a failed open changed dst to %q", payload)
				}
				return
			}
			for _, m := range fx.messages {
				if bytes.Equal(body, m.body) {
					if flags != m.flags || string(payload) != "x"+string(m.payload) {
						t.Fatalf("open gave %#x %q, sealed were %#x %q", flags, payload, m.flags, m.payload)
					}
					return
				}
			}
			t.Fatalf("open accepted %q", body)
		}
	})
}

// BenchmarkCurveSeal seals 64 KiB frames into a reused buffer.
func BenchmarkCurveSeal(b *testing.B) {
	c := curveTestPair(b, newCurveTestServer(b))
	payload := make([]byte, 64<<10)
	var dst []byte
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		dst = c.seal(dst[:0], 0, payload)
	}
}

// BenchmarkCurveOpen opens 64 KiB frames into a reused buffer.
func BenchmarkCurveOpen(b *testing.B) {
	s := newCurveTestServer(b)
	c := curveTestPair(b, s)
	body := s.seal(0, make([]byte, 64<<10))
	work := make([]byte, len(body))
	var dst []byte
	b.SetBytes(int64(len(body) - curveMessageOverhead))
	b.ReportAllocs()
	for b.Loop() {
		copy(work, body)
		c.peerNonce = 0
		var err error
		if _, dst, err = c.open(dst[:0], work); err != nil {
			b.Fatal(err)
		}
	}
}
