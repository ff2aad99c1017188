// Package status is what both fronts report about their routes: one
// snapshot type, rendered as text, JSON or Prometheus metrics, whether the
// numbers come from the gateway's bridge clients or from the shared memory
// Apache's children write.
package status

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/modzmq/modzmq/bridge"
)

// Route is one route (a <Location>, or a gateway route) and its endpoints.
type Route struct {
	Route string `json:"route"`
	VHost string `json:"vhost,omitempty"` // Apache: the virtual hosts (name:port) of its locations
	// Host and Methods are a zmq-gateway route's host template and methods
	// (sorted, comma-separated), empty when the route takes any: with
	// Route, they tell apart routes that share a path.
	Host       string           `json:"host,omitempty"`
	Methods    string           `json:"methods,omitempty"`
	InFlight   int64            `json:"in_flight"`
	Retries    int64            `json:"retries"`
	Overloads  int64            `json:"overloads"`
	Requests   int64            `json:"requests"`
	Statuses   map[string]int64 `json:"statuses"`
	P50        float64          `json:"latency_p50_seconds"`
	P90        float64          `json:"latency_p90_seconds"`
	P99        float64          `json:"latency_p99_seconds"`
	Buckets    []int64          `json:"-"` // bridge.LatencyBuckets counts, +Inf last
	SumSeconds float64          `json:"-"`
	Endpoints  []Endpoint       `json:"endpoints"`
	// GoEntries counts the calls Apache threads made into Go for the route
	// (the Apache module only: its fast path makes none for a warm, plain
	// request).
	GoEntries *int64 `json:"go_entries,omitempty"`
	// GoWaits counts those of them that could wait inside Go: steps of a
	// call on a connection Go reads itself (ZmqCurve) and relays that dial
	// one in Go.
	GoWaits *int64 `json:"go_waits,omitempty"`
	// Streams counts streamed replies and cancel notices, where the front
	// has them (zmq-gateway).
	Streams *Streams `json:"streams,omitempty"`
}

// Streams are a route's stream counters.
type Streams struct {
	Open      int64            `json:"open"`
	Parts     int64            `json:"parts"`
	Bytes     int64            `json:"bytes_to_client"`
	Buffered  int64            `json:"buffered_bytes"` // gauge: bridge.StreamStats.Buffered
	BodyParts int64            `json:"body_parts"`     // of streamed request bodies
	BodyBytes int64            `json:"bytes_from_client"`
	Cancels   int64            `json:"cancels"`
	Ends      map[string]int64 `json:"ends"` // by cause: end, client_gone, aborted, idle, broken
}

// Endpoint is one endpoint of a route.
type Endpoint struct {
	Endpoint        string `json:"endpoint"`
	State           string `json:"state"` // up, down, unknown; Apache: "up in N of M children" counts below
	UpIn            int64  `json:"up_in_processes"`
	InFlight        int64  `json:"in_flight"`
	Requests        int64  `json:"requests"`
	Replies         int64  `json:"replies"`
	Timeouts        int64  `json:"timeouts"`
	NoWorker        int64  `json:"no_worker"`
	Lost            int64  `json:"lost"`
	BadReplies      int64  `json:"bad_replies"`
	Connected       int64  `json:"connected"`
	Disconnected    int64  `json:"disconnected"`
	ConnectRetried  int64  `json:"connect_retried"`
	HandshakeFailed int64  `json:"handshake_failed"`
}

// Finish fills Requests, Statuses-derived totals and percentiles from the
// counters already set.
func (r *Route) Finish() {
	r.Requests = 0
	for _, n := range r.Statuses {
		r.Requests += n
	}
	q := func(x float64) float64 {
		v := bridge.Quantile(r.Buckets, x)
		if math.IsNaN(v) {
			return 0
		}
		return v
	}
	r.P50, r.P90, r.P99 = q(0.5), q(0.9), q(0.99)
}

// Key is what tells r apart from other routes: its labels.
func (r *Route) Key() string {
	return r.Route + "\x00" + r.VHost + "\x00" + r.Host + "\x00" + r.Methods
}

// Add adds o's numbers to r's: its counters, and its gauges of what is in
// flight, open or buffered. An endpoint's state (and up count) stays r's;
// o's endpoints that r lacks are added with their state when withNew, and
// left out otherwise. Requests and the percentiles are r's until Finish.
func (r *Route) Add(o *Route, withNew bool) {
	r.InFlight += o.InFlight
	r.Retries += o.Retries
	r.Overloads += o.Overloads
	addMap(&r.Statuses, o.Statuses)
	for len(r.Buckets) < len(o.Buckets) {
		r.Buckets = append(r.Buckets, 0)
	}
	for i, n := range o.Buckets {
		r.Buckets[i] += n
	}
	r.SumSeconds += o.SumSeconds
	addPtr := func(dst **int64, n *int64) {
		if n != nil {
			v := *n
			if *dst != nil {
				v += **dst
			}
			*dst = &v
		}
	}
	addPtr(&r.GoEntries, o.GoEntries)
	addPtr(&r.GoWaits, o.GoWaits)
	if s := o.Streams; s != nil {
		if r.Streams == nil {
			r.Streams = &Streams{}
		}
		t := r.Streams
		t.Open += s.Open
		t.Parts += s.Parts
		t.Bytes += s.Bytes
		t.Buffered += s.Buffered
		t.BodyParts += s.BodyParts
		t.BodyBytes += s.BodyBytes
		t.Cancels += s.Cancels
		addMap(&t.Ends, s.Ends)
	}
	at := make(map[string]int, len(r.Endpoints))
	for i, e := range r.Endpoints {
		at[e.Endpoint] = i
	}
	for _, e := range o.Endpoints {
		i, ok := at[e.Endpoint]
		if !ok {
			if withNew {
				r.Endpoints = append(r.Endpoints, e)
			}
			continue
		}
		d := &r.Endpoints[i]
		d.InFlight += e.InFlight
		d.Requests += e.Requests
		d.Replies += e.Replies
		d.Timeouts += e.Timeouts
		d.NoWorker += e.NoWorker
		d.Lost += e.Lost
		d.BadReplies += e.BadReplies
		d.Connected += e.Connected
		d.Disconnected += e.Disconnected
		d.ConnectRetried += e.ConnectRetried
		d.HandshakeFailed += e.HandshakeFailed
	}
}

// addMap adds src's counts to *dst's, making *dst when it is nil.
func addMap(dst *map[string]int64, src map[string]int64) {
	if *dst == nil {
		*dst = map[string]int64{}
	}
	for k, n := range src {
		(*dst)[k] += n
	}
}

// Counts returns r with its counters only: the gauges (in flight, open,
// buffered, endpoints up) are zero, and the endpoints' state "unknown".
func (r Route) Counts() Route {
	r.InFlight = 0
	if r.Streams != nil {
		s := *r.Streams
		s.Open, s.Buffered = 0, 0
		r.Streams = &s
	}
	r.Endpoints = append([]Endpoint(nil), r.Endpoints...)
	for i := range r.Endpoints {
		e := &r.Endpoints[i]
		e.InFlight, e.UpIn, e.State = 0, 0, "unknown"
	}
	return r
}

// FromClient builds a route snapshot from a bridge client.
func FromClient(route string, c *bridge.Client) Route {
	st := c.Stats()
	inFlight, overloads, retries := c.Counters()
	r := Route{Route: route, InFlight: inFlight, Retries: retries, Overloads: overloads, Statuses: map[string]int64{},
		Buckets: make([]int64, len(st.Buckets)), SumSeconds: float64(st.SumNs.Load()) / 1e9}
	for code := range st.Status {
		if n := st.Status[code].Load(); n > 0 {
			r.Statuses[strconv.Itoa(code)] = n
		}
	}
	for i := range st.Buckets {
		r.Buckets[i] = st.Buckets[i].Load()
	}
	for _, e := range c.Status() {
		s := e.Stats
		ep := Endpoint{Endpoint: e.Endpoint, State: e.State.String(), InFlight: s.InFlight.Load(), Requests: s.Requests.Load(),
			Replies: s.Replies.Load(), Timeouts: s.Timeouts.Load(), NoWorker: s.NoWorker.Load(), Lost: s.Lost.Load(),
			BadReplies: s.BadReplies.Load(), Connected: s.Connected.Load(), Disconnected: s.Disconnected.Load(),
			ConnectRetried: s.ConnectRetried.Load(), HandshakeFailed: s.HandshakeFailed.Load()}
		if e.State == bridge.StateUp {
			ep.UpIn = 1
		}
		r.Endpoints = append(r.Endpoints, ep)
	}
	ss := c.StreamStats()
	r.Streams = &Streams{Open: ss.Open.Load(), Parts: ss.Parts.Load(), Bytes: ss.Bytes.Load(), Buffered: ss.Buffered.Load(),
		BodyParts: ss.BodyParts.Load(), BodyBytes: ss.BodyBytes.Load(), Cancels: ss.Cancels.Load(), Ends: map[string]int64{}}
	for cause := range ss.Ends {
		r.Streams.Ends[bridge.StreamEnd(cause).String()] = ss.Ends[cause].Load()
	}
	r.Finish()
	return r
}

// Text renders routes as a plain-text page.
func Text(w io.Writer, title string, routes []Route) {
	fmt.Fprintf(w, "%s\n", title)
	for _, r := range routes {
		codes := make([]string, 0, len(r.Statuses))
		for c := range r.Statuses {
			codes = append(codes, c)
		}
		sort.Strings(codes)
		var parts []string
		for _, c := range codes {
			parts = append(parts, fmt.Sprintf("%s: %d", c, r.Statuses[c]))
		}
		vhost := ""
		if r.VHost != "" {
			vhost = " in " + r.VHost
		}
		if r.Host != "" {
			vhost += " host " + r.Host
		}
		if r.Methods != "" {
			vhost += " methods " + r.Methods
		}
		fmt.Fprintf(w, "\nroute %s%s: %d requests (%s), %d in flight, %d retries, %d refused over the in-flight limit\n",
			r.Route, vhost, r.Requests, strings.Join(parts, ", "), r.InFlight, r.Retries, r.Overloads)
		fmt.Fprintf(w, "  latency p50 %.4fs  p90 %.4fs  p99 %.4fs\n", r.P50, r.P90, r.P99)
		if r.GoEntries != nil {
			fmt.Fprintf(w, "  calls from Apache threads into Go: %d\n", *r.GoEntries)
		}
		if s := r.Streams; s != nil {
			fmt.Fprintf(w, "  streams: %d open, %d bytes buffered, %d parts and %d bytes to clients, %d parts and %d bytes from clients, "+
				"%d cancel notices; ended: %d normally, %d client gone, %d aborted, %d idle, %d broken\n", s.Open, s.Buffered,
				s.Parts, s.Bytes, s.BodyParts, s.BodyBytes, s.Cancels, s.Ends["end"], s.Ends["client_gone"], s.Ends["aborted"],
				s.Ends["idle"], s.Ends["broken"])
		}
		if r.GoWaits != nil {
			fmt.Fprintf(w, "  of them, calls that could wait inside Go: %d\n", *r.GoWaits)
		}
		for _, e := range r.Endpoints {
			fmt.Fprintf(w, "  %s  %s  in flight %d, requests %d, replies %d, timeouts %d, no worker %d, lost %d, bad replies %d; "+
				"connects %d, disconnects %d, connect retries %d, handshake failures %d\n", e.Endpoint, e.State, e.InFlight,
				e.Requests, e.Replies, e.Timeouts, e.NoWorker, e.Lost, e.BadReplies, e.Connected, e.Disconnected,
				e.ConnectRetried, e.HandshakeFailed)
		}
	}
}

// JSON renders routes as {"routes": [...]}, with "go_entries" and
// "go_waits", the sums of the routes' GoEntries and GoWaits, when they have
// them.
func JSON(w io.Writer, routes []Route) error {
	doc := map[string]any{"routes": routes}
	var entries, waits int64
	for _, r := range routes {
		if r.GoEntries != nil {
			entries += *r.GoEntries
			doc["go_entries"] = entries
		}
		if r.GoWaits != nil {
			waits += *r.GoWaits
			doc["go_waits"] = waits
		}
	}
	return json.NewEncoder(w).Encode(doc)
}

// Collector exposes snapshots to Prometheus at scrape time. With VHost,
// every series also has a vhost label (Route.VHost: the Apache module's
// virtual hosts). With Match (zmq-gateway), every series also has a host
// label when a route of the snapshot has a Route.Host, and a methods label
// when one has Route.Methods; a route that takes any host or method has
// them empty, which Prometheus stores as no label at all, so a
// configuration that uses neither gives the series it gave before the
// labels existed. A Match collector describes nothing (its label names
// follow the routes: Prometheus calls it unchecked). The snapshot's routes
// must differ in their labels.
type Collector struct {
	Snapshot func() []Route
	VHost    bool
	Match    bool
}

// descs are the metrics' descriptions, with or without the vhost label.
type descs struct {
	responses, duration, inFlight, up, retries, overloads, events, goEntries, goWaits, streams, buffered, parts, bytes, cancels, ends *prometheus.Desc
}

// descsBy are the descriptions by extra labels: 1 vhost, 2 host, 4
// methods.
var descsBy = func() (d [8]*descs) {
	for i := range d {
		var extra []string
		for bit, name := range []string{"vhost", "host", "methods"} {
			if i&(1<<bit) != 0 {
				extra = append(extra, name)
			}
		}
		d[i] = newDescs(extra...)
	}
	return d
}()

// newDescs makes the descriptions, each series labelled by its own labels,
// then extra.
func newDescs(extra ...string) *descs {
	labels := func(names ...string) []string { return append(names, extra...) }
	return &descs{
		responses: prometheus.NewDesc("modzmq_responses_total", "Requests answered, by HTTP status (a worker's, or the bridge's on failure).", labels("route", "code"), nil),
		duration:  prometheus.NewDesc("modzmq_request_duration_seconds", "Time to relay a request and get its answer.", labels("route"), nil),
		inFlight:  prometheus.NewDesc("modzmq_in_flight", "Requests in flight to the endpoint.", labels("route", "endpoint"), nil),
		up:        prometheus.NewDesc("modzmq_endpoint_up", "Processes whose watch connection to the endpoint is up.", labels("route", "endpoint"), nil),
		retries:   prometheus.NewDesc("modzmq_retries_total", "Attempts retried on another worker.", labels("route"), nil),
		overloads: prometheus.NewDesc("modzmq_overloads_total", "Requests refused over the in-flight limit.", labels("route"), nil),
		events:    prometheus.NewDesc("modzmq_endpoint_events_total", "Per endpoint: requests, their outcomes, and connection events.", labels("route", "endpoint", "event"), nil),
		goEntries: prometheus.NewDesc("modzmq_go_entries_total", "Calls from Apache threads into the Go runtime (none for a warm, plain request).", labels("route"), nil),
		goWaits:   prometheus.NewDesc("modzmq_go_waits_total", "Calls from Apache threads into the Go runtime that could wait there (ZmqCurve only).", labels("route"), nil),
		streams:   prometheus.NewDesc("modzmq_streams_open", "Streamed replies open now.", labels("route"), nil),
		buffered:  prometheus.NewDesc("modzmq_stream_buffered_bytes", "What workers of open streams sent that is not yet granted back to them (within the window per stream).", labels("route"), nil),
		parts:     prometheus.NewDesc("modzmq_stream_parts_total", "Stream parts with data relayed.", labels("route", "direction"), nil),
		bytes:     prometheus.NewDesc("modzmq_stream_bytes_total", "Bytes of stream parts relayed.", labels("route", "direction"), nil),
		cancels:   prometheus.NewDesc("modzmq_cancels_total", "Cancel notices sent to workers whose client went away.", labels("route"), nil),
		ends:      prometheus.NewDesc("modzmq_stream_ends_total", "Streams ended, by cause (end, client_gone, aborted, idle, broken).", labels("route", "cause"), nil),
	}
}

// descs are the descriptions with the labels vhost, host and methods
// where asked for.
func descsFor(vhost, host, methods bool) *descs {
	i := 0
	for bit, x := range []bool{vhost, host, methods} {
		if x {
			i |= 1 << bit
		}
	}
	return descsBy[i]
}

// Describe implements prometheus.Collector.
func (c Collector) Describe(ch chan<- *prometheus.Desc) {
	if c.Match {
		return
	}
	d := descsFor(c.VHost, false, false)
	for _, x := range []*prometheus.Desc{d.responses, d.duration, d.inFlight, d.up, d.retries, d.overloads, d.events, d.goEntries, d.goWaits, d.streams, d.buffered, d.parts, d.bytes, d.cancels, d.ends} {
		ch <- x
	}
}

// Collect implements prometheus.Collector.
func (c Collector) Collect(ch chan<- prometheus.Metric) {
	routes := c.Snapshot()
	host, methods := false, false
	for _, r := range routes {
		host = host || c.Match && r.Host != ""
		methods = methods || c.Match && r.Methods != ""
	}
	d := descsFor(c.VHost, host, methods)
	for _, r := range routes {
		// lv is the label values: those given, then the vhost, host and
		// methods when the descriptions have them.
		lv := func(values ...string) []string {
			if c.VHost {
				values = append(values, r.VHost)
			}
			if host {
				values = append(values, r.Host)
			}
			if methods {
				values = append(values, r.Methods)
			}
			return values
		}
		for code, n := range r.Statuses {
			ch <- prometheus.MustNewConstMetric(d.responses, prometheus.CounterValue, float64(n), lv(r.Route, code)...)
		}
		cum, buckets := uint64(0), map[float64]uint64{}
		for i, b := range bridge.LatencyBuckets {
			if i < len(r.Buckets) {
				cum += uint64(r.Buckets[i])
			}
			buckets[b] = cum
		}
		if len(r.Buckets) > len(bridge.LatencyBuckets) {
			cum += uint64(r.Buckets[len(bridge.LatencyBuckets)])
		}
		ch <- prometheus.MustNewConstHistogram(d.duration, cum, r.SumSeconds, buckets, lv(r.Route)...)
		ch <- prometheus.MustNewConstMetric(d.retries, prometheus.CounterValue, float64(r.Retries), lv(r.Route)...)
		ch <- prometheus.MustNewConstMetric(d.overloads, prometheus.CounterValue, float64(r.Overloads), lv(r.Route)...)
		if r.GoEntries != nil {
			ch <- prometheus.MustNewConstMetric(d.goEntries, prometheus.CounterValue, float64(*r.GoEntries), lv(r.Route)...)
		}
		if r.GoWaits != nil {
			ch <- prometheus.MustNewConstMetric(d.goWaits, prometheus.CounterValue, float64(*r.GoWaits), lv(r.Route)...)
		}
		if s := r.Streams; s != nil {
			ch <- prometheus.MustNewConstMetric(d.streams, prometheus.GaugeValue, float64(s.Open), lv(r.Route)...)
			ch <- prometheus.MustNewConstMetric(d.parts, prometheus.CounterValue, float64(s.Parts), lv(r.Route, "to_client")...)
			ch <- prometheus.MustNewConstMetric(d.bytes, prometheus.CounterValue, float64(s.Bytes), lv(r.Route, "to_client")...)
			ch <- prometheus.MustNewConstMetric(d.parts, prometheus.CounterValue, float64(s.BodyParts), lv(r.Route, "from_client")...)
			ch <- prometheus.MustNewConstMetric(d.bytes, prometheus.CounterValue, float64(s.BodyBytes), lv(r.Route, "from_client")...)
			ch <- prometheus.MustNewConstMetric(d.buffered, prometheus.GaugeValue, float64(s.Buffered), lv(r.Route)...)
			ch <- prometheus.MustNewConstMetric(d.cancels, prometheus.CounterValue, float64(s.Cancels), lv(r.Route)...)
			for cause, n := range s.Ends {
				ch <- prometheus.MustNewConstMetric(d.ends, prometheus.CounterValue, float64(n), lv(r.Route, cause)...)
			}
		}
		for _, e := range r.Endpoints {
			ch <- prometheus.MustNewConstMetric(d.up, prometheus.GaugeValue, float64(e.UpIn), lv(r.Route, e.Endpoint)...)
			ch <- prometheus.MustNewConstMetric(d.inFlight, prometheus.GaugeValue, float64(e.InFlight), lv(r.Route, e.Endpoint)...)
			for _, ev := range []struct {
				name string
				n    int64
			}{{"request", e.Requests}, {"reply", e.Replies}, {"timeout", e.Timeouts}, {"no_worker", e.NoWorker},
				{"lost", e.Lost}, {"bad_reply", e.BadReplies}, {"connected", e.Connected}, {"disconnected", e.Disconnected},
				{"connect_retried", e.ConnectRetried}, {"handshake_failed", e.HandshakeFailed}} {
				ch <- prometheus.MustNewConstMetric(d.events, prometheus.CounterValue, float64(ev.n), lv(r.Route, e.Endpoint, ev.name)...)
			}
		}
	}
}

// Metrics writes the Prometheus text format of the snapshot (and whatever
// else is registered on reg, if not nil).
func Metrics(w io.Writer, snapshot func() []Route, vhost bool, reg *prometheus.Registry) error {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if err := reg.Register(Collector{Snapshot: snapshot, VHost: vhost}); err != nil {
		return err
	}
	families, err := reg.Gather()
	if err != nil {
		return err
	}
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range families {
		if err := enc.Encode(f); err != nil {
			return err
		}
	}
	return nil
}
