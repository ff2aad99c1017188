package bridge

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// refusing is the ZMTP transport, except that Dial to one endpoint finds no worker, as
// a transport that connects in Dial does when nobody listens.
type refusing struct {
	ZMTP
	refuse string
}

func (t *refusing) Dial(endpoint string, opts DialOptions) (Conn, error) {
	if endpoint == t.refuse {
		return nil, fmt.Errorf("%w: %s refused the connection", ErrNoWorker, endpoint)
	}
	return t.ZMTP.Dial(endpoint, opts)
}

// A Dial that finds no worker is an attempt: counted on its endpoint and
// retried on another, by the same rules as a send no worker took.
func TestDialWithoutWorkerIsARetriedAttempt(t *testing.T) {
	down, up := startREP(t, echoToken("down")), startREP(t, echoToken("up"))
	c := newTestClient(t, Options{Endpoints: []string{down, up}, Retries: 1, Transport: &refusing{refuse: down}})
	for i := range 6 {
		resp, err := c.Do(context.Background(), &Request{Method: []byte("GET"), Target: []byte("/g")}, 2*time.Second)
		if err != nil || resp.Status != 200 {
			t.Fatalf("GET %d: %+v, %v", i, resp, err)
		}
	}
	st := c.Status()
	a, b := st[0].Stats, st[1].Stats
	if a.Requests.Load() == 0 || a.NoWorker.Load() != a.Requests.Load() || a.InFlight.Load() != 0 {
		t.Errorf("refusing endpoint: requests %d, no worker %d, in flight %d; want every attempt counted as no worker",
			a.Requests.Load(), a.NoWorker.Load(), a.InFlight.Load())
	}
	if b.Replies.Load() != 6 {
		t.Errorf("other endpoint: %d replies, want 6", b.Replies.Load())
	}
	// Without retries (a POST), the caller gets ErrNoWorker.
	c2 := newTestClient(t, Options{Endpoints: []string{down}, Transport: &refusing{refuse: down}})
	if _, err := c2.Do(context.Background(), &Request{Method: []byte("POST"), Target: []byte("/p")}, time.Second); !errors.Is(err, ErrNoWorker) {
		t.Errorf("POST to a refusing endpoint: %v, want ErrNoWorker", err)
	}
}

// broken is the ZMTP transport, except that its connections fail to receive with an
// error that names a bad reply.
type broken struct {
	ZMTP
	closed atomic.Int64
}

type brokenConn struct {
	Conn
	t *broken
}

func (t *broken) Dial(endpoint string, opts DialOptions) (Conn, error) {
	conn, err := t.ZMTP.Dial(endpoint, opts)
	if err != nil {
		return nil, err
	}
	return &brokenConn{conn, t}, nil
}

func (c *brokenConn) Recv(time.Duration) ([][]byte, error) {
	return nil, fmt.Errorf("%w: the connection broke", ErrProtocol)
}

func (c *brokenConn) Close() error {
	c.t.closed.Add(1)
	return c.Conn.Close()
}

// A connection that reported an error itself is closed, even when the
// error is one (a bad reply) after which a sound connection is reused.
func TestConnectionThatFailedIsNotReused(t *testing.T) {
	tr := &broken{}
	c := newTestClient(t, Options{Endpoints: []string{startREP(t, echoToken("w"))}, Transport: tr})
	_, err := c.Do(context.Background(), &Request{Method: []byte("GET"), Target: []byte("/b")}, time.Second)
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("got %v, want the connection's ErrProtocol", err)
	}
	if tr.closed.Load() != 1 {
		t.Errorf("%d connections closed, want the failed one", tr.closed.Load())
	}
}
