package test

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// childPIDs returns the process ids of h's children, sorted.
func childPIDs(t *testing.T, h *httpd) []string {
	t.Helper()
	out, _ := exec.Command("pgrep", "-P", h.pid()).Output()
	pids := strings.Fields(string(out))
	if len(pids) == 0 {
		t.Fatalf("httpd %s has no children", h.pid())
	}
	slices.Sort(pids)
	return pids
}

// curlExit runs curl -sSN on url and returns its stdout and exit code.
func curlExit(t *testing.T, url string) (string, int) {
	t.Helper()
	out, err := exec.Command("curl", "-sSN", "--max-time", "20", url).Output()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("curl %s: %v", url, err)
	}
	return string(out), 0
}

// Workers that break a stream after its head, through Apache (HTTP/1.1):
// one killed mid-stream, one sending a part of an unknown kind, a part
// with 3 frames, a part past its credit. Each client gets the head and the
// first part, then a response that ends abnormally (no terminating chunk:
// curl exits 18), the error log names the cause (MODZMQ0025), no Apache
// child dies, and the location serves the next requests. Parts with a
// request id the front never sent, before a plain reply, before a head and
// amid a stream, and a part after its stream's end, are dropped: those
// responses end correctly, and so do the requests after them.
func TestHostileStreamWorkersThroughApache(t *testing.T) {
	port := freePort(t)
	ep := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	script := filepath.Join(root, "test/workers/hostile_stream_worker.py")
	w := startListening(t, port, ep, python, script, ep)
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(`	<Location /h>
		SetHandler zmq
		ZmqBackend %s
	</Location>
`, ep)})
	// A fresh connection for each request after a broken stream, so that
	// they spread over the children rather than stay on one.
	fresh := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	serves := func(after string) {
		t.Helper()
		for i := 0; i < 8; i++ {
			resp, err := fresh.Get(h.URL + "/h/plain")
			if err != nil {
				t.Fatalf("after %s: %v", after, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "fine" {
				t.Fatalf("after %s: %d %q, want 200 \"fine\"\nerror_log:\n%s", after, resp.StatusCode, b, h.errorLog())
			}
		}
	}
	serves("the start")
	children := childPIDs(t, h)

	for _, c := range []struct{ path, cause string }{
		{"/h/kind", `unknown stream part "@bogus"`},
		{"/h/frames", "a stream part has 2 frames, got 3"},
		{"/h/credit", "the worker sent 135 bytes beyond its credit"}, // "partial" (7+64), then the whole credit (+64)
	} {
		line := regexp.MustCompile(`MODZMQ0025: the stream ended abnormally after its head: .*` + regexp.QuoteMeta(c.cause))
		h.expect(line.String())
		if out, code := curlExit(t, h.URL+c.path); code != 18 || out != "partial" {
			t.Errorf("%s: curl exit %d after %d bytes, %.40q; want 18 (transfer closed) after \"partial\"", c.path, code, len(out), out)
		}
		checkFor(t, 10*time.Second, func() error {
			if !line.MatchString(h.errorLog()) {
				return fmt.Errorf("%s: the error log lacks %q:\n%s", c.path, line, h.errorLog())
			}
			return nil
		})
		serves(c.path)
	}

	// A worker killed mid-stream, then started again on its endpoint.
	h.expect(`MODZMQ0025: the stream ended abnormally after its head: MODZMQ0110: `)
	h.expect(`MODZMQ0121: ` + regexp.QuoteMeta(ep) + `: `)
	h.expect(`MODZMQ0123: ` + regexp.QuoteMeta(ep) + `: ZMTP handshake failed: .*connection reset by peer`) // the watch, as the worker dies
	killMidStream(t, h.URL+"/h/stall", w)
	checkFor(t, 10*time.Second, func() error {
		if !strings.Contains(h.errorLog(), "MODZMQ0025: the stream ended abnormally after its head: MODZMQ0110: ") {
			return fmt.Errorf("the error log does not say the worker was lost mid-stream:\n%s", h.errorLog())
		}
		return nil
	})
	startListening(t, port, ep, python, script, ep)
	serves("a worker killed mid-stream")

	// Parts for requests the front never sent are dropped.
	if out, code := curlExit(t, h.URL+"/h/stranger-stream"); code != 0 || out != "partial-done" {
		t.Errorf("a stream amid parts for an unknown request id: curl exit %d, %q; want 0, \"partial-done\"", code, out)
	}
	if resp, body := do(t, "GET", h.URL+"/h/stranger-plain", "", nil); resp.StatusCode != 200 || string(body) != "fine" {
		t.Errorf("a plain reply after a part for an unknown request id: %d %q, want 200 \"fine\"", resp.StatusCode, body)
	}
	// A part after the end of its stream waits on the connection the
	// stream used, which goes back to its child's pool: the requests after
	// it must not take it for their reply.
	for i := 0; i < 4; i++ {
		if out, code := curlExit(t, h.URL+"/h/late"); code != 0 || out != "partial-done" {
			t.Errorf("a stream followed by a late part: curl exit %d, %q; want 0, \"partial-done\"", code, out)
		}
		serves("a late part")
	}
	serves("parts for an unknown request id")

	log := h.errorLog()
	for _, bad := range []string{"exit signal", "panic", "fatal error", "MODZMQ0107"} {
		if strings.Contains(log, bad) {
			t.Errorf("the error log shows a child in trouble (%q):\n%s", bad, log)
		}
	}
	if now := childPIDs(t, h); !slices.Equal(now, children) {
		t.Errorf("Apache's children changed from %v to %v: one died", children, now)
	}
}

// killMidStream has curl read url, a stream whose worker (w) sends
// "partial" and then nothing, kills the worker after that part, and checks
// that the client's response ends abnormally: curl exits 18 (transfer
// closed), with nothing more after "partial".
func killMidStream(t *testing.T, url string, w *worker) {
	t.Helper()
	cmd := exec.Command("curl", "-sSN", "--max-time", "20", url)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	first := make([]byte, len("partial"))
	if _, err := io.ReadFull(stdout, first); err != nil || string(first) != "partial" {
		cmd.Process.Kill()
		t.Fatalf("%s: %q, %v; want \"partial\"", url, first, err)
	}
	w.signal(t, syscall.SIGKILL)
	rest, _ := io.ReadAll(stdout)
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 18 || len(rest) != 0 {
		t.Errorf("a worker killed mid-stream: curl %v, %.40q after \"partial\"; want exit 18 (transfer closed) and nothing more", err, rest)
	}
}
