// Package broker is a load-balancing broker between bridges and workers,
// after the Paranoid Pirate pattern: bridges connect DEALERs to the frontend
// as if it were one worker; workers connect DEALERs to the backend, announce
// READY, heartbeat both ways, and are given a request only when idle, least
// recently used first. The worker side is specified in docs/PROTOCOL.md.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/modzmq/modzmq/bridge"
)

// Worker protocol frames.
const (
	Version    = "MZMQW/1"
	Ready      = "READY"
	Heartbeat  = "HEARTBEAT"
	Disconnect = "DISCONNECT"
)

// Log codes of the broker.
const (
	CodeServing     bridge.Code = 401 // info: bound
	CodeWorkerReady bridge.Code = 402 // info: a worker joined
	CodeWorkerGone  bridge.Code = 403 // warn: a worker expired or left
	CodeQueueFull   bridge.Code = 404 // warn: request refused, queue full (503 reply)
	CodeBadMessage  bridge.Code = 405 // debug: malformed message dropped
	CodeLostRequest bridge.Code = 406 // warn: the worker holding a request expired (503 reply)
)

// Defaults for zero Options fields.
const (
	DefaultHeartbeat    = time.Second
	DefaultLiveness     = 3
	DefaultQueue        = 10000
	DefaultQueueTimeout = 30 * time.Second
)

// Options configure a Broker; zero values mean the defaults above.
type Options struct {
	Frontend, Backend string        // endpoints to bind
	Heartbeat         time.Duration // interval of heartbeats to and from workers
	Liveness          int           // heartbeats a worker may miss before it is dropped
	Queue             int           // requests waiting for an idle worker; more get 503
	QueueTimeout      time.Duration // a request waiting longer gets 503
	BusyTimeout       time.Duration // a worker silent this long while it holds a request is dropped; zero: Liveness heartbeats
	Log               *slog.Logger
}

type worker struct {
	id      string
	expires time.Time
	busy    [][]byte // envelope of the request it holds, nil when idle
}

type queued struct {
	msg [][]byte // [bridge-peer, request-id, "", frames...]
	at  time.Time
}

// Broker routes requests to idle workers.
type Broker struct {
	opts     Options
	log      *slog.Logger
	front    *zmq.Socket
	back     *zmq.Socket
	workers  map[string]*worker
	idle     []*worker // least recently used first
	queue    []queued
	nextBeat time.Time
}

// New binds both sockets.
func New(opts Options) (*Broker, error) {
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = DefaultHeartbeat
	}
	if opts.Liveness <= 0 {
		opts.Liveness = DefaultLiveness
	}
	if opts.Queue <= 0 {
		opts.Queue = DefaultQueue
	}
	if opts.QueueTimeout <= 0 {
		opts.QueueTimeout = DefaultQueueTimeout
	}
	if opts.BusyTimeout <= 0 {
		opts.BusyTimeout = time.Duration(opts.Liveness) * opts.Heartbeat
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	b := &Broker{opts: opts, log: opts.Log, workers: map[string]*worker{}}
	var err error
	for _, s := range []struct {
		sock **zmq.Socket
		ep   string
	}{{&b.front, opts.Frontend}, {&b.back, opts.Backend}} {
		if *s.sock, err = zmq.NewSocket(zmq.ROUTER); err != nil {
			b.Close()
			return nil, err
		}
		(*s.sock).SetLinger(0)
		(*s.sock).SetRouterMandatory(1) // a send to a vanished peer fails instead of vanishing
		if err = (*s.sock).Bind(s.ep); err != nil {
			b.Close()
			return nil, fmt.Errorf("bind %s: %w", s.ep, err)
		}
	}
	return b, nil
}

// Endpoints returns the bound frontend and backend endpoints.
func (b *Broker) Endpoints() (frontend, backend string) {
	f, _ := b.front.GetLastEndpoint()
	k, _ := b.back.GetLastEndpoint()
	return f, k
}

// Close releases the sockets.
func (b *Broker) Close() {
	if b.front != nil {
		b.front.Close()
	}
	if b.back != nil {
		b.back.Close()
	}
}

// Run routes messages until ctx is done.
func (b *Broker) Run(ctx context.Context) error {
	f, k := b.Endpoints()
	b.log.Info(CodeServing.String()+": broker running", "frontend", f, "backend", k)
	poller := zmq.NewPoller()
	poller.Add(b.back, zmq.POLLIN)
	poller.Add(b.front, zmq.POLLIN)
	b.nextBeat = time.Now().Add(b.opts.Heartbeat)
	for ctx.Err() == nil {
		polled, err := poller.Poll(min(b.opts.Heartbeat, 200*time.Millisecond))
		if err != nil {
			if errors.Is(err, zmq.Errno(syscall.EINTR)) {
				continue
			}
			return err
		}
		for _, p := range polled {
			if p.Socket == b.back {
				b.fromWorkers()
			} else {
				b.fromBridges()
			}
		}
		b.tick(time.Now())
	}
	return nil
}

func (b *Broker) fromWorkers() {
	for {
		msg, err := b.back.RecvMessageBytes(zmq.DONTWAIT)
		if err != nil {
			return
		}
		if len(msg) < 2 {
			continue
		}
		id := string(msg[0])
		w := b.workers[id]
		if len(msg[1]) == 0 { // control: [id, "", version, command]
			if len(msg) != 4 || string(msg[2]) != Version {
				b.log.Debug(CodeBadMessage.String()+": malformed control message from a worker", "frames", len(msg))
				continue
			}
			switch string(msg[3]) {
			case Ready:
				if w != nil {
					b.drop(w, "sent READY again (restarted)")
				}
				w = &worker{id: id}
				b.workers[id] = w
				b.log.Info(CodeWorkerReady.String()+": worker ready", "workers", len(b.workers))
				b.release(w)
			case Heartbeat:
				if w == nil {
					b.sendControl(id, Disconnect) // unknown: make it start over
					continue
				}
				if e := b.expiry(); e.After(w.expires) {
					w.expires = e
				}
			case Disconnect:
				if w != nil {
					b.drop(w, "said DISCONNECT")
				}
			}
			continue
		}
		// A reply: [id, envelope..., "", reply frames...]
		if w == nil || w.busy == nil {
			b.log.Debug(CodeBadMessage.String()+": reply from a worker that holds no request", "frames", len(msg))
			continue
		}
		b.front.SendMessage(msg[1:])
		w.busy = nil
		b.release(w)
	}
}

func (b *Broker) fromBridges() {
	for {
		msg, err := b.front.RecvMessageBytes(zmq.DONTWAIT)
		if err != nil {
			return
		}
		if envelope(msg) < 1 {
			b.log.Debug(CodeBadMessage.String()+": malformed request from a bridge", "frames", len(msg))
			continue
		}
		if len(b.idle) > 0 {
			b.dispatch(b.idle[0], msg)
			b.idle = b.idle[1:]
			continue
		}
		if len(b.queue) >= b.opts.Queue {
			b.log.Warn(CodeQueueFull.String()+": no idle worker and the queue is full; answered 503", "queue", len(b.queue))
			b.refuse(msg, "no idle worker and the broker's queue is full")
			continue
		}
		b.queue = append(b.queue, queued{msg, time.Now()})
	}
}

// dispatch hands msg ([bridge-peer, request-id, "", frames]) to w.
func (b *Broker) dispatch(w *worker, msg [][]byte) {
	env := envelope(msg)
	if env < 0 {
		return
	}
	out := append([][]byte{[]byte(w.id)}, msg...)
	if _, err := b.back.SendMessage(out); err != nil {
		b.drop(w, "unreachable")
		b.queue = append([]queued{{msg, time.Now()}}, b.queue...)
		return
	}
	w.busy = msg[:env+1]
	w.expires = time.Now().Add(b.opts.BusyTimeout)
}

// envelope returns the index of the empty delimiter frame, or -1.
func envelope(msg [][]byte) int {
	for i, f := range msg {
		if len(f) == 0 {
			return i
		}
	}
	return -1
}

// release makes w idle and gives it the oldest queued request, if any.
func (b *Broker) release(w *worker) {
	w.expires = b.expiry()
	if len(b.queue) > 0 {
		q := b.queue[0]
		b.queue = b.queue[1:]
		b.dispatch(w, q.msg)
		return
	}
	b.idle = append(b.idle, w)
}

// refuse answers a request with an MZMQ/1 503 reply.
func (b *Broker) refuse(msg [][]byte, why string) {
	env := envelope(msg)
	if env < 0 {
		return
	}
	reply := append(append([][]byte{}, msg[:env+1]...), []byte("503"), []byte("Retry-After: 1\r\n"), []byte(why+"\n"))
	b.front.SendMessage(reply)
}

func (b *Broker) expiry() time.Time {
	return time.Now().Add(time.Duration(b.opts.Liveness) * b.opts.Heartbeat)
}

// drop forgets w; a request it held is answered 503 at once.
func (b *Broker) drop(w *worker, why string) {
	delete(b.workers, w.id)
	for i, x := range b.idle {
		if x == w {
			b.idle = append(b.idle[:i], b.idle[i+1:]...)
			break
		}
	}
	b.log.Warn(CodeWorkerGone.String()+": worker "+why, "workers", len(b.workers))
	if w.busy != nil {
		b.log.Warn(CodeLostRequest.String() + ": the worker holding a request is gone; answered 503")
		b.refuse(w.busy, "the worker holding this request was lost")
	}
}

func (b *Broker) sendControl(id, cmd string) {
	b.back.SendMessage(id, "", Version, cmd)
}

// tick sends heartbeats, expires silent workers and stale queued requests.
func (b *Broker) tick(now time.Time) {
	for _, w := range b.workers {
		if now.After(w.expires) {
			b.drop(w, "expired (no heartbeat)")
		}
	}
	for len(b.queue) > 0 && now.Sub(b.queue[0].at) > b.opts.QueueTimeout {
		b.refuse(b.queue[0].msg, "no worker became idle in time")
		b.queue = b.queue[1:]
	}
	if now.After(b.nextBeat) {
		for _, w := range b.workers {
			b.sendControl(w.id, Heartbeat)
		}
		b.nextBeat = now.Add(b.opts.Heartbeat)
	}
}
