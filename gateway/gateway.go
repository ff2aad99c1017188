package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
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
// caller that went away (ctx cancelled) is not an error worth a line.
func (g *Gateway) Relay(ctx context.Context, h *Handle, req *bridge.Request) (bridge.Response, error) {
	resp, err := h.Client.Do(ctx, req, h.Route.TimeoutOrDefault())
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
	if streamBody {
		if resp, status, err = g.relayBody(w, r, h, &req); status != 0 {
			http.Error(w, http.StatusText(status), status)
			return
		}
	} else {
		resp, err = g.Relay(r.Context(), h, &req)
	}
	if err != nil {
		if r.Context().Err() != nil {
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
		g.serveStream(w, r, h, resp.Stream, resp.Status)
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
// notices.
func (g *Gateway) relayBody(w http.ResponseWriter, r *http.Request, h *Handle, req *bridge.Request) (bridge.Response, int, error) {
	max := h.Route.MaxBodyOrDefault()
	rd := io.Reader(r.Body)
	if max > 0 {
		rd = http.MaxBytesReader(w, r.Body, max)
	}
	resp, readErr, err := g.RelayBody(r.Context(), h, req, rd)
	if readErr != nil {
		var mbe *http.MaxBytesError
		if errors.As(readErr, &mbe) {
			g.log.Info(CodeTooLarge.String()+": request body over max_body", "route", h.Route.Pattern(), "max_body", max)
			return bridge.Response{}, http.StatusRequestEntityTooLarge, nil
		}
		g.log.Info(CodeBodyError.String()+": reading the request body failed", "route", h.Route.Pattern())
		return bridge.Response{}, http.StatusBadRequest, nil
	}
	return resp, 0, err
}

// BodyPart is the largest part of a streamed request body a front reads
// and sends at once.
const BodyPart = 64 << 10

// RelayBody relays req (req.StreamBody set), whose body the worker asks for
// in parts: each part is read from body only once the worker has granted
// credit for it, and at most BodyPart bytes at a time, so a front holds at
// most one part of it. A worker that answers before the body is complete
// ends the upload; the rest is never read from body. A read error other
// than io.EOF ends the call (the worker gets a cancel notice, with notices)
// and is returned as readErr, for the front to answer; err is then nil.
// Both fronts use it: the HTTP mode reads the body from net/http, stream
// mode from its own parser.
func (g *Gateway) RelayBody(ctx context.Context, h *Handle, req *bridge.Request, body io.Reader) (resp bridge.Response, readErr, err error) {
	call := h.Client.Start(ctx, req, h.Route.TimeoutOrDefault())
	var buf []byte
	done := false
	for !call.Done() {
		credit := call.BodyCredit()
		if done || credit <= bridge.PartCost { // room for one byte at least
			call.Step(call.Wait())
			continue
		}
		if buf == nil {
			buf = make([]byte, BodyPart)
		}
		n, err := body.Read(buf[:min(credit-bridge.PartCost, int64(len(buf)))])
		switch {
		case err == io.EOF:
			done = true
			call.SendBody(buf[:n], true)
		case err != nil:
			call.Cancel()
			return bridge.Response{}, err, nil
		case n > 0:
			call.SendBody(buf[:n], false)
		}
	}
	resp, err = call.Result()
	g.logRelayError(ctx, h, err)
	return resp, nil, err
}

// serveStream writes a streamed reply after its head: each part is flushed
// to the client when it arrives (HTTP/1.1 chunks, HTTP/2 DATA frames), and
// asking the stream for the next part after the write returns is what
// grants the worker credit back, so a slow client slows the worker. A
// stream that breaks after the head ends the response abnormally:
// http.ErrAbortHandler makes net/http close an HTTP/1.1 connection without
// the terminating chunk, and reset an HTTP/2 stream.
func (g *Gateway) serveStream(w http.ResponseWriter, r *http.Request, h *Handle, s *bridge.Stream, status int) {
	defer s.Close()
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	rc := http.NewResponseController(w)
	idle := h.Route.BridgeOptions().StreamIdleTimeout
	if idle <= 0 {
		idle = bridge.DefaultStreamIdleTimeout
	}
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
			g.log.Error(fmt.Sprintf("%v: stream ended abnormally: %v", bridge.CodeStream, err), "route", h.Route.Pattern(),
				"backend", strings.Join(h.Route.Backend, " "))
			panic(http.ErrAbortHandler)
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
