package test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// startStreamClock runs examples/python/stream_clock.py on a free port and
// waits until it accepts connections. Its stdout holds the cancel notices
// it received.
func startStreamClock(t *testing.T, args ...string) *worker {
	t.Helper()
	return startPyScript(t, "examples/python/stream_clock.py", args...)
}

// startPyScript runs the Python worker script (a path in the repository)
// with a free endpoint as its first argument, then args, and waits until it
// accepts connections.
func startPyScript(t *testing.T, script string, args ...string) *worker {
	t.Helper()
	port := freePort(t)
	ep := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	return startListening(t, port, ep, python, append([]string{filepath.Join(root, script), ep}, args...)...)
}

// startListening runs a worker that prints nothing when ready, and waits
// until it accepts connections on port.
func startListening(t *testing.T, port int, ep, name string, args ...string) *worker {
	t.Helper()
	cmd := exec.Command(name, args...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	checkFor(t, 20*time.Second, func() error {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			return fmt.Errorf("%s is not listening: %v (%s)", name, err, out)
		}
		c.Close()
		return nil
	})
	return &worker{Output: out, cmd: cmd, Endpoint: ep}
}

// Server-Sent Events from a real pyzmq worker through zmq-gateway, in HTTP
// mode and in stream mode, read by curl -N and by a Python client: every
// event, in order, and the stream ends cleanly. A client that leaves after
// the first event gets the worker a cancel notice, which also shows the
// first event arrived while the stream was still going.
func TestSSEThroughTheGateway(t *testing.T) { forEachGatewayMode(t, testSSEThroughTheGateway) }

func testSSEThroughTheGateway(t *testing.T, mode string) {
	clock := startStreamClock(t, "--count", "5", "--interval", "0.05")
	long := startStreamClock(t, "--count", "100000", "--interval", "0.05")
	g := startGatewayProc(t, mode, fmt.Sprintf("  - prefix: /clock\n    backend: [%s]\n    notices: true\n"+
		"  - prefix: /long\n    backend: [%s]\n    notices: true\n", clock.Endpoint, long.Endpoint))
	want := "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n"

	out, err := exec.Command("curl", "-sSN", "--max-time", "20", "-D", "-", g.URL+"/clock").CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	head, body, _ := strings.Cut(string(out), "\r\n\r\n")
	if !strings.Contains(head, "200 OK") || !strings.Contains(strings.ToLower(head), "content-type: text/event-stream") ||
		!strings.Contains(strings.ToLower(head), "transfer-encoding: chunked") {
		t.Errorf("curl's head:\n%s", head)
	}
	if body != want {
		t.Errorf("curl got %q, want %q", body, want)
	}

	py := `import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=20) as r:
    events = [line for line in r.read().decode().split("\n\n") if line]
print(" ".join(e.split(": ")[1] for e in events))`
	if out, err := exec.Command(python, "-c", py, g.URL+"/clock").CombinedOutput(); err != nil || string(out) != "0 1 2 3 4\n" {
		t.Errorf("Python client: %q, %v", out, err)
	}

	cmd := exec.Command("curl", "-sN", g.URL+"/long")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	first, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || first != "data: 0\n" {
		t.Fatalf("first event of the long stream: %q, %v", first, err)
	}
	leaveAndExpectCancel(t, cmd, long, clock)
}

// leaveAndExpectCancel kills the client cmd mid-stream: the worker of the
// stream (long) must print a cancel notice, and the worker whose streams
// ended normally (done) none.
func leaveAndExpectCancel(t *testing.T, cmd *exec.Cmd, long, done *worker) {
	t.Helper()
	cmd.Process.Kill()
	cmd.Wait()
	checkFor(t, 10*time.Second, func() error {
		if !strings.Contains(long.Output.String(), "cancel ") {
			return fmt.Errorf("the worker printed no cancel notice: %q", long.Output.String())
		}
		return nil
	})
	if strings.Contains(done.Output.String(), "cancel ") {
		t.Errorf("streams that ended normally got cancel notices: %q", done.Output.String())
	}
}

// The Go streaming worker (examples/go/streamworker, pure Go) through
// zmq-gateway: every event in order, and a cancel notice when the client
// leaves mid-stream.
func TestGoStreamWorkerThroughTheGateway(t *testing.T) {
	requireBuilt(t, "streamworker")
	port := freePort(t)
	ep := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	w := startListening(t, port, ep, buildPath("streamworker"), "-bind", ep, "-count", "4", "-interval", "10ms")
	port2 := freePort(t)
	ep2 := fmt.Sprintf("tcp://127.0.0.1:%d", port2)
	long := startListening(t, port2, ep2, buildPath("streamworker"), "-bind", ep2, "-count", "100000", "-interval", "5ms")
	g := startGatewayProc(t, "", fmt.Sprintf("  - prefix: /go\n    backend: [%s]\n    notices: true\n"+
		"  - prefix: /long\n    backend: [%s]\n    notices: true\n    stream_window: 4096\n", ep, ep2))
	out, err := exec.Command("curl", "-sSN", "--max-time", "20", g.URL+"/go").CombinedOutput()
	if want := "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n"; err != nil || string(out) != want {
		t.Errorf("curl: %q, %v; want %q", out, err, want)
	}
	cmd := exec.Command("curl", "-sN", g.URL+"/long")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(stdout)
	for i := 0; i < 100; i++ { // 100 events cost 7.4 KiB: past the first 4 KiB of credit
		line, err := rd.ReadString('\n')
		rd.ReadString('\n')
		if want := fmt.Sprintf("data: %d\n", i); err != nil || line != want {
			t.Fatalf("event %d of the long stream: %q, %v", i, line, err)
		}
	}
	leaveAndExpectCancel(t, cmd, long, w)
}

// Streams and cancel notices through Apache: SSE events from the pyzmq
// example reach curl one by one (HTTP/1.1 chunks) and end cleanly; a client
// that leaves gets its worker a cancel notice, mid-request and mid-stream,
// and the access log shows 499; a stream the worker aborts ends without
// the last chunk (curl: "transfer closed"); HEAD gets the head only.
func TestStreamsThroughApache(t *testing.T) {
	clock := startStreamClock(t, "--count", "5", "--interval", "0.05")
	notice := startPyScript(t, "test/workers/notice_worker.py")
	ep := notice.Endpoint
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /clock>
		SetHandler zmq
		ZmqBackend %s
	</Location>
	<Location /n>
		SetHandler zmq
		ZmqBackend %s
		ZmqNotices on
		ZmqTimeout 30
	</Location>
	<Location /zmq-status>
		SetHandler zmq-status
	</Location>
`, clock.Endpoint, ep)})
	h.expect(`MODZMQ0025: .*aborted the stream`)

	out, err := exec.Command("curl", "-sSN", "--max-time", "20", "-D", "-", h.URL+"/clock").CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	head, body, _ := strings.Cut(string(out), "\r\n\r\n")
	if !strings.Contains(strings.ToLower(head), "content-type: text/event-stream") || !strings.Contains(strings.ToLower(head), "transfer-encoding: chunked") {
		t.Errorf("curl's head:\n%s", head)
	}
	if want := "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n"; body != want {
		t.Errorf("curl got %q, want %q", body, want)
	}
	if out, err := exec.Command("curl", "-sSI", "--max-time", "20", h.URL+"/clock").CombinedOutput(); err != nil ||
		!strings.Contains(strings.ToLower(string(out)), "text/event-stream") {
		t.Errorf("HEAD: %v\n%s", err, out)
	}

	// A stream the worker aborts.
	out, err = exec.Command("curl", "-sSN", "--max-time", "20", h.URL+"/n/abort").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 18 || !strings.HasPrefix(string(out), "partial") {
		t.Errorf("an aborted stream: curl %v, %q; want exit 18 (transfer closed) after \"partial\"", err, out)
	}

	// Clients that leave: mid-request, then mid-stream.
	for _, path := range []string{"/n/hold", "/n/trickle"} {
		cmd := exec.Command("curl", "-sN", h.URL+path)
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var id string
		checkFor(t, 10*time.Second, func() error {
			for _, l := range strings.Split(notice.Output.String(), "\n") {
				if f := strings.Fields(l); len(f) == 3 && f[0] == "request" && f[2] == path {
					id = f[1]
					return nil
				}
			}
			return fmt.Errorf("the worker has not seen %s: %q", path, notice.Output.String())
		})
		if path == "/n/trickle" {
			if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "tick\n" {
				t.Fatalf("the first part of %s: %q, %v", path, line, err)
			}
		}
		cmd.Process.Kill()
		cmd.Wait()
		checkFor(t, 10*time.Second, func() error {
			if !strings.Contains(notice.Output.String(), "cancel "+id+"\n") {
				return fmt.Errorf("no cancel notice for %s (%s): %q", path, id, notice.Output.String())
			}
			return nil
		})
	}
	checkFor(t, 10*time.Second, func() error {
		b, _ := os.ReadFile(filepath.Join(h.Dir, "access_log"))
		if n := strings.Count(string(b), `" 499 `); n != 2 {
			return fmt.Errorf("access_log shows %d requests as 499, want 2:\n%s", n, b)
		}
		return nil
	}) // zmq-status counts them (published twice a second).
	checkFor(t, 10*time.Second, func() error {
		_, page := do(t, "GET", h.URL+"/zmq-status?metrics", "", nil)
		for _, want := range []string{
			`modzmq_stream_parts_total{direction="to_client",route="/clock"} 5`,
			`modzmq_stream_bytes_total{direction="to_client",route="/clock"} 45`,
			`modzmq_stream_ends_total{cause="end",route="/clock"} 1`,
			`modzmq_stream_ends_total{cause="client_gone",route="/clock"} 1`, // the HEAD
			`modzmq_stream_ends_total{cause="aborted",route="/n"} 1`,
			`modzmq_stream_ends_total{cause="client_gone",route="/n"} 1`,
			`modzmq_cancels_total{route="/n"} 2`,
			`modzmq_streams_open{route="/n"} 0`,
		} {
			if want = h.withVHost(want); !strings.Contains(string(page), want+"\n") {
				return fmt.Errorf("?metrics lacks %s:\n%s", want, page)
			}
		}
		return nil
	})
}

// Over HTTP/2 (h2c, mod_http2): SSE events arrive as DATA frames, and a
// client that goes away mid-stream gets its worker a cancel notice.
func TestStreamsOverHTTP2(t *testing.T) {
	clock := startStreamClock(t, "--count", "5", "--interval", "0.05")
	notice := startPyScript(t, "test/workers/notice_worker.py")
	ep := notice.Endpoint
	h := startHTTPD(t, httpdParams{MPM: "event", Global: "LoadModule http2_module /usr/lib/apache2/modules/mod_http2.so\nProtocols h2c http/1.1\n",
		Extra: fmt.Sprintf(`	<Location /clock>
		SetHandler zmq
		ZmqBackend %s
	</Location>
	<Location /n>
		SetHandler zmq
		ZmqBackend %s
		ZmqNotices on
	</Location>
`, clock.Endpoint, ep)})
	out, err := exec.Command("curl", "-sSN", "--http2-prior-knowledge", "--max-time", "20", "-D", "-", h.URL+"/clock").CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	head, body, _ := strings.Cut(string(out), "\r\n\r\n")
	if !strings.HasPrefix(head, "HTTP/2 200") || !strings.Contains(head, "content-type: text/event-stream") {
		t.Errorf("curl's head over HTTP/2:\n%s", head)
	}
	if want := "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n"; body != want {
		t.Errorf("curl got %q over HTTP/2, want %q\nhead: %s\nerror_log:\n%s", body, want, head, h.errorLog())
	}

	cmd := exec.Command("curl", "-sN", "--http2-prior-knowledge", h.URL+"/n/trickle")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "tick\n" {
		t.Fatalf("the first part over HTTP/2: %q, %v", line, err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	checkFor(t, 10*time.Second, func() error {
		if !strings.Contains(notice.Output.String(), "cancel ") {
			return fmt.Errorf("no cancel notice after the HTTP/2 client left: %q", notice.Output.String())
		}
		return nil
	})
}

// vmHWM returns a process's peak resident size in KiB.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			var kib int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kib)
			return kib
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// childrenPeakRSS sums the peak resident sizes of h's children, in KiB.
func childrenPeakRSS(t *testing.T, h *httpd) (sum int64) {
	t.Helper()
	out, _ := exec.Command("pgrep", "-P", h.pid()).Output()
	for _, f := range strings.Fields(string(out)) {
		var pid int
		fmt.Sscanf(f, "%d", &pid)
		sum += vmHWM(t, pid)
	}
	return sum
}

// patternReader yields n bytes, byte i being i % 251 (upload_sink.py's).
type patternReader struct{ off, n int64 }

// patternTable is the pattern from offset 0 for 64 KiB beyond any
// starting point, so patternReader copies rather than computes each byte
// (which under -race costs about 20 s a GiB).
var patternTable = func() []byte {
	b := make([]byte, 251+64<<10)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}()

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n-p.off)]
	for n := 0; n < len(b); {
		n += copy(b[n:], patternTable[(p.off+int64(n))%251:])
	}
	p.off += int64(len(b))
	return len(b), nil
}

// A 1 GiB upload and a 1 GiB download through zmq-gateway, with the
// pyzmq example upload_sink.py: SHA-256 matches both ways, the worker sees
// the upload's first part before the upload ends, and the gateway's peak
// resident size grows by less than 64 MiB.
func TestLargeTransfersThroughTheGateway(t *testing.T) {
	sink := startPyScript(t, "examples/python/upload_sink.py")
	ep := sink.Endpoint
	g := startGatewayProc(t, "", fmt.Sprintf("  - prefix: /up\n    backend: [%s]\n    stream_body: true\n    max_body: 0\n    timeout: 5s\n", ep))
	pid := g.cmd.Process.Pid
	before := vmHWM(t, pid)
	const size = 1 << 30
	start := time.Now()
	uploadToSink(t, g.URL+"/up", size, sink, 1, func() string { return "gateway: " + g.Stderr.String() })
	up := time.Since(start)
	downloadFromSink(t, g.URL+"/up/blob", size)
	grew := vmHWM(t, pid) - before
	if grew > 64<<10 {
		t.Errorf("zmq-gateway's peak resident size grew by %d KiB moving 2 x 1 GiB; want under 64 MiB", grew)
	}
	t.Logf("1 GiB up in %v, down in %v; zmq-gateway's peak resident size grew by %d KiB",
		up.Round(time.Millisecond), (time.Since(start) - up).Round(time.Millisecond), grew)
}

// uploadToSink POSTs size bytes of the pattern to url, behind which
// upload_sink.py takes the body in parts: the sink must have the first part
// (its firstParts-th "first-part" line) before the rest is sent, and answer
// with the size and SHA-256. diag adds the front's log to a failure.
func uploadToSink(t *testing.T, url string, size int64, sink *worker, firstParts int, diag func() string) {
	t.Helper()
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", url, pr)
	req.ContentLength = size
	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{resp.StatusCode, string(b), err}
	}()
	src, sum := &patternReader{n: size}, sha256.New()
	if _, err := io.CopyN(io.MultiWriter(pw, sum), src, 1<<20); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, func() error { // the worker has the first part; the upload goes on
		if strings.Count(sink.Output.String(), "first-part ") < firstParts {
			return fmt.Errorf("the worker has no part of the upload yet: %q", sink.Output.String())
		}
		return nil
	})
	// A broken build fails here instead of hanging: the upload stops when
	// the front has taken nothing for a minute, however long it takes in all.
	stuck := time.AfterFunc(time.Minute, func() {
		pw.CloseWithError(fmt.Errorf("the front took no more of the body for a minute"))
	})
	defer stuck.Stop()
	if _, err := io.Copy(io.MultiWriter(&watchedWriter{pw, stuck, time.Minute}, sum), src); err != nil {
		t.Fatalf("upload: %v\nworker: %s\n%s", err, sink.Output, diag())
	}
	pw.Close()
	var r result
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("no answer to the upload\nworker: %s\n%s", sink.Output, diag())
	}
	want := fmt.Sprintf(`{"bytes": %d, "sha256": "%x"}`, size, sum.Sum(nil))
	if r.err != nil || r.status != 200 || r.body != want {
		t.Fatalf("upload: %d %q, %v; want 200 %s", r.status, r.body, r.err, want)
	}
}

// watchedWriter writes to w, and pushes the timer t back by d before
// each write.
type watchedWriter struct {
	w io.Writer
	t *time.Timer
	d time.Duration
}

func (w *watchedWriter) Write(b []byte) (int, error) {
	w.t.Reset(w.d)
	return w.w.Write(b)
}

// downloadFromSink GETs size bytes streamed by upload_sink.py from url and
// checks them against the pattern.
func downloadFromSink(t *testing.T, url string, size int64) {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("%s?bytes=%d", url, size))
	if err != nil {
		t.Fatal(err)
	}
	got, want := sha256.New(), sha256.New()
	n, err := io.Copy(got, resp.Body)
	resp.Body.Close()
	io.Copy(want, &patternReader{n: size})
	if err != nil || n != size || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Errorf("download from %s: %d bytes, %v; SHA-256 equal: %v", url, n, err, bytes.Equal(got.Sum(nil), want.Sum(nil)))
	}
}

// Stopping Apache while a stream is open ends the stream (MODZMQ0026): the
// child exits at once rather than being killed by the parent after its
// grace period (AH00045/AH00046), and the worker gets a cancel notice.
func TestApacheStopsWithAStreamOpen(t *testing.T) {
	notice := startPyScript(t, "test/workers/notice_worker.py")
	ep := notice.Endpoint
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /n>
		SetHandler zmq
		ZmqBackend %s
		ZmqNotices on
	</Location>
`, ep)})
	cmd := exec.Command("curl", "-sN", h.URL+"/n/trickle")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "tick\n" {
		t.Fatalf("the first part: %q, %v", line, err)
	}
	h.stop(t)
	checkEndedAtStop(t, h, notice, "MODZMQ0026")
}

// A graceful stop lets a request waiting for its worker finish: the client
// gets the worker's answer, and the child exits after it.
func TestApacheGracefulStopLetsARequestFinish(t *testing.T) {
	w := startPyWorker(t, "slow", "--log")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(
		"\t<Location /s>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t</Location>\n", w.Endpoint)})
	got := make(chan string, 1)
	go func() {
		resp, err := client.Get(h.URL + "/s/sleep?ms=2000")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- fmt.Sprintf("%d %s", resp.StatusCode, b)
	}()
	checkFor(t, 10*time.Second, func() error {
		if !strings.Contains(w.Output.String(), "/s/sleep") {
			return fmt.Errorf("the worker has not got the request: %q", w.Output.String())
		}
		return nil
	})
	if out, err := h.ctl("graceful-stop"); err != nil {
		t.Fatalf("graceful-stop: %v %s", err, out)
	}
	if a := zmqtest.WaitFor(t, got, "the answer"); !strings.HasPrefix(a, "200 ") || !strings.Contains(a, `"worker": "slow"`) {
		t.Errorf("the request waiting at the graceful stop: %s; want the worker's 200", a)
	}
	if log := h.errorLog(); strings.Contains(log, "MODZMQ0034") {
		t.Errorf("a graceful stop ended the request:\n%s", log)
	}
}

// checkEndedAtStop checks what a request or stream h held when it stopped
// left behind: the line with code saying it ended, no child the parent had
// to kill after its grace period (AH00045/AH00046), and the worker's
// cancel notice.
func checkEndedAtStop(t *testing.T, h *httpd, notice *worker, code string) {
	t.Helper()
	log := h.errorLog()
	for _, bad := range []string{"AH00045", "AH00046"} {
		if strings.Contains(log, bad) {
			t.Errorf("the parent had to kill a child holding a request (%s):\n%s", bad, log)
		}
	}
	if !strings.Contains(log, code) {
		t.Errorf("the error log does not say (%s) the request ended for the stop:\n%s", code, log)
	}
	checkFor(t, 10*time.Second, func() error {
		if !strings.Contains(notice.Output.String(), "cancel ") {
			return fmt.Errorf("no cancel notice: %q", notice.Output.String())
		}
		return nil
	})
}

// Stopping Apache (not gracefully) while a request waits for a worker that
// holds it ends the request (MODZMQ0034; Apache's stop closes the client's
// connection itself), and the worker gets a cancel notice: the child exits
// at once rather than being killed by the parent after its grace period
// (AH00045/AH00046).
func TestApacheStopsWithARequestWaiting(t *testing.T) {
	notice := startPyScript(t, "test/workers/notice_worker.py")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /n>
		SetHandler zmq
		ZmqBackend %s
		ZmqNotices on
	</Location>
`, notice.Endpoint)})
	got := make(chan error, 1)
	go func() {
		resp, err := client.Get(h.URL + "/n/hold")
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("answered %s", resp.Status)
		}
		got <- err
	}()
	checkFor(t, 10*time.Second, func() error {
		if !strings.Contains(notice.Output.String(), "/n/hold") {
			return fmt.Errorf("the worker has not got the request: %q", notice.Output.String())
		}
		return nil
	})
	h.stop(t)
	t.Logf("the client: %v", zmqtest.WaitFor(t, got, "the client's end"))
	checkEndedAtStop(t, h, notice, "MODZMQ0034")
}

// Through Apache: a keep-alive holds a request past ZmqTimeout
// (long-poll), where a silent worker's client gets 504; a worker may refuse
// a streamed body after its first part (413); and a 1 GiB
// streamed download from upload_sink.py arrives whole (SHA-256) while the
// children's peak resident size grows by less than 64 MiB, its parts taken
// in C.
func TestLongPollAndLargeDownloadThroughApache(t *testing.T) {
	w := startPyScript(t, "test/workers/notice_worker.py")
	ep := w.Endpoint
	w2 := startPyScript(t, "examples/python/upload_sink.py")
	ep2 := w2.Endpoint
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /n>
		SetHandler zmq
		ZmqBackend %s
		ZmqTimeout 200ms
		ZmqStreamBody on
	</Location>
	<Location /sink>
		SetHandler zmq
		ZmqBackend %s
	</Location>
	<Location /zmq-status>
		SetHandler zmq-status
	</Location>
`, ep, ep2)})
	h.expect(`MODZMQ0102: .*answered 504`)
	if resp, body := do(t, "GET", h.URL+"/n/poll", "", nil); resp.StatusCode != 200 || string(body) != "news" {
		t.Errorf("long-poll with keep-alives past ZmqTimeout 200ms: %d %q, want 200 \"news\"", resp.StatusCode, body)
	}
	if resp, _ := do(t, "GET", h.URL+"/n/hold", "", nil); resp.StatusCode != 504 {
		t.Errorf("a silent worker: %d, want 504", resp.StatusCode)
	}
	// A streamed body the worker refuses after its first part.
	if resp, body := do(t, "POST", h.URL+"/n/refuse", "", strings.NewReader(strings.Repeat("x", 1<<20))); resp.StatusCode != 413 || string(body) != "no thanks" {
		t.Errorf("a streamed body refused after its first part: %d %q, want 413 \"no thanks\"", resp.StatusCode, body)
	}

	do(t, "GET", h.URL+"/sink/warm?bytes=1", "", nil)
	counted := h.settledRoute(t, "/sink")
	before := childrenPeakRSS(t, h)
	start := time.Now()
	downloadFromSink(t, h.URL+"/sink/blob", 1<<30)
	grew := childrenPeakRSS(t, h) - before
	if grew > 64<<10 {
		t.Errorf("Apache children's peak resident size grew by %d KiB streaming 1 GiB; want under 64 MiB", grew)
	}
	// The parts are taken, and the worker's credit granted back, by the C
	// step (fast.c: stream_fast), not by a step of Go's for each part.
	after := h.settledRoute(t, "/sink")
	parts, entries := after.Streams.Parts-counted.Streams.Parts, *after.GoEntries-*counted.GoEntries
	t.Logf("%d parts, %d calls into Go", parts, entries)
	if parts < 1<<30/(64<<10) || entries > parts/16 {
		t.Errorf("the download came in %d parts with %d calls into Go; want 16384 parts or more, taken in C", parts, entries)
	}
	t.Logf("1 GiB down in %v; the children's peak resident size grew by %d KiB", time.Since(start).Round(time.Millisecond), grew)
}

// With ZmqStreamBody on, a 1 GiB upload through Apache reaches
// upload_sink.py in parts it asks for: its SHA-256 matches, the worker has
// the first part before the upload ends, and the children's peak resident
// size grows by less than 64 MiB.
func TestLargeUploadThroughApache(t *testing.T) {
	sink := startPyScript(t, "examples/python/upload_sink.py")
	ep := sink.Endpoint
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /up>
		SetHandler zmq
		ZmqBackend %s
		ZmqStreamBody on
		ZmqMaxBody 0
	</Location>
	<Location /zmq-status>
		SetHandler zmq-status
	</Location>
`, ep)})
	if resp, body := do(t, "POST", h.URL+"/up", "", strings.NewReader("small")); resp.StatusCode != 200 || !strings.Contains(string(body), `"bytes": 5`) {
		t.Fatalf("a small streamed body: %d %q", resp.StatusCode, body)
	}
	counted := h.settledRoute(t, "/up")
	before := childrenPeakRSS(t, h)
	start := time.Now()
	uploadToSink(t, h.URL+"/up", 1<<30, sink, 2, h.errorLog)
	grew := childrenPeakRSS(t, h) - before
	if grew > 64<<10 {
		t.Errorf("Apache children's peak resident size grew by %d KiB for a 1 GiB upload; want under 64 MiB", grew)
	}
	// The parts after the first go out from C (fast.c: modzmq_send_body):
	// Go is entered for the worker's grants of credit (this worker grants
	// when a quarter of its window came, every part or two), not for the
	// parts as well.
	after := h.settledRoute(t, "/up")
	parts, entries := after.Streams.BodyParts-counted.Streams.BodyParts, *after.GoEntries-*counted.GoEntries
	t.Logf("%d parts, %d calls into Go", parts, entries)
	if parts < 1<<30/(64<<10) || entries > parts {
		t.Errorf("the upload went in %d parts with %d calls into Go; want 16384 parts or more, and the parts sent from C", parts, entries)
	}
	t.Logf("1 GiB up in %v; the children's peak resident size grew by %d KiB", time.Since(start).Round(time.Millisecond), grew)
}
