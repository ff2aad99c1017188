package test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// hugeClaim is a Content-Length no front can allocate: 1 TB.
const hugeClaim = "1000000000000"

// sendHugeClaims opens n connections to addr, sends on each a POST to path
// claiming a 1 TB body followed by a few bytes of it, half-closes them all,
// and returns what each got back: a status line, or "" if the connection
// just closed. Each must end in an error status (want, if not 0) or a close,
// never in a reply from a worker.
func sendHugeClaims(t *testing.T, addr, path string, n, want int) []string {
	t.Helper()
	conns := make([]*net.TCPConn, n)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c.(*net.TCPConn)
		fmt.Fprintf(c, "POST %s-%d HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\nonly a few bytes", path, i, hugeClaim)
	}
	got := make([]string, n)
	for i, c := range conns {
		c.CloseWrite() // the rest of the terabyte never comes
		c.SetReadDeadline(time.Now().Add(40 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Errorf("connection %d: no answer and no close within 40 s", i)
			}
			continue
		}
		resp.Body.Close()
		got[i] = resp.Status
		if resp.StatusCode < 400 || want != 0 && resp.StatusCode != want {
			t.Errorf("connection %d: %s for a body cut short, want an error status (%d)", i, resp.Status, want)
		}
	}
	return got
}

// readRSS returns a process's resident set size in bytes, or false when it
// has none (gone, or a zombie).
func readRSS(pid int) (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err == nil
		}
	}
	return 0, false
}

// vmRSS returns the resident set size of a process that must be running.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	n, ok := readRSS(pid)
	if !ok {
		t.Fatalf("process %d: no resident set size; is it running?", pid)
	}
	return n
}

// childrenRSS sums the resident set sizes of the live processes whose parent
// is ppid (Apache's children).
func childrenRSS(ppid string) (total int64, n int) {
	dirs, _ := filepath.Glob("/proc/[0-9]*/status")
	for _, f := range dirs {
		b, err := os.ReadFile(f)
		if err != nil || !strings.Contains(string(b), "\nPPid:\t"+ppid+"\n") {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		if rss, ok := readRSS(pid); ok {
			total += rss
			n++
		}
	}
	return total, n
}

// checkHonestBodies posts bodies of a few sizes, by length and chunked, and
// checks the worker saw each byte.
func checkHonestBodies(t *testing.T, url string) {
	t.Helper()
	big := make([]byte, 5<<20+3)
	rand.Read(big)
	for _, size := range []int{1, 64 << 10, 100_000, len(big)} {
		body := big[:size]
		for _, r := range []io.Reader{bytes.NewReader(body), onlyReader{bytes.NewReader(body)}} {
			resp, b := do(t, "POST", url+"/json", "", r)
			e := decodeEcho(t, b)
			if resp.StatusCode != 200 || e.BodyLength != size || e.BodySHA256 != sha(body) {
				t.Errorf("%d-byte body (%T): status %d, worker saw %d bytes, sha equal %v",
					size, r, resp.StatusCode, e.BodyLength, e.BodySHA256 == sha(body))
			}
		}
	}
	if resp, got := do(t, "POST", url+"/raw", "", bytes.NewReader(big)); resp.StatusCode != 200 || sha(got) != sha(big) {
		t.Errorf("%d-byte body back: status %d, %d bytes, sha equal %v", len(big), resp.StatusCode, len(got), sha(got) == sha(big))
	}
}

// TestHugeContentLengthWithNoBodyLimitGateway: with max_body 0, requests
// claiming a 1 TB body and sending a few bytes cost the gateway (both modes)
// memory only for the bytes sent; it stays up, answers the next request from
// a worker, and still takes honest bodies of megabytes whole.
func TestHugeContentLengthWithNoBodyLimitGateway(t *testing.T) {
	w := startPyWorker(t, "unbounded", "--log")
	for _, mode := range []string{"http", "stream"} {
		t.Run(mode, func(t *testing.T) {
			m := mode
			if m == "http" {
				m = ""
			}
			g := startGatewayProc(t, m, fmt.Sprintf("  - prefix: /\n    backend: [%s]\n    max_body: 0\n", w.Endpoint))
			pid := g.cmd.Process.Pid
			if resp, _ := do(t, "GET", g.URL+"/warm-up", "", nil); resp.StatusCode != 200 {
				t.Fatalf("before: status %d", resp.StatusCode)
			}
			before := vmRSS(t, pid)
			statuses := sendHugeClaims(t, g.Addr, "/tok-huge-"+mode, 8, 0)
			select {
			case err := <-g.done:
				g.done <- err
				t.Fatalf("zmq-gateway exited after the huge Content-Length requests: %v\n%s", err, g.Stderr)
			default:
			}
			resp, b := do(t, "GET", g.URL+"/still-fine", "", nil)
			if e := decodeEcho(t, b); resp.StatusCode != 200 || e.Worker != "unbounded" {
				t.Errorf("after the huge Content-Length requests: %d %.200q", resp.StatusCode, b)
			}
			after := vmRSS(t, pid)
			t.Logf("answers %q; RSS %d MB before, %d MB after", statuses, before>>20, after>>20)
			if after-before > 200<<20 {
				t.Errorf("RSS grew from %d MB to %d MB for requests that sent a few bytes each", before>>20, after>>20)
			}
			if strings.Contains(w.Output.String(), "tok-huge-"+mode) {
				t.Errorf("a body cut short reached the worker: %q", w.Output.String())
			}
			checkHonestBodies(t, g.URL+"/honest")
		})
	}
}

// TestHugeContentLengthWithNoBodyLimitApache: with ZmqMaxBody 0, requests
// claiming a 1 TB body and sending a few bytes abort no child (no
// "Memory allocation failed", no "exit signal" in error_log, which the
// harness also scans), the next request gets 200 from a worker, and honest
// bodies of megabytes arrive whole. Under /u httpd's own LimitRequestBody
// (1 GiB by default) refuses the claim with 413 once the body is read; under
// /n it is off too, so the few bytes are read and the body ends short (400).
func TestHugeContentLengthWithNoBodyLimitApache(t *testing.T) {
	w := startPyWorker(t, "unbounded", "--log")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(
		"\t<Location /u>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t\tZmqMaxBody 0\n\t</Location>\n"+
			"\t<Location /n>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t\tZmqMaxBody 0\n\t\tLimitRequestBody 0\n\t</Location>\n",
		w.Endpoint, w.Endpoint)})
	for _, tt := range []struct {
		name, loc, logged string
		status            int
	}{
		{"LimitRequestBody-default", "/u", `MODZMQ0015: reading the request body failed: an input filter refused it`, 413},
		{"LimitRequestBody-0", "/n", `MODZMQ0015: reading the request body failed \(400\)`, 400},
	} {
		loc := tt.loc
		t.Run(tt.name, func(t *testing.T) {
			if resp, _ := do(t, "GET", h.URL+loc+"/warm-up", "", nil); resp.StatusCode != 200 {
				t.Fatalf("before: status %d", resp.StatusCode)
			}
			before, n := childrenRSS(h.pid())
			statuses := sendHugeClaims(t, fmt.Sprintf("127.0.0.1:%d", h.Port), loc+"/tok-huge", 8, tt.status)
			if log := h.errorLog(); strings.Contains(log, "Memory allocation failed") || strings.Contains(log, "exit signal") {
				t.Errorf("a child aborted on a huge Content-Length:\n%s", log)
			}
			resp, b := do(t, "GET", h.URL+loc+"/still-fine", "", nil)
			if e := decodeEcho(t, b); resp.StatusCode != 200 || e.Worker != "unbounded" {
				t.Errorf("after the huge Content-Length requests: %d %.200q", resp.StatusCode, b)
			}
			after, m := childrenRSS(h.pid())
			t.Logf("answers %q; children's RSS %d MB (%d) before, %d MB (%d) after", statuses, before>>20, n, after>>20, m)
			if after-before > 200<<20 {
				t.Errorf("children's RSS grew from %d MB to %d MB for requests that sent a few bytes each", before>>20, after>>20)
			}
			if strings.Contains(w.Output.String(), "tok-huge") {
				t.Errorf("a body cut short reached the worker: %q", w.Output.String())
			}
			if !regexp.MustCompile(`\[zmq:info\] .*` + tt.logged).MatchString(h.errorLog()) {
				t.Errorf("no info line %s in error_log:\n%s", tt.logged, h.errorLog())
			}
			checkHonestBodies(t, h.URL+loc+"/honest")
		})
	}
}
