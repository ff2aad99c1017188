package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/modzmq/modzmq/bridge"
)

// OpenAccessLog returns the writer for an access_log setting: "stdout" or
// "" for standard output, "stderr", "off", or a file opened for appending.
func OpenAccessLog(where string) (io.Writer, error) {
	switch where {
	case "", "stdout":
		return os.Stdout, nil
	case "stderr":
		return os.Stderr, nil
	case "off":
		return nil, nil
	}
	return os.OpenFile(where, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
}

// AccessLog wraps next and writes one line per request (AppendAccessLine).
func AccessLog(next http.Handler, w io.Writer) http.Handler {
	if w == nil {
		return next
	}
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: rw, out: w, start: start}
		rec.id = rec.idBuf[:0]
		defer func() {
			// A response the handler aborts (a stream that broke) is
			// logged too, then the panic goes on to net/http.
			p := recover()
			if !rec.later {
				logLine(w, r, rec, start)
			}
			if p != nil {
				panic(p)
			}
		}()
		next.ServeHTTP(rec, r)
	})
}

// logLine writes the access log line of r. A request whose client went
// away before the handler finished shows 499, whatever was written; a
// context the gateway ended itself (readEnded) does not count.
func logLine(w io.Writer, r *http.Request, rec *recorder, start time.Time) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	status := rec.status
	if status == 0 || r.Context().Err() != nil && !rec.readEnded {
		status = StatusClientGone
	}
	e := AccessEntry{Host: host, Method: r.Method, URI: r.RequestURI, Proto: r.Proto, Start: start,
		Status: status, Bytes: rec.bytes, ID: rec.id}
	w.Write(AppendAccessLine(make([]byte, 0, 192), &e))
}

// StatusClientGone is the status an access log line shows for a request
// whose client went away before its answer ended.
const StatusClientGone = 499

// AccessEntry is what an access log line shows of a request.
type AccessEntry struct {
	Host               string // the client's address, without its port
	Method, URI, Proto string // the request line
	Start              time.Time
	Status             int
	Bytes              int64  // body bytes sent
	ID                 []byte // the request id its worker saw (its last attempt's); empty when none was sent
}

// AppendAccessLine appends e's access log line, the same in both modes:
// Common Log Format (client, start time, request line, status, body bytes),
// then the time taken in seconds and id= the request id the worker saw in
// its meta, or - when the request went to no worker (README "Logs":
// Apache's %{zmq-request-id}n):
//
//	127.0.0.1 - - [30/Nov/2026:15:32:01 +0000] "GET /echo/ids HTTP/1.1" 200 602 0.001301 id=79d1e8337832-1
func AppendAccessLine(line []byte, e *AccessEntry) []byte {
	line = append(line, e.Host...)
	line = append(line, " - - ["...)
	line = e.Start.AppendFormat(line, "02/Jan/2006:15:04:05 -0700")
	line = append(line, "] \""...)
	line = appendQuoted(line, e.Method)
	line = append(line, ' ')
	line = appendQuoted(line, e.URI)
	line = append(line, ' ')
	line = appendQuoted(line, e.Proto)
	line = append(line, "\" "...)
	line = strconv.AppendInt(line, int64(e.Status), 10)
	line = append(line, ' ')
	line = strconv.AppendInt(line, e.Bytes, 10)
	line = append(line, ' ')
	line = strconv.AppendFloat(line, time.Since(e.Start).Seconds(), 'f', 6, 64)
	line = append(line, " id="...)
	if len(e.ID) == 0 {
		line = append(line, '-')
	} else {
		line = append(line, e.ID...)
	}
	return append(line, '\n')
}

// appendQuoted appends s escaped as strconv.Quote escapes it, without the
// quotes: the request line's three parts, quoted as one string, need no
// string joined for it.
func appendQuoted(b []byte, s string) []byte {
	n := len(b)
	b = strconv.AppendQuote(b, s)
	return append(b[:n], b[n+1:len(b)-1]...)
}

type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
	out    io.Writer // the access log
	start  time.Time
	id     []byte   // the request id the worker saw (accessID), in idBuf while it fits
	idBuf  [40]byte // a bridge's request id: 16 hex digits, '-', a sequence number
	later  bool     // the response goes on after the handler (a held stream), which writes the line at its end
	// readEnded: the gateway ended a read of the body with a deadline (a
	// streamed body's silence, or a read it stopped after the answer),
	// which net/http takes for the client's leaving and cancels the
	// request's context.
	readEnded bool
}

// noteReadEnded marks w's access log line (when there is one) as for a
// request whose context the gateway's own read deadline ended.
func noteReadEnded(w http.ResponseWriter) {
	if rec, ok := w.(*recorder); ok {
		rec.readEnded = true
	}
}

// accessID is where a relay puts the request id of w's request for its
// access log line (Gateway.Relay); nil when w writes none.
func accessID(w http.ResponseWriter) *[]byte {
	if rec, ok := w.(*recorder); ok {
		return &rec.id
	}
	return nil
}

// Unwrap lets http.NewResponseController reach the writer's Flush and
// deadlines.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// serverTimeouts derives the http.Server timeouts from cfg: writes must
// outlast the slowest route's timeout.
func serverTimeouts(cfg *Config) (readHeader, read, write, idle time.Duration) {
	slowest := time.Duration(0)
	for i := range cfg.Routes {
		slowest = max(slowest, cfg.Routes[i].TimeoutOrDefault())
	}
	t := cfg.Timeouts
	readHeader = or(t.ReadHeader, DefaultReadHeaderTimeout)
	read = or(t.Read, 60*time.Second)
	write = or(t.Write, read+slowest+5*time.Second)
	idle = or(t.Idle, DefaultIdleTimeout)
	return
}

func or(d Duration, def time.Duration) time.Duration {
	if d > 0 {
		return time.Duration(d)
	}
	return def
}

// CodePanic: net/http recovered a panic in a request's handler (or its
// own) and closed that connection.
const CodePanic bridge.Code = 212

// ErrorLog is an http.Server's ErrorLog that writes to l: a panic net/http
// recovered is an error (MODZMQ0212), with its stack; the rest (TLS
// handshakes that failed, accept errors it retries) is debug.
func ErrorLog(l *slog.Logger) *log.Logger { return log.New(serverLog{l}, "", 0) }

// serverLog is ErrorLog's writer.
type serverLog struct{ log *slog.Logger }

func (l serverLog) Write(p []byte) (int, error) {
	msg := strings.TrimSuffix(string(p), "\n")
	if rest, ok := strings.CutPrefix(msg, "http: panic serving "); ok {
		first, stack, _ := strings.Cut(rest, "\n")
		client, why, _ := strings.Cut(first, ": ")
		l.log.Error(CodePanic.String()+": a request's handler panicked; its connection was closed",
			"client", client, "panic", why, "stack", stack)
		return len(p), nil
	}
	l.log.Debug(msg)
	return len(p), nil
}

// Serve runs the HTTP gateway on l until ctx is done, then stops accepting,
// waits for requests in flight (up to the shutdown timeout) and returns.
// The gateway in service may change meanwhile (Live.Replace); the server's
// own timeouts are those of the gateway in service when Serve started.
func Serve(ctx context.Context, l net.Listener, lv *Live, access io.Writer) error {
	g := lv.Gateway()
	rh, rd, wr, idle := serverTimeouts(g.cfg)
	srv := &http.Server{
		Handler:           AccessLog(lv, access),
		ReadHeaderTimeout: rh,
		ReadTimeout:       rd,
		WriteTimeout:      wr,
		IdleTimeout:       idle,
		MaxHeaderBytes:    64 << 10,
		ConnContext:       ConnContext,
		ErrorLog:          ErrorLog(g.log),
	}
	// Hijacked connections (WebSockets) are not net/http's to close: they
	// get 1001, and the shutdown waits for them as for requests.
	srv.RegisterOnShutdown(g.ShutdownWebSockets)
	g.log.Info(CodeServing.String()+": serving HTTP", "listen", l.Addr().String(), "routes", len(g.routes))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	grace := or(g.cfg.Timeouts.Shutdown, DefaultShutdownTimeout)
	g.log.Info(CodeDraining.String()+": shutting down, draining requests in flight", "grace", grace.String())
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err == nil {
		err = lv.Gateway().WaitWebSockets(sctx)
	}
	if err == nil {
		err = waitHeldStreams(sctx, srv) // streams on hijacked connections (serveStream)
	}
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	g.log.Info(CodeStopped.String() + ": stopped")
	return nil
}
