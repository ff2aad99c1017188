// Command bench measures mod_zmq against the alternatives in one run, on
// this machine, with interleaved rounds (run it with `make bench`). Every
// front answers the same bytes; wrk drives keep-alive load. It prints a
// table, writes build/bench/results.json and build/bench/ratios.svg; then
// the streaming benchmark (streams.go) prints its own tables and writes
// build/bench/streams.json; then the WebSocket benchmark (websockets.go)
// prints its tables and writes build/bench/websockets.json. -only picks any
// of them: configurations of the request/reply table, streams (or
// streams-held, streams-latency, streams-transfer), and websockets (or
// websockets-rss, websockets-latency, websockets-rate).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

var (
	root     = flag.String("root", ".", "the mod_zmq checkout (build/ must hold the built artefacts)")
	rounds   = flag.Int("rounds", 3, "rounds; figures are medians over them")
	keyDur   = flag.Duration("key-duration", 2*time.Second, "wrk duration of the 12-byte, 32-connection case")
	dur      = flag.Duration("duration", time.Second, "wrk duration of the other cases")
	outDir   = flag.String("out", "build/bench", "where results.json and ratios.svg go")
	onlyKey  = flag.Bool("quick", false, "only the 12-byte, 32-connection case (and no streaming or WebSocket benchmark unless -only names it)")
	only     = flag.String("only", "", "comma-separated configurations to measure (default all); streams, or streams-held, streams-latency, streams-transfer, for the streaming benchmark; websockets, or websockets-rss, websockets-latency, websockets-rate, for the WebSocket benchmark")
	rrWorker = flag.String("worker", "libzmq", "request/reply: the ZeroMQ fronts' Go worker: libzmq (bench-peer -mode zmq, pebbe/zmq4) or worker (-mode zmq-zmtp, the worker package)")
	soak     = flag.Int("soak", 0, "instead of the table: send this many requests to mod_zmq and the gateway and report their RSS along the way")
)

// bcase is one load shape.
type bcase struct {
	Name  string
	Query string // "" or "?big"
	Conns int
}

var cases = []bcase{{"12B_c32", "", 32}, {"12B_c256", "", 256}, {"64KiB_c32", "?big", 32}, {"64KiB_c256", "?big", 256}}

// front is one configuration under test.
type front struct {
	Name string
	URL  string
	pids func() []int
}

// cell is one measurement.
type cell struct {
	RPS     float64 `json:"rps"`
	P50ms   float64 `json:"p50_ms"`
	P99ms   float64 `json:"p99_ms"`
	CPUus   float64 `json:"front_cpu_us_per_request"`
	RSSKiB  int64   `json:"front_peak_rss_kib"`
	Errors  int64   `json:"errors"`
	Samples []float64
	// P99Samples are the rounds' p99s, in round order.
	P99Samples []float64 `json:"p99_samples_ms,omitempty"`
}

func main() {
	flag.Parse()
	log.SetFlags(0)
	if err := os.Chdir(*root); err != nil {
		log.Fatal(err)
	}
	raiseNofile()
	// Interrupted or terminated: stop what this run started, as fatal does.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() { fatal("stopped by %v", <-sigs) }()
	// -only: request/reply configurations, streaming and WebSocket parts.
	keep, parts, wparts := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, n := range strings.Split(*only, ",") {
		switch n = strings.TrimSpace(n); {
		case n == "":
		case n == "streams":
			for _, p := range streamParts {
				parts[p] = true
			}
		case strings.HasPrefix(n, "streams-"):
			parts[n] = true
		case n == "websockets":
			for _, p := range wsParts {
				wparts[p] = true
			}
		case strings.HasPrefix(n, "websockets-"):
			if !slices.Contains(wsParts, n) {
				log.Fatalf("-only %s: the WebSocket parts are %s", n, strings.Join(wsParts, ", "))
			}
			wparts[n] = true
		default:
			keep[n] = true
		}
	}
	if *only == "" && *soak == 0 && !*onlyKey { // -quick stays the quick pairs
		for _, p := range streamParts {
			parts[p] = true
		}
		for _, p := range wsParts {
			wparts[p] = true
		}
	}
	if *only == "" || len(keep) > 0 || *soak > 0 {
		requestReply(keep)
	}
	if len(parts) > 0 && *soak == 0 {
		runStreams(parts)
	}
	if len(wparts) > 0 && *soak == 0 {
		runWebSockets(wparts)
	}
}

// requestReply runs the request/reply table (or the soak) over the
// configurations in keep (all when keep is empty).
func requestReply(keep map[string]bool) {
	start := time.Now()
	env := setup()
	current = env
	defer env.stop()
	if *onlyKey {
		cases = cases[:1]
	}
	if len(keep) > 0 {
		var fs []front
		for _, f := range env.fronts {
			if keep[f.Name] {
				fs = append(fs, f)
			}
		}
		env.fronts = fs
	}
	if *soak > 0 {
		soakRSS(env, *soak)
		return
	}
	// results[front][placement][case] = samples
	results := map[string]map[string]map[string][]cell{}
	placements := []string{"shared", "pinned"}
	for r := 0; r < *rounds; r++ {
		for _, pl := range placements {
			switched := true // the placement just changed
			for _, c := range cases {
				order := rotate(env.fronts, r)
				for _, f := range order {
					env.place(f, pl)
					d := *dur
					if c.Name == "12B_c32" {
						d = *keyDur
					}
					m := measure(f, c, d, pl, switched)
					switched = false
					if results[f.Name] == nil {
						results[f.Name] = map[string]map[string][]cell{}
					}
					if results[f.Name][pl] == nil {
						results[f.Name][pl] = map[string][]cell{}
					}
					results[f.Name][pl][c.Name] = append(results[f.Name][pl][c.Name], m)
				}
			}
		}
		log.Printf("round %d of %d done (%v)", r+1, *rounds, time.Since(start).Round(time.Second))
	}
	report(env, results, time.Since(start))
}

func rotate(fs []front, n int) []front {
	n %= len(fs)
	return append(append([]front{}, fs[n:]...), fs[:n]...)
}

// ---- processes ----------------------------------------------------------

// current is the environment fatal stops before exiting, so that a failed
// run leaves no Apache or worker behind.
var current *env

// fatalMu makes a second fatal (a signal during another's cleanup) wait
// for the first, which exits.
var fatalMu sync.Mutex

func fatal(format string, args ...any) {
	fatalMu.Lock()
	if current != nil {
		current.stop()
	}
	log.Fatalf(format, args...)
}

type env struct {
	dir     string
	fronts  []front
	allCmds []*exec.Cmd
	apaches []string // the config paths of the Apaches runApache started
}

// runApache starts an event-MPM Apache in dir on a free port of
// 127.0.0.1: four children of tpc threads each, all started at once, its
// own ServerRoot, pid file and error log, www-data's user when run as
// root; conf (LoadModule lines, directives, locations) follows that. It
// waits for the port, the four children and their threads (each touches
// pages of its own: a child still starting them would read as memory
// growth), and returns the address, the parent's pid and a list of the
// children; stop stops it.
func (e *env) runApache(dir string, tpc int, conf string) (addr string, parent int, kids func() []int) {
	os.MkdirAll(dir, 0o755)
	port := freePort()
	user := ""
	if os.Getuid() == 0 {
		user = "User www-data\nGroup www-data"
	}
	head := fmt.Sprintf(`ServerRoot "%[1]s"
PidFile "%[1]s/httpd.pid"
DefaultRuntimeDir "%[1]s"
Mutex file:%[1]s default
Listen 127.0.0.1:%[2]d
ListenBacklog 4096
ServerName localhost
%[3]s
LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
ErrorLog "%[1]s/error_log"
LogLevel warn
KeepAlive On
Timeout 120
StartServers 4
ServerLimit 4
ThreadLimit %[4]d
ThreadsPerChild %[4]d
MaxRequestWorkers %[5]d
MinSpareThreads %[5]d
MaxSpareThreads %[5]d
`, dir, port, user, tpc, 4*tpc)
	path := filepath.Join(dir, "httpd.conf")
	os.WriteFile(path, []byte(head+conf), 0o644)
	e.apaches = append(e.apaches, path)
	must(exec.Command("/usr/sbin/apache2", "-f", path, "-k", "start").CombinedOutput())
	waitPort(port)
	for i := 0; i < 100 && parent <= 0; i++ { // the port may open before the pid file is written
		if i > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		b, _ := os.ReadFile(filepath.Join(dir, "httpd.pid"))
		parent, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	kids = func() []int { return children(parent) }
	started := func() bool {
		ps := kids()
		for _, p := range ps {
			if ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p)); len(ents) < tpc {
				return false
			}
		}
		return len(ps) >= 4
	}
	for i := 0; i < 200 && !started(); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Sprintf("127.0.0.1:%d", port), parent, kids
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (e *env) start(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		fatal("start %s: %v", name, err)
	}
	e.allCmds = append(e.allCmds, cmd)
	return cmd
}

func waitPort(port int) {
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	fatal("nothing listens on port %d", port)
}

func must(out []byte, err error) {
	if err != nil {
		fatal("%v: %s", err, out)
	}
}

func setup() *env {
	abs, _ := filepath.Abs(*outDir)
	e := &env{dir: filepath.Join(abs, "run")}
	current = e
	os.RemoveAll(e.dir)
	for _, d := range []string{"", "m2/run", "m2/logs", "m2/tmp", "fixtures"} {
		os.MkdirAll(filepath.Join(e.dir, d), 0o755)
	}
	os.Chmod(abs, 0o755)
	wd, _ := os.Getwd()
	build := func(n string) string { return filepath.Join(wd, "build", n) }

	// The fixtures: a minimal C handler and the reference C relay.
	for _, f := range []string{"mod_benchhello.c", "mod_benchrelay.c"} {
		b, _ := os.ReadFile(filepath.Join("test/bench/fixtures", f))
		os.WriteFile(filepath.Join(e.dir, "fixtures", f), b, 0o644)
	}
	c := exec.Command("apxs", "-c", "mod_benchhello.c")
	c.Dir = filepath.Join(e.dir, "fixtures")
	must(c.CombinedOutput())
	c = exec.Command("apxs", "-c", "mod_benchrelay.c", "-lzmq")
	c.Dir = filepath.Join(e.dir, "fixtures")
	must(c.CombinedOutput())

	zport, pyport, hport, rport := freePort(), freePort(), freePort(), freePort()
	g1, g2, m2port := freePort(), freePort(), freePort()
	m2send, m2recv := freePort(), freePort()
	zep := fmt.Sprintf("tcp://127.0.0.1:%d", zport)

	// Workers and backends.
	switch *rrWorker {
	case "libzmq":
		e.start(build("bench-peer"), "-mode", "zmq", "-listen", zep)
	case "worker":
		e.start(build("bench-peer"), "-mode", "zmq-zmtp", "-listen", zep)
	default:
		fatal("-worker %q: libzmq or worker", *rrWorker)
	}
	e.start("/usr/bin/python3", "test/bench/pyworker.py", fmt.Sprintf("tcp://127.0.0.1:%d", pyport))
	e.start(build("bench-peer"), "-mode", "http", "-listen", fmt.Sprintf("127.0.0.1:%d", hport))
	e.start(build("bench-peer"), "-mode", "mongrel2", "-send", fmt.Sprintf("tcp://127.0.0.1:%d", m2send),
		"-recv", fmt.Sprintf("tcp://127.0.0.1:%d", m2recv))
	waitPort(hport)

	// One Apache serves the four Apache configurations.
	aaddr, parent, kids := e.runApache(e.dir, 64, fmt.Sprintf(`LoadModule proxy_module /usr/lib/apache2/modules/mod_proxy.so
LoadModule proxy_http_module /usr/lib/apache2/modules/mod_proxy_http.so
LoadModule benchhello_module %[1]s/fixtures/.libs/mod_benchhello.so
LoadModule benchrelay_module %[1]s/fixtures/.libs/mod_benchrelay.so
LoadModule zmq_module %[2]s
ZmqLibrary %[3]s
MaxKeepAliveRequests 0
BenchRelay %[4]s
<Location /hello>
	SetHandler benchhello
</Location>
ProxyPass /proxy/ http://127.0.0.1:%[5]d/ keepalive=On
<Location /crelay>
	SetHandler benchrelay
</Location>
<Location /zgo>
	SetHandler zmq
	ZmqBackend %[4]s
</Location>
<Location /zpy>
	SetHandler zmq
	ZmqBackend tcp://127.0.0.1:%[6]d
</Location>
`, e.dir, build("mod_zmq.so"), build("libmodzmq.so"), zep, hport, pyport))
	apachePids := func() []int { return append([]int{parent}, kids()...) }

	gw := e.start(build("zmq-gateway"), "-listen", fmt.Sprintf("127.0.0.1:%d", g1), "-route", "/="+zep, "-access-log", "off", "-log-level", "warn")
	st := e.start(build("zmq-gateway"), "stream", "-listen", fmt.Sprintf("127.0.0.1:%d", g2), "-route", "/="+zep, "-log-level", "warn")
	rp := e.start(build("bench-peer"), "-mode", "revproxy", "-listen", fmt.Sprintf("127.0.0.1:%d", rport), "-backend", fmt.Sprintf("http://127.0.0.1:%d", hport))

	m2conf := fmt.Sprintf(`handler_go = Handler(send_spec='tcp://127.0.0.1:%d', send_ident='9a9f2ae4-4a6a-4d4c-9b5e-0e2a4e0b7f11', recv_spec='tcp://127.0.0.1:%d', recv_ident='')
main = Server(uuid="f400bf85-4538-4f7a-8908-67e313d515c2", access_log="/logs/access.log", error_log="/logs/error.log",
    chroot="./", default_host="localhost", name="bench", pid_file="/run/mongrel2.pid", port=%d, bind_addr="127.0.0.1",
    hosts=[Host(name="localhost", routes={'/': handler_go})])
settings = {"zeromq.threads": 1, "limits.content_length": 200000, "server.daemonize": 0}
servers = [main]
`, m2send, m2recv, m2port)
	m2dir := filepath.Join(e.dir, "m2")
	os.WriteFile(filepath.Join(m2dir, "m2.conf"), []byte(m2conf), 0o644)
	c = exec.Command("m2sh", "load", "-config", "m2.conf", "-db", "config.sqlite")
	c.Dir = m2dir
	must(c.CombinedOutput())
	m2 := exec.Command("mongrel2", "config.sqlite", "f400bf85-4538-4f7a-8908-67e313d515c2")
	m2.Dir = m2dir
	m2.Env = append(os.Environ(), "LOGNAME=root")
	if err := m2.Start(); err != nil {
		fatal("mongrel2: %v", err)
	}
	e.allCmds = append(e.allCmds, m2)

	for _, p := range []int{g1, g2, rport, m2port} {
		waitPort(p)
	}
	one := func(c *exec.Cmd) func() []int { return func() []int { return []int{c.Process.Pid} } }
	a := "http://" + aaddr
	e.fronts = []front{
		{"ceiling", a + "/hello", apachePids},
		{"mod_proxy_http", a + "/proxy/x", apachePids},
		{"c_relay", a + "/crelay", apachePids},
		{"mod_zmq", a + "/zgo", apachePids},
		{"mod_zmq_pyzmq", a + "/zpy", apachePids},
		{"gateway", fmt.Sprintf("http://127.0.0.1:%d/x", g1), one(gw)},
		{"stream", fmt.Sprintf("http://127.0.0.1:%d/x", g2), one(st)},
		{"mongrel2", fmt.Sprintf("http://127.0.0.1:%d/x", m2port), func() []int { return []int{m2.Process.Pid} }},
		{"reverseproxy", fmt.Sprintf("http://127.0.0.1:%d/x", rport), one(rp)},
	}
	// Warm every front up (Go libraries load in Apache's children, sockets
	// connect) and check it answers the right bytes.
	for _, f := range e.fronts {
		for _, q := range []string{"", "?big"} {
			out, err := exec.Command("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", f.URL+q).CombinedOutput()
			want := "200 12"
			if q != "" {
				want = "200 65536"
			}
			if err != nil || strings.TrimSpace(string(out)) != want {
				fatal("%s%s answers %q (%v), want %q", f.URL, q, out, err, want)
			}
		}
	}
	return e
}

func (e *env) stop() {
	for _, conf := range e.apaches {
		// apache2 -k stop only signals the parent. Wait for it to go: it
		// removes its pid file as it exits, which would be the next run's
		// (the same directory) if that had started by then.
		b, _ := os.ReadFile(filepath.Join(filepath.Dir(conf), "httpd.pid"))
		parent, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		exec.Command("/usr/sbin/apache2", "-f", conf, "-k", "stop").Run()
		for i := 0; i < 300 && parent > 0 && syscall.Kill(parent, 0) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
	e.apaches = nil
	for _, c := range e.allCmds {
		if c.SysProcAttr != nil && c.SysProcAttr.Setpgid {
			// A runner with services of its own (Pushpin; each service in
			// a process group of its own): SIGTERM makes the runner stop
			// them; any it left behind are killed.
			pids := descendants(c.Process.Pid)
			c.Process.Signal(syscall.SIGTERM)
			t := time.AfterFunc(5*time.Second, func() { c.Process.Kill() })
			c.Wait()
			t.Stop()
			for _, p := range pids[1:] {
				syscall.Kill(p, syscall.SIGKILL)
			}
			continue
		}
		c.Process.Kill()
		c.Wait()
	}
	e.allCmds = nil
}

// openAll opens n clients with open(i), at most at a time at once, and
// returns those that opened, in order, and the failures counted by cause.
func openAll[C any](n, at int, open func(i int) (C, error)) ([]C, string) {
	out, ok := make([]C, n), make([]bool, n)
	sem := make(chan struct{}, at)
	var wg sync.WaitGroup
	var mu sync.Mutex
	fails := map[string]int{}
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			c, err := open(i)
			if err != nil {
				msg := err.Error()
				if j := strings.LastIndex(msg, ": "); j >= 0 && strings.Contains(msg, "127.0.0.1") {
					msg = msg[j+2:] // one line per cause, not per port
				}
				mu.Lock()
				fails[msg]++
				mu.Unlock()
				return
			}
			out[i], ok[i] = c, true
		}(i)
	}
	wg.Wait()
	var opened []C
	for i, c := range out {
		if ok[i] {
			opened = append(opened, c)
		}
	}
	var fs []string
	for m, k := range fails {
		fs = append(fs, fmt.Sprintf("%d× %s", k, m))
	}
	sort.Strings(fs)
	return opened, strings.Join(fs, "; ")
}

// children lists the pids whose parent is pid.
func children(pid int) []int {
	var out []int
	if pid <= 0 {
		return nil // an unread pid file: the children of 0 are init and the kernel's threads
	}
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		n, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

// place pins processes: shared puts everything on both cores; pinned puts
// every thread of f's front on CPU 0 and every other process on CPU 1.
func (e *env) place(f front, placement string) {
	front := map[int]bool{}
	for _, p := range f.pids() {
		front[p] = true
	}
	var all []int
	for _, c := range e.allCmds {
		all = append(all, c.Process.Pid)
	}
	for _, fr := range e.fronts {
		all = append(all, fr.pids()...)
	}
	for _, p := range all {
		cpus := "0,1"
		if placement == "pinned" {
			cpus = "1"
			if front[p] {
				cpus = "0"
			}
		}
		exec.Command("taskset", "-a", "-p", "-c", cpus, strconv.Itoa(p)).Run()
	}
}

// ---- measuring ----------------------------------------------------------

func cpuTicks(pids []int) int64 {
	var t int64
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		t += u + s
	}
	return t
}

// statusKiB sums a "Vm…:" field of /proc/PID/status (VmHWM: peak resident
// memory, VmRSS: resident now) over pids, in KiB.
func statusKiB(pids []int, field string) int64 {
	var kib int64
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, field+":"); ok {
				n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
				kib += n
			}
		}
	}
	return kib
}

var (
	reRPS  = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reLat  = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
	reNon  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	reSock = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	reReqs = regexp.MustCompile(`(\d+) requests in`)
)

func measure(f front, c bcase, d time.Duration, placement string, warm bool) cell {
	wrk := func(args ...string) *exec.Cmd {
		if placement == "pinned" {
			return exec.Command("taskset", append([]string{"-c", "1", "wrk"}, args...)...)
		}
		return exec.Command("wrk", args...)
	}
	if warm {
		// A second of the same load first, not measured: right after the
		// placement changed, the kernel is still spreading hundreds of
		// threads over the CPUs, and whichever configuration ran first paid
		// for it in its p99 (mod_zmq's shared p99 read 16.7 ms when it came
		// first in a round, 3.4-7.7 ms otherwise).
		wrk("-t2", fmt.Sprintf("-c%d", c.Conns), "-d1s", f.URL+c.Query).Run()
	}
	pids := f.pids()
	before := cpuTicks(pids)
	args := []string{"-t2", fmt.Sprintf("-c%d", c.Conns), fmt.Sprintf("-d%ds", int(d.Seconds())), "--latency", f.URL + c.Query}
	out, err := wrk(args...).CombinedOutput()
	if err != nil {
		fatal("wrk %v: %v\n%s", args, err, out)
	}
	s := string(out)
	var m cell
	if x := reRPS.FindStringSubmatch(s); x != nil {
		m.RPS, _ = strconv.ParseFloat(x[1], 64)
	}
	for _, x := range reLat.FindAllStringSubmatch(s, -1) {
		v, _ := strconv.ParseFloat(x[2], 64)
		switch x[3] {
		case "us":
			v /= 1000
		case "s":
			v *= 1000
		}
		if x[1] == "50" {
			m.P50ms = v
		} else {
			m.P99ms = v
		}
	}
	if x := reNon.FindStringSubmatch(s); x != nil {
		n, _ := strconv.ParseInt(x[1], 10, 64)
		m.Errors += n
	}
	if x := reSock.FindStringSubmatch(s); x != nil {
		for _, v := range x[1:] {
			n, _ := strconv.ParseInt(v, 10, 64)
			m.Errors += n
		}
	}
	var reqs float64
	if x := reReqs.FindStringSubmatch(s); x != nil {
		reqs, _ = strconv.ParseFloat(x[1], 64)
	}
	ticks := cpuTicks(f.pids()) - before
	if reqs > 0 {
		m.CPUus = float64(ticks) * 1e6 / 100 / reqs // USER_HZ is 100 on Linux
	}
	m.RSSKiB = statusKiB(f.pids(), "VmHWM")
	return m
}

// ---- reporting ------------------------------------------------------------

func median(xs []float64) float64 {
	s := append([]float64{}, xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func summarize(cs []cell) cell {
	var rps, p50, p99, cpu []float64
	var m cell
	for _, c := range cs {
		rps, p50, p99, cpu = append(rps, c.RPS), append(p50, c.P50ms), append(p99, c.P99ms), append(cpu, c.CPUus)
		m.Errors += c.Errors
		m.RSSKiB = max(m.RSSKiB, c.RSSKiB)
	}
	m.RPS, m.P50ms, m.P99ms, m.CPUus, m.Samples, m.P99Samples = median(rps), median(p50), median(p99), median(cpu), rps, p99
	return m
}

func report(e *env, results map[string]map[string]map[string][]cell, took time.Duration) {
	sum := map[string]map[string]map[string]cell{}
	for f, pls := range results {
		sum[f] = map[string]map[string]cell{}
		for pl, cs := range pls {
			sum[f][pl] = map[string]cell{}
			for c, cells := range cs {
				sum[f][pl][c] = summarize(cells)
			}
		}
	}
	key := func(f, pl string) cell { return sum[f][pl]["12B_c32"] }
	ratio := func(a, b cell) float64 {
		if b.RPS == 0 {
			return 0
		}
		return a.RPS / b.RPS
	}
	ratios := map[string]float64{
		"mod_zmq_vs_mod_proxy_http":        ratio(key("mod_zmq", "shared"), key("mod_proxy_http", "shared")),
		"mod_zmq_vs_mod_proxy_http_pinned": ratio(key("mod_zmq", "pinned"), key("mod_proxy_http", "pinned")),
		"mod_zmq_vs_c_relay_pinned":        ratio(key("mod_zmq", "pinned"), key("c_relay", "pinned")),
		"mod_zmq_vs_ceiling":               ratio(key("mod_zmq", "shared"), key("ceiling", "shared")),
		"gateway_vs_mongrel2":              ratio(key("gateway", "shared"), key("mongrel2", "shared")),
		"gateway_vs_reverseproxy":          ratio(key("gateway", "shared"), key("reverseproxy", "shared")),
		"stream_vs_gateway":                ratio(key("stream", "shared"), key("gateway", "shared")),
	}

	fmt.Printf("\nmake bench: %d rounds, medians, took %v\n", *rounds, took.Round(time.Second))
	for _, pl := range []string{"shared", "pinned"} {
		fmt.Printf("\n%s (%s)\n", pl, map[string]string{"shared": "everything shares both cores",
			"pinned": "front on CPU 0; load generator, workers and backends on CPU 1"}[pl])
		fmt.Printf("%-15s", "config")
		for _, c := range cases {
			fmt.Printf(" | %-34s", c.Name+" req/s p50 p99 cpu-us/req")
		}
		fmt.Println()
		for _, f := range e.fronts {
			fmt.Printf("%-15s", f.Name)
			for _, c := range cases {
				m := sum[f.Name][pl][c.Name]
				errs := ""
				if m.Errors > 0 {
					errs = fmt.Sprintf(" E%d", m.Errors)
				}
				fmt.Printf(" | %8.0f %5.2fms %6.2fms %5.0f%s", m.RPS, m.P50ms, m.P99ms, m.CPUus, errs)
			}
			fmt.Println()
		}
	}
	names := printRatios("12-byte body, 32 connections; requests/s", ratios)
	fmt.Printf("  p99 mod_zmq %.2f ms vs mod_proxy_http %.2f ms (shared)\n", key("mod_zmq", "shared").P99ms, key("mod_proxy_http", "shared").P99ms)

	path := writeResults("results.json", map[string]any{"rounds": *rounds, "took_seconds": took.Seconds(), "configs": sum, "ratios": ratios})
	os.WriteFile(filepath.Join(*outDir, "ratios.svg"), []byte(svg(names, ratios)), 0o644)
	fmt.Printf("\nwrote %s and %s\n", path, filepath.Join(*outDir, "ratios.svg"))
}

// printRatios prints ratios under what they are, by name; it returns the
// names in that order.
func printRatios(what string, ratios map[string]float64) []string {
	fmt.Printf("\nratios (%s):\n", what)
	names := make([]string, 0, len(ratios))
	width := 0
	for k := range ratios {
		names, width = append(names, k), max(width, len(k))
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Printf("  %-*s %.2f\n", width+2, k, ratios[k])
	}
	return names
}

// writeResults writes doc, with the time and the host it was measured on,
// as JSON to name in -out, and returns the file's path.
func writeResults(name string, doc map[string]any) string {
	doc["when"] = time.Now().UTC().Format(time.RFC3339)
	doc["host"], _ = os.Hostname()
	b, _ := json.MarshalIndent(doc, "", "  ")
	os.MkdirAll(*outDir, 0o755)
	path := filepath.Join(*outDir, name)
	os.WriteFile(path, b, 0o644)
	return path
}

// svg draws the ratios as horizontal bars with a line at 1.0.
func svg(names []string, ratios map[string]float64) string {
	const w, rowH, left, scale = 760, 28, 260, 240.0 // scale: pixels per 1.0
	var b strings.Builder
	h := 40 + rowH*len(names)
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="13">`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="10" y="20" font-weight="bold">mod_zmq benchmark ratios (12 B, 32 connections, req/s)</text>`+"\n")
	for i, n := range names {
		y := 32 + i*rowH
		v := ratios[n]
		fmt.Fprintf(&b, `<text x="10" y="%d">%s</text>`+"\n", y+15, n)
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.0f" height="18" fill="#4a7bd0"/>`+"\n", left, y+2, v*scale)
		fmt.Fprintf(&b, `<text x="%.0f" y="%d">%.2f</text>`+"\n", float64(left)+v*scale+6, y+15, v)
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="28" x2="%d" y2="%d" stroke="#c33" stroke-dasharray="4"/>`+"\n", left+int(scale), left+int(scale), h-4)
	b.WriteString("</svg>\n")
	return b.String()
}

// soakRSS drives n requests through mod_zmq and through the gateway in 10 s
// slices and prints the fronts' resident memory (now, not peak) after each,
// to show it stays flat. First, 10 s at 256 connections make every thread
// of the front run: memory that grows with the threads that have run so
// far (their stacks, malloc arenas, Apache's per-thread pools) is bounded by
// the configuration, and would otherwise read as growth per request.
func soakRSS(e *env, n int) {
	for _, f := range e.fronts {
		if f.Name != "mod_zmq" && f.Name != "gateway" {
			continue
		}
		e.place(f, "shared")
		fmt.Printf("\n%s: requests, resident KiB of the front's processes\n", f.Name)
		fmt.Printf("  %9s  %8d KiB  (started)\n", "-", statusKiB(f.pids(), "VmRSS"))
		if out, err := exec.Command("wrk", "-t2", "-c256", "-d10s", f.URL).CombinedOutput(); err != nil {
			fatal("wrk: %v %s", err, out)
		}
		fmt.Printf("  %9s  %8d KiB  (after 10 s at 256 connections; counting starts here)\n", "-", statusKiB(f.pids(), "VmRSS"))
		sent := 0
		for sent < n {
			out, err := exec.Command("wrk", "-t2", "-c32", "-d10s", f.URL).CombinedOutput()
			if err != nil {
				fatal("wrk: %v %s", err, out)
			}
			if x := reReqs.FindStringSubmatch(string(out)); x != nil {
				k, _ := strconv.Atoi(x[1])
				sent += k
			}
			fmt.Printf("  %9d  %8d KiB\n", sent, statusKiB(f.pids(), "VmRSS"))
		}
	}
}
