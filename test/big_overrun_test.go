package test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A worker past its credit with few but large messages, against
// test/workers/big_overrun_worker.py, in zmq-gateway's HTTP mode and in
// stream mode, whose connections to a worker are shared: the front's
// reader takes every message off the connection, so what it queues for one
// stream or WebSocket must be bounded by that request's window in bytes,
// not only in messages (docs/PROTOCOL.md, "Credits").

// The route: a 64 KiB stream window and WebSocket messages of up to
// 16 MiB (the default), so a WebSocket's credit is 16 MiB and 64 KiB (and
// 64), a stream's 64 KiB; the worker then sends 64 messages of 4 MiB past
// it, 256 MiB.
const (
	boWindow = 64 << 10
	boMax    = 16 << 20
	boCount  = 64
	boSize   = 4 << 20
	boFlood  = boCount * boSize
	// boGrowth bounds what the front's resident memory may grow by while
	// the flood arrives, from when the worker stalled: well under the
	// flood, which the front would hold whole if it bounded a request's
	// queue by messages only. The front holds at most a window and one
	// message of what comes past the credit; but the reader allocates
	// every message before it finds no room for it, and until the
	// collector runs that garbage takes up to about the heap in use
	// (which the WebSocket's honest 16 MiB, queued before the flood,
	// swell).
	boGrowth = 96 << 20
)

// startBOFront starts big_overrun_worker.py and zmq-gateway (mode "" for
// HTTP, "stream") in front of it, route /big.
func startBOFront(t *testing.T, mode string) (*gatewayProc, *worker) {
	t.Helper()
	w := startPyScript(t, "test/workers/big_overrun_worker.py")
	g := startGatewayProc(t, mode, fmt.Sprintf("  - prefix: /big\n    backend: [%s]\n    websocket: true\n"+
		"    websocket_max_message: %d\n    stream_window: %d\n", w.Endpoint, boMax, boWindow))
	return g, w
}

// rssSampler keeps the highest resident memory of a process until stopped.
type rssSampler struct {
	mu   sync.Mutex
	peak int64
	stop chan struct{}
	done chan struct{}
}

func sampleRSS(t *testing.T, pid int) *rssSampler {
	s := &rssSampler{peak: vmRSS(t, pid), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			if n, ok := readRSS(pid); ok {
				s.mu.Lock()
				s.peak = max(s.peak, n)
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return s
}

func (s *rssSampler) finish() int64 {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// waitSaid waits until the worker prints line.
func waitSaid(t *testing.T, w *worker, line string) {
	t.Helper()
	checkFor(t, 30*time.Second, func() error {
		if !strings.Contains(w.Output.String(), line+"\n") {
			return fmt.Errorf("the worker has not printed %q yet:\n%s", line, w.Output)
		}
		return nil
	})
}

// dialSmallRcvbuf connects to addr with a receive buffer set small before
// the connection is made.
func dialSmallRcvbuf(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// A worker that, while its client reads nothing, sends 64 messages of
// 4 MiB past its credit, for a WebSocket and for a streamed reply: the
// front's resident memory grows by far less than the 256 MiB (it holds
// at most the request's window and one message), the client gets close 1011
// or a response that ends abnormally, the front logs the documented code,
// and another WebSocket and a new stream on the same worker go on.
func TestWorkerPastItsCreditWithLargeMessagesIsBoundedByItsWindow(t *testing.T) {
	for _, tc := range []struct{ mode, name, wsCode string }{
		{"", "gateway", `MODZMQ0132`}, {"stream", "stream", `MODZMQ0307`},
	} {
		for _, kind := range []string{"WebSocket", "Stream"} {
			t.Run(tc.name+"/"+kind, func(t *testing.T) {
				g, w := startBOFront(t, tc.mode)
				other := mustOpen(t, g.Addr, nil, "/big/echo")
				other.send(opText, []byte("before"))
				other.expect(opText, []byte("before"))

				var ws *wsClient
				var nc net.Conn
				var name, code string
				query := fmt.Sprintf("count=%d&size=%d&part=%d", boCount, boSize, 16<<10)
				if kind == "WebSocket" {
					ws, _ = wwDial(t, g.Addr, "/big/overrun?"+query)
					name, code = ws.ConnID, tc.wsCode
				} else {
					nc = dialSmallRcvbuf(t, g.Addr)
					fmt.Fprintf(nc, "GET /big/overrun/s1?%s HTTP/1.1\r\nHost: x\r\n\r\n", query)
					name, code = "s1", `MODZMQ0130`
				}
				waitSaid(t, w, "stalled "+name)
				pid := g.cmd.Process.Pid
				base := vmRSS(t, pid)
				rss := sampleRSS(t, pid)
				waitSaid(t, w, fmt.Sprintf("overrun %s %d", name, boCount))
				// The echo comes after the flood on the worker's one
				// connection to the front: once the other WebSocket has it,
				// the front has read the whole flood.
				other.patience = 30 * time.Second
				other.send(opText, []byte("after the flood"))
				other.expect(opText, []byte("after the flood"))
				peak := max(rss.finish(), vmRSS(t, pid))
				t.Logf("%s %s: the front's resident memory %d MiB when the worker stalled, at most %d MiB while %d MiB came past the credit",
					tc.name, kind, base>>20, peak>>20, boFlood>>20)
				if peak-base > boGrowth {
					t.Errorf("the front's resident memory grew by %d MiB while the worker sent %d MiB past its credit; want at most %d MiB",
						(peak-base)>>20, boFlood>>20, boGrowth>>20)
				}

				// The client reads again: what the worker sent within its
				// credit, then the end of the WebSocket or stream.
				if kind == "WebSocket" {
					ws.patience = 30 * time.Second
					msgs, big := 0, 0
					for {
						op, p, err := ws.readFrame()
						if err != nil {
							t.Fatalf("after %d messages the client read %v; want close 1011", msgs, err)
						}
						if op == opPing {
							ws.send(opPong, p)
							continue
						}
						if op == opBinary {
							msgs++
							if len(p) == boSize {
								big++
							}
							continue
						}
						if op != opClose || len(p) < 2 || int(p[0])<<8|int(p[1]) != 1011 {
							t.Fatalf("after %d messages the client got opcode %d with %d bytes; want close 1011", msgs, op, len(p))
						}
						break
					}
					// The front counts a message against the credit as the
					// client takes it, after the grants for those before it:
					// a few of the large ones may fit, never all.
					t.Logf("%s: the client got %d messages, %d of them large, then close 1011", tc.name, msgs, big)
					if big >= boCount {
						t.Errorf("the client got all %d messages sent past the credit; the front let the breach through", big)
					}
					wwWaitClosed(t, w, name, 1011)
				} else {
					nc.SetReadDeadline(time.Now().Add(30 * time.Second))
					resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
					if err != nil || resp.StatusCode != 200 {
						t.Fatalf("the stream's head: %v, %v", resp, err)
					}
					n, err := io.Copy(io.Discard, resp.Body)
					if err == nil {
						t.Fatalf("the stream ended normally after %d bytes; want an abnormal end", n)
					}
					t.Logf("%s: the stream ended abnormally after %d bytes: %v", tc.name, n, err)
				}
				re := regexp.MustCompile(code + `: .*credit`)
				checkFor(t, 10*time.Second, func() error {
					if !re.MatchString(g.Stderr.String()) {
						return fmt.Errorf("no line matching %q in the front's log:\n%s", re, g.Stderr)
					}
					return nil
				})

				other.send(opBinary, []byte("still there"))
				other.expect(opBinary, []byte("still there"))
				body, err := getStream(g.Addr, "/big/events/e1?n=50")
				var want strings.Builder
				for i := range 50 {
					fmt.Fprintf(&want, "data: e1 %d\n\n", i)
				}
				if err != nil || string(body) != want.String() {
					t.Errorf("a new stream on the same worker: %d bytes, %v; want its 50 events", len(body), err)
				}
			})
		}
	}
}
