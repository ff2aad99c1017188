package bridge

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// blackHole binds a ROUTER that takes each request and then drops its
// connection without answering, as a crashing worker would. It rebinds so
// that later requests meet the same fate.
func blackHole(t *testing.T) (endpoint string, taken *atomic.Int32) {
	t.Helper()
	taken = &atomic.Int32{}
	// A free port, found with a listener whose close is done when Close
	// returns (a libzmq socket's is not: a client could reach it after).
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint = "tcp://" + probe.Addr().String()
	probe.Close()
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			s, _ := zmq.NewSocket(zmq.ROUTER)
			s.SetLinger(0)
			for s.Bind(endpoint) != nil {
				time.Sleep(10 * time.Millisecond)
			}
			s.SetRcvtimeo(20 * time.Millisecond)
			for {
				select {
				case <-stop:
					s.Close()
					return
				default:
				}
				if msg, err := s.RecvMessageBytes(0); err == nil && len(msg) > 3 {
					taken.Add(1)
					break
				}
			}
			// "Work" a moment, as a worker that crashes mid-request would,
			// then drop the connection holding the request.
			time.Sleep(300 * time.Millisecond)
			s.Close()
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return endpoint, taken
}

func TestLostWorkerFailsBeforeTheTimeout(t *testing.T) {
	ep, taken := blackHole(t)
	c := newTestClient(t, Options{Endpoints: []string{ep}, Heartbeat: 100 * time.Millisecond, HeartbeatTimeout: 300 * time.Millisecond})
	_, err := c.Do(context.Background(), &Request{Method: []byte("POST")}, time.Minute)
	if !errors.Is(err, ErrWorkerLost) || StatusOf(err) != 503 {
		t.Fatalf("got %v, want ErrWorkerLost (503), not a timeout after a minute", err)
	}
	if taken.Load() != 1 {
		t.Errorf("the worker took %d requests, want 1", taken.Load())
	}
	if st := c.Status()[0]; st.Stats.Lost.Load() != 1 {
		t.Errorf("lost counter %d, want 1", st.Stats.Lost.Load())
	}
}

func TestRetriesOnlyIdempotentUnlessAll(t *testing.T) {
	hole, _ := blackHole(t)
	var good atomic.Int32
	ok := zmqtest.REP(t, func(r [][]byte) [][]byte { good.Add(1); return [][]byte{[]byte("ok")} })
	opts := Options{Endpoints: []string{hole, ok}, Retries: 1, Heartbeat: 100 * time.Millisecond, HeartbeatTimeout: 300 * time.Millisecond}
	c := newTestClient(t, opts)
	// Both endpoints look alike at first: send enough GETs that some go to
	// the black hole; every one must still succeed on the other worker.
	for i := 0; i < 6; i++ {
		if resp, err := c.Do(context.Background(), &Request{Method: []byte("GET")}, 30*time.Second); err != nil || string(resp.Body) != "ok" {
			t.Fatalf("GET %d: %v", i, err)
		}
	}
	// A POST is never retried: force it onto the black hole.
	only := newTestClient(t, Options{Endpoints: []string{hole}, Retries: 3, Heartbeat: 100 * time.Millisecond, HeartbeatTimeout: 300 * time.Millisecond})
	if _, err := only.Do(context.Background(), &Request{Method: []byte("POST")}, 30*time.Second); !errors.Is(err, ErrWorkerLost) {
		t.Fatalf("POST: got %v, want ErrWorkerLost without retries", err)
	}
	if _, _, retries := only.Counters(); retries != 0 {
		t.Errorf("POST was retried %d times", retries)
	}
	opts.RetryAll = true
	all := newTestClient(t, opts)
	for i := 0; i < 4; i++ {
		if _, err := all.Do(context.Background(), &Request{Method: []byte("POST")}, 30*time.Second); err != nil {
			t.Fatalf("POST with RetryAll: %v", err)
		}
	}
}

func TestMaxInFlightRefusesAtOnce(t *testing.T) {
	release := make(chan struct{})
	var got atomic.Int32
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		if got.Add(1) == 2 {
			go func() {
				<-release
			}()
		}
		// Answer nothing: the requests stay in flight until their timeout.
	})
	c := newTestClient(t, Options{Endpoints: []string{ep}, MaxInFlight: 2})
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); c.Do(context.Background(), &Request{}, 2*time.Second) }()
	}
	deadline := time.Now().Add(5 * time.Second)
	for got.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	_, err := c.Do(context.Background(), &Request{}, 2*time.Second)
	if !errors.Is(err, ErrOverload) || StatusOf(err) != 503 {
		t.Errorf("third request: got %v, want ErrOverload (503)", err)
	}
	if _, overloads, _ := c.Counters(); overloads != 1 {
		t.Errorf("overload counter %d, want 1", overloads)
	}
	close(release)
	wg.Wait()
}

func TestDispatchPrefersTheLessLoadedWorker(t *testing.T) {
	var slow, fast atomic.Int32
	slowEP := zmqtest.REP(t, func(r [][]byte) [][]byte { slow.Add(1); time.Sleep(200 * time.Millisecond); return [][]byte{nil} })
	fastEP := zmqtest.REP(t, func(r [][]byte) [][]byte { fast.Add(1); return [][]byte{nil} })
	c := newTestClient(t, Options{Endpoints: []string{slowEP, fastEP}})
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				if _, err := c.Do(context.Background(), &Request{}, 10*time.Second); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	// Round-robin would split the requests about evenly (each caller waits
	// for its slow reply); least-in-flight keeps most of them off the slow one.
	if slow.Load()*2 > fast.Load() {
		t.Errorf("slow worker got %d requests, fast %d: dispatch ignores load", slow.Load(), fast.Load())
	}
}

func TestWatchReportsDownAndUp(t *testing.T) {
	ep := zmqtest.REP(t, func(r [][]byte) [][]byte { return [][]byte{nil} })
	var mu sync.Mutex
	var lines []string
	c := newTestClient(t, Options{Endpoints: []string{ep, "tcp://127.0.0.1:1"}, Log: func(l Level, m string) {
		mu.Lock()
		lines = append(lines, m)
		mu.Unlock()
	}})
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		st := c.Status()
		if st[0].State == StateUp && st[1].State == StateDown {
			if st[0].Stats.Connected.Load() < 1 || st[1].Stats.ConnectRetried.Load() < 1 {
				t.Errorf("counters: connected %d, retried %d", st[0].Stats.Connected.Load(), st[1].Stats.ConnectRetried.Load())
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("states %v %v; log %q", c.Status()[0].State, c.Status()[1].State, lines)
}
