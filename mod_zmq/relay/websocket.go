package relay

/*
#include <stdlib.h>
#include "relay.h"
*/
import "C"

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime/cgo"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/internal/wsproto"
)

// WebSockets through Apache (docs/PROTOCOL.md, "WebSockets"). The
// handshake goes to the worker as a request (openWebSocket, then the
// ordinary waits and resumes); an accept makes MODZMQ_UPGRADE, after which
// the shim owns both connections and waits on them itself, and each
// modzmq_ws_step (WSStep) takes what it read from the client and what
// modzmq_wait received from the worker, relays messages both ways, and
// says what to write and what to wait for. A step never waits.

const (
	// wsControlMax is the largest control frame (a header and 125 bytes),
	// wsHeaderMax the largest header of a server's data frame.
	wsControlMax = 2 + 125
	wsHeaderMax  = 10
	// wsCloseWait is how long a close sent to the client waits for the
	// client's answer before the connection goes.
	wsCloseWait = time.Second
	// wsQuiet bounds the time between steps when nothing else calls for
	// one (a lost worker does: modzmq_wait).
	wsQuiet = time.Minute
)

// wsTunnel is a WebSocket handshake and, once accepted, the open
// WebSocket: the worker's side (bridge.WebSocket), the client's
// (wsproto.Reader), and the close handshake and idle timers.
type wsTunnel struct {
	key, offered string
	idle         time.Duration

	ws      *bridge.WebSocket
	rd      wsproto.Reader
	held    bool          // ev, a client message, waits for the worker's credit
	ev      wsproto.Event // while held; valid until rd.Next is called again
	started bool
	heard   time.Time // the client's last bytes
	pinged  bool      // a ping went out since then
	closing bool      // a close went to the client, which may answer until closeBy
	closeBy time.Time
	ended   bool // ws is closed
	code    int  // the close code sent to the client
	wake    *wsWake
	fast    *C.modzmq_fast // the client's fast path, whose counters the C step adds to
}

// openWebSocket checks a handshake (wsproto's rules: the shim only saw
// Upgrade: websocket) and the location's Origins, and sends it to a
// worker; the call then goes on as any other (outcome).
func (c *client) openWebSocket(req *C.modzmq_request, resp *C.modzmq_response) C.int {
	lines := view(req.headers, req.headers_len)
	header := func(name string) string { return headerValue(lines, name) }
	key, offered, status, err := wsproto.CheckHandshake(string(view(req.method, req.method_len)), header)
	if err != nil {
		extra := ""
		if status == 426 {
			extra = "Sec-WebSocket-Version: 13\r\n"
		}
		return refuse(resp, status, err.Error(), extra)
	}
	var origins []string
	if req.ws_origins != nil {
		origins = strings.Fields(C.GoString(req.ws_origins))
	}
	if origin := header("Origin"); !wsproto.OriginAllowed(origin, origins) {
		return refuse(resp, 403, "Origin "+quoteHeader(origin)+" is not in "+"ZmqWebSocketOrigins", "")
	}
	r := c.request(req)
	r.WebSocket = true
	r.MaxMessage = int64(req.ws_max_message)
	idle := c.opts.StreamIdleTimeout
	if idle <= 0 {
		idle = bridge.DefaultStreamIdleTimeout
	}
	call := c.Start(context.Background(), r, time.Duration(req.timeout_ms)*time.Millisecond)
	h := cgo.NewHandle(&pending{call: call, b: c.b, ws: &wsTunnel{key: key, offered: offered, idle: idle, fast: c.fast}})
	return outcome(call, c.b, c.fast, resp, h)
}

// refuse answers a handshake the front refuses itself (MODZMQ_EREFUSED).
func refuse(resp *C.modzmq_response, status int, why, headers string) C.int {
	setError(&resp.error[0], C.size_t(len(resp.error)), why)
	resp.status = C.int(status)
	if !setParts(resp, nil, nil, []byte(headers)) {
		return C.MODZMQ_EINTERNAL
	}
	return C.MODZMQ_EREFUSED
}

// quoteHeader quotes a client's header value for a log line, cut short.
func quoteHeader(v string) string {
	if len(v) > 100 {
		v = v[:100] + "..."
	}
	return "\"" + strings.ToValidUTF8(v, "?") + "\""
}

// headerValue returns the values of the header lines ("Name: value\r\n")
// called name, joined by ", ".
func headerValue(lines []byte, name string) string {
	var out string
	for len(lines) > 0 {
		line, rest, _ := bytes.Cut(lines, []byte("\r\n"))
		lines = rest
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || !strings.EqualFold(string(bytes.TrimSpace(k)), name) {
			continue
		}
		if out != "" {
			out += ", "
		}
		out += string(bytes.TrimSpace(v))
	}
	return out
}

// upgrade answers a handshake the worker accepted (MODZMQ_UPGRADE): the
// worker's header lines and the accept key, once its choice of subprotocol
// passes bridge.CheckAccept (else 502). The pending call in h becomes the
// WebSocket's.
func upgrade(resp *C.modzmq_response, h cgo.Handle, out bridge.Response) C.int {
	st := callState(resp)
	p := h.Value().(*pending)
	t := p.ws
	if _, err := bridge.CheckAccept(out.Headers, t.offered); err != nil {
		out.WebSocket.Close(bridge.CloseInternalError, nil)
		h.Delete()
		st.call, st.zconn = 0, nil
		return failed(resp, err)
	}
	t.ws = out.WebSocket
	t.rd.Max = t.ws.MaxMessage()
	headers := append(append(make([]byte, 0, len(out.Headers)+60), out.Headers...),
		"Sec-WebSocket-Accept: "+wsproto.AcceptKey(t.key)+"\r\n"...)
	st.call, st.zconn = C.uint64_t(h), nil
	resp.status = 101
	if !setParts(resp, nil, nil, headers) {
		t.ws.Close(bridge.CloseInternalError, nil)
		h.Delete()
		st.call = 0
		return C.MODZMQ_EINTERNAL
	}
	return C.MODZMQ_UPGRADE
}

// modzmq_go_ws_step is the ws_step callback (relay.h): a step of the open
// WebSocket in resp that the C step (wsfast.c) leaves to Go.
//
//export modzmq_go_ws_step
func modzmq_go_ws_step(resp *C.modzmq_response, io *C.modzmq_ws_io) C.int {
	return C.int(wsStep(resp, io))
}

// wsStep advances the open WebSocket in resp with io: it takes back the
// credit it lent the C step, steps, and lends it again when the WebSocket
// is left in its common state.
func wsStep(resp *C.modzmq_response, io *C.modzmq_ws_io) (rc int) {
	st := callState(resp)
	var t *wsTunnel
	defer func() {
		if p := recover(); p != nil {
			setError(&resp.error[0], C.size_t(len(resp.error)), fmt.Sprintf("%v: recovered panic: %v", bridge.CodePanic, p))
			logFunc.Logf(bridge.LevelError, bridge.CodePanic, "recovered panic in modzmq_ws_step: %v", p)
			io.head_len, resp.body, resp.body_len = 0, nil, 0
			if t != nil && !t.ended {
				func() {
					defer func() { recover() }()
					t.close(bridge.CloseInternalError, nil)
				}()
			}
			if h := cgo.Handle(st.call); h != 0 {
				h.Delete()
			}
			st.call, st.zconn = 0, nil
			rc = C.MODZMQ_EINTERNAL
		}
	}()
	h := cgo.Handle(st.call)
	p, ok := h.Value().(*pending)
	if !ok || p.ws == nil || p.ws.ws == nil {
		setError(&resp.error[0], C.size_t(len(resp.error)), fmt.Sprintf("%v: no WebSocket to step", bridge.CodePanic))
		return C.MODZMQ_EINTERNAL
	}
	p.b.goEntries.Add(1)
	t = p.ws
	t.reclaim(st)
	head := unsafe.Slice((*byte)(unsafe.Pointer(&io.head[0])), len(io.head))[:0]
	resp.body, resp.body_len = nil, 0
	io.again, io.client_error, io.idle = 0, 0, 0
	code := t.step(resp, io, &head)
	if len(head) > 0 && &head[0] != (*byte)(unsafe.Pointer(&io.head[0])) {
		panic("a step's output outgrew its buffer")
	}
	io.head_len = C.size_t(len(head))
	io.close_code = C.int(t.code)
	if code != C.MODZMQ_PENDING {
		if !t.ended {
			t.close(bridge.CloseInternalError, nil)
		}
		h.Delete()
		st.call, st.zconn = 0, nil
		io.fd, io.read_max = -1, 0
		return int(code)
	}
	t.wait(resp, io)
	t.lend(st)
	return int(code)
}

// lend lends the C step the WebSocket's credit (modzmq_ws_lent) when the
// WebSocket is in its common state: open, no close under way, no client
// message held for want of credit or half read, on a connection C waits
// on. The C step relays whole messages until Go's next step.
func (t *wsTunnel) lend(st *C.modzmq_call) {
	if t.ended || t.closing || t.held || !t.rd.Idle() || st.zconn == nil || t.fast == nil {
		return
	}
	f, ok := t.ws.Lend()
	if !ok || len(f.ID) > len(st.id) {
		return
	}
	w := &st.ws
	w.sendable, w.credit, w.owed, w.grant_at, w.max = C.int64_t(f.Sendable), C.int64_t(f.Credit),
		C.int64_t(f.Owed), C.int64_t(f.GrantAt), C.int64_t(f.Max)
	w.send_timeout_ms = C.int(max(f.SendTimeout.Milliseconds(), 1))
	w.fast, w.heard_ms = unsafe.Pointer(t.fast), 0
	st.id_len = C.size_t(copy(unsafe.Slice((*byte)(unsafe.Pointer(&st.id[0])), len(st.id)), f.ID))
	w.on = 1
}

// reclaim takes back the credit lent to the C step, and when it relayed a
// message of the client's, the time it came.
func (t *wsTunnel) reclaim(st *C.modzmq_call) {
	w := &st.ws
	if w.on == 0 {
		return
	}
	w.on = 0
	t.ws.Return(bridge.Flow{Sendable: int64(w.sendable), Credit: int64(w.credit), Owed: int64(w.owed)})
	if w.heard_ms != 0 {
		t.heard = time.Now().Add(-time.Duration(int64(C.zmtp_now_ms())-int64(w.heard_ms)) * time.Millisecond)
		t.pinged = false
	}
}

// step relays what came from either side since the last step, appending
// the frames for the client to head. Order: the worker's message (the
// client took the one before it, which earns the worker its credit back),
// the client's frames, the end of the client's connection, a stop, the
// timers; a message of the worker's goes last, its payload after head.
func (t *wsTunnel) step(resp *C.modzmq_response, io *C.modzmq_ws_io, head *[]byte) C.int {
	now := time.Now()
	if !t.started {
		t.started, t.heard = true, now
		io.again = 1 // a message may have come with the accept
	}
	var msg bridge.Message
	if !t.ended {
		deliver(t.ws.Conn(), resp)
		t.wake.drain()
		m, ok, err := t.ws.Recv(0)
		switch {
		case errors.Is(err, bridge.ErrWebSocketClosed):
		case err != nil:
			return t.broke(resp, io, head, err)
		case ok && m.Kind == bridge.Close:
			// The worker closes: the client answers, or goes after a second.
			*head = wsproto.AppendClose(*head, m.Code, m.Reason)
			t.code = m.Code
			t.closeSent(now)
			t.close(m.Code, nil) // the worker's own close: nothing is sent
		case ok:
			msg = m
			io.again = 1
		}
	}

	if in := view(io.in, io.in_len); len(in) > 0 {
		t.heard, t.pinged = now, false
		t.rd.Feed(in)
	}
	for room := cap(*head) - 2*wsControlMax - wsHeaderMax; len(*head) <= room; {
		if t.held {
			sent, err := t.sendHeld()
			if err != nil {
				return t.broke(resp, io, head, err)
			}
			if !sent {
				break
			}
		}
		ev, ok, err := t.rd.Next()
		if err != nil {
			return t.clientBroke(resp, io, head, err)
		}
		if !ok {
			break
		}
		switch ev.Kind {
		case wsproto.Ping:
			if !t.closing {
				*head = wsproto.AppendPong(*head, ev.Data)
			}
		case wsproto.Close:
			if !t.closing {
				// The client closes: the worker is told, the close is
				// answered with the client's code.
				if !t.ended {
					t.ws.Send(bridge.Message{Kind: bridge.Close, Code: ev.Code, Reason: ev.Reason})
					t.close(ev.Code, ev.Reason)
				}
				*head = wsproto.AppendClose(*head, ev.Code, ev.Reason)
				t.code = ev.Code
			}
			return C.MODZMQ_END
		case wsproto.Text, wsproto.Binary:
			if !t.closing {
				t.ev, t.held = ev, true
			}
		}
	}
	if len(*head) > cap(*head)-2*wsControlMax-wsHeaderMax {
		io.again = 1 // more of the client's frames may be ready
	}

	// A stop first: httpd may have shut the client's connection itself.
	if io.stopping != 0 && !t.closing {
		*head = wsproto.AppendClose(*head, bridge.CloseGoingAway, nil)
		t.code = bridge.CloseGoingAway
		t.closeSent(now)
		if !t.ended {
			t.close(bridge.CloseGoingAway, nil)
		}
	}
	if io.client_gone != 0 {
		if !t.ended {
			t.close(bridge.CloseAbnormal, nil)
		}
		return C.MODZMQ_END
	}
	if t.closing {
		if !now.Before(t.closeBy) {
			return C.MODZMQ_END
		}
		return C.MODZMQ_PENDING
	}
	if silent := now.Sub(t.heard); silent >= t.idle {
		io.idle = 1
		t.close(bridge.CloseAbnormal, nil)
		return C.MODZMQ_END
	} else if silent >= t.idle/2 && !t.pinged {
		*head = wsproto.AppendPing(*head, nil)
		t.pinged = true
	}
	if msg.Kind == bridge.Text || msg.Kind == bridge.Binary {
		kind := wsproto.Binary
		if msg.Kind == bridge.Text {
			kind = wsproto.Text
		}
		*head = wsproto.AppendHeader(*head, kind, len(msg.Data))
		if !setParts(resp, msg.Data, nil, nil) {
			return t.broke(resp, io, head, errors.New("out of memory for a message"))
		}
	}
	return C.MODZMQ_PENDING
}

// sendHeld sends the held client message once the worker's credit covers
// it; false while it does not.
func (t *wsTunnel) sendHeld() (bool, error) {
	if int64(len(t.ev.Data))+bridge.PartCost > t.ws.SendCredit() {
		return false, nil
	}
	kind := bridge.Binary
	if t.ev.Kind == wsproto.Text {
		kind = bridge.Text
	}
	if err := t.ws.Send(bridge.Message{Kind: kind, Data: t.ev.Data}); err != nil {
		return false, err
	}
	t.held, t.ev = false, wsproto.Event{}
	return true, nil
}

// close closes the worker's side with code and reason (bridge.WebSocket.Close
// tells the worker unless it closed or has the client's close), after the
// wake-up goroutine, if any, has stopped.
func (t *wsTunnel) close(code int, reason []byte) {
	t.wake.stop()
	t.wake = nil
	t.ended = true
	t.ws.Close(code, reason)
}

func (t *wsTunnel) closeSent(now time.Time) {
	t.closing, t.closeBy, t.held, t.ev = true, now.Add(wsCloseWait), false, wsproto.Event{}
}

// broke ends a WebSocket the worker broke or lost: the client gets 1011.
func (t *wsTunnel) broke(resp *C.modzmq_response, io *C.modzmq_ws_io, head *[]byte, err error) C.int {
	*head = wsproto.AppendClose((*head)[:min(len(*head), cap(*head)-wsControlMax)], bridge.CloseInternalError, nil)
	t.code = bridge.CloseInternalError
	if !t.ended {
		t.close(bridge.CloseInternalError, nil)
	}
	resp.body, resp.body_len = nil, 0
	return failed(resp, err)
}

// clientBroke ends a WebSocket whose client broke RFC 6455: the client
// and the worker get the code the breach calls for (1002, 1007, 1009).
func (t *wsTunnel) clientBroke(resp *C.modzmq_response, io *C.modzmq_ws_io, head *[]byte, err error) C.int {
	code := bridge.CloseProtocolError
	var we *wsproto.Error
	if errors.As(err, &we) {
		code = we.Code
	}
	*head = wsproto.AppendClose(*head, code, nil)
	t.code, io.client_error = code, 1
	if !t.ended {
		t.close(code, nil)
	}
	setError(&resp.error[0], C.size_t(len(resp.error)), err.Error())
	return C.MODZMQ_END
}

// wait says what the shim waits for until the next step: the client's
// bytes unless a message waits for credit (at most what the reader may
// hold), the worker's connection, and the next timer.
func (t *wsTunnel) wait(resp *C.modzmq_response, io *C.modzmq_ws_io) {
	st := callState(resp)
	io.read_max = 0
	if !t.held {
		io.read_max = C.int64_t(t.rd.Space())
	}
	io.fd, st.zconn, st.wait_ms = -1, nil, 0
	if !t.ended {
		switch z := t.ws.Conn().(type) {
		case *zConn:
			io.fd, st.zconn = C.zmtp_fd(z.z), unsafe.Pointer(z.z)
		default:
			if t.wake == nil {
				t.wake = newWake(t.ws.Ready())
			}
			io.fd = C.int(t.wake.fd())
		}
	}
	now := time.Now()
	next := now.Add(wsQuiet)
	switch {
	case t.closing:
		next = t.closeBy
	case !t.pinged:
		next = earliest(next, t.heard.Add(t.idle/2))
	default:
		next = earliest(next, t.heard.Add(t.idle))
	}
	io.wait_ms = C.int(max(next.Sub(now).Milliseconds()+1, 0))
	C.modzmq_set_due(resp, C.int64_t(io.wait_ms))
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// wsWake turns a connection's Ready channel (the bridge's shared
// connections, with ZmqCurve) into a pipe the shim can poll: a goroutine
// writes a byte for each wake-up, the step drains it.
type wsWake struct {
	r, w int
	done chan struct{}
	wg   sync.WaitGroup
}

func newWake(ready <-chan struct{}) *wsWake {
	var fds [2]int
	if ready == nil || syscall.Pipe2(fds[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC) != nil {
		return nil
	}
	k := &wsWake{r: fds[0], w: fds[1], done: make(chan struct{})}
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		one := []byte{1}
		for {
			select {
			case <-ready:
				syscall.Write(k.w, one) // a full pipe has woken the shim already
			case <-k.done:
				return
			}
		}
	}()
	return k
}

func (k *wsWake) fd() int {
	if k == nil {
		return -1
	}
	return k.r
}

func (k *wsWake) drain() {
	if k == nil {
		return
	}
	var b [64]byte
	for {
		if n, err := syscall.Read(k.r, b[:]); n <= 0 || err != nil {
			return
		}
	}
}

// stop ends the goroutine before the connection goes back to a pool, where
// its wake-ups belong to the next request.
func (k *wsWake) stop() {
	if k == nil {
		return
	}
	close(k.done)
	k.wg.Wait()
	syscall.Close(k.r)
	syscall.Close(k.w)
}
