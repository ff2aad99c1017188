package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gozmq "github.com/go-zeromq/zmq4"
	zmq "github.com/pebbe/zmq4"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// startREP runs a libzmq REP worker on a free port until the test ends.
func startREP(t *testing.T, fn func(req [][]byte) [][]byte) string { return zmqtest.REP(t, fn) }

func echoToken(name string) func([][]byte) [][]byte {
	return func(req [][]byte) [][]byte {
		return [][]byte{[]byte("200"), []byte("X-Worker: " + name + "\r\n"), req[2]}
	}
}

func newTestClient(t *testing.T, opts Options) *Client {
	t.Helper()
	c, err := NewClient(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestClientRoundTripREP(t *testing.T) {
	// What the worker got, handed over through a channel: the worker's
	// goroutine and this one meet only through sockets, which the race
	// detector does not see.
	gotc := make(chan [][]byte, 1)
	ep := startREP(t, func(req [][]byte) [][]byte {
		gotc <- req
		return [][]byte{[]byte("201 Created"), []byte("A: 1\r\n"), []byte("done")}
	})
	c := newTestClient(t, Options{Endpoints: []string{ep}})
	resp, err := c.Do(context.Background(), &Request{Method: []byte("PUT"), Target: []byte("/x?y"),
		Headers: []byte("H: v\r\n"), Meta: []byte("route: /x\r\n"), Body: []byte("payload")}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 201 || string(resp.Reason) != "Created" || string(resp.Headers) != "A: 1\r\n" || string(resp.Body) != "done" {
		t.Errorf("got %+v", resp)
	}
	want := []string{"MZMQ/1", "PUT", "/x?y", "H: v\r\n", "", "payload"}
	got := <-gotc
	if len(got) != 6 {
		t.Fatalf("worker got %d frames, want 6", len(got))
	}
	for i, w := range want {
		if i == 4 {
			if !bytes.HasPrefix(got[4], []byte("request-id: ")) || !bytes.HasSuffix(got[4], []byte("\r\nroute: /x\r\n")) {
				t.Errorf("meta = %q", got[4])
			}
			continue
		}
		if string(got[i]) != w {
			t.Errorf("frame %d = %q, want %q", i, got[i], w)
		}
	}
}

func TestClientRoundTripGoZeroMQRouter(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	router := gozmq.NewRouter(ctx)
	defer router.Close()
	if err := router.Listen("tcp://127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	ep := "tcp://" + router.Addr().String()
	go func() {
		for {
			msg, err := router.Recv()
			if err != nil {
				return
			}
			// [peer, request-id, "", six frames]
			env := msg.Frames[:3]
			router.Send(gozmq.NewMsgFrom(append(env, []byte("200"), msg.Frames[5])...))
		}
	}()
	c := newTestClient(t, Options{Endpoints: []string{ep}, NoHeartbeat: true}) // go-zeromq answers no PINGs
	resp, err := c.Do(context.Background(), &Request{Method: []byte("GET"), Target: []byte("/via-router")}, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 200 || string(resp.Body) != "/via-router" {
		t.Errorf("got %d %q", resp.Status, resp.Body)
	}
}

func TestClientNoWorkerIsNotATimeout(t *testing.T) {
	// Nothing listens on this port: the request must fail as "no worker"
	// after the connect wait, not as a timeout after the long deadline.
	c := newTestClient(t, Options{Endpoints: []string{"tcp://127.0.0.1:1"}, ConnectTimeout: 50 * time.Millisecond})
	_, err := c.Do(context.Background(), &Request{Method: []byte("GET")}, time.Minute)
	if !errors.Is(err, ErrNoWorker) {
		t.Fatalf("got %v, want ErrNoWorker", err)
	}
	if StatusOf(err) != 503 {
		t.Errorf("status %d, want 503", StatusOf(err))
	}
}

func TestClientStaleReplyIsDropped(t *testing.T) {
	// The first caller goes away before its reply; the worker answers it only
	// after the second request arrives on the same pooled connection. The
	// second caller must get its own reply, never the stale one.
	var mu sync.Mutex
	var held [][]byte
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	router := gozmq.NewRouter(ctx)
	defer router.Close()
	if err := router.Listen("tcp://127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			msg, err := router.Recv()
			if err != nil {
				return
			}
			mu.Lock()
			if held == nil {
				held = msg.Frames
				mu.Unlock()
				continue
			}
			first := held
			mu.Unlock()
			router.Send(gozmq.NewMsgFrom(append(first[:3:3], []byte("200"), first[5])...))
			router.Send(gozmq.NewMsgFrom(append(msg.Frames[:3:3], []byte("200"), msg.Frames[5])...))
		}
	}()
	var logged atomic.Int32
	c := newTestClient(t, Options{Endpoints: []string{"tcp://" + router.Addr().String()}, MaxIdle: 1, NoHeartbeat: true,
		Log: func(l Level, msg string) {
			if strings.HasPrefix(msg, CodeStaleReply.String()) {
				logged.Add(1)
			}
		}})
	gone, leave := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, leave)
	if _, err := c.Do(gone, &Request{Target: []byte("/first")}, 10*time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("first: got %v, want context.Canceled", err)
	}
	resp, err := c.Do(context.Background(), &Request{Target: []byte("/second")}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.Body) != "/second" {
		t.Fatalf("second request got %q: another request's reply", resp.Body)
	}
	if logged.Load() != 1 {
		t.Errorf("stale reply logged %d times, want 1", logged.Load())
	}
}

func TestClientTimeoutDoesNotPoisonTheNextRequest(t *testing.T) {
	// A reply far over MaxReply is refused from its frame header: the
	// request gets ErrProtocol at once, the connection is dropped, and the
	// next request works on a fresh one.
	ep := zmqtest.REP(t, func(r [][]byte) [][]byte {
		if string(r[2]) == "big" {
			return [][]byte{make([]byte, 200000)}
		}
		return [][]byte{[]byte("small")}
	})
	c := newTestClient(t, Options{Endpoints: []string{ep}, MaxReply: 1000, MaxIdle: 1})
	if _, err := c.Do(context.Background(), &Request{Target: []byte("big")}, time.Second); !errors.Is(err, ErrProtocol) {
		t.Fatalf("huge reply: got %v, want ErrProtocol", err)
	}
	if resp, err := c.Do(context.Background(), &Request{Target: []byte("small")}, 5*time.Second); err != nil || string(resp.Body) != "small" {
		t.Fatalf("next request: %q %v", resp.Body, err)
	}
}

func TestClientMaxReply(t *testing.T) {
	ep := zmqtest.REP(t, func(r [][]byte) [][]byte { return [][]byte{make([]byte, len(r[2]))} })
	c := newTestClient(t, Options{Endpoints: []string{ep}, MaxReply: 100})
	if _, err := c.Do(context.Background(), &Request{Target: make([]byte, 100)}, 5*time.Second); err != nil {
		t.Errorf("reply at the limit: %v", err)
	}
	_, err := c.Do(context.Background(), &Request{Target: make([]byte, 101)}, 5*time.Second)
	if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "101 bytes, over the limit of 100") {
		t.Errorf("reply over the limit: %v, want ErrProtocol naming the sizes", err)
	}
}

func TestClientConcurrentRepliesMatchRequests(t *testing.T) {
	var countA, countB atomic.Int32
	epA := startREP(t, func(r [][]byte) [][]byte { countA.Add(1); return echoToken("a")(r) })
	epB := startREP(t, func(r [][]byte) [][]byte { countB.Add(1); return echoToken("b")(r) })
	c := newTestClient(t, Options{Endpoints: []string{epA, epB}})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 30; i++ {
				token := fmt.Sprintf("/t/%d/%d", g, i)
				resp, err := c.Do(context.Background(), &Request{Target: []byte(token)}, 10*time.Second)
				if err != nil {
					errs <- err
					return
				}
				if string(resp.Body) != token {
					errs <- fmt.Errorf("request %s got reply %q", token, resp.Body)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if countA.Load() == 0 || countB.Load() == 0 || countA.Load()+countB.Load() != 32*30 {
		t.Errorf("worker a got %d, b got %d requests; want both > 0 and %d in all", countA.Load(), countB.Load(), 32*30)
	}
}

func TestClientThroughLibzmqProxy(t *testing.T) {
	worker := startREP(t, echoToken("behind-proxy"))
	front, _ := zmq.NewSocket(zmq.ROUTER)
	back, _ := zmq.NewSocket(zmq.DEALER)
	front.Bind("tcp://127.0.0.1:*")
	back.Connect(worker)
	ep, _ := front.GetLastEndpoint()
	control, _ := zmq.NewSocket(zmq.PAIR)
	control.Bind("inproc://proxy-control-test")
	ctl, _ := zmq.NewSocket(zmq.PAIR)
	ctl.Connect("inproc://proxy-control-test")
	done := make(chan struct{})
	go func() { zmq.ProxySteerable(front, back, nil, ctl); close(done) }()
	defer func() {
		control.Send("TERMINATE", 0)
		<-done
		front.Close()
		back.Close()
		control.Close()
		ctl.Close()
	}()
	c := newTestClient(t, Options{Endpoints: []string{ep}})
	resp, err := c.Do(context.Background(), &Request{Target: []byte("/proxied")}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.Body) != "/proxied" || string(resp.Headers) != "X-Worker: behind-proxy\r\n" {
		t.Errorf("got %q %q", resp.Headers, resp.Body)
	}
}

func TestClientCancelledContext(t *testing.T) {
	ep := startREP(t, func(r [][]byte) [][]byte { time.Sleep(300 * time.Millisecond); return [][]byte{nil} })
	c := newTestClient(t, Options{Endpoints: []string{ep}})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	_, err := c.Do(ctx, &Request{}, 10*time.Second)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func TestNewClientRejectsBadEndpoints(t *testing.T) {
	for _, ep := range []string{"", "http://x:1", "tcp://nohost", "tcp://h:0", "tcp://h:70000", "ipc://"} {
		if _, err := NewClient(Options{Endpoints: []string{ep}}); !errors.Is(err, ErrConfig) {
			t.Errorf("%q: got %v, want ErrConfig", ep, err)
		}
	}
	if _, err := NewClient(Options{}); !errors.Is(err, ErrConfig) {
		t.Errorf("no endpoints: got %v, want ErrConfig", err)
	}
}

func TestClientClosed(t *testing.T) {
	c := newTestClient(t, Options{Endpoints: []string{"tcp://127.0.0.1:1"}})
	c.Close()
	if _, err := c.Do(context.Background(), &Request{}, time.Second); !errors.Is(err, ErrClosed) {
		t.Fatalf("got %v, want ErrClosed", err)
	}
}

func TestRateLimit(t *testing.T) {
	var lines []string
	log := RateLimit(func(l Level, m string) { lines = append(lines, m) }, 2, time.Hour)
	for i := 0; i < 5; i++ {
		log.Logf(LevelError, CodeTimeout, "n=%d", i)
	}
	log.Logf(LevelError, CodeNoWorker, "other")
	want := []string{"MODZMQ0102: n=0", "MODZMQ0102: n=1", "MODZMQ0101: other"}
	if strings.Join(lines, "|") != strings.Join(want, "|") {
		t.Errorf("got %q, want %q", lines, want)
	}
}
