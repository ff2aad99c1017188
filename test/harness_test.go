// Package test holds mod_zmq's integration tests: a real Apache httpd with the
// built module, real pyzmq and pure-Go workers, all on 127.0.0.1.
package test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	"github.com/modzmq/modzmq/internal/status"
	"github.com/modzmq/modzmq/internal/zmqtest"
)

const python = "/usr/bin/python3" // Debian's python3-zmq installs for this one

var root = func() string {
	wd, _ := os.Getwd()
	return filepath.Dir(wd)
}()

func buildPath(name string) string { return filepath.Join(root, "build", name) }

// requireBuilt fails with what to run when make has not built the artefacts.
func requireBuilt(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := os.Stat(buildPath(n)); err != nil {
			t.Fatalf("%s is missing: run `make` (or `make test`) first", buildPath(n))
		}
	}
}

// freePort returns a TCP port on 127.0.0.1 nobody listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// checkFor polls fn until it returns nil or the deadline passes.
func checkFor(t *testing.T, d time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v: %v", d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// syncBuffer collects a process's output safely across goroutines.
type syncBuffer = zmqtest.Buffer

// worker is a running worker process.
type worker struct {
	Endpoint string
	Output   *syncBuffer
	cmd      *exec.Cmd
}

// signal sends sig to the worker process.
func (w *worker) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := w.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// startProcess runs a worker that prints "ready" once bound, and stops it
// when the test ends.
func startProcess(t *testing.T, name string, args ...string) *worker {
	t.Helper()
	cmd := exec.Command(name, args...)
	out := &syncBuffer{}
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			if line == "ready" {
				once.Do(func() { close(ready) })
				continue
			}
			out.Write([]byte(line + "\n"))
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		pw.Close()
		if t.Failed() { // what the worker said may explain the failure
			text := out.String()
			t.Logf("%s %v printed (last 4 KiB):\n%s", filepath.Base(name), args, text[max(0, len(text)-4096):])
		}
	})
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s %v did not get ready: %s", name, args, out.String())
	}
	return &worker{Output: out, cmd: cmd}
}

// startPyWorker starts test/workers/testworker.py (REP, or ROUTER with
// "--router") on a free port.
func startPyWorker(t *testing.T, name string, extra ...string) *worker {
	t.Helper()
	return startPyWorkerAt(t, name, fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)), extra...)
}

// startPyWorkerAt starts the test worker bound to ep (to restart one in place).
func startPyWorkerAt(t *testing.T, name, ep string, extra ...string) *worker {
	t.Helper()
	args := append([]string{filepath.Join(root, "test/workers/testworker.py"), "--bind", ep, "--name", name}, extra...)
	w := startProcess(t, python, args...)
	w.Endpoint = ep
	return w
}

// startGoWorker starts the pure-Go example worker (examples/go/worker).
func startGoWorker(t *testing.T, name string) *worker {
	t.Helper()
	requireBuilt(t, "go-worker")
	ep := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
	w := startProcess(t, buildPath("go-worker"), "-bind", ep, "-name", name)
	w.Endpoint = ep
	return w
}

// httpd is a private Apache: its own ServerRoot, config and port.
type httpd struct {
	Dir, Conf string
	Port      int
	URL       string

	mu       sync.Mutex
	expected []*regexp.Regexp // error_log lines the test caused on purpose
}

type httpdParams struct {
	Dir, ModDir, Module, Library, MPM, User string
	Port, DeadPort                          int
	REP, REP2, Router, Go, Slow, Counter    string
	Extra                                   string // raw configuration inside the first vhost
	Global                                  string // raw configuration at server level, after the modules and logs
	LibraryOverride                         string // ZmqLibrary other than the built one
}

// startHTTPD renders conf/test/httpd.conf.tmpl with p and starts httpd. It is
// stopped when the test ends, and its error_log is checked for [warn],
// [error] and worse lines the test did not expect, and for crashed children.
func startHTTPD(t *testing.T, p httpdParams) *httpd {
	t.Helper()
	requireBuilt(t, "mod_zmq.so", "libmodzmq.so")
	dir := t.TempDir()
	os.Chmod(dir, 0o755) // children run as the Apache User and open lock files here
	p.Dir = dir
	p.ModDir = "/usr/lib/apache2/modules"
	p.Module = buildPath("mod_zmq.so")
	p.Library = buildPath("libmodzmq.so")
	if p.LibraryOverride != "" {
		p.Library = p.LibraryOverride
	}
	p.Port = freePort(t)
	if os.Getuid() == 0 {
		p.User = "www-data"
	}
	tmpl := template.Must(template.ParseFiles(filepath.Join(root, "conf/test/httpd.conf.tmpl")))
	var conf bytes.Buffer
	if err := tmpl.Execute(&conf, p); err != nil {
		t.Fatal(err)
	}
	h := &httpd{Dir: dir, Conf: filepath.Join(dir, "httpd.conf"), Port: p.Port,
		URL: fmt.Sprintf("http://127.0.0.1:%d", p.Port)}
	if err := os.WriteFile(h.Conf, conf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := h.ctl("start"); err != nil {
		t.Fatalf("httpd -k start: %v\n%s\n%s", err, out, h.errorLog())
	}
	t.Cleanup(func() {
		h.stop(t)
		h.checkErrorLog(t)
	})
	checkFor(t, 15*time.Second, func() error {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", h.Port))
		if err == nil {
			c.Close()
		}
		return err
	})
	return h
}

func (h *httpd) ctl(signal string) ([]byte, error) {
	return exec.Command("/usr/sbin/apache2", "-f", h.Conf, "-k", signal).CombinedOutput()
}

func (h *httpd) pid() string {
	b, _ := os.ReadFile(filepath.Join(h.Dir, "httpd.pid"))
	return strings.TrimSpace(string(b))
}

func (h *httpd) stop(t *testing.T) {
	pid := h.pid()
	if out, err := h.ctl("stop"); err != nil {
		t.Errorf("httpd -k stop: %v %s", err, out)
	}
	start := time.Now()
	deadline, traced := start.Add(20*time.Second), false
	for pid != "" && time.Now().Before(deadline) {
		if _, err := os.Stat("/proc/" + pid); err != nil {
			return
		}
		if !traced && time.Since(start) > 3*time.Second {
			// A child that has not exited by now has a thread that did not
			// end its request: Apache logs it (AH00045, which fails the
			// test unless expected) and kills it at 8 s. Show where it is.
			traced = true
			if threads := zmqThreads(pid); threads != "" {
				t.Logf("httpd %s still running 3 s after -k stop; its children's threads in mod_zmq:\n%s", pid, threads)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if pid != "" {
		t.Errorf("httpd %s still running 20 s after -k stop", pid)
	}
}

// zmqThreads returns the stacks of the threads of ppid's children that are
// in mod_zmq, its library or the Go runtime's callbacks (gdb, from
// test/deps.sh), and how many others there are; "" when it has no children.
func zmqThreads(ppid string) string {
	if _, err := exec.LookPath("gdb"); err != nil {
		return "(no gdb to show them)"
	}
	out, _ := exec.Command("pgrep", "-P", ppid).Output() // none: every child has exited
	var b strings.Builder
	for _, pid := range strings.Fields(string(out)) {
		bt, err := exec.Command("gdb", "-p", pid, "-batch", "-ex", "thread apply all bt").CombinedOutput()
		if err != nil {
			fmt.Fprintf(&b, "child %s: gdb: %v\n", pid, err)
			continue
		}
		others := 0
		for _, th := range strings.Split(string(bt), "\nThread ")[1:] {
			if strings.Contains(th, "modzmq") || strings.Contains(th, "zmtp_") || strings.Contains(th, "cgocallback") {
				fmt.Fprintf(&b, "child %s, Thread %s\n", pid, strings.TrimSpace(th))
			} else {
				others++
			}
		}
		fmt.Fprintf(&b, "child %s: %d other threads\n", pid, others)
	}
	return b.String()
}

func (h *httpd) errorLog() string {
	b, _ := os.ReadFile(filepath.Join(h.Dir, "error_log"))
	return string(b)
}

// route reads the counters of h's route whose first location is first
// from its /zmq-status page (JSON).
func (h *httpd) route(t *testing.T, first string) status.Route {
	t.Helper()
	_, b := do(t, "GET", h.URL+"/zmq-status?json", "", nil)
	var page struct{ Routes []status.Route }
	if err := json.Unmarshal(b, &page); err != nil {
		t.Fatalf("zmq-status: %v: %s", err, b)
	}
	for _, r := range page.Routes {
		if f := strings.Fields(r.Route); len(f) > 0 && f[0] == first && r.GoEntries != nil && r.GoWaits != nil && r.Streams != nil {
			return r
		}
	}
	t.Fatalf("zmq-status has no counters for %s: %s", first, b)
	return status.Route{}
}

// settledRoute is route once the children have published what they
// counted: each publishes twice a second, so a reading is settled when the
// next, 0.6 s later, is the same.
func (h *httpd) settledRoute(t *testing.T, first string) status.Route {
	t.Helper()
	r := h.route(t, first)
	for range 20 {
		time.Sleep(600 * time.Millisecond)
		next := h.route(t, first)
		if *next.GoEntries == *r.GoEntries && next.Streams.Parts == r.Streams.Parts &&
			next.Streams.BodyParts == r.Streams.BodyParts && next.Streams.Open == r.Streams.Open {
			return next
		}
		r = next
	}
	t.Fatalf("the status page's counters for %s did not settle", first)
	return r
}

// withVHost adds the vhost label of h's first virtual host (where Extra
// goes) to a metrics line of the Apache module: vhost sorts last among its
// labels.
func (h *httpd) withVHost(line string) string {
	return strings.Replace(line, "}", fmt.Sprintf(`,vhost="one.localhost:%d"}`, h.Port), 1)
}

// expect declares that error_log lines matching re are caused by the test.
func (h *httpd) expect(re string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.expected = append(h.expected, regexp.MustCompile(re))
}

var badLine = regexp.MustCompile(`\[[a-z_0-9]+:(warn|error|crit|alert|emerg)\]|exit signal|AH00052`)

func (h *httpd) checkErrorLog(t *testing.T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var unexpected []string
line:
	for _, l := range strings.Split(h.errorLog(), "\n") {
		if !badLine.MatchString(l) {
			continue
		}
		if !strings.Contains(l, "exit signal") {
			for _, re := range h.expected {
				if re.MatchString(l) {
					continue line
				}
			}
		}
		unexpected = append(unexpected, l)
	}
	if len(unexpected) > 0 {
		t.Errorf("unexpected lines in error_log:\n%s", strings.Join(unexpected, "\n"))
	}
}

// client is an HTTP client with keep-alive and a hang detector.
var client = &http.Client{
	Timeout:   30 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 128, DisableCompression: true},
}

// get fetches url with an optional Host and returns status and body.
func do(t *testing.T, method, url, host string, body io.Reader, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp, b
}
