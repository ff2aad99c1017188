// Package zmqtest runs in-process libzmq workers for tests: each binds a
// free port on 127.0.0.1 and stops when the test ends.
package zmqtest

import (
	"sync"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// REP runs a REP worker; fn gets the request frames (without envelope) and
// returns the reply frames. It returns the worker's endpoint.
func REP(t testing.TB, fn func(req [][]byte) [][]byte) string {
	t.Helper()
	ep, _ := serve(t, zmq.REP, func(send func([][]byte), msg [][]byte) {
		if msg != nil {
			send(fn(msg))
		}
	})
	return ep
}

// ROUTER runs a ROUTER worker; fn gets whole messages (envelope first) and
// may send any number of replies with reply.
func ROUTER(t testing.TB, fn func(msg [][]byte, reply func([][]byte))) string {
	t.Helper()
	return ROUTERIdle(t, fn, nil)
}

// ROUTERIdle is ROUTER with idle, when not nil, called whenever 20 ms pass
// without a message: a worker holding requests answers them there.
func ROUTERIdle(t testing.TB, fn func(msg [][]byte, reply func([][]byte)), idle func(reply func([][]byte))) string {
	t.Helper()
	ep, _ := router(t, fn, idle)
	return ep
}

// KillableROUTER is ROUTER with kill, which closes the worker's socket as a
// killed worker process would (the test's end does too).
func KillableROUTER(t testing.TB, fn func(msg [][]byte, reply func([][]byte))) (ep string, kill func()) {
	t.Helper()
	return router(t, fn, nil)
}

func router(t testing.TB, fn func(msg [][]byte, reply func([][]byte)), idle func(reply func([][]byte))) (string, func()) {
	return serve(t, zmq.ROUTER, func(reply func([][]byte), msg [][]byte) {
		switch {
		case msg != nil:
			fn(msg, reply)
		case idle != nil:
			idle(reply)
		}
	})
}

// idleAfter is how long a worker waits without a message before its idle
// call (handle with a nil message).
const idleAfter = 20 * time.Millisecond

// serve runs the worker until stop, which the test's end calls too. handle
// gets each message, or nil after idleAfter without one, and a send that
// any goroutine may call: a libzmq socket is not safe to use from two
// threads at once, so every use of it holds one lock, and the receive
// waits a millisecond at a time to let sends in.
func serve(t testing.TB, kind zmq.Type, handle func(send func([][]byte), msg [][]byte)) (ep string, stop func()) {
	sock, err := zmq.NewSocket(kind)
	if err != nil {
		t.Fatal(err)
	}
	sock.SetLinger(0)
	if err := sock.Bind("tcp://127.0.0.1:*"); err != nil {
		t.Fatal(err)
	}
	ep, _ = sock.GetLastEndpoint()
	sock.SetRcvtimeo(time.Millisecond)
	var mu sync.Mutex
	send := func(frames [][]byte) {
		parts := make([]any, len(frames))
		for i, f := range frames {
			parts[i] = f
		}
		mu.Lock()
		defer mu.Unlock()
		sock.SendMessage(parts...)
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			mu.Lock()
			defer mu.Unlock()
			sock.Close()
		}()
		heard := time.Now()
		for {
			select {
			case <-quit:
				return
			default:
			}
			mu.Lock()
			msg, err := sock.RecvMessageBytes(0)
			mu.Unlock()
			switch {
			case err == nil:
				heard = time.Now()
				handle(send, msg)
			case time.Since(heard) >= idleAfter:
				heard = time.Now()
				handle(send, nil)
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(quit); <-done }) }
	t.Cleanup(stop)
	return ep, stop
}

// Part is a message a ROUTER worker sends for a request: its envelope, then
// frames.
func Part(env [][]byte, frames ...string) [][]byte {
	out := append([][]byte(nil), env...)
	for _, f := range frames {
		out = append(out, []byte(f))
	}
	return out
}

// WaitFor waits for something a test expects to happen; the bound is only
// there so a broken build fails instead of hanging.
func WaitFor[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("gave up waiting for %s", what)
	}
	var zero T
	return zero
}
