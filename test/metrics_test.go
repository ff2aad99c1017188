package test

import (
	"bytes"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// promtoolCheck runs `promtool check metrics` (Debian package prometheus)
// on a page: it must parse and pass the linter.
func promtoolCheck(t *testing.T, what string, page []byte) {
	t.Helper()
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = bytes.NewReader(page)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics on %s: %v\n%s", what, err, out)
	}
}

// SetHandler zmq-metrics serves the Prometheus text format at its own URL,
// whatever the query (a scraper's metrics_path needs no "?metrics"), and
// what it serves passes promtool; so does zmq-status?metrics, and the
// gateway's /metrics.
func TestMetricsHandlerPassesPromtool(t *testing.T) {
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Fatal("promtool is missing: run test/deps.sh (Debian package prometheus)")
	}
	w := startPyWorker(t, "metrics")
	// /api twice: the route label names it once, with its virtual host.
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /api>
		SetHandler zmq
		ZmqBackend %s
	</Location>
	<Location /api>
		ZmqBackend %s
	</Location>
	<Location /metrics>
		SetHandler zmq-metrics
	</Location>
	<Location /zmq-status>
		SetHandler zmq-status
	</Location>
`, w.Endpoint, w.Endpoint)})
	for i := 0; i < 3; i++ {
		do(t, "GET", h.URL+"/api/x", "", nil)
	}
	for _, url := range []string{h.URL + "/metrics", h.URL + "/metrics?job=x", h.URL + "/zmq-status?metrics"} {
		checkFor(t, 10*time.Second, func() error { // children publish twice a second
			resp, page := do(t, "GET", url, "", nil)
			if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
				return fmt.Errorf("%s: %d %s", url, resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			if !strings.Contains(string(page), h.withVHost(`modzmq_responses_total{code="200",route="/api"} 3`)) {
				return fmt.Errorf("%s lacks the 3 answers:\n%s", url, page)
			}
			promtoolCheck(t, url, page)
			return nil
		})
	}
	if resp, _ := do(t, "POST", h.URL+"/metrics", "", strings.NewReader("x")); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST to zmq-metrics: %d, want 405", resp.StatusCode)
	}

	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	g := startGatewayProc(t, "", fmt.Sprintf("  - prefix: /api\n    backend: [%s]\nadmin: %s\n", w.Endpoint, admin))
	do(t, "GET", g.URL+"/api/x", "", nil)
	resp, page := do(t, "GET", "http://"+admin+"/metrics", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("the gateway's /metrics: %d", resp.StatusCode)
	}
	promtoolCheck(t, "the gateway's /metrics", page)
}

// Endpoint state is known from the children's start, before any request,
// and again after a graceful restart: one child watches each backend from
// its start (the others connect on their first request). Under prefork,
// with several children, exactly one watches.
func TestEndpointStateFromChildStart(t *testing.T) {
	w := startPyWorker(t, "watched", "--log")
	dead := freePort(t)
	h := startHTTPD(t, httpdParams{MPM: "prefork", Extra: fmt.Sprintf(`	<Location /up>
		SetHandler zmq
		ZmqBackend %s
	</Location>
	<Location /down>
		SetHandler zmq
		ZmqBackend tcp://127.0.0.1:%d
	</Location>
	<Location /metrics>
		SetHandler zmq-metrics
	</Location>
`, w.Endpoint, dead)})
	h.expect(`MODZMQ0121: `) // the dead endpoint
	want := []string{
		h.withVHost(fmt.Sprintf(`modzmq_endpoint_up{endpoint="%s",route="/up"} 1`, w.Endpoint)),
		h.withVHost(fmt.Sprintf(`modzmq_endpoint_up{endpoint="tcp://127.0.0.1:%d",route="/down"} 0`, dead)),
	}
	check := func(when string) {
		t.Helper()
		checkFor(t, 15*time.Second, func() error {
			_, page := do(t, "GET", h.URL+"/metrics", "", nil)
			for _, w := range want {
				if !strings.Contains(string(page), w+"\n") {
					return fmt.Errorf("%s, with no request to /up yet, the metrics lack %s:\n%s", when, w, page)
				}
			}
			return nil
		})
	}
	check("at start")
	if out, err := h.ctl("graceful"); err != nil {
		t.Fatalf("graceful: %v %s", err, out)
	}
	check("after a graceful restart")
	if strings.Contains(w.Output.String(), "got ") {
		t.Errorf("the worker got a request: %s", w.Output)
	}
}

// A Location at server level, outside every virtual host, is labelled with
// the main server's name and the port it answers on: any (name:*), for it
// has none of its own; and with each virtual host, which takes in the
// server's sections.
func TestServerLevelLocationLabel(t *testing.T) {
	dead := freePort(t)
	h := startHTTPD(t, httpdParams{MPM: "event",
		Global: fmt.Sprintf("<Location /main>\n\tSetHandler zmq\n\tZmqBackend tcp://127.0.0.1:%d\n</Location>\n", dead),
		Extra:  "\t<Location /metrics>\n\t\tSetHandler zmq-metrics\n\t</Location>\n"})
	h.expect(`MODZMQ0121: `) // the dead endpoint
	want := fmt.Sprintf(`modzmq_endpoint_up{endpoint="tcp://127.0.0.1:%d",route="/main",vhost="one.localhost:* one.localhost:%d"} 0`, dead, h.Port)
	checkFor(t, 15*time.Second, func() error {
		_, page := do(t, "GET", h.URL+"/metrics", "", nil)
		if !strings.Contains(string(page), want+"\n") {
			return fmt.Errorf("the metrics lack %s:\n%s", want, page)
		}
		return nil
	})
}
