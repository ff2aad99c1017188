package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// What an operator sees of each request through Apache: the request id the
// worker got and the endpoint it went to, as notes mod_log_config logs
// (%{zmq-request-id}n, %{zmq-endpoint}n), as a response header where the
// location asks (ZmqRequestIdHeader), and at LogLevel zmq:debug as one
// MODZMQ0033 line with status, time and bytes; on the C fast path, on the
// Go path (a streamed body) and for an answer Apache writes itself (504).
func TestRequestIdsReachTheLogs(t *testing.T) {
	w := startPyWorker(t, "ids", "--router")
	slow := startPyWorker(t, "slowids", "--router")
	h := startHTTPD(t, httpdParams{MPM: "event",
		Global: "LogFormat \"%r %>s id=%{zmq-request-id}n ep=%{zmq-endpoint}n\" ids\n",
		Extra: fmt.Sprintf(`	CustomLog ids_log ids
	LogLevel warn zmq:debug
	<Location /api>
		SetHandler zmq
		ZmqBackend %s
		ZmqRequestIdHeader X-Request-Id
	</Location>
	<Location /up>
		SetHandler zmq
		ZmqBackend %s
		ZmqStreamBody on
	</Location>
	<Location /slow>
		SetHandler zmq
		ZmqBackend %s
		ZmqTimeout 200ms
		ZmqRequestIdHeader X-Request-Id
	</Location>
`, w.Endpoint, w.Endpoint, slow.Endpoint)})
	h.expect(`MODZMQ0102: `) // the 504 below
	idsLog := filepath.Join(h.Dir, "ids_log")

	workerID := func(body []byte) string {
		var doc struct{ Meta map[string]string }
		if err := json.Unmarshal(body, &doc); err != nil {
			t.Fatalf("the worker's answer: %v: %q", err, body)
		}
		return doc.Meta["request-id"]
	}
	// The fast path.
	resp, body := do(t, "GET", h.URL+"/api/one", "", nil)
	fast := workerID(body)
	if resp.StatusCode != 200 || fast == "" || resp.Header.Get("X-Request-Id") != fast {
		t.Errorf("/api/one: %d, the worker saw request id %q, X-Request-Id is %q", resp.StatusCode, fast, resp.Header.Get("X-Request-Id"))
	}
	// The Go path: a streamed body; no header there (not asked for).
	resp, body = do(t, "POST", h.URL+"/up/two", "", strings.NewReader("some body"))
	goPath := workerID(body)
	if resp.StatusCode != 200 || goPath == "" || resp.Header.Get("X-Request-Id") != "" {
		t.Errorf("/up/two: %d, the worker saw request id %q, X-Request-Id %q", resp.StatusCode, goPath, resp.Header.Get("X-Request-Id"))
	}
	// An answer Apache writes: the worker is too slow.
	resp, _ = do(t, "GET", h.URL+"/slow/sleep?ms=1000", "", nil)
	if resp.StatusCode != 504 || resp.Header.Get("X-Request-Id") == "" {
		t.Errorf("/slow: %d, X-Request-Id %q; want 504 with the id", resp.StatusCode, resp.Header.Get("X-Request-Id"))
	}
	slowID := resp.Header.Get("X-Request-Id")

	checkFor(t, 10*time.Second, func() error {
		b, _ := os.ReadFile(idsLog)
		for _, want := range []string{
			fmt.Sprintf("GET /api/one HTTP/1.1 200 id=%s ep=%s\n", fast, w.Endpoint),
			fmt.Sprintf("POST /up/two HTTP/1.1 200 id=%s ep=%s\n", goPath, w.Endpoint),
			fmt.Sprintf("GET /slow/sleep?ms=1000 HTTP/1.1 504 id=%s ep=%s\n", slowID, slow.Endpoint),
		} {
			if !strings.Contains(string(b), want) {
				return fmt.Errorf("the access log lacks %q:\n%s", want, b)
			}
		}
		return nil
	})
	log := h.errorLog()
	for _, c := range []struct{ target, id, ep, status string }{
		{"/api/one", fast, w.Endpoint, "200"}, {"/up/two", goPath, w.Endpoint, "200"}, {"/slow/sleep", slowID, slow.Endpoint, "504"},
	} {
		re := regexp.MustCompile(`MODZMQ0033: [A-Z]+ ` + regexp.QuoteMeta(c.target) + `: request ` + regexp.QuoteMeta(c.id) +
			` to ` + regexp.QuoteMeta(c.ep) + ` answered ` + c.status + ` in \d+ us, \d+ bytes`)
		if !re.MatchString(log) {
			t.Errorf("no debug line for %s (%s):\n%s", c.target, re, log)
		}
	}
}

// A reply that comes after its client went away is logged at debug with
// its request id when the connection it came on is next taken from the C
// fast path's pool (MODZMQ0104), and that request is answered on another.
func TestLateReplyIsLoggedWithItsID(t *testing.T) {
	w := startPyWorker(t, "late", "--router")
	// The library logs at the server's level (the main server's LogLevel).
	h := startHTTPD(t, httpdParams{MPM: "event", Global: "LogLevel warn zmq:debug\n", Extra: fmt.Sprintf(`	<Location /api>
		SetHandler zmq
		ZmqBackend %s
	</Location>
`, w.Endpoint)})
	do(t, "GET", h.URL+"/api/warm", "", nil) // a pooled connection
	quick := &http.Client{Timeout: 200 * time.Millisecond}
	if _, err := quick.Get(h.URL + "/api/sleep?ms=600"); err == nil {
		t.Fatal("the client did not give up on a reply 600 ms away")
	}
	time.Sleep(800 * time.Millisecond) // the late reply reaches the idle connection
	// New connections, so that the requests reach every child, the one
	// holding the late reply among them.
	fresh := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	checkFor(t, 20*time.Second, func() error {
		resp, err := fresh.Get(h.URL + "/api/next")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("a request after the late reply: %d", resp.StatusCode)
		}
		if !regexp.MustCompile(`MODZMQ0104: dropped a reply nobody waits for any more \(request "[^"]+"\)`).MatchString(h.errorLog()) {
			return fmt.Errorf("no MODZMQ0104 line naming the request:\n%s", h.errorLog())
		}
		return nil
	})
}

// A WebSocket's 101 carries the request id too, where the location asks:
// the id is set with the headers of every answer, and an interim answer
// sends only its own.
func TestWebSocketHandshakeCarriesTheRequestID(t *testing.T) {
	w := startPyScript(t, "examples/python/ws_echo.py")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /ws>
		SetHandler zmq
		ZmqBackend %s
		ZmqWebSocket on
		ZmqRequestIdHeader X-Request-Id
	</Location>
`, w.Endpoint)})
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", h.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "GET /ws/ids HTTP/1.1\r\nHost: one.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("X-Request-Id") == "" {
		t.Errorf("the handshake's answer: %d, X-Request-Id %q; want 101 with the id", resp.StatusCode, resp.Header.Get("X-Request-Id"))
	}
}
