package gateway

import (
	"net/http/httptest"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// scrape fetches admin's /metrics, which must answer 200 and parse, and
// returns each family's values (counters, gauges, histograms' counts) by
// label set (name=value, sorted, comma-separated), failing on a label set
// that comes twice in a family.
func scrape(t *testing.T, admin string) map[string]map[string]float64 {
	t.Helper()
	resp, body := get(t, "GET", admin+"/metrics", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics answered %d:\n%s", resp.StatusCode, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	out := map[string]map[string]float64{}
	for name, f := range families {
		out[name] = map[string]float64{}
		for _, m := range f.GetMetric() {
			var l []string
			for _, p := range m.GetLabel() {
				l = append(l, p.GetName()+"="+p.GetValue())
			}
			sort.Strings(l)
			k := strings.Join(l, ",")
			if _, dup := out[name][k]; dup {
				t.Errorf("%s{%s} comes twice", name, k)
			}
			out[name][k] = m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	return out
}

// Routes that share a path, told apart by host, by methods or by being a
// path and a prefix, each have their own series: the scrape answers 200,
// parses, and counts each route's requests on its own.
func TestMetricsTellApartRoutesSharingAPath(t *testing.T) {
	var calls atomic.Int32
	ep := zmqtest.REP(t, metaEcho(&calls))
	cfg := &Config{Routes: []Route{
		{Prefix: "/api/", Host: "a.example.com", Backend: []string{ep}},
		{Prefix: "/api/", Host: "b.example.com", Backend: []string{ep}},
		{Prefix: "/m/", Methods: []string{"GET"}, Backend: []string{ep}},
		{Prefix: "/m/", Methods: []string{"put", "POST"}, Backend: []string{ep}},
		{Path: "/p", Backend: []string{ep}},
		{Prefix: "/p", Backend: []string{ep}},
	}}
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	g, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	srv := httptest.NewServer(g)
	defer srv.Close()
	send := func(n int, method, path, host string) {
		for i := 0; i < n; i++ {
			if resp, body := get(t, method, srv.URL+path, host, strings.NewReader("x")); resp.StatusCode != 200 {
				t.Fatalf("%s %s (host %q): %d %q", method, path, host, resp.StatusCode, body)
			}
		}
	}
	send(1, "GET", "/api/x", "a.example.com")
	send(2, "GET", "/api/x", "b.example.com")
	send(3, "GET", "/m/x", "")
	send(4, "POST", "/m/x", "")
	send(5, "GET", "/p", "")
	send(6, "GET", "/p/x", "")

	// Both modes serve Live's admin handler; Gateway's is the same pages.
	for name, h := range map[string]*httptest.Server{
		"gateway": httptest.NewServer(g.AdminHandler()), "live": httptest.NewServer(NewLive(g).AdminHandler())} {
		defer h.Close()
		families := scrape(t, h.URL)
		want := map[string]float64{
			"code=200,host=a.example.com,methods=,route=/api/": 1,
			"code=200,host=b.example.com,methods=,route=/api/": 2,
			"code=200,host=,methods=GET,route=/m/":             3,
			"code=200,host=,methods=POST,PUT,route=/m/":        4,
			"code=200,host=,methods=,route=/p":                 5,
			"code=200,host=,methods=,route=/p (route 6)":       6,
		}
		got := families["modzmq_responses_total"]
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: modzmq_responses_total{%s} = %v, want %v (all: %v)", name, k, got[k], v, got)
			}
		}
		if len(got) != len(want) {
			t.Errorf("%s: modzmq_responses_total has %d series, want %d: %v", name, len(got), len(want), got)
		}
		for _, f := range []string{"modzmq_request_duration_seconds", "modzmq_retries_total", "modzmq_streams_open",
			"modzmq_endpoint_up", "modzmq_stream_ends_total"} {
			if n := len(families[f]); n < len(cfg.Routes) {
				t.Errorf("%s: %s has %d series, want at least one per route (%d)", name, f, n, len(cfg.Routes))
			}
		}
		_, text := get(t, "GET", h.URL+"/status", "", nil)
		for _, line := range []string{"route /api/ host a.example.com: 1 requests", "route /m/ methods POST,PUT: 4 requests",
			"route /p (route 6): 6 requests"} {
			if !strings.Contains(text, line) {
				t.Errorf("%s: /status lacks %q:\n%s", name, line, text)
			}
		}
	}
}
