// Command streamworker is a pure-Go MZMQ/1 worker that streams its replies
// (docs/PROTOCOL.md, "Streams, credits and cancel notices"): a ROUTER socket
// from github.com/go-zeromq/zmq4 that answers every request with
// Server-Sent Events, one every interval, counting its credit and stopping
// a stream when the bridge sends @cancel. A request without stream-credits
// gets all events at once in a plain reply.
//
//	go run ./examples/go/streamworker -bind tcp://127.0.0.1:5558 -count 5 -interval 1s
//
// go-zeromq/zmq4 does not answer ZMTP PINGs: give its route `heartbeat: off`.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"strconv"
	"sync"
	"time"

	zmq "github.com/go-zeromq/zmq4"
)

// partCost is what every stream message after the head costs beyond its bytes.
const partCost = 64

// stream is one request being answered in parts; its credit grows with
// each @credit and shrinks with each part sent.
type stream struct {
	mu       sync.Mutex
	credit   int64
	more     chan struct{} // signalled when credit arrives
	canceled bool
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

	sock := zmq.NewRouter(context.Background())
	defer sock.Close()
	if err := sock.Listen(*bind); err != nil {
		log.Fatalf("listen %s: %v", *bind, err)
	}
	var sendMu sync.Mutex // one sender at a time on the socket
	send := func(frames ...[]byte) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return sock.Send(zmq.NewMsgFrom(frames...))
	}
	var streamsMu sync.Mutex
	streams := map[string]*stream{} // by request id
	find := func(id []byte) *stream {
		streamsMu.Lock()
		defer streamsMu.Unlock()
		return streams[string(id)]
	}
	for {
		msg, err := sock.Recv()
		if err != nil {
			log.Fatalf("recv: %v", err)
		}
		i := 0
		for i < len(msg.Frames) && len(msg.Frames[i]) != 0 {
			i++
		}
		if len(msg.Frames)-i-1 != 6 {
			continue
		}
		env, f := msg.Frames[:i+1:i+1], msg.Frames[i+1:]
		method, target, meta := string(f[1]), f[2], f[4]
		id, _ := metaValue(meta, "request-id")
		switch method {
		case "@credit":
			if s := find(id); s != nil {
				n, _ := strconv.ParseInt(string(target), 10, 64)
				s.mu.Lock()
				s.credit += n
				s.mu.Unlock()
				select {
				case s.more <- struct{}{}:
				default:
				}
			}
			continue
		case "@cancel":
			if s := find(id); s != nil {
				s.mu.Lock()
				s.canceled = true
				s.mu.Unlock()
				select {
				case s.more <- struct{}{}:
				default:
				}
			}
			fmt.Printf("cancel %s\n", id)
			continue
		}
		if len(method) > 0 && method[0] == '@' {
			continue // a notice this worker does not use
		}
		credits, ok := metaValue(meta, "stream-credits")
		if !ok {
			var body []byte
			for n := range *count {
				body = fmt.Appendf(body, "data: %d\n\n", n)
			}
			send(append(env, []byte("200"), []byte("Content-Type: text/event-stream\r\n"), body)...)
			continue
		}
		window, _ := strconv.ParseInt(string(credits), 10, 64)
		s := &stream{credit: window, more: make(chan struct{}, 1)}
		streamsMu.Lock()
		streams[string(id)] = s
		streamsMu.Unlock()
		send(append(env, []byte("@stream"), []byte("200"), []byte("Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"))...)
		go func(env [][]byte, id string) {
			defer func() {
				streamsMu.Lock()
				delete(streams, id)
				streamsMu.Unlock()
			}()
			// spend waits until the stream has cost bytes of credit; false
			// when it was cancelled.
			spend := func(cost int64) bool {
				for {
					s.mu.Lock()
					canceled, enough := s.canceled, s.credit >= cost
					if enough && !canceled {
						s.credit -= cost
					}
					s.mu.Unlock()
					if canceled {
						return false
					}
					if enough {
						return true
					}
					<-s.more
				}
			}
			for n := range *count {
				event := fmt.Appendf(nil, "data: %d\n\n", n)
				if !spend(int64(len(event)) + partCost) {
					return
				}
				send(append(env[:len(env):len(env)], []byte("@data"), event)...)
				time.Sleep(*interval)
			}
			if spend(partCost) {
				send(append(env[:len(env):len(env)], []byte("@end"), nil)...)
			}
		}(env, string(id))
	}
}
