package bridge

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/modzmq/modzmq/internal/zmtpwire"
)

// ZMTP is the default transport. Connections to tcp:// and ipc:// endpoints
// are ZMTP 3.1 DEALER connections (RFC 23/ZMTP; the NULL mechanism, or
// CurveZMQ, RFC 26, with DialOptions.Curve) spoken in Go on the netpoller: a
// request is one writev, a reply one or two reads, with no cgo call and no
// hop through libzmq's I/O thread, and the reader's rules (below) bound
// what a worker can make the bridge hold. Workers see an ordinary DEALER
// peer. The Apache module has the same without CURVE in C
// (mod_zmq/relay/zmtp.c).
//
// Requests to one endpoint share a few connections (see shared.go).
type ZMTP struct {
	shared sessions
}

// Dial connects to endpoint, trying again every 100 ms while nobody
// listens, up to opts.ConnectTimeout.
func (t *ZMTP) Dial(endpoint string, opts DialOptions) (Conn, error) {
	if _, _, _, ok := zmtpAddr(endpoint); !ok {
		return nil, fmt.Errorf("%w: endpoint %q", ErrConfig, endpoint)
	}
	return t.dialShared(endpoint, opts)
}

// zmtpAddr maps an endpoint to what a dial needs: tcp://host:port,
// tcp://source;host:port (the connection's own address first, as libzmq
// spells it: "*" or a numeric IP address, with ":port" or not), ipc://path,
// and ipc://@name, the abstract namespace to libzmq and to Go alike.
func zmtpAddr(endpoint string) (network, addr string, local net.Addr, ok bool) {
	switch {
	case strings.HasPrefix(endpoint, "tcp://"):
		addr = strings.TrimPrefix(endpoint, "tcp://")
		if src, dst, found := strings.Cut(addr, ";"); found {
			l, err := sourceAddr(src)
			if err != nil {
				return "", "", nil, false
			}
			return "tcp", dst, l, true
		}
		return "tcp", addr, nil, true
	case strings.HasPrefix(endpoint, "ipc://"):
		return "unix", strings.TrimPrefix(endpoint, "ipc://"), nil, true
	}
	return "", "", nil, false
}

// sourceAddr parses the source part of a tcp:// endpoint: "*" or a numeric
// IP address (IPv6 in brackets when a port follows), then ":port" or ":*"
// or nothing.
func sourceAddr(src string) (*net.TCPAddr, error) {
	bad := fmt.Errorf("source address %q: want *, or a numeric IP address (not an interface name), and :port if any", src)
	host, port := src, "0"
	switch {
	case strings.HasPrefix(src, "["):
		end := strings.IndexByte(src, ']')
		if end < 0 {
			return nil, bad
		}
		host, port = src[1:end], "0"
		if rest := src[end+1:]; rest != "" {
			if rest[0] != ':' {
				return nil, bad
			}
			port = rest[1:]
		}
	case strings.Count(src, ":") == 1:
		host, port, _ = strings.Cut(src, ":")
	}
	a := &net.TCPAddr{}
	if host != "*" {
		if a.IP = net.ParseIP(host); a.IP == nil {
			return nil, bad
		}
	}
	if port != "*" {
		// One to five digits, as zmtp.c and configtest read it.
		n, err := strconv.Atoi(port)
		if err != nil || len(port) > 5 || strings.TrimLeft(port, "0123456789") != "" || n > 65535 {
			return nil, bad
		}
		a.Port = n
	}
	return a, nil
}

const (
	zmtpMore    = 0x01
	zmtpLong    = 0x02
	zmtpCommand = 0x04
)

// The reader's rules, the same as the Apache module's (zmtp.h; their
// specification is internal/zmqtest.ZMTPFrames, and each reader's fuzz
// target compares it with it):
//   - a message has at most zmtpMaxFrames frames, an MZMQ/1 reply with its
//     envelope; a frame header announcing one more fails the read at once;
//   - with DialOptions.MaxMsgSize, a message's frames, each counted with
//     zmtpFrameCost bytes more (and any command among them, likewise),
//     total at most MaxMsgSize, decided from each frame's header before its
//     body arrives; a command alone may be MaxMsgSize bytes, as in libzmq;
//   - the buffer grows with the bytes received, never with a size a header
//     claims;
//   - commands are handled wherever they arrive, as libzmq does: PING gets
//     its PONG, others (ERROR included, once the handshake is over) are
//     ignored; a command whose name runs past its end breaks the connection.
const (
	zmtpMaxFrames = 5
	zmtpFrameCost = 64
	zmtpMaxClaim  = 1 << 40
)

var (
	zmtpReady = zmtpwire.Ready("DEALER")

	errZMTPRefused  = errors.New("the worker refused the connection (its ZAP authentication said no)")
	errZMTPProtocol = errors.New("the peer is not a ZMTP 3 worker socket (REP, ROUTER or DEALER) with the bridge's security mechanism")
	errZMTPBroken   = errors.New("the worker broke ZMTP")
	errZMTPCurve    = errors.New("the CurveZMQ handshake failed (is the worker's public key the one configured?)")

	// ErrReplyTooLarge and ErrReplyFrames say why a connection's reader
	// refused a reply (wrapped in ErrProtocol); the Apache module's C reader
	// refuses the same replies.
	ErrReplyTooLarge = errors.New("the reply passed the connection's size limit (the reply limit + 64 KiB, each frame counting 64 bytes more)")
	ErrReplyFrames   = fmt.Errorf("the reply has more than %d frames after its envelope: MZMQ/1 allows at most 3 (status, headers, body)", zmtpMaxFrames-2)
)

// zmtpConn is one ZMTP connection. Replies are read into buf; each message
// is copied out whole into memory of its own.
type zmtpConn struct {
	network, addr, endpoint string
	local                   net.Addr // the source address to bind, if any
	maxMsgSize              int64
	nc                      net.Conn
	raw                     syscall.RawConn
	buf                     []byte
	r, w                    int // unparsed bytes are buf[r:w]
	// The message being read: buf[r:r+scan] has been parsed (its frames so
	// far, and commands among them), frames at offsets from r.
	scan    int
	nframes int
	cost    uint64
	spans   [zmtpMaxFrames][2]int // offset from r, size
	seen    int64                 // bytes received since the handshake began
	headers int64                 // frame headers looked at (tests: each is parsed once)
	err     error                 // once set, the connection is unusable
	// keys, when set, make the connection a CurveZMQ client; curve is its
	// state once attached, plain the frames of the message being read,
	// decrypted (their spans are offsets into it).
	keys  *Curve
	curve *curveClient
	plain []byte
	// pong, when set, sends a command (a PONG's body) for the connection's
	// reader, which must not write to the connection itself (a shared one
	// has its own writer).
	pong func(body []byte) error
}

// connect makes (or remakes) the connection and completes the handshake.
func (c *zmtpConn) connect(wait time.Duration) error {
	deadline := time.Now().Add(max(wait, 0))
	for {
		nc, err := c.dial(max(time.Until(deadline), time.Millisecond))
		if err == nil {
			err = c.attach(nc, deadline)
			if err == nil {
				return nil
			}
			nc.Close()
		}
		transient := errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) ||
			errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, syscall.EPIPE)
		if !transient || time.Until(deadline) < 100*time.Millisecond {
			switch {
			case errors.Is(err, errZMTPRefused) || errors.Is(err, errZMTPProtocol):
				return fmt.Errorf("%w: %s: %w", ErrNoWorker, c.endpoint, err)
			case transient || errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err):
				return fmt.Errorf("%w: %s: no worker accepted a connection within %v (%v)", ErrNoWorker, c.endpoint, wait, err)
			}
			return fmt.Errorf("%w: connect %s: %v", ErrNoWorker, c.endpoint, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// newZMTPConn returns an unconnected connection to endpoint, which
// zmtpAddr accepts.
func newZMTPConn(endpoint string, opts DialOptions) *zmtpConn {
	network, addr, local, _ := zmtpAddr(endpoint)
	return &zmtpConn{network: network, addr: addr, local: local, endpoint: endpoint, maxMsgSize: opts.MaxMsgSize, keys: opts.Curve}
}

// dial makes the TCP or IPC connection, from the source address if any.
func (c *zmtpConn) dial(wait time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: wait}
	if c.local != nil {
		d.LocalAddr = c.local
	}
	return d.Dial(c.network, c.addr)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// attach runs the handshake on nc and makes it the connection's.
func (c *zmtpConn) attach(nc net.Conn, deadline time.Time) error {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return fmt.Errorf("%T has no raw descriptor", nc)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	if c.nc != nil {
		c.nc.Close()
	}
	c.nc, c.raw, c.err = nc, raw, nil
	if c.buf == nil {
		c.buf = make([]byte, 4096)
	}
	c.r, c.w, c.scan, c.nframes, c.cost, c.plain, c.curve = 0, 0, 0, 0, 0, c.plain[:0], nil
	nc.SetDeadline(deadline)
	defer nc.SetDeadline(time.Time{})
	if c.keys != nil {
		return c.attachCurve(nc)
	}
	if _, err := (&net.Buffers{zmtpwire.Greeting, zmtpReady}).WriteTo(nc); err != nil {
		return err
	}
	if err := c.greeting(zmtpNullMechanism); err != nil {
		return err
	}
	body, err := c.handshakeCommand()
	if err != nil {
		return err
	}
	if len(body) < 6 || string(body[:6]) != "\x05READY" {
		return errZMTPProtocol
	}
	return zmtpReadyMetadata(body)
}

// greeting reads the peer's greeting and checks it names mechanism.
func (c *zmtpConn) greeting(mechanism string) error {
	for c.w < 64 {
		if err := c.fill(true); err != nil {
			return err
		}
	}
	g := c.buf[:64]
	if g[0] != 0xff || g[9]&1 == 0 || g[10] < 3 || string(g[12:32]) != mechanism {
		return errZMTPProtocol
	}
	c.r = 64
	return nil
}

// handshakeCommand reads the next frame of the handshake, which must be a
// command: its body, or errZMTPRefused for a well-formed ERROR.
func (c *zmtpConn) handshakeCommand() ([]byte, error) {
	for {
		flags, off, size, err := c.frame(c.r, 0, 0)
		if err != nil {
			return nil, err
		}
		if off < 0 {
			if err := c.fill(true); err != nil {
				return nil, err
			}
			continue
		}
		c.r = off + size
		body := c.buf[off : off+size]
		switch {
		case flags&zmtpCommand == 0:
			return nil, errZMTPProtocol
		case len(body) >= 6 && string(body[:6]) == "\x05ERROR":
			// Refused (the worker's ZAP handler said no), if well formed.
			if len(body) >= 7 && int(body[6]) <= len(body)-7 {
				return nil, fmt.Errorf("%w (%q)", errZMTPRefused, body[7:7+int(body[6])])
			}
			return nil, errZMTPProtocol
		}
		return body, nil
	}
}

// attachCurve runs the CurveZMQ client handshake (RFC 26) after the
// greeting: HELLO, WELCOME, INITIATE, READY.
func (c *zmtpConn) attachCurve(nc net.Conn) error {
	cc, err := newCurveClient(c.keys)
	if err != nil {
		return err
	}
	hello := appendFrameHeader(append([]byte(nil), curveGreeting...), false, curveHelloSize)
	hello[64] |= zmtpCommand
	if _, err := nc.Write(append(hello, cc.hello()...)); err != nil {
		return err
	}
	if err := c.greeting(zmtpCurveMechanism); err != nil {
		return err
	}
	body, err := c.handshakeCommand()
	if err != nil {
		return err
	}
	if err := cc.welcome(body); err != nil {
		return fmt.Errorf("%w: %v", errZMTPCurve, err)
	}
	initiate, err := cc.initiate()
	if err != nil {
		return fmt.Errorf("%w: %v", errZMTPCurve, err)
	}
	if _, err := nc.Write(append(zmtpCommandHeader(len(initiate)), initiate...)); err != nil {
		return err
	}
	if body, err = c.handshakeCommand(); err != nil {
		return err
	}
	if _, err := cc.ready(body); err != nil {
		return fmt.Errorf("%w: %v", errZMTPCurve, err)
	}
	c.curve = cc
	return nil
}

// zmtpCommandHeader returns the header of a command frame of size bytes.
func zmtpCommandHeader(size int) []byte {
	h := appendFrameHeader(nil, false, size)
	h[0] |= zmtpCommand
	return h
}

// zmtpCurveMechanism is the mechanism field of a CURVE greeting.
const zmtpCurveMechanism = "CURVE\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// zmtpNullMechanism is the mechanism field of a NULL greeting.
const zmtpNullMechanism = "NULL\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// zmtpReadyMetadata checks a NULL READY command's metadata, body[6:].
func zmtpReadyMetadata(body []byte) error {
	if _, err := zmtpMetadata(body[6:]); err != nil {
		return fmt.Errorf("%w: %v", errZMTPProtocol, err)
	}
	return nil
}

// zmtpMetadata reads a READY command's metadata (NULL or CurveZMQ) as
// libzmq 4.3.4 does: properties (a 1-octet name length, the name, a 4-octet
// value length, the value) fill it exactly, and a Socket-Type property
// (the name compared exactly; it may be absent) names a socket that talks
// to a DEALER. It returns the properties.
func zmtpMetadata(b []byte) (map[string]string, error) {
	props := map[string]string{}
	for len(b) > 1 {
		nl := int(b[0])
		b = b[1:]
		if len(b) < nl {
			break
		}
		name := string(b[:nl])
		b = b[nl:]
		if len(b) < 4 {
			break
		}
		vl := uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
		if uint64(len(b)) < vl {
			break
		}
		value := string(b[:vl])
		b = b[vl:]
		if name == "Socket-Type" && value != "ROUTER" && value != "REP" && value != "DEALER" {
			return nil, fmt.Errorf("the peer is a %q socket, not ROUTER, REP or DEALER", value)
		}
		props[name] = value
	}
	if len(b) > 0 {
		return nil, errors.New("READY metadata runs past the command or leaves bytes over")
	}
	return props, nil
}

// frame parses the frame header at buf[at:w] by the reader's rules, given
// the frames and cost of the message in progress: the frame's flags and
// its body's offset and size once it has fully arrived, an offset of -1
// when it has not, or the error that refuses its header.
func (c *zmtpConn) frame(at, nframes int, cost uint64) (flags byte, off, size int, err error) {
	c.headers++
	have := c.w - at
	if have < 2 {
		return 0, -1, 0, nil
	}
	flags = c.buf[at]
	n, hdr := uint64(c.buf[at+1]), 2
	if flags&zmtpLong != 0 {
		if have < 9 {
			return 0, -1, 0, nil
		}
		n, hdr = binary.BigEndian.Uint64(c.buf[at+1:]), 9
	}
	limit := uint64(max(c.maxMsgSize, 0))
	claim, alone, sealed := n, flags&zmtpCommand != 0 && nframes == 0, c.curve != nil
	if sealed && n <= zmtpMaxClaim {
		// A MESSAGE: what it holds is its size less the overhead, and
		// whether that is a command, or more follows, is inside.
		claim, alone = max(n, curveMessageOverhead)-curveMessageOverhead, nframes == 0
	}
	switch {
	case n > zmtpMaxClaim,
		limit > 0 && alone && claim > limit,
		limit > 0 && !alone && cost+claim+zmtpFrameCost > limit:
		return 0, -1, 0, ErrReplyTooLarge
	case !sealed && flags&(zmtpCommand|zmtpMore) == zmtpMore && nframes == zmtpMaxFrames-1:
		return 0, -1, 0, ErrReplyFrames
	case uint64(have-hdr) < n:
		return 0, -1, 0, nil
	}
	return flags, at + hdr, int(n), nil
}

// fill reads what has arrived; with wait, it waits for at least one byte
// until the read deadline. io.EOF means the peer closed. When what arrived
// fills the buffer, the bytes already done with make room first; the buffer
// doubles only when there are none, so it holds at most twice what is still
// being parsed.
func (c *zmtpConn) fill(wait bool) error {
	if c.w == len(c.buf) && c.r > 0 {
		c.compact()
	}
	if c.w == len(c.buf) {
		nb := make([]byte, 2*len(c.buf))
		copy(nb, c.buf[:c.w])
		c.buf = nb
	}
	if wait {
		n, err := c.nc.Read(c.buf[c.w:])
		c.w += n
		c.seen += int64(n)
		if n > 0 {
			return nil
		}
		if err == nil {
			err = io.ErrNoProgress
		}
		return err
	}
	// Without waiting: the netpoller refuses any read once a deadline has
	// passed, so this clears it and reads the descriptor directly.
	c.nc.SetReadDeadline(time.Time{})
	var n int
	var rerr error
	if err := c.raw.Read(func(fd uintptr) bool {
		for {
			n, rerr = syscall.Read(int(fd), c.buf[c.w:])
			if rerr != syscall.EINTR {
				return true
			}
		}
	}); err != nil {
		return err
	}
	switch {
	case n > 0:
		c.w += n
		c.seen += int64(n)
		return nil
	case rerr == syscall.EAGAIN:
		return os.ErrDeadlineExceeded
	case rerr != nil:
		return rerr
	}
	return io.EOF
}

// compact moves unparsed bytes to the start of the buffer (the message in
// progress with them: its frames are offsets from r).
func (c *zmtpConn) compact() {
	switch {
	case c.r == c.w:
		c.r, c.w = 0, 0
	case c.r > 0:
		c.w = copy(c.buf, c.buf[c.r:c.w])
		c.r = 0
	}
}

// command handles a command frame as libzmq does once the handshake is
// over: PING gets its PONG, the rest is ignored; a command whose name runs
// past its end breaks the connection.
func (c *zmtpConn) command(body []byte) error {
	if len(body) < 1 || int(body[0])+1 > len(body) {
		return errZMTPBroken
	}
	if len(body) >= 7 && string(body[:5]) == "\x04PING" {
		pong := append([]byte{4, 'P', 'O', 'N', 'G'}, body[7:min(len(body), 7+16)]...)
		if c.pong != nil {
			return c.pong(pong)
		}
		// A PONG that cannot be written is dropped: the read side meets a
		// closed connection itself, after what the worker sent before it.
		c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		c.nc.Write(c.appendCommand(nil, pong))
		return nil
	}
	return nil
}

// parse parses what has arrived past the message in progress: true when a
// message is complete (c.spans, c.nframes; c.scan covers it). Each byte is
// parsed once, however the bytes arrive.
func (c *zmtpConn) parse() (bool, error) {
	if c.curve != nil {
		return c.parseSealed()
	}
	for {
		at := c.r + c.scan
		flags, off, size, err := c.frame(at, c.nframes, c.cost)
		if err != nil {
			return false, err
		}
		if off < 0 {
			return false, nil
		}
		if flags&zmtpCommand != 0 {
			if err := c.command(c.buf[off : off+size]); err != nil {
				return false, err
			}
			if c.nframes == 0 {
				c.r = off + size // done with it
			} else {
				c.scan = off + size - c.r
				c.cost += uint64(size) + zmtpFrameCost
			}
			continue
		}
		c.spans[c.nframes] = [2]int{off - c.r, size}
		c.nframes++
		c.cost += uint64(size) + zmtpFrameCost
		c.scan = off + size - c.r
		if flags&zmtpMore == 0 {
			return true, nil
		}
	}
}

// parseSealed is parse for CurveZMQ: each frame arrives sealed in a
// MESSAGE, opened into c.plain as soon as it is whole (the wire bytes are
// then done with), and the reader's rules apply to what it holds. Whether
// more follows is inside the box, so a sixth frame is refused when the
// fifth, opened, announces it.
func (c *zmtpConn) parseSealed() (bool, error) {
	for {
		_, off, size, err := c.frame(c.r, c.nframes, c.cost)
		if err != nil || off < 0 {
			return false, err
		}
		start := len(c.plain)
		flags, plain, err := c.curve.open(c.plain, c.buf[off:off+size])
		if err != nil {
			return false, fmt.Errorf("%w: %v", errZMTPBroken, err)
		}
		c.r = off + size
		payload := plain[start:]
		limit := uint64(max(c.maxMsgSize, 0))
		if flags&curveFlagCommand != 0 {
			if err := c.command(payload); err != nil {
				return false, err
			}
			if c.nframes > 0 {
				c.cost += uint64(len(payload)) + zmtpFrameCost
			}
			continue // c.plain keeps only message frames
		}
		switch {
		case limit > 0 && c.cost+uint64(len(payload))+zmtpFrameCost > limit:
			return false, ErrReplyTooLarge
		case flags&curveFlagMore != 0 && c.nframes == zmtpMaxFrames-1:
			return false, ErrReplyFrames
		}
		c.plain = plain
		c.spans[c.nframes] = [2]int{start, len(payload)}
		c.nframes++
		c.cost += uint64(len(payload)) + zmtpFrameCost
		if flags&curveFlagMore == 0 {
			return true, nil
		}
	}
}

// next returns the next whole message, copied out, or nil when it has not
// fully arrived; commands before and among its frames are handled.
func (c *zmtpConn) next() ([][]byte, error) {
	done, err := c.parse()
	if err != nil || !done {
		return nil, err
	}
	// One allocation for the whole message, sliced into its frames.
	size := 0
	for _, sp := range c.spans[:c.nframes] {
		size += sp[1]
	}
	src, base := c.buf, c.r
	if c.curve != nil {
		src, base = c.plain, 0
	}
	msg, mem := make([][]byte, c.nframes), make([]byte, size)
	for i, sp := range c.spans[:c.nframes] {
		k := copy(mem, src[base+sp[0]:base+sp[0]+sp[1]])
		msg[i], mem = mem[:k:k], mem[k:]
	}
	c.r += c.scan
	c.scan, c.nframes, c.cost, c.plain = 0, 0, 0, c.plain[:0]
	c.shrink()
	return msg, nil
}

// A connection's buffers grown past zmtpShrink (by a large reply, or a
// burst) go back to zmtpKeep once what is left to parse fits.
const (
	zmtpShrink = 1 << 20
	zmtpKeep   = 64 << 10
)

// shrink lets go of buffers a large message grew: a long-lived connection
// does not keep its largest reply's size.
func (c *zmtpConn) shrink() {
	if len(c.buf) > zmtpShrink && c.w-c.r <= zmtpKeep {
		nb := make([]byte, zmtpKeep)
		c.w = copy(nb, c.buf[c.r:c.w])
		c.buf, c.r = nb, 0
	}
	if cap(c.plain) > zmtpShrink {
		c.plain = nil
	}
}

// partialID returns the first frame of the message being read, when it has
// arrived: the request id of a reply that broke the connection.
func (c *zmtpConn) partialID() string {
	if c.nframes == 0 {
		return ""
	}
	sp := c.spans[0]
	if c.curve != nil {
		return string(c.plain[sp[0] : sp[0]+sp[1]])
	}
	return string(c.buf[c.r+sp[0] : c.r+sp[0]+sp[1]])
}

// fail marks the connection unusable and names err as the bridge does.
func (c *zmtpConn) fail(err error) error {
	switch {
	case errors.Is(err, ErrReplyTooLarge) || errors.Is(err, ErrReplyFrames):
		err = fmt.Errorf("%w: %w", ErrProtocol, err)
	case errors.Is(err, errZMTPBroken):
		err = fmt.Errorf("%w: %w", ErrProtocol, err)
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		err = fmt.Errorf("%w: the worker closed the connection", ErrWorkerLost)
	default:
		err = fmt.Errorf("zmtp: %w", err)
	}
	c.err = err
	return err
}

// appendFrames appends frames as one message in the connection's wire
// form: ZMTP frames, or with CurveZMQ one sealed MESSAGE each. Messages
// must be appended in the order they are written (CurveZMQ nonces).
func (c *zmtpConn) appendFrames(b []byte, frames [][]byte) []byte {
	if c.curve == nil {
		return appendMessage(b, frames)
	}
	for i, f := range frames {
		flags := byte(0)
		if i < len(frames)-1 {
			flags = curveFlagMore
		}
		b = appendFrameHeader(b, false, len(f)+curveMessageOverhead)
		b = c.curve.seal(b, flags, f)
	}
	return b
}

// appendCommand appends a command with body in the connection's wire form.
func (c *zmtpConn) appendCommand(b []byte, body []byte) []byte {
	if c.curve == nil {
		return append(append(b, zmtpCommandHeader(len(body))...), body...)
	}
	b = appendFrameHeader(b, false, len(body)+curveMessageOverhead)
	return c.curve.seal(b, curveFlagCommand, body)
}

// writeMessage writes frames to nc as one ZMTP message with one writev,
// without copying them; hdr and out are the caller's scratch space.
func writeMessage(nc net.Conn, hdr *[]byte, out *net.Buffers, frames [][]byte, timeout time.Duration) error {
	h, bufs := (*hdr)[:0], (*out)[:0]
	for i, f := range frames {
		start := len(h)
		h = appendFrameHeader(h, i < len(frames)-1, len(f))
		bufs = append(bufs, h[start:len(h):len(h)]) // stays valid if h grows
		if len(f) > 0 {
			bufs = append(bufs, f)
		}
	}
	*hdr, *out = h, bufs
	nc.SetWriteDeadline(time.Now().Add(max(timeout, time.Millisecond)))
	_, err := bufs.WriteTo(nc) // consumes bufs, not *out
	return err
}

func (c *zmtpConn) Recv(timeout time.Duration) ([][]byte, error) {
	if c.err != nil {
		return nil, c.err
	}
	c.compact()
	if timeout > 0 {
		// The deadline holds however the bytes arrive: a read after it
		// fails even when more are there.
		c.nc.SetReadDeadline(time.Now().Add(timeout))
	}
	for filled := false; ; filled = true {
		msg, err := c.next()
		if err != nil {
			return nil, c.fail(err)
		}
		if msg != nil {
			return msg, nil
		}
		if filled && timeout <= 0 {
			return nil, ErrTimeout // what was there is read
		}
		err = c.fill(timeout > 0)
		if errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err) {
			return nil, ErrTimeout
		}
		if err != nil {
			return nil, c.fail(err)
		}
	}
}

func (c *zmtpConn) Close() error { return c.nc.Close() }
