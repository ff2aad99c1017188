package test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Real clients through zmq-gateway's stream mode (`zmq-gateway stream`,
// gateway/stream): SSE read event by event by curl, Python and headless
// Chromium; a WebSocket from Chromium; long-poll, max_streams, and workers
// that break their streams. The SSE and WebSocket client tests of the
// gateway's HTTP mode run for stream mode too (forEachGatewayMode).

// gatewayModes are zmq-gateway's two fronts: a subtest's name, and the
// mode as startGatewayProc takes it.
var gatewayModes = []struct{ name, mode string }{{"http", ""}, {"stream", "stream"}}

// forEachGatewayMode runs body as a subtest for each of zmq-gateway's
// modes, with the mode to give startGatewayProc.
func forEachGatewayMode(t *testing.T, body func(t *testing.T, mode string)) {
	t.Helper()
	for _, m := range gatewayModes {
		t.Run(m.name, func(t *testing.T) { body(t, m.mode) })
	}
}

// closeIdleFirst closes the shared client's idle connections when the test
// ends, before a gateway started earlier stops (cleanups run last first):
// stream mode's drain closes a connection a client left open itself and
// then waits up to 2 s (its flushWait) for libzmq to let go of it.
func closeIdleFirst(t *testing.T) { t.Cleanup(client.CloseIdleConnections) }

// gatedPythonClient reads the SSE stream of sse_gate_worker.py at
// argv[1]/gate/events line by line as it arrives, and releases event i+1
// (a GET of .../gate/next) only once it has read event i: a front that
// holds an event back until more follow never gets the next one, and the
// client fails at its socket timeout. It prints the events' data, one
// line each, and "end" when the stream ended.
const gatedPythonClient = `
import sys, urllib.request
base = sys.argv[1]
with urllib.request.urlopen(base + "/gate/events", timeout=30) as r:
    assert r.status == 200, r.status
    assert r.headers["Content-Type"].startswith("text/event-stream"), r.headers["Content-Type"]
    got, event = 0, b""
    while True:
        line = r.readline()
        if not line:
            break
        if line != b"\n":
            event += line
            continue
        print(event.decode().strip(), flush=True)
        got, event = got + 1, b""
        if got < 5:
            with urllib.request.urlopen(base + "/gate/next", timeout=30) as rel:
                body = rel.read()
                assert body == b"sent %d" % got, body
    assert event == b"", event
print("end", flush=True)
`

// SSE through zmq-gateway, in HTTP mode and in stream mode, from
// sse_gate_worker.py, which sends each event after the first only when the
// client asks for it after reading the one before: curl -N and a Python
// client (http.client, read line by line) each get all 5 events, in order,
// each before the next was sent, and a stream that ends cleanly (curl
// exits 0; the chunked body ends).
func TestSSEEachEventThroughTheGateway(t *testing.T) {
	forEachGatewayMode(t, func(t *testing.T, mode string) {
		gate := startGateWorker(t)
		g := startGatewayProc(t, mode, fmt.Sprintf("  - prefix: /gate\n    backend: [%s]\n", gate.Endpoint))
		closeIdleFirst(t)
		t.Run("curl", func(t *testing.T) {
			head := readGatedEvents(t, g.URL+"/gate/next", g.URL+"/gate/events")
			lower := strings.ToLower(head)
			if !strings.HasPrefix(head, "HTTP/1.1 200") || !strings.Contains(lower, "content-type: text/event-stream") ||
				!strings.Contains(lower, "transfer-encoding: chunked") {
				t.Errorf("the head curl got:\n%s", head)
			}
		})
		t.Run("python", func(t *testing.T) {
			cmd := exec.Command(python, "-c", gatedPythonClient, g.URL)
			timer := time.AfterFunc(60*time.Second, func() { cmd.Process.Kill() }) // a liveness bound
			out, err := cmd.CombinedOutput()
			timer.Stop()
			if want := "data: 0\ndata: 1\ndata: 2\ndata: 3\ndata: 4\nend\n"; err != nil || string(out) != want {
				t.Errorf("the Python client: %v\n%s\nwant:\n%s\nzmq-gateway:\n%s", err, out, want, g.Stderr)
			}
		})
	})
}

// gatedSSEPage is ssePage for sse_gate_worker.py: its EventSource opens
// /gate/events, and after each event but the fifth the page asks for the
// next (/gate/next), so each event reaches the page before the worker
// sends the next. #errors collects error events and releases that fail.
const gatedSSEPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>mod_zmq SSE, event by event</title></head>
<body>
<pre id="events"></pre>
<pre id="errors"></pre>
<pre id="state">waiting</pre>
<script>
const got = [];
const fail = (s) => { document.getElementById('errors').textContent += s + ' '; };
const es = new EventSource('/gate/events');
es.onmessage = (e) => {
	got.push(e.data);
	document.getElementById('events').textContent = got.join(' ');
	if (got.length === 5) {
		es.close();
		document.getElementById('state').textContent = 'done';
		return;
	}
	const n = got.length;
	fetch('/gate/next').then((r) => r.text()).then((t) => {
		if (t !== 'sent ' + n) fail('release ' + n + ': ' + t);
	}, (err) => fail('release ' + n + ': ' + err));
};
es.onerror = () => fail('error after ' + got.length + ' events (readyState ' + es.readyState + ')');
</script>
</body></html>
`

// An EventSource in headless Chromium, through zmq-gateway in HTTP mode and
// in stream mode, the page from sse_gate_worker.py, which sends each event
// after the first only when the page asks for it after reading the one
// before: all 5 events arrive, in order, each before the next was sent,
// and no error before the page closed the stream.
func TestSSEEachEventInChromium(t *testing.T) {
	requireChromium(t)
	dir := t.TempDir()
	page := filepath.Join(dir, "gated.html")
	if err := os.WriteFile(page, []byte(gatedSSEPage), 0o644); err != nil {
		t.Fatal(err)
	}
	forEachGatewayMode(t, func(t *testing.T, mode string) {
		gate := startPyScript(t, "test/workers/sse_gate_worker.py", "--count", "5", "--page", page)
		g := startGatewayProc(t, mode, fmt.Sprintf("  - prefix: /gate\n    backend: [%s]\n", gate.Endpoint))
		events, errs, state := browseSSEPage(t, g.URL+"/gate/page")
		if want := "0 1 2 3 4"; events != want || errs != "" || state != "done" {
			t.Errorf("the page's EventSource got %q, errors %q, state %q; want %q, none, done\nzmq-gateway (mode %q):\n%s",
				events, errs, state, want, mode, g.Stderr)
		}
	})
}

// A WebSocket from headless Chromium through stream mode to ws_echo.py,
// the page (wsPage) from a worker on the same origin: the subprotocol the
// worker chose, text and binary echoed, the page's close (1000), which the
// worker hears; and on a route whose websocket_origins lists another
// Origin, a refusal at the handshake that never reaches the worker (the
// page sees an error and 1006, never open). The page reports to /result,
// which a worker logs.
func TestWebSocketStreamModeInChromium(t *testing.T) {
	bin := requireChromium(t)
	page := filepath.Join(t.TempDir(), "page.html")
	if err := os.WriteFile(page, []byte(wsPage), 0o644); err != nil {
		t.Fatal(err)
	}
	pages := startPyScript(t, "test/workers/sse_gate_worker.py", "--page", page)
	echo := startPyScript(t, "examples/python/ws_echo.py")
	results := startPyWorker(t, "results", "--log")
	g := startGatewayProc(t, "stream", fmt.Sprintf(`  - prefix: /page
    backend: [%[1]s]
  - prefix: /result
    backend: [%[2]s]
  - prefix: /ws
    backend: [%[3]s]
    websocket: true
  - prefix: /elsewhere
    backend: [%[3]s]
    websocket: true
    websocket_origins: [https://example.com]
`, pages.Endpoint, results.Endpoint, echo.Endpoint))
	got := browseWSPage(t, bin, g.URL+"/page?path=/ws/echo", results, "/ws/echo")
	if want := "open:echo text:héllo binary:1,2,3,250 close:1000"; got != want {
		t.Errorf("the page's WebSocket: %q, want %q\nzmq-gateway:\n%s", got, want, g.Stderr)
	}
	checkFor(t, 10*time.Second, func() error {
		if !strings.Contains(echo.Output.String(), " 1000\n") {
			return fmt.Errorf("ws_echo.py did not print the close:\n%s", echo.Output)
		}
		return nil
	})
	before := echo.Output.String()
	if got := browseWSPage(t, bin, g.URL+"/page?path=/elsewhere/echo", results, "/elsewhere/echo"); !strings.HasPrefix(got, "error") ||
		!strings.Contains(got, "close:1006") || strings.Contains(got, "open") {
		t.Errorf("a WebSocket from an Origin not allowed: %q, want an error and close 1006 without open", got)
	}
	if echo.Output.String() != before {
		t.Errorf("a handshake from an Origin not allowed reached the worker:\n%s", echo.Output)
	}
}

// browseWSPage loads pageURL (wsPage) in headless Chromium until the page
// reports what happened to its WebSocket to path as a request to /result,
// which the worker results logs ("got <target>"), and returns the report
// without path.
func browseWSPage(t *testing.T, bin, pageURL string, results *worker, path string) string {
	t.Helper()
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu",
		"--user-data-dir="+t.TempDir(), "--no-first-run", "--no-default-browser-check",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-extensions", "--disable-default-apps", "--no-proxy-server",
		"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--remote-debugging-port=0", pageURL)
	// Chromium's helper processes go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}()
	re := regexp.MustCompile(`(?m)^got /result\?(\S*)$`)
	var got string
	checkFor(t, 60*time.Second, func() error {
		for _, m := range re.FindAllStringSubmatch(results.Output.String(), -1) {
			if r, err := url.QueryUnescape(m[1]); err == nil && strings.HasPrefix(r, path+" ") {
				got = strings.TrimPrefix(r, path+" ")
				return nil
			}
		}
		return fmt.Errorf("no result from the page for %s\nstderr (last 2000 bytes):\n%s", path, tail(stderr.String(), 2000))
	})
	return got
}

// Long-poll through stream mode (timeout: 200ms): a worker that sends
// keep-alives (ten, 50 ms or more apart) before its answer holds the
// request past the route's timeout, and its client gets the answer that
// follows (200 "news"); a worker that sends nothing gets its client 504,
// logged (MODZMQ0102).
func TestStreamModeLongPoll(t *testing.T) {
	notice := startPyScript(t, "test/workers/notice_worker.py")
	g := startGatewayProc(t, "stream", fmt.Sprintf("  - prefix: /n\n    backend: [%s]\n    timeout: 200ms\n", notice.Endpoint))
	closeIdleFirst(t)
	if resp, body := do(t, "GET", g.URL+"/n/poll", "", nil); resp.StatusCode != 200 || string(body) != "news" {
		t.Errorf("long-poll with keep-alives past timeout 200ms: %d %q, want 200 \"news\"\nzmq-gateway:\n%s", resp.StatusCode, body, g.Stderr)
	}
	if !strings.Contains(notice.Output.String(), " /n/poll\n") {
		t.Errorf("the worker did not get the long-poll: %q", notice.Output)
	}
	if resp, _ := do(t, "GET", g.URL+"/n/hold", "", nil); resp.StatusCode != 504 {
		t.Errorf("a silent worker: %d, want 504", resp.StatusCode)
	}
	checkFor(t, 10*time.Second, func() error {
		if !strings.Contains(g.Stderr.String(), "MODZMQ0102") {
			return fmt.Errorf("no MODZMQ0102 line for the 504:\n%s", g.Stderr)
		}
		return nil
	})
}

// max_streams through stream mode (max_streams: 1, notices: true): while
// one stream is open, a second stream's head is refused with 503 and
// Retry-After (and its worker told with a cancel notice), and so is a
// WebSocket handshake, before it reaches a worker; a plain reply still gets
// through. Once the first stream's client left, a stream is accepted again.
func TestStreamModeMaxStreams(t *testing.T) {
	notice := startPyScript(t, "test/workers/notice_worker.py")
	g := startGatewayProc(t, "stream", fmt.Sprintf("  - prefix: /n\n    backend: [%s]\n    notices: true\n    websocket: true\n    max_streams: 1\n", notice.Endpoint))
	closeIdleFirst(t)
	requestID := func(target string) string {
		t.Helper()
		var id string
		checkFor(t, 10*time.Second, func() error {
			for _, l := range strings.Split(notice.Output.String(), "\n") {
				if f := strings.Fields(l); len(f) == 3 && f[0] == "request" && f[2] == target {
					id = f[1]
					return nil
				}
			}
			return fmt.Errorf("the worker has not seen %s: %q", target, notice.Output)
		})
		return id
	}
	expectCancel := func(id, what string) {
		t.Helper()
		checkFor(t, 10*time.Second, func() error {
			if !strings.Contains(notice.Output.String(), "cancel "+id+"\n") {
				return fmt.Errorf("no cancel notice for %s (%s): %q", what, id, notice.Output)
			}
			return nil
		})
	}

	first := exec.Command("curl", "-sN", g.URL+"/n/trickle?1")
	stdout, _ := first.StdoutPipe()
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Process.Kill(); first.Wait() })
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "tick\n" {
		t.Fatalf("the first stream's first part: %q, %v", line, err)
	}

	resp, err := client.Get(g.URL + "/n/trickle?2")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a second stream over max_streams 1: %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	expectCancel(requestID("/n/trickle?2"), "the stream refused")

	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	if c, resp, err := d.Dial("ws://"+g.Addr+"/n/ws", nil); err == nil {
		c.Close()
		t.Errorf("a WebSocket handshake over max_streams 1 was accepted")
	} else if resp == nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a WebSocket handshake over max_streams 1: %v %+v; want 503 with Retry-After", err, resp)
	}
	if strings.Contains(notice.Output.String(), " /n/ws\n") {
		t.Errorf("a handshake over max_streams reached the worker: %q", notice.Output)
	}
	if resp, body := do(t, "GET", g.URL+"/n/plain", "", nil); resp.StatusCode != 200 || string(body) != "plain" {
		t.Errorf("a plain request while a stream is open: %d %q, want 200 \"plain\"", resp.StatusCode, body)
	}

	first.Process.Kill()
	first.Wait()
	expectCancel(requestID("/n/trickle?1"), "the first stream, whose client left")
	third := 0
	checkFor(t, 10*time.Second, func() error { // the first stream's slot is freed as its end is seen
		third++
		resp, err := client.Get(fmt.Sprintf("%s/n/trickle?3-%d", g.URL, third))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("a stream after the first ended: %d", resp.StatusCode)
		}
		if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "tick\n" {
			t.Fatalf("a stream after the first ended: %q, %v", line, err)
		}
		return nil
	})
}

// Workers that break a stream after its head, through stream mode: a part
// of an unknown kind, a part with 3 frames, a part past its credit, a
// worker killed mid-stream. Each client gets the head and the first part,
// then a response that ends abnormally: no terminating chunk, the
// connection closed (curl exits 18, and a raw client reads the chunk and
// then the end of the connection), logged (MODZMQ0130) with the cause.
// Parts with a request id the front never sent, before a plain reply,
// before a head and amid a stream, and a part after its stream's end, are
// dropped: those responses end correctly, and the process goes on serving.
func TestStreamModeHostileStreamWorkers(t *testing.T) {
	port := freePort(t)
	ep := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	script := filepath.Join(root, "test/workers/hostile_stream_worker.py")
	w := startListening(t, port, ep, python, script, ep)
	g := startGatewayProc(t, "stream", fmt.Sprintf("  - prefix: /h\n    backend: [%s]\n", ep))
	closeIdleFirst(t)
	fresh := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	serves := func(after string) {
		t.Helper()
		for i := 0; i < 4; i++ {
			resp, err := fresh.Get(g.URL + "/h/plain")
			if err != nil {
				t.Fatalf("after %s: %v\nzmq-gateway:\n%s", after, err, g.Stderr)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "fine" {
				t.Fatalf("after %s: %d %q, want 200 \"fine\"\nzmq-gateway:\n%s", after, resp.StatusCode, b, g.Stderr)
			}
		}
	}
	logged := func(what, line string) {
		t.Helper()
		re := regexp.MustCompile(`MODZMQ0130: stream ended abnormally: .*(` + line + `)`)
		checkFor(t, 10*time.Second, func() error {
			if !re.MatchString(strings.ReplaceAll(g.Stderr.String(), `\"`, `"`)) { // as slog quotes it
				return fmt.Errorf("%s: the log lacks %q:\n%s", what, re, g.Stderr)
			}
			return nil
		})
	}
	serves("the start")

	for _, c := range []struct{ path, cause string }{ // cause: a regular expression
		{"/h/kind", `unknown stream part "@bogus"`},
		{"/h/frames", "a stream part has 2 frames, got 3"},
		// "partial" (7+64), then the whole credit (+64): the stream's
		// credit check finds it, or, when the relay has not taken
		// "partial" yet, the shared connection's queue, whose bound in
		// bytes it passes too.
		{"/h/credit", "the worker sent 135 bytes beyond its credit|a stream or WebSocket past its credit"},
	} {
		if out, code := curlExit(t, g.URL+c.path); code != 18 || out != "partial" {
			t.Errorf("%s: curl exit %d after %d bytes, %.40q; want 18 (transfer closed) after \"partial\"", c.path, code, len(out), out)
		}
		logged(c.path, c.cause)
		serves(c.path)
	}
	// What curl's exit 18 says, byte by byte: the chunk, then the end of
	// the connection, without the terminating chunk.
	nc, err := net.Dial("tcp", g.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(nc, "GET /h/kind HTTP/1.1\r\nHost: x\r\n\r\n")
	raw, err := io.ReadAll(nc)
	if _, body, _ := strings.Cut(string(raw), "\r\n\r\n"); err != nil || body != "7\r\npartial\r\n" {
		t.Errorf("a stream broken after its first part, read raw: %v\n%q\nwant the head, the chunk \"partial\" and the connection closed", err, raw)
	}

	// Parts for requests the front never sent are dropped.
	if out, code := curlExit(t, g.URL+"/h/stranger-stream"); code != 0 || out != "partial-done" {
		t.Errorf("a stream amid parts for an unknown request id: curl exit %d, %q; want 0, \"partial-done\"", code, out)
	}
	if resp, body := do(t, "GET", g.URL+"/h/stranger-plain", "", nil); resp.StatusCode != 200 || string(body) != "fine" {
		t.Errorf("a plain reply after a part for an unknown request id: %d %q, want 200 \"fine\"", resp.StatusCode, body)
	}
	for i := 0; i < 2; i++ {
		if out, code := curlExit(t, g.URL+"/h/late"); code != 0 || out != "partial-done" {
			t.Errorf("a stream followed by a late part: curl exit %d, %q; want 0, \"partial-done\"", code, out)
		}
		serves("a late part")
	}

	// A worker killed mid-stream, then started again on its endpoint.
	killMidStream(t, g.URL+"/h/stall", w)
	logged("a worker killed mid-stream", "worker lost: ")
	startListening(t, port, ep, python, script, ep)
	serves("a worker killed mid-stream")

	select {
	case err := <-g.done:
		g.done <- err
		t.Fatalf("zmq-gateway stream exited: %v\n%s", err, g.Stderr)
	default:
	}
}
