package test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A child counts what it served up to its exit: with MaxConnectionsPerChild
// 1 every child serves one connection and exits at once, before the
// library's next twice-a-second publish, and every answer still reaches the
// metrics (the child's pool cleanup publishes once more).
func TestMetricsCountChildrenThatExit(t *testing.T) {
	w := startPyWorker(t, "exiting")
	h := startHTTPD(t, httpdParams{MPM: "prefork", Global: "MaxConnectionsPerChild 1", Extra: fmt.Sprintf(`	<Location /api>
		SetHandler zmq
		ZmqBackend %s
	</Location>
	<Location /metrics>
		SetHandler zmq-metrics
	</Location>
`, w.Endpoint)})
	oneShot := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	const n = 20
	for i := 0; i < n; i++ {
		resp, err := oneShot.Get(fmt.Sprintf("%s/api/%d", h.URL, i))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
	want := h.withVHost(fmt.Sprintf(`modzmq_responses_total{code="200",route="/api"} %d`, n))
	checkFor(t, 10*time.Second, func() error {
		resp, err := oneShot.Get(h.URL + "/metrics")
		if err != nil {
			return err
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(page), want) {
			return fmt.Errorf("the metrics lack %s:\n%s", want, page)
		}
		return nil
	})
}
