package bridge

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// ZMTP is the default transport. Connections to tcp:// and ipc:// endpoints
// without CURVE are ZMTP 3.1 DEALER connections (RFC 23/ZMTP, NULL
// mechanism) spoken in Go on the netpoller: a request is one writev, a
// reply one or two reads, with no cgo call and no hop through libzmq's I/O
// thread. Workers see an ordinary DEALER peer. Other connections, and
// endpoint watching, are libzmq's (ZMQ). The Apache module has the same in
// C (mod_zmq/golib/zmtp.c).
//
// Requests to one endpoint share a few connections (see shared.go) unless
// Exclusive is set, which gives each Conn a connection of its own.
type ZMTP struct {
	ZMQ
	Exclusive bool
	shared    sessions
}

// Dial connects to endpoint, trying again every 100 ms while nobody
// listens, up to opts.ConnectTimeout.
func (t *ZMTP) Dial(endpoint string, opts DialOptions) (Conn, error) {
	network, addr, ok := zmtpAddr(endpoint)
	if !ok || opts.Curve != nil {
		return t.ZMQ.Dial(endpoint, opts)
	}
	if !t.Exclusive {
		return t.dialShared(network, addr, endpoint, opts)
	}
	c := &zmtpConn{network: network, addr: addr, endpoint: endpoint, maxMsgSize: opts.MaxMsgSize}
	if err := c.connect(opts.ConnectTimeout); err != nil {
		return nil, err
	}
	return c, nil
}

// zmtpAddr maps an endpoint zmtpConn can reach to a net.Dial address.
func zmtpAddr(endpoint string) (network, addr string, ok bool) {
	switch {
	case strings.Contains(endpoint, ";"):
		return "", "", false // a source address: libzmq's
	case strings.HasPrefix(endpoint, "tcp://"):
		return "tcp", strings.TrimPrefix(endpoint, "tcp://"), true
	case strings.HasPrefix(endpoint, "ipc://"):
		// "@name" is the abstract namespace to libzmq and to Go alike.
		return "unix", strings.TrimPrefix(endpoint, "ipc://"), true
	}
	return "", "", false
}

const (
	zmtpMore    = 0x01
	zmtpLong    = 0x02
	zmtpCommand = 0x04
	// zmtpMaxCommand bounds command frames (READY, PING, ...), which are
	// small; a longer one is refused.
	zmtpMaxCommand = 64 << 10
	// zmtpReadAhead bounds how far the buffer grows past what has arrived
	// for a frame whose header claims a size: a claim is not yet memory.
	zmtpReadAhead = 4 << 20
)

var (
	zmtpGreeting = func() []byte {
		g := make([]byte, 64)
		g[0], g[8], g[9], g[10], g[11] = 0xff, 1, 0x7f, 3, 1 // signature, version 3.1
		copy(g[12:], "NULL")
		return g
	}()
	zmtpReady = []byte("\x04\x1c\x05READY\x0bSocket-Type\x00\x00\x00\x06DEALER")

	errZMTPRefused  = errors.New("the worker refused the connection (its ZAP authentication said no)")
	errZMTPProtocol = errors.New("the peer is not a ZMTP 3 worker socket (REP, ROUTER or DEALER) without security")
	errZMTPTooLong  = errors.New("a frame over the connection's size limit")
	errZMTPBroken   = errors.New("the worker broke ZMTP")
)

// zmtpConn is one ZMTP connection. Replies are read into buf; each message
// is copied out whole into memory of its own.
type zmtpConn struct {
	network, addr, endpoint string
	maxMsgSize              int64
	nc                      net.Conn
	raw                     syscall.RawConn
	buf                     []byte
	r, w                    int    // unparsed bytes are buf[r:w]
	err                     error  // once set, the connection is unusable
	hdr                     []byte // frame headers of the message going out
	out                     net.Buffers
	// pong, when set, sends a PONG for the connection's reader, which must
	// not write to the connection itself (a shared one has its own writer).
	pong func([]byte) error
}

// connect makes (or remakes) the connection and completes the handshake.
func (c *zmtpConn) connect(wait time.Duration) error {
	deadline := time.Now().Add(max(wait, 0))
	for {
		nc, err := net.DialTimeout(c.network, c.addr, max(time.Until(deadline), time.Millisecond))
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
	c.r, c.w = 0, 0
	nc.SetDeadline(deadline)
	defer nc.SetDeadline(time.Time{})
	if _, err := (&net.Buffers{zmtpGreeting, zmtpReady}).WriteTo(nc); err != nil {
		return err
	}
	for c.w < 64 {
		if err := c.fill(true); err != nil {
			return err
		}
	}
	g := c.buf[:64]
	if g[0] != 0xff || g[9]&1 == 0 || g[10] < 3 || string(g[12:17]) != "NULL\x00" {
		return errZMTPProtocol
	}
	c.r = 64
	for {
		at, flags, body, err := c.frame(c.r)
		if err != nil {
			return err
		}
		if body == nil {
			if err := c.fill(true); err != nil {
				return err
			}
			continue
		}
		c.r = at
		switch {
		case flags&zmtpCommand != 0 && len(body) >= 6 && string(body[:6]) == "\x05ERROR":
			return errZMTPRefused
		case flags&zmtpCommand == 0 || len(body) < 6 || string(body[:6]) != "\x05READY":
			return errZMTPProtocol
		}
		if t, ok := zmtpProperty(body, "Socket-Type"); ok && t != "ROUTER" && t != "REP" && t != "DEALER" {
			return errZMTPProtocol
		}
		return nil
	}
}

// zmtpProperty returns a READY command's property.
func zmtpProperty(body []byte, name string) (string, bool) {
	at := 1 + int(body[0])
	for at < len(body) {
		nl := int(body[at])
		if at+1+nl+4 > len(body) {
			return "", false
		}
		vl := int(binary.BigEndian.Uint32(body[at+1+nl:]))
		if vl < 0 || at+5+nl+vl > len(body) || vl > len(body) {
			return "", false
		}
		if strings.EqualFold(string(body[at+1:at+1+nl]), name) {
			return string(body[at+5+nl : at+5+nl+vl]), true
		}
		at += 5 + nl + vl
	}
	return "", false
}

// frame parses the frame at buf[at:w]: the offset past it, its flags and
// body; a nil body (and no error) when it has not fully arrived.
func (c *zmtpConn) frame(at int) (next int, flags byte, body []byte, err error) {
	have := c.w - at
	if have < 2 {
		c.grow(at, 2)
		return at, 0, nil, nil
	}
	flags = c.buf[at]
	size, hdr := uint64(c.buf[at+1]), 2
	if flags&zmtpLong != 0 {
		if have < 9 {
			c.grow(at, 9)
			return at, 0, nil, nil
		}
		size, hdr = binary.BigEndian.Uint64(c.buf[at+1:]), 9
	}
	if flags&zmtpCommand != 0 && size > zmtpMaxCommand ||
		flags&zmtpCommand == 0 && (size > 1<<40 || c.maxMsgSize > 0 && size > uint64(c.maxMsgSize)) {
		return at, 0, nil, errZMTPTooLong
	}
	if uint64(have-hdr) < size {
		c.grow(at, hdr+int(size))
		return at, 0, nil, nil
	}
	end := at + hdr + int(size)
	return end, flags, c.buf[at+hdr : end : end], nil
}

// grow makes room for need bytes from at, as far as zmtpReadAhead past what
// has arrived.
func (c *zmtpConn) grow(at, need int) {
	want := min(at+need, c.w+zmtpReadAhead)
	if want <= len(c.buf) && c.w < len(c.buf) {
		return
	}
	nb := make([]byte, max(2*len(c.buf), want))
	copy(nb, c.buf[:c.w])
	c.buf = nb
}

// fill reads what has arrived; with wait, it waits for at least one byte
// until the read deadline. io.EOF means the peer closed.
func (c *zmtpConn) fill(wait bool) error {
	if c.w == len(c.buf) {
		c.grow(c.r, c.w-c.r+1)
	}
	if wait {
		n, err := c.nc.Read(c.buf[c.w:])
		c.w += n
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
		return nil
	case rerr == syscall.EAGAIN:
		return os.ErrDeadlineExceeded
	case rerr != nil:
		return rerr
	}
	return io.EOF
}

// compact moves unparsed bytes to the start of the buffer.
func (c *zmtpConn) compact() {
	if c.r == c.w {
		c.r, c.w = 0, 0
	} else if c.r > 0 {
		c.w = copy(c.buf, c.buf[c.r:c.w])
		c.r = 0
	}
}

// command handles a command frame: PING gets its PONG; the rest is ignored.
func (c *zmtpConn) command(body []byte) error {
	switch {
	case len(body) >= 7 && string(body[:5]) == "\x04PING":
		ctx := body[7:min(len(body), 7+16)]
		pong := append([]byte{zmtpCommand, byte(5 + len(ctx)), 4, 'P', 'O', 'N', 'G'}, ctx...)
		if c.pong != nil {
			return c.pong(pong)
		}
		c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		_, err := c.nc.Write(pong)
		return err
	case len(body) >= 6 && string(body[:6]) == "\x05ERROR":
		return errZMTPBroken
	}
	return nil
}

// next returns the next whole message, copied out, or nil when it has not
// fully arrived; commands before it are handled.
func (c *zmtpConn) next() ([][]byte, error) {
	var spans [8][]byte
	frames := spans[:0]
	at := c.r
	for {
		end, flags, body, err := c.frame(at)
		if err != nil || body == nil {
			return nil, err
		}
		at = end
		if flags&zmtpCommand != 0 {
			if len(frames) > 0 {
				return nil, errZMTPBroken // a command inside a message
			}
			if err := c.command(body); err != nil {
				return nil, err
			}
			c.r = at
			continue
		}
		frames = append(frames, body)
		if flags&zmtpMore == 0 {
			break
		}
	}
	// One allocation for the whole message, sliced into its frames.
	size := 0
	for _, f := range frames {
		size += len(f)
	}
	msg, mem := make([][]byte, len(frames)), make([]byte, size)
	for i, f := range frames {
		k := copy(mem, f)
		msg[i], mem = mem[:k:k], mem[k:]
	}
	c.r = at
	return msg, nil
}

// partialID returns the first frame of the message being read, when it has
// arrived: the request id of a reply that broke the connection.
func (c *zmtpConn) partialID() string {
	at := c.r
	for {
		end, flags, body, err := c.frame(at)
		if err != nil || body == nil {
			return ""
		}
		if flags&zmtpCommand == 0 {
			return string(body)
		}
		at = end
	}
}

// fail marks the connection unusable and names err as the bridge does.
func (c *zmtpConn) fail(err error) error {
	switch {
	case errors.Is(err, errZMTPTooLong):
		err = fmt.Errorf("%w: the reply has %v (2 x the reply limit + 64 KiB)", ErrProtocol, err)
	case errors.Is(err, errZMTPBroken):
		err = fmt.Errorf("%w: %v", ErrProtocol, err)
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		err = fmt.Errorf("%w: the worker closed the connection", ErrWorkerLost)
	default:
		err = fmt.Errorf("zmtp: %w", err)
	}
	c.err = err
	return err
}

// idle reads what arrived while the connection sat in a pool without
// waiting: nil when it is sound with nothing pending.
func (c *zmtpConn) idle() error {
	if c.err != nil {
		return c.err
	}
	c.compact()
	for {
		err := c.fill(false)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			return err
		}
	}
	msg, err := c.next()
	if err == nil && (msg != nil || c.r != c.w) {
		err = errors.New("a message nobody asked for")
	}
	return err
}

func (c *zmtpConn) Send(frames [][]byte, timeout time.Duration) error {
	if c.idle() != nil {
		// Closed by the worker while it sat in a pool (a restart, or its
		// heartbeat timeout), with nothing in flight: connect again, as
		// libzmq would, within the send's wait.
		if err := c.connect(timeout); err != nil {
			c.err = err
			return err
		}
	}
	if err := writeMessage(c.nc, &c.hdr, &c.out, frames, timeout); err != nil {
		// Part of the request may be out: the connection is never used
		// again, and the worker discards an incomplete message.
		c.err = err
		return fmt.Errorf("%w: send to %s: %v", ErrNoWorker, c.endpoint, err)
	}
	return nil
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
		c.nc.SetReadDeadline(time.Now().Add(timeout))
	}
	for {
		msg, err := c.next()
		if err != nil {
			return nil, c.fail(err)
		}
		if msg != nil {
			return msg, nil
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

// FD reports no descriptor: Recv itself waits in the netpoller.
func (c *zmtpConn) FD() (int, error) { return -1, errors.New("zmtp: Recv waits in the netpoller") }

func (c *zmtpConn) Close() error { return c.nc.Close() }
