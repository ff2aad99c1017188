// Package relay is the request path inside Apache children: the C relay
// that runs on Apache threads (relay.h: the ZMTP client, MZMQ/1 encoding and
// reply check, the pool, the wait) and the Go that manages it: the clients
// and their options, dialing, adopting the requests C hands over, endpoint
// state and statistics. libmodzmq.so's exports (mod_zmq/golib) call it.
package relay

/*
#cgo CFLAGS: -I${SRCDIR}/../golib
#include <stdlib.h>
#include "relay.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/cgo"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/modzmq/modzmq/bridge"
)

var (
	logFunc bridge.LogFunc
	// backends is copy-on-write: handles are opened in child_init, before
	// Apache starts its request threads, and read on every request.
	backends atomic.Pointer[[]*backend]
	openMu   sync.Mutex
	// clients holds each client by its handle (modzmq.h), the same number
	// the shim and fast.c use.
	clients [C.MODZMQ_MAX_CLIENTS + 1]atomic.Pointer[client]
	// transport gives the request path raw sockets to wait on in C.
	transport = &cTransport{}
)

// backend is one ZmqBackend endpoint list; its clients are the option sets
// the configuration uses it with.
type backend struct {
	endpoints      []string
	routes         string // the <Location>s using it, for status pages
	vhosts         string // their virtual hosts (name:port), for status pages and labels
	connectTimeout time.Duration
	mu             sync.Mutex
	clients        atomic.Pointer[[]*client] // copy-on-write, for publish
	// goEntries counts the calls into Go the request path made for it from
	// Apache threads (modzmq_go_relay, _go_adopt, _go_dial, _resume): the
	// fast path makes none for a warm, plain request (zmq-status shows the
	// sum as go_entries).
	goEntries atomic.Int64
	// goWaits counts those that could wait inside Go (go_waits): a step of
	// a call on a connection Go reads itself, a relay that dials in Go
	// (ZmqCurve). None for any other request.
	goWaits atomic.Int64
}

// client is a bridge client with its C fast path (fast.h), which relays the
// common case without entering Go. err, when set, is why its options cannot
// be used; it has no bridge client then.
type client struct {
	*bridge.Client
	b      *backend
	fast   *C.modzmq_fast
	handle int
	window int64 // its requests' StreamWindow
	err    error
	// Made on first use (start): a prefork child serves few locations, and
	// one per location and endpoint would otherwise connect at its start.
	once sync.Once
	opts bridge.Options
}

func clientAt(h C.int) *client {
	if h < 1 || h > C.MODZMQ_MAX_CLIENTS {
		return nil
	}
	return clients[h].Load()
}

// clientOptions is where a client's configuration (modzmq_client_config)
// becomes bridge options: a new per-location option is read here.
func clientOptions(b *backend, cfg *C.modzmq_client_config) (bridge.Options, error) {
	opts := bridge.Options{
		Endpoints:         b.endpoints,
		ConnectTimeout:    b.connectTimeout,
		Heartbeat:         time.Duration(max(cfg.heartbeat_ms, 0)) * time.Millisecond,
		HeartbeatTimeout:  time.Duration(cfg.heartbeat_timeout_ms) * time.Millisecond,
		NoHeartbeat:       cfg.heartbeat_ms < 0,
		Retries:           int(cfg.retries),
		RetryAll:          cfg.retry_all != 0,
		MaxReply:          int64(cfg.max_reply),
		Log:               logFunc,
		Transport:         transport,
		Notices:           cfg.notices != 0,
		StreamIdleTimeout: time.Duration(cfg.stream_idle_ms) * time.Millisecond,
	}
	if cfg.curve_server_cert != nil {
		curve, err := bridge.LoadCurve(C.GoString(cfg.curve_server_cert), C.GoString(cfg.curve_client_cert))
		if err != nil {
			return opts, err
		}
		opts.Curve = curve
	}
	return opts, nil
}

// start makes the client's fast path, unless it speaks CURVE, and its
// bridge client, which starts watching the endpoints, once; it does not wait
// for their first reports (the first request goes through Go, which tries
// them). Its fast path serves the requests after it.
func (c *client) start() {
	c.once.Do(c.open)
}

func (c *client) open() {
	if c.err != nil {
		return
	}
	b, opts, handle, window := c.b, c.opts, c.handle, c.window
	opts.NoFirstWait = true
	c.fast = newFast(handle, &opts, window)
	// A call that waits in C steps when the count of new epochs moves
	// (modzmq_wait): the fast path counts them as it learns them, and
	// without it every change of state counts.
	opts.OnState = func(int, bridge.State, uint64) { C.modzmq_epochs_bump() }
	if c.fast != nil {
		opts.OnState = func(endpoint int, state bridge.State, epoch uint64) {
			up := C.int(0)
			if state == bridge.StateUp {
				up = 1
			}
			C.modzmq_fast_set_state(c.fast, C.int(endpoint), up, C.uint64_t(epoch))
		}
		pool := &fastPool{cTransport: transport, fast: c.fast, endpoints: b.endpoints}
		opts.Transport = pool
		opts.Reuse = pool.reuse
	}
	if c.Client, c.err = bridge.NewClient(opts); c.err != nil {
		return
	}
	if c.fast != nil {
		C.modzmq_fast_publish(c.fast) // the fast path's calls into Go find c.Client set
	}
	b.mu.Lock()
	var list []*client
	if old := b.clients.Load(); old != nil {
		list = append(list, *old...)
	}
	list = append(list, c)
	b.clients.Store(&list)
	b.mu.Unlock()
}

// fastPool is the transport of a client with a fast path: the fast path's
// pool (fast.c) is the client's only pool. Go takes an idle connection from
// it before making one (Dial) and gives back every connection it is done
// with (reuse), so no connection is made while another to the same
// endpoint sits idle, and the pool's sweeps and bound cover them all.
type fastPool struct {
	*cTransport
	fast      *C.modzmq_fast
	endpoints []string
}

func (p *fastPool) Dial(endpoint string, opts bridge.DialOptions) (bridge.Conn, error) {
	for i, ep := range p.endpoints {
		if ep != endpoint {
			continue
		}
		if z := C.modzmq_fast_take(p.fast, C.int(i)); z != nil {
			return &zConn{z: z}, nil
		}
		break
	}
	return p.cTransport.Dial(endpoint, opts)
}

// reuse is the client's Options.Reuse: a connection goes back to the fast
// path's pool, or is closed when the pool is full (FAST_MAX_IDLE).
func (p *fastPool) reuse(endpoint int, conn bridge.Conn) bool {
	z, ok := conn.(*zConn)
	if !ok {
		return false
	}
	if C.modzmq_fast_put(p.fast, C.int(endpoint), z.z) == 0 {
		z.Close()
	}
	return true
}

func init() { C.relay_register_go() }

// SetLog sets where the library's log lines go; before any other call.
func SetLog(fn bridge.LogFunc) { logFunc = fn }

var initOnce sync.Once

// Init starts the library in this process (modzmq_init), once: maxProcs
// > 0 sets GOMAXPROCS, and emit, when set, receives log lines up to level
// (Apache's severities), at most 20 a second per code. false when called
// twice, or when starting panicked.
func Init(maxProcs, level int, emit func(level int, msg string)) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			ok = false
		}
	}()
	initOnce.Do(func() {
		if maxProcs > 0 {
			runtime.GOMAXPROCS(maxProcs)
		}
		// With the C fast path the common request allocates nothing in Go:
		// the heap stays small, and the default goal (4 MB before the first
		// collection) would let each child's resident size creep up over
		// millions of requests until the collector first runs. A small
		// heap collected sooner costs next to nothing at this size.
		debug.SetGCPercent(25)
		if emit != nil {
			max := bridge.Level(level)
			SetLog(bridge.RateLimit(func(l bridge.Level, msg string) {
				if l <= max {
					emit(int(l), msg)
				}
			}, 20, time.Second))
		}
		ok = true
	})
	return ok
}

// SetError writes msg, cut to fit and NUL-terminated, into the C buffer of
// size bytes at buf.
func SetError(buf unsafe.Pointer, size int, msg string) {
	setError((*C.char)(buf), C.size_t(size), msg)
}

// OpenBackend opens a ZmqBackend (modzmq_backend_open): endpoints separated
// by spaces, routes naming its locations and vhosts their virtual hosts for
// status pages and metrics labels. It returns the
// backend's handle (> 0), or an error that carries its log code.
func OpenBackend(endpoints, routes, vhosts string, connectTimeout time.Duration) (handle int, err error) {
	defer func() {
		if p := recover(); p != nil {
			handle, err = 0, fmt.Errorf("%v: panic: %v", bridge.CodePanic, p)
		}
	}()
	b := &backend{endpoints: strings.Fields(endpoints), routes: routes, vhosts: vhosts, connectTimeout: connectTimeout}
	for _, ep := range b.endpoints {
		if err := bridge.ParseEndpoint(ep); err != nil {
			return 0, fmt.Errorf("%v: %v", bridge.CodeConfig, err)
		}
	}
	if len(b.endpoints) == 0 {
		return 0, fmt.Errorf("%v: no endpoints", bridge.CodeConfig)
	}
	openMu.Lock()
	defer openMu.Unlock()
	var list []*backend
	if old := backends.Load(); old != nil {
		list = append(list, *old...)
	}
	list = append(list, b)
	backends.Store(&list)
	return len(list), nil
}

// OpenClients makes clients first .. first+n-1 from the n
// modzmq_client_configs at cfg (modzmq_clients_open); false when a handle is
// out of range or taken.
func OpenClients(first, n int, cfg unsafe.Pointer) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			logFunc.Logf(bridge.LevelError, bridge.CodePanic, "recovered panic in modzmq_clients_open: %v", p)
			ok = false
		}
	}()
	if n < 0 || first < 1 || first+n-1 > C.MODZMQ_MAX_CLIENTS {
		return false
	}
	cfgs := unsafe.Slice((*C.modzmq_client_config)(cfg), n)
	openMu.Lock()
	defer openMu.Unlock()
	for i := range cfgs {
		if clients[first+i].Load() != nil {
			return false
		}
	}
	for i := range cfgs {
		handle := first + i
		b := lookup(int(cfgs[i].backend))
		if b == nil {
			clients[handle].Store(&client{handle: handle, b: &backend{},
				err: fmt.Errorf("unknown backend handle %d", cfgs[i].backend)})
			continue
		}
		opts, err := clientOptions(b, &cfgs[i])
		clients[handle].Store(&client{b: b, handle: handle, window: int64(cfgs[i].stream_window), opts: opts, err: err})
	}
	return true
}

// modzmq_go_relay is the relay callback (relay.h): modzmq_relay when the
// fast path cannot take the request: no worker up, a connection it could
// not make or send on, or a client without a fast path (CURVE).
//
//export modzmq_go_relay
func modzmq_go_relay(handle C.int, req *C.modzmq_request, resp *C.modzmq_response) (rc C.int) {
	defer func() {
		if p := recover(); p != nil {
			setError(&resp.error[0], C.size_t(len(resp.error)), fmt.Sprintf("%v: recovered panic: %v", bridge.CodePanic, p))
			logFunc.Logf(bridge.LevelError, bridge.CodePanic, "recovered panic in modzmq_relay: %v", p)
			rc = C.MODZMQ_EINTERNAL
		}
	}()
	c := clientAt(handle)
	if c == nil {
		setError(&resp.error[0], C.size_t(len(resp.error)), fmt.Sprintf("%v: unknown client handle %d", bridge.CodeConfig, handle))
		return C.MODZMQ_EBACKEND
	}
	c.b.goEntries.Add(1)
	c.start()
	if c.err != nil {
		// Unusable settings (a CURVE certificate that cannot be read): the
		// service is unavailable until the operator fixes them.
		setError(&resp.error[0], C.size_t(len(resp.error)), fmt.Sprintf("%v: %s: %v", bridge.CodeConfig, strings.Join(c.b.endpoints, " "), c.err))
		return C.MODZMQ_ENOWORKER
	}
	if c.fast == nil {
		c.b.goWaits.Add(1) // the connection, if one is made, is made in Go
	}
	if req.websocket != 0 {
		return c.openWebSocket(req, resp)
	}
	call := c.Start(context.Background(), c.request(req), time.Duration(req.timeout_ms)*time.Millisecond)
	if req.stream_body != 0 {
		// C may send the body's parts after the first (lendBody).
		return outcome(call, c.b, c.fast, resp, cgo.NewHandle(&pending{call: call, b: c.b, fast: c.fast}))
	}
	return outcome(call, c.b, c.fast, resp, 0)
}

// request views req; it stays valid while the call is in progress.
func (c *client) request(req *C.modzmq_request) *bridge.Request {
	return &bridge.Request{
		Method:       view(req.method, req.method_len),
		Target:       view(req.target, req.target_len),
		Headers:      view(req.headers, req.headers_len),
		Meta:         view(req.meta, req.meta_len),
		Body:         view(req.body, req.body_len),
		StreamWindow: c.window,
		StreamBody:   req.stream_body != 0,
	}
}

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// callState is the library's state of the call in resp (zmqio.h): the part
// of a modzmq_response the caller never touches.
func callState(resp *C.modzmq_response) *C.modzmq_call {
	return (*C.modzmq_call)(unsafe.Pointer(&resp.state))
}

// pending is a call in progress between modzmq_wait and modzmq_resume: a
// request waiting for its reply, or a stream after its head.
type pending struct {
	call   *bridge.Call
	stream *bridge.Stream
	ws     *wsTunnel // a WebSocket handshake, and the WebSocket once accepted
	b      *backend
	fast   *C.modzmq_fast // the client's fast path: what C relays of a body or stream it counts there
}

// outcome reports a call for backend b, whose client's fast path is fast
// (nil when it has none): its result when done, else a handle to resume it
// with and the connection modzmq_wait waits on (none when Go waits on it
// itself, in modzmq_resume).
func outcome(call *bridge.Call, b *backend, fast *C.modzmq_fast, resp *C.modzmq_response, h cgo.Handle) C.int {
	st := callState(resp)
	noteCall(st, call)
	if !call.Done() {
		if h == 0 {
			h = cgo.NewHandle(&pending{call: call, b: b, fast: fast})
		}
		resp.body_credit = C.int64_t(call.BodyCredit())
		rc := waitOn(resp, h, call.Conn(), call.Wait(), call.Quiet())
		lendBody(resp, call, h.Value().(*pending).fast)
		return rc
	}
	st.body.on = 0
	resp.body_credit = 0
	out, err := call.Result()
	if err == nil && out.WebSocket != nil {
		return upgrade(resp, h, out)
	}
	if err != nil || out.Stream == nil {
		if h != 0 {
			h.Delete()
		}
		st.call, st.zconn = 0, nil
	}
	if err != nil {
		return failed(resp, err)
	}
	resp.status = C.int(out.Status)
	if out.Stream != nil {
		// The head: the stream's parts follow through modzmq_resume.
		if h == 0 {
			h = cgo.NewHandle(&pending{b: b, fast: fast})
		}
		h.Value().(*pending).stream = out.Stream
		st.call, st.zconn, st.keep = C.uint64_t(h), nil, 1
		if !setParts(resp, nil, out.Reason, out.Headers) {
			z, _ := out.Stream.Conn().(*zConn)
			endStream(out.Stream, z, st, h) // the shim fails the request: nothing steps the stream again
			return C.MODZMQ_EINTERNAL
		}
		return C.MODZMQ_HEAD
	}
	if !setParts(resp, out.Body, out.Reason, out.Headers) {
		return C.MODZMQ_EINTERNAL
	}
	return C.MODZMQ_OK
}

// waitOn reports a call or stream as pending on conn: modzmq_wait waits on
// it for up to wait at a time, and asks for a step when something arrives,
// a worker is lost, or quiet has passed; unless Go waits on it itself (not
// a zConn: a step after every wait).
func waitOn(resp *C.modzmq_response, h cgo.Handle, conn bridge.Conn, wait, quiet time.Duration) C.int {
	st := callState(resp)
	st.zconn = nil
	due := int64(-1)
	if z, ok := conn.(*zConn); ok {
		st.zconn = unsafe.Pointer(z.z)
		due = quiet.Milliseconds()
	}
	st.call = C.uint64_t(h)
	st.wait_ms = C.int(max(wait.Milliseconds(), 1))
	C.modzmq_set_due(resp, C.int64_t(due))
	return C.MODZMQ_PENDING
}

// lendBody lets the C path (fast.c: modzmq_send_body) send the streamed
// body's next parts with the credit in resp's body_credit, when the call
// lends it (bridge.Call.LendBody) on a connection C sends on, until Go next
// looks at the call (reclaimBody).
func lendBody(resp *C.modzmq_response, call *bridge.Call, fast *C.modzmq_fast) {
	st := callState(resp)
	st.body.on = 0
	if st.zconn == nil || fast == nil || st.id_len == 0 {
		return
	}
	f, ok := call.LendBody()
	if !ok {
		return
	}
	resp.body_credit = C.int64_t(f.Sendable)
	st.body.fast = unsafe.Pointer(fast)
	st.body.send_timeout_ms = C.int(max(f.SendTimeout.Milliseconds(), 1))
	st.body.on = 1
}

// reclaimBody takes back what the C path left of the body's credit.
func reclaimBody(resp *C.modzmq_response, call *bridge.Call) {
	if st := callState(resp); st.body.on != 0 {
		st.body.on = 0
		call.ReturnBody(bridge.Flow{Sendable: int64(resp.body_credit)})
	}
}

// failed reports err in resp and returns its code.
func failed(resp *C.modzmq_response, err error) C.int {
	setError(&resp.error[0], C.size_t(len(resp.error)), fmt.Sprintf("%v: %v", bridge.CodeOf(err), err))
	switch {
	case errors.Is(err, bridge.ErrOverload):
		return C.MODZMQ_EOVERLOAD
	case errors.Is(err, bridge.ErrNoWorker), errors.Is(err, bridge.ErrWorkerLost):
		return C.MODZMQ_ENOWORKER
	case errors.Is(err, bridge.ErrTimeout):
		return C.MODZMQ_ETIMEOUT
	case errors.Is(err, bridge.ErrProtocol):
		return C.MODZMQ_EPROTOCOL
	}
	return C.MODZMQ_EINTERNAL
}

// setParts points resp's body, reason and headers at b, reason and
// headers. They point into the frames modzmq_wait received; a part that is
// not inside them is copied into one C block: header lines the bridge
// rewrote, and a whole message Go received itself (one that was already
// queued when the call stepped after a wait ran out, or behind a stale
// reply it dropped). false (with the error set) when memory ran out.
func setParts(resp *C.modzmq_response, body, reason, headers []byte) bool {
	st := callState(resp)
	parts := [3]struct {
		b   []byte
		ptr **C.char
		n   *C.size_t
	}{{body, &resp.body, &resp.body_len}, {reason, &resp.reason, &resp.reason_len}, {headers, &resp.headers, &resp.headers_len}}
	outside := 0
	for _, p := range parts {
		*p.ptr, *p.n = inFrames(resp, p.b)
		if *p.ptr == nil {
			outside += len(p.b)
		}
	}
	if outside == 0 {
		return true
	}
	block := C.malloc(C.size_t(outside))
	if block == nil {
		setError(&resp.error[0], C.size_t(len(resp.error)), fmt.Sprintf("%v: out of memory for %d bytes of reply", bridge.CodeSocket, outside))
		return false
	}
	C.free(unsafe.Pointer(st.block))
	st.block = (*C.char)(block)
	dst := unsafe.Slice((*byte)(block), outside)
	for _, p := range parts {
		if *p.ptr == nil && len(p.b) > 0 {
			n := copy(dst, p.b)
			*p.ptr, *p.n = (*C.char)(unsafe.Pointer(&dst[0])), C.size_t(n)
			dst = dst[n:]
		}
	}
	return true
}

// inFrames returns b as a pointer into the frames held by resp, or nil when
// b is empty or not inside them.
func inFrames(resp *C.modzmq_response, b []byte) (*C.char, C.size_t) {
	if len(b) == 0 {
		return nil, 0
	}
	p := uintptr(unsafe.Pointer(&b[0]))
	st := callState(resp)
	for i := 0; i < int(st.nframes); i++ {
		start := uintptr(unsafe.Pointer(st.frame[i]))
		if p >= start && p+uintptr(len(b)) <= start+uintptr(st.frame_len[i]) {
			return (*C.char)(unsafe.Pointer(&b[0])), C.size_t(len(b))
		}
	}
	return nil, 0
}

// modzmq_go_resume is the resume callback (relay.h): a step of the call in
// resp that the C step of a streamed reply leaves to Go.
//
//export modzmq_go_resume
func modzmq_go_resume(resp *C.modzmq_response) C.int {
	return C.int(Resume(unsafe.Pointer(resp)))
}

// Resume advances the call in the modzmq_response at r (modzmq_resume, in
// Go).
func Resume(r unsafe.Pointer) (rc int) {
	resp := (*C.modzmq_response)(r)
	defer func() {
		if p := recover(); p != nil {
			setError(&resp.error[0], C.size_t(len(resp.error)), fmt.Sprintf("%v: recovered panic: %v", bridge.CodePanic, p))
			logFunc.Logf(bridge.LevelError, bridge.CodePanic, "recovered panic in modzmq_resume: %v", p)
			// The shim answers the error and calls nothing more for the
			// call: end it here (its stream closed, its worker told).
			Cancel(r)
			rc = C.MODZMQ_EINTERNAL
		}
	}()
	h := cgo.Handle(callState(resp).call)
	p, ok := h.Value().(*pending)
	if !ok {
		setError(&resp.error[0], C.size_t(len(resp.error)), fmt.Sprintf("%v: unknown call handle", bridge.CodePanic))
		return C.MODZMQ_EINTERNAL
	}
	p.b.goEntries.Add(1)
	if p.stream != nil {
		return int(streamStep(p, resp, h))
	}
	reclaimBody(resp, p.call)
	deliver(p.call.Conn(), resp)
	wait := goWait(p.call.Conn(), p.call.Wait())
	if wait > 0 {
		p.b.goWaits.Add(1)
	}
	p.call.Step(wait)
	return int(outcome(p.call, p.b, p.fast, resp, h))
}

// streamStep takes the stream's next part: MODZMQ_PART or MODZMQ_END with
// it in body, MODZMQ_PENDING when none has come, or the code of the error
// that broke it (the stream is closed then). On a zConn the parts are read
// into the call state and stay where they arrived, in the connection's
// buffer (modzmq_call.keep): no copy, no allocation, one buffer for the
// whole stream; the shim writes a part before it resumes, which is the next
// read. The last part is copied out, so the connection can go back to the
// pool.
func streamStep(p *pending, resp *C.modzmq_response, h cgo.Handle) C.int {
	s, st := p.stream, callState(resp)
	resp.wait_first = 0
	reclaimStream(st, s)
	z, _ := s.Conn().(*zConn)
	deliver(s.Conn(), resp)
	wait := goWait(s.Conn(), s.Wait())
	if wait > 0 {
		p.b.goWaits.Add(1)
	}
	if z != nil {
		z.into = st
	}
	data, end, ok, err := s.Step(wait)
	if z != nil {
		z.into = nil
	}
	if err != nil {
		endStream(s, z, st, h)
		return failed(resp, err)
	}
	if !ok {
		rc := waitOn(resp, h, s.Conn(), s.Wait(), s.Due())
		lendStream(st, s, p.fast)
		return rc
	}
	if end && z != nil {
		st.nframes = 0 // not inside the frames: setParts copies the last part
	}
	if !setParts(resp, data, nil, nil) {
		endStream(s, z, st, h) // the shim breaks the response: nothing steps the stream again
		return C.MODZMQ_EINTERNAL
	}
	if end {
		endStream(s, z, st, h)
		return C.MODZMQ_END
	}
	if z != nil {
		// Nothing to grant after the write: the shim may wait for the next
		// part in C rather than step for it (a step is a hand-off of Go's
		// scheduler; an SSE event would cost two): pending on the
		// connection, as after a step that found nothing. Either way the
		// C step takes the parts that follow while it can.
		resp.wait_first = cbool(!s.Owes())
		waitOn(resp, h, z, s.Wait(), s.Due())
		lendStream(st, s, p.fast)
	}
	return C.MODZMQ_PART
}

// lendStream lends the C step (fast.c: stream_fast) the stream's credit
// (modzmq_stream_lent) when the stream is open on a connection C waits on:
// it takes the common parts and grants credit until Go's next step.
func lendStream(st *C.modzmq_call, s *bridge.Stream, fast *C.modzmq_fast) {
	st.stream.on = 0
	if st.zconn == nil || fast == nil || st.keep == 0 || !lendStreams {
		return
	}
	f, ok := s.Lend()
	if !ok || len(f.ID) == 0 || len(f.ID) > len(st.id) {
		return
	}
	l := &st.stream
	l.credit, l.owed, l.grant_at, l.grant_queued = C.int64_t(f.Credit), C.int64_t(f.Owed), C.int64_t(f.GrantAt),
		C.int64_t(f.GrantQueued)
	l.idle_ms, l.wait_ms = C.int64_t(f.Idle.Milliseconds()), C.int(max(f.Wait.Milliseconds(), 1))
	l.send_timeout_ms = C.int(max(f.SendTimeout.Milliseconds(), 1))
	l.fast, l.heard_ms = unsafe.Pointer(fast), 0
	st.id_len = C.size_t(copy(unsafe.Slice((*byte)(unsafe.Pointer(&st.id[0])), len(st.id)), f.ID))
	l.on = 1
}

// lendStreams is whether streams are lent to the C step (tests compare).
var lendStreams = true

// reclaimStream takes back the credit lent to the C step, the time of the
// last message it took, and the bytes it counted as buffered, which
// bridge.Stream.Return counts in the client's counters from now on.
func reclaimStream(st *C.modzmq_call, s *bridge.Stream) {
	l := &st.stream
	if l.on == 0 {
		return
	}
	l.on = 0
	f := bridge.Flow{Credit: int64(l.credit), Owed: int64(l.owed)}
	if l.heard_ms != 0 {
		f.Heard = time.Now().Add(-time.Duration(int64(C.zmtp_now_ms())-int64(l.heard_ms)) * time.Millisecond)
	}
	moved := s.Return(f)
	C.modzmq_fast_count((*C.modzmq_fast)(l.fast), C.MODZMQ_STATS_OFF_STREAMS+C.MODZMQ_ST_BUFFERED, C.int64_t(-moved))
}

// endStream closes s, whose connection is z when it is a zConn: the buffer
// that grew to the stream's parts is given back first (what is left of it
// is the pool's from then on).
func endStream(s *bridge.Stream, z *zConn, st *C.modzmq_call, h cgo.Handle) {
	if z != nil {
		C.free(unsafe.Pointer(C.zmtp_detach(z.z)))
	}
	s.Close()
	h.Delete()
	st.call, st.zconn, st.keep = 0, nil, 0
}

// noteCall keeps the request id and endpoint of call's latest attempt in
// st, where modzmq_call_info finds them for the shim's logs.
func noteCall(st *C.modzmq_call, call *bridge.Call) {
	id := call.ID(unsafe.Slice((*byte)(unsafe.Pointer(&st.id[0])), len(st.id))[:0])
	if len(id) == 0 || len(id) > len(st.id) || unsafe.SliceData(id) != (*byte)(unsafe.Pointer(&st.id[0])) {
		return // none, or too long for st.id (appending moved it)
	}
	st.id_len, st.endpoint = C.size_t(len(id)), C.int(call.Endpoint())
}

// modzmq_go_send_body is the send_body callback (relay.h): a part of the
// streamed body of the call in resp that the C path leaves to Go; data is
// valid only during the call, and goes out before it returns.
//
//export modzmq_go_send_body
func modzmq_go_send_body(resp *C.modzmq_response, data *C.char, n C.size_t, last C.int) (rc C.int) {
	defer func() {
		if p := recover(); p != nil {
			setError(&resp.error[0], C.size_t(len(resp.error)), fmt.Sprintf("%v: recovered panic: %v", bridge.CodePanic, p))
			logFunc.Logf(bridge.LevelError, bridge.CodePanic, "recovered panic in modzmq_send_body: %v", p)
			rc = C.MODZMQ_EINTERNAL
		}
	}()
	h := cgo.Handle(callState(resp).call)
	p, ok := h.Value().(*pending)
	if !ok || p.call == nil {
		setError(&resp.error[0], C.size_t(len(resp.error)), fmt.Sprintf("%v: no call to send a body part for", bridge.CodePanic))
		return C.MODZMQ_EINTERNAL
	}
	p.b.goEntries.Add(1)
	reclaimBody(resp, p.call)
	p.call.SendBody(view(data, n), last != 0) // an error ends the call, which outcome reports
	return outcome(p.call, p.b, p.fast, resp, h)
}

// Cancel ends the call in the modzmq_response at r because its client went
// away (modzmq_cancel).
func Cancel(r unsafe.Pointer) {
	resp := (*C.modzmq_response)(r)
	defer func() {
		if p := recover(); p != nil {
			logFunc.Logf(bridge.LevelError, bridge.CodePanic, "recovered panic in modzmq_cancel: %v", p)
		}
	}()
	st := callState(resp)
	h := cgo.Handle(st.call)
	if h == 0 {
		return
	}
	if p, ok := h.Value().(*pending); ok {
		p.b.goEntries.Add(1)
		switch {
		case p.stream != nil:
			reclaimStream(st, p.stream)
			p.stream.Close()
		case p.ws != nil && p.ws.ws != nil:
			if !p.ws.ended {
				p.ws.close(bridge.CloseAbnormal, nil)
			}
		default:
			reclaimBody(resp, p.call)
			p.call.Cancel()
		}
	}
	h.Delete()
	st.call, st.zconn, st.keep = 0, nil, 0
}

// goWait is how long a step waits in Go on conn: not at all on the
// connections C waits on (modzmq_wait), a slice of the call's or stream's
// wait on the others (CurveZMQ, bridge.ZMTP), where the Apache thread waits
// in Go.
func goWait(conn bridge.Conn, wait time.Duration) time.Duration {
	switch conn.(type) {
	case *zConn, nil:
		return 0
	}
	return wait
}

// deliver hands what modzmq_wait or the fast path received to conn (a
// zConn: Go's own connections receive for themselves): views of its frames.
// Once handed over they are not handed over again: the next modzmq_wait or
// modzmq_release replaces them.
func deliver(conn bridge.Conn, resp *C.modzmq_response) {
	st := callState(resp)
	z, ok := conn.(*zConn)
	if st.nframes == 0 || !ok || st.delivered != 0 {
		return
	}
	var frames [][]byte
	if st.keep != 0 {
		frames = z.views[:st.nframes] // a stream's part: nothing kept past the next read
	} else {
		frames = make([][]byte, st.nframes)
	}
	for i := range frames {
		frames[i] = view(st.frame[i], st.frame_len[i])
	}
	z.deliver(frames)
	st.delivered = 1
}

func lookup(handle int) *backend {
	list := backends.Load()
	if list == nil || handle < 1 || handle > len(*list) {
		return nil
	}
	return (*list)[handle-1]
}

// view returns the C buffer p[0:n] as a byte slice without copying. It is
// valid only for the duration of the export call.
func view(p *C.char, n C.size_t) []byte {
	if p == nil || n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), int(n))
}

// setError writes msg, cut to fit and NUL-terminated, into the C buffer.
func setError(buf *C.char, size C.size_t, msg string) {
	if buf == nil || size == 0 {
		return
	}
	dst := unsafe.Slice((*byte)(unsafe.Pointer(buf)), int(size))
	n := copy(dst[:len(dst)-1], msg)
	dst[n] = 0
}
