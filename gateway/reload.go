package gateway

import (
	"context"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/internal/status"
)

// Log codes of reloads.
const (
	CodeReloaded     bridge.Code = 210 // info: a reload put a new configuration in service
	CodeReloadFailed bridge.Code = 211 // error: a reload found a bad configuration; the old one serves on
)

// Live is the gateway in service, which a reload replaces without dropping
// a connection or failing a request: a request runs to its end on the
// gateway that took it (streams too), new requests go to the new one, and
// the old one's clients close once its last request is over. Connections
// to workers are shared between the two (bridge sessions are per
// endpoint), so a reload dials nothing that is still configured.
//
// Its status adds up the generations: a route's counters go on from where
// the replaced generations' routes with the same labels left them, and its
// gauges count the requests and streams still open on replaced generations
// (see Status).
type Live struct {
	cur atomic.Pointer[generation]
	// mu orders Replace, Status and the retiring of a replaced generation,
	// so that a scrape sees each generation's counts exactly once.
	mu      sync.Mutex
	retired []*generation            // replaced, still serving
	ended   map[string]*status.Route // by status.Route.Key: the final counts of closed generations' routes
}

// generation is one configuration's gateway and the requests it serves.
type generation struct {
	g       *Gateway
	mu      sync.Mutex
	refs    int
	retired bool
	idle    chan struct{} // closed when retired with no request left
}

// NewLive puts g in service.
func NewLive(g *Gateway) *Live {
	lv := &Live{}
	lv.cur.Store(&generation{g: g, idle: make(chan struct{})})
	return lv
}

// Gateway returns the gateway in service.
func (lv *Live) Gateway() *Gateway { return lv.cur.Load().g }

// acquire returns the generation in service, counting one request on it.
func (lv *Live) acquire() *generation {
	for {
		gen := lv.cur.Load()
		gen.mu.Lock()
		if !gen.retired {
			gen.refs++
			gen.mu.Unlock()
			return gen
		}
		gen.mu.Unlock() // replaced meanwhile: take the new one
	}
}

func (gen *generation) release() {
	gen.mu.Lock()
	gen.refs--
	if gen.retired && gen.refs == 0 {
		close(gen.idle)
	}
	gen.mu.Unlock()
}

// Do runs fn on the gateway in service, which stays open until fn returns.
func (lv *Live) Do(fn func(g *Gateway)) {
	gen := lv.acquire()
	defer gen.release()
	fn(gen.g)
}

// ServeHTTP serves r on the gateway in service.
func (lv *Live) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	lv.Do(func(g *Gateway) { g.ServeHTTP(w, r) })
}

// Replace puts g in service and closes the gateway it replaces once its
// last request is over; done, when not nil, is closed then.
func (lv *Live) Replace(g *Gateway, done chan<- struct{}) {
	lv.mu.Lock()
	g.ws.inherit(&lv.cur.Load().g.ws)
	old := lv.cur.Swap(&generation{g: g, idle: make(chan struct{})})
	lv.retired = append(lv.retired, old)
	lv.mu.Unlock()
	old.mu.Lock()
	old.retired = true
	if old.refs == 0 {
		close(old.idle)
	}
	old.mu.Unlock()
	go func() {
		<-old.idle
		old.g.WaitWebSockets(context.Background()) // they too run to their end on it
		// Stream mode relays through the clients without holding the
		// generation: wait until none has a request, stream or WebSocket.
		for !old.g.idle() {
			time.Sleep(100 * time.Millisecond)
		}
		old.g.Close()
		lv.retire(old)
		if done != nil {
			close(done)
		}
	}()
}

// idle reports whether no route's client has a request, stream or
// WebSocket open.
func (g *Gateway) idle() bool {
	for _, h := range g.routes {
		if inFlight, _, _ := h.Client.Counters(); inFlight > 0 || h.Client.StreamStats().Open.Load() > 0 {
			return false
		}
	}
	return true
}

// Close closes the gateway in service (after Serve returned).
func (lv *Live) Close() { lv.cur.Load().g.Close() }

// retire keeps the final counts of a replaced generation, now closed, and
// forgets it.
func (lv *Live) retire(old *generation) {
	lv.mu.Lock()
	defer lv.mu.Unlock()
	if lv.ended == nil {
		lv.ended = map[string]*status.Route{}
	}
	for _, r := range old.g.Status() {
		c := r.Counts()
		if e := lv.ended[c.Key()]; e != nil {
			e.Add(&c, true)
		} else {
			lv.ended[c.Key()] = &c
		}
	}
	for i, gen := range lv.retired {
		if gen == old {
			lv.retired = append(lv.retired[:i], lv.retired[i+1:]...)
			break
		}
	}
}

// Status is the status of the gateway in service, with what replaced
// generations add to it, route by route (by their labels, status.Route.Key):
// the requests and streams still open on them, and the counters of them
// all, closed ones too, so that a reload puts no counter back. A route that
// a reload removed shows while a replaced generation still serves it; an
// endpoint that it removed from a route, likewise.
func (lv *Live) Status() []status.Route {
	lv.mu.Lock()
	defer lv.mu.Unlock()
	out := lv.Gateway().Status()
	at := make(map[string]int, len(out))
	for i := range out {
		at[out[i].Key()] = i
	}
	for _, gen := range lv.retired {
		for _, r := range gen.g.Status() {
			if i, ok := at[r.Key()]; ok {
				out[i].Add(&r, true)
			} else {
				at[r.Key()] = len(out)
				out = append(out, r)
			}
		}
	}
	for i := range out {
		if e := lv.ended[out[i].Key()]; e != nil {
			out[i].Add(e, false)
		}
		out[i].Finish()
	}
	return out
}

// AdminHandler is Gateway.AdminHandler for the gateway in service.
func (lv *Live) AdminHandler() http.Handler { return adminHandler(lv.Status) }

// ReopenableLog is an access log file that Reopen opens again (after
// logrotate moved it), or at another path; writes in between wait.
type ReopenableLog struct {
	mu   sync.Mutex
	path string
	w    io.Writer
	f    *os.File // w when it is a file of ours
}

// OpenReopenableLog opens an access_log setting (see OpenAccessLog).
func OpenReopenableLog(where string) (*ReopenableLog, error) {
	l := &ReopenableLog{}
	return l, l.Reopen(where)
}

// Reopen opens where (an access_log setting) and closes what was open
// before; on an error the old file stays in use.
func (l *ReopenableLog) Reopen(where string) error {
	w, err := OpenAccessLog(where)
	if err != nil {
		return err
	}
	f, _ := w.(*os.File)
	if f == os.Stdout || f == os.Stderr {
		f = nil
	}
	l.mu.Lock()
	old := l.f
	l.path, l.w, l.f = where, w, f
	l.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Write writes one log line; a log set to "off" takes nothing.
func (l *ReopenableLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w == nil {
		return len(b), nil
	}
	return l.w.Write(b)
}

// Off reports whether the log takes nothing.
func (l *ReopenableLog) Off() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w == nil
}

// Close closes the file, if one is open.
func (l *ReopenableLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		return l.f.Close()
	}
	return nil
}
