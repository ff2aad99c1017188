package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// peers counts the ROUTER peers (connections) requests arrived on.
type peers struct {
	mu   sync.Mutex
	seen map[string]int
}

func (p *peers) add(id []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.seen == nil {
		p.seen = map[string]int{}
	}
	p.seen[string(id)]++
}

func (p *peers) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.seen)
}

// Requests from many goroutines share one connection; the worker answers
// them in batches, last first, and every caller gets its own reply.
func TestSharedConnectionMatchesRepliesByID(t *testing.T) {
	var seen peers
	var held [][][]byte // worker goroutine only
	answer := func(reply func([][]byte)) {
		for i := len(held) - 1; i >= 0; i-- {
			m := held[i]
			reply(append(m[:3:3], []byte("200"), nil, m[5])) // the target as body
		}
		held = held[:0]
	}
	ep := zmqtest.ROUTERIdle(t, func(msg [][]byte, reply func([][]byte)) {
		seen.add(msg[0])
		if held = append(held, msg); len(held) == 4 {
			answer(reply)
		}
	}, answer)
	c := newTestClient(t, Options{Endpoints: []string{ep}, NoHeartbeat: true})
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				target := fmt.Sprintf("/g%d/r%d", g, i)
				resp, err := c.Do(context.Background(), &Request{Method: []byte("GET"), Target: []byte(target)}, 10*time.Second)
				if err != nil || string(resp.Body) != target {
					errs <- fmt.Errorf("%s: got %q, %v", target, resp.Body, err)
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
	if n := seen.count(); n != 1 {
		t.Errorf("requests came on %d connections, want 1 shared one", n)
	}
}

// Past sessionUsers Conns, another connection is made; each Conn still gets
// the reply to its own request.
func TestSharedConnectionsSpillOver(t *testing.T) {
	var seen peers
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		seen.add(msg[0])
		reply(msg)
	})
	tr := &ZMTP{}
	n := 2*sessionUsers + 1
	conns := make([]Conn, n)
	for i := range conns {
		c, err := tr.Dial(ep, DialOptions{ConnectTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	for i, c := range conns {
		if err := c.Send([][]byte{[]byte(fmt.Sprint("id", i)), nil, []byte(fmt.Sprint("body", i))}, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range conns {
		msg, err := c.Recv(5 * time.Second)
		if err != nil || len(msg) != 3 || string(msg[2]) != fmt.Sprint("body", i) {
			t.Fatalf("conn %d: %q, %v", i, msg, err)
		}
	}
	if got := seen.count(); got != 3 {
		t.Errorf("%d Conns used %d connections, want 3", n, got)
	}
	// The last users close the connections they leave.
	for _, c := range conns {
		c.Close()
	}
	tr.shared.mu.Lock()
	defer tr.shared.mu.Unlock()
	for key, set := range tr.shared.all {
		if len(set.live) != 0 {
			t.Errorf("%q: %d connections left open", key, len(set.live))
		}
	}
}

// A worker that goes away fails every request on the shared connection as
// lost (so GETs are retried), and the next Send connects again.
func TestSharedConnectionLostWorker(t *testing.T) {
	s, ep := boundRouter(t, "tcp://127.0.0.1:*", nil)
	tr := &ZMTP{}
	var conns []Conn
	for i := range 3 {
		c, err := tr.Dial(ep, DialOptions{ConnectTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Send([][]byte{[]byte(fmt.Sprint("id", i)), nil}, time.Second)
		conns = append(conns, c)
	}
	for range conns {
		if _, err := s.RecvMessageBytes(0); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	for i, c := range conns {
		if _, err := c.Recv(2 * time.Second); !errors.Is(err, ErrWorkerLost) {
			t.Errorf("conn %d: %v, want ErrWorkerLost", i, err)
		}
	}
	s2, _ := boundRouter(t, ep, nil)
	defer s2.Close()
	if err := conns[0].Send([][]byte{[]byte("again"), nil, []byte("x")}, 2*time.Second); err != nil {
		t.Fatalf("send after the worker came back: %v", err)
	}
	if msg, err := s2.RecvMessageBytes(0); err != nil || string(msg[1]) != "again" {
		t.Fatalf("worker got %q, %v", msg, err)
	}
}

// A reply over the size limit is a protocol error of its own request; the
// others on the dropped connection are lost, and may be retried.
func TestSharedConnectionOversizedReplyBlamesItsRequest(t *testing.T) {
	s, ep := boundRouter(t, "tcp://127.0.0.1:*", nil)
	defer s.Close()
	tr := &ZMTP{}
	opts := DialOptions{ConnectTimeout: 2 * time.Second, MaxMsgSize: 1000}
	a, err := tr.Dial(ep, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, _ := tr.Dial(ep, opts)
	defer b.Close()
	a.Send([][]byte{[]byte("big"), nil}, time.Second)
	b.Send([][]byte{[]byte("bystander"), nil}, time.Second)
	var peer []byte
	for range 2 {
		msg, err := s.RecvMessageBytes(0)
		if err != nil {
			t.Fatal(err)
		}
		peer = msg[0]
	}
	s.SendMessage(peer, "big", "", "200", "", bytes.Repeat([]byte("x"), 5000))
	if _, err := a.Recv(2 * time.Second); !errors.Is(err, ErrProtocol) {
		t.Errorf("the oversized reply's request: %v, want ErrProtocol", err)
	}
	if _, err := b.Recv(2 * time.Second); !errors.Is(err, ErrWorkerLost) {
		t.Errorf("the other request: %v, want ErrWorkerLost", err)
	}
}

// A heartbeating worker's PINGs are answered by the shared connection's
// reader, so the connection outlives the worker's heartbeat timeout.
func TestSharedConnectionAnswersPings(t *testing.T) {
	var seen peers
	sock, ep := boundRouter(t, "tcp://127.0.0.1:*", func(s *zmq.Socket) {
		s.SetHeartbeatIvl(50 * time.Millisecond)
		s.SetHeartbeatTimeout(200 * time.Millisecond)
		s.SetRcvtimeo(100 * time.Millisecond)
	})
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				sock.Close()
				return
			default:
			}
			msg, err := sock.RecvMessageBytes(0)
			if err != nil {
				continue
			}
			seen.add(msg[0])
			sock.SendMessage(msg)
		}
	}()
	defer func() { close(stop); <-done }()
	c, err := (&ZMTP{}).Dial(ep, DialOptions{ConnectTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 2 {
		if err := c.Send([][]byte{[]byte(fmt.Sprint("id", i)), nil}, time.Second); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Recv(2 * time.Second); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		time.Sleep(800 * time.Millisecond) // four heartbeat timeouts
	}
	if n := seen.count(); n != 1 {
		t.Errorf("requests came on %d connections: the first was dropped for unanswered PINGs", n)
	}
}

// A worker that stops reading makes senders wait for room, then fail within
// their send timeout, instead of queueing without bound.
func TestSharedConnectionSendGivesUpOnAStuckWorker(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		nc.Write(zmqtest.ZMTPPeerHello())
		time.Sleep(10 * time.Second) // never reads
	}()
	c, err := (&ZMTP{}).Dial("tcp://"+l.Addr().String(), DialOptions{ConnectTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	chunk := make([]byte, 256<<10)
	var sendErr error
	for i := 0; i < 200 && sendErr == nil; i++ {
		sendErr = c.Send([][]byte{[]byte(fmt.Sprint("id", i)), nil, chunk}, 200*time.Millisecond)
	}
	if !errors.Is(sendErr, ErrNoWorker) {
		t.Fatalf("50 MiB to a worker that reads nothing: %v, want ErrNoWorker", sendErr)
	}
	if _, err := c.Recv(time.Second); !errors.Is(err, ErrWorkerLost) && !errors.Is(err, ErrNoWorker) {
		t.Errorf("after the failed send: %v, want the connection failed", err)
	}
}

// Closing a Conn twice lets go of its connection once: the others on it
// keep working.
func TestSharedConnectionDoubleCloseSparesTheOthers(t *testing.T) {
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) { reply(msg) })
	tr := &ZMTP{}
	a, err := tr.Dial(ep, DialOptions{ConnectTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := tr.Dial(ep, DialOptions{ConnectTimeout: 2 * time.Second})
	defer b.Close()
	a.Close()
	a.Close()
	if err := b.Send([][]byte{[]byte("id"), nil, []byte("x")}, time.Second); err != nil {
		t.Fatal(err)
	}
	if msg, err := b.Recv(2 * time.Second); err != nil || string(msg[2]) != "x" {
		t.Fatalf("the other Conn got %q, %v", msg, err)
	}
	if b.(*shareConn).s.isDead() {
		t.Error("the other Conn's connection was closed under it")
	}
}

// Large requests from many goroutines at once: some go out directly, some
// through the queue (past its usual size); every reply is its own request's.
func TestSharedConnectionLargeConcurrentBodies(t *testing.T) {
	ep := zmqtest.ROUTER(t, func(msg [][]byte, reply func([][]byte)) {
		reply(append(msg[:3:3], []byte("200"), nil, msg[8]))
	})
	c := newTestClient(t, Options{Endpoints: []string{ep}, NoHeartbeat: true})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 8 {
				body := bytes.Repeat([]byte{byte('a' + g), byte('0' + i)}, 150<<10)
				resp, err := c.Do(context.Background(), &Request{Method: []byte("POST"), Body: body}, 20*time.Second)
				if err != nil || !bytes.Equal(resp.Body, body) {
					errs <- fmt.Errorf("goroutine %d request %d: %d bytes back, %v", g, i, len(resp.Body), err)
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
}

// part is a worker's message for request id: kind and data after the
// envelope.
func part(id, kind string, data []byte) [][]byte {
	return [][]byte{[]byte(id), nil, []byte(kind), data}
}

// A shared connection's queue charges a stream's or a WebSocket's messages
// what the protocol charges them, and no more than the kind frames of
// MZMQ/1 leave to the count bound; what the protocol does not charge is
// charged as a part, and a large frame anywhere is charged its bytes.
func TestQueueCostIsWhatTheProtocolCharges(t *testing.T) {
	big := make([]byte, 1<<20)
	for _, tt := range []struct {
		name string
		msg  [][]byte
		want int64
	}{
		{"@data", part("r1", "@data", big), partCost(len(big))},
		{"@binary", part("r1", "@binary", []byte("hello")), partCost(5)},
		{"@end, empty", part("r1", "@end", nil), PartCost},
		{"@keep-alive", part("r1", "@keep-alive", nil), PartCost},
		{"@keep-alive carrying bytes", part("r1", "@keep-alive", big), partCost(len(big))},
		{"@credit", part("r1", "@credit", []byte("65536")), partCost(5)},
		{"a head", [][]byte{[]byte("r1"), nil, []byte("@stream"), []byte("200"), []byte("A: b\r\n")}, partCost(3 + 6)},
		{"a kind frame of 1 MiB", part("r1", string(big), nil), partCost(len(big) - kindRoom)},
		{"a delimiter that is not empty", [][]byte{[]byte("r1"), big, []byte("@data"), nil}, partCost(len(big))},
		{"a long request id", part(string(big), "@data", nil), PartCost},
	} {
		if got := queueCost(tt.msg); got != tt.want {
			t.Errorf("%s: charged %d, want %d", tt.name, got, tt.want)
		}
	}
}

// A request given a window queues, after its first message (a head, an
// @accept, a plain reply, whatever its size), messages charged up to its
// window in bytes, however few they are: the next is dropped and reported
// as a protocol error of that request, after the messages queued before
// it. A worker that sends exactly its credit is never refused, and a
// message taken makes room for as much again.
func TestSharedQueueIsBoundedByTheWindowInBytes(t *testing.T) {
	const window = 4 * (1000 + PartCost)
	c := &shareConn{id: "r1", ready: make(chan struct{}, 1)}
	c.setLimit(window)
	head := [][]byte{[]byte("r1"), nil, []byte("@stream"), []byte("200"), bytes.Repeat([]byte("h"), 3*window)}
	if !c.push(head) {
		t.Fatal("the head, larger than the window, was refused from an empty queue")
	}
	data := bytes.Repeat([]byte("d"), 1000)
	for i := range 4 {
		if !c.push(part("r1", "@data", data)) {
			t.Fatalf("part %d of 4 within the credit of %d was refused", i+1, window)
		}
	}
	if c.push(part("r1", "@keep-alive", nil)) {
		t.Fatalf("a part past the credit was queued: %d bytes charged of %d", c.bytes, window)
	}
	if msg, err := c.pop(); err != nil || !bytes.Equal(msg[4], head[4]) {
		t.Fatalf("first: %q, %v; want the head", msg, err)
	}
	for i := range 4 {
		if msg, err := c.pop(); err != nil || len(msg) != 4 || !bytes.Equal(msg[3], data) {
			t.Fatalf("part %d: %d frames, %v; want the part", i+1, len(msg), err)
		}
	}
	if _, err := c.pop(); !errors.Is(err, ErrProtocol) {
		t.Fatalf("after the parts: %v, want ErrProtocol for the part dropped", err)
	}

	// Few, large messages: one 16 times the window goes into the empty
	// queue, the next is refused however few are queued.
	c.reset()
	large := bytes.Repeat([]byte("x"), 16*window)
	if !c.push(part("r1", "@binary", large)) {
		t.Fatal("a message into an empty queue was refused")
	}
	if c.push(part("r1", "@binary", large)) {
		t.Fatal("a second message 16 times the window was queued behind the first")
	}

	// Taking the oldest makes the next one the oldest, which is not
	// counted: room for its charge again.
	c.reset()
	for i := range 5 {
		if !c.push(part("r1", "@data", data)) {
			t.Fatalf("part %d: refused", i+1)
		}
	}
	if c.push(part("r1", "@data", nil)) {
		t.Fatal("a sixth part was queued past the window")
	}
	c.reset()
	for range 5 {
		c.push(part("r1", "@data", data))
	}
	c.pop()
	if !c.push(part("r1", "@data", data)) {
		t.Fatal("after a part was taken, a part of the same size was refused")
	}
	if c.push(part("r1", "@data", nil)) {
		t.Fatal("a part past the window was queued after a part was taken")
	}
}

// A plain request (no window) holds its reply and one more, of any size,
// as before.
func TestSharedQueueOfAPlainRequestCountsMessages(t *testing.T) {
	c := &shareConn{id: "r1", ready: make(chan struct{}, 1)}
	c.setLimit(0)
	big := [][]byte{[]byte("r1"), nil, []byte("200"), nil, make([]byte, 1<<20)}
	if !c.push(big) || !c.push(big) {
		t.Fatal("a plain request's two messages were refused")
	}
	if c.push(big) {
		t.Fatal("a plain request queued a third message")
	}
}
