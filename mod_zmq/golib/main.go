// Command golib is libmodzmq.so, the Go half of the Apache module: a thin
// c-shared export layer over package bridge. Its interface is described in
// modzmq.h; each export copies its inputs, calls one bridge method, converts
// the error and recovers panics. Nothing here may end the process: it runs
// inside an Apache child alongside every other request.
package main

/*
#include <stdlib.h>
#include "modzmq.h"
#include "fast.h"
#include "zmqio.h"
#include "zmtp.h"

static void modzmq_call_log(modzmq_log_fn fn, int level, const char *msg) { fn(level, msg); }
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

func main() {}

var (
	initOnce sync.Once
	logFunc  bridge.LogFunc
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
	err    error
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
		Endpoints:        b.endpoints,
		ConnectTimeout:   b.connectTimeout,
		Heartbeat:        time.Duration(max(cfg.heartbeat_ms, 0)) * time.Millisecond,
		HeartbeatTimeout: time.Duration(cfg.heartbeat_timeout_ms) * time.Millisecond,
		NoHeartbeat:      cfg.heartbeat_ms < 0,
		Retries:          int(cfg.retries),
		RetryAll:         cfg.retry_all != 0,
		MaxReply:         int64(cfg.max_reply),
		Log:              logFunc,
		Transport:        transport,
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

// openClient makes client handle of backend b from opts (or records why it
// cannot): its fast path, unless it speaks CURVE, and its bridge client,
// which starts watching the endpoints. It returns once the endpoints have
// reported, or after 250 ms.
func openClient(handle int, b *backend, opts bridge.Options, optsErr error) *client {
	c := &client{b: b, handle: handle, err: optsErr}
	if c.err == nil {
		c.fast = newFast(handle, &opts)
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
		c.Client, c.err = bridge.NewClient(opts)
	}
	clients[handle].Store(c)
	b.mu.Lock()
	var list []*client
	if old := b.clients.Load(); old != nil {
		list = append(list, *old...)
	}
	list = append(list, c)
	b.clients.Store(&list)
	b.mu.Unlock()
	return c
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

//export modzmq_abi_version
func modzmq_abi_version() C.int { return C.MODZMQ_ABI_VERSION }

//export modzmq_init
func modzmq_init(logfn C.modzmq_log_fn, level C.int, maxProcs C.int) (rc C.int) {
	defer func() {
		if p := recover(); p != nil {
			rc = -1
		}
	}()
	rc = -1
	initOnce.Do(func() {
		if maxProcs > 0 {
			runtime.GOMAXPROCS(int(maxProcs))
		}
		// With the C fast path the common request allocates nothing in Go:
		// the heap stays small, and the default goal (4 MB before the first
		// collection) would let each child's resident size creep up over
		// millions of requests until the collector first runs. A small
		// heap collected sooner costs next to nothing at this size.
		debug.SetGCPercent(25)
		if logfn != nil {
			max := bridge.Level(level)
			logFunc = bridge.RateLimit(func(l bridge.Level, msg string) {
				if l > max {
					return
				}
				cs := C.CString(msg)
				C.modzmq_call_log(logfn, C.int(l), cs)
				C.free(unsafe.Pointer(cs))
			}, 20, time.Second)
		}
		rc = 0
	})
	return rc
}

//export modzmq_backend_open
func modzmq_backend_open(endpoints, routes *C.char, connectTimeoutMS C.int64_t, errbuf *C.char, errlen C.size_t) (handle C.int) {
	defer func() {
		if p := recover(); p != nil {
			setError(errbuf, errlen, fmt.Sprintf("%v: panic: %v", bridge.CodePanic, p))
			handle = 0
		}
	}()
	b := &backend{endpoints: strings.Fields(C.GoString(endpoints)), routes: C.GoString(routes),
		connectTimeout: time.Duration(connectTimeoutMS) * time.Millisecond}
	for _, ep := range b.endpoints {
		if err := bridge.ParseEndpoint(ep); err != nil {
			setError(errbuf, errlen, fmt.Sprintf("%v: %v", bridge.CodeConfig, err))
			return 0
		}
	}
	if len(b.endpoints) == 0 {
		setError(errbuf, errlen, fmt.Sprintf("%v: no endpoints", bridge.CodeConfig))
		return 0
	}
	openMu.Lock()
	defer openMu.Unlock()
	var list []*backend
	if old := backends.Load(); old != nil {
		list = append(list, *old...)
	}
	list = append(list, b)
	backends.Store(&list)
	return C.int(len(list))
}

//export modzmq_clients_open
func modzmq_clients_open(first, n C.int, cfg *C.modzmq_client_config) (rc C.int) {
	defer func() {
		if p := recover(); p != nil {
			logFunc.Logf(bridge.LevelError, bridge.CodePanic, "recovered panic in modzmq_clients_open: %v", p)
			rc = -1
		}
	}()
	if n < 0 || first < 1 || first+n-1 > C.MODZMQ_MAX_CLIENTS {
		return -1
	}
	cfgs := unsafe.Slice(cfg, int(n))
	openMu.Lock()
	defer openMu.Unlock()
	for i := range cfgs {
		if clients[int(first)+i].Load() != nil {
			return -1
		}
	}
	// Each client's first wait for its endpoints runs beside the others'.
	var wg sync.WaitGroup
	for i := range cfgs {
		handle := int(first) + i
		b := lookup(int(cfgs[i].backend))
		if b == nil {
			clients[handle].Store(&client{handle: handle, b: &backend{},
				err: fmt.Errorf("unknown backend handle %d", cfgs[i].backend)})
			continue
		}
		opts, err := clientOptions(b, &cfgs[i])
		wg.Add(1)
		go func() {
			defer wg.Done()
			openClient(handle, b, opts, err)
		}()
	}
	wg.Wait()
	return 0
}

// modzmq_go_relay is modzmq_relay (fast.c) when the fast path cannot take
// the request: no worker up, a connection it could not make or send on, or
// a client without a fast path (CURVE).
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
	if c.err != nil {
		// Unusable settings (a CURVE certificate that cannot be read): the
		// service is unavailable until the operator fixes them.
		setError(&resp.error[0], C.size_t(len(resp.error)), fmt.Sprintf("%v: %s: %v", bridge.CodeConfig, strings.Join(c.b.endpoints, " "), c.err))
		return C.MODZMQ_ENOWORKER
	}
	if c.fast == nil {
		c.b.goWaits.Add(1) // the connection, if one is made, is made in Go
	}
	call := c.Start(context.Background(), request(req), time.Duration(req.timeout_ms)*time.Millisecond)
	return outcome(call, c.b, resp, 0)
}

// request views req; it stays valid while the call is in progress.
func request(req *C.modzmq_request) *bridge.Request {
	return &bridge.Request{
		Method:  view(req.method, req.method_len),
		Target:  view(req.target, req.target_len),
		Headers: view(req.headers, req.headers_len),
		Meta:    view(req.meta, req.meta_len),
		Body:    view(req.body, req.body_len),
	}
}

// callState is the library's state of the call in resp (zmqio.h): the part
// of a modzmq_response the caller never touches.
func callState(resp *C.modzmq_response) *C.modzmq_call {
	return (*C.modzmq_call)(unsafe.Pointer(&resp.state))
}

// pending is a call in progress between modzmq_wait and modzmq_resume.
type pending struct {
	call *bridge.Call
	b    *backend
}

// outcome reports a call for backend b: its result when done, else a
// handle to resume it with and the connection modzmq_wait waits on (none
// when Go waits on it itself, in modzmq_resume).
func outcome(call *bridge.Call, b *backend, resp *C.modzmq_response, h cgo.Handle) C.int {
	st := callState(resp)
	if !call.Done() {
		st.zconn = nil
		if conn, ok := call.Conn().(*zConn); ok {
			st.zconn = unsafe.Pointer(conn.z)
		}
		if h == 0 {
			h = cgo.NewHandle(&pending{call, b})
		}
		st.call = C.uint64_t(h)
		st.wait_ms = C.int(max(call.Wait().Milliseconds(), 1))
		return C.MODZMQ_PENDING
	}
	if h != 0 {
		h.Delete()
	}
	st.call = 0
	st.zconn = nil
	out, err := call.Result()
	if err != nil {
		setError(&resp.error[0], C.size_t(len(resp.error)), fmt.Sprintf("%v: %v", bridge.CodeOf(err), err))
		switch {
		case errors.Is(err, bridge.ErrNoWorker), errors.Is(err, bridge.ErrWorkerLost), errors.Is(err, bridge.ErrOverload):
			return C.MODZMQ_ENOWORKER
		case errors.Is(err, bridge.ErrTimeout):
			return C.MODZMQ_ETIMEOUT
		case errors.Is(err, bridge.ErrProtocol):
			return C.MODZMQ_EPROTOCOL
		}
		return C.MODZMQ_EINTERNAL
	}
	// The reply's parts point into the frames modzmq_wait received. A part
	// that is not inside them is copied into one C block: header lines the
	// bridge rewrote, and a whole reply Go received itself (one that was
	// already queued when the call stepped after a wait ran out, or behind
	// a stale reply it dropped).
	resp.status = C.int(out.Status)
	parts := [3]struct {
		b   []byte
		ptr **C.char
		n   *C.size_t
	}{{out.Body, &resp.body, &resp.body_len}, {out.Reason, &resp.reason, &resp.reason_len}, {out.Headers, &resp.headers, &resp.headers_len}}
	outside := 0
	for _, p := range parts {
		*p.ptr, *p.n = inFrames(resp, p.b)
		if *p.ptr == nil {
			outside += len(p.b)
		}
	}
	if outside > 0 {
		block := C.malloc(C.size_t(outside))
		if block == nil {
			setError(&resp.error[0], C.size_t(len(resp.error)), fmt.Sprintf("%v: out of memory for %d bytes of reply", bridge.CodeSocket, outside))
			return C.MODZMQ_EINTERNAL
		}
		st.block = (*C.char)(block)
		dst := unsafe.Slice((*byte)(block), outside)
		for _, p := range parts {
			if *p.ptr == nil && len(p.b) > 0 {
				n := copy(dst, p.b)
				*p.ptr, *p.n = (*C.char)(unsafe.Pointer(&dst[0])), C.size_t(n)
				dst = dst[n:]
			}
		}
	}
	return C.MODZMQ_OK
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

//export modzmq_resume
func modzmq_resume(resp *C.modzmq_response) (rc C.int) {
	defer func() {
		if p := recover(); p != nil {
			setError(&resp.error[0], C.size_t(len(resp.error)), fmt.Sprintf("%v: recovered panic: %v", bridge.CodePanic, p))
			logFunc.Logf(bridge.LevelError, bridge.CodePanic, "recovered panic in modzmq_resume: %v", p)
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
	deliver(p.call, resp)
	wait := goWait(p.call)
	if wait > 0 {
		p.b.goWaits.Add(1)
	}
	p.call.Step(wait)
	return outcome(p.call, p.b, resp, h)
}

// goWait is how long a step of call waits in Go: not at all on the
// connections C waits on (modzmq_wait), a slice of the call's wait on the
// others (CurveZMQ, bridge.ZMTP), where the Apache thread waits in Go.
func goWait(call *bridge.Call) time.Duration {
	switch call.Conn().(type) {
	case *zConn, nil:
		return 0
	}
	return call.Wait()
}

// deliver hands what modzmq_wait or the fast path received to the call's
// connection (a zConn: Go's own connections receive for themselves): views
// of its frames.
func deliver(call *bridge.Call, resp *C.modzmq_response) {
	st := callState(resp)
	if st.nframes == 0 || call.Done() {
		return
	}
	frames := make([][]byte, st.nframes)
	for i := range frames {
		frames[i] = view(st.frame[i], st.frame_len[i])
	}
	call.Conn().(interface{ deliver([][]byte) }).deliver(frames)
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
