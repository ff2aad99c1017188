package test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// A client that sends `Expect: 100-continue` with a streamed body is told
// to send it once the worker grants credit, over HTTP/1.1 and HTTP/2. The
// body loop reads without waiting, and such a read never sends the 100
// itself: the loop sends it. The client here waits longer for the 100 than
// the location's ZmqTimeout, so without it the answer is the 504 of a
// worker that never got a part.
func TestStreamedBodyExpectContinueThroughApache(t *testing.T) {
	sink := startPyScript(t, "examples/python/upload_sink.py")
	tlsPort := freePort(t)
	locations := fmt.Sprintf(`	<Location /up>
		SetHandler zmq
		ZmqBackend %s
		ZmqStreamBody on
		ZmqTimeout 5
	</Location>
`, sink.Endpoint)
	startTLSHTTPD(t, httpdParams{MPM: "event", Extra: locations}, tlsPort, "", locations)
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "HTTP1.1", true: "HTTP2"}[h2], func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: h2,
				ExpectContinueTimeout: time.Minute}
			if !h2 {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			}
			defer tr.CloseIdleConnections()
			req, _ := http.NewRequest("POST", fmt.Sprintf("https://127.0.0.1:%d/up/expect", tlsPort),
				strings.NewReader("hello"))
			req.Header.Set("Expect", "100-continue")
			resp, err := (&http.Client{Transport: tr, Timeout: 2 * time.Minute}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(b), `"bytes": 5`) {
				t.Errorf("POST with Expect: 100-continue: %d %s; want 200 with the 5 bytes", resp.StatusCode, b)
			}
		})
	}
}

// A graceful restart while a streamed body waits for its client: the old
// child's body loop keeps waiting without spinning (the stop descriptor
// stays readable once the stop is signalled, and the loop stops watching
// it), and the body, once the client sends the rest, reaches the worker.
func TestStreamedBodyGracefulRestartThroughApache(t *testing.T) {
	sink := startPyScript(t, "examples/python/upload_sink.py")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /up>
		SetHandler zmq
		ZmqBackend %s
		ZmqStreamBody on
	</Location>
`, sink.Endpoint)})
	pr, pw := io.Pipe()
	done := make(chan string, 1)
	go func() {
		resp, err := client.Post(h.URL+"/up/restart", "application/octet-stream", pr)
		if err != nil {
			done <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- fmt.Sprintf("%d %s", resp.StatusCode, b)
	}()
	pw.Write([]byte("first part "))
	kids := children(h.pid())
	if out, err := h.ctl("graceful"); err != nil {
		t.Fatalf("graceful: %v %s", err, out)
	}
	time.Sleep(200 * time.Millisecond) // the stop reaches the old children
	before := map[int]int64{}
	for _, k := range kids {
		before[k] = cpuTicks([]int{k})
	}
	time.Sleep(1500 * time.Millisecond)
	var used int64
	for _, k := range kids {
		if after := cpuTicks([]int{k}); after >= before[k] { // a child that exited reads 0
			used += after - before[k]
		}
	}
	pw.Write([]byte("and the rest"))
	pw.Close()
	if got := zmqtest.WaitFor(t, done, "the upload's answer"); !strings.HasPrefix(got, "200 ") ||
		!strings.Contains(got, `"bytes": 23`) {
		t.Errorf("upload across a graceful restart: %s; want 200 with 23 bytes", got)
	}
	t.Logf("the old children used %d ticks of CPU in 1.5 s of the graceful stop", used)
	if used > 50 {
		t.Errorf("the old children used %d ticks (1/100 s) of CPU in 1.5 s while the body waited: the loop spins", used)
	}
}
