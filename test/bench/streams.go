package main

// The streaming benchmark (`-only streams`, or part of a run with no -only):
//
//   - held: N Server-Sent Event streams held open on each front (10,000 on
//     zmq-gateway, stream mode and Pushpin, 1,000 on Apache, where each open
//     stream holds a thread), each from the worker, which sends the head
//     and one event, then a keep-alive every 20 s. Reported: the front's
//     resident memory per open stream, (RSS with N open − RSS idle) / N.
//   - latency: 1,000 streams × 10 events/s; the worker stamps each event
//     with its send time (Unix ns; worker and client share this machine's
//     clock), the client notes when the event's line arrives.
//   - transfer: 1 GiB uploaded and downloaded through Apache, mod_zmq
//     (ZmqStreamBody on; the worker streams the download by credit) against
//     mod_proxy_http to a Go net/http backend, with the Apache children's
//     peak RSS growth.
//
// The ZeroMQ fronts' worker is `bench-peer -mode sse-zmtp` (MZMQ/1 on the
// worker package: ZMTP in Go); -streams-worker libzmq runs `-mode sse`, the
// same worker on a libzmq ROUTER socket through pebbe/zmq4: level on latency
// and held streams, slower on the 1 GiB transfers (docs/BENCHMARKS.md,
// "Streams").
//
// Pushpin (GRIP `Grip-Hold: stream` from a net/http origin) anchors the held
// and latency cases; its latency events are published to its HTTP publish
// endpoint, each stream on a channel of its own.

import (
	"bufio"
	"bytes"
	"cmp"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var (
	nStreams     = flag.Int("streams", 10000, "streams: held open on zmq-gateway, stream mode and Pushpin")
	nApacheHeld  = flag.Int("streams-apache", 1000, "streams: held open on Apache (each holds a thread; ThreadsPerChild follows)")
	latStreams   = flag.Int("latency-streams", 1000, "streams: streams in the latency case")
	latRate      = flag.Int("latency-rate", 10, "streams: events per second per stream in the latency case")
	latDur       = flag.Duration("latency-duration", 5*time.Second, "streams: how long the latency case measures")
	xferBytes    = flag.Int64("transfer-bytes", 1<<30, "streams: bytes of each upload and download through Apache")
	xferWindow   = flag.Int("transfer-window", 0, "streams: ZmqStreamWindow of the mod_zmq transfer location in bytes (0: the directive's default)")
	streamWorker = flag.String("streams-worker", "worker", "streams: the ZeroMQ fronts' worker: worker (bench-peer -mode sse-zmtp, the worker package: ZMTP in Go) or libzmq (bench-peer -mode sse, libzmq through pebbe/zmq4)")
	streamFronts = flag.String("stream-fronts", "gateway,stream,libzmq,mod_zmq,pushpin", "streams: the fronts of the held and latency cases (libzmq: a bare ZMQ_STREAM socket, the floor under stream mode, held case only)")
)

// streamParts are the names -only accepts for the streaming benchmark.
var streamParts = []string{"streams-held", "streams-latency", "streams-transfer"}

// sfront is one front of the streaming benchmark.
type sfront struct {
	Name string
	Addr string // host:port
	Held int    // streams the held case opens
	Grip bool   // Pushpin: the stream's channel goes in ?ch=, latency events are published
	// Opening is how many streams are being opened at once.
	Opening int
	// HeldOnly: the front is measured in the held case only (libzmq, which
	// sends no events after the first).
	HeldOnly bool
	Metrics  string // zmq-gateway's admin /metrics (Go heap and stacks), or ""
	pids     func() []int
}

type senv struct {
	*env
	fronts    []*sfront
	pubURL    string // Pushpin's publish endpoint
	apache    string // Apache's host:port
	apachePid func() []int
}

// holdResult, latResult and xferResult are what the report prints.
type holdResult struct {
	Front        string  `json:"front"`
	Streams      int     `json:"streams"`
	Opened       int     `json:"opened"`
	Alive        int     `json:"alive_at_measure"`
	OpenSeconds  float64 `json:"open_seconds"`
	IdleKiB      int64   `json:"rss_idle_kib"`
	OpenKiB      int64   `json:"rss_open_kib"`
	ClosedKiB    int64   `json:"rss_after_close_kib"`
	PerStreamKiB float64 `json:"kib_per_stream"`
	// Of that, for the Go fronts: heap in use, goroutine stacks, goroutines.
	HeapPerStreamKiB  float64 `json:"go_heap_inuse_kib_per_stream,omitempty"`
	StackPerStreamKiB float64 `json:"go_stack_inuse_kib_per_stream,omitempty"`
	GoroutinesPerStrm float64 `json:"goroutines_per_stream,omitempty"`
	// HeldCPU is the front's CPU while the N were held (the readings'
	// three seconds), in percent of one core.
	HeldCPU float64 `json:"front_cpu_percent_while_held"`
	Errors  string  `json:"errors,omitempty"`
}

type latResult struct {
	Front   string  `json:"front"`
	Streams int     `json:"streams"`
	Events  int     `json:"events"`
	Rate    float64 `json:"events_per_stream_per_second"`
	P50ms   float64 `json:"p50_ms"`
	P99ms   float64 `json:"p99_ms"`
	Maxms   float64 `json:"max_ms"`
	Errors  string  `json:"errors,omitempty"`
}

type xferResult struct {
	Path       string    `json:"path"`
	UpMBs      float64   `json:"upload_mb_per_s"`
	DownMBs    float64   `json:"download_mb_per_s"`
	UpRSSKiB   int64     `json:"upload_peak_rss_growth_kib"`
	DownRSSKiB int64     `json:"download_peak_rss_growth_kib"`
	UpSamples  []float64 `json:"upload_samples_mb_per_s"`
	DnSamples  []float64 `json:"download_samples_mb_per_s"`
	// The Apache children's CPU (user and system) per GiB, medians of the
	// rounds: the front's cost, which a faster or slower peer does not
	// change as it changes MB/s.
	UpCPU    float64   `json:"upload_cpu_s_per_gib"`
	DownCPU  float64   `json:"download_cpu_s_per_gib"`
	upCPUs   []float64 // samples
	downCPUs []float64
}

// raiseNofile lifts the soft descriptor limit to the hard one: 10,000
// client connections live in this process, and the fronts started from it
// inherit the limit (Go restores the original soft limit in children unless
// the program sets it itself, as here).
func raiseNofile() {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return
	}
	r.Cur = r.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
}

func nofile() uint64 {
	var r syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r)
	return r.Cur
}

// descendants lists pid and every process under it.
func descendants(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children(out[i])...)
	}
	return out
}

func runStreams(parts map[string]bool) {
	start := time.Now()
	fronts := map[string]bool{}
	for _, n := range strings.Split(*streamFronts, ",") {
		fronts[strings.TrimSpace(n)] = true
	}
	if parts["streams-held"] || parts["streams-latency"] {
		if need := uint64(max(*nStreams, *latStreams)) + 512; nofile() < need {
			fatal("streams: the descriptor limit is %d, %d streams need about %d: raise the hard limit (ulimit -Hn)", nofile(), *nStreams, need)
		}
	}
	e := setupStreams(fronts, parts)
	current = e.env
	defer e.stop()
	var held []holdResult
	var lats []latResult
	var xfers []xferResult
	if parts["streams-held"] {
		for _, f := range e.fronts {
			held = append(held, holdStreams(e, f))
		}
	}
	if parts["streams-latency"] {
		for _, f := range e.fronts {
			if !f.HeldOnly {
				lats = append(lats, latency(e, f))
			}
		}
	}
	if parts["streams-transfer"] {
		xfers = transfers(e)
	}
	reportStreams(held, lats, xfers, time.Since(start))
}

func setupStreams(fronts, parts map[string]bool) *senv {
	abs, _ := filepath.Abs(*outDir)
	e := &senv{env: &env{dir: filepath.Join(abs, "streams-run")}}
	current = e.env
	os.RemoveAll(e.dir)
	os.MkdirAll(e.dir, 0o755)
	os.Chmod(abs, 0o755)
	wd, _ := os.Getwd()
	build := func(n string) string { return filepath.Join(wd, "build", n) }
	held := parts["streams-held"] || parts["streams-latency"]
	want := func(n string) bool { return held && fronts[n] }

	wport, oport := freePort(), freePort()
	wep := fmt.Sprintf("tcp://127.0.0.1:%d", wport)
	switch *streamWorker {
	case "worker":
		e.start(build("bench-peer"), "-mode", "sse-zmtp", "-listen", wep)
	case "libzmq":
		e.start(build("bench-peer"), "-mode", "sse", "-listen", wep)
	default:
		log.Fatalf("-streams-worker %q: worker or libzmq", *streamWorker)
	}
	e.start(build("bench-peer"), "-mode", "origin", "-listen", fmt.Sprintf("127.0.0.1:%d", oport))
	waitPort(oport)
	waitPort(wport)

	gwConf := func(port, admin int) string {
		return fmt.Sprintf(`listen: 127.0.0.1:%d
admin: 127.0.0.1:%d
access_log: "off"
timeouts: {read: 600s, idle: 600s}
routes:
  - prefix: /
    backend: [%s]
    notices: true
    max_body: 0
`, port, admin, wep)
	}
	var waits []int
	if want("gateway") {
		p, a := freePort(), freePort()
		os.WriteFile(filepath.Join(e.dir, "gateway.yaml"), []byte(gwConf(p, a)), 0o644)
		c := e.start(build("zmq-gateway"), "-config", filepath.Join(e.dir, "gateway.yaml"), "-log-level", "warn")
		e.fronts = append(e.fronts, &sfront{Name: "gateway", Addr: fmt.Sprintf("127.0.0.1:%d", p), Held: *nStreams,
			Metrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", a), pids: func() []int { return []int{c.Process.Pid} }})
		waits = append(waits, p)
	}
	if want("stream") {
		p, a := freePort(), freePort()
		os.WriteFile(filepath.Join(e.dir, "stream.yaml"), []byte(gwConf(p, a)), 0o644)
		c := e.start(build("zmq-gateway"), "stream", "-config", filepath.Join(e.dir, "stream.yaml"), "-log-level", "warn")
		e.fronts = append(e.fronts, &sfront{Name: "stream", Addr: fmt.Sprintf("127.0.0.1:%d", p), Held: *nStreams,
			Metrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", a), pids: func() []int { return []int{c.Process.Pid} }})
		waits = append(waits, p)
	}
	if parts["streams-held"] && fronts["libzmq"] {
		p := freePort()
		c := e.start(build("bench-peer"), "-mode", "zstream", "-listen", fmt.Sprintf("tcp://127.0.0.1:%d", p))
		e.fronts = append(e.fronts, &sfront{Name: "libzmq", Addr: fmt.Sprintf("127.0.0.1:%d", p), Held: *nStreams, HeldOnly: true,
			pids: func() []int { return []int{c.Process.Pid} }})
		waits = append(waits, p)
	}
	if want("mod_zmq") || parts["streams-transfer"] {
		e.startApache(build, wep, oport)
		if want("mod_zmq") {
			e.fronts = append(e.fronts, &sfront{Name: "mod_zmq", Addr: e.apache, Held: *nApacheHeld, pids: e.apachePid})
		}
	}
	if want("pushpin") {
		f := e.startPushpin(oport)
		e.fronts = append(e.fronts, f)
	}
	for _, p := range waits {
		waitPort(p)
	}
	// Every front answers a stream before anything is measured. A port
	// that takes connections is not always a front that is ready: Pushpin's
	// runner opens condure's port before its proxy and handler are up, and
	// answers 500 meanwhile. So each has 10 s to stream once.
	for _, f := range e.fronts {
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := openStream(f.Addr, f.target("hold", 0), nil)
			if err == nil {
				c.close()
				break
			}
			if time.Now().After(deadline) {
				fatal("streams: %s does not stream: %v", f.Name, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return e
}

func (f *sfront) target(kind string, i int) string {
	t := "/sse/" + kind
	if f.Grip {
		t += fmt.Sprintf("?ch=%s%d", kind[:1], i)
	} else if kind == "tick" {
		// Enough events for the opening, the settling and the measured time;
		// the worker stops at the client's cancel notice.
		t += fmt.Sprintf("?ms=%d&n=%d", 1000/max(*latRate, 1), *latRate*(int(latDur.Seconds())+120))
	}
	return t
}

// startApache starts an event-MPM Apache sized for the held streams (each
// holds a thread): four children of ThreadsPerChild threads, a quarter of
// the streams plus 28% headroom, and ZmqMaxStreams at ThreadsPerChild. It
// serves /sse (streams), /zt (mod_zmq transfers, ZmqStreamBody on) and
// /proxy/ (mod_proxy_http to the origin).
func (e *senv) startApache(build func(string) string, wep string, oport int) {
	tpc := max(64, (*nApacheHeld*32/25+3)/4)
	window := ""
	if *xferWindow > 0 {
		window = fmt.Sprintf("ZmqStreamWindow %d", *xferWindow)
	}
	// The children only: the parent does no streaming and holds no stream.
	e.apache, _, e.apachePid = e.runApache(e.dir, tpc, fmt.Sprintf(`LoadModule proxy_module /usr/lib/apache2/modules/mod_proxy.so
LoadModule proxy_http_module /usr/lib/apache2/modules/mod_proxy_http.so
LoadModule zmq_module %[1]s
ZmqLibrary %[2]s
LimitRequestBody 0
<Location /sse>
	SetHandler zmq
	ZmqBackend %[3]s
	ZmqNotices on
	ZmqMaxStreams %[4]d
</Location>
<Location /zt>
	SetHandler zmq
	ZmqBackend %[3]s
	ZmqNotices on
	ZmqStreamBody on
	ZmqMaxBody 0
	ZmqTimeout 120
	%[5]s
</Location>
ProxyPass /proxy/ http://127.0.0.1:%[6]d/ keepalive=On
`, build("mod_zmq.so"), build("libmodzmq.so"), wep, tpc, window, oport))
}

// startPushpin runs Pushpin (condure, zurl, pushpin-proxy, pushpin-handler)
// with a route to the origin, its own ports and run directory (Debian's
// internal.conf points the proxy at a system zurl in /var/run/zurl; here
// the runner starts one of its own), and a delivery
// rate limit (message_rate, 2,500/s by default) above the latency case's
// 10,000 events/s.
func (e *senv) startPushpin(oport int) *sfront {
	dir := filepath.Join(e.dir, "pushpin")
	for _, d := range []string{"run", "log"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	hport, pub, pull, sub, cmd := freePort(), freePort(), freePort(), freePort(), freePort()
	conf := fmt.Sprintf(`[global]
include={libdir}/internal.conf
rundir=%[1]s/run
ipc_prefix=bench-
port_offset=0
stats_connection_ttl=120

[runner]
services=condure,zurl,pushpin-proxy,pushpin-handler
http_port=%[2]d
logdir=%[1]s/log
log_level=2
client_buffer_size=8192
client_maxconn=50000
condure_bin=condure
mongrel2_bin=mongrel2
m2sh_bin=m2sh
zurl_bin=zurl

[proxy]
routesfile=routes
zurl_out_specs=ipc://{rundir}/{ipc_prefix}zurl-in
zurl_out_stream_specs=ipc://{rundir}/{ipc_prefix}zurl-in-stream
zurl_in_specs=ipc://{rundir}/{ipc_prefix}zurl-out
debug=false
auto_cross_origin=false
accept_x_forwarded_protocol=false
set_x_forwarded_protocol=proto-only
x_forwarded_for=
x_forwarded_for_trusted=
orig_headers_need_mark=
accept_pushpin_route=false
log_from=false
log_user_agent=false
sig_iss=pushpin
sig_key=changeme
upstream_key=
sockjs_url=http://cdn.jsdelivr.net/sockjs/0.3.4/sockjs.min.js
updates_check=off
organization_name=

[handler]
push_in_spec=tcp://127.0.0.1:%[3]d
push_in_sub_specs=tcp://127.0.0.1:%[4]d
push_in_sub_connect=false
push_in_http_addr=127.0.0.1
push_in_http_port=%[5]d
push_in_http_max_headers_size=10000
push_in_http_max_body_size=1000000
stats_spec=ipc://{rundir}/{ipc_prefix}stats
command_spec=tcp://127.0.0.1:%[6]d
message_rate=100000
message_hwm=100000
message_wait=5000
id_cache_ttl=60
connection_subscription_max=20
subscription_linger=60
stats_subscription_ttl=60
stats_report_interval=10
stats_format=tnetstring
`, dir, hport, pull, sub, pub, cmd)
	os.WriteFile(filepath.Join(dir, "pushpin.conf"), []byte(conf), 0o644)
	os.WriteFile(filepath.Join(dir, "routes"), fmt.Appendf(nil, "* 127.0.0.1:%d\n", oport), 0o644)
	c := exec.Command("pushpin", "--config", filepath.Join(dir, "pushpin.conf"), "--logfile", filepath.Join(dir, "log", "pushpin.log"))
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // stop ends the runner and its services together
	if err := c.Start(); err != nil {
		fatal("pushpin: %v", err)
	}
	e.allCmds = append(e.allCmds, c)
	waitPort(hport)
	waitPort(pub)
	e.pubURL = fmt.Sprintf("http://127.0.0.1:%d/publish/", pub)
	// Opening: Pushpin's proxy answers 502 to a request it cannot hand to
	// zurl at once (target error, condition 8, in its debug log): 111 of
	// 500 streams opened 256 at a time failed so. 32 at a time, none do.
	return &sfront{Name: "pushpin", Addr: fmt.Sprintf("127.0.0.1:%d", hport), Held: *nStreams, Grip: true, Opening: 32,
		pids: func() []int { return descendants(c.Process.Pid) }}
}

// ---- clients --------------------------------------------------------------

// sclient is one open stream: a raw connection that wrote its GET, read the
// head and the first event, and now reads on until the front closes it.
type sclient struct {
	c     net.Conn
	alive atomic.Bool
	done  chan struct{}
}

func (c *sclient) close() {
	c.c.Close()
	<-c.done
}

// openStream opens one stream and returns once its first event arrived;
// onData then gets every "data: " line's value with its arrival time, in
// the reading goroutine (the first event's too).
func openStream(addr, target string, onData func(v []byte, at time.Time)) (*sclient, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n", target); err != nil {
		c.Close()
		return nil, err
	}
	r := bufio.NewReaderSize(c, 512)
	status, err := r.ReadSlice('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("no head: %v", err)
	}
	if !bytes.Contains(status, []byte(" 200")) {
		c.Close()
		return nil, fmt.Errorf("status %q", bytes.TrimSpace(status))
	}
	for {
		line, err := r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("no first event: %v", err)
		}
		if v, ok := bytes.CutPrefix(line, []byte("data: ")); ok {
			if onData != nil {
				onData(v, time.Now())
			}
			break
		}
	}
	c.SetDeadline(time.Time{})
	s := &sclient{c: c, done: make(chan struct{})}
	s.alive.Store(true)
	go func() {
		defer close(s.done)
		for {
			line, err := r.ReadSlice('\n')
			if err == bufio.ErrBufferFull {
				continue
			}
			if err != nil {
				s.alive.Store(false)
				return
			}
			if onData != nil {
				if v, ok := bytes.CutPrefix(line, []byte("data: ")); ok {
					onData(v, time.Now())
				}
			}
		}
	}()
	return s, nil
}

// openMany opens n streams, at most f.Opening (or 256) being opened at
// once; target and onData (which may be nil) are per stream. It returns the
// open ones and a summary of the failures.
func openMany(f *sfront, n int, kind string, onData func(i int) func([]byte, time.Time)) ([]*sclient, string) {
	return openAll(n, cmp.Or(f.Opening, 256), func(i int) (*sclient, error) {
		var od func([]byte, time.Time)
		if onData != nil {
			od = onData(i)
		}
		return openStream(f.Addr, f.target(kind, i), od)
	})
}

func closeAll(cs []*sclient) {
	for _, c := range cs {
		c.c.Close()
	}
	for _, c := range cs {
		<-c.done
	}
}

func rssKiB(f *sfront) int64 { return statusKiB(f.pids(), "VmRSS") }

// goMem reads the Go runtime's heap in use, stacks in use (bytes) and
// goroutines from a zmq-gateway /metrics page.
func goMem(url string) (heap, stack, goroutines float64) {
	resp, err := http.Get(url)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		x, _ := strconv.ParseFloat(v, 64)
		switch name {
		case "go_memstats_heap_inuse_bytes":
			heap = x
		case "go_memstats_stack_inuse_bytes":
			stack = x
		case "go_goroutines":
			goroutines = x
		}
	}
	return
}

// ---- the cases --------------------------------------------------------------

func holdStreams(e *senv, f *sfront) holdResult {
	// A few streams first, so that first-use costs (a child's client, the
	// connections to the worker) are in the idle figure.
	warm, _ := openMany(f, 20, "hold", nil)
	closeAll(warm)
	time.Sleep(2 * time.Second)
	r := holdResult{Front: f.Name, Streams: f.Held, IdleKiB: rssKiB(f)}
	if len(f.pids()) == 0 {
		r.Errors = "no process of the front to measure"
		log.Printf("streams held: %-8s not measured: %s", f.Name, r.Errors)
		return r
	}
	var h0, s0, g0 float64
	if f.Metrics != "" {
		h0, s0, g0 = goMem(f.Metrics)
	}
	t0 := time.Now()
	cs, errs := openMany(f, f.Held, "hold", nil)
	r.OpenSeconds = time.Since(t0).Seconds()
	r.Opened, r.Errors = len(cs), errs
	// Let the front settle (Go's scavenger, libzmq's batches), then take the
	// largest of three readings a second apart.
	time.Sleep(2 * time.Second)
	c0, t1 := cpuTicks(f.pids()), time.Now()
	for i := 0; i < 3; i++ {
		r.OpenKiB = max(r.OpenKiB, rssKiB(f))
		time.Sleep(time.Second)
	}
	r.HeldCPU = float64(cpuTicks(f.pids())-c0) / time.Since(t1).Seconds() // ticks of 1/100 s: percent
	for _, c := range cs {
		if c.alive.Load() {
			r.Alive++
		}
	}
	if f.Metrics != "" && r.Opened > 0 {
		h, s, g := goMem(f.Metrics)
		n := float64(r.Opened)
		r.HeapPerStreamKiB, r.StackPerStreamKiB, r.GoroutinesPerStrm = (h-h0)/1024/n, (s-s0)/1024/n, (g-g0)/n
	}
	closeAll(cs)
	time.Sleep(3 * time.Second)
	r.ClosedKiB = rssKiB(f)
	if r.Opened > 0 {
		r.PerStreamKiB = float64(r.OpenKiB-r.IdleKiB) / float64(r.Opened)
	}
	log.Printf("streams held: %-8s %d of %d open in %.1fs, %.1f KiB each (%d → %d KiB; Go heap %.1f, stacks %.1f KiB, %.1f goroutines each), CPU %.1f%% while held, %d alive%s",
		f.Name, r.Opened, r.Streams, r.OpenSeconds, r.PerStreamKiB, r.IdleKiB, r.OpenKiB, r.HeapPerStreamKiB, r.StackPerStreamKiB,
		r.GoroutinesPerStrm, r.HeldCPU, r.Alive, ifErr(r.Errors))
	return r
}

func ifErr(s string) string {
	if s == "" {
		return ""
	}
	return "; failed: " + s
}

func latency(e *senv, f *sfront) latResult {
	n := *latStreams
	r := latResult{Front: f.Name, Streams: n}
	var from, until atomic.Int64
	from.Store(math.MaxInt64)
	lat := make([][]float64, n) // ms, per stream, written by its reader only
	cs, errs := openMany(f, n, "tick", func(i int) func([]byte, time.Time) {
		return func(v []byte, at time.Time) {
			sent, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
			if err != nil || sent < from.Load() || sent > until.Load() {
				return
			}
			lat[i] = append(lat[i], float64(at.UnixNano()-sent)/1e6)
		}
	})
	r.Errors = errs
	time.Sleep(time.Second) // Pushpin subscribes each stream's channel after its head left
	until.Store(math.MaxInt64)
	t0 := time.Now()
	from.Store(t0.UnixNano())
	stop := make(chan struct{})
	var pubWG sync.WaitGroup
	var pubErr atomic.Value
	if f.Grip {
		pubWG.Add(1)
		go func() { defer pubWG.Done(); publish(e.pubURL, n, stop, &pubErr) }()
	}
	time.Sleep(*latDur)
	until.Store(time.Now().UnixNano())
	measured := time.Since(t0)
	close(stop)
	pubWG.Wait()
	time.Sleep(500 * time.Millisecond) // events stamped before the end still arriving
	closeAll(cs)
	var all []float64
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Float64s(all)
	r.Events = len(all)
	if len(cs) > 0 {
		r.Rate = float64(len(all)) / float64(len(cs)) / measured.Seconds()
	}
	if len(all) > 0 {
		r.P50ms, r.P99ms, r.Maxms = all[len(all)/2], all[len(all)*99/100], all[len(all)-1]
	}
	if v := pubErr.Load(); v != nil {
		r.Errors = strings.TrimPrefix(r.Errors+"; publish: "+v.(string), "; ")
	}
	log.Printf("streams latency: %-8s %d streams, %d events (%.1f/stream/s), p50 %.2f ms p99 %.2f ms max %.2f ms%s",
		f.Name, len(cs), r.Events, r.Rate, r.P50ms, r.P99ms, r.Maxms, ifErr(r.Errors))
	time.Sleep(2 * time.Second) // the worker hears the cancels before the next front
	return r
}

// publish sends each of n channels t0…t(n-1) latRate events a second
// through Pushpin's HTTP publish endpoint: one POST every 50 ms (at 10
// events/s: half of the channels in each), every item stamped with the time
// its POST is built. Not more often: Pushpin 1.36's handler restarts its
// delivery timer (25 ms) each time a publish arrives, so POSTs every 10 ms
// held every event back until publishing paused (seconds, measured).
func publish(url string, n int, stop chan struct{}, errOut *atomic.Value) {
	period := time.Second / time.Duration(max(*latRate, 1))
	slots := max(int(period/(50*time.Millisecond)), 1)
	tick := time.NewTicker(period / time.Duration(slots))
	defer tick.Stop()
	client := &http.Client{Timeout: 10 * time.Second}
	var buf bytes.Buffer
	for k := 0; ; k++ {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		buf.Reset()
		buf.WriteString(`{"items":[`)
		stamp := time.Now().UnixNano()
		first := true
		for i := k % slots; i < n; i += slots {
			if !first {
				buf.WriteByte(',')
			}
			first = false
			fmt.Fprintf(&buf, `{"channel":"t%d","formats":{"http-stream":{"content":"data: %d\n\n"}}}`, i, stamp)
		}
		buf.WriteString(`]}`)
		resp, err := client.Post(url, "application/json", bytes.NewReader(buf.Bytes()))
		if err != nil {
			errOut.Store(err.Error())
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			errOut.Store(resp.Status)
		}
	}
}

// ---- transfers through Apache ----------------------------------------------

type patReader struct{ left int64 }

func (r *patReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(int64(len(p)), r.left)], pattern64k)
	r.left -= int64(n)
	return n, nil
}

var pattern64k = bytes.Repeat([]byte("x"), 64<<10)

// peakGrowth resets the children's peak RSS (clear_refs 5), runs fn, and
// returns the sum over children of (peak after − resident before), each at
// least 0, in KiB.
func peakGrowth(pids []int, fn func() error) (int64, error) {
	before := map[int]int64{}
	for _, p := range pids {
		os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", p), []byte("5"), 0)
		before[p] = statusKiB([]int{p}, "VmRSS")
	}
	err := fn()
	var grow int64
	for _, p := range pids {
		grow += max(0, statusKiB([]int{p}, "VmHWM")-before[p])
	}
	return grow, err
}

func transfers(e *senv) []xferResult {
	client := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{DisableCompression: true,
		WriteBufferSize: 64 << 10, ReadBufferSize: 64 << 10, MaxIdleConnsPerHost: 4}}
	size := *xferBytes
	up := func(url string) error {
		req, _ := http.NewRequest("PUT", url, &patReader{left: size})
		req.ContentLength = size
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !bytes.Contains(b, fmt.Appendf(nil, `"bytes":%d`, size)) {
			return fmt.Errorf("upload: %s %q", resp.Status, b)
		}
		return nil
	}
	down := func(url string) error {
		resp, err := client.Get(fmt.Sprintf("%s?bytes=%d", url, size))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		n, err := io.CopyBuffer(io.Discard, resp.Body, make([]byte, 64<<10))
		if err != nil || resp.StatusCode != 200 || n != size {
			return fmt.Errorf("download: %s, %d of %d bytes (%v)", resp.Status, n, size, err)
		}
		return nil
	}
	base := "http://" + e.apache
	paths := []struct{ name, prefix string }{{"mod_zmq", "/zt"}, {"mod_proxy_http", "/proxy"}}
	res := make([]xferResult, len(paths))
	for i, p := range paths {
		res[i].Path = p.name
	}
	for r := 0; r < *rounds; r++ {
		for k := range paths {
			i := (k + r) % len(paths)
			p := paths[i]
			for _, dir := range []string{"up", "down"} {
				t0, c0 := time.Now(), cpuTicks(e.apachePid())
				grow, err := peakGrowth(e.apachePid(), func() error {
					if dir == "up" {
						return up(base + p.prefix + "/up")
					}
					return down(base + p.prefix + "/down")
				})
				if err != nil {
					fatal("streams transfer %s %s: %v", p.name, dir, err)
				}
				mbs := float64(size) / 1e6 / time.Since(t0).Seconds()
				cpu := float64(cpuTicks(e.apachePid())-c0) / 100 / (float64(size) / (1 << 30)) // ticks of 1/100 s
				if dir == "up" {
					res[i].UpSamples = append(res[i].UpSamples, mbs)
					res[i].upCPUs = append(res[i].upCPUs, cpu)
					res[i].UpRSSKiB = max(res[i].UpRSSKiB, grow)
				} else {
					res[i].DnSamples = append(res[i].DnSamples, mbs)
					res[i].downCPUs = append(res[i].downCPUs, cpu)
					res[i].DownRSSKiB = max(res[i].DownRSSKiB, grow)
				}
				log.Printf("streams transfer: %-14s %-4s %7.0f MB/s, Apache children's CPU %.2f s/GiB, peak RSS +%d KiB",
					p.name, dir, mbs, cpu, grow)
			}
		}
	}
	for i := range res {
		res[i].UpMBs, res[i].DownMBs = median(res[i].UpSamples), median(res[i].DnSamples)
		res[i].UpCPU, res[i].DownCPU = median(res[i].upCPUs), median(res[i].downCPUs)
	}
	return res
}

// ---- report -------------------------------------------------------------------

func reportStreams(held []holdResult, lats []latResult, xfers []xferResult, took time.Duration) {
	fmt.Printf("\nmake bench, streams: took %v (everything shares both cores)\n", took.Round(time.Second))
	by := func(name string) *holdResult {
		for i := range held {
			if held[i].Front == name {
				return &held[i]
			}
		}
		return nil
	}
	ratios := map[string]float64{}
	if len(held) > 0 {
		fmt.Printf("\nheld streams: front RSS per open stream = (RSS with N open − RSS idle) / N (Apache: the children); CPU %%: the front's while the N were held\n")
		fmt.Printf("%-9s | %7s %7s %7s %7s | %10s %10s %10s | %9s | %7s | %s\n", "front", "N", "opened", "alive", "open s",
			"idle KiB", "open KiB", "closed KiB", "KiB/strm", "CPU %", "of which Go heap, stacks KiB/strm; goroutines/strm")
		for _, r := range held {
			goCols := "-"
			if r.HeapPerStreamKiB != 0 || r.StackPerStreamKiB != 0 {
				goCols = fmt.Sprintf("%.1f, %.1f; %.1f", r.HeapPerStreamKiB, r.StackPerStreamKiB, r.GoroutinesPerStrm)
			}
			fmt.Printf("%-9s | %7d %7d %7d %7.1f | %10d %10d %10d | %9.1f | %7.1f | %s%s\n", r.Front, r.Streams, r.Opened, r.Alive,
				r.OpenSeconds, r.IdleKiB, r.OpenKiB, r.ClosedKiB, r.PerStreamKiB, r.HeldCPU, goCols, ifErr(r.Errors))
		}
		if z, st := by("libzmq"), by("stream"); z != nil {
			fmt.Printf("libzmq: one bare ZMQ_STREAM socket (bench-peer -mode zstream) holding the same streams: what libzmq keeps per connection, under stream mode\n")
			if st != nil && st.PerStreamKiB > 0 && z.PerStreamKiB > 0 {
				fmt.Printf("stream mode holds %.1f KiB per stream above libzmq's %.1f\n", st.PerStreamKiB-z.PerStreamKiB, z.PerStreamKiB)
			}
		}
		if p := by("pushpin"); p != nil {
			for _, n := range []string{"gateway", "stream", "mod_zmq"} {
				if r := by(n); r != nil && r.PerStreamKiB > 0 {
					ratios[n+"_vs_pushpin_rss_per_stream"] = p.PerStreamKiB / r.PerStreamKiB
				}
			}
		}
	}
	if len(lats) > 0 {
		fmt.Printf("\nevent latency: %d streams × %d events/s for %v, worker's send → client's receipt\n", *latStreams, *latRate, *latDur)
		fmt.Printf("%-9s | %7s %8s %10s | %8s %8s %8s\n", "front", "streams", "events", "ev/strm/s", "p50 ms", "p99 ms", "max ms")
		for _, r := range lats {
			fmt.Printf("%-9s | %7d %8d %10.2f | %8.2f %8.2f %8.2f%s\n", r.Front, r.Streams, r.Events, r.Rate, r.P50ms, r.P99ms, r.Maxms, ifErr(r.Errors))
		}
		var pp *latResult
		for i := range lats {
			if lats[i].Front == "pushpin" {
				pp = &lats[i]
			}
		}
		for _, r := range lats {
			if pp != nil && r.Front != "pushpin" && r.P99ms > 0 {
				ratios[r.Front+"_vs_pushpin_p99"] = pp.P99ms / r.P99ms
			}
		}
	}
	if len(xfers) == 2 {
		fmt.Printf("\n%s through Apache, medians of %d rounds (MB = 10^6 bytes); CPU: Apache children's user+system per GiB; RSS: their peak growth, largest of the rounds\n",
			sizeName(*xferBytes), *rounds)
		fmt.Printf("%-14s | %12s %9s %14s | %14s %9s %14s\n", "path", "upload MB/s", "CPU s/GiB", "peak RSS KiB",
			"download MB/s", "CPU s/GiB", "peak RSS KiB")
		for _, x := range xfers {
			fmt.Printf("%-14s | %12.0f %9.2f %14d | %14.0f %9.2f %14d\n", x.Path, x.UpMBs, x.UpCPU, x.UpRSSKiB, x.DownMBs,
				x.DownCPU, x.DownRSSKiB)
		}
		if xfers[1].UpMBs > 0 && xfers[1].DownMBs > 0 {
			ratios["mod_zmq_vs_mod_proxy_http_upload"] = xfers[0].UpMBs / xfers[1].UpMBs
			ratios["mod_zmq_vs_mod_proxy_http_download"] = xfers[0].DownMBs / xfers[1].DownMBs
		}
	}
	printRatios("above 1.0: the first is better; RSS and p99: the other's figure / the first's", ratios)
	fmt.Printf("\nwrote %s\n", writeResults("streams.json", map[string]any{"took_seconds": took.Seconds(),
		"held": held, "latency": lats, "transfer": xfers, "ratios": ratios}))
}

func sizeName(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}
