package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/internal/wsproto"
)

// Gateway log codes (bridge codes 0101-0108 are shared with the module).
const (
	CodeServing   bridge.Code = 201 // info: listening
	CodeDraining  bridge.Code = 202 // info: shutdown began, draining requests in flight
	CodeStopped   bridge.Code = 203 // info: stopped
	CodeBodyError bridge.Code = 204 // info: reading a request body failed
	CodeNoRoute   bridge.Code = 205 // debug: no route matched
	CodeTooLarge  bridge.Code = 206 // info: request body over max_body (413)
)

// Gateway relays HTTP requests to ZeroMQ workers by route. It is an
// http.Handler; the stream subpackage uses its Match and Relay directly.
type Gateway struct {
	cfg       *Config
	router    *mux.Router // routes with their method matchers
	anyMethod []*mux.Route
	routes    []*Handle
	byRoute   map[*mux.Route]*Handle
	log       *slog.Logger
	ws        webSockets
}

// Handle is one configured route with its bridge client.
type Handle struct {
	Route  *Route
	Client *bridge.Client
}

type handleKey struct{}

// New builds the routes of cfg (which must have passed Check) and their
// bridge clients. Sockets connect lazily; no worker needs to be running.
func New(cfg *Config, log *slog.Logger) (*Gateway, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	g := &Gateway{cfg: cfg, router: mux.NewRouter(), byRoute: map[*mux.Route]*Handle{}, log: log}
	g.router.SkipClean(true) // the target travels as sent; workers decide on ".."
	logf := bridge.RateLimit(func(l bridge.Level, msg string) {
		log.Log(context.Background(), slogLevel(l), msg)
	}, 20, time.Second)
	anyRouter := mux.NewRouter()
	for i := range cfg.Routes {
		rc := &cfg.Routes[i]
		opts := rc.BridgeOptions()
		opts.Log = logf
		client, err := bridge.NewClient(opts)
		if err != nil {
			g.Close()
			return nil, fmt.Errorf("route %s: %w", rc.Pattern(), err)
		}
		h := &Handle{Route: rc, Client: client}
		g.routes = append(g.routes, h)
		g.anyMethod = append(g.anyMethod, matcher(anyRouter.NewRoute(), rc, false))
		mr := matcher(g.router.NewRoute(), rc, true).Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			g.serve(w, r, h)
		}))
		g.byRoute[mr] = h
	}
	g.router.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.log.Debug(CodeNoRoute.String()+": no route", "method", r.Method, "target", r.RequestURI, "host", r.Host)
		http.Error(w, "404 no route for this request", http.StatusNotFound)
	})
	g.router.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", strings.Join(g.Allowed(r), ", "))
		http.Error(w, "405 method not allowed", http.StatusMethodNotAllowed)
	})
	return g, nil
}

func matcher(r *mux.Route, rc *Route, methods bool) *mux.Route {
	if rc.Path != "" {
		r = r.Path(rc.Path)
	} else {
		r = r.PathPrefix(rc.Prefix)
	}
	if rc.Host != "" {
		r = r.Host(rc.Host)
	}
	if methods && len(rc.Methods) > 0 {
		r = r.Methods(rc.Methods...)
	}
	return r
}

func slogLevel(l bridge.Level) slog.Level {
	switch {
	case l <= bridge.LevelError:
		return slog.LevelError
	case l == bridge.LevelWarn:
		return slog.LevelWarn
	case l == bridge.LevelInfo:
		return slog.LevelInfo
	}
	return slog.LevelDebug
}

// Close closes every route's bridge client.
func (g *Gateway) Close() {
	for _, h := range g.routes {
		h.Client.Close()
	}
}

// ConnectionNotices reports whether a route wants connection notices.
func (g *Gateway) ConnectionNotices() bool {
	for _, h := range g.routes {
		if h.Route.ConnectionNotices {
			return true
		}
	}
	return false
}

// Handles returns the configured routes in order.
func (g *Gateway) Handles() []*Handle { return g.routes }

// ServeHTTP routes r.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) { g.router.ServeHTTP(w, r) }

// Match finds the route for r. It returns the handle and mux variables, or a
// status of 404 (no route) or 405 (route exists for other methods).
func (g *Gateway) Match(r *http.Request) (h *Handle, vars map[string]string, status int) {
	var m mux.RouteMatch
	if g.router.Match(r, &m) && g.byRoute[m.Route] != nil {
		return g.byRoute[m.Route], m.Vars, 0
	}
	if errors.Is(m.MatchErr, mux.ErrMethodMismatch) {
		return nil, nil, http.StatusMethodNotAllowed
	}
	return nil, nil, http.StatusNotFound
}

// Allowed lists the methods routes matching r's host and path accept.
func (g *Gateway) Allowed(r *http.Request) []string {
	set := map[string]bool{}
	for i, rt := range g.anyMethod {
		var m mux.RouteMatch
		if rt.Match(r, &m) {
			for _, meth := range g.routes[i].Route.Methods {
				set[meth] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for m := range set {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// connIDKey carries the connection id in a request's context.
type connIDKey struct{}

var nextConnID atomic.Uint64

// ConnContext gives each accepted connection its id; set it as
// http.Server.ConnContext.
func ConnContext(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, connIDKey{}, strconv.FormatUint(nextConnID.Add(1), 10))
}

// Meta holds what a front knows about a request beyond its bytes.
type Meta struct {
	RemoteAddr   string // ip:port
	Scheme       string
	Host         string // as the client sent it, port included or not
	Protocol     string
	ConnectionID string
	Vars         map[string]string
}

// AppendMeta appends the trusted meta lines of MZMQ/1 (docs/PROTOCOL.md)
// except request-id, which the bridge adds.
func (g *Gateway) AppendMeta(dst []byte, h *Handle, m *Meta) []byte {
	ip, port, err := net.SplitHostPort(m.RemoteAddr)
	if err != nil {
		ip, port = m.RemoteAddr, ""
	}
	host := m.Host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		host = hh
	}
	dst = bridge.AppendHeader(dst, "remote-addr", ip)
	dst = bridge.AppendHeader(dst, "remote-port", port)
	dst = bridge.AppendHeader(dst, "scheme", m.Scheme)
	dst = bridge.AppendHeader(dst, "host", safe(strings.ToLower(host)))
	dst = bridge.AppendHeader(dst, "server-name", g.cfg.ServerName)
	dst = bridge.AppendHeader(dst, "protocol", m.Protocol)
	dst = bridge.AppendHeader(dst, "route", h.Route.Pattern())
	dst = bridge.AppendHeader(dst, "connection-id", m.ConnectionID)
	names := make([]string, 0, len(m.Vars))
	for k := range m.Vars {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		dst = bridge.AppendHeader(dst, "var-"+k, safe(m.Vars[k]))
	}
	return dst
}

// safe drops control characters so a value cannot break a line.
func safe(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) < 0 {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

// StripTarget applies the route's strip_prefix to a raw request target.
func StripTarget(h *Handle, target string) string {
	p := h.Route.StripPrefix
	if p == "" || !strings.HasPrefix(target, p) {
		return target
	}
	rest := target[len(p):]
	if rest == "" || rest[0] == '?' {
		rest = "/" + rest
	} else if rest[0] != '/' && !strings.HasSuffix(p, "/") {
		return target // "/apix" does not lose "/api"
	}
	if rest[0] != '/' {
		rest = "/" + rest
	}
	return rest
}

// AppendHeaderLines appends one line per field value of hdr, Host first,
// then names in sorted order (net/http keeps no arrival order between names),
// repeated values each on its own line.
func AppendHeaderLines(dst []byte, host string, hdr http.Header) []byte {
	if host != "" {
		dst = bridge.AppendHeader(dst, "Host", host)
	}
	names := make([]string, 0, len(hdr))
	for k := range hdr {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		for _, v := range hdr[k] {
			dst = bridge.AppendHeader(dst, k, v)
		}
	}
	return dst
}

// Relay sends req over h's client and logs failures with their code. A
// caller that went away (ctx cancelled) is not an error worth a line. When
// id is not nil, *id gets the request id the worker saw (the last
// attempt's; empty when none was sent), in its own array: for the access
// log.
func (g *Gateway) Relay(ctx context.Context, h *Handle, req *bridge.Request, id *[]byte) (resp bridge.Response, err error) {
	if id == nil {
		resp, err = h.Client.Do(ctx, req, h.Route.TimeoutOrDefault())
	} else {
		resp, *id, err = h.Client.DoID(ctx, req, h.Route.TimeoutOrDefault(), (*id)[:0])
	}
	g.logRelayError(ctx, h, err)
	return resp, err
}

// logRelayError logs a relay that failed, unless its client went away.
func (g *Gateway) logRelayError(ctx context.Context, h *Handle, err error) {
	if err != nil && ctx.Err() == nil {
		g.log.Error(fmt.Sprintf("%v: %v", bridge.CodeOf(err), err), "route", h.Route.Pattern(),
			"backend", strings.Join(h.Route.Backend, " "), "status", bridge.StatusOf(err))
	}
}

// EachReplyHeader calls fn for each validated reply header line.
func EachReplyHeader(resp *bridge.Response, fn func(name, value string)) {
	bridge.ParseHeaderLines(resp.Headers, func(n, v []byte) error {
		fn(string(n), string(v))
		return nil
	})
}

func (g *Gateway) serve(w http.ResponseWriter, r *http.Request, h *Handle) {
	if h.Route.WebSocket && wsproto.IsUpgrade(r.Header.Get) {
		g.serveWebSocket(w, r, h)
		return
	}
	max := h.Route.MaxBodyOrDefault()
	if max > 0 && r.ContentLength > max {
		g.log.Info(CodeTooLarge.String()+": request body over max_body", "route", h.Route.Pattern(), "length", r.ContentLength, "max_body", max)
		w.Header().Set("Connection", "close")
		http.Error(w, "413 request body too large", http.StatusRequestEntityTooLarge)
		return
	}
	streamBody := h.Route.StreamBody && r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
	var body []byte
	status := 0
	if !streamBody {
		body, status = readBody(w, r, max)
	}
	if status != 0 {
		if status == http.StatusRequestEntityTooLarge {
			g.log.Info(CodeTooLarge.String()+": request body over max_body", "route", h.Route.Pattern(), "max_body", max)
		} else {
			g.log.Info(CodeBodyError.String()+": reading the request body failed", "route", h.Route.Pattern())
		}
		http.Error(w, http.StatusText(status), status)
		return
	}
	connID, _ := r.Context().Value(connIDKey{}).(string)
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	req := bridge.Request{
		Method:  []byte(r.Method),
		Target:  []byte(StripTarget(h, r.RequestURI)),
		Headers: AppendHeaderLines(nil, r.Host, r.Header),
		Meta: g.AppendMeta(nil, h, &Meta{RemoteAddr: r.RemoteAddr, Scheme: scheme, Host: r.Host,
			Protocol: r.Proto, ConnectionID: connID, Vars: mux.Vars(r)}),
		Body:         body,
		StreamWindow: h.Route.StreamWindowOrDefault(),
		StreamBody:   streamBody,
	}
	var resp bridge.Response
	var err error
	var endRead func() // a read of the body still under way: ended once the answer is out
	if streamBody {
		resp, endRead, status, err = g.relayBody(w, r, h, &req)
		if endRead != nil {
			defer endRead()
		}
		if status != 0 {
			http.Error(w, http.StatusText(status), status)
			return
		}
	} else {
		resp, err = g.Relay(r.Context(), h, &req, accessID(w))
	}
	if err != nil {
		if r.Context().Err() != nil && endRead == nil {
			return // the client went away: nobody to answer
		}
		st := bridge.StatusOf(err)
		if errors.Is(err, bridge.ErrOverload) {
			w.Header().Set("Retry-After", "1")
		}
		http.Error(w, fmt.Sprintf("%d %s", st, http.StatusText(st)), st)
		return
	}
	hdr := w.Header()
	EachReplyHeader(&resp, func(n, v string) { hdr.Add(n, v) })
	if _, ok := hdr["Content-Type"]; !ok {
		hdr["Content-Type"] = nil // the worker chose none: do not sniff one
	}
	if resp.Stream != nil {
		g.serveStream(w, r, h, resp.Stream, resp.Status, endRead == nil)
		return
	}
	hdr.Set("Content-Length", strconv.Itoa(len(resp.Body)))
	w.WriteHeader(resp.Status)
	if r.Method != http.MethodHead {
		w.Write(resp.Body)
	}
}

// relayBody relays req, whose body the worker asks for in parts
// (RelayBody). A status is returned when the client's body is too large
// (413) or unreadable (400); the worker then gets a cancel notice, with
// notices. The limit of max_body is checked in the read (a MaxBytesReader
// without the ResponseWriter, which the reading goroutine must not touch);
// the connection closes after a 413 or 400.
//
// When the answer came while a read of the body still waited for the
// client, endRead is not nil, and the handler calls it once the answer is
// out: it ends the read (a read deadline of now) and waits for it. Until
// then the read waits without a deadline (it notices a client that leaves
// during a streamed reply), the request is full duplex, so that writing the answer does not
// first wait for that read, and over HTTP/1.x the connection closes after
// the answer: the rest of the body is not read. (net/http ends a read
// still under way as the handler returns too; ending it in the handler
// keeps it from racing with the handler's own return.)
//
// timeouts.read bounds each wait for the client's next bytes, not the
// whole body (a large upload on a slow link takes as long as it takes): a
// client that sends nothing for that long gets 408. timeouts.write counts
// from the answer.
func (g *Gateway) relayBody(w http.ResponseWriter, r *http.Request, h *Handle, req *bridge.Request) (resp bridge.Response, endRead func(), status int, err error) {
	max := h.Route.MaxBodyOrDefault()
	rd := io.Reader(r.Body)
	if max > 0 {
		rd = http.MaxBytesReader(nil, r.Body, max)
	}
	rc := http.NewResponseController(w)
	_, idle, write, _ := serverTimeouts(g.cfg)
	body := &pacedBody{r: rd, rc: rc, idle: idle}
	// The server's deadlines count from the request's start (over HTTP/2
	// they are timers on the stream, which run between reads too): the
	// body's reads set their own, and the answer's write deadline counts
	// from the answer.
	rc.SetReadDeadline(time.Time{})
	rc.SetWriteDeadline(time.Time{})
	resp, waitRead, readErr, err := g.RelayBody(r.Context(), h, req, body, accessID(w))
	rc.SetWriteDeadline(time.Now().Add(write))
	if waitRead != nil {
		body.hold()
		rc.EnableFullDuplex() // HTTP/2 always is
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		endRead = func() {
			noteReadEnded(w)
			body.end()
			waitRead()
		}
	}
	if readErr != nil {
		w.Header().Set("Connection", "close")
		var mbe *http.MaxBytesError
		switch {
		case errors.As(readErr, &mbe):
			g.log.Info(CodeTooLarge.String()+": request body over max_body", "route", h.Route.Pattern(), "max_body", max)
			return bridge.Response{}, endRead, http.StatusRequestEntityTooLarge, nil
		case errors.Is(readErr, os.ErrDeadlineExceeded):
			noteReadEnded(w)
			g.log.Info(CodeBodyError.String()+": reading the request body failed: the client sent nothing for timeouts.read",
				"route", h.Route.Pattern(), "read", idle.String())
			return bridge.Response{}, endRead, http.StatusRequestTimeout, nil
		}
		g.log.Info(CodeBodyError.String()+": reading the request body failed", "route", h.Route.Pattern(), "err", readErr.Error())
		return bridge.Response{}, endRead, http.StatusBadRequest, nil
	}
	return resp, endRead, 0, err
}

// pacedBody is a streamed body read from net/http with a read deadline
// of idle for each read, and none between reads; hold lifts the deadline
// of a read under way, or the next, and end makes it fail at once.
type pacedBody struct {
	r     io.Reader
	rc    *http.ResponseController
	idle  time.Duration
	mu    sync.Mutex
	held  bool
	ended bool
}

func (b *pacedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.ended {
		b.mu.Unlock()
		return 0, os.ErrDeadlineExceeded
	}
	if !b.held {
		b.rc.SetReadDeadline(time.Now().Add(b.idle))
	}
	b.mu.Unlock()
	n, err := b.r.Read(p)
	b.mu.Lock()
	if !b.held && !b.ended {
		b.rc.SetReadDeadline(time.Time{})
	}
	b.mu.Unlock()
	return n, err
}

func (b *pacedBody) hold() {
	b.mu.Lock()
	if !b.ended {
		b.held = true
		b.rc.SetReadDeadline(time.Time{})
	}
	b.mu.Unlock()
}

func (b *pacedBody) end() {
	b.mu.Lock()
	b.ended = true
	b.rc.SetReadDeadline(time.Now())
	b.mu.Unlock()
}

// RelayBody relays req (req.StreamBody set), whose body the worker asks for
// in parts: each part is read from body only once the worker has granted
// credit for it, and at most bridge.BodyPart bytes at a time, so a front
// holds at most one part of it. The reads happen in a goroutine, one at a time,
// while the call waits on the worker and on the read at once: a worker
// that answers before the body is complete ends the upload even while a
// read waits for a client that has paused, and no part goes out after the
// answer. RelayBody then returns with that read still waiting, and
// waitRead, which waits for it to end: the front ends it once it has
// answered (the HTTP mode with a read deadline, stream mode by stopping
// its body pipe). What it reads is dropped. waitRead is nil when no read
// waits. A read error other than io.EOF ends the call (the worker gets a
// cancel notice, with notices) and is returned as readErr, for the front
// to answer; err is then nil. body's reads must end when ctx does. id is
// Relay's. Both fronts use it: the HTTP mode reads the body from net/http,
// stream mode from its own parser.
func (g *Gateway) RelayBody(ctx context.Context, h *Handle, req *bridge.Request, body io.Reader, id *[]byte) (resp bridge.Response, waitRead func(), readErr, err error) {
	call := h.Client.Start(ctx, req, h.Route.TimeoutOrDefault())
	if id != nil {
		defer func() { *id = call.ID((*id)[:0]) }() // as Relay does
	}
	var (
		buf     []byte
		reads   = make(chan bodyRead, 1) // the goroutine never waits to hand its read over
		reading bool                     // a read of buf is under way
		done    bool                     // the body's end went out
		timer   *time.Timer
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for !call.Done() {
		if credit := call.BodyCredit(); !reading && !done && credit > bridge.PartCost { // room for one byte at least
			if buf == nil {
				buf = make([]byte, bridge.BodyPart)
			}
			reading = true
			go readPart(body, buf[:min(credit-bridge.PartCost, int64(len(buf)))], reads)
		}
		wait := call.Wait()
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-call.Ready():
			stepQueued(call)
		case <-timer.C:
			stepQueued(call) // and the deadline, a cancelled context, a lost worker
		case rd := <-reads:
			reading = false
			if stepQueued(call); call.Done() {
				if _, cerr := call.Result(); rd.err != nil && rd.err != io.EOF && ctx.Err() != nil && errors.Is(cerr, ctx.Err()) {
					return bridge.Response{}, nil, rd.err, nil // the read failed, and so ended the context
				}
				break // answered while the read waited: what it read is dropped
			}
			switch {
			case rd.err == io.EOF:
				done = true
				call.SendBody(buf[:rd.n], true)
			case rd.err != nil:
				call.Cancel()
				return bridge.Response{}, nil, rd.err, nil
			case rd.n > 0:
				call.SendBody(buf[:rd.n], false)
			}
		}
		timer.Stop()
	}
	if _, cerr := call.Result(); reading && ctx.Err() != nil && errors.Is(cerr, ctx.Err()) {
		// The context ended the call as a read waited: the client left, or
		// the read failed (net/http cancels the request's context then).
		// The read ends with the context, and its error says which.
		if rd := <-reads; rd.err != nil && rd.err != io.EOF {
			return bridge.Response{}, nil, rd.err, nil
		}
		reading = false
	}
	if reading {
		waitRead = func() { <-reads }
	}
	resp, err = call.Result()
	g.logRelayError(ctx, h, err)
	return resp, waitRead, nil, err
}

// stepQueued steps call until it has taken every message queued for it:
// Ready wakes once for any number of them, and Step takes one credit at a
// time (left queued, each would wait for Wait).
func stepQueued(call *bridge.Call) {
	for credit := int64(-1); !call.Done() && call.BodyCredit() != credit; {
		credit = call.BodyCredit()
		call.Step(0)
	}
}

// bodyRead is what one read of a streamed body gave.
type bodyRead struct {
	n   int
	err error
}

// readPart reads one part of a streamed body into p and hands over what
// it got.
func readPart(body io.Reader, p []byte, to chan<- bodyRead) {
	n, err := body.Read(p)
	to <- bodyRead{n, err}
}

// serveStream writes a streamed reply after its head: each part is flushed
// to the client when it arrives (HTTP/1.1 chunks, HTTP/2 DATA frames), and
// asking the stream for the next part after the write returns is what
// grants the worker credit back, so a slow client slows the worker. A
// stream that breaks after the head ends the response abnormally: the
// client's connection closes without the terminating chunk (an HTTP/2
// stream is reset).
//
// Over HTTP/1.x the handler hijacks the connection once the head is out
// and returns: one goroutine then carries the stream (heldStream), and
// what net/http holds for a request in a handler (its goroutine's stack,
// the goroutine that watches for the client's leaving, the connection's
// 4 KiB read and write buffers, the request) goes. The head says
// Connection: close, since the connection cannot go back to net/http after
// the stream. HTTP/2, HEAD, bodyless statuses and a stream that answered a
// streamed body while a read of it still waited (mayHold false: the
// handler ends that read after the stream) stay in the handler.
func (g *Gateway) serveStream(w http.ResponseWriter, r *http.Request, h *Handle, s *bridge.Stream, status int, mayHold bool) {
	idle := h.Route.BridgeOptions().StreamIdleTimeout
	if idle <= 0 {
		idle = bridge.DefaultStreamIdleTimeout
	}
	if mayHold && r.Method != http.MethodHead && r.ProtoMajor == 1 && bodyAllowed(status) && s.Notify(nil) {
		w.Header().Set("Connection", "close")
		if g.holdStream(w, r, h, s, status, idle) {
			return
		}
	} else {
		w.WriteHeader(status)
	}
	defer s.Close()
	if r.Method == http.MethodHead {
		return
	}
	rc := http.NewResponseController(w)
	rc.SetWriteDeadline(time.Now().Add(idle))
	if err := rc.Flush(); err != nil {
		return
	}
	for {
		data, end, err := s.Next()
		if err != nil {
			if r.Context().Err() != nil {
				return // the client went away; Close tells the worker
			}
			g.logStreamBroke(h, err)
			panic(http.ErrAbortHandler) // net/http closes or resets without the end
		}
		if len(data) > 0 {
			rc.SetWriteDeadline(time.Now().Add(idle))
			if _, err := w.Write(data); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		}
		if end {
			return
		}
	}
}

// bodyAllowed reports whether a response of status has a body.
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// logStreamBroke logs a stream that ended abnormally after its head.
func (g *Gateway) logStreamBroke(h *Handle, err error) {
	g.log.Error(fmt.Sprintf("%v: stream ended abnormally: %v", bridge.CodeStream, err), "route", h.Route.Pattern(),
		"backend", strings.Join(h.Route.Backend, " "))
}

// holdStream writes the head of s's response, hijacks the connection and
// starts the goroutine that carries the stream (heldStream.run). It
// reports false, with the head written and the stream still the caller's,
// when the connection cannot be hijacked.
func (g *Gateway) holdStream(w http.ResponseWriter, r *http.Request, h *Handle, s *bridge.Stream, status int, idle time.Duration) bool {
	w.WriteHeader(status) // HTTP/1.1: chunked, as no length is set; HTTP/1.0: ends with the connection
	rc := http.NewResponseController(w)
	rc.SetWriteDeadline(time.Now().Add(idle))
	if rc.Flush() != nil {
		return false
	}
	if r.Context().Err() != nil {
		return false // the client left: the caller's Next reports it
	}
	nc, _, err := rc.Hijack()
	if err != nil {
		return false
	}
	// Bytes net/http read past the request are dropped with its buffers:
	// the connection closes after the stream.
	hs := &heldStream{g: g, h: h, s: s, nc: nc, chunked: r.ProtoAtLeast(1, 1), idle: idle}
	hs.ctx, hs.cancel = context.WithCancel(context.Background())
	s.SetContext(hs.ctx) // net/http cancels the request's when the handler returns
	if rec, ok := w.(*recorder); ok {
		// The access log line is written when the stream ends, with what it
		// wrote and 499 when the client left first.
		rec.later, rec.ResponseWriter = true, nil
		hs.rec = rec
		hs.req = (&http.Request{Method: r.Method, RequestURI: r.RequestURI, Proto: r.Proto, RemoteAddr: r.RemoteAddr}).WithContext(hs.ctx)
	}
	hs.srv, _ = r.Context().Value(http.ServerContextKey).(*http.Server)
	heldStreams.add(hs.srv)
	s.Notify(hs.poke)
	go hs.run()
	return true
}

// heldStream is a streamed reply on a connection its handler hijacked,
// carried by one goroutine (run). While the worker sends nothing the
// goroutine waits for the client's bytes, into a few bytes of its own, so
// that a client that closes ends the stream at once; the worker's parts,
// and the failure of its connection, wake it (bridge.Stream.Notify) by
// moving the read deadline, and the read deadline never lies further than
// the stream's next check (bridge Stream.Due: the idle timeout, a worker
// the endpoint's watch lost). A held stream holds the stream's bridge
// state, the connection and this struct.
type heldStream struct {
	g       *Gateway
	h       *Handle
	s       *bridge.Stream
	nc      net.Conn
	chunked bool // HTTP/1.1: the parts go as chunks; HTTP/1.0: as they are, the end is the connection's
	idle    time.Duration
	ctx     context.Context // cancelled when the client went away
	cancel  context.CancelFunc
	rec     *recorder     // the access log's, when it is on
	req     *http.Request // what the access log line shows of the request
	srv     *http.Server  // whose shutdown waits for the stream (waitHeldStreams)
	ended   bool          // the worker ended the stream (run's own)

	woke     atomic.Bool // the worker may have sent a part
	sleeping atomic.Bool // run waits in Read
	scratch  [64]byte    // the client's bytes, dropped: a client has nothing to say during a stream
}

// heldWakeNow is a read deadline that ends a wait at once.
var heldWakeNow = time.Unix(1, 0)

// poke wakes run: a part may have come (the bridge calls it from the
// goroutine that reads the worker's connection). It returns at once.
func (hs *heldStream) poke() {
	hs.woke.Store(true)
	if hs.sleeping.Load() {
		hs.nc.SetReadDeadline(heldWakeNow)
	}
}

// run carries the stream to its end: it writes each part as it comes, and
// waits for the client in between.
func (hs *heldStream) run() {
	defer hs.finish()
	for hs.forward() && hs.wait() {
	}
}

// forward writes what the worker sent. It reports false when the stream is
// over: ended, broken, or its client gone.
func (hs *heldStream) forward() bool {
	for {
		data, end, ok, err := hs.s.Step(0)
		if err != nil {
			if hs.ctx.Err() == nil {
				hs.g.logStreamBroke(hs.h, err) // the connection closes without the end
			}
			return false
		}
		if !ok {
			return true
		}
		if !hs.write(data, false) {
			hs.cancel() // the client went away, or took nothing for the idle timeout
			return false
		}
		if end {
			hs.ended = true // finish writes the terminating chunk
			return false
		}
	}
}

// wait waits for the client's bytes until a part may have come or the
// stream's next check is due. It reports false when the client went away.
func (hs *heldStream) wait() bool {
	hs.sleeping.Store(true)
	hs.nc.SetReadDeadline(time.Now().Add(max(hs.s.Due(), time.Millisecond)))
	if hs.woke.Swap(false) { // a poke before the deadline was set
		hs.sleeping.Store(false)
		return true
	}
	_, err := hs.nc.Read(hs.scratch[:])
	hs.sleeping.Store(false)
	hs.woke.Store(false) // forward looks at what came
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	hs.cancel()
	return false
}

// write writes a part: one chunk (none for an empty part) and, with end,
// the terminating chunk; unchunked, the bytes as they are. The idle timeout
// bounds the write.
func (hs *heldStream) write(data []byte, end bool) bool {
	if !hs.chunked || (len(data) == 0 && !end) {
		if len(data) == 0 {
			return true
		}
		hs.nc.SetWriteDeadline(time.Now().Add(hs.idle))
		n, err := hs.nc.Write(data)
		hs.count(n)
		return err == nil
	}
	var head [18]byte
	var tail [7]byte
	hb, tb := head[:0], tail[:0]
	if len(data) > 0 {
		hb = append(strconv.AppendInt(hb, int64(len(data)), 16), "\r\n"...)
		tb = append(tb, "\r\n"...)
	}
	if end {
		tb = append(tb, "0\r\n\r\n"...)
	}
	hs.nc.SetWriteDeadline(time.Now().Add(hs.idle))
	var err error
	if _, tcp := hs.nc.(*net.TCPConn); tcp || len(data) > heldCopyMax {
		bufs := net.Buffers{hb, data, tb} // one writev on TCP, no copy
		_, err = bufs.WriteTo(hs.nc)
	} else {
		// TLS: one record for the chunk, not three.
		b := append(append(append(make([]byte, 0, len(hb)+len(data)+len(tb)), hb...), data...), tb...)
		_, err = hs.nc.Write(b)
	}
	if err != nil {
		return false
	}
	hs.count(len(data))
	return true
}

// heldCopyMax is the largest part a held stream copies to write its chunk
// in one piece over a connection without writev (TLS).
const heldCopyMax = 16 << 10

// count adds n body bytes to the access log's count.
func (hs *heldStream) count(n int) {
	if hs.rec != nil {
		hs.rec.bytes += int64(n)
	}
}

// finish closes the stream (the worker gets @cancel when it did not end
// and the route has notices), writes the access log line and, after a
// stream that ended, the terminating chunk, and closes the connection: in
// the order of a response net/http finishes, so that a client that saw the
// end finds the line written.
func (hs *heldStream) finish() {
	hs.s.Close()
	if hs.rec != nil {
		logLine(hs.rec.out, hs.req, hs.rec, hs.rec.start)
	}
	if hs.ended && hs.chunked {
		hs.write(nil, true)
	}
	hs.nc.Close()
	hs.cancel()
	heldStreams.remove(hs.srv)
}

// heldStreams counts, by server, the streams carried on hijacked
// connections, which net/http's Shutdown does not see: Serve waits for
// them after it (waitHeldStreams).
var heldStreams = heldCounts{by: map[*http.Server]*heldCount{}}

type heldCounts struct {
	mu sync.Mutex
	by map[*http.Server]*heldCount
}

type heldCount struct {
	n    int
	none chan struct{} // closed when n falls to 0
}

func (c *heldCounts) add(srv *http.Server) {
	if srv == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	hc := c.by[srv]
	if hc == nil {
		hc = &heldCount{none: make(chan struct{})}
		c.by[srv] = hc
	}
	hc.n++
}

func (c *heldCounts) remove(srv *http.Server) {
	if srv == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if hc := c.by[srv]; hc != nil {
		if hc.n--; hc.n == 0 {
			close(hc.none)
			delete(c.by, srv)
		}
	}
}

// waitHeldStreams waits until srv carries no held stream, or ctx is done.
func waitHeldStreams(ctx context.Context, srv *http.Server) error {
	heldStreams.mu.Lock()
	hc := heldStreams.by[srv]
	heldStreams.mu.Unlock()
	if hc == nil {
		return nil
	}
	select {
	case <-hc.none:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// firstBodyBuffer bounds the buffer readBody allocates before body bytes
// arrive, whatever Content-Length claims: at most this plus one byte.
const firstBodyBuffer = 64 << 10

// readBody reads the whole body within max bytes (0: no limit) into one
// buffer. It returns a non-zero status when the body is too large (413) or
// unreadable (400).
//
// Content-Length never sizes an allocation alone: the buffer starts at
// min(Content-Length, 64 KiB)+1 bytes and doubles only when the bytes
// received fill it, never past Content-Length+1. A body the client claims
// but does not send costs at most 64 KiB; an honest body of up to 64 KiB is
// read into one buffer with no copy, and a larger one is not allocated past
// its length. (The +1 lets the read see EOF without growing.)
func readBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, int) {
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return nil, 0
	}
	rd := io.Reader(r.Body)
	if max > 0 {
		rd = http.MaxBytesReader(w, r.Body, max)
	}
	size := 512
	if r.ContentLength > 0 {
		size = int(min(r.ContentLength, firstBodyBuffer)) + 1
	}
	buf := make([]byte, 0, size)
	for {
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, 0
		}
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return nil, http.StatusRequestEntityTooLarge
			}
			return nil, http.StatusBadRequest
		}
		if len(buf) == cap(buf) {
			size := 2 * cap(buf)
			if cl := r.ContentLength; cl >= int64(len(buf)) && cl < int64(size) {
				size = int(cl) + 1
			}
			buf = append(make([]byte, 0, size), buf...)
		}
	}
}
