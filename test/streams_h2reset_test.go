package test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// h2cClient is an HTTP/2 client speaking cleartext (h2c, prior knowledge)
// to Apache, counting the TCP connections it opens.
type h2cClient struct {
	*http.Client
	dials atomic.Int32
}

func newH2CClient(t *testing.T) *h2cClient {
	c := &h2cClient{}
	tr := &http2.Transport{AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			c.dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}}
	t.Cleanup(tr.CloseIdleConnections)
	c.Client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	return c
}

// startH2Apache starts Apache with mod_http2 (Protocols h2c http/1.1) and
// extra inside its vhost.
func startH2Apache(t *testing.T, extra string) *httpd {
	t.Helper()
	return startHTTPD(t, httpdParams{MPM: "event",
		Global: "LoadModule http2_module /usr/lib/apache2/modules/mod_http2.so\nProtocols h2c http/1.1\n",
		Extra:  extra})
}

// seenRequestID waits until w printed "request <id> <path>" and returns the id.
func seenRequestID(t *testing.T, w *worker, path string) string {
	t.Helper()
	var id string
	checkFor(t, 10*time.Second, func() error {
		for _, l := range strings.Split(w.Output.String(), "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == "request" && f[2] == path {
				id = f[1]
				return nil
			}
		}
		return fmt.Errorf("the worker has not seen %s: %q", path, w.Output.String())
	})
	return id
}

// An HTTP/2 client that resets its stream (RST_STREAM CANCEL, sent by the
// Go transport when a request's context is cancelled) on a connection that
// stays open: mid-request and mid-stream, the worker gets a cancel notice
// for that request, the access log shows 499 for both, and the same
// connection serves the next requests.
func TestHTTP2StreamResetSendsCancel(t *testing.T) {
	notice := startPyScript(t, "test/workers/notice_worker.py")
	h := startH2Apache(t, fmt.Sprintf(`	<Location /n>
		SetHandler zmq
		ZmqBackend %s
		ZmqNotices on
		ZmqTimeout 30
	</Location>
`, notice.Endpoint))
	c := newH2CClient(t)
	get := func(path string) (*http.Response, string) {
		t.Helper()
		resp, err := c.Get(h.URL + path)
		if err != nil {
			t.Fatalf("GET %s over HTTP/2: %v", path, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("GET %s over HTTP/2: reading the body: %v", path, err)
		}
		return resp, string(b)
	}
	if resp, body := get("/n/plain"); resp.ProtoMajor != 2 || resp.StatusCode != 200 || body != "plain" {
		t.Fatalf("before the resets: %s %d %q, want HTTP/2 200 \"plain\"", resp.Proto, resp.StatusCode, body)
	}

	for _, path := range []string{"/n/hold", "/n/trickle"} {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", h.URL+path, nil)
		type result struct {
			resp *http.Response
			err  error
		}
		res := make(chan result, 1)
		go func() {
			resp, err := c.Do(req)
			res <- result{resp, err}
		}()
		id := seenRequestID(t, notice, path)
		if path == "/n/trickle" {
			r := <-res
			if r.err != nil {
				t.Fatalf("%s over HTTP/2: %v", path, r.err)
			}
			if line, err := bufio.NewReader(r.resp.Body).ReadString('\n'); err != nil || line != "tick\n" {
				t.Fatalf("the first part of %s over HTTP/2: %q, %v", path, line, err)
			}
			cancel()
			r.resp.Body.Close()
		} else {
			cancel()
			if r := <-res; !errors.Is(r.err, context.Canceled) {
				t.Errorf("%s: the cancelled request returned %v, want context.Canceled", path, r.err)
			}
		}
		checkFor(t, 10*time.Second, func() error {
			if !strings.Contains(notice.Output.String(), "cancel "+id+"\n") {
				return fmt.Errorf("no cancel notice for %s (%s) after its HTTP/2 stream was reset: %q", path, id, notice.Output.String())
			}
			return nil
		})
		// The connection outlives the reset stream.
		if resp, body := get("/n/plain"); resp.StatusCode != 200 || body != "plain" {
			t.Errorf("after resetting %s: %d %q, want 200 \"plain\"", path, resp.StatusCode, body)
		}
	}
	if n := c.dials.Load(); n != 1 {
		t.Errorf("the client opened %d connections, want 1: a stream reset must not end the connection", n)
	}
	checkFor(t, 10*time.Second, func() error {
		b, _ := os.ReadFile(filepath.Join(h.Dir, "access_log"))
		for _, path := range []string{"/n/hold", "/n/trickle"} {
			if !strings.Contains(string(b), "\"GET "+path+" HTTP/2.0\" 499 ") {
				return fmt.Errorf("access_log does not show %s as 499:\n%s", path, b)
			}
		}
		if n := strings.Count(string(b), `" 499 `); n != 2 {
			return fmt.Errorf("access_log shows %d requests as 499, want 2:\n%s", n, b)
		}
		return nil
	})
}

// A worker killed mid-stream ends the HTTP/2 stream with a reset: the
// client sees a stream error after the first part, not a clean end, the
// error log says why (MODZMQ0025, the worker lost), and the connection
// serves the next request once a worker is back.
func TestHTTP2StreamResetWhenTheWorkerDies(t *testing.T) {
	port := freePort(t)
	ep := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	script := filepath.Join(root, "test/workers/notice_worker.py")
	w := startListening(t, port, ep, python, script, ep)
	h := startH2Apache(t, fmt.Sprintf(`	<Location /n>
		SetHandler zmq
		ZmqBackend %s
	</Location>
`, ep))
	h.expect(`MODZMQ0025: the stream ended abnormally after its head: MODZMQ0110: `)
	h.expect(`MODZMQ0121: ` + ep + `: `)
	c := newH2CClient(t)
	resp, err := c.Get(h.URL + "/n/trickle")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	if line, err := rd.ReadString('\n'); err != nil || line != "tick\n" || resp.ProtoMajor != 2 {
		t.Fatalf("the first part over %s: %q, %v", resp.Proto, line, err)
	}
	w.signal(t, syscall.SIGKILL)
	_, err = io.Copy(io.Discard, rd)
	var se http2.StreamError
	if !errors.As(err, &se) {
		t.Fatalf("reading the rest of a stream whose worker died: %v, want an HTTP/2 stream error (a reset)", err)
	}
	t.Logf("the stream ended with %v", err)
	checkFor(t, 10*time.Second, func() error {
		if log := h.errorLog(); !strings.Contains(log, "MODZMQ0025: ") {
			return fmt.Errorf("the error log does not say the stream broke:\n%s", log)
		}
		return nil
	})

	startListening(t, port, ep, python, script, ep)
	resp2, err := c.Get(h.URL + "/n/plain")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	if resp2.StatusCode != 200 || string(b) != "plain" {
		t.Errorf("after the reset, with a worker back: %d %q, want 200 \"plain\"", resp2.StatusCode, b)
	}
	if n := c.dials.Load(); n != 1 {
		t.Errorf("the client opened %d connections, want 1: a reset stream must not end the connection", n)
	}
}
