package worker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/modzmq/modzmq/internal/zmtpwire"
)

const (
	flagMore    = 0x01
	flagLong    = 0x02
	flagCommand = 0x04

	// frameCost is what each frame counts against MaxMessage beyond its
	// bytes, as the fronts' readers count.
	frameCost = 64
	// maxClaim: a frame header claiming more is refused whatever the limit.
	maxClaim = 1 << 40

	// The read buffer starts at readStart bytes and grows with the bytes
	// received (never with a size a header claims); one grown past
	// shrinkAbove goes back to readStart once what is left fits.
	readStart   = 4 << 10
	shrinkAbove = 1 << 20
	// flushAt: a batch of replies this large is written without waiting
	// for the batch of messages to be handled.
	flushAt = 64 << 10
	// handshakeMax bounds what a front may send before its READY is whole
	// (libzmq's READY is under 100 bytes).
	handshakeMax = 64 << 10
	// lingerMax bounds how long a connection Shutdown ended reads, and
	// drops, what its front sends until the front closes its side.
	lingerMax = 2 * time.Second
)

var (
	greeting = zmtpwire.Greeting
	ready    = zmtpwire.Ready("ROUTER")

	errWrite = errors.New("writing to the front failed")
	errPanic = errors.New("the handler panicked")
	// errStopping: Shutdown stopped the connection's reads.
	errStopping = errors.New("the server is shutting down")
)

// Conn is one front's connection to the server.
type Conn struct {
	srv      *Server
	nc       net.Conn
	identity []byte
	done     chan struct{}
	closed   atomic.Bool // Close was called

	// The reader's state, the connection's goroutine's alone: unparsed
	// bytes are buf[r:w]; the message being read has been parsed up to
	// buf[r+scan], its frames at offsets from r.
	buf        []byte
	r, w, scan int
	cost       uint64
	spans      [][2]int
	msg        [][]byte
	// ttl is what is left of the TTL the front's last PING set (libzmq's
	// heartbeat TTL): how much longer the reader waits for the next frame
	// before it ends the connection, counting only time spent waiting for
	// bytes; armed once a PING set it, until a frame arrives.
	ttl      time.Duration
	ttlSet   time.Duration // the TTL as the PING set it, for the log
	armed    bool
	deadline bool // a read deadline is set on nc

	// The writer's state. batching is set while the reader hands the
	// handler messages that arrived together: what is sent meanwhile is
	// written when the batch is done (or out passes flushAt).
	wmu      sync.Mutex
	out      []byte
	batching bool
	werr     error
}

func newConn(s *Server, nc net.Conn) *Conn {
	// Room for a request's frames; more grow with the frames that come.
	frames := min(s.opts.MaxFrames, defaultMaxFrames)
	return &Conn{
		srv:   s,
		nc:    nc,
		done:  make(chan struct{}),
		buf:   make([]byte, readStart),
		spans: make([][2]int, 0, frames),
		msg:   make([][]byte, 0, frames),
	}
}

// Identity is the Identity property the front's READY named (a ROUTER
// front's routing id), or nil.
func (c *Conn) Identity() []byte { return c.identity }

// RemoteAddr is the front's address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Done is closed when the connection has ended.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Close writes what was sent on the connection before it (waiting for the
// front as Send does), then ends the connection: Send fails from then on,
// and the handler gets none of the front's messages but the nil one.
func (c *Conn) Close() error {
	c.stopSends(true)
	c.closed.Store(true)
	return c.nc.Close()
}

// Send sends one message of frames to the front. It may be called from
// any goroutine; messages sent from one goroutine arrive in order.
func (c *Conn) Send(frames ...[]byte) error { return c.SendMessage(nil, frames...) }

// SendMessage sends one message: the envelope's frames, then frames (a
// reply: the envelope of the request it answers, then the reply's frames).
func (c *Conn) SendMessage(envelope [][]byte, frames ...[]byte) error {
	n := len(envelope) + len(frames)
	if n == 0 {
		return errors.New("worker: a message needs at least one frame")
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	i := 0
	for _, f := range envelope {
		i++
		c.out = appendFrame(c.out, i < n, f)
	}
	for _, f := range frames {
		i++
		c.out = appendFrame(c.out, i < n, f)
	}
	if !c.batching || len(c.out) >= flushAt {
		return c.flushLocked()
	}
	return nil
}

// appendFrame appends one message frame in ZMTP's wire form.
func appendFrame(b []byte, more bool, f []byte) []byte {
	flags := byte(0)
	if more {
		flags = flagMore
	}
	if len(f) > 255 {
		b = append(b, flags|flagLong)
		b = binary.BigEndian.AppendUint64(b, uint64(len(f)))
	} else {
		b = append(b, flags, byte(len(f)))
	}
	return append(b, f...)
}

// flushLocked writes what is waiting; c.wmu is held. A write that fails,
// or during which the front takes nothing for WriteTimeout, ends the
// connection.
func (c *Conn) flushLocked() error {
	if c.werr != nil {
		return c.werr
	}
	for b := c.out; len(b) > 0; {
		c.nc.SetWriteDeadline(time.Now().Add(c.srv.opts.WriteTimeout))
		n, err := c.nc.Write(b)
		b = b[n:]
		if err != nil && (n == 0 || !errors.Is(err, os.ErrDeadlineExceeded)) {
			c.werr = fmt.Errorf("%w: %w", errWrite, err)
			c.nc.Close()
			return c.werr
		}
	}
	if cap(c.out) > shrinkAbove {
		c.out = nil
	} else {
		c.out = c.out[:0]
	}
	return nil
}

// batch marks the start (on) or the end (off) of a batch of messages;
// at the end, the replies are written.
func (c *Conn) batch(on bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.batching = on
	if on {
		return nil
	}
	return c.flushLocked()
}

// serve runs the connection and logs why it ended.
func (c *Conn) serve() {
	defer c.srv.forget(c)
	c.srv.logEnd(c, c.run())
}

// run is the connection's life: the handshake, then each message to the
// handler until the connection ends, and the handler's nil message. It
// returns why the connection ended.
func (c *Conn) run() error {
	if err := c.handshake(); err != nil {
		c.end()
		if c.srv.stopping.Load() {
			return nil // Shutdown came before the front's READY
		}
		return err
	}
	err := c.loop()
	c.wmu.Lock()
	if errors.Is(c.werr, errWrite) {
		err = c.werr // a Send from another goroutine failed first
	}
	c.wmu.Unlock()
	if errors.Is(err, errStopping) {
		c.linger() // Shutdown: what was read is handled and its replies written
		err = nil
	}
	c.end()
	if herr := c.handle(nil); err == nil {
		err = herr
	}
	return err
}

// handle calls the handler with msg. A handler that panics ends its
// connection, not the process (as net/http's handlers do): the panic and
// its stack are the error.
func (c *Conn) handle(msg [][]byte) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v\n%s", errPanic, p, debug.Stack())
		}
	}()
	c.srv.handler.ServeMessage(c, msg)
	return nil
}

// linger ends a connection that Shutdown stopped when the replies to
// what it read are written: Send fails from now on, the front gets the
// end of the stream after the replies, and what it sent that was not read
// is read and dropped until it closes its side (or lingerMax passes, or
// Close closes the socket). A TCP socket closed with unread bytes resets
// the connection, which would drop the replies its send buffer still
// holds.
func (c *Conn) linger() {
	c.stopSends(true)
	cw, ok := c.nc.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	until := time.Now().Add(lingerMax)
	for {
		// Set each time: Shutdown's wake-up (a read deadline of now) may
		// come after this connection saw it stop.
		c.nc.SetReadDeadline(until)
		_, err := c.nc.Read(c.buf[:cap(c.buf)])
		if err != nil && !(errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(until)) {
			return
		}
	}
}

// stopSends makes Send fail from now on, with ErrClosed unless a write
// failed first; with flush, what was sent before is written first.
func (c *Conn) stopSends(flush bool) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if flush {
		c.flushLocked()
	}
	if c.werr == nil {
		c.werr = ErrClosed
	}
	c.out = nil
}

// end marks the connection ended: Send fails from now on.
func (c *Conn) end() {
	c.nc.Close()
	c.stopSends(false)
	close(c.done)
}

func (c *Conn) loop() error {
	for {
		msg, err := c.next()
		if err != nil {
			return err
		}
		if msg == nil {
			// Everything that arrived is handled: write the replies, then
			// wait for more.
			if err := c.batch(false); err != nil {
				return err
			}
			if err := c.fill(); err != nil {
				return err
			}
			if err := c.batch(true); err != nil {
				return err
			}
			continue
		}
		if c.closed.Load() {
			return nil // Close was called: no message after it
		}
		if err := c.handle(msg); err != nil {
			return err
		}
		clear(msg) // the handler's slices must not keep the buffer
		c.r += c.scan
		c.scan, c.cost, c.spans = 0, 0, c.spans[:0]
		c.shrink()
	}
}

// frame parses the frame header at buf[at:w] by the reader's rules (those
// of the fronts' readers, internal/zmqtest.ZMTPFramesLimit, with this
// server's limits): the frame's flags and its body's offset and size once
// the whole frame has arrived, an offset of -1 when it has not, or the
// error that refuses its header.
func (c *Conn) frame(at int) (flags byte, off, size int, err error) {
	have := c.w - at
	if have < 2 {
		return 0, -1, 0, nil
	}
	flags = c.buf[at]
	n, hdr := uint64(c.buf[at+1]), 2
	if flags&flagLong != 0 {
		if have < 9 {
			return 0, -1, 0, nil
		}
		n, hdr = binary.BigEndian.Uint64(c.buf[at+1:]), 9
	}
	limit := uint64(c.srv.opts.MaxMessage)
	alone := flags&flagCommand != 0 && len(c.spans) == 0
	switch {
	case n > maxClaim,
		alone && n > limit,
		!alone && c.cost+n+frameCost > limit:
		return 0, -1, 0, ErrTooLarge
	case flags&(flagCommand|flagMore) == flagMore && len(c.spans) == c.srv.opts.MaxFrames-1:
		return 0, -1, 0, ErrTooManyFrames
	case uint64(have-hdr) < n:
		return 0, -1, 0, nil
	}
	return flags, at + hdr, int(n), nil
}

// next returns the next whole message in the buffer, its frames slices of
// it, or nil when it has not fully arrived. Commands before and among its
// frames are handled where they arrive.
func (c *Conn) next() ([][]byte, error) {
	for {
		flags, off, size, err := c.frame(c.r + c.scan)
		if err != nil || off < 0 {
			return nil, err
		}
		c.armed = false // a frame arrived: a PING's TTL is met
		if flags&flagCommand != 0 {
			if err := c.command(c.buf[off : off+size]); err != nil {
				return nil, err
			}
			if len(c.spans) == 0 {
				c.r = off + size
			} else {
				c.scan = off + size - c.r
				c.cost += uint64(size) + frameCost
			}
			continue
		}
		c.spans = append(c.spans, [2]int{off - c.r, size})
		c.cost += uint64(size) + frameCost
		c.scan = off + size - c.r
		if flags&flagMore == 0 {
			msg := c.msg[:0]
			for _, sp := range c.spans {
				at := c.r + sp[0]
				msg = append(msg, c.buf[at:at+sp[1]:at+sp[1]])
			}
			c.msg = msg
			return msg, nil
		}
	}
}

// command handles a command as libzmq does once the handshake is over:
// PING gets its PONG (with the PING's context, at most 16 bytes) and, with
// a TTL, arms it (the connection ends if no frame follows within it); the
// rest is ignored; a command whose name runs past its end breaks the
// connection.
func (c *Conn) command(body []byte) error {
	if len(body) < 1 || int(body[0])+1 > len(body) {
		return fmt.Errorf("%w: a command's name runs past its end", ErrProtocol)
	}
	if len(body) >= 7 && string(body[:5]) == "\x04PING" {
		if ttl := time.Duration(binary.BigEndian.Uint16(body[5:7])) * 100 * time.Millisecond; ttl > 0 {
			c.armed, c.ttl, c.ttlSet = true, ttl, ttl
		}
		ctx := body[7:min(len(body), 7+16)]
		c.wmu.Lock()
		c.out = append(c.out, flagCommand, byte(5+len(ctx)))
		c.out = append(append(c.out, "\x04PONG"...), ctx...)
		var err error
		if !c.batching {
			err = c.flushLocked()
		}
		c.wmu.Unlock()
		return err
	}
	return nil
}

// fill reads what has arrived, waiting for at least one byte, and no longer
// than what is left of an armed TTL. When the buffer is full, the bytes
// already done with make room first; it doubles only when there are none.
func (c *Conn) fill() error {
	if c.w == len(c.buf) && c.r > 0 {
		c.w = copy(c.buf, c.buf[c.r:c.w])
		c.r = 0
	}
	if c.w == len(c.buf) {
		nb := make([]byte, 2*len(c.buf))
		copy(nb, c.buf[:c.w])
		c.buf = nb
	}
	var start time.Time
	if c.armed {
		start = time.Now()
		c.nc.SetReadDeadline(start.Add(c.ttl))
		c.deadline = true
	} else if c.deadline {
		c.nc.SetReadDeadline(time.Time{})
		c.deadline = false
	}
	// Shutdown sets stopping, then a read deadline of now: either this sees
	// stopping, or that deadline comes after the one set here.
	if c.srv.stopping.Load() {
		return errStopping
	}
	n, err := c.nc.Read(c.buf[c.w:])
	if n == 0 && c.srv.stopping.Load() {
		return errStopping
	}
	c.w += n
	if c.armed {
		c.ttl -= time.Since(start)
		if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("the front's PING set a TTL of %v and no frame came within it", c.ttlSet)
		}
	}
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// shrink lets go of a buffer a large message grew once what is left to
// parse fits in a small one.
func (c *Conn) shrink() {
	if c.r == c.w {
		c.r, c.w = 0, 0
	}
	if len(c.buf) > shrinkAbove && c.w-c.r <= readStart {
		nb := make([]byte, readStart)
		c.w = copy(nb, c.buf[c.r:c.w])
		c.buf, c.r = nb, 0
	}
}

// badGreeting checks g, the part of a peer's greeting that has come: what
// it refuses is refused once the byte that shows it is in, so neither an
// HTTP client nor a ZMTP 2.0 peer (which sends 12 bytes and waits) waits out
// the handshake timeout.
func badGreeting(g []byte) error {
	switch {
	case len(g) > 0 && g[0] != 0xff, len(g) > 9 && g[9]&1 == 0:
		return fmt.Errorf("%w: the peer sent no ZMTP greeting", ErrHandshake)
	case len(g) > 10 && g[10] == 1:
		return fmt.Errorf("%w: the peer speaks ZMTP 2.0 (libzmq 3.x), the fronts 3.1", ErrHandshake)
	case len(g) > 10 && g[10] < 3:
		return fmt.Errorf("%w: the peer speaks ZMTP revision %d, the fronts 3.1", ErrHandshake, g[10])
	case len(g) >= 32 && string(g[12:32]) != string(greeting[12:32]):
		return fmt.Errorf("%w: the peer asks for mechanism %q (a libzmq worker serves CurveZMQ)",
			ErrHandshake, trimNUL(g[12:32]))
	}
	return nil
}

// handshake sends the server's greeting and READY, and reads the front's:
// ZMTP 3.x, the NULL mechanism, a READY whose Socket-Type a ROUTER talks
// to (DEALER, REQ or ROUTER).
func (c *Conn) handshake() error {
	c.nc.SetDeadline(time.Now().Add(c.srv.opts.HandshakeTimeout))
	defer c.nc.SetDeadline(time.Time{})
	if _, err := (&net.Buffers{greeting, ready}).WriteTo(c.nc); err != nil {
		return fmt.Errorf("%w: %v", ErrHandshake, err)
	}
	for c.w < 64 {
		if err := c.fill(); err != nil {
			if c.w == 0 && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
				return io.EOF // a port probe: connected and left without a byte
			}
			return fmt.Errorf("%w: greeting: %v", ErrHandshake, err)
		}
		if err := badGreeting(c.buf[:min(c.w, 64)]); err != nil {
			return err
		}
	}
	c.r = 64
	for {
		flags, off, size, err := c.frame(c.r)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrHandshake, err)
		}
		if off < 0 {
			if c.w-c.r > handshakeMax {
				return fmt.Errorf("%w: READY runs past %d bytes", ErrHandshake, handshakeMax)
			}
			if err := c.fill(); err != nil {
				return fmt.Errorf("%w: READY: %v", ErrHandshake, err)
			}
			continue
		}
		c.r = off + size
		body := c.buf[off : off+size]
		switch {
		case flags&flagCommand == 0:
			return fmt.Errorf("%w: a message before READY", ErrHandshake)
		case len(body) >= 6 && string(body[:6]) == "\x05ERROR":
			return fmt.Errorf("%w: the peer sent ERROR", ErrHandshake)
		case len(body) < 6 || string(body[:6]) != "\x05READY":
			return fmt.Errorf("%w: the peer's first command is not READY", ErrHandshake)
		}
		return c.readyMetadata(body[6:])
	}
}

// readyMetadata reads READY's properties (a 1-octet name length, the
// name, a 4-octet value length, the value), which must fill it exactly.
func (c *Conn) readyMetadata(b []byte) error {
	for len(b) > 0 {
		nl := int(b[0])
		if len(b) < 1+nl+4 {
			return fmt.Errorf("%w: READY's properties run past its end", ErrHandshake)
		}
		name := string(b[1 : 1+nl])
		vl := uint64(binary.BigEndian.Uint32(b[1+nl:]))
		b = b[1+nl+4:]
		if uint64(len(b)) < vl {
			return fmt.Errorf("%w: READY's properties run past its end", ErrHandshake)
		}
		value := b[:vl]
		b = b[vl:]
		switch name {
		case "Socket-Type":
			if v := string(value); v != "DEALER" && v != "REQ" && v != "ROUTER" {
				return fmt.Errorf("%w: the peer is a %q socket, not DEALER, REQ or ROUTER", ErrHandshake, v)
			}
		case "Identity":
			c.identity = append([]byte(nil), value...)
		}
	}
	return nil
}

func trimNUL(b []byte) string {
	for i, x := range b {
		if x == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// Delimiter returns the index of msg's first empty frame, the end of an
// MZMQ/1 envelope, or -1 when it has none.
func Delimiter(msg [][]byte) int {
	for i, f := range msg {
		if len(f) == 0 {
			return i
		}
	}
	return -1
}
