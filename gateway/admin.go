package gateway

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/modzmq/modzmq/internal/status"
)

// Status returns a snapshot of every route.
func (g *Gateway) Status() []status.Route {
	out := make([]status.Route, 0, len(g.routes))
	for _, h := range g.routes {
		out = append(out, status.FromClient(h.Route.Pattern(), h.Client))
	}
	return out
}

// AdminHandler serves /metrics (Prometheus), /status (text, or JSON with
// ?json) and /healthz for the admin listener.
func (g *Gateway) AdminHandler() http.Handler { return adminHandler(g.Status) }

// adminHandler serves the admin pages of the routes snapshot returns.
func adminHandler(snapshot func() []status.Route) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(status.Collector{Snapshot: snapshot}, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := r.URL.Query()["json"]; ok {
			w.Header().Set("Content-Type", "application/json")
			status.JSON(w, snapshot())
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		status.Text(w, "zmq-gateway status", snapshot())
	})
	return mux
}
