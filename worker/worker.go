// Package worker serves mod_zmq's fronts (the Apache module, zmq-gateway and
// its stream mode) from Go without libzmq or cgo.
//
// A Server binds a tcp:// or ipc:// endpoint as a ZeroMQ ROUTER socket would and
// speaks ZMTP 3.1 with the NULL mechanism to every front that connects
// (their DEALER sockets). It answers a front's heartbeats and, as libzmq
// does, ends a connection whose front set a TTL in a PING and then sent no
// frame within it (MODZMQ0505). Each connection has one goroutine: it reads the
// front's messages and calls the handler with each, on that goroutine, and
// what the handler sends goes back on the same connection, written once the
// messages that arrived together have been handled. A message is the
// frames a ROUTER would receive after the routing id: for MZMQ/1 (see
// docs/PROTOCOL.md) the envelope up to its empty delimiter, then protocol,
// method, target, headers, meta and body; a reply is the envelope and the
// reply's frames.
//
//	srv, err := worker.Listen("tcp://127.0.0.1:5555", worker.HandlerFunc(
//		func(c *worker.Conn, msg [][]byte) {
//			if msg == nil {
//				return // the connection ended
//			}
//			i := worker.Delimiter(msg)
//			if i < 0 {
//				return // not an MZMQ/1 request: it has no envelope to answer
//			}
//			c.SendMessage(msg[:i+1], []byte("200"), []byte("Content-Type: text/plain\r\n"), []byte("hello\n"))
//		}), nil)
//	...
//	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
//	defer stop()
//	if err := srv.Run(ctx, 10*time.Second); err != nil { // SIGTERM: what was read is answered
//		log.Fatal(err)
//	}
//
// What a worker gains over libzmq through cgo is the cost per message: no
// I/O thread between the socket and the handler and no cgo call per frame
// (docs/BENCHMARKS.md, "WebSockets"). What it lacks: CurveZMQ (ZmqCurve
// locations need a libzmq worker) and connecting out (a Server only binds,
// as workers do).
package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Handler handles a front's messages. ServeMessage runs on the goroutine of
// the connection msg came from, one message at a time; msg and its frames
// are valid only until it returns (copy what must outlive it). While it
// runs the connection reads nothing: the front's other messages (a gateway
// sends many clients' requests on one connection) and its PINGs wait, so
// work that takes time belongs on a goroutine of its own, which replies
// with SendMessage and a copy of the envelope. When the connection ends,
// ServeMessage is called once more with msg nil, so state kept per
// connection can be let go. A ServeMessage that panics ends its connection
// (MODZMQ0506, with the stack), not the process.
type Handler interface {
	ServeMessage(c *Conn, msg [][]byte)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(c *Conn, msg [][]byte)

// ServeMessage calls f(c, msg).
func (f HandlerFunc) ServeMessage(c *Conn, msg [][]byte) { f(c, msg) }

// Options are a Server's limits; the zero value of each field takes its
// default.
type Options struct {
	// MaxMessage is the largest message a front may send: its frames'
	// bytes, each frame counting 64 bytes more (as the fronts' readers
	// count). A frame header that passes it ends the connection
	// (MODZMQ0502) before its bytes arrive. Default 256 MiB.
	MaxMessage int64
	// MaxFrames is the most frames a message may have. Default 16 (an
	// MZMQ/1 request has 6 after a short envelope).
	MaxFrames int
	// HandshakeTimeout bounds the ZMTP handshake. Default 10 s.
	HandshakeTimeout time.Duration
	// WriteTimeout bounds each write to a front: a front that takes
	// nothing for that long loses its connection (MODZMQ0503). Default 30 s.
	WriteTimeout time.Duration
	// ErrorLog receives a line for every connection that ends abnormally;
	// default log.Default().
	ErrorLog *log.Logger
}

const (
	defaultMaxMessage = 256 << 20
	defaultMaxFrames  = 16
)

func (o *Options) withDefaults() Options {
	var v Options
	if o != nil {
		v = *o
	}
	if v.MaxMessage <= 0 {
		v.MaxMessage = defaultMaxMessage
	}
	if v.MaxFrames <= 0 {
		v.MaxFrames = defaultMaxFrames
	}
	if v.HandshakeTimeout <= 0 {
		v.HandshakeTimeout = 10 * time.Second
	}
	if v.WriteTimeout <= 0 {
		v.WriteTimeout = 30 * time.Second
	}
	if v.ErrorLog == nil {
		v.ErrorLog = log.Default()
	}
	return v
}

// Server is a bound endpoint and the connections fronts made to it.
type Server struct {
	ln      net.Listener
	handler Handler
	opts    Options

	mu       sync.Mutex
	conns    map[*Conn]struct{}
	closed   bool
	stopping atomic.Bool // Shutdown: connections read nothing more
	wg       sync.WaitGroup
}

// Listen binds endpoint for h: tcp://host:port (tcp://*:port for every
// address), ipc://path (a Unix socket; a file left there by a process that
// is gone is replaced, as libzmq does, but not one a live process listens
// on), or ipc://@name (Linux's abstract namespace). Serve accepts the
// connections; Close removes the ipc:// file.
func Listen(endpoint string, h Handler, opts *Options) (*Server, error) {
	network, addr, err := listenAddr(endpoint)
	if err != nil {
		return nil, err
	}
	if network == "unix" && !strings.HasPrefix(addr, "@") {
		removeStaleSocket(addr)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	return &Server{ln: ln, handler: h, opts: opts.withDefaults(), conns: map[*Conn]struct{}{}}, nil
}

// listenAddr maps an endpoint to what net.Listen takes.
func listenAddr(endpoint string) (network, addr string, err error) {
	if addr, ok := strings.CutPrefix(endpoint, "tcp://"); ok {
		if host, port, err := net.SplitHostPort(addr); err == nil && host == "*" {
			addr = net.JoinHostPort("", port)
		}
		return "tcp", addr, nil
	}
	if addr, ok := strings.CutPrefix(endpoint, "ipc://"); ok && addr != "" && addr != "*" && addr != "@" {
		return "unix", addr, nil
	}
	return "", "", fmt.Errorf("worker: endpoint %q: want tcp://host:port, ipc://path or ipc://@name", endpoint)
}

// removeStaleSocket removes the Unix socket at path if nothing listens on
// it: the file a worker that was killed leaves behind. A live listener's,
// or a file that is not a socket, stays, and the bind fails on it.
func removeStaleSocket(path string) {
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		return
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		os.Remove(path)
	}
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts fronts' connections until Close, each on a goroutine of
// its own. It returns nil after Close.
func (s *Server) Serve() error {
	var delay time.Duration
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
				errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) {
				// Short of descriptors or memory: wait, as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.opts.ErrorLog.Printf("MODZMQ0504 worker: accept: %v; retrying in %v", err, delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		c := newConn(s, nc)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return nil
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go c.serve()
	}
}

// Close stops listening, ends every connection and waits for their
// handlers to return (a handler that calls it waits for itself forever).
func (s *Server) Close() error {
	err := s.closeAll()
	s.wg.Wait()
	return err
}

// closeAll stops listening and closes every connection: Send returns
// ErrClosed from now on.
func (s *Server) closeAll() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	err := s.ln.Close()
	for c := range s.conns {
		c.stopSends(false)
		c.nc.Close()
	}
	return err
}

// Shutdown stops the server gracefully: it stops listening, and each
// connection reads nothing more, hands the handler the messages it has
// read, writes their replies and ends (the handler gets its nil message).
// It returns once every connection has ended, or, when ctx ends first,
// closes those left and returns ctx's error without waiting for their
// handlers: one still running finds its connection closed (Send returns
// ErrClosed), and gets its nil message when it returns.
//
// A front learns that its connection ended and sends its requests to other
// workers; a request it sent after the connection's last read is lost with
// the connection, as when a worker stops (the fronts' retry rules apply).
// Such a request is read and dropped after the replies, until the front
// closes its side (at most 2 s): a TCP connection closed on unread bytes
// is reset, and the reset would lose the replies not yet sent.
// Replies sent from other goroutines after their connection ended are
// lost: a worker that replies from goroutines of its own has them finish
// before Shutdown returns, e.g. by waiting for them when ServeMessage
// gets the nil message.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	err := s.ln.Close()
	s.stopping.Store(true)
	for c := range s.conns {
		c.nc.SetReadDeadline(time.Now()) // wake a read that waits for more
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return err
	case <-ctx.Done():
		s.closeAll()
		return ctx.Err()
	}
}

// Run serves until ctx ends (a signal, with signal.NotifyContext), then
// shuts the server down, giving the connections grace to finish (Shutdown):
// past it, Run returns even if a handler is still running. It returns what
// failed: serving, or the shutdown when grace ran out; nil otherwise.
func (s *Server) Run(ctx context.Context, grace time.Duration) error {
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	stop, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := s.Shutdown(stop)
	if serr := <-served; err == nil {
		err = serr
	}
	return err
}

// Open is the number of connections from fronts being served.
func (s *Server) Open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *Server) forget(c *Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Errors a connection ends with (logged with their codes).
var (
	// ErrHandshake: the peer is not a ZMTP 3 DEALER, REQ or ROUTER
	// socket using the NULL mechanism (MODZMQ0501).
	ErrHandshake = errors.New("not a ZMTP 3 front with the NULL mechanism")
	// ErrTooLarge: a frame header took its message past
	// Options.MaxMessage, or claimed over 2^40 bytes (MODZMQ0502).
	ErrTooLarge = errors.New("a message passed the size limit")
	// ErrTooManyFrames: a message announced more than Options.MaxFrames
	// frames (MODZMQ0502).
	ErrTooManyFrames = errors.New("a message passed the frame limit")
	// ErrProtocol: a command broke ZMTP (MODZMQ0502).
	ErrProtocol = errors.New("the front broke ZMTP")
	// ErrClosed: Send on a connection that has ended.
	ErrClosed = errors.New("worker: connection closed")
)

// logEnd logs why a connection ended, unless it simply closed.
func (s *Server) logEnd(c *Conn, err error) {
	code := "MODZMQ0502"
	switch {
	case errors.Is(err, errPanic):
		code = "MODZMQ0506"
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, ErrClosed), errors.Is(err, syscall.ECONNRESET):
		return // the front closed it (a child that exits may reset it), or Close did
	case errors.Is(err, ErrHandshake):
		code = "MODZMQ0501"
	case errors.Is(err, errWrite):
		code = "MODZMQ0503"
	case !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrTooManyFrames) && !errors.Is(err, ErrProtocol):
		code = "MODZMQ0505"
	}
	from := c.nc.RemoteAddr().String()
	if from == "" || from == "@" { // a Unix socket's peer has no name: say where it came
		from = "ipc://" + c.nc.LocalAddr().String()
	}
	s.opts.ErrorLog.Printf("%s worker: connection from %s ended: %v", code, from, err)
}
