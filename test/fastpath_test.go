package test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// goEntries reads zmq-status's count of calls from Apache threads into Go
// once it shows want requests answered in all (the counters are published
// twice a second).
func goEntries(t *testing.T, h *httpd, want int64) int64 {
	t.Helper()
	var doc struct {
		GoEntries *int64 `json:"go_entries"`
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
		if n != want || doc.GoEntries == nil {
			return fmt.Errorf("zmq-status shows %d requests (want %d), go_entries %v", n, want, doc.GoEntries)
		}
		return nil
	})
	return *doc.GoEntries
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
