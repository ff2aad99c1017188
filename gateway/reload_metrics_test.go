package gateway

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/modzmq/modzmq/internal/zmqtest"
)

// A reload puts no counter back, and what still runs on the replaced
// generation stays in the gauges until it ends, then in the counters:
// a plain request and a stream are open on the old generation across
// Replace.
func TestLiveStatusCountsAcrossReplace(t *testing.T) {
	var calls atomic.Int32
	echo := zmqtest.REP(t, metaEcho(&calls))
	held := make(chan workerMsg, 4)
	var mu sync.Mutex
	var pending []workerMsg
	var release atomic.Bool
	hold := zmqtest.ROUTERIdle(t, func(msg [][]byte, reply func([][]byte)) {
		m := splitWorkerMsg(msg)
		if strings.HasPrefix(m.method, "@") {
			return // credits
		}
		if m.target == "/hold/stream" {
			reply(zmqtest.Part(m.envelope, "@stream", "200", ""))
			reply(zmqtest.Part(m.envelope, "@data", "first"))
		}
		mu.Lock()
		pending = append(pending, m)
		mu.Unlock()
		held <- m
	}, func(reply func([][]byte)) {
		if !release.Load() {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, m := range pending {
			if m.target == "/hold/stream" {
				reply(zmqtest.Part(m.envelope, "@end", "last"))
			} else {
				reply(zmqtest.Part(m.envelope, "200", "", "slow"))
			}
		}
		pending = nil
	})
	newGateway := func() *Gateway {
		cfg := &Config{Routes: []Route{{Prefix: "/echo/", Backend: []string{echo}}, {Prefix: "/hold/", Backend: []string{hold}}}}
		if err := cfg.Check(); err != nil {
			t.Fatal(err)
		}
		g, err := New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	lv := NewLive(newGateway())
	defer lv.Close()
	srv := httptest.NewServer(lv)
	defer srv.Close()
	admin := httptest.NewServer(lv.AdminHandler())
	defer admin.Close()
	echoes := func(n int) {
		for i := 0; i < n; i++ {
			if resp, body := get(t, "GET", srv.URL+"/echo/x", "", nil); resp.StatusCode != 200 {
				t.Fatalf("/echo/x: %d %q", resp.StatusCode, body)
			}
		}
	}
	echoes(3)

	// One plain request and one stream, held by the worker.
	answers := make(chan string, 2)
	go func() {
		resp, body := get(t, "GET", srv.URL+"/hold/slow", "", nil)
		answers <- resp.Status + " " + body
	}()
	resp, err := http.Get(srv.URL + "/hold/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, len("first"))
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first" {
		t.Fatalf("the stream's first part: %q %v", first, err)
	}
	go func() {
		rest, err := io.ReadAll(resp.Body)
		answers <- resp.Status + " " + string(first) + string(rest) + " " + errString(err)
	}()
	zmqtest.WaitFor(t, held, "the first held request")
	zmqtest.WaitFor(t, held, "the second held request")

	before := scrape(t, admin.URL)
	const streamsOpen = "route=/hold/"
	if n := before["modzmq_streams_open"][streamsOpen]; n != 1 {
		t.Fatalf("before the reload, modzmq_streams_open{%s} = %v, want 1", streamsOpen, n)
	}
	inFlight := "endpoint=" + hold + ",route=/hold/"
	if n := before["modzmq_in_flight"][inFlight]; n < 1 {
		t.Fatalf("before the reload, modzmq_in_flight{%s} = %v, want at least the plain request", inFlight, n)
	}

	closed := make(chan struct{})
	lv.Replace(newGateway(), closed)
	after := scrape(t, admin.URL)
	for name, series := range before {
		counter := strings.HasSuffix(name, "_total") || name == "modzmq_request_duration_seconds"
		open := name == "modzmq_in_flight" || name == "modzmq_streams_open"
		if !strings.HasPrefix(name, "modzmq_") || !counter && !open {
			continue
		}
		for labels, v := range series {
			switch w, ok := after[name][labels]; {
			case !ok:
				t.Errorf("after the reload, %s{%s} is gone (it was %v)", name, labels, v)
			case counter && w < v:
				t.Errorf("after the reload, counter %s{%s} = %v: it went down from %v", name, labels, w, v)
			case open && w != v:
				t.Errorf("after the reload, %s{%s} = %v, want the %v still open on the old generation", name, labels, w, v)
			}
		}
	}
	select {
	case <-closed:
		t.Fatal("the old generation closed with a request and a stream open")
	default:
	}
	echoes(1) // on the new generation

	release.Store(true)
	for i := 0; i < 2; i++ {
		a := zmqtest.WaitFor(t, answers, "a held request's answer")
		if a != "200 OK slow" && a != "200 OK firstlast " {
			t.Errorf("a held request's answer: %q", a)
		}
	}
	zmqtest.WaitFor(t, closed, "the old generation's close")
	lv.mu.Lock()
	if len(lv.retired) != 0 || len(lv.ended) != 2 {
		t.Errorf("once the old generation closed, Live holds %d replaced generations and the counts of %d routes; want 0 and 2",
			len(lv.retired), len(lv.ended))
	}
	lv.mu.Unlock()
	end := scrape(t, admin.URL)
	for _, c := range []struct {
		name, labels string
		want         float64
	}{
		{"modzmq_responses_total", "code=200,route=/echo/", 4},
		{"modzmq_responses_total", "code=200,route=/hold/", 2},
		{"modzmq_request_duration_seconds", "route=/echo/", 4},
		{"modzmq_streams_open", "route=/hold/", 0},
		{"modzmq_stream_ends_total", "cause=end,route=/hold/", 1},
		{"modzmq_in_flight", inFlight, 0},
		{"modzmq_endpoint_events_total", "endpoint=" + echo + ",event=request,route=/echo/", 4},
	} {
		if got, ok := end[c.name][c.labels]; !ok || got != c.want {
			t.Errorf("once the old generation closed, %s{%s} = %v (present: %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
