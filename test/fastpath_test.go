package test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// goEntries reads zmq-status's count of calls from Apache threads into Go
// once it shows want requests answered in all (the counters are published
// twice a second).
func goEntries(t *testing.T, h *httpd, want int64) int64 {
	t.Helper()
	entries, _ := goCalls(t, h, want)
	return entries
}

// goCalls waits until zmq-status has counted want requests and returns its
// go_entries and go_waits.
func goCalls(t *testing.T, h *httpd, want int64) (entries, waits int64) {
	t.Helper()
	var doc struct {
		GoEntries *int64 `json:"go_entries"`
		GoWaits   *int64 `json:"go_waits"`
		Routes    []struct {
			Requests int64 `json:"requests"`
		} `json:"routes"`
	}
	checkFor(t, 10*time.Second, func() error {
		_, b := do(t, "GET", h.URL+"/zmq-status?json", "", nil)
		if err := json.Unmarshal(b, &doc); err != nil {
			return err
		}
		var n int64
		for _, r := range doc.Routes {
			n += r.Requests
		}
		if n != want || doc.GoEntries == nil || doc.GoWaits == nil {
			return fmt.Errorf("zmq-status shows %d requests (want %d), go_entries %v, go_waits %v", n, want, doc.GoEntries, doc.GoWaits)
		}
		return nil
	})
	return *doc.GoEntries, *doc.GoWaits
}

// The design's central invariant: once warm, a plain request through Apache
// never enters the Go runtime (the C fast path sends it, waits for its reply
// and checks it). A request the fast path hands over (here one slower than
// its first wait) does, and is counted, so the count is known to work.
func TestWarmPlainRequestsDoNotEnterGo(t *testing.T) {
	w := startPyWorker(t, "fast")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /f>
		SetHandler zmq
		ZmqBackend %s
	</Location>
	<Location /zmq-status>
		SetHandler zmq-status
	</Location>
`, w.Endpoint)})
	get := func(path string) {
		t.Helper()
		if resp, _ := do(t, "GET", h.URL+path, "", nil); resp.StatusCode != 200 {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
	}
	// Warm-up: every child makes its client and its first connection in Go.
	const warm, plain = 60, 200
	for i := 0; i < warm; i++ {
		get(fmt.Sprintf("/f/warm?i=%d", i))
	}
	before := goEntries(t, h, warm)
	if before == 0 {
		t.Fatalf("go_entries is 0 after the warm-up, which must enter Go to make its clients: the count is broken")
	}
	for i := 0; i < plain; i++ {
		get(fmt.Sprintf("/f/plain?i=%d", i))
	}
	if after := goEntries(t, h, warm+plain); after != before {
		t.Errorf("%d warm, plain requests made %d calls into Go; the fast path should have made none", plain, after-before)
	}
	// A reply slower than the fast path's first wait (100 ms): Go adopts
	// the request and waits for it, and the count shows it.
	before = goEntries(t, h, warm+plain)
	get("/f/sleep?ms=300")
	if after := goEntries(t, h, warm+plain+1); after <= before {
		t.Errorf("a request Go adopted left go_entries at %d", after)
	}
	_, m := do(t, "GET", h.URL+"/zmq-status?metrics", "", nil)
	if !strings.Contains(string(m), "modzmq_go_entries_total{route=") {
		t.Errorf("?metrics has no modzmq_go_entries_total:\n%s", m)
	}
}

// Sections that nest, each setting some of a backend's options, merge into
// a client no single section has: the child adds it on first use, and the
// merged options apply (here the inner section's ZmqMaxReply).
func TestNestedSectionsMakeTheirClient(t *testing.T) {
	w := startPyWorker(t, "nested")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /n>
		SetHandler zmq
		ZmqBackend %s
	</Location>
	<Location /n/small>
		ZmqMaxReply 1000
	</Location>
`, w.Endpoint)})
	h.expect(`MODZMQ0103: .*over the limit of 1000 .*answered 502`)
	for i := 0; i < 3; i++ {
		if resp, body := do(t, "GET", h.URL+"/n/blob?n=5000", "", nil); resp.StatusCode != 200 || len(body) != 5000 {
			t.Fatalf("/n/blob: %d with %d bytes, want 200 with 5000", resp.StatusCode, len(body))
		}
		if resp, _ := do(t, "GET", h.URL+"/n/small/blob?n=5000", "", nil); resp.StatusCode != 502 {
			t.Fatalf("/n/small/blob of 5000 bytes under ZmqMaxReply 1000: %d, want 502", resp.StatusCode)
		}
		if resp, body := do(t, "GET", h.URL+"/n/small/blob?n=500", "", nil); resp.StatusCode != 200 || len(body) != 500 {
			t.Fatalf("/n/small/blob: %d with %d bytes, want 200 with 500", resp.StatusCode, len(body))
		}
	}
	if log := h.errorLog(); strings.Contains(log, "MODZMQ0008") {
		t.Errorf("the child could not add the nested sections' client:\n%s", log)
	}
}

// The design's second invariant: an Apache thread waits in C, never parked
// inside Go, whatever the request, except on ZmqCurve locations, where Go
// speaks the connection. Slow replies, which Go adopts and steps, and a lost
// worker, which Go retries, enter Go (go_entries) but never wait there
// (go_waits); a CURVE location does, and the count shows it.
func TestRequestsWaitInCNotInGo(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755) // children run as the Apache User
	worker, bridgeKey := keygen(t, dir, "worker"), keygen(t, dir, "bridge")
	plain := startPyWorker(t, "plain")
	secure := startPyWorker(t, "secure", "--curve-secret", worker+".key_secret")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /p>
		SetHandler zmq
		ZmqBackend %s
	</Location>
	<Location /gone>
		SetHandler zmq
		ZmqBackend tcp://127.0.0.1:%d
		ZmqTimeout 1
	</Location>
	<Location /c>
		SetHandler zmq
		ZmqBackend %s
		ZmqCurve %s %s
	</Location>
	<Location /zmq-status>
		SetHandler zmq-status
	</Location>
`, plain.Endpoint, freePort(t), secure.Endpoint, worker+".key", bridgeKey+".key_secret")})
	h.expect(`MODZMQ01\d\d: .*answered 50[34]`)
	h.expect(`MODZMQ0121: .*cannot connect`)
	requests := int64(0)
	get := func(path string, want int) {
		t.Helper()
		requests++
		if resp, _ := do(t, "GET", h.URL+path, "", nil); resp.StatusCode != want {
			t.Fatalf("%s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	for i := 0; i < 5; i++ {
		get(fmt.Sprintf("/p/sleep?ms=%d", 150+100*i), 200) // adopted by Go, stepped in slices
		get("/p/plain", 200)
		get("/gone/x", 503)
	}
	entries, waits := goCalls(t, h, requests)
	if entries == 0 {
		t.Fatalf("go_entries is 0 after slow replies Go adopted: the count is broken")
	}
	if waits != 0 {
		t.Errorf("go_waits is %d after %d requests without ZmqCurve (%d calls into Go); an Apache thread waited inside Go", waits, requests, entries)
	}
	get("/c/sleep?ms=150", 200)
	if _, waits = goCalls(t, h, requests); waits == 0 {
		t.Errorf("go_waits is 0 after a ZmqCurve request, where Go waits: the count is broken")
	}
}
