package test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestStatusPage runs a known sequence of requests through Apache (two
// children) and reads the totals back from zmq-status in all three forms.
func TestStatusPage(t *testing.T) {
	w := startPyWorker(t, "status")
	slow := startPyWorker(t, "slowstatus")
	dead := freePort(t)
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /s1>
		SetHandler zmq
		ZmqBackend %s
	</Location>
	<Location /s2>
		SetHandler zmq
		ZmqBackend tcp://127.0.0.1:%d
	</Location>
	<Location /s3>
		SetHandler zmq
		ZmqBackend %s
		ZmqMaxInFlight 1
	</Location>
	<Location /zmq-status>
		SetHandler zmq-status
	</Location>
`, w.Endpoint, dead, slow.Endpoint)})
	h.expect(`MODZMQ0103: .*more than 3 frames`)
	h.expect(`MODZMQ0101: `)
	h.expect(`MODZMQ0121: `)
	h.expect(`MODZMQ0020: ZmqMaxInFlight 1 reached for /s3`)

	for i := 0; i < 5; i++ {
		do(t, "GET", h.URL+"/s1/ok", "", nil)
	}
	do(t, "GET", h.URL+"/s1/bad4", "", nil)
	do(t, "GET", h.URL+"/s2/x", "", nil)
	// ZmqMaxInFlight counts per child: 8 requests at once over 2-3
	// children get a few 200s and the rest 503 at once.
	var wg sync.WaitGroup
	codes := make(chan int, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, _ := do(t, "GET", h.URL+"/s3/sleep?ms=800", "", nil)
			codes <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(codes)
	got := map[int]int64{}
	for c := range codes {
		got[c]++
	}
	if got[503] == 0 || got[200]+got[503] != 8 {
		t.Errorf("8 concurrent requests over ZmqMaxInFlight 1: %v, want some 503s and the rest 200", got)
	}

	type route struct {
		Route     string           `json:"route"`
		Requests  int64            `json:"requests"`
		Overloads int64            `json:"overloads"`
		Statuses  map[string]int64 `json:"statuses"`
		Endpoints []struct {
			Endpoint   string `json:"endpoint"`
			Requests   int64  `json:"requests"`
			BadReplies int64  `json:"bad_replies"`
			NoWorker   int64  `json:"no_worker"`
		} `json:"endpoints"`
	}
	var routes map[string]route
	checkFor(t, 10*time.Second, func() error { // children publish twice a second
		resp, b := do(t, "GET", h.URL+"/zmq-status?json", "", nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
			return fmt.Errorf("status %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		var doc struct{ Routes []route }
		if err := json.Unmarshal(b, &doc); err != nil {
			return err
		}
		routes = map[string]route{}
		for _, r := range doc.Routes {
			routes[r.Route] = r
		}
		if routes["/s1"].Requests != 6 || routes["/s2"].Requests != 1 || routes["/s3"].Requests != got[200] {
			return fmt.Errorf("not all counted yet: %s", b)
		}
		return nil
	})
	s1, s2, s3 := routes["/s1"], routes["/s2"], routes["/s3"]
	if s1.Statuses["200"] != 5 || s1.Statuses["502"] != 1 || s1.Endpoints[0].Requests != 6 || s1.Endpoints[0].BadReplies != 1 {
		t.Errorf("/s1: %+v", s1)
	}
	if s2.Statuses["503"] != 1 || s2.Endpoints[0].NoWorker != 1 {
		t.Errorf("/s2: %+v", s2)
	}
	if s3.Statuses["200"] != got[200] || s3.Overloads != got[503] {
		t.Errorf("/s3: %+v; clients saw %v", s3, got)
	}
	_, metrics := do(t, "GET", h.URL+"/zmq-status?metrics", "", nil)
	for _, want := range []string{
		`modzmq_responses_total{code="200",route="/s1"} 5`,
		`modzmq_responses_total{code="502",route="/s1"} 1`,
		fmt.Sprintf(`modzmq_overloads_total{route="/s3"} %d`, got[503]),
		`modzmq_request_duration_seconds_count{route="/s1"} 6`,
		`modzmq_endpoint_events_total{endpoint="` + w.Endpoint + `",event="bad_reply",route="/s1"} 1`,
	} {
		if want = h.withVHost(want); !strings.Contains(string(metrics), want) {
			t.Errorf("?metrics lacks %s", want)
		}
	}
	_, text := do(t, "GET", h.URL+"/zmq-status", "", nil)
	if !strings.Contains(string(text), fmt.Sprintf("route /s1 in one.localhost:%d: 6 requests (200: 5, 502: 1)", h.Port)) ||
		!strings.Contains(string(text), "Apache children") {
		t.Errorf("text page:\n%s", text)
	}
}
