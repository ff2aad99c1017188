package stream

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/gateway"
)

// Stream-mode log codes.
const (
	CodeServing    bridge.Code = 301 // info: listening
	CodeBadRequest bridge.Code = 302 // debug: a request refused by the parser (4xx)
	CodeSlowReader bridge.Code = 303 // info: a client took nothing for its stall limit; connection closed
	CodeSocket     bridge.Code = 304 // error: the ZMQ_STREAM socket failed
	CodeDraining   bridge.Code = 305 // info: shutting down
	CodeNotice     bridge.Code = 306 // debug: a connection notice was not delivered
)

// Defaults for zero Options fields.
const (
	DefaultIdleTimeout   = 60 * time.Second
	DefaultHeaderTimeout = 10 * time.Second
	DefaultBodyTimeout   = 60 * time.Second
	maxPipeline          = 32 // requests answered out of one connection at a time
)

// Options configure a Server; zero values are the defaults above.
type Options struct {
	IdleTimeout   time.Duration // keep-alive connection with nothing to do
	HeaderTimeout time.Duration // from a request's first byte to its last header
	BodyTimeout   time.Duration // from a request's first byte to its last body byte; a streamed body's longest wait for its client
	Drain         time.Duration // how long Serve waits for requests in flight at shutdown
	Log           *slog.Logger
	// AccessLog takes one line per request (access.go); nil for none. A
	// writer with an Off method (gateway.ReopenableLog) is asked once a
	// second whether it takes lines.
	AccessLog io.Writer
}

// Sending. Each client connection has its own queue in libzmq, a pipe to
// the I/O thread that writes to its TCP socket, and ZMQ_SNDHWM bounds every
// such pipe in messages. With sndHWM 2, libzmq holds at most three messages
// for a connection: two queued, and one its I/O thread is writing (with up
// to 8 KiB of smaller ones it batches). A send that finds the queue full
// (EAGAIN, which libzmq reports on the routing-id frame, so no half message
// is left behind) leaves the rest of the answer at the head of the
// connection's queue here. It is tried again whenever the loop wakes, which
// libzmq makes it do when a queue has room again (a command on ZMQ_FD), and
// every retryEvery, in case a call of ours other than ZMQ_EVENTS consumed
// that command; a connection that has taken nothing for a second is tried
// only every retryStalled, so that many clients that stopped reading cost
// little. A connection that takes nothing
// for its stall limit is closed (MODZMQ0303): the route's stream idle
// timeout while a stream is at the head of its queue, the idle timeout
// otherwise; the sweep checks it once a second. A plain answer goes as one
// message, a streamed piece in messages of at most a sixteenth of the
// stream's window (streamed.go), so libzmq holds little of a stream.
const (
	sndHWM       = 2
	retryEvery   = 10 * time.Millisecond
	retryStalled = 250 * time.Millisecond
)

// Server serves the gateway's routes from one ZMQ_STREAM socket. One
// goroutine owns the socket and waits in Go's netpoller on its ZMQ_FD (a
// goroutine parked in zmq_poll would hold an OS thread in cgo, which costs
// the scheduler a hand-off and sysmon wake-ups on every request); relays
// run in their own goroutines and hand finished responses back through a
// queue, waking the owner by moving its wait's deadline to now.
type Server struct {
	lv   *gateway.Live // the configuration in service, which a reload replaces
	opts Options
	log  *slog.Logger

	access io.Writer // Options.AccessLog
	logOn  bool      // access takes lines (checkLog)
	logBuf []byte    // access log lines the loop has still to write (flushLog)

	sock   *zmq.Socket
	waiter *bridge.FDWaiter // the socket's ZMQ_FD, in the netpoller

	wakeMu  sync.Mutex
	queue   []*slot
	bodies  []*bodyPipe // streamed bodies whose relay waits in Read, or stopped
	wsReady []*wsConn   // WebSockets whose worker sent something (websocket.go)
	pending atomic.Bool

	conns     map[string]*conn
	unsent    map[string]time.Time // closed here, but libzmq did not take the close yet: its queue is full
	flushBy   time.Time            // until then libzmq may still be writing answers to connections closed here
	flushWait time.Duration        // flushWait (a test sets its own)
	blocked   map[*conn]bool       // a send found the connection's queue full
	held      map[*conn]time.Time  // streamed bodies holding bodyHold bytes, since when: the socket is not read (body.go)
	relays    relaySet             // streamed replies after their head (streamed.go)
	readNow   bool                 // the socket is readable again: read it before waiting
	retryAt   time.Time            // when retry has something to try again; zero for nothing
	draining  bool                 // shutting down: open WebSockets close with 1001
	base      context.Context      // cancelled when the server stops
	stop      context.CancelFunc
	inFlight  sync.WaitGroup
	stats     Stats

	peeked       bool            // ZMQ_EVENTS took a message out of its connection's queue, not read yet (events)
	closedPeeked map[string]bool // closes sent since: that message may be the disconnect notice of one of them
}

// Stats counts what the server did.
type Stats struct {
	Connections atomic.Int64 // open now
	Accepted    atomic.Int64
	Requests    atomic.Int64
}

type conn struct {
	id        string // routing id
	hexID     string
	peer      string
	parser    *Parser
	pending   []*slot
	closing   bool // close once pending is flushed
	broken    bool // parser failed: read nothing more
	parsing   bool // parse is on the stack: flush must not re-enter it
	lastIO    time.Time
	lastSent  time.Time // when bytes of an answer were last handed to libzmq
	handed    int       // bytes of pending[0].data handed to libzmq
	stalled   time.Time // since when a send found the queue full and none got through; zero when not blocked
	retryAt   time.Time // a connection stalled for long is tried again from then on
	reqStart  time.Time // first byte of the request being parsed
	cancel    context.CancelFunc
	ctx       context.Context
	opened    chan struct{} // closed once @open notices were answered
	head      *Request      // the request whose head the parser returned
	headErr   int           // status to answer instead of relaying (404, 405)
	headRoute *gateway.Handle
	headVars  map[string]string
	body      *bodyPipe // the request's body is streaming to its relay (body.go)
	ws        *wsConn   // the connection is a WebSocket (websocket.go)
}

// slot is one answer in a connection's queue. A relay goroutine fills data
// and hands the slot to the owner with complete; done, and the connection,
// are the owner's. A streamed reply (st) reuses its slot for each piece.
// A plain answer goes to libzmq as one message; a streamed piece in
// messages of at most st.msgMax bytes.
type slot struct {
	c     *conn
	done  bool   // data is ready to send
	data  []byte // not sent when empty: an empty frame would close the connection
	close bool   // close the connection after the answer
	st    *streamSlot
	ws    *wsConn   // an accepted WebSocket: the connection is one once data went (websocket.go)
	body  *bodyPipe // the request's streamed body (body.go)

	// The access log line's (access.go). req and start are the owner's,
	// set when it makes the slot; status, id and part the relay's, set
	// before it hands the slot over.
	req    *Request // nil: no line (no access log, a 100 Continue, a request refused before its head)
	start  time.Time
	status int      // the answer's
	part   int      // body bytes in data
	id     []byte   // the request id its worker saw, in idBuf while it fits
	idBuf  [40]byte // a bridge's request id: 16 hex digits, '-', a sequence number
	bytes  int64    // body bytes handed to libzmq (the owner's)
	seen   bool     // the owner took the slot from its relay: status and id are set
	logged bool
}

// connHeader is the Connection field a response needs: "close" when the
// connection ends after it, "keep-alive" for an HTTP/1.0 client that asked
// to keep it, none otherwise.
func connHeader(closeAfter bool, minor int) string {
	switch {
	case closeAfter:
		return "close"
	case minor == 0:
		return "keep-alive"
	}
	return ""
}

// New binds a ZMQ_STREAM socket to the listen address (host:port) and
// serves the routes of the gateway lv has in service (see Live.Replace).
func New(lv *gateway.Live, listen string, opts Options) (*Server, error) {
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.HeaderTimeout <= 0 {
		opts.HeaderTimeout = DefaultHeaderTimeout
	}
	if opts.BodyTimeout <= 0 {
		opts.BodyTimeout = DefaultBodyTimeout
	}
	if opts.Drain <= 0 {
		opts.Drain = gateway.DefaultShutdownTimeout
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	s := &Server{lv: lv, opts: opts, log: opts.Log, conns: map[string]*conn{}, flushWait: flushWait,
		unsent: map[string]time.Time{}, closedPeeked: map[string]bool{}, blocked: map[*conn]bool{}, held: map[*conn]time.Time{}, access: opts.AccessLog}
	s.checkLog()
	s.base, s.stop = context.WithCancel(context.Background())
	var err error
	if s.sock, err = zmq.NewSocket(zmq.STREAM); err != nil {
		return nil, err
	}
	s.sock.SetLinger(0)
	s.sock.SetSndtimeo(0)
	if err = s.sock.SetSndhwm(sndHWM); err != nil { // for the connections the bind accepts
		s.sock.Close()
		return nil, fmt.Errorf("ZMQ_SNDHWM: %w", err)
	}
	if err = s.sock.SetRcvhwm(rcvHWM); err != nil {
		s.sock.Close()
		return nil, fmt.Errorf("ZMQ_RCVHWM: %w", err)
	}
	if err = s.sock.Bind("tcp://" + listen); err != nil {
		s.sock.Close()
		return nil, fmt.Errorf("bind %s: %w", listen, err)
	}
	fd, err := s.sock.GetFd()
	if err == nil {
		s.waiter, err = bridge.NewFDWaiter(fd)
	}
	if err != nil {
		s.sock.Close()
		return nil, fmt.Errorf("ZMQ_FD in the netpoller: %w", err)
	}
	return s, nil
}

// Addr returns the bound endpoint, e.g. tcp://127.0.0.1:8082.
func (s *Server) Addr() string {
	ep, _ := s.sock.GetLastEndpoint()
	return ep
}

// OpenConnections reports how many client connections the server tracks.
func (s *Server) OpenConnections() int64 { return s.stats.Connections.Load() }

// Serve runs the socket loop until ctx is done, then stops accepting, lets
// requests in flight finish (up to Options.Drain), closes every connection
// and releases the sockets.
func (s *Server) Serve(ctx context.Context) error {
	defer s.close()
	s.log.Info(CodeServing.String()+": serving HTTP from a ZMQ_STREAM socket", "listen", s.Addr())
	nextSweep := time.Now().Add(time.Second)
	var drainUntil time.Time
	for {
		if drainUntil.IsZero() && ctx.Err() != nil {
			s.log.Info(CodeDraining.String()+": shutting down, draining requests in flight", "grace", s.opts.Drain.String())
			// zmq_unbind would also drop the connections it accepted, so the
			// socket stays bound and new connections are closed at once.
			drainUntil = time.Now().Add(s.opts.Drain)
			s.draining = true
			for _, c := range s.conns {
				if c.ws != nil {
					s.wsClose(c, bridge.CloseGoingAway, "the server is shutting down")
					continue
				}
				c.closing = true
				if len(c.pending) == 0 {
					s.closeConn(c)
				}
			}
		}
		if !drainUntil.IsZero() && s.drained(drainUntil) {
			return nil
		}
		wait := time.Until(nextSweep)
		if drainUntil.IsZero() {
			wait = min(wait, 200*time.Millisecond) // notice ctx soon enough
		} else {
			wait = min(wait, 20*time.Millisecond)
		}
		if !s.retryAt.IsZero() {
			wait = min(wait, time.Until(s.retryAt))
		}
		if s.readNow {
			// The socket was left unread for a streamed body (body.go):
			// ZMQ_FD will not say again that messages wait.
			s.readNow = false
		} else if err := s.wait(max(wait, time.Millisecond)); err != nil {
			s.log.Error(CodeSocket.String()+": waiting on the socket failed", "err", err)
			return err
		}
		s.drainQueue()
		// ZMQ_FD only says that something may have changed, and any send
		// or receive may consume its signal: ZMQ_EVENTS says what is there.
		for {
			ev, err := s.events()
			if err != nil {
				s.log.Error(CodeSocket.String()+": ZMQ_EVENTS failed", "err", err)
				return err
			}
			if ev&zmq.POLLIN == 0 || len(s.held) > 0 {
				break
			}
			if err := s.readStream(drainUntil.IsZero()); err != nil {
				return err
			}
			s.drainQueue()
		}
		s.retry(time.Now())
		if now := time.Now(); now.After(nextSweep) {
			s.sweep(now)
			nextSweep = now.Add(time.Second)
		}
		s.flushLog()
	}
}

// flushWait is how long a drain gives libzmq, once every connection is
// closed, to write the answers it was handed before their connections'
// closes (a client that reads nothing would keep them for ever). libzmq
// says nothing when it has: a connection closed from this side gets no
// disconnect notice.
const flushWait = 2 * time.Second

// drained reports whether a drain may end: every connection is closed and
// flushWait has passed since an answer was last handed to libzmq for a
// connection closed here (flushBy), or the drain time is over. The socket
// closes with no linger, which would drop an answer libzmq still holds.
func (s *Server) drained(until time.Time) bool {
	now := time.Now()
	return now.After(until) || len(s.conns) == 0 && !now.Before(s.flushBy)
}

// flushing notes that libzmq may be writing to a connection closed here
// until t.
func (s *Server) flushing(t time.Time) {
	if t.After(s.flushBy) {
		s.flushBy = t
	}
}

func (s *Server) close() {
	for _, c := range s.conns {
		s.closeConn(c)
	}
	s.stop()
	s.inFlight.Wait()
	s.drainQueue() // WebSockets accepted as the server stopped are closed (websocket.go)
	s.flushLog()
	s.waiter.Close()
	s.sock.Close()
}

// wait parks the loop until the socket's ZMQ_FD is readable, a relay
// finished (complete moves the deadline to now), or d passed.
func (s *Server) wait(d time.Duration) error {
	if err := s.waiter.SetDeadline(time.Now().Add(d)); err != nil {
		return err
	}
	// A relay that finished before the deadline was set found nothing to
	// interrupt: look at the queue after setting it.
	if s.pending.Load() {
		return nil
	}
	return s.waiter.Wait()
}

// events is the socket's ZMQ_EVENTS. When it says POLLIN, libzmq has taken
// the next message out of its connection's queue and keeps it for the next
// receive (stream_t::xhas_in), even if that connection is closed here
// meanwhile: until it is read, sendClose notes the ids it closes, as that
// message may be the disconnect notice of one of them.
func (s *Server) events() (zmq.State, error) {
	ev, err := s.sock.GetEvents()
	if err == nil && ev&zmq.POLLIN != 0 {
		s.peeked = true
	}
	return ev, err
}

// readStream handles every message waiting on the STREAM socket, until a
// streamed body holds as much as it may (body.go).
func (s *Server) readStream(accepting bool) error {
	for i := 0; i < 1024 && len(s.held) == 0; i++ {
		id, err := s.sock.RecvBytes(zmq.DONTWAIT)
		if err != nil {
			if errors.Is(err, zmq.Errno(syscall.EAGAIN)) {
				return nil
			}
			s.log.Error(CodeSocket.String()+": receive failed", "err", err)
			return err
		}
		closedHere := false
		if s.peeked { // the message events took out: nothing of a connection closed since comes after it
			s.peeked = false
			closedHere = s.closedPeeked[string(id)]
			clear(s.closedPeeked)
		}
		c := s.conns[string(id)]
		var data []byte
		if c == nil {
			var md map[string]string
			data, md, err = s.sock.RecvBytesWithMetadata(0, "Peer-Address")
			if err != nil {
				return err
			}
			switch _, closing := s.unsent[string(id)]; {
			case (closing || closedHere) && len(data) == 0:
				delete(s.unsent, string(id)) // the client left before libzmq took the close, or before it was read
			case len(data) > 0:
				// Bytes for a connection closed here whose close libzmq
				// has not taken yet, or taken after they were read: drop
				// them.
			case accepting:
				s.open(string(id), md["Peer-Address"])
			default:
				s.closeID(string(id)) // draining: no new connections
			}
			continue
		}
		if data, err = s.sock.RecvBytes(0); err != nil {
			return err
		}
		if len(data) == 0 {
			s.gone(c)
			continue
		}
		c.lastIO = time.Now()
		if c.ws != nil {
			s.wsData(c, data)
			continue
		}
		if c.broken {
			continue
		}
		if !c.parser.InProgress() {
			c.reqStart = c.lastIO
		}
		if s.overflows(c, len(data)) {
			continue
		}
		c.parser.Feed(data)
		s.parse(c)
	}
	return nil
}

// overflows reports whether n more bytes of c's must be dropped: while c
// parses no further request (answers ahead of it are pending after one that
// closes the connection, or maxPipeline of them; a WebSocket handshake
// waits for its worker), it holds at most MaxHeader + 64 KiB of what the
// client sends meanwhile. Past that, c takes no further request: it closes
// after the answers ahead, and what comes is dropped.
func (s *Server) overflows(c *conn, n int) bool {
	if c.body != nil || !c.closing && len(c.pending) < maxPipeline || c.parser.Buffered()+n <= c.parser.MaxHeader+64<<10 {
		return false
	}
	if !c.closing {
		s.log.Debug(CodeBadRequest.String()+": a client sent on past the requests the connection holds; it closes after their answers",
			"pending", len(c.pending), "connection", c.hexID)
		c.closing = true
	}
	return true
}

func (s *Server) open(id, peer string) {
	ctx, cancel := context.WithCancel(s.base)
	c := &conn{id: id, hexID: hex.EncodeToString([]byte(id)), peer: peer, parser: NewParser(),
		lastIO: time.Now(), ctx: ctx, cancel: cancel}
	s.conns[id] = c
	s.stats.Connections.Add(1)
	s.stats.Accepted.Add(1)
	c.opened = s.notify(c, "@open")
}

// gone forgets a connection the client closed; relays in flight are
// cancelled, and a streamed body ends for its relay.
func (s *Server) gone(c *conn) {
	delete(s.conns, c.id)
	delete(s.blocked, c)
	for _, sl := range c.pending {
		if sl.seen {
			s.logSlot(sl, true) // the others when their relay hands them over
		}
	}
	if c.body != nil {
		c.body.fail(errClientGone)
		c.body = nil
	}
	s.release(c)
	s.wsGone(c)
	s.stats.Connections.Add(-1)
	c.cancel()
	s.notify(c, "@close")
}

// closeConn closes a connection from this side.
func (s *Server) closeConn(c *conn) {
	if s.conns[c.id] != c {
		return
	}
	if !c.lastSent.IsZero() {
		s.flushing(c.lastSent.Add(s.flushWait))
	}
	s.closeID(c.id)
	s.gone(c)
}

// closeID closes connection id from this side. libzmq writes what the
// connection's queue holds, then closes it; after it took the close nothing
// more of that connection's is read, not even a disconnect notice, but for
// the message ZMQ_EVENTS may have taken out before (events). When the
// queue is full the close waits in unsent and is tried again with the
// blocked sends: a client that reads nothing at all keeps its TCP
// connection, and the at most three messages libzmq holds for it, until it
// reads or goes away.
func (s *Server) closeID(id string) {
	if !s.sendClose([]byte(id)) {
		now := time.Now()
		s.unsent[id] = now
		s.retryBy(now.Add(retryEvery))
	}
}

// sendClose asks libzmq to close a connection: an empty frame after its id.
// The second frame goes only if the first was taken: a lone data frame would
// be read as the next message's id and shift every message after it. It
// returns false when the connection's queue is full.
func (s *Server) sendClose(id []byte) bool {
	if s.peeked {
		s.closedPeeked[string(id)] = true
	}
	_, err := s.sock.SendBytes(id, zmq.SNDMORE|zmq.DONTWAIT)
	if err == nil {
		s.sock.SendBytes(nil, zmq.DONTWAIT)
	}
	return !errors.Is(err, zmq.Errno(syscall.EAGAIN)) // any other error: the connection is gone
}

// relay relays req, of request r, on route h. A route a reload retired
// between its match and now (its client closed) is matched again on the
// configuration in service. id, when not nil, gets the request id the
// worker saw (gateway.Relay).
func (s *Server) relay(ctx context.Context, h *gateway.Handle, req *bridge.Request, r *Request, id *[]byte) (bridge.Response, error) {
	resp, err := s.lv.Gateway().Relay(ctx, h, req, id)
	if h2 := s.rematch(h, r, err); h2 != nil {
		return s.lv.Gateway().Relay(ctx, h2, req, id)
	}
	return resp, err
}

// relayBody is relay for a streamed body (gateway.RelayBody).
func (s *Server) relayBody(ctx context.Context, h *gateway.Handle, req *bridge.Request, body io.Reader, r *Request, id *[]byte) (bridge.Response, error, error) {
	resp, _, readErr, err := s.lv.Gateway().RelayBody(ctx, h, req, body, id) // the caller stops body, which ends a read that waits
	if h2 := s.rematch(h, r, err); h2 != nil {
		resp, _, readErr, err = s.lv.Gateway().RelayBody(ctx, h2, req, body, id) // nothing of the body was read: the client never started
	}
	return resp, readErr, err
}

// rematch is the route r takes now, when err says h was retired by a
// reload; nil otherwise.
func (s *Server) rematch(h *gateway.Handle, r *Request, err error) *gateway.Handle {
	if !errors.Is(err, bridge.ErrClosed) {
		return nil
	}
	if h2, _, status := s.lv.Gateway().Match(httpRequest(r)); status == 0 && h2 != h {
		return h2
	}
	return nil
}

// notify tells routes that asked for it that a connection opened or closed.
// The returned channel closes when every notice was answered (or failed).
func (s *Server) notify(c *conn, what string) chan struct{} {
	g := s.lv.Gateway()
	if !g.ConnectionNotices() {
		return closedChan
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, h := range g.Handles() {
		if !h.Route.ConnectionNotices {
			continue
		}
		meta := g.AppendMeta(nil, h, &gateway.Meta{RemoteAddr: c.peer, Scheme: "http", Protocol: "",
			ConnectionID: c.hexID})
		req := &bridge.Request{Method: []byte(what), Meta: meta}
		s.inFlight.Add(1)
		wg.Add(1)
		go func() {
			defer s.inFlight.Done()
			defer wg.Done()
			if _, err := h.Client.Do(s.base, req, h.Route.TimeoutOrDefault()); err != nil {
				s.log.Debug(CodeNotice.String()+": connection notice not delivered", "notice", what, "route", h.Route.Pattern(), "err", err)
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	return done
}

// closedChan is returned by notify when no route asked for notices.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// parse runs the parser over what c has buffered: it moves a streamed body
// along, and starts the requests it completes, up to the pipelining limit.
func (s *Server) parse(c *conn) {
	c.parsing = true
	defer func() { c.parsing = false }()
	for !c.broken && s.conns[c.id] == c {
		if c.body != nil {
			if !s.feedBody(c) {
				return
			}
			continue // the body is over: the next request
		}
		if c.closing || len(c.pending) >= maxPipeline {
			return
		}
		ev, perr := c.parser.Next()
		if perr != nil {
			s.log.Debug(CodeBadRequest.String()+": bad request", "status", perr.Status, "reason", perr.Reason, "connection", c.hexID)
			c.broken = true
			s.answerError(c, perr.Status, perr.Reason, nil)
			return
		}
		switch ev {
		case NeedMore:
			return
		case Head:
			s.head(c)
		case Done:
			s.start(c, c.parser.Request(), nil)
			c.head, c.headRoute, c.headErr, c.headVars = nil, nil, 0, nil
			if c.parser.Buffered() > 0 {
				c.reqStart = time.Now()
			}
		}
	}
}

// head routes a request whose headers are complete and sets its body limit.
func (s *Server) head(c *conn) {
	r := c.parser.Request()
	c.head = r
	h, vars, status := s.lv.Gateway().Match(httpRequest(r))
	c.headRoute, c.headVars, c.headErr = h, vars, status
	limit := int64(0)
	if h != nil {
		limit = h.Route.MaxBodyOrDefault()
	} else if r.ContentLength != 0 {
		limit = 64 << 10 // a body for nobody: read a little, then give up
	}
	if perr := c.parser.SetBodyLimit(limit); perr != nil {
		if perr.Status == 413 && h != nil {
			s.log.Info(gateway.CodeTooLarge.String()+": request body over max_body", "route", h.Route.Pattern(), "max_body", limit)
		}
		return // Next reports it
	}
	streamed := false
	if h != nil && status == 0 && h.Route.StreamBody && r.ContentLength != 0 {
		// stream_body: relayed now, the body following in parts (body.go).
		c.parser.StreamBody()
		streamed = c.parser.Streaming()
	}
	want100 := r.Expect100 && r.Minor >= 1 && r.ContentLength != 0 && status == 0 // HTTP/1.0 has no 100
	if want100 && !streamed {
		// In the queue, after the answers to the requests before it, as any
		// answer: libzmq may not take it at once.
		c.pending = append(c.pending, &slot{c: c, done: true, data: []byte(continue100)})
		s.flush(c)
	}
	if streamed {
		c.body = newBodyPipe(s, c)
		c.body.want100 = want100 // when its relay first asks for the body (continueBody)
		s.start(c, r, c.body)
	}
}

const continue100 = "HTTP/1.1 100 Continue\r\n\r\n"

// continueBody sends the 100 Continue a streamed body's client waits for,
// once the relay asks for the body, that is once its worker has granted
// credit: a worker that answers at once (a 401) spares the client its
// upload. It goes just before the request's own answer in c's queue.
func (s *Server) continueBody(c *conn, b *bodyPipe) {
	b.want100 = false
	for i, sl := range c.pending {
		if sl.body == b {
			c.pending = slices.Insert(c.pending, i, &slot{c: c, done: true, data: []byte(continue100)})
			s.flush(c)
			return
		}
	}
}

// httpRequest builds what gorilla/mux needs to match r.
func httpRequest(r *Request) *http.Request {
	u, err := url.ParseRequestURI(r.Target)
	if err != nil {
		u = &url.URL{Path: r.Target}
	}
	host := r.Host
	if host == "" && u.Host != "" {
		host = u.Host
	}
	return &http.Request{Method: r.Method, URL: u, Host: host, RequestURI: r.Target, Header: http.Header{}}
}

// start relays a request, or answers it at once if it has no route. The
// request is complete, or its body, when body is not nil, follows through
// body as the worker asks for it.
func (s *Server) start(c *conn, r *Request, body *bodyPipe) {
	s.stats.Requests.Add(1)
	if !r.KeepAlive {
		c.closing = true
	}
	if c.headErr != 0 {
		var extra []byte
		if c.headErr == http.StatusMethodNotAllowed {
			extra = bridge.AppendHeader(nil, "Allow", joinComma(s.lv.Gateway().Allowed(httpRequest(r))))
		}
		s.answerError(c, c.headErr, http.StatusText(c.headErr), extra)
		return
	}
	h := c.headRoute
	if body == nil && isHandshake(h, r) {
		s.startWebSocket(c, r, h)
		return
	}
	sl := &slot{c: c, close: !r.KeepAlive, body: body}
	s.track(sl, r)
	id := idOf(sl)
	connHdr := connHeader(sl.close, r.Minor)
	c.pending = append(c.pending, sl)
	hdr := make([]byte, 0, 256)
	for _, f := range r.Header {
		hdr = bridge.AppendHeader(hdr, f.Name, f.Value)
	}
	req := &bridge.Request{
		Method:  []byte(r.Method),
		Target:  []byte(gateway.StripTarget(h, r.Target)),
		Headers: hdr,
		Meta: s.lv.Gateway().AppendMeta(nil, h, &gateway.Meta{RemoteAddr: c.peer, Scheme: "http", Host: r.Host,
			Protocol: r.Proto, ConnectionID: c.hexID, Vars: c.headVars}),
		Body:         r.Body,
		StreamWindow: h.Route.StreamWindowOrDefault(),
		StreamBody:   body != nil,
	}
	head := r.Method == http.MethodHead
	minor := r.Minor
	ctx, opened := c.ctx, c.opened
	s.inFlight.Add(1)
	go func() {
		defer s.inFlight.Done()
		waitCtx := ctx
		if body != nil {
			waitCtx = body.ctx // a body that held the socket too long ends the wait (sweepHolds)
		}
		select { // workers hear of a connection before its first request
		case <-opened:
			if body != nil {
				body.started.Store(true)
			}
		case <-waitCtx.Done():
		}
		var resp bridge.Response
		var err error
		if body != nil {
			var readErr error
			resp, readErr, err = s.relayBody(body.ctx, h, req, body, r, id)
			body.stop()
			body.cancel()
			if perr := body.failure(); readErr == nil && err != nil && perr != nil {
				readErr = perr // the owner ended the body while the relay waited for the worker
			}
			if readErr != nil {
				// The body broke the parser or its timeout (the connection
				// closes after the answer), or the client went away.
				sl.close = true
				var perr *Error
				if errors.As(readErr, &perr) {
					s.complete(sl, sl.errorAnswer(perr.Status, perr.Reason, nil, "close"))
				} else {
					s.complete(sl, nil)
				}
				return
			}
		} else {
			resp, err = s.relay(ctx, h, req, r, id)
		}
		if err != nil {
			st := bridge.StatusOf(err)
			var extra []byte
			if errors.Is(err, bridge.ErrOverload) {
				extra = []byte("Retry-After: 1\r\n")
			}
			s.complete(sl, sl.errorAnswer(st, http.StatusText(st), extra, connHdr))
			return
		}
		if resp.Stream != nil {
			resp.Stream.SetContext(ctx) // a streamed body's call ran on body.ctx, which ended with the body
			s.relayStream(ctx, sl, h, &resp, head, minor)
			return
		}
		sl.status, sl.part = resp.Status, bodyLen(&resp, head)
		s.complete(sl, response(&resp, head, connHdr))
	}()
}

func joinComma(ss []string) string {
	var b bytes.Buffer
	for i, s := range ss {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(s)
	}
	return b.String()
}

// answerError queues an error answer after the connection's pending ones.
// The connection closes after it when the parser cannot go on (broken) or
// the request asked for it (closing).
func (s *Server) answerError(c *conn, status int, reason string, extra []byte) {
	closeAfter := c.broken || c.closing
	c.closing = closeAfter
	minor := 1
	if c.head != nil {
		minor = c.head.Minor
	}
	sl := &slot{c: c, done: true, close: closeAfter, seen: true}
	sl.data = sl.errorAnswer(status, reason, extra, connHeader(closeAfter, minor))
	s.track(sl, c.head) // none for a request refused before its head
	c.pending = append(c.pending, sl)
	s.flush(c)
}

// complete is called from relay goroutines: it queues the finished slot for
// the socket's owner and wakes it.
func (s *Server) complete(sl *slot, data []byte) {
	sl.data = data
	s.wakeMu.Lock()
	s.queue = append(s.queue, sl)
	wake := !s.pending.Swap(true)
	s.wakeMu.Unlock()
	if wake {
		s.waiter.SetDeadline(time.Now())
	}
}

// drainQueue sends the responses relays finished.
func (s *Server) drainQueue() {
	if !s.pending.Load() {
		return
	}
	s.wakeMu.Lock()
	q, bodies, ws := s.queue, s.bodies, s.wsReady
	s.queue, s.bodies, s.wsReady = nil, nil, nil
	s.pending.Store(false)
	s.wakeMu.Unlock()
	for _, sl := range q {
		sl.done, sl.seen = true, true
		if s.conns[sl.c.id] == sl.c {
			s.flush(sl.c)
		} else {
			s.logSlot(sl, true)
			s.wsDrop(sl)
		}
	}
	s.wsWoken(ws)
	for _, b := range bodies {
		if c := b.c; s.conns[c.id] == c && c.body == b && !c.parsing {
			s.parse(c)
		}
	}
}

// flush sends the answers at the head of c's queue that are ready, in order.
// A streamed reply stays at the head until its last piece: the answers
// behind it wait. An answer libzmq does not take whole stays at the head,
// with what was sent of it, until retry finds room for the rest.
func (s *Server) flush(c *conn) {
	for len(c.pending) > 0 && c.pending[0].done {
		sl := c.pending[0]
		if sl.st != nil && sl.st.abort {
			s.logSlot(sl, false)
			s.closeConn(c) // no terminating chunk: the client sees the response cut short
			return
		}
		if !s.send(c, sl) {
			return // blocked, or the connection is gone
		}
		sl.bytes += int64(sl.part)
		if sl.st != nil && sl.st.more {
			// Handed to the socket: the relay may ask for the next part.
			sl.done, sl.data = false, nil
			c.closing = c.closing || sl.close
			sl.st.sent()
			break
		}
		c.pending[0] = nil
		c.pending = c.pending[1:]
		if sl.req != nil {
			s.logSlot(sl, false)
		}
		if sl.ws != nil {
			s.wsStart(c, sl)
		}
		if sl.close {
			if c.body == nil || c.body != sl.body {
				s.closeConn(c)
				return
			}
			// The rest of this request's body is still to come: the
			// connection closes once it is dropped (body.go).
			c.closing = true
		}
	}
	if len(c.pending) == 0 && c.closing && c.body == nil {
		s.closeConn(c)
		return
	}
	if !c.parsing && !c.broken && c.parser.Buffered() > 0 {
		s.parse(c) // pipelined requests held back by the limit
	}
	if c.ws != nil && !c.parsing && s.conns[c.id] == c {
		s.wsPump(c)
	}
}

// send hands libzmq what is left of sl.data, the answer at the head of c's
// queue, and reports whether all of it went. When the connection's queue is
// full, c joins the blocked connections and the rest waits for retry; a
// connection libzmq no longer has (the client left, its disconnect notice
// still to come) is closed.
func (s *Server) send(c *conn, sl *slot) bool {
	msgMax := len(sl.data)
	if sl.st != nil {
		msgMax = sl.st.msgMax
	}
	for c.handed < len(sl.data) {
		end := min(len(sl.data), c.handed+msgMax)
		_, err := s.sock.SendBytes([]byte(c.id), zmq.SNDMORE|zmq.DONTWAIT)
		if err == nil {
			// Taken whole once the id frame was: the queue had room.
			_, err = s.sock.SendBytes(sl.data[c.handed:end], zmq.DONTWAIT)
		}
		if errors.Is(err, zmq.Errno(syscall.EAGAIN)) {
			if c.stalled.IsZero() {
				c.stalled = time.Now()
				s.blocked[c] = true
				s.retryBy(c.stalled.Add(retryEvery))
			}
			return false
		}
		if err != nil {
			s.log.Info(CodeSlowReader.String()+": client left while an answer was being sent; connection closed", "connection", c.hexID, "err", err)
			s.closeConn(c)
			return false
		}
		c.handed = end
		c.lastIO = time.Now()
		c.lastSent = c.lastIO
		if !c.stalled.IsZero() {
			c.stalled, c.retryAt = time.Time{}, time.Time{}
			delete(s.blocked, c)
		}
	}
	c.handed = 0
	return true
}

// retry tries again the sends and closes that found a connection's queue
// full: those that did less than a second ago, and connections stalled for
// longer every retryStalled (closes waiting longer are left to the sweep).
// It sets retryAt to when it should run again.
func (s *Server) retry(now time.Time) {
	s.retryAt = time.Time{}
	at := s.retryBy
	for c := range s.blocked {
		switch {
		case s.conns[c.id] != c:
			delete(s.blocked, c)
			continue
		case now.Before(c.retryAt):
			at(c.retryAt)
			continue
		}
		s.flush(c)
		switch {
		case !s.blocked[c]:
		case now.Sub(c.stalled) < time.Second:
			at(now.Add(retryEvery))
		default:
			c.retryAt = now.Add(retryStalled)
			at(c.retryAt)
		}
	}
	for id, since := range s.unsent {
		if now.Sub(since) >= time.Second {
			continue
		}
		if s.sendClose([]byte(id)) {
			delete(s.unsent, id)
			s.flushing(now.Add(s.flushWait)) // its queue was full: libzmq writes it now
		} else {
			at(now.Add(retryEvery))
		}
	}
}

// retryBy makes retry run at t or sooner.
func (s *Server) retryBy(t time.Time) {
	if s.retryAt.IsZero() || t.Before(s.retryAt) {
		s.retryAt = t
	}
}

// stallLimit is how long c may take nothing of the answer at the head of
// its queue before it is closed: the stream idle timeout of a streamed
// reply, the idle timeout otherwise.
func (s *Server) stallLimit(c *conn) time.Duration {
	if len(c.pending) > 0 && c.pending[0].st != nil {
		return c.pending[0].st.stall
	}
	return s.opts.IdleTimeout
}

// sweep closes idle connections, requests that arrive too slowly and
// clients that take nothing of their answers for their stall limit.
func (s *Server) sweep(now time.Time) {
	s.checkLog()
	s.sweepHolds(now)
	for id, since := range s.unsent {
		if now.Sub(since) >= time.Second && s.sendClose([]byte(id)) {
			delete(s.unsent, id)
			s.flushing(now.Add(s.flushWait))
		}
	}
	for _, c := range s.conns {
		if c.ws != nil {
			s.wsSweep(c, now)
			continue
		}
		switch {
		case !c.stalled.IsZero():
			if stalled := now.Sub(c.stalled); stalled > s.stallLimit(c) {
				s.log.Info(CodeSlowReader.String()+": client is not reading; connection closed", "connection", c.hexID,
					"stalled", stalled.Round(time.Millisecond).String())
				s.closeConn(c)
			}
		case c.body != nil && s.bodySilent(c, now):
			s.log.Debug(CodeBadRequest.String()+": bad request", "status", http.StatusRequestTimeout,
				"reason", "the client sent nothing of its streamed body for the read timeout", "connection", c.hexID)
			s.endBody(c, fail(http.StatusRequestTimeout, "request not received in time"))
		case len(c.pending) > 0:
			// A relay is in progress: its own timeout bounds it.
		case c.parser.InProgress() && !c.broken:
			limit := s.opts.HeaderTimeout
			if c.head != nil {
				limit = s.opts.BodyTimeout
			}
			if now.Sub(c.reqStart) > limit {
				c.broken = true
				s.answerError(c, http.StatusRequestTimeout, "request not received in time", nil)
			}
		case now.Sub(c.lastIO) > s.opts.IdleTimeout:
			s.closeConn(c)
		}
	}
}

// bodySilent reports whether c's streamed body has waited for its client
// for the read timeout without a byte from it.
func (s *Server) bodySilent(c *conn, now time.Time) bool {
	since, ok := c.body.clientTurn()
	if c.lastIO.After(since) {
		since = c.lastIO
	}
	return ok && now.Sub(since) > s.opts.BodyTimeout
}

// response formats a worker's reply as an HTTP/1.1 response.
func response(resp *bridge.Response, head bool, connection string) []byte {
	body := resp.Body
	if head || resp.Status == 204 || resp.Status == 304 {
		body = nil
	}
	b := appendHead(make([]byte, 0, 128+len(resp.Headers)+len(body)), resp)
	if resp.Status != 204 && resp.Status != 304 {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(len(resp.Body)), 10)
		b = append(b, "\r\n"...)
	}
	if connection != "" {
		b = append(b, "Connection: "...)
		b = append(b, connection...)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	return append(b, body...)
}

// bodyLen is how many body bytes response sends of resp.
func bodyLen(resp *bridge.Response, head bool) int {
	if head || resp.Status == 204 || resp.Status == 304 {
		return 0
	}
	return len(resp.Body)
}

// appendHead appends a response's status line, the worker's header lines
// and Date.
func appendHead(b []byte, resp *bridge.Response) []byte {
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(resp.Status), 10)
	b = append(b, ' ')
	if len(resp.Reason) > 0 {
		b = append(b, resp.Reason...)
	} else {
		b = append(b, http.StatusText(resp.Status)...)
	}
	b = append(b, "\r\n"...)
	b = append(b, resp.Headers...)
	if n := len(resp.Headers); n > 0 && !bytes.HasSuffix(resp.Headers, []byte("\r\n")) {
		b = append(b, "\r\n"...)
	}
	b = append(b, "Date: "...)
	b = appendDate(b)
	return append(b, "\r\n"...)
}

// errorAnswer is an answer stream mode writes itself ("504 Gateway
// Timeout\n"), noted in sl for its access log line (status, body bytes).
func (sl *slot) errorAnswer(status int, reason string, extra []byte, connection string) []byte {
	body := []byte(strconv.Itoa(status) + " " + reason + "\n")
	sl.status, sl.part = status, len(body)
	hdr := append([]byte("Content-Type: text/plain; charset=utf-8\r\n"), extra...)
	return response(&bridge.Response{Status: status, Headers: hdr, Body: body}, false, connection)
}

// dateCache holds the HTTP Date value, formatted once a second.
var dateCache struct {
	sync.Mutex
	sec int64
	val []byte
}

func appendDate(b []byte) []byte {
	now := time.Now()
	dateCache.Lock()
	if dateCache.sec != now.Unix() {
		dateCache.sec = now.Unix()
		dateCache.val = now.UTC().AppendFormat(dateCache.val[:0], http.TimeFormat)
	}
	b = append(b, dateCache.val...)
	dateCache.Unlock()
	return b
}
