package main

// The WebSocket benchmark (`-only websockets`, or part of a run with no
// -only), through each front to one MZMQ/1 echo worker (`bench-peer -mode
// ws-zmtp`, on the worker package; -ws-worker picks another), beside the anchor, what an Apache user
// would pick instead: Apache mod_proxy_http/mod_proxy_wstunnel
// (`ProxyPass ws://… upgrade=websocket`) tunnelling to a Go WebSocket echo
// server (`bench-peer -mode wsecho`, gorilla/websocket). Clients are
// gorilla/websocket connections of this process; messages are text of
// -ws-size bytes that start with their send time (Unix ns; one clock).
//
//   - rss: N idle WebSockets held open on each front (10,000 on zmq-gateway
//     and stream mode, 1,000 on the Apaches, where each holds a thread):
//     the front's resident memory per open WebSocket, (RSS with N open −
//     RSS idle) / N, Apache's summed over its children.
//   - latency: 1,000 WebSockets × 10 messages/s each; p50 and p99 of the
//     round trip as the client sees it (send → echo received).
//   - rate: 64 WebSockets, each keeping -ws-sat-depth messages in flight
//     (the next sent as each echo arrives): echoed messages/s, medians of
//     -rounds interleaved rounds, with the CPU each side spent per message.
//
// The Apaches are two, one for mod_zmq and one for the tunnel, sized alike
// (event MPM, four children; each open WebSocket holds a thread in both),
// so that neither runs on threads the other warmed.

import (
	"cmp"
	"flag"
	"fmt"
	"log"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

var (
	wsFrontsFlag = flag.String("ws-fronts", "mod_zmq,gateway,stream,libzmq,tunnel", "websockets: the fronts (tunnel: Apache mod_proxy_http/mod_proxy_wstunnel to a Go echo server, the anchor; libzmq: a bare ZMQ_STREAM socket echoing, the floor under stream mode, rss case only)")
	wsLatConns   = flag.Int("ws-conns", 1000, "websockets: WebSockets of the latency case")
	wsLatRate    = flag.Int("ws-rate", 10, "websockets: messages per second per WebSocket in the latency case")
	wsLatDur     = flag.Duration("ws-duration", 10*time.Second, "websockets: how long the latency case measures")
	wsSize       = flag.Int("ws-size", 64, "websockets: bytes of every message (text, starting with its send time; at least 20)")
	wsSatConns   = flag.Int("ws-sat-conns", 64, "websockets: WebSockets of the saturation case")
	wsSatDepth   = flag.Int("ws-sat-depth", 4, "websockets: messages each keeps in flight in the saturation case")
	wsSatDur     = flag.Duration("ws-sat-duration", 4*time.Second, "websockets: how long each round of the saturation case measures")
	wsIdle       = flag.Int("ws-idle", 10000, "websockets: idle WebSockets held open on zmq-gateway and stream mode")
	wsWorker     = flag.String("ws-worker", "worker", "websockets: the ZeroMQ fronts' worker: worker (bench-peer -mode ws-zmtp, the worker package: ZMTP in Go), libzmq (bench-peer -mode ws, libzmq through pebbe/zmq4) or wsworker (examples/go/wsworker)")
	wsIdleApache = flag.Int("ws-idle-apache", 1000, "websockets: idle WebSockets held open on the Apaches (each holds a thread; ThreadsPerChild follows)")
)

// wsParts are the names -only accepts for the WebSocket benchmark.
var wsParts = []string{"websockets-rss", "websockets-latency", "websockets-rate"}

// wfront is one front of the WebSocket benchmark.
type wfront struct {
	Name    string
	URL     string // ws://host:port/path
	Idle    int    // WebSockets the rss case holds open
	Metrics string // zmq-gateway's admin /metrics, or ""
	Skip    string // why the front is not measured, or ""
	RSSOnly bool   // measured in the rss case only (libzmq)
	pids    func() []int
	backend func() []int // the worker or echo server behind it
}

type wenv struct {
	*env
	fronts []*wfront
}

type wsRSSResult struct {
	Front        string  `json:"front"`
	N            int     `json:"websockets"`
	Opened       int     `json:"opened"`
	Echoed       int     `json:"echoed_after_measuring"`
	OpenSeconds  float64 `json:"open_seconds"`
	IdleKiB      int64   `json:"rss_idle_kib"`
	OpenKiB      int64   `json:"rss_open_kib"`
	ClosedKiB    int64   `json:"rss_after_close_kib"`
	PerWSKiB     float64 `json:"kib_per_websocket"`
	HeapPerWSKiB float64 `json:"go_heap_inuse_kib_per_websocket,omitempty"`
	StackPerWS   float64 `json:"go_stack_inuse_kib_per_websocket,omitempty"`
	GoroutinesWS float64 `json:"goroutines_per_websocket,omitempty"`
	// IdleCPU is the front's CPU while the N sat idle (the readings'
	// 3 seconds), in percent of one core.
	IdleCPU float64 `json:"front_cpu_percent_while_idle"`
	Errors  string  `json:"errors,omitempty"`
}

type wsLatResult struct {
	Front  string  `json:"front"`
	Conns  int     `json:"websockets"`
	Sent   int64   `json:"sent"`
	Echoed int     `json:"echoed"`
	Rate   float64 `json:"echoes_per_websocket_per_second"`
	P50ms  float64 `json:"p50_ms"`
	P99ms  float64 `json:"p99_ms"`
	Maxms  float64 `json:"max_ms"`
	// The CPU the front and the worker (or echo server) spent per echoed
	// message while measured.
	FrontCPUus float64 `json:"front_cpu_us_per_message"`
	BackCPUus  float64 `json:"backend_cpu_us_per_message"`
	Errors     string  `json:"errors,omitempty"`
}

type wsRateResult struct {
	Front      string    `json:"front"`
	MsgsPerSec float64   `json:"messages_per_second"`
	P50ms      float64   `json:"p50_ms"`
	P99ms      float64   `json:"p99_ms"`
	FrontCPUus float64   `json:"front_cpu_us_per_message"`
	BackCPUus  float64   `json:"backend_cpu_us_per_message"`
	ClientCPU  float64   `json:"client_cpu_us_per_message"`
	Samples    []float64 `json:"messages_per_second_samples"`
	Errors     string    `json:"errors,omitempty"`
}

func runWebSockets(parts map[string]bool) {
	start := time.Now()
	log.Printf("websockets: load average %s at the start", loadAvg())
	if *wsSize < 20 {
		log.Fatalf("-ws-size %d: a message holds its send time, 19 digits and a space", *wsSize)
	}
	want := map[string]bool{}
	for _, n := range strings.Split(*wsFrontsFlag, ",") {
		want[strings.TrimSpace(n)] = true
	}
	need := uint64(*wsLatConns)
	if parts["websockets-rss"] {
		need = max(need, uint64(*wsIdle))
	}
	if nofile() < need+512 {
		fatal("websockets: the descriptor limit is %d, %d WebSockets need about %d: raise the hard limit (ulimit -Hn)", nofile(), need, need+512)
	}
	e := setupWebSockets(want)
	current = e.env
	defer e.stop()
	var active []*wfront
	for _, f := range e.fronts {
		if f.Skip == "" {
			active = append(active, f)
		} else {
			log.Printf("websockets: %s not measured: %s", f.Name, f.Skip)
		}
	}
	var rss []wsRSSResult
	var lats []wsLatResult
	var rates []wsRateResult
	if parts["websockets-rss"] { // first: on fronts no load has warmed yet
		for _, f := range active {
			rss = append(rss, wsHoldIdle(f))
		}
	}
	var relays []*wfront // the fronts with a worker behind them
	for _, f := range active {
		if !f.RSSOnly {
			relays = append(relays, f)
		}
	}
	if parts["websockets-latency"] {
		for _, f := range relays {
			lats = append(lats, wsLatency(f))
		}
	}
	if parts["websockets-rate"] {
		rates = wsRates(relays)
	}
	reportWebSockets(e.fronts, rss, lats, rates, time.Since(start))
}

func setupWebSockets(want map[string]bool) *wenv {
	abs, _ := filepath.Abs(*outDir)
	e := &wenv{env: &env{dir: filepath.Join(abs, "websockets-run")}}
	current = e.env
	os.RemoveAll(e.dir)
	os.MkdirAll(e.dir, 0o755)
	os.Chmod(abs, 0o755)
	wd, _ := os.Getwd()
	build := func(n string) string { return filepath.Join(wd, "build", n) }
	one := func(c *exec.Cmd) func() []int { return func() []int { return []int{c.Process.Pid} } }

	wport, eport := freePort(), freePort()
	wep := fmt.Sprintf("tcp://127.0.0.1:%d", wport)
	var worker *exec.Cmd
	switch *wsWorker {
	case "worker":
		worker = e.start(build("bench-peer"), "-mode", "ws-zmtp", "-listen", wep)
	case "libzmq":
		worker = e.start(build("bench-peer"), "-mode", "ws", "-listen", wep)
	case "wsworker":
		worker = e.start(build("wsworker"), "-bind", wep)
	default:
		log.Fatalf("-ws-worker %q: worker, libzmq or wsworker", *wsWorker)
	}
	echo := e.start(build("bench-peer"), "-mode", "wsecho", "-listen", fmt.Sprintf("127.0.0.1:%d", eport))
	waitPort(wport)
	waitPort(eport)

	gwConf := fmt.Sprintf(`listen: 127.0.0.1:%%d
admin: 127.0.0.1:%%d
access_log: "off"
routes:
  - prefix: /
    backend: [%s]
    websocket: true
`, wep)
	var waits []int
	for _, name := range []string{"gateway", "stream"} {
		if !want[name] {
			continue
		}
		p, a := freePort(), freePort()
		conf := filepath.Join(e.dir, name+".yaml")
		os.WriteFile(conf, fmt.Appendf(nil, gwConf, p, a), 0o644)
		args := []string{"-config", conf, "-log-level", "warn"}
		if name == "stream" {
			args = append([]string{"stream"}, args...)
		}
		c := e.start(build("zmq-gateway"), args...)
		e.fronts = append(e.fronts, &wfront{Name: name, URL: fmt.Sprintf("ws://127.0.0.1:%d/ws", p), Idle: *wsIdle,
			Metrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", a), pids: one(c), backend: one(worker)})
		waits = append(waits, p)
	}
	if want["libzmq"] {
		p := freePort()
		c := e.start(build("bench-peer"), "-mode", "zstream", "-listen", fmt.Sprintf("tcp://127.0.0.1:%d", p))
		e.fronts = append(e.fronts, &wfront{Name: "libzmq", URL: fmt.Sprintf("ws://127.0.0.1:%d/ws", p), Idle: *wsIdle, RSSOnly: true, pids: one(c)})
		waits = append(waits, p)
	}
	if want["mod_zmq"] {
		addr, pids := e.startWSApache("apache-zmq", fmt.Sprintf(`LoadModule zmq_module %s
ZmqLibrary %s
<Location /ws>
	SetHandler zmq
	ZmqBackend %s
	ZmqWebSocket on
	ZmqMaxStreams {tpc}
</Location>
`, build("mod_zmq.so"), build("libmodzmq.so"), wep))
		e.fronts = append(e.fronts, &wfront{Name: "mod_zmq", URL: "ws://" + addr + "/ws", Idle: *wsIdleApache, pids: pids, backend: one(worker)})
	}
	if want["tunnel"] {
		addr, pids := e.startWSApache("apache-tunnel", fmt.Sprintf(`LoadModule proxy_module /usr/lib/apache2/modules/mod_proxy.so
LoadModule proxy_http_module /usr/lib/apache2/modules/mod_proxy_http.so
LoadModule proxy_wstunnel_module /usr/lib/apache2/modules/mod_proxy_wstunnel.so
ProxyPass /ws ws://127.0.0.1:%d/ws upgrade=websocket
`, eport))
		e.fronts = append(e.fronts, &wfront{Name: "tunnel", URL: "ws://" + addr + "/ws", Idle: *wsIdleApache, pids: pids, backend: one(echo)})
	}
	for _, p := range waits {
		waitPort(p)
	}
	// Every front echoes a message before anything is measured; one that
	// does not (stream mode without WebSockets) is reported and left out.
	for _, f := range e.fronts {
		c, err := wsDial(f.URL)
		if err == nil {
			err = wsEchoOnce(c)
			c.Close()
		}
		if err != nil {
			f.Skip = err.Error()
		}
	}
	return e
}

// startWSApache starts an event-MPM Apache in dir/name with the given
// configuration ({tpc} in it: ThreadsPerChild), sized for the WebSockets
// held open, each holding a thread: four children of a quarter of them plus
// 28% headroom. It returns the address and the children's pids.
func (e *wenv) startWSApache(name string, extra string) (string, func() []int) {
	tpc := max(64, (max(*wsIdleApache, *wsLatConns, *wsSatConns)*32/25+3)/4)
	addr, _, kids := e.runApache(filepath.Join(e.dir, name), tpc, strings.ReplaceAll(extra, "{tpc}", strconv.Itoa(tpc)))
	return addr, kids
}

// ---- clients --------------------------------------------------------------

var wsDialer = &websocket.Dialer{HandshakeTimeout: 60 * time.Second, ReadBufferSize: 1024, WriteBufferSize: 1024}

func wsDial(url string) (*websocket.Conn, error) {
	c, resp, err := wsDialer.Dial(url, nil)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("handshake answered %s", resp.Status)
		}
		return nil, err
	}
	return c, nil
}

// wsMessage fills b with a message stamped now: the time in Unix ns, a
// space, then x.
func wsStamp(b []byte) int64 {
	now := time.Now().UnixNano()
	s := strconv.AppendInt(b[:0], now, 10)
	s = append(s, ' ')
	for i := len(s); i < len(b); i++ {
		b[i] = 'x'
	}
	return now
}

// wsStampOf reads the send time a message starts with.
func wsStampOf(p []byte) (int64, bool) {
	i := 0
	for i < len(p) && p[i] != ' ' {
		i++
	}
	n, err := strconv.ParseInt(string(p[:i]), 10, 64)
	return n, err == nil
}

// wsEchoOnce sends one message on c and checks its echo.
func wsEchoOnce(c *websocket.Conn) error {
	b := make([]byte, *wsSize)
	wsStamp(b)
	c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, b); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	t, p, err := c.ReadMessage()
	if err != nil {
		return fmt.Errorf("no echo: %v", err)
	}
	if t != websocket.TextMessage || string(p) != string(b) {
		return fmt.Errorf("echo of type %d, %d bytes %.30q, want the text sent", t, len(p), p)
	}
	c.SetReadDeadline(time.Time{})
	c.SetWriteDeadline(time.Time{})
	return nil
}

// wsDialMany opens n WebSockets on f, 256 being opened at once, and
// returns the open ones and a summary of the failures.
func wsDialMany(f *wfront, n int) ([]*websocket.Conn, string) {
	return openAll(n, 256, func(int) (*websocket.Conn, error) { return wsDial(f.URL) })
}

func wsCloseAll(cs []*websocket.Conn) {
	for _, c := range cs {
		c.Close()
	}
}

// ---- the cases --------------------------------------------------------------

func wsHoldIdle(f *wfront) wsRSSResult {
	// A few WebSockets first, so that first-use costs (a child's client,
	// the connections to the worker) are in the idle figure.
	warm, _ := wsDialMany(f, 20)
	wsCloseAll(warm)
	time.Sleep(2 * time.Second)
	r := wsRSSResult{Front: f.Name, N: f.Idle, IdleKiB: statusKiB(f.pids(), "VmRSS")}
	var h0, s0, g0 float64
	if f.Metrics != "" {
		h0, s0, g0 = goMem(f.Metrics)
	}
	t0 := time.Now()
	cs, errs := wsDialMany(f, f.Idle)
	r.OpenSeconds = time.Since(t0).Seconds()
	r.Opened, r.Errors = len(cs), errs
	// Let the front settle, then take the largest of three readings a
	// second apart.
	time.Sleep(2 * time.Second)
	c0, t1 := cpuTicks(f.pids()), time.Now()
	for i := 0; i < 3; i++ {
		r.OpenKiB = max(r.OpenKiB, statusKiB(f.pids(), "VmRSS"))
		time.Sleep(time.Second)
	}
	r.IdleCPU = float64(cpuTicks(f.pids())-c0) / time.Since(t1).Seconds() // ticks of 1/100 s: percent
	if f.Metrics != "" && r.Opened > 0 {
		h, s, g := goMem(f.Metrics)
		n := float64(r.Opened)
		r.HeapPerWSKiB, r.StackPerWS, r.GoroutinesWS = (h-h0)/1024/n, (s-s0)/1024/n, (g-g0)/n
	}
	// Every one was open while measured: each echoes a message now.
	var echoed atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, c := range cs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if wsEchoOnce(c) == nil {
				echoed.Add(1)
			}
		}()
	}
	wg.Wait()
	r.Echoed = int(echoed.Load())
	wsCloseAll(cs)
	time.Sleep(3 * time.Second)
	r.ClosedKiB = statusKiB(f.pids(), "VmRSS")
	if r.Opened > 0 {
		r.PerWSKiB = float64(r.OpenKiB-r.IdleKiB) / float64(r.Opened)
	}
	log.Printf("websockets rss: %-8s %d of %d open in %.1fs, %.1f KiB each (%d → %d KiB; Go heap %.1f, stacks %.1f KiB, %.1f goroutines each), CPU %.1f%% while idle, %d echoed after%s",
		f.Name, r.Opened, r.N, r.OpenSeconds, r.PerWSKiB, r.IdleKiB, r.OpenKiB, r.HeapPerWSKiB, r.StackPerWS, r.GoroutinesWS, r.IdleCPU, r.Echoed, ifErr(r.Errors))
	return r
}

func wsLatency(f *wfront) wsLatResult {
	n := *wsLatConns
	r := wsLatResult{Front: f.Name, Conns: n}
	cs, errs := wsDialMany(f, n)
	r.Errors = errs
	var from, until atomic.Int64
	from.Store(math.MaxInt64)
	until.Store(math.MaxInt64)
	var sent atomic.Int64
	var readErrs sync.Map             // error text → count
	lat := make([][]float64, len(cs)) // ms, per WebSocket, written by its reader only
	stop := make(chan struct{})
	period := time.Second / time.Duration(max(*wsLatRate, 1))
	var readers, writers sync.WaitGroup
	for i, c := range cs {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				_, p, err := c.ReadMessage()
				if err != nil {
					select {
					case <-stop:
					default:
						v, _ := readErrs.LoadOrStore(err.Error(), new(atomic.Int64))
						v.(*atomic.Int64).Add(1)
					}
					return
				}
				at := time.Now().UnixNano()
				if s, ok := wsStampOf(p); ok && s >= from.Load() && s <= until.Load() {
					lat[i] = append(lat[i], float64(at-s)/1e6)
				}
			}
		}()
		writers.Add(1)
		go func() {
			defer writers.Done()
			b := make([]byte, *wsSize)
			select { // spread the WebSockets over the period
			case <-time.After(time.Duration(rand.Int64N(int64(period)))):
			case <-stop:
				return
			}
			tick := time.NewTicker(period)
			defer tick.Stop()
			for {
				s := wsStamp(b)
				if err := c.WriteMessage(websocket.TextMessage, b); err != nil {
					return
				}
				if s >= from.Load() && s <= until.Load() {
					sent.Add(1)
				}
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		}()
	}
	time.Sleep(time.Second) // every writer under way
	fp, bp := f.pids(), f.backend()
	f0, b0 := cpuTicks(fp), cpuTicks(bp)
	t0 := time.Now()
	from.Store(t0.UnixNano())
	time.Sleep(*wsLatDur)
	until.Store(time.Now().UnixNano())
	measured := time.Since(t0)
	f1, b1 := cpuTicks(fp), cpuTicks(bp)
	close(stop)
	writers.Wait()
	time.Sleep(time.Second) // echoes of messages sent before the end still arriving
	wsCloseAll(cs)
	readers.Wait()
	var all []float64
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Float64s(all)
	r.Sent, r.Echoed = sent.Load(), len(all)
	if len(cs) > 0 {
		r.Rate = float64(len(all)) / float64(len(cs)) / measured.Seconds()
	}
	if len(all) > 0 {
		r.P50ms, r.P99ms, r.Maxms = all[len(all)/2], all[len(all)*99/100], all[len(all)-1]
		r.FrontCPUus = float64(f1-f0) * 1e6 / 100 / float64(len(all)) // USER_HZ is 100 on Linux
		r.BackCPUus = float64(b1-b0) * 1e6 / 100 / float64(len(all))
	}
	readErrs.Range(func(k, v any) bool {
		r.Errors = strings.TrimPrefix(fmt.Sprintf("%s; %d× read: %s", r.Errors, v.(*atomic.Int64).Load(), k), "; ")
		return true
	})
	log.Printf("websockets latency: %-8s %d WebSockets, %d sent, %d echoed (%.1f/s each), p50 %.2f ms p99 %.2f ms max %.2f ms, CPU µs/message: front %.1f, backend %.1f%s",
		f.Name, len(cs), r.Sent, r.Echoed, r.Rate, r.P50ms, r.P99ms, r.Maxms, r.FrontCPUus, r.BackCPUus, ifErr(r.Errors))
	time.Sleep(2 * time.Second) // the worker hears the closes before the next front
	return r
}

// selfTicks is this process's CPU time in ticks.
func selfTicks() int64 { return cpuTicks([]int{os.Getpid()}) }

// wsRateOnce runs one round of the saturation case on f.
func wsRateOnce(f *wfront) (wsRateResult, error) {
	cs, errs := wsDialMany(f, *wsSatConns)
	if len(cs) < *wsSatConns {
		wsCloseAll(cs)
		return wsRateResult{}, fmt.Errorf("%d of %d WebSockets opened: %s", len(cs), *wsSatConns, errs)
	}
	var echoes atomic.Int64
	var measuring, stopping atomic.Bool
	lat := make([][]float64, len(cs))
	failed := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bufs := make([][]byte, *wsSatDepth)
			for k := range bufs {
				bufs[k] = make([]byte, *wsSize)
				wsStamp(bufs[k])
				if err := c.WriteMessage(websocket.TextMessage, bufs[k]); err != nil {
					failed[i] = err
					return
				}
			}
			b := bufs[0]
			for {
				_, p, err := c.ReadMessage()
				if stopping.Load() {
					return
				}
				if err != nil {
					failed[i] = err
					return
				}
				echoes.Add(1)
				if measuring.Load() {
					if s, ok := wsStampOf(p); ok {
						lat[i] = append(lat[i], float64(time.Now().UnixNano()-s)/1e6)
					}
				}
				wsStamp(b)
				if err := c.WriteMessage(websocket.TextMessage, b); err != nil {
					if !stopping.Load() {
						failed[i] = err
					}
					return
				}
			}
		}()
	}
	time.Sleep(time.Second) // under way
	fp, bp := f.pids(), f.backend()
	f0, b0, c0, n0 := cpuTicks(fp), cpuTicks(bp), selfTicks(), echoes.Load()
	measuring.Store(true)
	t0 := time.Now()
	time.Sleep(*wsSatDur)
	measuring.Store(false)
	f1, b1, c1, n1 := cpuTicks(fp), cpuTicks(bp), selfTicks(), echoes.Load()
	dt := time.Since(t0)
	stopping.Store(true)
	wsCloseAll(cs)
	wg.Wait()
	var r wsRateResult
	msgs := float64(n1 - n0)
	r.MsgsPerSec = msgs / dt.Seconds()
	if msgs > 0 {
		per := func(t int64) float64 { return float64(t) * 1e6 / 100 / msgs } // USER_HZ is 100 on Linux
		r.FrontCPUus, r.BackCPUus, r.ClientCPU = per(f1-f0), per(b1-b0), per(c1-c0)
	}
	var all []float64
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Float64s(all)
	if len(all) > 0 {
		r.P50ms, r.P99ms = all[len(all)/2], all[len(all)*99/100]
	}
	var es []error
	for _, err := range failed {
		if err != nil {
			es = append(es, err)
		}
	}
	if len(es) > 0 {
		return r, fmt.Errorf("%d WebSockets failed during the round, first: %v", len(es), es[0])
	}
	return r, nil
}

func wsRates(fronts []*wfront) []wsRateResult {
	samples := map[string][]wsRateResult{}
	errs := map[string]string{}
	for round := 0; round < *rounds; round++ {
		for k := range fronts {
			f := fronts[(k+round)%len(fronts)]
			r, err := wsRateOnce(f)
			if err != nil {
				errs[f.Name] = err.Error()
				log.Printf("websockets rate: %-8s round %d: %v", f.Name, round+1, err)
			}
			if r.MsgsPerSec > 0 {
				samples[f.Name] = append(samples[f.Name], r)
			}
			log.Printf("websockets rate: %-8s round %d: %.0f messages/s, p50 %.2f ms p99 %.2f ms, CPU µs/message: front %.1f, backend %.1f, client %.1f",
				f.Name, round+1, r.MsgsPerSec, r.P50ms, r.P99ms, r.FrontCPUus, r.BackCPUus, r.ClientCPU)
			time.Sleep(time.Second) // the closes heard before the next front
		}
	}
	var out []wsRateResult
	for _, f := range fronts {
		ss := samples[f.Name]
		m := wsRateResult{Front: f.Name, Errors: errs[f.Name]}
		var mps, p50, p99, fc, bc, cc []float64
		for _, s := range ss {
			mps, p50, p99 = append(mps, s.MsgsPerSec), append(p50, s.P50ms), append(p99, s.P99ms)
			fc, bc, cc = append(fc, s.FrontCPUus), append(bc, s.BackCPUus), append(cc, s.ClientCPU)
		}
		m.MsgsPerSec, m.P50ms, m.P99ms = median(mps), median(p50), median(p99)
		m.FrontCPUus, m.BackCPUus, m.ClientCPU, m.Samples = median(fc), median(bc), median(cc), mps
		out = append(out, m)
	}
	return out
}

// ---- report -------------------------------------------------------------------

func reportWebSockets(fronts []*wfront, rss []wsRSSResult, lats []wsLatResult, rates []wsRateResult, took time.Duration) {
	fmt.Printf("\nmake bench, websockets: took %v (everything shares both cores); tunnel = Apache mod_proxy_http/mod_proxy_wstunnel → Go echo server (the anchor)\n",
		took.Round(time.Second))
	skipped := map[string]string{}
	for _, f := range fronts {
		if f.Skip != "" {
			skipped[f.Name] = f.Skip
			fmt.Printf("  %s: not measured: %s\n", f.Name, f.Skip)
		}
	}
	ratios := map[string]float64{}
	if len(rss) > 0 {
		fmt.Printf("\nidle WebSockets: front RSS per open WebSocket = (RSS with N open − RSS idle) / N (Apache: the children); target ≤ 16 KiB on zmq-gateway and stream mode; CPU %%: the front's while the N sat idle\n")
		fmt.Printf("%-8s | %6s %6s %6s %6s | %9s %9s %10s | %8s | %7s | %s\n", "front", "N", "opened", "echoed", "open s",
			"idle KiB", "open KiB", "closed KiB", "KiB/ws", "CPU %", "of which Go heap, stacks KiB/ws; goroutines/ws")
		for _, r := range rss {
			goCols := "-"
			if r.HeapPerWSKiB != 0 || r.StackPerWS != 0 {
				goCols = fmt.Sprintf("%.1f, %.1f; %.1f", r.HeapPerWSKiB, r.StackPerWS, r.GoroutinesWS)
			}
			fmt.Printf("%-8s | %6d %6d %6d %6.1f | %9d %9d %10d | %8.1f | %7.1f | %s%s\n", r.Front, r.N, r.Opened, r.Echoed, r.OpenSeconds,
				r.IdleKiB, r.OpenKiB, r.ClosedKiB, r.PerWSKiB, r.IdleCPU, goCols, ifErr(r.Errors))
		}
		var z, st *wsRSSResult
		for i := range rss {
			switch rss[i].Front {
			case "libzmq":
				z = &rss[i]
			case "stream":
				st = &rss[i]
			}
		}
		if z != nil {
			fmt.Printf("libzmq: one bare ZMQ_STREAM socket (bench-peer -mode zstream) holding the same WebSockets: what libzmq keeps per connection, under stream mode\n")
			if st != nil && st.PerWSKiB > 0 && z.PerWSKiB > 0 {
				fmt.Printf("stream mode holds %.1f KiB per WebSocket above libzmq's %.1f\n", st.PerWSKiB-z.PerWSKiB, z.PerWSKiB)
			}
		}
	}
	if len(lats) > 0 {
		fmt.Printf("\necho round trip: %d WebSockets × %d messages/s of %d bytes for %v, client's send → echo received\n", *wsLatConns, *wsLatRate, *wsSize, *wsLatDur)
		fmt.Printf("%-8s | %6s %8s %8s %8s | %8s %8s %8s | %s\n", "front", "ws", "sent", "echoed", "/ws/s", "p50 ms", "p99 ms", "max ms", "CPU µs/msg front backend")
		var anchor *wsLatResult
		for i := range lats {
			if lats[i].Front == "tunnel" {
				anchor = &lats[i]
			}
		}
		for _, r := range lats {
			fmt.Printf("%-8s | %6d %8d %8d %8.2f | %8.2f %8.2f %8.2f | %9.1f %7.1f%s\n", r.Front, r.Conns, r.Sent, r.Echoed, r.Rate,
				r.P50ms, r.P99ms, r.Maxms, r.FrontCPUus, r.BackCPUus, ifErr(r.Errors))
			if anchor != nil && r.Front != "tunnel" && r.P99ms > 0 {
				ratios[r.Front+"_vs_tunnel_p99"] = anchor.P99ms / r.P99ms
			}
		}
	}
	if len(rates) > 0 {
		fmt.Printf("\nsaturation: %d WebSockets, %d messages of %d bytes in flight each, echoed messages/s (medians of %d rounds of %v)\n",
			*wsSatConns, *wsSatDepth, *wsSize, *rounds, *wsSatDur)
		fmt.Printf("%-8s | %9s | %8s %8s | %28s | %s\n", "front", "msgs/s", "p50 ms", "p99 ms", "CPU µs/msg front backend client", "rounds")
		var anchor *wsRateResult
		for i := range rates {
			if rates[i].Front == "tunnel" {
				anchor = &rates[i]
			}
		}
		for _, r := range rates {
			var ss []string
			for _, s := range r.Samples {
				ss = append(ss, fmt.Sprintf("%.0f", s))
			}
			fmt.Printf("%-8s | %9.0f | %8.2f %8.2f | %10.1f %8.1f %8.1f | %s%s\n", r.Front, r.MsgsPerSec, r.P50ms, r.P99ms,
				r.FrontCPUus, r.BackCPUus, r.ClientCPU, strings.Join(ss, " "), ifErr(r.Errors))
			if anchor != nil && r.Front != "tunnel" && anchor.MsgsPerSec > 0 {
				ratios[r.Front+"_vs_tunnel_msgs"] = r.MsgsPerSec / anchor.MsgsPerSec
			}
		}
	}
	printRatios("above 1.0: the first is better; p99: the tunnel's / the front's; target: mod_zmq_vs_tunnel_msgs ≥ 1.0", ratios)
	fmt.Printf("\nwrote %s\n", writeResults("websockets.json", map[string]any{"took_seconds": took.Seconds(),
		"not_measured": skipped, "rss": rss, "latency": lats, "rate": rates, "ratios": ratios,
		"load_average_at_end": cmp.Or(loadAvg(), "?")}))
}

// loadAvg is /proc/loadavg's first three figures.
func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
