package broker

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/modzmq/modzmq/bridge"
)

func startBroker(t *testing.T, opts Options) (front, back string) {
	t.Helper()
	opts.Frontend, opts.Backend = "tcp://127.0.0.1:*", "tcp://127.0.0.1:*"
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; b.Close() })
	return b.Endpoints()
}

// testWorker speaks MZMQW/1. handle gets the request frames; returning nil
// makes the worker go silent (no reply, no more heartbeats), as a hung one.
func testWorker(t *testing.T, back string, hb time.Duration, handle func([][]byte) [][]byte) {
	t.Helper()
	s, _ := zmq.NewSocket(zmq.DEALER)
	s.SetLinger(0)
	s.Connect(back)
	s.SendMessage("", Version, Ready)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		defer s.Close()
		s.SetRcvtimeo(hb / 2)
		next := time.Now().Add(hb)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if time.Now().After(next) {
				s.SendMessage("", Version, Heartbeat)
				next = time.Now().Add(hb)
			}
			msg, err := s.RecvMessageBytes(0)
			if err != nil || len(msg[0]) == 0 {
				continue
			}
			i := 0
			for len(msg[i]) != 0 {
				i++
			}
			reply := handle(msg[i+1:])
			if reply == nil {
				<-stop // hung: silent until the test ends
				return
			}
			s.SendMessage(msg[:i+1], reply)
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
}

func client(t *testing.T, front string) *bridge.Client {
	t.Helper()
	c, err := bridge.NewClient(bridge.Options{Endpoints: []string{front}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestBrokerGivesWorkOnlyToIdleWorkers(t *testing.T) {
	front, back := startBroker(t, Options{Heartbeat: 100 * time.Millisecond})
	var busy, maxBusy, served atomic.Int32
	for i := 0; i < 2; i++ {
		testWorker(t, back, 100*time.Millisecond, func(req [][]byte) [][]byte {
			n := busy.Add(1)
			for m := maxBusy.Load(); n > m && !maxBusy.CompareAndSwap(m, n); m = maxBusy.Load() {
			}
			time.Sleep(20 * time.Millisecond)
			busy.Add(-1)
			served.Add(1)
			return [][]byte{req[2]}
		})
	}
	c := client(t, front)
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		go func() {
			for i := 0; i < 5; i++ {
				resp, err := c.Do(context.Background(), &bridge.Request{Target: []byte("/x")}, 10*time.Second)
				if err == nil && string(resp.Body) != "/x" {
					err = context.Canceled
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for g := 0; g < 8; g++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if served.Load() != 40 || maxBusy.Load() > 2 {
		t.Errorf("served %d (want 40), at most %d at once over 2 workers (want <= 2)", served.Load(), maxBusy.Load())
	}
}

func TestBrokerAnswers503WhenQueueIsFull(t *testing.T) {
	front, _ := startBroker(t, Options{Queue: 1, QueueTimeout: 300 * time.Millisecond})
	c := client(t, front)
	first := make(chan bridge.Response, 1)
	go func() {
		r, _ := c.Do(context.Background(), &bridge.Request{}, 5*time.Second)
		first <- r
	}()
	time.Sleep(100 * time.Millisecond) // the first request is queued
	resp, err := c.Do(context.Background(), &bridge.Request{}, 5*time.Second)
	if err != nil || resp.Status != 503 {
		t.Errorf("queue full: %v, status %d; want a 503 reply", err, resp.Status)
	}
	if r := <-first; r.Status != 503 {
		t.Errorf("queued past -queue-timeout: status %d, want 503", r.Status)
	}
}

func TestBrokerAnswers503ForALostWorker(t *testing.T) {
	front, back := startBroker(t, Options{Heartbeat: 100 * time.Millisecond})
	testWorker(t, back, 100*time.Millisecond, func([][]byte) [][]byte { return nil })
	time.Sleep(200 * time.Millisecond) // READY arrived
	c := client(t, front)
	start := time.Now()
	resp, err := c.Do(context.Background(), &bridge.Request{}, 30*time.Second)
	if err != nil || resp.Status != 503 {
		t.Fatalf("got %v status %d, want a 503 reply", err, resp.Status)
	}
	t.Logf("503 after %v", time.Since(start).Round(time.Millisecond))
}
