package worker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// blockingServer serves a handler that holds every "hold" message until
// release is closed, then echoes it; it reports each message it holds on
// held, and each connection's end on ended.
type blockingServer struct {
	*Server
	held    chan struct{}
	release chan struct{}
	ended   chan struct{}
	free    sync.Once
	mu      sync.Mutex
	sendErr []error
}

func startBlocking(t *testing.T) *blockingServer {
	b := &blockingServer{held: make(chan struct{}, 8), release: make(chan struct{}), ended: make(chan struct{}, 8)}
	srv, err := Listen("tcp://127.0.0.1:0", HandlerFunc(func(c *Conn, msg [][]byte) {
		if msg == nil {
			b.ended <- struct{}{}
			return
		}
		if string(msg[len(msg)-1]) == "hold" {
			b.held <- struct{}{}
			<-b.release
		}
		err := c.Send(msg...)
		b.mu.Lock()
		b.sendErr = append(b.sendErr, err)
		b.mu.Unlock()
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	b.Server = srv
	serveInTest(t, srv)
	t.Cleanup(b.unblock) // before the close: a test that failed may have left a handler holding
	return b
}

func (b *blockingServer) unblock() { b.free.Do(func() { close(b.release) }) }

// listenerClosed waits until nothing accepts connections on addr.
func listenerClosed(t *testing.T, addr net.Addr) {
	t.Helper()
	waitFor(t, "the listener to close", func() bool {
		c, err := net.Dial("tcp", addr.String())
		if err == nil {
			c.Close()
		}
		return err != nil
	})
}

func (b *blockingServer) endpoint() string { return "tcp://" + b.Addr().String() }

func wait(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("still waiting for %s", what)
	}
}

// Shutdown stops listening at once, lets a handler that is running finish
// and its reply reach the front, ends idle connections too, and returns
// once every connection has ended.
func TestShutdownFinishesWhatWasRead(t *testing.T) {
	b := startBlocking(t)
	busy, idle := dealer(t, b.endpoint(), 0), dealer(t, b.endpoint(), 0)
	idle.SendMessage("", "ping")
	if msg, err := idle.RecvMessage(0); err != nil || msg[1] != "ping" {
		t.Fatalf("idle front: %q, %v", msg, err)
	}
	busy.SendMessage("", "hold")
	wait(t, b.held, "the handler to hold the request")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // a guard, not a timing
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- b.Shutdown(ctx) }()
	listenerClosed(t, b.Addr())
	wait(t, b.ended, "the idle connection to end") // while the other handler still runs
	select {
	case err := <-stopped:
		t.Fatalf("Shutdown returned (%v) while a handler ran", err)
	default:
	}

	b.unblock()
	if msg, err := busy.RecvMessage(0); err != nil || msg[1] != "hold" {
		t.Fatalf("the held request's reply: %q, %v", msg, err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	wait(t, b.ended, "the busy connection to end")
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, err := range b.sendErr {
		if err != nil {
			t.Errorf("a reply failed: %v", err)
		}
	}
}

// When ctx ends first, Shutdown closes what is left and returns without
// waiting for a handler that still runs: its front loses the connection,
// and the reply the handler sends after it is not written.
func TestShutdownGivesUpWithItsContext(t *testing.T) {
	b := startBlocking(t)
	nc, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.Write(zmqtest.ZMTPPeerHello())
	nc.Write(zmqtest.Message([]byte{}, []byte("hold")))
	wait(t, b.held, "the handler to hold the request")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Shutdown(ctx); !errors.Is(err, context.Canceled) { // the handler still holds
		t.Fatalf("Shutdown: %v, want context.Canceled", err)
	}
	got := closedByServer(t, nc)
	b.unblock()
	wait(t, b.ended, "the connection's nil message once the handler returned")
	if bytes.Contains(got, []byte("hold")) {
		t.Errorf("the front got the reply of a handler that ran past the shutdown: %q", got)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.sendErr) != 1 || !errors.Is(b.sendErr[0], ErrClosed) {
		t.Errorf("the late handler's Send: %v, want ErrClosed", b.sendErr)
	}
}

// Run serves until its context ends, then shuts down: the front is served
// before, the held request answered after, and Run returns nil.
func TestRunShutsDownWhenItsContextEnds(t *testing.T) {
	held, release := make(chan struct{}, 1), make(chan struct{})
	srv, err := Listen("tcp://127.0.0.1:0", HandlerFunc(func(c *Conn, msg [][]byte) {
		if msg != nil && string(msg[len(msg)-1]) == "hold" {
			held <- struct{}{}
			<-release
		}
		if msg != nil {
			c.Send(msg...)
		}
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(ctx, 10*time.Second) }()
	d := dealer(t, "tcp://"+srv.Addr().String(), 0)
	d.SendMessage("", "hold")
	wait(t, held, "the handler to hold the request")
	cancel()
	listenerClosed(t, srv.Addr())
	close(release)
	if msg, err := d.RecvMessage(0); err != nil || msg[1] != "hold" {
		t.Fatalf("the held request's reply: %q, %v", msg, err)
	}
	if err := <-ran; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// A request the front sent after the connection's last read is still
// unread in the socket when Shutdown ends the connection: the reply
// written before must reach the front whole all the same (closing a TCP
// socket with unread bytes resets the connection, and the reset drops the
// reply's bytes the send buffer still holds). The front's small receive
// buffer, which it does not read until Shutdown has returned, keeps most
// of the reply in the worker's send buffer.
func TestShutdownDeliversRepliesPastUnreadRequests(t *testing.T) {
	b := startBlocking(t)
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
	}}
	nc, err := d.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	body := bytes.Repeat([]byte("r"), 64<<10) // more than the front takes, within a send buffer
	nc.Write(zmqtest.ZMTPPeerHello())
	nc.Write(zmqtest.Message([]byte{}, body, []byte("hold")))
	wait(t, b.held, "the handler to hold the request")
	nc.Write(zmqtest.Message([]byte{}, []byte("unread"))) // the connection reads nothing while its handler runs
	nc.(*net.TCPConn).CloseWrite()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // a guard, not a timing
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- b.Shutdown(ctx) }()
	listenerClosed(t, b.Addr())
	b.Open() // waits for Shutdown to let go of the server's lock: its connections have been told to stop
	b.unblock()
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	nc.SetReadDeadline(time.Now().Add(10 * time.Second)) // a bound on a hang
	got, err := io.ReadAll(nc)
	want := append(append([]byte{}, greeting...), ready...)
	want = appendFrame(appendFrame(appendFrame(want, true, nil), true, body), false, []byte("hold"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the front got %d bytes (%v); want %d, the greeting, READY and the reply, then the end", len(got), err, len(want))
	}
}
