package test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Connections to tcp:// and ipc:// workers without CURVE speak ZMTP on the
// Apache thread's own socket (mod_zmq/golib/zmtp.c). They reach an ipc://
// worker, and survive a worker that heartbeats and drops the pooled
// connections that did not answer while idle.
func TestDirectConnections(t *testing.T) {
	dir, err := os.MkdirTemp("", "mzipc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	ipc := startPyWorkerAt(t, "ipc", "ipc://"+filepath.Join(dir, "w.sock"))
	hb := startPyWorker(t, "hb", "--router", "--heartbeat", "100")
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(
		"\t<Location /ipc>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t</Location>\n"+
			"\t<Location /hb>\n\t\tSetHandler zmq\n\t\tZmqBackend %s\n\t\tZmqTimeout 3\n\t</Location>\n", ipc.Endpoint, hb.Endpoint)})

	for i := range 3 {
		resp, b := do(t, "GET", fmt.Sprintf("%s/ipc/x?i=%d", h.URL, i), "", nil)
		if e := decodeEcho(t, b); resp.StatusCode != 200 || e.Worker != "ipc" {
			t.Fatalf("ipc:// worker: %d %q", resp.StatusCode, b)
		}
	}
	check := func(when string) {
		t.Helper()
		for i := range 10 {
			resp, b := do(t, "GET", fmt.Sprintf("%s/hb/x?i=%d", h.URL, i), "", nil)
			if e := decodeEcho(t, b); resp.StatusCode != 200 || e.Worker != "hb" {
				t.Fatalf("%s, request %d: %d %q", when, i, resp.StatusCode, b)
			}
		}
	}
	check("first")
	// The worker drops a connection 300 ms after a PING it got no answer
	// to; idle pooled connections answer nothing until they are next used.
	time.Sleep(1200 * time.Millisecond)
	check("after the worker dropped the idle connections")
}
