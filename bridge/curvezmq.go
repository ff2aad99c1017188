package bridge

// CurveZMQ client (RFC 26/CurveZMQ as libzmq 4.3 speaks it over ZMTP 3.1).
//
// The connection opens with a 64-byte greeting whose mechanism is "CURVE"
// (curveGreeting), then four command frames carry the handshake:
//
//	client: HELLO    "\x05HELLO" 1 0 [72 zero bytes] C' nonce(8) Box[64 zero bytes](C'->S)
//	server: WELCOME  "\x07WELCOME" nonce(16) Box[S' cookie(96)](S->C')
//	client: INITIATE "\x08INITIATE" cookie(96) nonce(8) Box[C vouch-nonce(16) vouch(80) metadata](C'->S')
//	                 where vouch = Box[C' S](C->S')
//	server: READY    "\x05READY" nonce(8) Box[metadata](S'->C')
//
// The server answers INITIATE with "\x05ERROR" reason instead of READY when
// its ZAP handler refuses the client. After READY every ZMTP frame, data or
// command, travels as one MESSAGE:
//
//	"\x07MESSAGE" nonce(8) Box[flags(1) payload](C'<->S')
//
// flags holds curveFlagMore and curveFlagCommand (a PING or PONG travels
// inside a MESSAGE with curveFlagCommand). libzmq writes the MESSAGE frame
// itself with no ZMTP flags at all: neither MORE nor COMMAND, only LONG when
// the body is over 255 bytes. A sender must do the same: libzmq 4.3 built
// with libsodium adds a frame's MORE and COMMAND flags to the boxed ones, so
// a MESSAGE frame flagged MORE never ends its message there and one flagged
// COMMAND is taken for a command and not delivered.
//
// Long nonces (24 bytes) are a 16-byte prefix naming the command and the
// direction ("CurveZMQHELLO---", "WELCOME-" + 16 random bytes,
// "CurveZMQINITIATE", "VOUCH---" + 16 random bytes, "CurveZMQREADY---",
// "CurveZMQMESSAGEC" client to server, "CurveZMQMESSAGES" server to client)
// and a big-endian 8-byte short nonce. Each side counts its short nonces from
// 1 (the client's HELLO is 1, INITIATE 2, its first MESSAGE 3), and a
// receiver refuses a MESSAGE whose nonce is not above the last one it saw
// (READY's, for the server's first MESSAGE).

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/nacl/box"
)

// Inner MESSAGE flags (the first byte in a MESSAGE box). They differ from
// the ZMTP frame flags, where COMMAND is 0x04.
const (
	curveFlagMore    = 0x01
	curveFlagCommand = 0x02
)

// curveMessageOverhead is how many bytes a MESSAGE body holds beyond its
// payload: the command name (8), the short nonce (8), the box's
// authenticator (16) and the flags byte (1).
const curveMessageOverhead = 8 + 8 + box.Overhead + 1

// Handshake command sizes libzmq insists on.
const (
	curveHelloSize   = 200
	curveWelcomeSize = 168
	curveReadyMin    = 6 + 8 + box.Overhead
)

var (
	// curveGreeting is the client's ZMTP 3.1 greeting for CurveZMQ: the
	// signature, version 3.1, mechanism "CURVE" and as-server 0.
	curveGreeting = func() []byte {
		g := make([]byte, 64)
		g[0], g[8], g[9], g[10], g[11] = 0xff, 1, 0x7f, 3, 1
		copy(g[12:], "CURVE")
		return g
	}()

	// errCurveRefused: the server sent ERROR during the handshake; its ZAP
	// handler refused the bridge's key or address.
	errCurveRefused = errors.New("curve: the worker refused the connection (ERROR command, its ZAP authentication said no)")
	// errCurveProtocol: a command is malformed, unexpected, out of order or
	// carries a nonce that is not above the last one (a replay).
	errCurveProtocol = errors.New("curve: protocol failure, the worker broke CurveZMQ")
	// errCurveCrypto: a box did not open. In WELCOME that usually means the
	// configured worker key is not the worker's; later it means the data
	// was altered on the way.
	errCurveCrypto = errors.New("curve: cryptographic failure, a box did not open (wrong worker key, or data altered)")
)

// curveState is how far the handshake has come.
type curveState uint8

const (
	curveStart     curveState = iota // nothing sent
	curveHelloSent                   // HELLO made, WELCOME awaited
	curveWelcomed                    // WELCOME accepted, INITIATE to make
	curveInitiated                   // INITIATE made, READY awaited
	curveConnected                   // READY accepted: seal and open work
	curveFailed                      // a handshake step failed
)

// curveClient is one connection's CurveZMQ client state. It holds no
// slices, so copying the value copies the state. Handshake calls run in
// order on one goroutine: hello, welcome, initiate, ready. After ready, seal
// and open may run concurrently with each other (one writer, one reader),
// but neither concurrently with itself.
type curveClient struct {
	server, public, secret [32]byte // S, C, c (long-term)
	cnPublic, cnSecret     [32]byte // C', c' (this connection)
	cnServer               [32]byte // S'
	cookie                 [96]byte
	shared                 [32]byte // box key precomputed from S' and c'
	state                  curveState
	nonce                  uint64 // the last short nonce sent: HELLO 1, INITIATE 2, then seal's
	peerNonce              uint64 // the last server nonce accepted (READY, open)
}

// newCurveClient makes the state for one connection from k: the worker's
// public key and the bridge's key pair, each 40 Z85 characters or 32 raw
// bytes. It draws the connection's transient key pair. Unusable keys wrap
// ErrConfig.
func newCurveClient(k *Curve) (*curveClient, error) {
	if k == nil {
		return nil, fmt.Errorf("%w: no CURVE keys", ErrConfig)
	}
	c := &curveClient{}
	for _, f := range []struct {
		name string
		text string
		key  *[32]byte
	}{{"worker's public key", k.ServerKey, &c.server}, {"bridge's public key", k.PublicKey, &c.public}, {"bridge's secret key", k.SecretKey, &c.secret}} {
		key, err := curveKey(f.text)
		if err != nil {
			return nil, fmt.Errorf("%w: CURVE %s: %v", ErrConfig, f.name, err)
		}
		*f.key = key
	}
	pub, err := curve25519.X25519(c.secret[:], curve25519.Basepoint)
	if err != nil || !bytes.Equal(pub, c.public[:]) {
		return nil, fmt.Errorf("%w: the bridge's CURVE public key does not belong to its secret key", ErrConfig)
	}
	cp, cs, err := box.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("curve: transient key: %w", err)
	}
	c.cnPublic, c.cnSecret = *cp, *cs
	if _, err := curve25519.X25519(c.cnSecret[:], c.server[:]); err != nil {
		return nil, fmt.Errorf("%w: the worker's CURVE public key is not a usable Curve25519 key", ErrConfig)
	}
	return c, nil
}

// curveKey decodes a key given as 40 Z85 characters or 32 raw bytes.
func curveKey(s string) (key [32]byte, err error) {
	switch len(s) {
	case 32:
		copy(key[:], s)
		return key, nil
	case 40:
		return key, z85Decode(key[:], s)
	}
	return key, fmt.Errorf("%d bytes, want 40 Z85 characters or 32 raw bytes", len(s))
}

const z85Alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"

// z85Decode decodes s (a multiple of 5 characters) into dst
// (len(s)/5*4 bytes), ZeroMQ RFC 32/Z85.
func z85Decode(dst []byte, s string) error {
	if len(s)%5 != 0 || len(dst) != len(s)/5*4 {
		return errors.New("Z85 text has the wrong length")
	}
	// The errors name positions, never characters: s may be a secret key.
	for i := 0; i < len(s); i += 5 {
		var v uint64
		for j := i; j < i+5; j++ {
			d := strings.IndexByte(z85Alphabet, s[j])
			if d < 0 {
				return fmt.Errorf("character %d is not Z85", j+1)
			}
			v = v*85 + uint64(d)
		}
		if v > 0xffffffff {
			return fmt.Errorf("Z85 characters %d-%d are out of range", i+1, i+5)
		}
		binary.BigEndian.PutUint32(dst[i/5*4:], uint32(v))
	}
	return nil
}

// curveNonce makes a long nonce from a 16-byte prefix and a short nonce.
func curveNonce(prefix string, short uint64) *[24]byte {
	var n [24]byte
	copy(n[:], prefix)
	binary.BigEndian.PutUint64(n[16:], short)
	return &n
}

// hello returns the HELLO command body (200 bytes, without the ZMTP frame
// header). It is the first call and is made once.
func (c *curveClient) hello() []byte {
	if c.state != curveStart {
		panic("curveClient.hello called twice")
	}
	c.nonce++
	b := make([]byte, 80, curveHelloSize) // command name, version 1.0, 72 bytes of padding
	copy(b, "\x05HELLO\x01\x00")
	b = append(b, c.cnPublic[:]...)
	b = binary.BigEndian.AppendUint64(b, c.nonce)
	var zeros [64]byte
	b = box.Seal(b, zeros[:], curveNonce("CurveZMQHELLO---", c.nonce), &c.server, &c.cnSecret)
	c.state = curveHelloSent
	return b
}

// welcome checks the server's answer to HELLO and keeps S' and the cookie.
// An ERROR command returns errCurveRefused; a malformed or unexpected
// command errCurveProtocol; a box that does not open (the configured worker
// key is wrong) errCurveCrypto.
func (c *curveClient) welcome(body []byte) error {
	if c.state != curveHelloSent {
		return c.fail(fmt.Errorf("%w: WELCOME before HELLO was sent", errCurveProtocol))
	}
	if err := curveError(body); err != nil {
		return c.fail(err)
	}
	if !bytes.HasPrefix(body, []byte("\x07WELCOME")) {
		return c.fail(fmt.Errorf("%w: %s where WELCOME belongs", errCurveProtocol, commandName(body)))
	}
	if len(body) != curveWelcomeSize {
		return c.fail(fmt.Errorf("%w: WELCOME is %d bytes, not %d", errCurveProtocol, len(body), curveWelcomeSize))
	}
	var nonce [24]byte
	copy(nonce[:], "WELCOME-")
	copy(nonce[8:], body[8:24])
	var plain [128]byte
	if _, ok := box.Open(plain[:0], body[24:], &nonce, &c.server, &c.cnSecret); !ok {
		return c.fail(fmt.Errorf("%w: WELCOME (is the configured worker key the worker's?)", errCurveCrypto))
	}
	copy(c.cnServer[:], plain[:32])
	copy(c.cookie[:], plain[32:])
	if _, err := curve25519.X25519(c.cnSecret[:], c.cnServer[:]); err != nil {
		return c.fail(fmt.Errorf("%w: WELCOME holds an unusable transient key", errCurveCrypto))
	}
	box.Precompute(&c.shared, &c.cnServer, &c.cnSecret)
	c.state = curveWelcomed
	return nil
}

// initiate returns the INITIATE command body: the cookie, the vouch (C' and
// S boxed under the bridge's long-term key) and the metadata
// (Socket-Type DEALER). It follows a successful welcome.
func (c *curveClient) initiate() ([]byte, error) {
	if c.state != curveWelcomed {
		return nil, c.fail(fmt.Errorf("%w: INITIATE before WELCOME was accepted", errCurveProtocol))
	}
	var vouchNonce [24]byte
	copy(vouchNonce[:], "VOUCH---")
	if _, err := rand.Read(vouchNonce[8:]); err != nil {
		return nil, c.fail(fmt.Errorf("curve: vouch nonce: %w", err))
	}
	var pair [64]byte
	copy(pair[:], c.cnPublic[:])
	copy(pair[32:], c.server[:])
	vouch := box.Seal(make([]byte, 0, 80), pair[:], &vouchNonce, &c.cnServer, &c.secret)

	const metadata = "\x0bSocket-Type\x00\x00\x00\x06DEALER"
	plain := make([]byte, 0, 32+16+80+len(metadata))
	plain = append(plain, c.public[:]...)
	plain = append(plain, vouchNonce[8:]...)
	plain = append(plain, vouch...)
	plain = append(plain, metadata...)

	c.nonce++
	b := make([]byte, 0, 9+96+8+box.Overhead+len(plain))
	b = append(b, "\x08INITIATE"...)
	b = append(b, c.cookie[:]...)
	b = binary.BigEndian.AppendUint64(b, c.nonce)
	b = box.SealAfterPrecomputation(b, plain, curveNonce("CurveZMQINITIATE", c.nonce), &c.shared)
	c.state = curveInitiated
	return b, nil
}

// ready checks the server's answer to INITIATE and returns the server's
// metadata (property names as sent). Socket-Type must be present and be
// ROUTER, REP or DEALER. Errors as for welcome; a refusal by the server's
// ZAP handler arrives here, as an ERROR command.
func (c *curveClient) ready(body []byte) (map[string]string, error) {
	if c.state != curveInitiated {
		return nil, c.fail(fmt.Errorf("%w: READY before INITIATE was sent", errCurveProtocol))
	}
	if err := curveError(body); err != nil {
		return nil, c.fail(err)
	}
	if !bytes.HasPrefix(body, []byte("\x05READY")) {
		return nil, c.fail(fmt.Errorf("%w: %s where READY belongs", errCurveProtocol, commandName(body)))
	}
	if len(body) < curveReadyMin {
		return nil, c.fail(fmt.Errorf("%w: READY is %d bytes, under %d", errCurveProtocol, len(body), curveReadyMin))
	}
	short := binary.BigEndian.Uint64(body[6:14])
	plain, ok := box.OpenAfterPrecomputation(nil, body[14:], curveNonce("CurveZMQREADY---", short), &c.shared)
	if !ok {
		return nil, c.fail(fmt.Errorf("%w: READY", errCurveCrypto))
	}
	props, err := curveMetadata(plain)
	if err != nil {
		return nil, c.fail(err)
	}
	c.peerNonce = short
	c.state = curveConnected
	return props, nil
}

// curveMetadata reads the metadata in READY's box by the rules of
// zmtpMetadata, as libzmq does for every mechanism.
func curveMetadata(b []byte) (map[string]string, error) {
	props, err := zmtpMetadata(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errCurveProtocol, err)
	}
	return props, nil
}

// curveError returns errCurveRefused with the reason when body is an ERROR
// command, and nil otherwise.
func curveError(body []byte) error {
	if !bytes.HasPrefix(body, []byte("\x05ERROR")) {
		return nil
	}
	if len(body) < 7 || int(body[6]) > len(body)-7 {
		return fmt.Errorf("%w (malformed ERROR command)", errCurveRefused)
	}
	return fmt.Errorf("%w: reason %q", errCurveRefused, body[7:7+int(body[6])])
}

// commandName names the command body holds, for error texts.
func commandName(body []byte) string {
	if len(body) == 0 || int(body[0]) > len(body)-1 {
		return "a malformed command"
	}
	return fmt.Sprintf("command %q", body[1:1+int(body[0])])
}

// fail ends the handshake with err.
func (c *curveClient) fail(err error) error {
	c.state = curveFailed
	return err
}

// seal appends to dst the MESSAGE command body (without the ZMTP frame
// header) carrying one frame: flags (curveFlagMore, curveFlagCommand) and
// payload, under the next short nonce. The body is len(payload) +
// curveMessageOverhead bytes. seal also uses 1+len(payload) bytes of dst's
// capacity past the body as scratch, growing dst when it has too little.
// It panics before ready succeeded. Send the body as a ZMTP frame with
// flags 0 (0x02 LONG when over 255 bytes), as libzmq does.
func (c *curveClient) seal(dst []byte, flags byte, payload []byte) []byte {
	if c.state != curveConnected {
		panic("curveClient.seal before the CurveZMQ handshake completed")
	}
	// A uint64 counted up from 3 does not wrap in practice.
	c.nonce++
	n, size := len(dst), curveMessageOverhead+len(payload)
	total := n + size + 1 + len(payload)
	if cap(dst) < total {
		nb := make([]byte, n, total)
		copy(nb, dst)
		dst = nb
	}
	buf := dst[:total]
	plain := buf[n+size:]
	plain[0] = flags
	copy(plain[1:], payload)
	head := append(buf[:n], "\x07MESSAGE"...)
	head = binary.BigEndian.AppendUint64(head, c.nonce)
	out := box.SealAfterPrecomputation(head, plain, curveNonce("CurveZMQMESSAGEC", c.nonce), &c.shared)
	clear(plain)
	return out
}

// open decrypts one MESSAGE command body from the server, appending the
// frame's payload to dst (which must not overlap body), and returns the
// boxed flags (curveFlagMore, curveFlagCommand; other bits are dropped, as
// libzmq drops them) and the extended dst. The short nonce must be above
// the last one accepted: a replayed or reordered MESSAGE returns
// errCurveProtocol, one that does not open errCurveCrypto, and an ERROR
// command errCurveRefused. On error dst's contents are unchanged and the
// nonce is not consumed. It fails before ready succeeded.
func (c *curveClient) open(dst, body []byte) (flags byte, out []byte, err error) {
	if c.state != curveConnected {
		return 0, dst, fmt.Errorf("%w: MESSAGE before the handshake completed", errCurveProtocol)
	}
	if err := curveError(body); err != nil {
		return 0, dst, err
	}
	if !bytes.HasPrefix(body, []byte("\x07MESSAGE")) {
		return 0, dst, fmt.Errorf("%w: %s where MESSAGE belongs", errCurveProtocol, commandName(body))
	}
	if len(body) < curveMessageOverhead {
		return 0, dst, fmt.Errorf("%w: MESSAGE is %d bytes, under %d", errCurveProtocol, len(body), curveMessageOverhead)
	}
	short := binary.BigEndian.Uint64(body[8:16])
	if short <= c.peerNonce {
		return 0, dst, fmt.Errorf("%w: MESSAGE nonce %d is not above %d (replayed or reordered)", errCurveProtocol, short, c.peerNonce)
	}
	n := len(dst)
	out, ok := box.OpenAfterPrecomputation(dst, body[16:], curveNonce("CurveZMQMESSAGES", short), &c.shared)
	if !ok {
		return 0, dst, fmt.Errorf("%w: MESSAGE nonce %d", errCurveCrypto, short)
	}
	c.peerNonce = short
	flags = out[n] & (curveFlagMore | curveFlagCommand)
	copy(out[n:], out[n+1:])
	return flags, out[:len(out)-1], nil
}
