package test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// echo is what the test workers answer for a plain request.
type echo struct {
	Worker     string            `json:"worker"`
	Protocol   string            `json:"protocol"`
	Method     string            `json:"method"`
	Target     string            `json:"target"`
	Headers    [][2]string       `json:"headers"`
	Meta       map[string]string `json:"meta"`
	BodyLength int               `json:"body_length"`
	BodySHA256 string            `json:"body_sha256"`
}

func decodeEcho(t *testing.T, b []byte) echo {
	t.Helper()
	var e echo
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("not an echo reply: %v: %.200q", err, b)
	}
	return e
}

func sha(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

type workers struct {
	rep1, rep2, router, gow, slow, counter *worker
	deadPort                               int
}

// startWorkers starts the workers both the Apache and the gateway tests
// route to: two pyzmq REP, a pyzmq ROUTER, the pure-Go worker, a REP kept for
// slow requests, and a REP that logs what reaches it.
func startWorkers(t *testing.T) workers {
	return workers{
		rep1:     startPyWorker(t, "rep1"),
		rep2:     startPyWorker(t, "rep2"),
		router:   startPyWorker(t, "router", "--router"),
		gow:      startGoWorker(t, "go"),
		slow:     startPyWorker(t, "slow"),
		counter:  startPyWorker(t, "counter", "--log"),
		deadPort: freePort(t),
	}
}

func TestApacheModule(t *testing.T) {
	w := startWorkers(t)
	for _, mpm := range []string{"event", "worker", "prefork"} {
		t.Run(mpm, func(t *testing.T) {
			h := startHTTPD(t, httpdParams{MPM: mpm, REP: w.rep1.Endpoint, REP2: w.rep2.Endpoint,
				Router: w.router.Endpoint, Go: w.gow.Endpoint, Slow: w.slow.Endpoint,
				Counter: w.counter.Endpoint, DeadPort: w.deadPort})
			t.Run("BodiesBothWays", func(t *testing.T) { testBodies(t, h) })
			t.Run("ChunkedRequestBody", func(t *testing.T) { testChunked(t, h) })
			t.Run("HEAD", func(t *testing.T) { testHEAD(t, h) })
			t.Run("RequestHeadersAndMeta", func(t *testing.T) { testHeadersAndMeta(t, h) })
			t.Run("ReplyHeaders", func(t *testing.T) { testReplyHeaders(t, h) })
			t.Run("ConcurrentTokens", func(t *testing.T) { testConcurrentTokens(t, h) })
			t.Run("SlowWorker504", func(t *testing.T) { testSlow(t, h) })
			t.Run("NoWorker503", func(t *testing.T) { testNoWorker(t, h) })
			t.Run("GarbageReplies502", func(t *testing.T) { testGarbage(t, h) })
			t.Run("BodyTooLarge413", func(t *testing.T) { testTooLarge(t, h, w.counter) })
			t.Run("VirtualHosts", func(t *testing.T) { testVhosts(t, h) })
			t.Run("NoBackend500", func(t *testing.T) { testNoBackend(t, h) })
			t.Run("GracefulRestartUnderLoad", func(t *testing.T) { testGraceful(t, h) })
		})
	}
}

func testBodies(t *testing.T, h *httpd) {
	big := make([]byte, 5<<20)
	rand.Read(big)
	for _, prefix := range []string{"/rep", "/router", "/go"} {
		for _, body := range [][]byte{{}, {'x'}, big} {
			resp, got := do(t, "POST", h.URL+prefix+"/raw", "", bytes.NewReader(body))
			if resp.StatusCode != 200 || sha(got) != sha(body) {
				t.Errorf("%s/raw %d bytes: status %d, got %d bytes back, sha equal: %v",
					prefix, len(body), resp.StatusCode, len(got), sha(got) == sha(body))
			}
			resp, got = do(t, "POST", h.URL+prefix+"/json", "", bytes.NewReader(body))
			e := decodeEcho(t, got)
			if resp.StatusCode != 200 || e.BodyLength != len(body) || e.BodySHA256 != sha(body) {
				t.Errorf("%s/json %d bytes: status %d, worker saw %d bytes, sha equal: %v",
					prefix, len(body), resp.StatusCode, e.BodyLength, e.BodySHA256 == sha(body))
			}
		}
	}
}

// onlyReader hides the length of a body so the client sends it chunked.
type onlyReader struct{ io.Reader }

func testChunked(t *testing.T, h *httpd) {
	body := make([]byte, 300_000)
	rand.Read(body)
	for _, prefix := range []string{"/rep", "/go"} {
		resp, got := do(t, "POST", h.URL+prefix+"/raw", "", onlyReader{bytes.NewReader(body)})
		if resp.StatusCode != 200 || sha(got) != sha(body) {
			t.Errorf("%s: chunked upload: status %d, %d bytes back, sha equal %v", prefix, resp.StatusCode, len(got), sha(got) == sha(body))
		}
	}
}

func testHEAD(t *testing.T, h *httpd) {
	resp, got := do(t, "HEAD", h.URL+"/rep/blob?n=1000", "", nil)
	if resp.StatusCode != 200 || resp.ContentLength != 1000 || len(got) != 0 {
		t.Errorf("HEAD: status %d, Content-Length %d, %d body bytes; want 200, 1000, 0", resp.StatusCode, resp.ContentLength, len(got))
	}
	resp, got = do(t, "GET", h.URL+"/rep/blob?n=1000", "", nil)
	if resp.StatusCode != 200 || len(got) != 1000 || got[999] != byte(999%251) {
		t.Errorf("GET blob: status %d, %d bytes", resp.StatusCode, len(got))
	}
}

// rawRequest writes req on a fresh connection and returns the response.
func rawRequest(t *testing.T, h *httpd, req string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", h.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func testHeadersAndMeta(t *testing.T, h *httpd) {
	target := "/rep/h%20x/../y?q=a%2Fb&z"
	resp, b := rawRequest(t, h, "GET "+target+" HTTP/1.1\r\nHost: one.localhost\r\nX-First: 1\r\n"+
		"X-Dup: a\r\nX-Second: 2\r\nX-Dup: b\r\nrequest-id: forged\r\nRoute: /forged\r\nConnection: close\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	e := decodeEcho(t, b)
	if e.Target != target || e.Method != "GET" || e.Protocol != "MZMQ/1" {
		t.Errorf("target %q method %q protocol %q; want %q GET MZMQ/1", e.Target, e.Method, e.Protocol, target)
	}
	var order []string
	dup := ""
	for _, kv := range e.Headers {
		order = append(order, kv[0])
		if kv[0] == "X-Dup" {
			dup = kv[1]
		}
	}
	if got := strings.Join(order, ","); got != "Host,X-First,X-Dup,X-Second,request-id,Route,Connection" {
		t.Errorf("header order %s", got)
	}
	if dup != "a, b" {
		t.Errorf("X-Dup = %q, want Apache's join %q", dup, "a, b")
	}
	m := e.Meta
	want := map[string]string{"remote-addr": "127.0.0.1", "scheme": "http", "host": "one.localhost",
		"server-name": "one.localhost", "protocol": "HTTP/1.1", "route": "/rep"}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("meta %s = %q, want %q", k, m[k], v)
		}
	}
	for _, k := range []string{"request-id", "remote-port", "connection-id"} {
		if m[k] == "" {
			t.Errorf("meta %s missing: %v", k, m)
		}
	}
	if m["request-id"] == "forged" {
		t.Error("a client header reached meta")
	}
}

func testReplyHeaders(t *testing.T, h *httpd) {
	resp, b := do(t, "GET", h.URL+"/rep/cookies", "", nil)
	if resp.Status != "201 Made" || string(b) != "cookies" {
		t.Errorf("status %q body %q; want \"201 Made\" \"cookies\"", resp.Status, b)
	}
	if got := strings.Join(resp.Header.Values("Set-Cookie"), "|"); got != "a=1|b=2" {
		t.Errorf("Set-Cookie %q, want a=1|b=2 in order", got)
	}
	if got := strings.Join(resp.Header.Values("X-Order"), "|"); got != "first|second" {
		t.Errorf("X-Order %q", got)
	}
	if resp.ContentLength != 7 || len(resp.TransferEncoding) != 0 || resp.Header.Get("Proxy-Thing") != "" ||
		resp.Header.Get("Keep-Alive") == "timeout=5" || resp.Close {
		t.Errorf("hop-by-hop headers leaked: Content-Length %d, Transfer-Encoding %v, header %v, close %v",
			resp.ContentLength, resp.TransferEncoding, resp.Header, resp.Close)
	}
}

func testConcurrentTokens(t *testing.T, h *httpd) {
	const total, conc = 2000, 64
	var next atomic.Int64
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for g := 0; g < conc; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > total {
					return
				}
				token := fmt.Sprintf("tok-%d-%x", i, i*7919)
				req, _ := http.NewRequest("GET", h.URL+"/both/t?token="+token, nil)
				resp, err := client.Do(req)
				if err != nil {
					t.Errorf("request %d: %v", i, err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var e echo
				if resp.StatusCode != 200 || json.Unmarshal(b, &e) != nil || e.Target != "/both/t?token="+token {
					t.Errorf("request %s: status %d, reply for %q", token, resp.StatusCode, e.Target)
					continue
				}
				mu.Lock()
				seen[e.Worker]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if seen["rep1"] == 0 || seen["rep2"] == 0 || seen["rep1"]+seen["rep2"] != total {
		t.Errorf("replies by worker %v; want both rep1 and rep2, %d in all", seen, total)
	}
}

func testSlow(t *testing.T, h *httpd) {
	h.expect(`MODZMQ0102: .*answered 504`)
	start := time.Now()
	resp, _ := do(t, "GET", h.URL+"/slow/sleep?ms=5000", "", nil)
	elapsed := time.Since(start)
	// The worker answers after 5 s; a 504 before then came from ZmqTimeout 1.
	if resp.StatusCode != 504 || elapsed >= 5*time.Second {
		t.Errorf("status %d after %v; want 504 before the worker's 5 s reply", resp.StatusCode, elapsed)
	}
	t.Logf("504 after %v (ZmqTimeout 1)", elapsed.Round(time.Millisecond))
}

func testNoWorker(t *testing.T, h *httpd) {
	h.expect(`MODZMQ0101: .*answered 503`)
	h.expect(`MODZMQ0121: tcp://127.0.0.1:\d+: cannot connect`)
	start := time.Now()
	resp, b := do(t, "GET", h.URL+"/none/x", "", nil)
	elapsed := time.Since(start)
	// ZmqTimeout is 10 s here: 503 (not 504) means the connect wait failed it.
	if resp.StatusCode != 503 || elapsed >= 10*time.Second {
		t.Errorf("status %d after %v; want 503 without waiting for ZmqTimeout", resp.StatusCode, elapsed)
	}
	if !strings.Contains(string(b), "mod_zmq test: service unavailable") {
		t.Errorf("ErrorDocument not used: %q", b)
	}
	t.Logf("503 after %v", elapsed.Round(time.Millisecond))
}

func testGarbage(t *testing.T, h *httpd) {
	for path, rule := range map[string]string{
		"/rep/bad4":      "reply has more than 3 frames",
		"/rep/badstatus": `status "abc" is not three digits`,
		"/rep/badheader": "value contains CR",
		"/router/bad4":   "reply has more than 3 frames",
	} {
		h.expect(`MODZMQ0103: .*` + rule)
		resp, _ := do(t, "GET", h.URL+path, "", nil)
		if resp.StatusCode != 502 {
			t.Errorf("%s: status %d, want 502", path, resp.StatusCode)
		}
		if !strings.Contains(h.errorLog(), rule) {
			t.Errorf("%s: no log line naming the rule %q", path, rule)
		}
	}
}

func testTooLarge(t *testing.T, h *httpd, counter *worker) {
	h.expect(`MODZMQ001[34]: request body .*over ZmqMaxBody`)
	big := bytes.Repeat([]byte("z"), 2000)
	resp, _ := do(t, "POST", h.URL+"/small/raw?token=big-length", "", bytes.NewReader(big))
	if resp.StatusCode != 413 {
		t.Errorf("Content-Length over the limit: status %d, want 413", resp.StatusCode)
	}
	resp, _ = do(t, "POST", h.URL+"/small/raw?token=big-chunked", "", onlyReader{bytes.NewReader(big)})
	if resp.StatusCode != 413 {
		t.Errorf("chunked over the limit: status %d, want 413", resp.StatusCode)
	}
	resp, got := do(t, "POST", h.URL+"/small/raw?token=fits", "", bytes.NewReader(big[:1024]))
	if resp.StatusCode != 200 || len(got) != 1024 {
		t.Errorf("body at the limit: status %d, %d bytes back", resp.StatusCode, len(got))
	}
	// The worker prints each target before it replies, but its output
	// reaches the test through a pipe, possibly after the reply.
	checkFor(t, 10*time.Second, func() error {
		if !strings.Contains(counter.Output.String(), "token=fits") {
			return fmt.Errorf("the worker log does not show token=fits: %q", counter.Output.String())
		}
		return nil
	})
	if seen := counter.Output.String(); strings.Contains(seen, "token=big") {
		t.Errorf("an oversized body reached the worker: %q", seen)
	}
}

func testVhosts(t *testing.T, h *httpd) {
	for host, want := range map[string]string{"one.localhost": "rep1", "two.localhost": "go"} {
		resp, b := do(t, "GET", h.URL+"/vhost/who", host, nil)
		e := decodeEcho(t, b)
		if resp.StatusCode != 200 || e.Worker != want || e.Meta["server-name"] != host {
			t.Errorf("Host %s: status %d, worker %q, server-name %q; want worker %q", host, resp.StatusCode, e.Worker, e.Meta["server-name"], want)
		}
	}
}

func testNoBackend(t *testing.T, h *httpd) {
	h.expect(`MODZMQ0010: SetHandler zmq without ZmqBackend for /nobackend`)
	resp, _ := do(t, "GET", h.URL+"/nobackend", "", nil)
	if resp.StatusCode != 500 {
		t.Errorf("status %d, want 500", resp.StatusCode)
	}
}

func testGraceful(t *testing.T, h *httpd) {
	var ok, failed atomic.Int64
	var errMu sync.Mutex
	var errs []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get(fmt.Sprintf("%s/both/g%d?i=%d", h.URL, g, i))
				if err != nil {
					failed.Add(1)
					errMu.Lock()
					errs = append(errs, err.Error())
					errMu.Unlock()
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					ok.Add(1)
				}
			}
		}()
	}
	for i := 0; i < 3; i++ {
		time.Sleep(700 * time.Millisecond)
		if out, err := h.ctl("graceful"); err != nil {
			t.Fatalf("graceful: %v %s", err, out)
		}
	}
	time.Sleep(700 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failed.Load() > 0 {
		t.Errorf("%d requests failed without an HTTP status during graceful restarts: %v", failed.Load(), errs[:min(len(errs), 5)])
	}
	if ok.Load() == 0 {
		t.Fatal("no request succeeded during the restarts")
	}
	for i := 0; i < 200; i++ {
		resp, b := do(t, "GET", fmt.Sprintf("%s/both/after?i=%d", h.URL, i), "", nil)
		if resp.StatusCode != 200 {
			t.Fatalf("request %d after the restarts: status %d %q", i, resp.StatusCode, b)
		}
	}
	t.Logf("%d requests succeeded during 3 graceful restarts", ok.Load())
}

func TestModuleHasNoGoDependency(t *testing.T) {
	requireBuilt(t, "mod_zmq.so")
	out, err := exec.Command("readelf", "-d", buildPath("mod_zmq.so")).CombinedOutput()
	if err != nil {
		t.Fatalf("readelf: %v %s", err, out)
	}
	if !strings.Contains(string(out), "NEEDED") {
		t.Fatalf("readelf printed no NEEDED entries at all: %s", out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "NEEDED") && (strings.Contains(l, "modzmq") || strings.Contains(l, "libgo")) {
			t.Errorf("mod_zmq.so links the Go library: %s", l)
		}
	}
}
