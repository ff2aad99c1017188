package test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Flow control and isolation of WebSockets and streams on every front,
// against test/workers/ws_window_worker.py: a client that stops reading
// while the worker floods it, a worker that sends past its credit, and
// concurrent requests on one worker whose parts must never mix.

// The route every test here uses: a 64 KiB stream window and messages of
// at most 16 KiB, so a WebSocket's credit (docs/PROTOCOL.md, "Messages,
// credits and close") is the window, a message of the largest size and 64.
const (
	wwWindow = 64 << 10
	wwMax    = 16 << 10
	wwCredit = wwWindow + wwMax + 64
)

// wwFront is one front under test, with ws_window_worker.py behind its
// route /ws.
type wwFront struct {
	name      string
	addr      string // host:port for clients
	statusURL string // the status page's JSON; "" for stream mode, which has none
	log       func() string
	expect    func(re string) // declares error-log lines the test causes (Apache)
	shared    bool            // requests in flight share one connection to the worker
	w         *worker
}

// startWWFront starts ws_window_worker.py and the front named (apache,
// gateway, stream) in front of it.
func startWWFront(t *testing.T, name string) *wwFront {
	t.Helper()
	w := startPyScript(t, "test/workers/ws_window_worker.py")
	f := &wwFront{name: name, w: w, expect: func(string) {}}
	switch name {
	case "apache":
		h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /ws>
		SetHandler zmq
		ZmqBackend %s
		ZmqWebSocket on
		ZmqWebSocketMaxMessage %d
		ZmqStreamWindow %d
	</Location>
	<Location /zmq-status>
		SetHandler zmq-status
	</Location>
`, w.Endpoint, wwMax, wwWindow)})
		f.addr, f.statusURL, f.log, f.expect = fmt.Sprintf("127.0.0.1:%d", h.Port), h.URL+"/zmq-status?json", h.errorLog, h.expect
	case "gateway", "stream":
		routes := fmt.Sprintf("  - prefix: /ws\n    backend: [%s]\n    websocket: true\n    websocket_max_message: %d\n    stream_window: %d\n",
			w.Endpoint, wwMax, wwWindow)
		mode := ""
		if name == "gateway" {
			admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			routes += "admin: " + admin + "\n"
			f.statusURL = "http://" + admin + "/status?json"
		} else {
			mode = "stream"
		}
		g := startGatewayProc(t, mode, routes)
		f.addr, f.log, f.shared = g.Addr, g.Stderr.String, true
	default:
		t.Fatalf("no front %q", name)
	}
	return f
}

// wwDial opens a WebSocket at path with a client whose receive buffer is
// set small before it connects, so that what the kernel holds for it stays
// small too. It returns the client and its TCP connection.
func wwDial(t *testing.T, addr, path string) (*wsClient, *net.TCPConn) {
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
	conn := nc.(*net.TCPConn)
	t.Cleanup(func() { conn.Close() })
	key := newKey()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", path, addr, key)
	r := bufio.NewReaderSize(conn, 16<<10)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("the handshake's answer: %v", err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Accept") != acceptKey(key) {
		t.Fatalf("%s: handshake answered %s %v", path, resp.Status, resp.Header)
	}
	conn.SetDeadline(time.Time{})
	return &wsClient{t: t, r: r, w: conn, Resp: resp, ConnID: resp.Header.Get("X-Connection-Id"),
		close:  func() { conn.Close() },
		expire: func(d time.Duration) { conn.SetReadDeadline(time.Now().Add(d)) },
		end:    func(last []byte) error { conn.Write(last); return conn.CloseWrite() }}, conn
}

// tcpQueue returns the bytes the kernel holds for the TCP socket from
// local to remote, from /proc/net/tcp: its send queue (what was written
// and not yet acknowledged) and its receive queue (what arrived and was
// not yet read). Any process's sockets show there.
func tcpQueue(t *testing.T, local, remote *net.TCPAddr) (tx, rx int64) {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	hex := func(a *net.TCPAddr) string {
		ip := a.IP.To4()
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], a.Port)
	}
	l, r := hex(local), hex(remote)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[1] != l || f[2] != r {
			continue
		}
		q := strings.SplitN(f[4], ":", 2)
		txq, err1 := strconv.ParseInt(q[0], 16, 64)
		rxq, err2 := strconv.ParseInt(q[1], 16, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("/proc/net/tcp: %q", line)
		}
		return txq, rxq
	}
	t.Fatalf("/proc/net/tcp has no socket from %s to %s", local, remote)
	return 0, 0
}

// maxSendBuffer is the most the kernel lets a TCP socket's send buffer
// grow to (the third field of tcp_wmem).
func maxSendBuffer(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_wmem")
	f := strings.Fields(string(b))
	if err != nil || len(f) != 3 {
		t.Fatalf("tcp_wmem: %v %q", err, b)
	}
	n, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

var wwFloodLine = regexp.MustCompile(`(?m)^flood (\S+) (\d+) (\d+)$`)

// floodSent returns what the worker last said it sent on the WebSocket of
// connection id: messages and bytes.
func floodSent(w *worker, id string) (msgs, bytes int64) {
	for _, m := range wwFloodLine.FindAllStringSubmatch(w.Output.String(), -1) {
		if m[1] == id {
			msgs, _ = strconv.ParseInt(m[2], 10, 64)
			bytes, _ = strconv.ParseInt(m[3], 10, 64)
		}
	}
	return msgs, bytes
}

// waitStalled waits until the worker's flood on connection id has stopped
// growing for a second, and returns what it sent.
func waitStalled(t *testing.T, w *worker, id string) (msgs, sent int64) {
	t.Helper()
	var since time.Time
	checkFor(t, 20*time.Second, func() error {
		m, b := floodSent(w, id)
		if m != msgs || b != sent || since.IsZero() {
			msgs, sent, since = m, b, time.Now()
		}
		if sent == 0 || time.Since(since) < time.Second {
			return fmt.Errorf("the worker's flood on %s is still growing: %d messages, %d bytes", id, msgs, sent)
		}
		return nil
	})
	return msgs, sent
}

// floodPayload is message i of the flood: i in 8 bytes, then (i + j) % 251.
func floodPayload(i, size int) []byte {
	p := make([]byte, size)
	binary.BigEndian.PutUint64(p, uint64(i))
	for j := 8; j < size; j++ {
		p[j] = byte((i + j) % 251)
	}
	return p
}

// bufferedSampler polls a status page's buffered bytes for route /ws
// until stopped, and keeps the highest reading.
type bufferedSampler struct {
	mu      sync.Mutex
	peak    int64
	samples int
	err     error
	stop    chan struct{}
	done    chan struct{}
}

func sampleBuffered(url string) *bufferedSampler {
	s := &bufferedSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			c, err := readStreams(url, "/ws")
			s.mu.Lock()
			s.peak, s.samples = max(s.peak, c.Buffered), s.samples+1
			if err != nil && s.err == nil {
				s.err = err
			}
			s.mu.Unlock()
			select {
			case <-s.stop:
				return
			case <-time.After(25 * time.Millisecond):
			}
		}
	}()
	return s
}

func (s *bufferedSampler) finish() (peak int64, samples int, err error) {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak, s.samples, s.err
}

// A WebSocket client that completes the handshake and then reads nothing,
// while the worker sends 16 KiB messages as fast as its credit allows: the
// worker's sent bytes stop growing at about its credit (the window and a
// message of the largest size) plus what the kernel's socket buffers hold;
// the front itself holds no more than that credit (what the worker sent,
// less what the kernel holds on both ends of the client's connection, as
// /proc/net/tcp shows them); and the buffered bytes its status page shows
// for the route stay within the credit, above zero while the client is
// stalled, and back to zero after. Once the client reads again it gets
// every message, in order and intact. Through Apache (HTTP/1.1) and
// zmq-gateway; stream mode has its own test
// (gateway/stream.TestWebSocketClientThatStopsReading).
func TestWebSocketClientThatStopsReadingStaysWithinTheWindow(t *testing.T) {
	const size, count = wwMax, 768 // 12 MiB, beyond what the kernel's buffers take
	for _, name := range []string{"apache", "gateway"} {
		t.Run(name, func(t *testing.T) {
			f := startWWFront(t, name)
			sampler := sampleBuffered(f.statusURL)
			c, conn := wwDial(t, f.addr, fmt.Sprintf("/ws/flood?count=%d&size=%d", count, size))
			if c.ConnID == "" {
				t.Fatalf("no X-Connection-Id from the worker: %v", c.Resp.Header)
			}
			msgs, sent := waitStalled(t, f.w, c.ConnID)
			if msgs >= count {
				t.Fatalf("the worker sent all %d messages to a client that read nothing: the test proves nothing", count)
			}
			local, remote := conn.LocalAddr().(*net.TCPAddr), conn.RemoteAddr().(*net.TCPAddr)
			serverTx, _ := tcpQueue(t, remote, local)
			_, clientRx := tcpQueue(t, local, remote)
			rcvbuf, err := syscall.GetsockoptInt(sockFD(t, conn), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
			if err != nil {
				t.Fatal(err)
			}
			// Frames: a 4-byte header for each 16 KiB message.
			kernel := (serverTx + clientRx + int64(c.r.Buffered())) * size / (size + 4)
			held := sent - kernel
			bound := int64(wwCredit) + maxSendBuffer(t) + int64(rcvbuf) + 512<<10
			t.Logf("%s: the worker sent %d messages, %d KiB, to a client that read nothing; the kernel holds %d KiB "+
				"(server's send queue %d KiB, client's receive queue %d KiB), the front and the worker's queues %d KiB (credit %d KiB)",
				name, msgs, sent>>10, kernel>>10, serverTx>>10, clientRx>>10, held>>10, wwCredit>>10)
			if sent > bound {
				t.Errorf("the worker sent %d bytes to a client that read nothing; want at most its credit and the kernel's buffers, %d", sent, bound)
			}
			if held > wwCredit+8<<10 {
				t.Errorf("the front held %d bytes of the flood beyond what the kernel holds; want at most the WebSocket's credit, %d", held, wwCredit)
			}
			// The front publishes its counters as it goes (Apache's children
			// twice a second): while the client is stalled the front holds a
			// message it cannot write.
			checkFor(t, 10*time.Second, func() error {
				if s, err := readStreams(f.statusURL, "/ws"); err != nil || s.Buffered <= 0 || s.Open != 1 {
					return fmt.Errorf("status while the client is stalled: %+v, %v; want 1 open with bytes buffered", s, err)
				}
				return nil
			})
			peak, samples, err := sampler.finish()
			t.Logf("%s: %d status samples, the most buffered %d bytes (credit %d)", name, samples, peak, wwCredit)
			if err != nil {
				t.Errorf("reading the status page: %v", err)
			}
			if peak > wwCredit {
				t.Errorf("the status page showed %d bytes buffered for one WebSocket, over its credit of %d", peak, wwCredit)
			}

			// The client reads again: everything, in order.
			c.patience = 20 * time.Second
			for i := range count {
				op, p := c.next()
				if op != opBinary || !bytes.Equal(p, floodPayload(i, size)) {
					seq := -1
					if len(p) >= 8 {
						seq = int(binary.BigEndian.Uint64(p))
					}
					t.Fatalf("message %d: opcode %d, %d bytes, sequence %d; want binary message %d of %d bytes, intact", i, op, len(p), seq, i, size)
				}
			}
			if m, _ := floodSent(f.w, c.ConnID); m != count {
				t.Errorf("the worker says it sent %d messages; the client got %d", m, count)
			}
			c.send(opClose, closePayload(1000, ""))
			c.expectClose(1000)
			wwWaitClosed(t, f.w, c.ConnID, 1000)
			checkFor(t, 10*time.Second, func() error {
				if s, err := readStreams(f.statusURL, "/ws"); err != nil || s.Buffered != 0 || s.Open != 0 {
					return fmt.Errorf("status after the close: %+v, %v; want nothing open or buffered", s, err)
				}
				return nil
			})
		})
	}
}

// wwWaitClosed waits until the worker prints that the WebSocket on
// connection id closed with code.
func wwWaitClosed(t *testing.T, w *worker, id string, code int) {
	t.Helper()
	want := fmt.Sprintf("closed %s %d\n", id, code)
	checkFor(t, 10*time.Second, func() error {
		out := w.Output.String()
		if !strings.Contains(out, want) {
			return fmt.Errorf("the worker did not print %q; its last lines:\n%s", want, out[max(0, len(out)-1000):])
		}
		return nil
	})
}

// sockFD returns the descriptor of conn.
func sockFD(t *testing.T, conn *net.TCPConn) int {
	t.Helper()
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	rc.Control(func(d uintptr) { fd = int(d) })
	return fd
}

// A worker that sends past its WebSocket credit: it floods a client that
// reads nothing until its credit stops coming, then sends twice its whole
// credit again in empty messages. The client, reading again, gets the
// messages up to the breach and then close 1011; the front logs the
// documented code (Apache MODZMQ0029 with the library's MODZMQ0132,
// zmq-gateway MODZMQ0132, stream mode MODZMQ0307) and tells the worker
// 1011; another WebSocket on the same worker (in zmq-gateway and stream
// mode on the same connection to it) goes on, and a new one opens.
func TestWebSocketWorkerPastItsCreditIsClosed(t *testing.T) {
	t.Run("apache", testApachePacesAWorkerPastItsCredit)
	for _, tc := range []struct{ name, code string }{
		{"gateway", `MODZMQ0132`}, {"stream", `MODZMQ0307`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startWWFront(t, tc.name)
			f.expect(tc.code)
			other := mustOpen(t, f.addr, nil, "/ws/echo")
			other.send(opText, []byte("before"))
			other.expect(opText, []byte("before"))

			c, _ := wwDial(t, f.addr, fmt.Sprintf("/ws/overrun?size=%d", wwMax))
			checkFor(t, 20*time.Second, func() error {
				if !strings.Contains(f.w.Output.String(), "overrun "+c.ConnID+" ") {
					return fmt.Errorf("the worker has not overrun its credit on %s yet", c.ConnID)
				}
				return nil
			})
			c.patience = 10 * time.Second
			msgs, empty := 0, 0
			for {
				op, p, err := c.readFrame()
				if err != nil {
					t.Fatalf("after %d messages (%d empty) the client read %v; want close 1011", msgs, empty, err)
				}
				if op == opBinary {
					msgs++
					if len(p) == 0 {
						empty++
					}
					continue
				}
				if op != opClose || len(p) < 2 || binary.BigEndian.Uint16(p) != 1011 {
					t.Fatalf("after %d messages the client got opcode %d %q; want close 1011", msgs, op, p)
				}
				break
			}
			sent, _ := floodSent(f.w, c.ConnID)
			t.Logf("%s: the client got %d messages (%d of the %d the worker sent within its credit, %d of its empty ones) before close 1011",
				tc.name, msgs, msgs-empty, sent, empty)
			if over := 2 * wwCredit / 64; empty >= over {
				t.Errorf("the client got all %d messages sent past the credit; the front let the breach through", over)
			}
			re := regexp.MustCompile(tc.code)
			checkFor(t, 10*time.Second, func() error {
				if !re.MatchString(f.log()) {
					return fmt.Errorf("no line matching %q in the front's log:\n%s", tc.code, f.log())
				}
				return nil
			})
			wwWaitClosed(t, f.w, c.ConnID, 1011)

			other.send(opText, []byte("after"))
			other.expect(opText, []byte("after"))
			d := mustOpen(t, f.addr, nil, "/ws/echo")
			d.send(opBinary, []byte("new"))
			d.expect(opBinary, []byte("new"))
		})
	}
}

// Apache reads a WebSocket's connection to its worker only as the client
// takes the messages, granting credit as it goes (docs/PROTOCOL.md,
// "Credits"): a worker past its credit waits on its own socket, as an early
// one would, and the front holds no more than the credit. The client that
// read nothing while the worker ran ahead, reading again, gets every
// message in order, those sent within the credit and the empty ones past
// it, and the WebSocket stays open.
func testApachePacesAWorkerPastItsCredit(t *testing.T) {
	f := startWWFront(t, "apache")
	sampler := sampleBuffered(f.statusURL)
	c, _ := wwDial(t, f.addr, fmt.Sprintf("/ws/overrun?size=%d", wwMax))
	var over int
	checkFor(t, 20*time.Second, func() error {
		m := regexp.MustCompile(`(?m)^overrun ` + regexp.QuoteMeta(c.ConnID) + ` (\d+)$`).FindStringSubmatch(f.w.Output.String())
		if m == nil {
			return fmt.Errorf("the worker has not overrun its credit on %s yet", c.ConnID)
		}
		over, _ = strconv.Atoi(m[1])
		return nil
	})
	sent, _ := floodSent(f.w, c.ConnID)
	c.patience = 20 * time.Second
	for i := range int(sent) {
		if op, p := c.next(); op != opBinary || !bytes.Equal(p, floodPayload(i, wwMax)) {
			t.Fatalf("message %d: opcode %d, %d bytes; want binary message %d of %d bytes, intact", i, op, len(p), i, wwMax)
		}
	}
	for i := range over {
		if op, p := c.next(); op != opBinary || len(p) != 0 {
			t.Fatalf("message %d past the credit: opcode %d, %d bytes; want an empty binary message", i, op, len(p))
		}
	}
	peak, samples, err := sampler.finish()
	t.Logf("apache: the client got the %d messages sent within the credit and the %d past it; %d status samples, "+
		"the most buffered %d bytes (credit %d)", sent, over, samples, peak, wwCredit)
	if err != nil {
		t.Errorf("reading the status page: %v", err)
	}
	if peak > wwCredit {
		t.Errorf("the status page showed %d bytes buffered for one WebSocket, over its credit of %d", peak, wwCredit)
	}
	c.send(opClose, closePayload(1000, ""))
	c.expectClose(1000)
	wwWaitClosed(t, f.w, c.ConnID, 1000)
}

var wwStreamLine = regexp.MustCompile(`(?m)^stream (\S+) (\S+)$`)

// Parts of concurrent requests never mix: four streamed replies with
// distinct events (each its id and a sequence number, padded), held by the
// worker until all four are open and then sent in turn, one event of each,
// on the worker's one ROUTER socket (through zmq-gateway and stream mode
// on one connection from the front, which the test checks); each client
// gets exactly its own events, in order, complete. Likewise three
// WebSockets that send at once each get back only their own echoes, in
// order. Through Apache, zmq-gateway and stream mode.
func TestPartsOfConcurrentRequestsNeverMix(t *testing.T) {
	for _, name := range []string{"apache", "gateway", "stream"} {
		t.Run(name, func(t *testing.T) {
			f := startWWFront(t, name)
			t.Run("Streams", func(t *testing.T) {
				const n, pad = 200, 300
				ids := []string{"alpha", "bravo", "charlie", "delta"}
				bodies := make([][]byte, len(ids))
				errs := make([]error, len(ids))
				var wg sync.WaitGroup
				for i, id := range ids {
					wg.Add(1)
					go func() {
						defer wg.Done()
						bodies[i], errs[i] = getStream(f.addr, fmt.Sprintf("/ws/mix/%s?n=%d&group=g1&of=%d&pad=%d", id, n, len(ids), pad))
					}()
				}
				wg.Wait()
				for i, id := range ids {
					if errs[i] != nil {
						t.Errorf("%s: %v", id, errs[i])
						continue
					}
					var want bytes.Buffer
					for seq := range n {
						fmt.Fprintf(&want, "data: %s %d %s\n\n", id, seq, strings.Repeat("x", pad))
					}
					if !bytes.Equal(bodies[i], want.Bytes()) {
						t.Errorf("%s: got %d bytes, want its %d events (%d bytes); first difference: %s",
							id, len(bodies[i]), n, want.Len(), firstDiff(bodies[i], want.Bytes()))
					}
				}
				peers := map[string]string{}
				for _, m := range wwStreamLine.FindAllStringSubmatch(f.w.Output.String(), -1) {
					peers[m[1]] = m[2]
				}
				t.Logf("%s: the worker's peers by stream: %v", name, peers)
				if len(peers) != len(ids) {
					t.Fatalf("the worker opened %d streams, want %d:\n%s", len(peers), len(ids), f.w.Output)
				}
				if f.shared {
					for _, id := range ids[1:] {
						if peers[id] != peers[ids[0]] {
							t.Errorf("the streams came on different connections (%v): the test did not put them on one", peers)
							break
						}
					}
				}
			})
			t.Run("WebSockets", func(t *testing.T) {
				const n = 300
				ids := []string{"one", "two", "three"}
				clients := make([]*wsClient, len(ids))
				for i := range ids {
					clients[i] = mustOpen(t, f.addr, nil, "/ws/echo")
				}
				errs := make(chan error, 2*len(ids))
				var wg sync.WaitGroup
				for i, id := range ids {
					c := clients[i]
					wg.Add(2)
					go func() {
						defer wg.Done()
						for seq := range n {
							op, msg := byte(opText), fmt.Sprintf("%s %d %s", id, seq, strings.Repeat(id, seq%50))
							if seq%2 == 1 {
								op = opBinary
							}
							if err := c.frame(0x80|op, []byte(msg), true); err != nil {
								errs <- fmt.Errorf("%s: sending %d: %v", id, seq, err)
								return
							}
						}
					}()
					go func() {
						defer wg.Done()
						c.patience = 20 * time.Second
						for seq := range n {
							op, p, err := c.readFrame()
							want, wantOp := fmt.Sprintf("%s %d %s", id, seq, strings.Repeat(id, seq%50)), byte(opText)
							if seq%2 == 1 {
								wantOp = opBinary
							}
							if err != nil || op != wantOp || string(p) != want {
								errs <- fmt.Errorf("%s: echo %d: opcode %d %.60q, %v; want opcode %d %.60q", id, seq, op, p, err, wantOp, want)
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
				for _, c := range clients {
					c.send(opClose, closePayload(1000, ""))
					c.expectClose(1000)
				}
			})
		})
	}
}

// getStream GETs path from addr over HTTP/1.1 on a connection of its own
// and returns the whole body of a 200.
func getStream(addr, path string) ([]byte, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(nc, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return b, fmt.Errorf("after %d bytes: %v", len(b), err)
	}
	if resp.StatusCode != 200 {
		return b, fmt.Errorf("status %s: %q", resp.Status, b)
	}
	return b, nil
}

// firstDiff describes where got first differs from want.
func firstDiff(got, want []byte) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	from := max(i-40, 0)
	return fmt.Sprintf("at byte %d: got %.80q, want %.80q", i, got[from:min(len(got), i+40)], want[from:min(len(want), i+40)])
}
