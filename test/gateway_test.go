package test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// gatewayProc is a running build/zmq-gateway.
type gatewayProc struct {
	cmd    *exec.Cmd
	URL    string
	Addr   string
	Stderr *syncBuffer
	done   chan error
}

// startGatewayProc runs zmq-gateway (mode "" or "stream") with the YAML
// routes given, on a free port, and stops it when the test ends.
func startGatewayProc(t *testing.T, mode, routes string) *gatewayProc {
	t.Helper()
	return startGatewayProcTimeouts(t, mode, "", routes)
}

// startGatewayProcTimeouts is startGatewayProc with more timeouts: YAML
// lines under timeouts:, each indented by two spaces.
func startGatewayProcTimeouts(t *testing.T, mode, timeouts, routes string) *gatewayProc {
	t.Helper()
	requireBuilt(t, "zmq-gateway")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conf := filepath.Join(t.TempDir(), "gateway.yaml")
	text := fmt.Sprintf("listen: %s\naccess_log: off\ntimeouts:\n  shutdown: 10s\n%sroutes:\n%s", addr, timeouts, routes)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-config", conf}
	if mode != "" {
		args = append([]string{mode}, args...)
	}
	g := &gatewayProc{cmd: exec.Command(buildPath("zmq-gateway"), args...), URL: "http://" + addr, Addr: addr,
		Stderr: &syncBuffer{}, done: make(chan error, 1)}
	g.cmd.Stderr = g.Stderr
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { g.done <- g.cmd.Wait() }()
	t.Cleanup(func() {
		g.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-g.done:
		case <-time.After(15 * time.Second):
			g.cmd.Process.Kill()
			t.Errorf("zmq-gateway did not stop on SIGTERM")
		}
		if strings.Contains(g.Stderr.String(), "panic") {
			t.Errorf("zmq-gateway panicked:\n%s", g.Stderr)
		}
	})
	checkFor(t, 10*time.Second, func() error {
		select {
		case err := <-g.done:
			g.done <- err
			t.Fatalf("zmq-gateway exited: %v\n%s", err, g.Stderr)
		default:
		}
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	})
	return g
}

// gatewayRoutes is the configuration both fronts are tested with.
func gatewayRoutes(w workers) string {
	return fmt.Sprintf(`  - prefix: /rep/
    backend: [%s]
  - prefix: /router/
    backend: [%s]
  - prefix: /go/
    backend: [%s]
  - prefix: /both/
    backend: [%s, %s]
  - prefix: /slow/
    backend: [%s]
    timeout: 1s
  - prefix: /none/
    backend: [tcp://127.0.0.1:%d]
    timeout: 10s
  - prefix: /small/
    backend: [%s]
    max_body: 1024
  - path: /only-get/{id}
    methods: [GET]
    backend: [%s]
  - prefix: /strip/
    strip_prefix: /strip
    backend: [%s]
  - path: /t/{name}
    host: "{sub}.example.test"
    backend: [%s]
`, w.rep1.Endpoint, w.router.Endpoint, w.gow.Endpoint, w.rep1.Endpoint, w.rep2.Endpoint, w.slow.Endpoint,
		w.deadPort, w.counter.Endpoint, w.rep1.Endpoint, w.rep1.Endpoint, w.gow.Endpoint)
}

func TestGatewayFronts(t *testing.T) {
	w := startWorkers(t)
	for _, mode := range []string{"http", "stream"} {
		t.Run(mode, func(t *testing.T) {
			m := mode
			if m == "http" {
				m = ""
			}
			g := startGatewayProc(t, m, gatewayRoutes(w))
			h := &httpd{URL: g.URL} // the shared checks only need the URL
			t.Run("BodiesBothWays", func(t *testing.T) { testBodies(t, h) })
			t.Run("ChunkedRequestBody", func(t *testing.T) { testChunked(t, h) })
			t.Run("HEAD", func(t *testing.T) { testHEAD(t, h) })
			t.Run("ConcurrentTokens", func(t *testing.T) { testConcurrentTokens(t, h) })
			t.Run("FailureMatrix", func(t *testing.T) { testGatewayFailures(t, g, w.counter) })
			t.Run("Routing", func(t *testing.T) { testGatewayRouting(t, g) })
		})
	}
}

func testGatewayFailures(t *testing.T, g *gatewayProc, counter *worker) {
	for path, want := range map[string]int{
		"/slow/sleep?ms=5000": 504, "/none/x": 503, "/rep/bad4": 502, "/rep/badstatus": 502,
		"/rep/badheader": 502, "/router/bad4": 502, "/nowhere": 404,
	} {
		start := time.Now()
		resp, _ := do(t, "GET", g.URL+path, "", nil)
		if resp.StatusCode != want {
			t.Errorf("%s: status %d, want %d", path, resp.StatusCode, want)
		}
		if want == 504 && time.Since(start) >= 5*time.Second {
			t.Errorf("%s: 504 only after the worker's own 5 s", path)
		}
	}
	big := bytes.Repeat([]byte("z"), 2000)
	for _, body := range []io.Reader{bytes.NewReader(big), onlyReader{bytes.NewReader(big)}} {
		resp, _ := do(t, "POST", g.URL+"/small/raw?token=gw-big", "", body)
		if resp.StatusCode != 413 {
			t.Errorf("body over max_body: status %d, want 413", resp.StatusCode)
		}
	}
	if strings.Contains(counter.Output.String(), "token=gw-big") {
		t.Error("an oversized body reached the worker")
	}
	for _, code := range []string{"MODZMQ0102", "MODZMQ0101", "MODZMQ0103"} {
		if !strings.Contains(g.Stderr.String(), code) {
			t.Errorf("no %s line in the gateway's log", code)
		}
	}
}

func testGatewayRouting(t *testing.T, g *gatewayProc) {
	resp, _ := do(t, "POST", g.URL+"/only-get/7", "", nil)
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET" {
		t.Errorf("wrong method: %d, Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	resp, b := do(t, "GET", g.URL+"/only-get/7", "", nil)
	if e := decodeEcho(t, b); resp.StatusCode != 200 || e.Meta["var-id"] != "7" {
		t.Errorf("template route: %d, meta %v", resp.StatusCode, e.Meta)
	}
	resp, b = do(t, "GET", g.URL+"/strip/a/b?c=d", "", nil)
	if e := decodeEcho(t, b); resp.StatusCode != 200 || e.Target != "/a/b?c=d" || e.Meta["route"] != "/strip/" {
		t.Errorf("strip_prefix: %d target %q route %q", resp.StatusCode, e.Target, e.Meta["route"])
	}
	resp, b = do(t, "GET", g.URL+"/t/x", "acme.example.test", nil)
	if e := decodeEcho(t, b); resp.StatusCode != 200 || e.Meta["var-sub"] != "acme" || e.Meta["var-name"] != "x" ||
		e.Meta["host"] != "acme.example.test" || e.Worker != "go" {
		t.Errorf("host route: %d meta %v worker %q", resp.StatusCode, e.Meta, e.Worker)
	}
	if resp, _ := do(t, "GET", g.URL+"/t/x", "other.test", nil); resp.StatusCode != 404 {
		t.Errorf("other host: %d, want 404", resp.StatusCode)
	}
	// Headers named like meta stay headers.
	_, b = do(t, "GET", g.URL+"/rep/meta", "", nil, "Request-Id", "forged", "Remote-Addr", "6.6.6.6", "Var-Id", "9", "Route", "/x")
	e := decodeEcho(t, b)
	if e.Meta["request-id"] == "forged" || e.Meta["remote-addr"] != "127.0.0.1" || e.Meta["var-id"] != "" || e.Meta["route"] != "/rep/" {
		t.Errorf("client headers reached meta: %v", e.Meta)
	}
}

// TestGatewayDrainsOnSIGTERM: requests in flight when SIGTERM arrives still
// get their replies; then the process exits 0.
func TestGatewayDrainsOnSIGTERM(t *testing.T) {
	slow := startPyWorker(t, "slow1", "--log")
	slow2 := startPyWorker(t, "slow2", "--log")
	for _, mode := range []string{"", "stream"} {
		t.Run("mode="+mode, func(t *testing.T) {
			g := startGatewayProc(t, mode, fmt.Sprintf("  - prefix: /\n    backend: [%s, %s]\n", slow.Endpoint, slow2.Endpoint))
			seen := func() int {
				return strings.Count(slow.Output.String(), "got ") + strings.Count(slow2.Output.String(), "got ")
			}
			before := seen()
			var wg sync.WaitGroup
			results := make(chan string, 2)
			for i := 0; i < 2; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, err := http.Get(fmt.Sprintf("%s/sleep?ms=1500&i=%d", g.URL, i))
					if err != nil {
						results <- err.Error()
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					results <- resp.Status
				}()
			}
			checkFor(t, 20*time.Second, func() error { // both requests are with the workers
				if n := seen() - before; n < 2 {
					return fmt.Errorf("%d of 2 requests reached the workers", n)
				}
				return nil
			})
			g.cmd.Process.Signal(syscall.SIGTERM)
			wg.Wait()
			close(results)
			for r := range results {
				if r != "200 OK" {
					t.Errorf("request in flight at SIGTERM: %s", r)
				}
			}
			select {
			case err := <-g.done:
				if err != nil {
					t.Errorf("exit: %v\n%s", err, g.Stderr)
				}
				g.done <- err
			case <-time.After(10 * time.Second):
				t.Fatal("did not exit after draining")
			}
		})
	}
}

// TestStreamModeClients drives stream mode with real HTTP clients.
func TestStreamModeClients(t *testing.T) {
	rep := startPyWorker(t, "rep")
	goW := startGoWorker(t, "go")
	g := startGatewayProc(t, "stream", fmt.Sprintf("  - prefix: /py/\n    backend: [%s]\n  - prefix: /go/\n    backend: [%s]\n    max_body: 4096\n", rep.Endpoint, goW.Endpoint))

	t.Run("curl", func(t *testing.T) {
		out, err := exec.Command("curl", "-sS", "-i", "--data-binary", "curl-body", g.URL+"/go/raw", g.URL+"/go/raw").CombinedOutput()
		if err != nil || strings.Count(string(out), "HTTP/1.1 200 OK") != 2 || strings.Count(string(out), "curl-body") != 2 {
			t.Errorf("curl: %v\n%s", err, out)
		}
	})
	t.Run("GoKeepAlive", func(t *testing.T) {
		client := &http.Client{Transport: &http.Transport{}}
		reused := 0
		for i := 0; i < 20; i++ {
			req, _ := http.NewRequest("GET", fmt.Sprintf("%s/go/json?i=%d", g.URL, i), nil)
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
				GotConn: func(ci httptrace.GotConnInfo) {
					if ci.Reused {
						reused++
					}
				}}))
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if e := decodeEcho(t, b); e.Target != fmt.Sprintf("/go/json?i=%d", i) {
				t.Fatalf("request %d got %q", i, e.Target)
			}
		}
		if reused != 19 {
			t.Errorf("%d of 19 requests reused the connection", reused)
		}
	})
	t.Run("PythonHTTPClient", func(t *testing.T) {
		script := `import http.client, sys
c = http.client.HTTPConnection(sys.argv[1])
for i in range(3):
    c.request("POST", "/py/raw?i=%d" % i, body=b"py-body-%d" % i)
    r = c.getresponse()
    assert r.status == 200 and r.read() == b"py-body-%d" % i, r.status
c.request("GET", "/py/json")
r = c.getresponse()
assert r.status == 200 and b'"connection-id"' in r.read()
print("ok")`
		out, err := exec.Command(python, "-c", script, g.Addr).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "ok" {
			t.Errorf("python http.client: %v\n%s", err, out)
		}
	})
	t.Run("ApacheBenchKeepAlive", func(t *testing.T) {
		// A fixed-length answer: ab counts a change of length as a failure.
		out, err := exec.Command("ab", "-k", "-n", "2000", "-c", "16", g.URL+"/go/raw").CombinedOutput()
		if err != nil {
			t.Fatalf("ab: %v\n%s", err, out)
		}
		s := string(out)
		for _, want := range []string{`Complete requests:\s+2000`, `Failed requests:\s+0`, `Keep-Alive requests:\s+2000`} {
			if !regexp.MustCompile(want).MatchString(s) {
				t.Errorf("ab output lacks %q:\n%s", want, s)
			}
		}
	})
	t.Run("PipelinedInOrder", func(t *testing.T) {
		c, err := net.Dial("tcp", g.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var b strings.Builder
		for i := 0; i < 10; i++ {
			prefix := []string{"/py", "/go"}[i%2] // two workers of different speed
			fmt.Fprintf(&b, "GET %s/json?n=%d HTTP/1.1\r\nHost: x\r\n\r\n", prefix, i)
		}
		io.WriteString(c, b.String())
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		for i := 0; i < 10; i++ {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("response %d: %v", i, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if e := decodeEcho(t, body); !strings.HasSuffix(e.Target, fmt.Sprintf("?n=%d", i)) {
				t.Fatalf("response %d answers %q", i, e.Target)
			}
		}
	})
	t.Run("HostileInput", func(t *testing.T) {
		tests := []struct {
			name, req string
			status    int
		}{
			{"garbage", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 hello\r\n\r\n", 400},
			{"no Host", "GET /go/x HTTP/1.1\r\n\r\n", 400},
			{"long target", "GET /go/" + strings.Repeat("a", 9000) + " HTTP/1.1\r\nHost: x\r\n\r\n", 414},
			{"huge headers", "GET /go/x HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 70000) + "\r\n\r\n", 431},
			{"body over max_body", "POST /go/raw HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413},
			{"lying chunk size", "POST /go/raw HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcdefghij\r\n", 400},
			{"CL and TE", "POST /go/raw HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
			{"NUL in header", "GET /go/x HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400},
		}
		for _, tt := range tests {
			c, err := net.Dial("tcp", g.Addr)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, tt.req)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			} else if resp.StatusCode != tt.status || !resp.Close {
				t.Errorf("%s: status %d close %v, want %d and close", tt.name, resp.StatusCode, resp.Close, tt.status)
			}
			c.Close()
		}
		// %00 and .. travel to the worker as sent, and the process is still up.
		resp, b := do(t, "GET", g.URL+"/go/a/%00/../b", "", nil)
		if e := decodeEcho(t, b); resp.StatusCode != 200 || e.Target != "/go/a/%00/../b" {
			t.Errorf("target with %%00 and ..: %d %q", resp.StatusCode, e.Target)
		}
	})
	t.Run("ExpectContinue", func(t *testing.T) {
		body := make([]byte, 3000)
		rand.Read(body)
		cmd := exec.Command("curl", "-sS", "-o", "-", "-H", "Expect: 100-continue", "--data-binary", "@-", g.URL+"/go/raw")
		cmd.Stdin = bytes.NewReader(body)
		out, err := cmd.Output()
		if err != nil || !bytes.Equal(out, body) {
			t.Errorf("Expect: 100-continue upload: %v, %d bytes back", err, len(out))
		}
	})
}

// TestGatewayCommandLine covers what an operator types: -check on good and
// bad files, -version, -help, keygen usage, and the admin listener.
func TestGatewayCommandLine(t *testing.T) {
	requireBuilt(t, "zmq-gateway")
	bin := buildPath("zmq-gateway")
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("routes:\n  - prefix: /a\n    backend: [tcp://127.0.0.1:1]\n    timeout: soon\n"), 0o644)
	out, err := exec.Command(bin, "-check", "-config", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), bad+":4: duration \"soon\"") {
		t.Errorf("-check on a bad file: %v %s", err, out)
	}
	out, err = exec.Command(bin, "-check", "-config", filepath.Join(root, "conf/zmq-gateway.yaml")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OK, 3 route(s)") {
		t.Errorf("-check on conf/zmq-gateway.yaml: %v %s", err, out)
	}
	if out, err = exec.Command(bin, "-version").CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "zmq-gateway ") {
		t.Errorf("-version: %v %s", err, out)
	}
	if out, err = exec.Command(bin, "-help").CombinedOutput(); err != nil || !strings.Contains(string(out), "zmq-gateway stream [flags]") {
		t.Errorf("-help: %v %s", err, out)
	}
	if out, err = exec.Command(bin).CombinedOutput(); err == nil || !strings.Contains(string(out), "nothing to serve") {
		t.Errorf("no arguments: %v %s", err, out)
	}

	w := startPyWorker(t, "admin")
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.Command(bin, "-listen", addr, "-route", "/="+w.Endpoint, "-admin", admin, "-access-log", "off")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	checkFor(t, 10*time.Second, func() error {
		c, err := net.Dial("tcp", admin)
		if err == nil {
			c.Close()
		}
		return err
	})
	for i := 0; i < 4; i++ {
		do(t, "GET", "http://"+addr+"/x", "", nil)
	}
	_, metrics := do(t, "GET", "http://"+admin+"/metrics", "", nil)
	if !strings.Contains(string(metrics), `modzmq_responses_total{code="200",route="/"} 4`) {
		t.Errorf("admin /metrics lacks the 4 answers:\n%.2000s", metrics)
	}
}
