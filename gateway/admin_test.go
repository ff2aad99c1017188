package gateway

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

func TestAdminCountsAKnownSequence(t *testing.T) {
	var calls atomic.Int32
	ok := zmqtest.REP(t, metaEcho(&calls))
	bad := zmqtest.REP(t, func(r [][]byte) [][]byte { return [][]byte{[]byte("abc"), nil} })
	cfg := &Config{Routes: []Route{
		{Prefix: "/ok/", Backend: []string{ok}},
		{Prefix: "/bad/", Backend: []string{bad}},
		{Prefix: "/dead/", Backend: []string{"tcp://127.0.0.1:1"}, Timeout: Duration(time.Second)},
	}}
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	g2, _ := New(cfg, nil)
	defer g2.Close()
	admin := httptest.NewServer(g2.AdminHandler())
	defer admin.Close()
	srv := httptest.NewServer(g2)
	defer srv.Close()
	for i := 0; i < 3; i++ {
		get(t, "GET", srv.URL+"/ok/x", "", nil)
	}
	get(t, "GET", srv.URL+"/bad/x", "", nil)
	get(t, "GET", srv.URL+"/dead/x", "", nil)

	_, metrics := get(t, "GET", admin.URL+"/metrics", "", nil)
	for _, want := range []string{
		`modzmq_responses_total{code="200",route="/ok/"} 3`,
		`modzmq_responses_total{code="502",route="/bad/"} 1`,
		`modzmq_responses_total{code="503",route="/dead/"} 1`,
		`modzmq_request_duration_seconds_count{route="/ok/"} 3`,
		`modzmq_endpoint_events_total{endpoint="` + ok + `",event="request",route="/ok/"} 3`,
		`modzmq_endpoint_events_total{endpoint="` + bad + `",event="bad_reply",route="/bad/"} 1`,
		`modzmq_endpoint_up{endpoint="` + ok + `",route="/ok/"} 1`,
		`modzmq_endpoint_up{endpoint="tcp://127.0.0.1:1",route="/dead/"} 0`,
		`go_goroutines`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	resp, body := get(t, "GET", admin.URL+"/status?json", "", nil)
	var doc struct {
		Routes []struct {
			Route    string           `json:"route"`
			Requests int64            `json:"requests"`
			Statuses map[string]int64 `json:"statuses"`
		} `json:"routes"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status?json: %v %q", err, body)
	}
	if r := doc.Routes[0]; r.Route != "/ok/" || r.Requests != 3 || r.Statuses["200"] != 3 {
		t.Errorf("status?json route 0: %+v", r)
	}
	_, text := get(t, "GET", admin.URL+"/status", "", nil)
	if !strings.Contains(text, "route /ok/: 3 requests (200: 3)") {
		t.Errorf("status page:\n%s", text)
	}
}
