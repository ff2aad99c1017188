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

// A zmq location names no file, so the filesystem walk is skipped for it,
// as for mod_proxy's: an .htaccess under DocumentRoot that denies everything
// still guards the files, but not the zmq location; a <Location>'s own
// Require still applies.
func TestZmqLocationsSkipTheFilesystem(t *testing.T) {
	w := startPyWorker(t, "w")
	dir, err := os.MkdirTemp("", "mzdoc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "static.txt"), []byte("a file\n"), 0o644)
	os.WriteFile(filepath.Join(dir, ".htaccess"), []byte("Require all denied\n"), 0o644)
	h := startHTTPD(t, httpdParams{MPM: "event", Extra: fmt.Sprintf(
		"\tDocumentRoot %[1]s\n\t<Directory %[1]s>\n\t\tAllowOverride All\n\t</Directory>\n"+
			"\t<Location /z>\n\t\tSetHandler zmq\n\t\tZmqBackend %[2]s\n\t</Location>\n"+
			"\t<Location /zdenied>\n\t\tSetHandler zmq\n\t\tZmqBackend %[2]s\n\t\tRequire all denied\n\t</Location>\n", dir, w.Endpoint)})
	h.expect(`AH01630: client denied by server configuration`)
	if resp, b := do(t, "GET", h.URL+"/static.txt", "", nil); resp.StatusCode != 403 {
		t.Errorf("a file under the denying .htaccess: %d %q, want 403", resp.StatusCode, b)
	}
	resp, b := do(t, "GET", h.URL+"/z/x", "", nil)
	if e := decodeEcho(t, b); resp.StatusCode != 200 || e.Worker != "w" {
		t.Errorf("zmq location under the same DocumentRoot: %d %q, want the worker's 200", resp.StatusCode, b)
	}
	if resp, b := do(t, "GET", h.URL+"/zdenied/x", "", nil); resp.StatusCode != 403 {
		t.Errorf("zmq location with Require all denied: %d %q, want 403", resp.StatusCode, b)
	}
}
