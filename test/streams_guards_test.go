package test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The guards around streamed replies through Apache: ZmqMaxStreams,
// ZmqStreamIdleTimeout, cancels that leave nothing behind, and cancel
// notices only where a location asks for them. The worker is
// test/workers/guard_worker.py, which logs every message it gets.

// startGuardWorker runs test/workers/guard_worker.py bound to n free
// endpoints (one ROUTER socket), and returns it and its endpoints.
func startGuardWorker(t *testing.T, n int) (*worker, []string) {
	t.Helper()
	eps := make([]string, n)
	for i := range eps {
		eps[i] = fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
	}
	port, _ := strconv.Atoi(eps[0][strings.LastIndex(eps[0], ":")+1:])
	w := startListening(t, port, eps[0], python, append([]string{filepath.Join(root, "test/workers/guard_worker.py")}, eps...)...)
	return w, eps
}

// guardMsg is one message guard_worker.py logged.
type guardMsg struct {
	method, id, target string
	notices, credits   bool
}

// guardMsgs returns the messages w logged, in order.
func guardMsgs(w *worker) []guardMsg {
	var msgs []guardMsg
	for _, l := range strings.Split(w.Output.String(), "\n") {
		f := strings.Fields(l)
		if len(f) != 6 || f[0] != "msg" {
			continue
		}
		msgs = append(msgs, guardMsg{method: f[1], id: f[2], target: f[3], notices: f[4] == "notices=1", credits: f[5] == "credits=1"})
	}
	return msgs
}

// requestID returns the id of the request w got for target, or "".
func requestID(w *worker, target string) string {
	for _, m := range guardMsgs(w) {
		if m.method == "GET" && m.target == target {
			return m.id
		}
	}
	return ""
}

// waitRequestID waits until w got a request for target, and returns its id.
func waitRequestID(t *testing.T, w *worker, target string) string {
	t.Helper()
	var id string
	checkFor(t, 10*time.Second, func() error {
		if id = requestID(w, target); id == "" {
			return fmt.Errorf("the worker has not got %s:\n%s", target, w.Output)
		}
		return nil
	})
	return id
}

// cancelled reports whether w got a cancel notice for request id.
func cancelled(w *worker, id string) bool {
	for _, m := range guardMsgs(w) {
		if m.method == "@cancel" && m.id == id {
			return true
		}
	}
	return false
}

// rawConn is an HTTP/1.1 client connection whose every byte the test
// controls, and whose Apache child it can find (childOf).
type rawConn struct {
	net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, h *httpd) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", h.Port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{Conn: c, br: bufio.NewReader(c)}
}

// send writes a GET for path, keeping the connection alive.
func (c *rawConn) send(t *testing.T, path string) {
	t.Helper()
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: one.localhost\r\n\r\n", path); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

// get sends a GET for path and reads the response's head; its body is
// read from the connection as it comes.
func (c *rawConn) get(t *testing.T, path string) *http.Response {
	t.Helper()
	c.send(t, path)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp
}

// plain sends a GET for path and returns the status and the whole body.
func (c *rawConn) plain(t *testing.T, path string) (*http.Response, string) {
	t.Helper()
	resp := c.get(t, path)
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", path, err)
	}
	return resp, string(b)
}

// readBody reads n bytes of resp's body.
func readBody(t *testing.T, resp *http.Response, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(resp.Body, b); err != nil {
		t.Fatalf("reading %d bytes of the body: %q, %v", n, b, err)
	}
	return string(b)
}

// childOf returns the pid of h's child that holds c's connection: the one
// with the descriptor of the socket whose peer is c's local port
// (/proc/net/tcp gives its inode). It waits until a child has accepted the
// connection, which Apache does once the client has sent something
// (AcceptFilter http data, its default on Linux).
func childOf(t *testing.T, h *httpd, c net.Conn) string {
	t.Helper()
	local := fmt.Sprintf("0100007F:%04X", h.Port)
	peer := fmt.Sprintf("0100007F:%04X", c.LocalAddr().(*net.TCPAddr).Port)
	var child string
	checkFor(t, 10*time.Second, func() error {
		b, err := os.ReadFile("/proc/net/tcp")
		if err != nil {
			return err
		}
		inode := ""
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) > 9 && f[1] == local && f[2] == peer {
				inode = f[9]
			}
		}
		if inode == "" || inode == "0" {
			return fmt.Errorf("/proc/net/tcp has no socket from %s to %s", peer, local)
		}
		want := "socket:[" + inode + "]"
		for _, pid := range childPIDs(t, h) {
			fds, _ := os.ReadDir("/proc/" + pid + "/fd")
			for _, fd := range fds {
				if l, _ := os.Readlink("/proc/" + pid + "/fd/" + fd.Name()); l == want {
					child = pid
					return nil
				}
			}
		}
		return fmt.Errorf("no child of httpd %s holds the connection from port %s", h.pid(), peer)
	})
	return child
}

// connIn returns a new connection that child of h accepted, after a plain
// request for path on it was answered 200 "plain": children take new
// connections as they race for them, so it dials until one lands there.
func connIn(t *testing.T, h *httpd, child, path string) *rawConn {
	t.Helper()
	for range 100 {
		c := dialRaw(t, h)
		if resp, body := c.plain(t, path); resp.StatusCode != 200 || body != "plain" {
			t.Fatalf("%s: %s %q, want 200 \"plain\"", path, resp.Status, body)
		}
		if childOf(t, h, c) == child {
			return c
		}
		c.Close()
	}
	t.Fatalf("100 connections, none accepted by child %s of %v", child, childPIDs(t, h))
	return nil
}

// ZmqMaxStreams 2 for streamed replies (HTTP/1.1), counted per child:
// streams are opened one by one until one gets 503 with Retry-After. Each
// connection's child is known (childOf), so the test checks that no child
// ever holds more than 2 streams, that the refused stream's child held
// exactly 2, and that the refused stream's worker got @cancel (ZmqNotices
// on). On a connection of the full child, plain requests to the location
// are answered while a stream is still refused. Once the worker ends one
// of that child's streams, a new stream in that child is accepted.
func TestMaxStreamsForStreamedReplies(t *testing.T) {
	w, eps := startGuardWorker(t, 1)
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /ms>
		SetHandler zmq
		ZmqBackend %s
		ZmqMaxStreams 2
		ZmqNotices on
	</Location>
	<Location /zmq-status>
		SetHandler zmq-status
	</Location>
`, eps[0])})
	h.expect(`MODZMQ0024: ZmqMaxStreams 2 reached for /ms: answered 503`)

	type stream struct {
		c    *rawConn
		resp *http.Response
		i    int
	}
	open := map[string][]stream{} // by child
	var refusedPath, full string
	// At most 6 children (ServerLimit) hold 2 each: the 13th at the latest
	// is refused.
	for i := 0; i < 13 && full == ""; i++ {
		c := dialRaw(t, h)
		path := fmt.Sprintf("/ms/stall?i=%d", i)
		c.send(t, path)
		child := childOf(t, h, c)
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		switch resp.StatusCode {
		case 200:
			if got := readBody(t, resp, len("partial")); got != "partial" {
				t.Fatalf("%s: %q, want \"partial\"", path, got)
			}
			open[child] = append(open[child], stream{c, resp, i})
			if n := len(open[child]); n > 2 {
				t.Fatalf("child %s holds %d streams of /ms with ZmqMaxStreams 2", child, n)
			}
		case 503:
			if ra := resp.Header.Get("Retry-After"); ra != "1" {
				t.Errorf("a stream over ZmqMaxStreams: 503 with Retry-After %q, want 1", ra)
			}
			io.ReadAll(resp.Body)
			if n := len(open[child]); n != 2 {
				t.Fatalf("a stream refused in child %s, which holds %d streams of /ms (ZmqMaxStreams 2)", child, n)
			}
			refusedPath, full = path, child
		default:
			t.Fatalf("%s: %s, want 200 or 503", path, resp.Status)
		}
	}
	if full == "" {
		t.Fatalf("13 streams, none refused with ZmqMaxStreams 2: %v", open)
	}
	id := waitRequestID(t, w, refusedPath)
	checkFor(t, 10*time.Second, func() error {
		if !cancelled(w, id) {
			return fmt.Errorf("the worker of the refused stream (%s) got no @cancel:\n%s", id, w.Output)
		}
		return nil
	})

	// Plain requests still get answered in the full child.
	c := connIn(t, h, full, "/ms/plain")
	for range 3 {
		if resp, body := c.plain(t, "/ms/plain"); resp.StatusCode != 200 || body != "plain" {
			t.Fatalf("a plain request in a child with ZmqMaxStreams streams open: %s %q, want 200 \"plain\"", resp.Status, body)
		}
	}
	// And a stream still does not.
	if resp, _ := c.plain(t, "/ms/stall?i=still"); resp.StatusCode != 503 {
		t.Fatalf("a stream in a child with ZmqMaxStreams streams open: %s, want 503", resp.Status)
	}
	total := 0
	for _, s := range open {
		total += len(s)
	}
	if r := h.settledRoute(t, "/ms"); r.Streams.Open != int64(total) || r.Overloads != 2 {
		t.Errorf("zmq-status: %d streams open, %d refusals; want %d and 2", r.Streams.Open, r.Overloads, total)
	}

	// The worker ends one of the full child's streams: its place is free.
	ended := open[full][0]
	if resp, body := do(t, "GET", h.URL+fmt.Sprintf("/ms/release?i=%d", ended.i), "", nil); resp.StatusCode != 200 || string(body) != "released" {
		t.Fatalf("release: %s %q", resp.Status, body)
	}
	if rest, err := io.ReadAll(ended.resp.Body); err != nil || string(rest) != "bye" {
		t.Fatalf("the stream the worker ended: %q, %v; want \"bye\" and the end", rest, err)
	}
	// The child lets go of the place right after the stream's last chunk
	// went out: a request on the heels of it may still meet the place taken.
	// (503 closes the connection: each try needs a new one.)
	retries := 0
	checkFor(t, 10*time.Second, func() error {
		resp := connIn(t, h, full, "/ms/plain").get(t, "/ms/stall?i=again")
		if resp.StatusCode == 503 {
			retries++
			return fmt.Errorf("a new stream after one ended in child %s: still 503", full)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("a new stream after one ended: %s, want 200", resp.Status)
		}
		if got := readBody(t, resp, len("partial")); got != "partial" {
			t.Fatalf("a new stream after one ended: %q, want \"partial\"", got)
		}
		return nil
	})
	if retries > 0 {
		t.Logf("the new stream was refused %d times before it was accepted", retries)
	}
}

// With ZmqStreamIdleTimeout 1 s, a stream whose worker sends a head and a
// part and then nothing ends abnormally: curl gets "partial" and no
// terminating chunk (exit 18), the error log says why (MODZMQ0025, no part
// for 1s), the worker gets @cancel (ZmqNotices on), and zmq-status counts
// the stream's end as idle. A worker that sends keep-alives every 100 ms for
// 1.5 s, before a plain reply (long-poll) or within a stream, is ended by
// neither ZmqTimeout (300 ms) nor the idle timeout.
func TestStreamIdleTimeoutThroughApache(t *testing.T) {
	w, eps := startGuardWorker(t, 2)
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /idle>
		SetHandler zmq
		ZmqBackend %s
		ZmqStreamIdleTimeout 1
		ZmqNotices on
	</Location>
	<Location /lp>
		SetHandler zmq
		ZmqBackend %s
		ZmqTimeout 300ms
		ZmqStreamIdleTimeout 1
		ZmqNotices on
	</Location>
	<Location /zmq-status>
		SetHandler zmq-status
	</Location>
`, eps[0], eps[1])})
	line := regexp.MustCompile(`MODZMQ0025: the stream ended abnormally after its head: .*had no part for 1s`)
	h.expect(line.String())

	// The long-polls run beside the idle stream.
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		resp, err := client.Get(h.URL + "/lp/poll")
		if err != nil {
			t.Errorf("long-poll: %v", err)
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "news" {
			t.Errorf("long-poll with keep-alives for 1.5 s (ZmqTimeout 300ms, ZmqStreamIdleTimeout 1): %s %q, want 200 \"news\"", resp.Status, b)
		}
	}()
	go func() {
		defer wg.Done()
		out, err := exec.Command("curl", "-sSN", "--max-time", "20", h.URL+"/lp/streampoll").CombinedOutput()
		if err != nil || string(out) != "news" {
			t.Errorf("a stream with keep-alives for 1.5 s (ZmqStreamIdleTimeout 1): curl %v, %q; want exit 0, \"news\"", err, out)
		}
	}()

	if out, code := curlExit(t, h.URL+"/idle/stall"); code != 18 || out != "partial" {
		t.Errorf("a stream silent after its first part: curl exit %d, %q; want 18 (transfer closed) after \"partial\"", code, out)
	}
	checkFor(t, 10*time.Second, func() error {
		if !line.MatchString(h.errorLog()) {
			return fmt.Errorf("the error log lacks %q:\n%s", line, h.errorLog())
		}
		return nil
	})
	id := waitRequestID(t, w, "/idle/stall")
	checkFor(t, 10*time.Second, func() error {
		if !cancelled(w, id) {
			return fmt.Errorf("the worker of the idle stream (%s) got no @cancel:\n%s", id, w.Output)
		}
		return nil
	})
	wg.Wait()

	idle := h.settledRoute(t, "/idle")
	if s := idle.Streams; s.Open != 0 || s.Ends["idle"] != 1 || s.Ends["end"]+s.Ends["client_gone"]+s.Ends["aborted"]+s.Ends["broken"] != 0 || s.Cancels != 1 {
		t.Errorf("zmq-status for /idle: %d open, ends %v, %d cancels; want 0 open, one end: idle, 1 cancel", s.Open, s.Ends, s.Cancels)
	}
	lp := h.settledRoute(t, "/lp")
	if s := lp.Streams; s.Open != 0 || s.Ends["end"] != 1 || s.Ends["idle"]+s.Ends["client_gone"]+s.Ends["aborted"]+s.Ends["broken"] != 0 || s.Cancels != 0 {
		t.Errorf("zmq-status for /lp: %d open, ends %v, %d cancels; want 0 open, one end: end, no cancel", s.Open, s.Ends, s.Cancels)
	}
	for _, m := range guardMsgs(w) {
		if m.method == "@cancel" && m.id != id {
			t.Errorf("a cancel notice for a request the client did not leave: %+v", m)
		}
	}
}

// childFDs returns how many descriptors each of h's children has open.
func childFDs(t *testing.T, h *httpd) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, pid := range childPIDs(t, h) {
		fds, err := os.ReadDir("/proc/" + pid + "/fd")
		if err != nil {
			continue // it exited meanwhile
		}
		n[pid] = len(fds)
	}
	return n
}

// busyWorkers returns mod_status's count of busy Apache threads.
func busyWorkers(t *testing.T, h *httpd) int {
	t.Helper()
	_, b := do(t, "GET", h.URL+"/server-status?auto", "", nil)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "BusyWorkers: "); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatalf("server-status?auto has no BusyWorkers:\n%s", b)
	return 0
}

// Clients that abandon streamed replies mid-stream (20 at once) and
// requests mid-request (20 at once), three rounds of each, leave nothing
// behind: the worker gets a cancel notice for each, zmq-status's streams
// open returns to 0, mod_status shows no busy thread but its own, the
// children's open descriptors return to their level after the first
// round (which leaves the children's pools of worker connections as full
// as the rounds need them), within a few, and a burst of plain requests, one
// for each thread of the children, is answered in full.
func TestAbandonedStreamsLeaveNothingBehind(t *testing.T) {
	w, eps := startGuardWorker(t, 1)
	h := startHTTPD(t, httpdParams{MPM: "event",
		Global: "LoadModule status_module /usr/lib/apache2/modules/mod_status.so\n",
		Extra: fmt.Sprintf(`	<Location /lk>
		SetHandler zmq
		ZmqBackend %s
		ZmqNotices on
	</Location>
	<Location /zmq-status>
		SetHandler zmq-status
	</Location>
	<Location /server-status>
		SetHandler server-status
	</Location>
`, eps[0])})
	const clients = 20
	cancels := func() int {
		n := 0
		for _, m := range guardMsgs(w) {
			if m.method == "@cancel" {
				n++
			}
		}
		return n
	}
	round := func(r int) {
		t.Helper()
		// Mid-stream: each client has the first part, then leaves.
		conns := make([]*rawConn, clients)
		var wg sync.WaitGroup
		for i := range conns {
			conns[i] = dialRaw(t, h)
			wg.Add(1)
			go func(c *rawConn, path string) {
				defer wg.Done()
				c.send(t, path)
				c.SetReadDeadline(time.Now().Add(20 * time.Second))
				resp, err := http.ReadResponse(c.br, nil)
				if err != nil {
					t.Errorf("%s: %v", path, err)
					return
				}
				b := make([]byte, len("tick\n"))
				if _, err := io.ReadFull(resp.Body, b); err != nil || resp.StatusCode != 200 || string(b) != "tick\n" {
					t.Errorf("%s: %s %q, %v; want 200 and \"tick\\n\"", path, resp.Status, b, err)
				}
			}(conns[i], fmt.Sprintf("/lk/trickle?r=%d&i=%d", r, i))
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		for _, c := range conns {
			c.Close()
		}
		// Mid-request: the worker has each request, then its client leaves.
		for i := range conns {
			conns[i] = dialRaw(t, h)
			conns[i].send(t, fmt.Sprintf("/lk/hold?r=%d&i=%d", r, i))
		}
		for i := range conns {
			waitRequestID(t, w, fmt.Sprintf("/lk/hold?r=%d&i=%d", r, i))
		}
		for _, c := range conns {
			c.Close()
		}
		checkFor(t, 10*time.Second, func() error {
			if n := cancels(); n != 2*clients*r {
				return fmt.Errorf("round %d: the worker got %d cancel notices, want %d", r, n, 2*clients*r)
			}
			return nil
		})
		checkFor(t, 10*time.Second, func() error {
			if s := h.route(t, "/lk").Streams; s.Open != 0 {
				return fmt.Errorf("round %d: zmq-status shows %d streams open", r, s.Open)
			}
			if n := busyWorkers(t, h); n != 1 {
				return fmt.Errorf("round %d: mod_status shows %d busy threads, want 1 (its own)", r, n)
			}
			return nil
		})
	}

	if resp, body := do(t, "GET", h.URL+"/lk/plain", "", nil); resp.StatusCode != 200 || string(body) != "plain" {
		t.Fatalf("/lk/plain: %s %q", resp.Status, body)
	}
	start := childFDs(t, h)
	round(1)
	// Descriptors close as the requests end: the level settles.
	var base map[string]int
	checkFor(t, 10*time.Second, func() error {
		a := childFDs(t, h)
		time.Sleep(300 * time.Millisecond)
		if base = childFDs(t, h); fmt.Sprint(a) != fmt.Sprint(base) {
			return fmt.Errorf("the children's descriptors still change: %v, then %v", a, base)
		}
		return nil
	})
	t.Logf("descriptors per child: %v at the start, %v after the first round", start, base)
	round(2)
	round(3)
	// Each child's pool keeps the connections of the requests it held
	// (fast.c), so descriptors move between the children with where the
	// requests land; their sum stays. A few per child are let be.
	checkFor(t, 10*time.Second, func() error {
		now := childFDs(t, h)
		was, is := 0, 0
		for pid, n := range now {
			if b, ok := base[pid]; ok {
				was, is = was+b, is+n
			}
		}
		if slack := 4 * len(base); is > was+slack {
			return fmt.Errorf("Apache's children have %d descriptors open after 3 rounds of %d abandoned streams and requests, %d after the first (%v, then %v)",
				is, 2*clients, was, base, now)
		}
		return nil
	})
	t.Logf("descriptors per child after 3 rounds: %v", childFDs(t, h))
	s := h.settledRoute(t, "/lk").Streams
	if s.Open != 0 || s.Ends["client_gone"] != 3*clients || s.Cancels != 6*clients {
		t.Errorf("zmq-status for /lk: %d open, ends %v, %d cancels; want 0 open, %d ended as client_gone, %d cancels", s.Open, s.Ends, s.Cancels, 3*clients, 6*clients)
	}

	// The threads are free: one plain request for each, at once.
	burst := 40 * len(childPIDs(t, h)) // ThreadsPerChild 40
	errs := make(chan string, burst)
	var wg sync.WaitGroup
	for i := 0; i < burst; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(h.URL + "/lk/plain")
			if err != nil {
				errs <- err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "plain" {
				errs <- fmt.Sprintf("%s %q", resp.Status, b)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("a plain request of the burst of %d after the abandoned ones: %s", burst, e)
	}
}

// A location with ZmqNotices off (the default) sends its worker no
// @cancel when a client leaves mid-request or mid-stream, and says nothing
// of notices in the request's meta; the same with ZmqNotices on delivers
// one for each. The worker logs every message it gets.
func TestCancelNoticesOnlyWhereAsked(t *testing.T) {
	w, eps := startGuardWorker(t, 2)
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /quiet>
		SetHandler zmq
		ZmqBackend %s
	</Location>
	<Location /loud>
		SetHandler zmq
		ZmqBackend %s
		ZmqNotices on
	</Location>
	<Location /zmq-status>
		SetHandler zmq-status
	</Location>
`, eps[0], eps[1])})
	leave := func(loc string) (ids []string) {
		t.Helper()
		c := dialRaw(t, h)
		c.send(t, loc+"/hold")
		ids = append(ids, waitRequestID(t, w, loc+"/hold"))
		c.Close()
		c = dialRaw(t, h)
		resp := c.get(t, loc+"/trickle")
		if got := readBody(t, resp, len("tick\n")); resp.StatusCode != 200 || got != "tick\n" {
			t.Fatalf("%s/trickle: %s %q", loc, resp.Status, got)
		}
		ids = append(ids, waitRequestID(t, w, loc+"/trickle"))
		c.Close()
		// Both requests ended (499) before the next location's clients.
		checkFor(t, 10*time.Second, func() error {
			b, _ := os.ReadFile(filepath.Join(h.Dir, "access_log"))
			if n := strings.Count(string(b), `"GET `+loc+`/`); n != 2 || strings.Count(string(b), `" 499 `) < 2 {
				return fmt.Errorf("access_log does not show both %s requests ended as 499:\n%s", loc, b)
			}
			return nil
		})
		return ids
	}
	quiet := leave("/quiet")
	loud := leave("/loud")
	checkFor(t, 10*time.Second, func() error {
		for _, id := range loud {
			if !cancelled(w, id) {
				return fmt.Errorf("ZmqNotices on: no @cancel for %s:\n%s", id, w.Output)
			}
		}
		return nil
	})
	for _, id := range quiet {
		if cancelled(w, id) {
			t.Errorf("ZmqNotices off: the worker got @cancel for %s:\n%s", id, w.Output)
		}
	}
	for _, m := range guardMsgs(w) {
		if m.method == "GET" && m.notices != strings.HasPrefix(m.target, "/loud/") {
			t.Errorf("%s: notices: cancel in its meta is %v", m.target, m.notices)
		}
	}
	if s := h.settledRoute(t, "/quiet").Streams; s.Cancels != 0 || s.Ends["client_gone"] != 1 {
		t.Errorf("zmq-status for /quiet: %d cancels, ends %v; want none, one client_gone", s.Cancels, s.Ends)
	}
	if s := h.settledRoute(t, "/loud").Streams; s.Cancels != 2 || s.Ends["client_gone"] != 1 {
		t.Errorf("zmq-status for /loud: %d cancels, ends %v; want 2, one client_gone", s.Cancels, s.Ends)
	}
}
