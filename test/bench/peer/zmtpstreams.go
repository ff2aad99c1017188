package main

// peer -mode sse-zmtp -listen tcp://127.0.0.1:5555
//
// The streaming worker of -mode sse on the worker package (ZMTP on Go's own
// sockets, no libzmq). Each front connection's goroutine takes the streamed
// request bodies that come on it itself (uploads, in streams.go), and
// copies its other messages into a queue; one goroutine owns the streams
// (sworker, as under -mode sse): it handles what was queued, sends what is
// due, and sleeps until the next thing is due or a message is queued. It sends with
// Conn.SendMessage on the connection a stream's request came from, where
// its credits and cancel notice come too; when a connection ends, its
// streams end.

import (
	"log"
	"sync"
	"time"

	"github.com/modzmq/modzmq/worker"
)

// sinbox is what the connections have queued for the streams' goroutine.
type sinbox struct {
	mu   sync.Mutex
	q    []sinmsg
	wake chan struct{} // holds a token when q may be non-empty
}

// sinmsg is a message from p's connection, its frames a copy; nil when the
// connection ended.
type sinmsg struct {
	p   *speer
	msg [][]byte
}

func (in *sinbox) put(m sinmsg) {
	in.mu.Lock()
	in.q = append(in.q, m)
	in.mu.Unlock()
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

// take swaps the queue for spare (emptied), returning what was queued.
func (in *sinbox) take(spare []sinmsg) []sinmsg {
	clear(spare)
	in.mu.Lock()
	q := in.q
	in.q = spare[:0]
	in.mu.Unlock()
	return q
}

// copyFrames copies msg's frames into one allocation.
func copyFrames(msg [][]byte) [][]byte {
	n := 0
	for _, f := range msg {
		n += len(f)
	}
	buf := make([]byte, 0, n)
	out := make([][]byte, len(msg))
	for i, f := range msg {
		at := len(buf)
		buf = append(buf, f...)
		out[i] = buf[at:len(buf):len(buf)]
	}
	return out
}

func serveStreamsZMTP(listen string, keepalive time.Duration, upWindow int64) {
	w := newSworker(keepalive)
	in := &sinbox{wake: make(chan struct{}, 1)}
	peers := map[*worker.Conn]*speer{}
	var mu sync.Mutex
	srv, err := worker.Listen(listen, worker.HandlerFunc(func(c *worker.Conn, msg [][]byte) {
		mu.Lock()
		p := peers[c]
		if p == nil && msg != nil {
			p = newSpeer(func(env [][]byte, frames ...[]byte) { c.SendMessage(env, frames...) }, upWindow)
			peers[c] = p
		}
		if msg == nil {
			delete(peers, c)
		}
		mu.Unlock()
		if p == nil {
			return // ended before its first message
		}
		if msg != nil {
			if env, f, ok := splitEnvelope(msg); ok && p.ups.take(p.send, env, f) {
				return
			}
			msg = copyFrames(msg)
		}
		in.put(sinmsg{p, msg})
	}), nil)
	if err != nil {
		log.Fatal(err)
	}
	go func() { log.Fatal(srv.Serve()) }()

	timer := time.NewTimer(time.Hour)
	var spare []sinmsg
	for {
		q := in.take(spare)
		for _, m := range q {
			if m.msg == nil {
				w.drop(m.p)
			} else {
				w.handle(m.p, m.msg)
			}
		}
		spare = q
		w.fireDue(time.Now())
		wait := time.Hour
		if len(w.due) > 0 {
			wait = time.Until(w.due[0].due)
		}
		if wait > 0 {
			timer.Reset(wait)
			select {
			case <-in.wake:
			case <-timer.C:
			}
		}
	}
}
