package bridge

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// sendOwn sends req the way a front's own fast path would, on a connection
// from Client.Dial, and returns what Adopt needs.
func sendOwn(t *testing.T, c *Client, req *Request, id string, epoch uint64, timeout time.Duration) Sent {
	t.Helper()
	conn, err := c.Dial(0, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	meta := appendMeta(nil, []byte(id), req.Meta)
	if err := conn.Send(requestFrames(make([][]byte, 0, 8), []byte(id), meta, req), time.Second); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	return Sent{Endpoint: 0, Conn: conn, ID: []byte(id), Epoch: epoch, Start: now, Deadline: now.Add(timeout)}
}

func finish(call *Call) (Response, error) {
	for !call.Done() {
		call.Step(call.Wait())
	}
	return call.Result()
}

func TestAdoptFinishesARequestSentElsewhere(t *testing.T) {
	var mu sync.Mutex
	states := map[int]State{}
	ep := startREP(t, echoToken("w"))
	c := newTestClient(t, Options{Endpoints: []string{ep}, OnState: func(i int, s State, epoch uint64) {
		mu.Lock()
		states[i] = s
		mu.Unlock()
	}})
	checkUntil(t, func() bool { mu.Lock(); defer mu.Unlock(); return states[0] == StateUp })

	req := &Request{Method: []byte("GET"), Target: []byte("/adopted")}
	call := c.Adopt(context.Background(), req, sendOwn(t, c, req, "own-1", c.endpoints[0].epoch.Load(), time.Second))
	resp, err := finish(call)
	if err != nil || resp.Status != 200 || string(resp.Body) != "/adopted" {
		t.Fatalf("adopted call: %+v, %v", resp, err)
	}
	st := c.Status()[0].Stats
	if st.Requests.Load() != 1 || st.Replies.Load() != 1 || st.InFlight.Load() != 0 {
		t.Errorf("endpoint counters: requests %d replies %d in flight %d", st.Requests.Load(), st.Replies.Load(), st.InFlight.Load())
	}
	if n, _, _ := c.Counters(); n != 0 {
		t.Errorf("%d in flight after the call", n)
	}
	// The adopted connection went to the pool and serves the next request.
	if resp, err := c.Do(context.Background(), req, time.Second); err != nil || resp.Status != 200 {
		t.Fatalf("next request: %+v, %v", resp, err)
	}
}

func TestAdoptNoticesALostWorkerFromTheEpoch(t *testing.T) {
	ep, taken := blackHole(t)
	c := newTestClient(t, Options{Endpoints: []string{ep}, Timeout: 10 * time.Second})
	checkUntil(t, func() bool { return c.Status()[0].State == StateUp })
	req := &Request{Method: []byte("POST"), Target: []byte("/x")}
	// The worker takes the request and drops its connections: the watch
	// sees the disconnect, the endpoint's epoch moves past the one the
	// request was sent in, and the adopted call fails at its next look.
	sent := sendOwn(t, c, req, "own-2", c.endpoints[0].epoch.Load(), 10*time.Second)
	_, err := finish(c.Adopt(context.Background(), req, sent))
	if !errors.Is(err, ErrWorkerLost) {
		t.Fatalf("got %v, want ErrWorkerLost (not a timeout: the epoch says the worker is gone)", err)
	}
	if taken.Load() == 0 {
		t.Error("the worker never saw the request")
	}
}

// checkUntil polls cond for up to ten seconds.
func checkUntil(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
	}
}

func TestAdoptTimesOutAtTheSentDeadline(t *testing.T) {
	ep := startREP(t, func(r [][]byte) [][]byte { time.Sleep(time.Second); return [][]byte{[]byte("late")} })
	c := newTestClient(t, Options{Endpoints: []string{ep}, Timeout: 10 * time.Second})
	req := &Request{Method: []byte("POST"), Target: []byte("/slow")}
	_, err := finish(c.Adopt(context.Background(), req, sendOwn(t, c, req, "own-3", c.endpoints[0].epoch.Load(), 200*time.Millisecond)))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v, want ErrTimeout", err)
	}
}

func TestReuseIsOfferedSoundConnectionsOnly(t *testing.T) {
	var mu sync.Mutex
	var offered []int
	slow := startREP(t, func(r [][]byte) [][]byte { time.Sleep(300 * time.Millisecond); return [][]byte{[]byte("late")} })
	fast := startREP(t, echoToken("w"))
	c := newTestClient(t, Options{Endpoints: []string{fast, slow}, Reuse: func(i int, conn Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		offered = append(offered, i)
		conn.Close()
		return true
	}})
	req := &Request{Method: []byte("GET"), Target: []byte("/")}
	for len(offered) < 3 {
		// Each reply is offered; a timeout on the slow worker is not (the
		// connection is closed instead).
		c.Do(context.Background(), req, 100*time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, i := range offered {
		if i != 0 {
			t.Fatalf("offered a connection of endpoint %d, which only timed out", i)
		}
	}
}
