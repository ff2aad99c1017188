package bridge

import (
	"sync"
	"sync/atomic"
	"time"
)

// State is what the bridge knows of an endpoint's reachability.
type State int32

// Endpoint states.
const (
	StateUnknown State = iota // no event yet (starting up)
	StateUp                   // the watch connection completed its handshake
	StateDown                 // the watch connection dropped or cannot connect
)

func (s State) String() string {
	return [...]string{"unknown", "up", "down"}[s]
}

// EndpointStats are the counters of one endpoint, for status pages. All
// fields are safe to read while the client runs.
type EndpointStats struct {
	Connected, Disconnected, ConnectRetried, HandshakeFailed atomic.Int64
	Requests, Replies, Timeouts, NoWorker, Lost, BadReplies  atomic.Int64
	InFlight                                                 atomic.Int64
}

// endpoint is one worker address with its own pool of connections, so the
// bridge always knows which worker holds a request.
type endpoint struct {
	addr  string
	index int // in Options.Endpoints
	state atomic.Int32
	// epoch grows at every disconnect: a request sent in an earlier epoch
	// was on a connection that is gone.
	epoch atomic.Uint64
	stats EndpointStats

	lastUp   time.Time // watch goroutine only
	reported bool      // watch goroutine only: an event came
	flaps    int       // quick disconnects after connecting, watch goroutine only

	mu   sync.Mutex
	idle []*pooled

	// held are the wake-ups of the streams carried by Notify on this
	// endpoint, called when its epoch grows: such a stream steps only when
	// called, so a worker the watch lost must call it.
	heldMu sync.Mutex
	held   map[*Stream]func()
}

// holdStream files (fn set) or drops (fn nil) the wake-up of a stream
// carried by Notify.
func (e *endpoint) holdStream(s *Stream, fn func()) {
	e.heldMu.Lock()
	defer e.heldMu.Unlock()
	if fn == nil {
		delete(e.held, s)
		return
	}
	if e.held == nil {
		e.held = map[*Stream]func(){}
	}
	e.held[s] = fn
}

// wakeHeld calls the wake-up of every stream carried by Notify on this
// endpoint (its epoch grew: each looks whether its worker is gone).
func (e *endpoint) wakeHeld() {
	e.heldMu.Lock()
	fns := make([]func(), 0, len(e.held))
	for _, fn := range e.held {
		fns = append(fns, fn)
	}
	e.heldMu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// pooled is a connection with the scratch space one exchange needs, so that
// steady-state requests allocate only what the transport allocates.
type pooled struct {
	conn   Conn
	id     []byte
	meta   []byte
	frames [][]byte
}

// close releases the connection.
func (p *pooled) close() { p.conn.Close() }

func (e *endpoint) State() State { return State(e.state.Load()) }

func (e *endpoint) get(t Transport, opts DialOptions) (*pooled, error) {
	e.mu.Lock()
	if n := len(e.idle); n > 0 {
		p := e.idle[n-1]
		e.idle = e.idle[:n-1]
		e.mu.Unlock()
		return p, nil
	}
	e.mu.Unlock()
	conn, err := t.Dial(e.addr, opts)
	if err != nil {
		return nil, err
	}
	return &pooled{conn: conn, frames: make([][]byte, 0, 8)}, nil
}

// put returns p to the pool, or closes it when reuse is unsafe or the pool
// is full.
func (e *endpoint) put(p *pooled, reusable bool, maxIdle int, closed bool) {
	e.mu.Lock()
	if reusable && !closed && len(e.idle) < maxIdle {
		e.idle = append(e.idle, p)
		e.mu.Unlock()
		return
	}
	e.mu.Unlock()
	p.close()
}

func (e *endpoint) closeIdle() {
	e.mu.Lock()
	idle := e.idle
	e.idle = nil
	e.mu.Unlock()
	for _, p := range idle {
		p.close()
	}
}
