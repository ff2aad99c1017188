package gateway

import (
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/modzmq/modzmq/internal/status"
)

// Status returns a snapshot of every route, labelled as routeLabels says.
func (g *Gateway) Status() []status.Route {
	out := make([]status.Route, 0, len(g.routes))
	for i, l := range routeLabels(g.routes) {
		r := status.FromClient(l.Route, g.routes[i].Client)
		r.Host, r.Methods = l.Host, l.Methods
		out = append(out, r)
	}
	return out
}

// routeLabels are the routes' labels: route, the path pattern (as in meta
// "route"); host, the host template; methods, the methods sorted and
// comma-separated (empty when the route takes any host or method). A route
// whose three match an earlier route's (a path and a prefix of the same
// pattern, or a route repeated) has " (route N)" after its pattern, N its
// place in the list from 1.
func routeLabels(routes []*Handle) []status.Route {
	out := make([]status.Route, len(routes))
	seen := map[string]bool{}
	for i, h := range routes {
		methods := append([]string(nil), h.Route.Methods...)
		sort.Strings(methods)
		l := status.Route{Route: h.Route.Pattern(), Host: h.Route.Host, Methods: strings.Join(methods, ",")}
		if seen[l.Key()] {
			l.Route += fmt.Sprintf(" (route %d)", i+1)
		}
		seen[l.Key()] = true
		out[i] = l
	}
	return out
}

// AdminHandler serves /metrics (Prometheus), /status (text, or JSON with
// ?json) and /healthz for the admin listener.
func (g *Gateway) AdminHandler() http.Handler { return adminHandler(g.Status) }

// adminHandler serves the admin pages of the routes snapshot returns.
func adminHandler(snapshot func() []status.Route) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(status.Collector{Snapshot: snapshot, Match: true}, collectors.NewGoCollector(),
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
