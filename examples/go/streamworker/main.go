// Command streamworker is a pure-Go MZMQ/1 worker that streams its replies
// (docs/PROTOCOL.md, "Streams, credits and cancel notices"): it binds with
// github.com/modzmq/modzmq/worker (ZMTP 3.1 in Go, no libzmq, no cgo) and
// answers every request with Server-Sent Events, one every interval,
// counting its credit and stopping a stream when the bridge sends @cancel.
// A request without stream-credits gets all events at once in a plain
// reply.
//
//	go run ./examples/go/streamworker -bind tcp://127.0.0.1:5558 -count 5 -interval 1s
//
// Each stream is a goroutine sending on the connection its request came
// from; its credits and cancel notice come on that connection too. When a
// connection ends, its streams stop. The worker answers the fronts' ZMTP
// heartbeats.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/modzmq/modzmq/worker"
)

// partCost is what every stream message after the head costs beyond its bytes.
const partCost = 64

// stream is one request being answered in parts; its credit grows with
// each @credit and shrinks with each part sent.
type stream struct {
	mu     sync.Mutex
	credit int64
	more   chan struct{} // signalled when credit arrives
	stop   chan struct{} // closed when the stream is cancelled or its connection ends
	once   sync.Once
}

func (s *stream) cancel() { s.once.Do(func() { close(s.stop) }) }

// spend waits until the stream has cost bytes of credit and takes them;
// false when the stream was stopped.
func (s *stream) spend(cost int64) bool {
	for {
		select {
		case <-s.stop:
			return false
		default:
		}
		s.mu.Lock()
		enough := s.credit >= cost
		if enough {
			s.credit -= cost
		}
		s.mu.Unlock()
		if enough {
			return true
		}
		select {
		case <-s.more:
		case <-s.stop:
			return false
		}
	}
}

// sleep waits d; false when the stream was stopped meanwhile.
func (s *stream) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.stop:
		return false
	}
}

// streams are the streams under way, by connection and request id.
type streams struct {
	mu sync.Mutex
	m  map[*worker.Conn]map[string]*stream
}

func (ss *streams) find(c *worker.Conn, id []byte) *stream {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.m[c][string(id)]
}

func (ss *streams) add(c *worker.Conn, id string, s *stream) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.m[c] == nil {
		ss.m[c] = map[string]*stream{}
	}
	ss.m[c][id] = s
}

// remove forgets the stream s, which ended.
func (ss *streams) remove(c *worker.Conn, id string, s *stream) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if byID := ss.m[c]; byID != nil && byID[id] == s {
		delete(byID, id)
		if len(byID) == 0 {
			delete(ss.m, c)
		}
	}
}

// drop stops and forgets the streams of c, whose connection ended.
func (ss *streams) drop(c *worker.Conn) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for _, s := range ss.m[c] {
		s.cancel()
	}
	delete(ss.m, c)
}

// metaValue returns the value of a "name: value" meta line.
func metaValue(meta []byte, name string) ([]byte, bool) {
	for _, line := range bytes.Split(meta, []byte("\r\n")) {
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && string(k) == name {
			return bytes.TrimSpace(v), true
		}
	}
	return nil, false
}

func main() {
	bind := flag.String("bind", "tcp://127.0.0.1:5558", "endpoint to bind")
	count := flag.Int("count", 10, "events per request")
	interval := flag.Duration("interval", 200*time.Millisecond, "time between events")
	flag.Parse()

	all := &streams{m: map[*worker.Conn]map[string]*stream{}}
	// run sends a stream's events on c as its credit allows, then its end.
	run := func(c *worker.Conn, env [][]byte, id string, s *stream) {
		defer all.remove(c, id, s)
		for n := range *count {
			event := fmt.Appendf(nil, "data: %d\n\n", n)
			if !s.spend(int64(len(event)) + partCost) {
				return
			}
			c.SendMessage(env, []byte("@data"), event)
			if !s.sleep(*interval) {
				return
			}
		}
		if s.spend(partCost) {
			c.SendMessage(env, []byte("@end"), nil)
		}
	}
	handle := func(c *worker.Conn, msg [][]byte) {
		if msg == nil {
			all.drop(c)
			return
		}
		i := worker.Delimiter(msg)
		if i < 0 || len(msg)-i-1 != 6 {
			return
		}
		env, f := msg[:i+1], msg[i+1:]
		method, target, meta := string(f[1]), f[2], f[4]
		id, _ := metaValue(meta, "request-id")
		switch method {
		case "@credit":
			if s := all.find(c, id); s != nil {
				n, _ := strconv.ParseInt(string(target), 10, 64)
				s.mu.Lock()
				s.credit += n
				s.mu.Unlock()
				select {
				case s.more <- struct{}{}:
				default:
				}
			}
			return
		case "@cancel":
			if s := all.find(c, id); s != nil {
				s.cancel()
			}
			fmt.Printf("cancel %s\n", id)
			return
		}
		if len(method) > 0 && method[0] == '@' {
			return // a notice this worker does not use
		}
		credits, ok := metaValue(meta, "stream-credits")
		if !ok {
			var body []byte
			for n := range *count {
				body = fmt.Appendf(body, "data: %d\n\n", n)
			}
			c.SendMessage(env, []byte("200"), []byte("Content-Type: text/event-stream\r\n"), body)
			return
		}
		window, _ := strconv.ParseInt(string(credits), 10, 64)
		s := &stream{credit: window, more: make(chan struct{}, 1), stop: make(chan struct{})}
		all.add(c, string(id), s)
		c.SendMessage(env, []byte("@stream"), []byte("200"), []byte("Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"))
		// msg's frames are the connection's until handle returns: the
		// stream keeps a copy of the envelope.
		own := make([][]byte, len(env))
		for k, e := range env {
			own[k] = bytes.Clone(e)
		}
		go run(c, own, string(id), s)
	}

	srv, err := worker.Listen(*bind, worker.HandlerFunc(handle), nil)
	if err != nil {
		log.Fatalf("listen %s: %v", *bind, err)
	}
	// SIGTERM or ^C: the requests read are answered and open streams end
	// (their clients see them cut short: no more credit is read), then the
	// worker exits; a second signal ends it at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	if err := srv.Run(ctx, 10*time.Second); err != nil {
		log.Fatal(err)
	}
}
