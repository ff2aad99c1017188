package bridge

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Shared connections. The gateway's requests to one endpoint travel on a few
// ZMTP connections that many requests use at once, instead of one connection
// per request in flight; replies are matched to requests by request id, as
// MZMQ/1 requires of every bridge anyway. Under load, the requests of many
// clients leave in one write and their replies arrive in one read, on both
// sides: the worker's libzmq takes in a batch per wake-up instead of one
// request per connection.

// sessionUsers is how many Conns (with a request in flight, or pooled idle)
// share one ZMTP connection before another is made. It also bounds the
// replies a worker queues for one connection, well under the 1000 of a
// ROUTER's default send high-water mark, past which libzmq drops replies.
const sessionUsers = 64

// sessionQueue bounds the bytes waiting to be written on one connection; a
// sender that finds more waits for the writer, up to its send timeout.
const sessionQueue = 1 << 20

// sessions holds a transport's shared connections by endpoint.
type sessions struct {
	mu  sync.Mutex
	all map[string]*sessionSet
}

type sessionSet struct {
	live    []*session
	dialing chan struct{} // closed when the dial in progress ends
	dialErr error
}

// session is one ZMTP connection shared by many shareConns. Its reader
// goroutine receives every message and hands each reply to the Conn that
// sent the request. Senders append to one queue; one that finds nobody
// writing writes the queue, and goes on while others add to it.
type session struct {
	t     *ZMTP
	set   *sessionSet
	zc    *zmtpConn
	log   LogFunc
	users int // under t.shared.mu

	wmu      sync.Mutex
	queue    []byte
	spare    []byte
	writing  bool
	progress chan struct{} // closed after each write, when a sender waits for room

	pmu     sync.Mutex
	pending map[string]*shareConn // by request id

	dead  chan struct{} // closed once the connection failed
	err   error         // why; set before dead closes
	blame string        // the request whose reply broke the connection, if known
}

// shareConn is a Conn whose requests go out on a shared session. Like every
// Conn it has one request in flight at a time.
type shareConn struct {
	t        *ZMTP
	endpoint string
	opts     DialOptions
	s        *session
	id       string // the request id last sent
	timer    *time.Timer
	// The messages received for the request in flight, and a wake-up for
	// Recv. A plain reply is one message (room for a second, to a request
	// given up on that raced with the next send); a stream's or a
	// WebSocket's messages queue up to what its credit allows (see
	// setLimit and push). The reader never blocks on a slow Conn: a
	// message past the limit is dropped and the next Recv reports it.
	qmu    sync.Mutex
	q      []queued // q[head:] are queued
	head   int
	limit  int   // messages
	window int64 // bytes charged (queueCost), 0: no bound
	bytes  int64 // charged for q[head+1:]: every message but the oldest
	over   bool
	ready  chan struct{}
	hdr    []byte // frame headers of a direct write
	out    net.Buffers
	closed bool
	notify func() // called after push queued a message (setNotify)
}

// dialShared returns a Conn on a shared connection to endpoint.
func (t *ZMTP) dialShared(endpoint string, opts DialOptions) (Conn, error) {
	s, err := t.bind(endpoint, opts, opts.ConnectTimeout)
	if err != nil {
		return nil, err
	}
	// Room for the reply waited for, and one to a request given up on that
	// raced with the next send: the reader never blocks on a slow Conn.
	return &shareConn{t: t, endpoint: endpoint, opts: opts, s: s, limit: plainQueue,
		ready: make(chan struct{}, 1)}, nil
}

// bind finds a sound session with room, or makes one. One dial at a time per
// endpoint: the others wait for it and share the connection it makes.
// Clients of one transport with the same endpoint, size limit and CURVE
// keys share connections; a session logs through the options of the Conn that made it.
func (t *ZMTP) bind(endpoint string, opts DialOptions, wait time.Duration) (*session, error) {
	key := fmt.Sprintf("%s\x00%d\x00%p", endpoint, opts.MaxMsgSize, opts.Curve)
	t.shared.mu.Lock()
	defer t.shared.mu.Unlock()
	if t.shared.all == nil {
		t.shared.all = map[string]*sessionSet{}
	}
	set := t.shared.all[key]
	if set == nil {
		set = &sessionSet{}
		t.shared.all[key] = set
	}
	for {
		for _, s := range set.live {
			if s.users < sessionUsers {
				s.users++
				return s, nil
			}
		}
		if set.dialing != nil {
			done := set.dialing
			t.shared.mu.Unlock()
			<-done
			t.shared.mu.Lock()
			if err := set.dialErr; err != nil {
				return nil, err
			}
			continue
		}
		done := make(chan struct{})
		set.dialing = done
		t.shared.mu.Unlock()
		zc := newZMTPConn(endpoint, opts)
		err := zc.connect(wait)
		t.shared.mu.Lock()
		set.dialing, set.dialErr = nil, err
		close(done)
		if err != nil {
			return nil, err
		}
		s := &session{t: t, set: set, zc: zc, log: opts.Log, users: 1,
			pending: map[string]*shareConn{}, dead: make(chan struct{})}
		zc.pong = s.queueCommand
		set.live = append(set.live, s)
		go s.read()
		return s, nil
	}
}

// unbind lets go of s; its last user closes it.
func (s *session) unbind() {
	t := s.t
	t.shared.mu.Lock()
	s.users--
	last := s.users == 0
	if last {
		s.set.remove(s)
	}
	t.shared.mu.Unlock()
	if last {
		s.zc.nc.Close()
	}
}

func (set *sessionSet) remove(s *session) {
	for i, x := range set.live {
		if x == s {
			set.live = append(set.live[:i], set.live[i+1:]...)
			return
		}
	}
}

// fail ends the session; every request on it then gets err from Recv.
func (s *session) fail(err error, blame string) {
	t := s.t
	t.shared.mu.Lock()
	if s.isDead() {
		t.shared.mu.Unlock()
		return
	}
	s.set.remove(s)
	s.err, s.blame = err, blame
	close(s.dead)
	t.shared.mu.Unlock()
	s.zc.nc.Close()
	// Wake the Conns a front waits on by Ready or Notify (WebSockets):
	// their Recv reports the loss.
	s.pmu.Lock()
	for _, c := range s.pending {
		select {
		case c.ready <- struct{}{}:
		default:
		}
		c.qmu.Lock()
		notify := c.notify
		c.qmu.Unlock()
		if notify != nil {
			notify()
		}
	}
	s.pmu.Unlock()
}

func (s *session) isDead() bool {
	select {
	case <-s.dead:
		return true
	default:
		return false
	}
}

// failed is the error request id gets from a dead session. A reply over the
// size limit is a protocol error of its own request only; the others on the
// connection lost their worker, as far as they can tell, and may be retried.
func (s *session) failed(id string) error {
	if errors.Is(s.err, ErrProtocol) && id != s.blame {
		return fmt.Errorf("%w: %s: the shared connection was dropped (%v)", ErrWorkerLost, s.zc.endpoint, s.err)
	}
	return s.err
}

// read receives every message on the session until it fails.
func (s *session) read() {
	defer func() {
		if p := recover(); p != nil {
			s.log.Logf(LevelError, CodePanic, "recovered panic reading %s: %v", s.zc.endpoint, p)
			s.fail(fmt.Errorf("%w: the connection's reader failed", ErrWorkerLost), "")
		}
	}()
	zc := s.zc
	for {
		zc.compact()
		for {
			msg, err := zc.next()
			if err != nil {
				s.fail(zc.fail(err), zc.partialID())
				return
			}
			if msg == nil {
				break
			}
			s.deliver(msg)
		}
		if err := zc.fill(true); err != nil {
			s.fail(zc.fail(err), "")
			return
		}
	}
}

// deliver hands a message to the Conn whose request it answers. The request
// stays registered until the Conn sends another or closes: a stream's
// parts follow its head.
func (s *session) deliver(msg [][]byte) {
	var c *shareConn
	if len(msg) > 0 {
		s.pmu.Lock()
		c = s.pending[string(msg[0])]
		s.pmu.Unlock()
	}
	if c == nil || !c.push(msg) {
		s.log.Logf(LevelDebug, CodeStaleReply, "dropped a reply nobody waits for any more (request %s)", idOf(msg))
	}
}

// plainQueue is how many messages a Conn holds for a plain request.
const plainQueue = 2

// queued is a message held for Recv, with what push charged for it.
type queued struct {
	msg  [][]byte
	cost int64
}

// kindRoom is how much of a message's first frame after its envelope
// queueCost leaves to the count bound: the kind of a stream's or a
// WebSocket's message (@keep-alive, the longest, has 11 bytes), or a
// reply's status.
const kindRoom = 16

// queueCost is what msg, a worker's message with its envelope, is charged
// in the queue of a request given a window: what the protocol charges a
// part or a WebSocket message (partCost) for the bytes of its frames after
// the request id, less the first kindRoom bytes of its kind. An honest
// @data, @end, @abort, @keep-alive ["@keep-alive", ""], @text or @binary
// is charged here exactly what its stream or WebSocket charges it when
// taken; a keep-alive that carries bytes is charged them too (the front
// holds them); messages the protocol does not charge (a head, an
// @accept, a plain reply, @credit, @ws-close) are charged as parts.
func queueCost(msg [][]byte) int64 {
	n := 0
	for i, f := range msg {
		switch i {
		case 0: // the request id, which is the front's own
		case 2:
			n += max(len(f)-kindRoom, 0)
		default:
			n += len(f)
		}
	}
	return partCost(n)
}

// push queues msg for Recv; false when the queue is full (the Conn then
// reports it instead of the messages after). A message into an empty
// queue is always taken; after it, a request given a window (setLimit)
// queues messages while what they are charged (queueCost) stays within
// it. The oldest message is not counted, so a head, an @accept or a plain
// reply, which the protocol does not charge, never takes from the window
// of the parts behind it. A worker within its credit is never refused for
// the messages credit charges: its front grants credit only for messages
// it took from the queue, so the charges of those still queued are within
// the credit the worker has had, the window. (A WebSocket's @credit and
// @ws-close, which credit does not charge, take from the window as parts,
// as each took a place under the bound of window/PartCost messages that
// this one replaces.) A worker past its credit makes the front hold at
// most the window and one message of the size limit, whatever the size
// of its messages; the count bound, which the byte bound implies, is what
// bounds a plain request's queue.
func (c *shareConn) push(msg [][]byte) bool {
	c.qmu.Lock()
	n := len(c.q) - c.head
	cost := int64(0)
	if c.window > 0 && n > 0 {
		cost = queueCost(msg)
	}
	if n >= c.limit || n > 0 && c.window > 0 && c.bytes+cost > c.window {
		c.over = true
		c.qmu.Unlock()
		return false
	}
	c.q = append(c.q, queued{msg, cost})
	c.bytes += cost
	notify := c.notify
	c.qmu.Unlock()
	select {
	case c.ready <- struct{}{}:
	default:
	}
	if notify != nil {
		notify()
	}
	return true
}

// pop takes the next queued message; err when messages were dropped.
func (c *shareConn) pop() (msg [][]byte, err error) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.head < len(c.q) {
		msg, c.q[c.head] = c.q[c.head].msg, queued{}
		if c.head++; c.head == len(c.q) {
			c.q, c.head = c.q[:0], 0
		} else {
			c.bytes -= c.q[c.head].cost // the oldest now: not counted
		}
		return msg, nil
	}
	switch {
	case c.over && c.window > 0:
		return nil, protocolError("request %s: the worker sent more than the front holds for it (%d messages, or %d bytes as credit counts them, after the first); a stream or WebSocket past its credit", c.id, c.limit, c.window)
	case c.over:
		return nil, protocolError("request %s: the worker sent more messages than the front holds for it (%d)", c.id, c.limit)
	}
	return nil, nil
}

// readyChan receives when a message may have been queued for Recv.
func (c *shareConn) readyChan() <-chan struct{} { return c.ready }

// setNotify makes push call fn after it queued a message, from the
// session's reader, and fail call it too; nil stops the calls.
func (c *shareConn) setNotify(fn func()) {
	c.qmu.Lock()
	c.notify = fn
	c.qmu.Unlock()
}

// setLimit readies the Conn for its next request, before it is sent (a
// stream's parts may follow its head at once): window is the credit the
// request gives its worker (a stream's or a WebSocket's), 0 for a plain
// request. A request given a window queues messages charged up to window
// bytes after the first (push), and so at most window/PartCost + 1; a
// plain one, plainQueue messages of any size.
func (c *shareConn) setLimit(window int64) {
	c.qmu.Lock()
	c.window = max(window, 0)
	c.limit = int(c.window/PartCost) + plainQueue
	c.qmu.Unlock()
}

// reset forgets what was queued for the request before.
func (c *shareConn) reset() {
	c.qmu.Lock()
	clear(c.q)
	c.q, c.head, c.bytes, c.over = c.q[:0], 0, 0, false
	c.qmu.Unlock()
	select {
	case <-c.ready:
	default:
	}
}

// queueCommand queues a PONG from the reader, which must not itself wait
// for a write. As in libzmq, PONGs do not pile up: while anything waits to
// be written (an earlier PONG, requests) the new one is dropped, since any
// traffic tells the worker the connection lives.
func (s *session) queueCommand(body []byte) error {
	s.wmu.Lock()
	if len(s.queue) > 0 {
		s.wmu.Unlock()
		return nil
	}
	s.queue = s.zc.appendCommand(s.queue, body)
	start := !s.writing
	s.writing = s.writing || start
	s.wmu.Unlock()
	if start {
		go func() {
			defer func() {
				if p := recover(); p != nil {
					s.log.Logf(LevelError, CodePanic, "recovered panic writing to %s: %v", s.zc.endpoint, p)
					s.fail(fmt.Errorf("%w: the connection's writer failed", ErrWorkerLost), "")
				}
			}()
			s.write(time.Second)
		}()
	}
	return nil
}

// write writes the queue until it is empty; the caller set s.writing. A
// write that fails or stalls past wait fails the session: part of a message
// may be out.
func (s *session) write(wait time.Duration) error {
	s.wmu.Lock()
	for len(s.queue) > 0 {
		out := s.queue
		s.queue = s.spare[:0]
		s.wmu.Unlock()
		s.zc.nc.SetWriteDeadline(time.Now().Add(max(wait, time.Millisecond)))
		_, err := s.zc.nc.Write(out)
		s.wmu.Lock()
		s.spare = out[:0]
		if cap(out) > sessionQueue {
			s.spare = nil // a burst's larger buffer is left to the collector
		}
		if s.progress != nil {
			close(s.progress)
			s.progress = nil
		}
		if err != nil {
			s.writing = false
			s.wmu.Unlock()
			return s.writeFailed(err)
		}
	}
	s.writing = false
	s.wmu.Unlock()
	return nil
}

// writeFailed fails the session after a failed write and returns the
// sender's error.
func (s *session) writeFailed(err error) error {
	err = fmt.Errorf("%w: send to %s: %v", ErrNoWorker, s.zc.endpoint, err)
	s.fail(fmt.Errorf("%w: the connection failed while requests were going out (%v)", ErrWorkerLost, err), "")
	return err
}

// directWrite is the message size from which a sender that finds nobody
// writing writes its frames where they are instead of copying them into
// the queue: a large body is then not copied at all.
const directWrite = 16 << 10

// Send queues the request on the session (dialing again when the session
// is gone, as libzmq would) and writes the queue if nobody is writing it.
func (c *shareConn) Send(frames [][]byte, timeout time.Duration) error {
	if len(frames) == 0 {
		return errors.New("zmtp send: no frames")
	}
	// A message for the request in flight (a stream's credit, a cancel
	// notice) goes on its session, which must still live.
	control := c.id != "" && c.id == string(frames[0])
	if control && c.s.isDead() {
		return fmt.Errorf("%w: send to %s: %v", ErrWorkerLost, c.endpoint, c.s.err)
	}
	if c.s.isDead() {
		s, err := c.t.bind(c.endpoint, c.opts, timeout)
		if err != nil {
			return err
		}
		c.s.unbind()
		c.s = s
	}
	s := c.s
	if !control {
		// Forget the request before, whose reply may still come, and any
		// reply to it that came already.
		s.pmu.Lock()
		if c.id != "" && s.pending[c.id] == c {
			delete(s.pending, c.id)
		}
		c.id = string(frames[0])
		s.pending[c.id] = c
		s.pmu.Unlock()
		c.reset()
	}

	s.wmu.Lock()
	for s.writing && len(s.queue) > sessionQueue {
		if s.progress == nil {
			s.progress = make(chan struct{})
		}
		progress := s.progress
		s.wmu.Unlock()
		if c.timer == nil {
			c.timer = time.NewTimer(timeout)
		} else {
			c.timer.Reset(timeout)
		}
		select {
		case <-progress:
			c.timer.Stop()
		case <-s.dead:
			c.timer.Stop()
			return fmt.Errorf("%w: send to %s: %v", ErrNoWorker, c.endpoint, s.err)
		case <-c.timer.C:
			return fmt.Errorf("%w: send to %s: the worker took no request for %v", ErrNoWorker, c.endpoint, timeout)
		}
		s.wmu.Lock()
	}
	if !s.writing && len(s.queue) == 0 && s.zc.curve == nil && messageSize(frames) >= directWrite {
		s.writing = true
		s.wmu.Unlock()
		if err := writeMessage(s.zc.nc, &c.hdr, &c.out, frames, timeout); err != nil {
			s.wmu.Lock()
			s.writing = false
			s.wmu.Unlock()
			return s.writeFailed(err)
		}
		return s.write(timeout) // what others queued meanwhile
	}
	s.queue = s.zc.appendFrames(s.queue, frames)
	if s.writing {
		s.wmu.Unlock()
		return nil
	}
	s.writing = true
	s.wmu.Unlock()
	return s.write(timeout)
}

func messageSize(frames [][]byte) int {
	n := 0
	for _, f := range frames {
		n += len(f)
	}
	return n
}

// appendFrameHeader appends the header of a frame of size bytes.
func appendFrameHeader(b []byte, more bool, size int) []byte {
	flags := byte(0)
	if more {
		flags = zmtpMore
	}
	if size > 255 {
		return binary.BigEndian.AppendUint64(append(b, flags|zmtpLong), uint64(size))
	}
	return append(b, flags, byte(size))
}

// appendMessage appends frames as one ZMTP message.
func appendMessage(b []byte, frames [][]byte) []byte {
	for i, f := range frames {
		b = append(appendFrameHeader(b, i < len(frames)-1, len(f)), f...)
	}
	return b
}

// Recv waits for the reply to the request last sent.
func (c *shareConn) Recv(timeout time.Duration) ([][]byte, error) {
	if msg, err := c.pop(); msg != nil || err != nil {
		return msg, err
	}
	s := c.s
	if timeout <= 0 {
		if s.isDead() {
			return nil, s.failed(c.id)
		}
		return nil, ErrTimeout
	}
	if c.timer == nil {
		c.timer = time.NewTimer(timeout)
	} else {
		c.timer.Reset(timeout)
	}
	for {
		select {
		case <-c.ready:
			if msg, err := c.pop(); msg != nil || err != nil {
				c.timer.Stop()
				return msg, err
			}
			continue // a wake-up left from a message already taken
		case <-s.dead:
			c.timer.Stop()
			if msg, err := c.pop(); msg != nil || err != nil {
				return msg, err
			}
			return nil, s.failed(c.id)
		case <-c.timer.C:
			return nil, ErrTimeout
		}
	}
}

// Close forgets the request in flight and lets go of the session; a second
// Close does nothing (the session counts each Conn once).
func (c *shareConn) Close() error {
	s := c.s
	if c.closed {
		return nil
	}
	c.closed = true
	s.pmu.Lock()
	if s.pending[c.id] == c {
		delete(s.pending, c.id)
	}
	s.pmu.Unlock()
	s.unbind()
	return nil
}
