package stream

import (
	"crypto/sha256"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/modzmq/modzmq/bridge"
	"github.com/modzmq/modzmq/gateway"
	"github.com/modzmq/modzmq/internal/zmqtest"
)

// Streamed request bodies in stream mode (route key stream_body;
// docs/PROTOCOL.md, "Streamed request bodies"), against libzmq ROUTER
// workers that grant credit as a test tells them, and clients on raw
// connections.

// uploadWorker is a ROUTER worker that takes streamed bodies. It grants
// window bytes of credit with each request, grants back what each part
// cost while regrant is on, grants what the test sends on grants, and at
// @body-end answers 200 with "<parts> <bytes> <sha256>" of what it got.
// With early set, it answers that status after a request's first part
// instead. Requests without stream-body get "plain <target>".
type uploadWorker struct {
	ep       string
	msgs     chan workerMsg // the messages it got, but parts
	parts    atomic.Int64   // @body and @body-end messages
	received atomic.Int64   // their bytes
	maxPart  atomic.Int64   // the largest part
	regrant  atomic.Bool
	grants   chan int64 // more credit for the upload in progress
	// tag, when set, is added to the answers to plain requests, as they
	// are made.
	tag atomic.Pointer[func() string]
}

type upload struct {
	env   [][]byte
	sum   []byte // SHA-256 state: the bytes, hashed at the end
	parts int
}

func startUploadWorker(t *testing.T, window int64, regrant bool, early string) *uploadWorker {
	w := &uploadWorker{msgs: make(chan workerMsg, 64), grants: make(chan int64, 4)}
	w.regrant.Store(regrant)
	uploads := map[string]*upload{}
	var last [][]byte // the envelope of the latest upload
	grant := func(reply func([][]byte), env [][]byte, n int64) {
		reply(zmqtest.Part(env, "@credit", strconv.FormatInt(n, 10)))
	}
	extra := func(reply func([][]byte)) {
		for {
			select {
			case n := <-w.grants:
				grant(reply, last, n)
			default:
				return
			}
		}
	}
	w.ep = zmqtest.ROUTERIdle(t, func(msg [][]byte, reply func([][]byte)) {
		m := workerMsg(msg)
		switch m.method() {
		case "@body", "@body-end":
			u := uploads[m.id()]
			if u == nil {
				t.Errorf("a part for request %s, which has no body streaming", m.id())
				return
			}
			body := m[8]
			w.parts.Add(1)
			w.received.Add(int64(len(body)))
			if int64(len(body)) > w.maxPart.Load() {
				w.maxPart.Store(int64(len(body)))
			}
			u.parts++
			u.sum = append(u.sum, body...)
			switch {
			case early != "":
				delete(uploads, m.id())
				reply(zmqtest.Part(u.env, early, "", "no thanks"))
			case m.method() == "@body-end":
				delete(uploads, m.id())
				reply(zmqtest.Part(u.env, "200", "", fmt.Sprintf("%d %d %x", u.parts, len(u.sum), sha256.Sum256(u.sum))))
			case w.regrant.Load():
				grant(reply, u.env, int64(len(body))+bridge.PartCost)
			}
		default:
			w.msgs <- m
			switch {
			case strings.HasPrefix(m.method(), "@"):
			case strings.Contains(m.meta(), "stream-body: 1\r\n"):
				if len(m[8]) != 0 {
					t.Errorf("a streamed body's request came with %d bytes of body", len(m[8]))
				}
				uploads[m.id()] = &upload{env: m.envelope()}
				last = m.envelope()
				if window > 0 {
					grant(reply, m.envelope(), window)
				}
			default:
				answer := "plain " + m.target()
				if tag := w.tag.Load(); tag != nil {
					answer += " " + (*tag)()
				}
				reply(zmqtest.Part(m.envelope(), "200", "", answer))
			}
		}
		extra(reply)
	}, extra)
	return w
}

// request waits for the next request (not a notice) the worker got.
func (w *uploadWorker) request(t *testing.T) workerMsg {
	t.Helper()
	for {
		m := zmqtest.WaitFor(t, w.msgs, "a request at the worker")
		if !strings.HasPrefix(m.method(), "@") {
			return m
		}
	}
}

// drain forgets the messages the worker got so far.
func (w *uploadWorker) drain() {
	for {
		select {
		case <-w.msgs:
		default:
			return
		}
	}
}

// waitParts waits until the worker got n parts.
func (w *uploadWorker) waitParts(t *testing.T, n int64) {
	t.Helper()
	settle(t, fmt.Sprintf("%d parts at the worker", n), 10*time.Second, func() bool { return w.parts.Load() >= n })
}

// pattern returns n bytes of a pattern that no two offsets share short of
// 251 bytes.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// digest is the worker's answer for a body received in any number of parts.
func digest(body []byte) string {
	return fmt.Sprintf("%d %x", len(body), sha256.Sum256(body))
}

// chunked encodes body in chunks of varying sizes, with an extension on
// one and a trailer field.
func chunked(body []byte) string {
	var b strings.Builder
	for i, n := 0, 1; i < len(body); n = n*7%5003 + 1 {
		n := min(n, len(body)-i)
		fmt.Fprintf(&b, "%x", n)
		if i == 0 {
			b.WriteString(";name=value")
		}
		b.WriteString("\r\n")
		b.Write(body[i : i+n])
		b.WriteString("\r\n")
		i += n
	}
	b.WriteString("0\r\nX-Trailer: dropped\r\n\r\n")
	return b.String()
}

func noLimit() *int64 { return new(int64) }

// With stream_body, the request reaches the worker with stream-body: 1 and
// an empty body frame before any of its body was sent; the body follows in
// parts the size of the worker's grants, whole and in order, for a
// Content-Length body and for a chunked one; the worker answers at the end,
// and the request pipelined behind the body is answered next.
func TestStreamedBodyArrivesInParts(t *testing.T) {
	w := startUploadWorker(t, 1000, true, "")
	_, addr, logs := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{w.ep}, StreamBody: true})
	body := pattern(300 << 10)
	for _, tt := range []struct {
		name, head, body string
	}{
		{"content-length", "Content-Length: " + strconv.Itoa(len(body)) + "\r\nExpect: 100-continue\r\n", string(body)},
		{"chunked", "Transfer-Encoding: chunked\r\n", chunked(body)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, addr)
			w.drain()
			parts := w.parts.Load()
			c.send("POST /up HTTP/1.1\r\nHost: x\r\n" + tt.head + "\r\n")
			if strings.Contains(tt.head, "100-continue") {
				if status, _ := c.head(); status != "HTTP/1.1 100 Continue" {
					t.Fatalf("want 100 Continue first, got %q", status)
				}
			}
			m := w.request(t) // no byte of the body sent yet
			if !strings.Contains(m.meta(), "stream-body: 1\r\n") || m.method() != "POST" || m.target() != "/up" {
				t.Errorf("the request: %s %s, meta %q; want stream-body: 1", m.method(), m.target(), m.meta())
			}
			c.send(tt.body[:100])
			w.waitParts(t, parts+1) // the first part before the rest is sent
			c.send(tt.body[100:] + "GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
			got := readResponses(t, c.c, 2)
			if want := fmt.Sprintf("200 %d %s", w.parts.Load()-parts, digest(body)); got[0] != want {
				t.Errorf("the upload: %q, want %q", got[0], want)
			}
			if got[1] != "200 plain /next" {
				t.Errorf("the request after the body: %q", got[1])
			}
			if n := w.parts.Load() - parts; n < int64(len(body)/(1000-bridge.PartCost)) {
				t.Errorf("%d bytes came in %d parts; with 1000 bytes of credit at a time, want at least %d", len(body), n, len(body)/(1000-bridge.PartCost))
			}
		})
	}
	if max := w.maxPart.Load(); max > 1000-bridge.PartCost {
		t.Errorf("a part of %d bytes; the worker never granted more than 1000 (parts cost 64 more)", max)
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", logs)
	}
}

// A worker that answers after the first part (413 here) gets no more
// parts; its answer reaches the client, the rest of the body is read and
// dropped, and the request the client pipelined after the body is answered
// on the same connection. Likewise with Connection: close, the connection
// closes after the body was dropped.
func TestStreamedBodyAnsweredEarly(t *testing.T) {
	w := startUploadWorker(t, 100+bridge.PartCost, false, "413 Too Big")
	_, addr, _ := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{w.ep}, StreamBody: true, MaxBody: noLimit()})
	body := pattern(1 << 20)
	for _, tt := range []struct {
		name, head, body string
	}{
		{"content-length", "Content-Length: " + strconv.Itoa(len(body)) + "\r\n", string(body)},
		{"chunked", "Transfer-Encoding: chunked\r\n", chunked(body)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, addr)
			parts := w.parts.Load()
			c.send("POST /up HTTP/1.1\r\nHost: x\r\n" + tt.head + "\r\n" + tt.body[:1000])
			w.waitParts(t, parts+1)
			sent := make(chan error, 1)
			go func() { // the client sends everything before it reads
				_, err := io.WriteString(c.c, tt.body[1000:]+"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
				sent <- err
			}()
			got := readResponses(t, c.c, 2)
			if got[0] != "413 no thanks" || got[1] != "200 plain /next" {
				t.Errorf("got %q; want the worker's 413, then the pipelined request's answer", got)
			}
			if err := zmqtest.WaitFor(t, sent, "the client's writes"); err != nil {
				t.Errorf("sending the body: %v", err)
			}
			if n := w.parts.Load() - parts; n != 1 {
				t.Errorf("the worker got %d parts; want only the one before its answer", n)
			}
		})
	}
	// Connection: close: closed after the answer and the dropped body.
	c := dial(t, addr)
	c.send("POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + string(body[:1000]))
	sent := make(chan error, 1)
	go func() {
		_, err := c.c.Write(body[1000:])
		sent <- err
	}()
	if got := readResponses(t, c.c, 1); got[0] != "413 no thanks" {
		t.Errorf("with Connection: close: %q", got)
	}
	if err := zmqtest.WaitFor(t, sent, "the client's writes"); err != nil {
		t.Errorf("with Connection: close, sending the body: %v (reset before it was read?)", err)
	}
	if ok, rest := c.closed(); !ok {
		t.Errorf("with Connection: close, after the answer the client read %q; want the connection closed", rest)
	}
}

// A worker that grants nothing within the route's timeout gets its client
// a 504, as a worker that does not answer; no part reaches it, and the
// connection goes on with the request pipelined after the body (which the
// client sends whole, more than stream mode holds).
func TestStreamedBodyWorkerGrantsNothing(t *testing.T) {
	w := startUploadWorker(t, 0, false, "")
	_, addr, logs := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{w.ep}, StreamBody: true,
		Timeout: gateway.Duration(300 * time.Millisecond)})
	body := pattern(512 << 10)
	c := dial(t, addr)
	go io.WriteString(c.c, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+string(body)+
		"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
	got := readResponses(t, c.c, 2)
	if !strings.HasPrefix(got[0], "504 ") || got[1] != "200 plain /next" {
		t.Errorf("got %q; want 504, then the pipelined request's answer", got)
	}
	if n := w.parts.Load(); n != 0 {
		t.Errorf("the worker got %d parts without granting credit", n)
	}
	if !strings.Contains(logs.String(), "MODZMQ0102") {
		t.Errorf("no MODZMQ0102 (timeout) line:\n%s", logs)
	}
}

// With notices, a client that goes away in the middle of its body gets
// the worker a cancel notice for the request; nothing is logged as an
// error, and the server goes on.
func TestStreamedBodyClientLeaves(t *testing.T) {
	w := startUploadWorker(t, 4096, true, "")
	srv, addr, logs := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{w.ep}, StreamBody: true, Notices: true})
	c := dial(t, addr)
	c.send("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + string(pattern(500)))
	m := w.request(t)
	if !strings.Contains(m.meta(), "notices: cancel\r\n") {
		t.Errorf("the request's meta: %q", m.meta())
	}
	w.waitParts(t, 1)
	c.c.Close()
	for {
		n := zmqtest.WaitFor(t, w.msgs, "the cancel notice")
		if n.method() != "@cancel" {
			continue
		}
		if n.id() != m.id() {
			t.Errorf("@cancel for %s, want %s", n.id(), m.id())
		}
		break
	}
	settle(t, "the connection", 10*time.Second, func() bool { return srv.OpenConnections() == 0 })
	p := dial(t, addr)
	p.send("GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
	if got := readResponses(t, p.c, 1); got[0] != "200 plain /after" {
		t.Errorf("after the client left: %q", got)
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("a client that left is not an error:\n%s", logs)
	}
}

// A body that breaks the parser mid-way (bad chunk framing, or chunks over
// max_body) ends the request with that status, the worker gets a cancel
// notice, and the connection closes.
func TestStreamedBodyBreaksMidway(t *testing.T) {
	w := startUploadWorker(t, 1<<20, true, "")
	limit := int64(64 << 10)
	_, addr, _ := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{w.ep}, StreamBody: true, Notices: true, MaxBody: &limit})
	for _, tt := range []struct {
		name, chunks string
		status       int
	}{
		{"bad chunk", "4\r\nabcd\r\nzz\r\n", 400},
		{"over max_body", "8000\r\n" + strings.Repeat("a", 0x8000) + "\r\n8001\r\n", 413},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, addr)
			w.drain()
			c.send("POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + tt.chunks)
			m := w.request(t)
			if got := readResponses(t, c.c, 1); !strings.HasPrefix(got[0], strconv.Itoa(tt.status)+" ") {
				t.Errorf("got %q, want %d", got, tt.status)
			}
			if ok, rest := c.closed(); !ok {
				t.Errorf("after the answer the client read %q; want the connection closed", rest)
			}
			for {
				n := zmqtest.WaitFor(t, w.msgs, "the cancel notice")
				if n.method() == "@cancel" && n.id() == m.id() {
					break
				}
			}
		})
	}
}

// A client that sends its body faster than the worker grants is slowed
// down to the worker's pace: what it sent that the worker has not got waits
// in the kernel's buffers, and stream mode holds less than 64 KiB of it,
// libzmq's queue for the connection included. Once the worker grants
// again, the whole body arrives intact.
func TestStreamedBodyHoldsOnePart(t *testing.T) {
	w := startUploadWorker(t, 64<<10+bridge.PartCost, false, "")
	_, addr, _ := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{w.ep}, StreamBody: true, MaxBody: noLimit()})
	body := pattern(48 << 20)
	c := dial(t, addr)
	c.c.SetDeadline(time.Now().Add(2 * time.Minute))
	var written atomic.Int64
	sent := make(chan error, 1)
	go func() {
		head := "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
		if _, err := io.WriteString(c.c, head); err != nil {
			sent <- err
			return
		}
		for off := 0; off < len(body); off += 4 << 10 {
			n, err := c.c.Write(body[off:min(off+4<<10, len(body))])
			written.Add(int64(n))
			if err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	w.request(t)
	// Wait until nothing moves: the worker has what its credit allowed,
	// the client's writes are blocked.
	var lastW, lastR int64 = -1, -1
	still := 0
	settle(t, "the upload", 30*time.Second, func() bool {
		wr, rd := written.Load(), w.received.Load()
		if wr == lastW && rd == lastR && rd > 0 {
			still++
		} else {
			still = 0
		}
		lastW, lastR = wr, rd
		return still >= 4
	})
	kernel := clientQueue(t, c.c, syscall.TIOCOUTQ) + ioctlInt(t, serverSocket(t, c.c), syscall.TIOCINQ)
	wr, rd := written.Load(), w.received.Load()
	held := wr - rd - kernel
	limit := int64(64<<10 + 4<<10) // stream mode with libzmq, and one write of the client in doubt
	t.Logf("the client sent %d KiB, the worker got %d KiB, the kernel holds %d KiB: stream mode and libzmq hold %d KiB (limit %d KiB)",
		wr>>10, rd>>10, kernel>>10, held>>10, limit>>10)
	if wr >= int64(len(body)) {
		t.Fatalf("the client sent all %d bytes to a worker that granted 64 KiB; want it slowed down", wr)
	}
	if held > limit {
		t.Errorf("stream mode and libzmq hold %d bytes of a body the worker does not take; want at most %d", held, limit)
	}
	if rd > 64<<10 {
		t.Errorf("the worker got %d bytes on a credit of 64 KiB", rd)
	}
	w.regrant.Store(true)
	w.grants <- 1 << 20
	if err := zmqtest.WaitFor(t, sent, "the rest of the upload"); err != nil {
		t.Fatalf("sending the body: %v", err)
	}
	got := readResponses(t, c.c, 1)
	if want := fmt.Sprintf("200 %d %s", w.parts.Load(), digest(body)); got[0] != want {
		t.Errorf("the upload: %q, want %q", got[0], want)
	}
}

// While a streamed body holds the socket for a worker that grants
// nothing, no other connection is read, but for no more than holdLimit:
// then that request ends with 503 (MODZMQ0310), well before its 30 s
// timeout, and the other connection's request is read and answered, whole.
func TestStreamedBodyHoldReleasedForOthers(t *testing.T) {
	w := startUploadWorker(t, 0, false, "")
	srv, addr, logs := startServerLog(t, Options{}, gateway.Route{Prefix: "/", Backend: []string{w.ep}, StreamBody: true,
		Timeout: gateway.Duration(30 * time.Second), MaxBody: noLimit()})
	stats := srv.lv.Gateway().Handles()[0].Client.Stats()
	tag := func() string { return fmt.Sprintf("after %d timeouts", stats.Status[504].Load()) }
	w.tag.Store(&tag)
	up := dial(t, addr)
	go up.c.Write(append([]byte("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n"), pattern(4<<20)...))
	w.request(t)
	// The socket is not read: what the client sends waits in the kernel.
	fd := serverSocket(t, up.c)
	settle(t, "the upload's bytes in the kernel", 10*time.Second, func() bool {
		return clientQueue(t, up.c, syscall.TIOCOUTQ)+ioctlInt(t, fd, syscall.TIOCINQ) > 256<<10
	})
	other := dial(t, addr)
	other.send("GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
	if got := readResponses(t, other.c, 1); got[0] != "200 plain /other after 0 timeouts" {
		t.Errorf("the other connection: %q; want it read after the upload ended, before any timeout", got)
	}
	if got := readResponses(t, up.c, 1); !strings.HasPrefix(got[0], "503 ") {
		t.Errorf("the upload to a worker that grants nothing: %q, want 503", got)
	}
	if !strings.Contains(logs.String(), "MODZMQ0310") {
		t.Errorf("no MODZMQ0310 line:\n%s", logs)
	}
}
